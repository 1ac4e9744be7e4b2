"""X-Gaussian parity mode: alpha-composited radiative splats (Cai et al., ECCV 2024).

The paper's radiative renderer (used by InsideOut for stage 1b) is 3DGS compositing with the colour
replaced by an isotropic (view-independent) radiance per Gaussian. It is *not* a line integral, so
its values are not comparable with :func:`insideout_jax.render.xray.render_xray`; it exists for
baseline and parity runs only.

Per view: each Gaussian is projected with the detector projection of
:func:`insideout_jax.cameras.xray_project` and the EWA covariance Σ₂ = JΣJᵀ + 0.3·I (J from
:func:`insideout_jax.cameras.xray_project_jacobian`, the 3DGS low-pass in px²); Gaussians are
sorted by depth from the source; per pixel, front to back, α = min(0.99, o·exp(−½ΔᵀΣ₂⁻¹Δ)), α < 1/255
is skipped, compositing stops before the transmittance would fall below 1e-4 (3DGS rules), and
I = Σᵢ Tᵢ αᵢ cᵢ with background 0. Decision: the isotropic radiance is cᵢ = Σ_f features[i, f]
(with F = 1, the feature itself). Opacity o = sigmoid(opacity_logits).

Cost (decision: dense implementation): every Gaussian is evaluated on every pixel, O(V·N·nv·nu)
time, in chunks of ``chunk`` Gaussians (memory O(chunk·nv·nu)); e.g. about 3·10⁹ evaluations per
256² view at N = 50 000. Autodiff through the chunk scan (rematerialised per chunk) gives the
gradients. Use it for parity runs at modest N, or replace it by the tile-sorted RGB compositor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from insideout_jax.cameras import XrayGeometry, xray_project, xray_project_jacobian
from insideout_jax.render.xray import resolve_view_angles
from insideout_jax.splats import RadSplats, covariance

__all__ = ["render_xgaussian", "radiance"]

LOW_PASS_PX2 = 0.3  # 3DGS screen-space dilation
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4


def radiance(splats: RadSplats) -> jax.Array:
    """[C] isotropic radiance cᵢ = Σ_f features[i, f]."""
    return jnp.sum(splats.features, axis=-1)


def _project(splats, geometry, angle):
    uv, depth = xray_project(geometry, angle, splats.means)
    jac = xray_project_jacobian(geometry, angle, splats.means)  # [C, 2, 3]
    cov3 = covariance(splats.log_scales, splats.quats)
    cov2 = jac @ cov3 @ jnp.swapaxes(jac, -1, -2) + LOW_PASS_PX2 * jnp.eye(2)
    det = cov2[:, 0, 0] * cov2[:, 1, 1] - cov2[:, 0, 1] ** 2
    conic = jnp.stack([cov2[:, 1, 1], -cov2[:, 0, 1], cov2[:, 0, 0]], -1) / det[:, None]
    return uv, depth, conic


def _render_view(splats, geometry, angle, chunk):
    nv, nu = geometry.n_detector
    uv, depth, conic = _project(splats, geometry, angle)
    opa = jnp.where(splats.active, jax.nn.sigmoid(splats.opacity_logits), 0.0)
    col = radiance(splats)
    order = jnp.argsort(jnp.where(splats.active, depth, jnp.inf))
    c = splats.capacity
    n_chunks = -(-c // chunk)
    pad = n_chunks * chunk - c
    take = lambda x: jnp.pad(x[order], [(0, pad)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
    uv, conic, opa, col = take(uv), take(conic), take(opa), take(col)
    jj, ii = jnp.meshgrid(jnp.arange(nu, dtype=jnp.float32), jnp.arange(nv, dtype=jnp.float32))
    pix = jnp.stack([jj.ravel(), ii.ravel()], -1)  # [P, 2]

    @jax.checkpoint
    def body(carry, xs):
        t_in, img = carry
        m, q, o, cc = xs
        d = pix[None] - m[:, None]  # [B, P, 2]
        power = -0.5 * (q[:, 0:1] * d[..., 0] ** 2 + q[:, 2:3] * d[..., 1] ** 2) \
            - q[:, 1:2] * d[..., 0] * d[..., 1]
        alpha = jnp.minimum(ALPHA_MAX, o[:, None] * jnp.exp(jnp.minimum(power, 0.0)))
        alpha = jnp.where(alpha < ALPHA_MIN, 0.0, alpha)
        log1m = jnp.log1p(-alpha)
        t_before = t_in[None] * jnp.exp(jnp.cumsum(log1m, axis=0) - log1m)  # exclusive product
        keep = t_before * (1.0 - alpha) >= T_MIN
        img = img + jnp.sum(jnp.where(keep, t_before * alpha, 0.0) * cc[:, None], axis=0)
        t_out = t_in * jnp.exp(jnp.sum(log1m, axis=0))
        return (t_out, img), None

    xs = (uv.reshape(n_chunks, chunk, 2), conic.reshape(n_chunks, chunk, 3),
          opa.reshape(n_chunks, chunk), col.reshape(n_chunks, chunk))
    p = nv * nu
    (_, img), _ = jax.lax.scan(body, (jnp.ones(p), jnp.zeros(p)), xs)
    return img.reshape(nv, nu)


def render_xgaussian(splats: RadSplats, geometry: XrayGeometry, views=None, *,
                     chunk: int = 128) -> jax.Array:
    """Alpha-composited X-Gaussian projections (parity mode; dense, see the module docstring).

    Args:
      splats: :class:`RadSplats` (uses opacity_logits and features; inactive splats ignored).
      geometry: :class:`XrayGeometry`.
      views: None (all), [V] int view indices or [V] float angles in radians.
      chunk: Gaussians composited per scan step (memory ≈ 6 · chunk · nv · nu floats).

    Returns:
      [V, nv, nu] float32 composited intensity.
    """
    if not isinstance(splats, RadSplats):
        raise ValueError(f"splats must be RadSplats, got {type(splats).__name__}")
    if not isinstance(geometry, XrayGeometry):
        raise ValueError(f"geometry must be an XrayGeometry, got {type(geometry).__name__}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    angles = resolve_view_angles(geometry, views)
    return jax.lax.map(lambda a: _render_view(splats, geometry, a, int(chunk)), angles)
