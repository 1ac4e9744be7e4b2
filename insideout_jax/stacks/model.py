"""MedGS on our splats: a 3D Gaussian density field fitted to the kept frames of a stack.

A 3D Gaussian restricted to the plane z = t is a 2D Gaussian whose centre drifts linearly with t,
whose shape is constant and whose peak fades as exp(−½(t − μ_z)²/Σ_zz) — MedGS's "folded"
Gaussian with polynomial degree 1, centre m = μ_z and width σ = √Σ_zz (``SEED_SYSTEMS.md`` §3.4).
So a frame at any position (or any plane orientation) is the exact slice renderer
(:func:`insideout_jax.render.slices.render_slice`) of a :class:`RadSplats`; the segmentation head
is a second set of per-splat amplitudes on the same geometry (one per label), rendered the same
way.

Loss per iteration (MedGS's, mapped onto this renderer; weights in :class:`StackConfig`):

    L = 2·L1(I_k) + 0.25·D-SSIM(I_k) + 0.5·IBFR + 0.25·L_band + λ_seg·2·L1(M_k)

- I_k: a random kept frame; M_k: its label masks rendered by the segmentation head.
- IBFR (in-between frame regulariser, on from ``ibfr_start`` of the run): a render at
  z = z_j + α(z_{j+1} − z_j), α ~ U(0.2, 0.8), against the blend (1 − α)·I_j + α·I_{j+1} of two
  neighbouring kept frames.
- L_band (until ``band_until`` of the run): mean(relu(lo − σ_z)) + mean(relu(σ_z − hi)) with σ_z in
  units of the kept frame spacing Δ, lo = ``band_lo`` (MedGS: one frame spacing, 1/F in its
  normalised time) and hi = the stack's depth; it keeps every splat spanning neighbouring frames.

Decisions (not in MedGS): densities and mask amplitudes are stored as logs (the field is a sum of
non-negative Gaussians, like CT attenuation); initial centres are drawn from the kept frames'
voxels with probability proportional to their value (air gets no splats) and jittered within a
voxel and half a frame gap; initial amplitudes are the voxel values, rescaled by one least-squares
factor per head so that the first renders match the frames' level.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.losses import d_ssim
from insideout_jax.render.slices import SlicePlane, make_voxel_grid, render_slice, voxelize
from insideout_jax.splats import RadSplats, knn_log_scales, quat_to_rotmat
from insideout_jax.stacks.frames import FrameStack

__all__ = ["StackConfig", "StackModel", "init_stack_model", "frame_plane", "render_frame",
           "render_frames", "render_labels", "label_volume", "ibfr_target", "band_penalty",
           "sigma_z", "frames_loss", "head_values", "stack_loss"]


MASK_LINKS = ("saturating", "linear")


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Constants of the stack model (MedGS's defaults where they map; [SEED_SYSTEMS §3.3, §3.5]).

    Attributes:
      n_splats: number of Gaussians (MedGS: 100k flat ones; §3.5's CPU version: 20k).
      iterations: training iterations, one kept frame (+ one in-between render) each. 6000: measured
        on the Stanford head (every 2nd slice kept, 128², 33.7k splats, image only) held-out PSNR
        30.99 dB at 3000 iterations, 31.50 dB at 6000; twice the splats at 3000 gave 31.22 dB.
      block: iterations per jitted block (checkpoint interval).
      lambda_l1, lambda_ssim, lambda_ibfr, lambda_band: image-loss weights; MedGS's are 2, 0.25, 0.5,
        0.25. IBFR at 2 instead of 0.5: measured on the Stanford head (every 2nd slice kept, 128²,
        20k splats, 3000 iterations) held-out PSNR 32.41 / 32.62 / 32.97 / 32.76 dB for 0 / 0.5 /
        2 / 4.
      lambda_seg: weight of the segmentation loss 2·L1 (MedGS README: 2–3 works well).
      seg_ibfr: apply IBFR to the mask heads too, with weight λ_ibfr·λ_seg, against the blend of the
        neighbouring masks (ours; MedGS regularises the image head only). Without it the mask
        fields sag between kept frames, where each splat's amplitude fades, and thin structures
        fall below the 0.5 level of the surface.
      ibfr_start: fraction of the run after which IBFR is on (MedGS: 10k of 30k).
      band_until: fraction of the run during which the band penalty is on (MedGS: 20k of 30k).
      band_lo: lower bound of σ_z in kept-frame spacings (MedGS: one frame).
      lr_means: initial position rate × the stack's extent (3DGS: 1.6e-4, decaying 100× to 1.6e-6).
      lr_scales, lr_quats, lr_density, lr_seg: Adam rates (3DGS: 5e-3, 1e-3, opacity 2.5e-2).
      lr_decay: these four rates decay exponentially to this fraction at the end (1 = constant, as
        in 3DGS and MedGS). 0.1: measured as for ``iterations`` at 3000 iterations, held-out PSNR
        30.99 dB constant, 31.17 dB decaying to 0.1.
      relocate_every, relocate_until, relocate_fraction: densification at a fixed splat count
        (:func:`relocate_splats`): every ``relocate_every`` iterations (0 = never) until
        ``relocate_until`` of the run, the ``relocate_fraction`` of splats with the least mass
        move to split the splats with the largest positional gradient (3DGS densifies by gradient
        too, but grows the count; a fixed count keeps one compiled step and a known cost). Off by
        default: measured on the Stanford head (as above, IBFR 2) every 200 iterations moving 5 % /
        10 %: held-out 32.83 / 32.70 dB against 32.97 without.
      cutoff_sigma: Mahalanobis cut-off of the renderer, used for training and rendering alike.
      mask_link: how a mask head's summed field f = Σᵢ aᵢGᵢ becomes a mask value: "saturating"
        1 − exp(−f) (an absorbing medium's opacity: overlapping splats inside thick bone cannot
        overshoot 1, so single splats on thin structures may carry large amplitudes) or "linear"
        f. Measured on the Stanford head (every 4th slice kept, 17k splats, 6000 iterations):
        bone surface CD 1.89 → 1.68 mm and HD95 7.28 → 4.72 mm with "saturating" (the linear
        masks: 1.56 / 3.09 mm); held-out image PSNR 28.35 / 28.36 dB.
      seed: PRNG seed of initialisation and frame sampling.
    """

    n_splats: int = 20_000
    iterations: int = 6_000
    block: int = 100
    lambda_l1: float = 2.0
    lambda_ssim: float = 0.25
    lambda_ibfr: float = 2.0
    lambda_band: float = 0.25
    lambda_seg: float = 2.0
    seg_ibfr: bool = True
    ibfr_start: float = 1.0 / 3.0
    band_until: float = 2.0 / 3.0
    band_lo: float = 1.0
    lr_means: float = 1.6e-4
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_density: float = 2.5e-2
    lr_seg: float = 2.5e-2
    lr_decay: float = 0.1
    relocate_every: int = 0
    relocate_until: float = 0.6
    relocate_fraction: float = 0.05
    cutoff_sigma: float = 4.0
    mask_link: str = "saturating"
    seed: int = 0

    def __post_init__(self):
        if self.mask_link not in MASK_LINKS:
            raise ValueError(f"StackConfig.mask_link must be one of {MASK_LINKS}, got {self.mask_link!r}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StackModel:
    """Splats of a stack: the image field and L mask fields on one geometry.

    Attributes:
      splats: [C] :class:`RadSplats`; ``log_densities`` is the log amplitude of the image field
        (frames in [0, 1]).
      seg: [C, L] float32 log amplitudes of the L mask fields (L may be 0).
      mask_link: how a mask field's sum becomes a mask value (:class:`StackConfig`; static).
    """

    splats: RadSplats
    seg: jax.Array
    mask_link: str = dataclasses.field(default="saturating", metadata=dict(static=True))

    def mask_value(self, field: jax.Array) -> jax.Array:
        """A mask head's summed field → its mask value (``mask_link``)."""
        return -jnp.expm1(-field) if self.mask_link == "saturating" else field

    @property
    def n_labels(self) -> int:
        return int(self.seg.shape[-1])

    def head(self, label: int | None) -> RadSplats:
        """The image field (None) or mask field ``label`` as a RadSplats to render."""
        if label is None:
            return self.splats
        return self.splats.replace(log_densities=self.seg[:, label])


def frame_plane(stack: FrameStack, z) -> SlicePlane:
    """The plane of a frame of ``stack`` at position z (mm; may be a traced scalar)."""
    h, w = stack.shape_hw
    cx, cy = stack.center_xy
    origin = jnp.stack([jnp.float32(cx), jnp.float32(cy), jnp.asarray(z, jnp.float32)])
    return SlicePlane(origin, jnp.asarray([1.0, 0.0, 0.0], jnp.float32),
                      jnp.asarray([0.0, 1.0, 0.0], jnp.float32),
                      jnp.asarray(stack.extent_xy, jnp.float32), (h, w))


def render_frame(model: StackModel, stack: FrameStack, z, *, label: int | None = None,
                 cutoff_sigma: float = 4.0) -> jax.Array:
    """[H, W] the image field (or mask ``label``, through its link) on the frame plane at z (mm)."""
    out = render_slice(model.head(label), frame_plane(stack, z), cutoff_sigma=cutoff_sigma)
    return out if label is None else model.mask_value(out)


def render_frames(model: StackModel, stack: FrameStack, z, *, label: int | None = None,
                  cutoff_sigma: float = 4.0) -> np.ndarray:
    """[M, H, W] float32 renders at the positions z [M] (host array)."""
    return np.stack([np.asarray(render_frame(model, stack, float(t), label=label,
                                             cutoff_sigma=cutoff_sigma)) for t in np.ravel(z)])


def render_labels(model: StackModel, stack: FrameStack, z, *, cutoff_sigma: float = 4.0) -> np.ndarray:
    """[L, M, H, W] float32 mask fields at the positions z [M]."""
    return np.stack([render_frames(model, stack, z, label=i, cutoff_sigma=cutoff_sigma)
                     for i in range(model.n_labels)])


def label_volume(model: StackModel, stack: FrameStack, label: int, dz: float, z0: float, z1: float,
                 *, cutoff_sigma: float = 4.0) -> tuple[np.ndarray, tuple, tuple]:
    """Mask ``label`` (through its link) voxelized on the frame grid with z spacing ``dz`` from z0 to z1.

    Returns:
      ([Z, H, W] float32, spacing_zyx, origin_xyz) in the stack's frame.
    """
    nz = int(round((z1 - z0) / dz)) + 1
    spacing = (float(dz), float(stack.spacing_yx[0]), float(stack.spacing_yx[1]))
    origin = (float(stack.origin_xy[0]), float(stack.origin_xy[1]), float(z0))
    grid = make_voxel_grid((nz,) + stack.shape_hw, spacing, origin)
    vol = model.mask_value(voxelize(model.head(label), grid, cutoff_sigma=cutoff_sigma))
    return np.asarray(vol), spacing, origin


# ---------------------------------------------------------------------------------------------
# Initialisation


def _rescale(model_logamp: np.ndarray, renders: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Log amplitudes shifted by the least-squares factor s = ⟨t, r⟩ / ⟨r, r⟩ (r renders, t targets)."""
    den = float(np.sum(renders.astype(np.float64) ** 2))
    s = float(np.sum(renders.astype(np.float64) * targets)) / den if den > 0 else 1.0
    return (model_logamp + np.log(max(s, 1e-12))).astype(np.float32)


def _sample_voxels(key: jax.Array, kept: FrameStack, n: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """n distinct voxels of the kept frames drawn with probability ∝ value, jittered within the voxel
    and ±½ frame gap along the stack axis: (points [n, 3] float32 mm, values [n], (k, r, c) indices)."""
    f, h, w = kept.frames.shape
    vals = np.maximum(kept.frames.reshape(-1).astype(np.float64), 0.0)  # noisy frames dip below 0
    if not np.any(vals > 0):
        raise ValueError("the kept frames are all at the bottom of their value range: nothing to fit")
    n = int(n)
    if n < 4 or n > np.count_nonzero(vals > 0):
        raise ValueError(f"n_splats must be between 4 and the {np.count_nonzero(vals > 0)} non-empty "
                         f"voxels of the kept frames, got {n}")
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1].item())
    idx = rng.choice(vals.size, size=n, replace=False, p=vals / vals.sum())
    k, r, c = np.unravel_index(idx, (f, h, w))
    pts = kept.voxel_points(k, r + rng.uniform(-0.5, 0.5, n), c + rng.uniform(-0.5, 0.5, n))
    pts[:, 2] += rng.uniform(-0.5, 0.5, n) * kept.mean_dz
    return pts.astype(np.float32), kept.frames[k, r, c], (k, r, c)


def init_stack_model(key: jax.Array, kept: FrameStack, cfg: StackConfig = StackConfig()) -> StackModel:
    """Splats on the kept frames (module docstring, "Decisions").

    Args:
      key: PRNG key.
      kept: the training frames (and their labels, if any).
      cfg: ``n_splats``, ``band_lo``, ``cutoff_sigma``.

    Returns:
      A :class:`StackModel` with ``cfg.n_splats`` active splats and L = kept's label count heads.
    """
    pts, vals, (k, r, c) = _sample_voxels(key, kept, cfg.n_splats)
    n, f = len(pts), kept.n_frames
    ls = knn_log_scales(pts)
    ls[:, 2] = np.maximum(ls[:, 2], np.log(cfg.band_lo * kept.mean_dz))
    amp = np.maximum(vals, 1e-3)
    splats = RadSplats(
        means=jnp.asarray(pts), log_scales=jnp.asarray(ls),
        quats=jnp.tile(jnp.asarray([1.0, 0.0, 0.0, 0.0], jnp.float32), (n, 1)),
        log_densities=jnp.asarray(np.log(amp), jnp.float32),
        opacity_logits=jnp.zeros((n,), jnp.float32), features=jnp.zeros((n, 1), jnp.float32),
        colors=jnp.zeros((n, 3), jnp.float32), active=jnp.ones((n,), bool))
    n_lab = 0 if kept.labels is None else kept.labels.shape[0]
    seg = np.zeros((n, n_lab), np.float32)
    for i in range(n_lab):
        seg[:, i] = np.log(np.where(kept.labels[i, k, r, c], 1.0, 1e-3))
    model = StackModel(splats, jnp.asarray(seg), cfg.mask_link)
    probe = np.unique(np.linspace(0, f - 1, min(f, 5)).round().astype(int))
    z = kept.z[probe]
    rend = render_frames(model, kept, z, cutoff_sigma=cfg.cutoff_sigma)
    splats = splats.replace(log_densities=jnp.asarray(
        _rescale(np.asarray(splats.log_densities), rend, kept.frames[probe])))
    for i in range(n_lab):
        rend = render_frames(model, kept, z, label=i, cutoff_sigma=cfg.cutoff_sigma)
        seg[:, i] = _rescale(seg[:, i], rend, kept.labels[i][probe].astype(np.float32))
    return StackModel(splats, jnp.asarray(seg), cfg.mask_link)


# ---------------------------------------------------------------------------------------------
# Losses


def ibfr_target(frame_a: jax.Array, frame_b: jax.Array, alpha) -> jax.Array:
    """[H, W] MedGS's in-between target: the blend (1 − α)·a + α·b of two neighbouring frames."""
    return (1.0 - alpha) * frame_a + alpha * frame_b


def sigma_z(splats: RadSplats) -> jax.Array:
    """[C] √Σ_zz, the splats' standard deviation along the stack axis, mm."""
    rot = quat_to_rotmat(splats.quats / jnp.linalg.norm(splats.quats, axis=-1, keepdims=True))
    return jnp.sqrt(jnp.sum(jnp.square(rot[:, 2, :] * jnp.exp(splats.log_scales)), axis=-1))


def band_penalty(sigma, lo: float, hi: float) -> jax.Array:
    """MedGS's ``penalize_outside_range``: mean(relu(lo − σ)) + mean(relu(σ − hi)) (scalar)."""
    sigma = jnp.asarray(sigma)
    return jnp.mean(jax.nn.relu(lo - sigma)) + jnp.mean(jax.nn.relu(sigma - hi))


def frames_loss(render: Callable, sig_z: jax.Array, n_labels: int, frames: jax.Array, labels: jax.Array,
                i: jax.Array, j: jax.Array, alpha: jax.Array, ibfr_on: jax.Array, band_on: jax.Array,
                cfg: StackConfig, z: jax.Array, dz: float, depth: float) -> jax.Array:
    """The loss of one iteration (module docstring) for kept frame i and the pair (j, j + 1), for any
    frame renderer.

    Args:
      render: ``render(z) -> [1 + L, H, W]``, the image field and the L mask fields at z.
      sig_z: [C] the splats' widths along the stack axis, mm (band penalty).
      n_labels: number of mask heads L.
      frames: [F, H, W] kept frames; labels: [L, F, H, W] float masks; z: [F] their positions, mm.
      i, j: int32 frame indices; alpha: in-between position; ibfr_on, band_on: bool switches.
      dz: kept frame spacing, mm; depth: the stack's depth, mm.
    """
    heads = render(z[i])
    pred = heads[0]
    loss = cfg.lambda_l1 * jnp.mean(jnp.abs(pred - frames[i])) + cfg.lambda_ssim * d_ssim(pred, frames[i])

    def ibfr(_):
        zm = z[j] + alpha * (z[j + 1] - z[j])
        mid = render(zm)
        out = jnp.mean(jnp.abs(mid[0] - ibfr_target(frames[j], frames[j + 1], alpha)))
        if cfg.seg_ibfr:
            for lab in range(n_labels):
                blend = ibfr_target(labels[lab, j], labels[lab, j + 1], alpha)
                out = out + cfg.lambda_seg * jnp.mean(jnp.abs(mid[1 + lab] - blend))
        return out

    loss = loss + cfg.lambda_ibfr * jax.lax.cond(ibfr_on, ibfr, lambda _: jnp.float32(0.0), None)
    band = band_penalty(sig_z / dz, cfg.band_lo, depth / dz)
    loss = loss + cfg.lambda_band * jnp.where(band_on, band, 0.0)
    for lab in range(n_labels):
        loss = loss + cfg.lambda_seg * 2.0 * jnp.mean(jnp.abs(heads[1 + lab] - labels[lab, i]))
    return loss


def head_values(model: StackModel) -> jax.Array:
    """[C, 1 + L] the peak values of the image field and the L mask fields (one pass renders all;
    the masks' links apply to the rendered sums)."""
    return jnp.exp(jnp.concatenate([model.splats.log_densities[:, None], model.seg], axis=1))


def stack_loss(model: StackModel, stack: FrameStack, frames: jax.Array, labels: jax.Array,
               i: jax.Array, j: jax.Array, alpha: jax.Array, ibfr_on: jax.Array, band_on: jax.Array,
               cfg: StackConfig, z: jax.Array, dz: float, depth: float) -> jax.Array:
    """:func:`frames_loss` of a :class:`StackModel` (exact slice renderer, σ_z = √Σ_zz; the image
    and mask fields rendered in one pass on their shared geometry)."""
    def render(zz):
        heads = render_slice(model.splats, frame_plane(stack, zz), values=head_values(model),
                             cutoff_sigma=cfg.cutoff_sigma)
        return jnp.concatenate([heads[:1], model.mask_value(heads[1:])])

    return frames_loss(render, sigma_z(model.splats), model.n_labels, frames, labels, i, j, alpha, ibfr_on,
                       band_on, cfg, z, dz, depth)


def _params(model: StackModel) -> dict:
    s = model.splats
    return {"means": s.means, "log_scales": s.log_scales, "quats": s.quats,
            "log_densities": s.log_densities, "seg": model.seg}


def _model(like: StackModel, p: dict) -> StackModel:
    return dataclasses.replace(like, splats=like.splats.replace(
        means=p["means"], log_scales=p["log_scales"], quats=p["quats"], log_densities=p["log_densities"]),
        seg=p["seg"])
