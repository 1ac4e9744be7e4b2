"""RadGS-Reg's networks at CPU size (flax.linen; SEED_SYSTEMS §1.2, §1.7).

- :class:`RecNet` (RecM): one small CNN encoder per X-ray (AP, lateral), channel concatenation,
  the counterfactual attention (CAL: attention maps → bilinear attention pooling → context; the
  effect is the factual context minus the context of random attention maps, taken in context
  space as the released code does), and the Gaussian head: K learnable anchors in the crop
  with a per-anchor embedding, one shared MLP → 11 numbers per Gaussian (Δxyz = 0.1·tanh, scales
  = sigmoid·(1 − 0.001) + 0.001, a normalised quaternion, density = softplus), mapped to
  :class:`~insideout_jax.splats.RadSplats` in mm by :func:`head_to_splats`. Given the anchors'
  pixel coordinates in both X-rays (``uv``), the head also reads each anchor's pixel-aligned
  features: both X-rays and the encoders' four stage outputs sampled bilinearly at its
  projections, through one 64-wide layer [D] (the released head sees only the global context).
- :class:`RegNet` (RegM): concat(V_rec, V_CT) → strided 3-D convolutions → 6 numbers (ω in
  radians, t / half-size).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.splats import RadSplats

__all__ = ["XrayEncoder", "RecNet", "RegNet", "head_to_splats", "head_scale", "anchor_grid", "sample_features"]


def anchor_grid(per_side: int) -> np.ndarray:
    """[K, 3] anchors on a regular grid in [−0.8, 0.8]³ (K = per_side³)."""
    t = np.linspace(-0.8, 0.8, int(per_side))
    return np.stack(np.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


class XrayEncoder(nn.Module):
    """[B, H, W, 1] → ([B, H/16, W/16, C], every stage's output at strides 2, 4, 8, 16): four
    stride-2 stages of two 3×3 convolutions."""

    widths: tuple = (16, 32, 64, 128)

    @nn.compact
    def __call__(self, x):
        out = []
        for w in self.widths:
            x = nn.relu(nn.GroupNorm(num_groups=None, group_size=1)(nn.Conv(w, (3, 3), strides=2)(x)))
            x = nn.relu(nn.GroupNorm(num_groups=None, group_size=1)(nn.Conv(w, (3, 3))(x)))
            out.append(x)
        return x, out


def sample_features(fmap, uv, stride: int):
    """Bilinear samples of a feature map [B, h, w, C] at image pixel coordinates uv [B, K, 2]
    (column, row; pixel centres at integers) of an image ``stride`` times larger → [B, K, C]
    (zero outside the map). The map's pixel k is centred on image pixel stride·k + stride − 1:
    a stride-2 "SAME" convolution of a 3×3 kernel on an even size pads one pixel after, so its
    output k is centred on input 2k + 1, and the stages compose."""
    from jax.scipy.ndimage import map_coordinates

    rows = (uv[..., 1] - (stride - 1)) / stride
    cols = (uv[..., 0] - (stride - 1)) / stride

    def one(f, r, c):
        return jax.vmap(lambda ch: map_coordinates(ch, [r, c], order=1, mode="constant", cval=0.0),
                        in_axes=-1, out_axes=-1)(f)

    return jax.vmap(one)(fmap, rows, cols)


def _bap(att, feat):
    """Bilinear attention pooling: [B, h, w, M] × [B, h, w, C] → [B, M·C] (signed sqrt, L2)."""
    hw = att.shape[1] * att.shape[2]
    f = jnp.einsum("bhwm,bhwc->bmc", att, feat) / hw
    f = jnp.sign(f) * jnp.sqrt(jnp.abs(f) + 1e-12)
    f = f.reshape(f.shape[0], -1)
    return f / jnp.sqrt(jnp.sum(f * f, -1, keepdims=True) + 1e-12)


class RecNet(nn.Module):
    """Two X-rays → per-anchor Gaussian parameters [B, K, 11] (factual, and the CAL effect)."""

    n_anchors_side: int = 13
    n_attention: int = 8
    context: int = 256
    embed: int = 32
    hidden: int = 128
    local: int = 64

    @nn.compact
    def __call__(self, xray_ap, xray_lat, cf_key=None, uv=None):
        (f_ap, s_ap), (f_lat, s_lat) = XrayEncoder(name="enc_ap")(xray_ap), XrayEncoder(name="enc_lat")(xray_lat)
        feat = jnp.concatenate([f_ap, f_lat], -1)
        att = nn.relu(nn.GroupNorm(num_groups=None, group_size=1)(nn.Conv(self.n_attention, (1, 1))(feat)))
        ctx_head = nn.Dense(self.context, name="context")
        ctx = nn.relu(ctx_head(_bap(att, feat)))
        anchors0 = jnp.asarray(anchor_grid(self.n_anchors_side))
        k = anchors0.shape[0]
        offset = self.param("anchor_offset", nn.initializers.zeros, (k, 3))
        anchors = jnp.tanh(jnp.arctanh(anchors0) + offset)
        emb = self.param("anchor_embed", nn.initializers.normal(0.02), (k, self.embed))
        freqs = 2.0 ** jnp.arange(self.embed // 6) * np.pi
        code = jnp.concatenate([jnp.sin(anchors[..., None] * freqs), jnp.cos(anchors[..., None] * freqs)],
                               -1).reshape(k, -1)
        mlp1, mlp2 = nn.Dense(self.hidden, name="head1"), nn.Dense(11, name="head2")
        parts = []
        if uv is not None:  # pixel-aligned features: each anchor's projections in both X-rays
            for v, (img, maps) in enumerate(((xray_ap, s_ap), (xray_lat, s_lat))):
                parts.append(sample_features(img, uv[:, v], 1))
                parts += [sample_features(m, uv[:, v], 2 ** (i + 1)) for i, m in enumerate(maps)]
            local = nn.relu(nn.Dense(self.local, name="local")(jnp.concatenate(parts, -1)))

        def head(c):
            b = c.shape[0]
            x = [jnp.broadcast_to(c[:, None], (b, k, c.shape[-1])), jnp.broadcast_to(code, (b,) + code.shape),
                 jnp.broadcast_to(emb, (b,) + emb.shape)]
            x = jnp.concatenate(x + ([local] if parts else []), -1)
            out = mlp2(nn.relu(mlp1(x)))
            return jnp.concatenate([jnp.broadcast_to(anchors, (b, k, 3)), out], -1)  # [B, K, 3 + 11]

        factual = head(ctx)
        if cf_key is None:
            return factual, None
        # counterfactual attention: random maps U(0, 2) replace the factual ones (do(A = Ā))
        cf_att = jax.random.uniform(cf_key, att.shape, minval=0.0, maxval=2.0)
        effect_ctx = ctx - nn.relu(ctx_head(_bap(cf_att, feat)))
        return factual, head(effect_ctx)


def head_scale(raw, half_size: float):
    """A Gaussian's scale (mm) from the head's raw output: h·(sigmoid·0.999 + 0.001)·0.25."""
    return half_size * 0.25 * (jax.nn.sigmoid(raw) * 0.999 + 0.001)


def head_to_splats(out, centre, half_size: float, density_scale: float) -> RadSplats:
    """[K, 14] (anchor, raw 11) → RadSplats in mm: means c + h·(anchor + 0.1·tanh Δ), scales
    h·(sigmoid·0.999 + 0.001)·0.25, quaternions normalised, densities softplus·scale (1/mm)."""
    anchor, raw = out[:, :3], out[:, 3:]
    means = jnp.asarray(centre, jnp.float32) + half_size * (anchor + 0.1 * jnp.tanh(raw[:, :3]))
    scales = head_scale(raw[:, 3:6], half_size)
    q = raw[:, 6:10] + jnp.array([1.0, 0.0, 0.0, 0.0])
    q = q / jnp.sqrt(jnp.sum(q * q, -1, keepdims=True) + 1e-12)
    rho = jax.nn.softplus(raw[:, 10]) * density_scale
    k = out.shape[0]
    return RadSplats(means=means, log_scales=jnp.log(scales), quats=q, log_densities=jnp.log(rho + 1e-12),
                     opacity_logits=jnp.zeros((k,)), features=rho[:, None], colors=jnp.zeros((k, 3)),
                     active=jnp.ones((k,), bool))


class RegNet(nn.Module):
    """concat(V_rec, V_CT) [B, n, n, n, 2] → [B, 6] (ω rad, t / half-size)."""

    widths: tuple = (16, 32, 64)
    hidden: int = 128

    @nn.compact
    def __call__(self, v_rec, v_ct):
        x = jnp.stack([v_rec, v_ct], -1)
        for w in self.widths:
            x = nn.relu(nn.GroupNorm(num_groups=None, group_size=1)(nn.Conv(w, (3, 3, 3), strides=2)(x)))
            x = nn.relu(nn.Conv(w, (3, 3, 3))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(6, kernel_init=nn.initializers.zeros)(x)
