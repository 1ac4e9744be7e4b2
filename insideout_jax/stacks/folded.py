"""The faithful MedGS route: time-conditioned flat Gaussians, alpha-composited by the 3DGS rasterizer.

MedGS (its authors' code, ``SEED_SYSTEMS.md`` §3.2–3.3) models a stack as flat 2D Gaussians in the
image plane, each with a centre m ∈ (0, 1) along the normalised stack axis t = (z − z₀)/depth, a
width σ and polynomial drift coefficients w ∈ ℝ^{D×2}. At position t a Gaussian has

    μ(t) = μ + Σ_{i=1..D} wᵢ (m − t)ⁱ,   δ(t) = exp(−(m − t)²/(2σ²)),   scales(t) = δ(t)·scales,

the same opacity, and is drawn only where δ > 0.1. Frames are rendered with the package's 3DGS
rasterizer (:func:`insideout_jax.render.rgb.render_rgb`, alpha compositing, black background)
from a pinhole camera facing the plane whose pixel grid coincides with the frame's, so the map from
the plane to the image is exact. Trained with the same loss and loop as the 3D-splat route
(:func:`insideout_jax.stacks.model.frames_loss`, :func:`~insideout_jax.stacks.model.fit_frames`).

Decisions (ours): one grey value per Gaussian (SH degree 0, the same in the three channels;
MedGS keeps RGB); the image head only (MedGS's mask head would share the opacity here, which it
does not); initial centres as in :func:`insideout_jax.stacks.init_stack_model`, w = 0 and σ one
kept frame spacing (MedGS draws w ~ U(−1, 1) and σ ~ U(0.01, 1) at random); no mirror camera
(our rasterizer draws a face-on flat Gaussian the same from either side). Rates: MedGS's (position
1.6e-4 × extent → 1.6e-6, colour 2.5e-3, opacity 2.5e-2, scales 5e-3, rotation 1e-3, m, σ, w 1e-3).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax import xla
from insideout_jax.cameras import PinholeCamera
from insideout_jax.render.rgb import render_rgb
from insideout_jax.sh import SH_C0
from insideout_jax.splats import RGBSplats, knn_log_scales
from insideout_jax.stacks.frames import FrameStack
from insideout_jax.stacks.model import StackConfig, _sample_voxels, frames_loss
from insideout_jax.stacks.train import _check_training, fit_frames

__all__ = ["FoldedModel", "init_folded_model", "folded_splats", "frame_camera", "render_folded",
           "render_folded_frames", "train_folded"]

_FLAT_LOG_SCALE = float(np.log(1e-6))  # the third (normal) scale of a flat Gaussian, mm
_VISIBLE = 0.1                          # MedGS draws a Gaussian only where δ > 0.1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FoldedModel:
    """Time-conditioned flat Gaussians of a stack (module docstring).

    Attributes:
      means2d: [C, 2] float32 in-plane centres (x, y), mm.
      log_scales2d: [C, 2] float32 log in-plane scales, log mm.
      angles: [C] float32 in-plane rotations, radians.
      opacity_logits: [C] float32.
      values: [C] float32 grey value, stored as the SH DC coefficient.
      centre_logits: [C] float32; m = sigmoid(·) ∈ (0, 1) along the normalised stack axis.
      log_sigmas: [C] float32 log widths σ along the normalised stack axis.
      drift: [C, D, 2] float32 polynomial drift coefficients wᵢ, mm.
      z0, depth: the stack axis normalisation t = (z − z0) / depth, mm (static).
    """

    means2d: jax.Array
    log_scales2d: jax.Array
    angles: jax.Array
    opacity_logits: jax.Array
    values: jax.Array
    centre_logits: jax.Array
    log_sigmas: jax.Array
    drift: jax.Array
    z0: float = dataclasses.field(metadata=dict(static=True))
    depth: float = dataclasses.field(metadata=dict(static=True))

    @property
    def degree(self) -> int:
        return int(self.drift.shape[1])

    def sigma_z(self) -> jax.Array:
        """[C] widths along the stack axis, mm."""
        return jnp.exp(self.log_sigmas) * self.depth


_FIELDS = ("means2d", "log_scales2d", "angles", "opacity_logits", "values", "centre_logits", "log_sigmas",
           "drift")


def init_folded_model(key: jax.Array, kept: FrameStack, cfg: StackConfig = StackConfig(), *,
                      degree: int = 2) -> FoldedModel:
    """Flat Gaussians on the kept frames' voxels (module docstring, "Decisions").

    Args:
      degree: D, the drift polynomial's degree (MedGS: 7 for interpolation, 2 for meshes).
    """
    if int(degree) < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    pts, vals, _ = _sample_voxels(key, kept, cfg.n_splats)
    n = len(pts)
    z0, depth = float(kept.z[0]), float(kept.z[-1] - kept.z[0])
    t = np.clip((pts[:, 2] - z0) / depth, 1e-4, 1 - 1e-4)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return FoldedModel(
        means2d=f32(pts[:, :2]), log_scales2d=f32(knn_log_scales(pts)[:, :2]), angles=jnp.zeros(n),
        opacity_logits=jnp.full(n, float(np.log(0.1 / 0.9))), values=f32((vals - 0.5) / SH_C0),
        centre_logits=f32(np.log(t / (1 - t))),
        log_sigmas=jnp.full(n, float(np.log(cfg.band_lo * kept.mean_dz / depth)), jnp.float32),
        drift=jnp.zeros((n, int(degree), 2), jnp.float32), z0=z0, depth=depth)


def folded_splats(model: FoldedModel, z) -> RGBSplats:
    """The flat Gaussians at stack position z (mm; may be traced), as RGBSplats on the plane z = 0."""
    t = (jnp.asarray(z, jnp.float32) - model.z0) / model.depth
    dt = jax.nn.sigmoid(model.centre_logits) - t
    powers = dt[:, None] ** jnp.arange(1, model.degree + 1, dtype=jnp.float32)  # [C, D]
    mu = model.means2d + jnp.einsum("cd,cdk->ck", powers, model.drift, precision=xla.HIGHEST)
    log_delta = -0.5 * dt * dt / jnp.exp(2.0 * model.log_sigmas)
    n = mu.shape[0]
    half = 0.5 * model.angles
    quats = jnp.stack([jnp.cos(half), jnp.zeros(n), jnp.zeros(n), jnp.sin(half)], axis=-1)
    ls = jnp.concatenate([model.log_scales2d + log_delta[:, None], jnp.full((n, 1), _FLAT_LOG_SCALE)], axis=-1)
    sh = jnp.broadcast_to(model.values[:, None, None], (n, 1, 3))
    return RGBSplats(jnp.concatenate([mu, jnp.zeros((n, 1))], axis=-1), ls, quats, model.opacity_logits, sh,
                     log_delta > np.log(_VISIBLE))


def frame_camera(stack: FrameStack, distance: float = 1000.0) -> PinholeCamera:
    """A pinhole camera facing the plane z = 0 whose pixel (r, c) sees (x₀ + c·dx, y₀ + r·dy)."""
    h, w = stack.shape_hw
    dy, dx = stack.spacing_yx
    x0, y0 = stack.origin_xy
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return PinholeCamera(f32(np.eye(3)), f32([-x0, -y0, distance]), f32(distance / dx), f32(distance / dy),
                         f32(0.5), f32(0.5), w, h)


def render_folded(model: FoldedModel, stack: FrameStack, z) -> jax.Array:
    """[H, W] the frame at stack position z (mm)."""
    return render_rgb(folded_splats(model, z), frame_camera(stack)).color[..., 0]


def render_folded_frames(model: FoldedModel, stack: FrameStack, z) -> np.ndarray:
    """[M, H, W] float32 frames at the positions z [M] (host array)."""
    fn = jax.jit(lambda m, zz: render_folded(m, stack, zz))
    return np.stack([np.asarray(fn(model, jnp.float32(t))) for t in np.ravel(z)])


def _optimizer(cfg: StackConfig, extent: float) -> optax.GradientTransformation:
    rates = {"means": optax.exponential_decay(cfg.lr_means * extent, cfg.iterations, 0.01),
             "log_scales2d": 5e-3, "angles": 1e-3, "opacity_logits": 2.5e-2, "values": 2.5e-3,
             "centre_logits": 1e-3, "log_sigmas": 1e-3, "drift": 1e-3}
    return optax.multi_transform({k: optax.adam(v, eps=1e-15) for k, v in rates.items()}, {k: k for k in rates})


def train_folded(key: jax.Array, model: FoldedModel, kept: FrameStack, cfg: StackConfig = StackConfig(), *,
                 checkpoint_path: str | Path | None = None, progress: bool = True) -> tuple[FoldedModel, dict]:
    """Fit the folded model to the kept frames with MedGS's image loss (no mask head).

    Returns:
      (model, history) with history = dict(step, loss, seconds) per block.
    """
    frames, labels, z, dz, depth = _check_training(kept, 0)
    cam = frame_camera(kept)

    def to_model(p):
        return dataclasses.replace(model, **{("means2d" if k == "means" else k): v for k, v in p.items()})

    def loss_fn(p, i, j, alpha, ibfr_on, band_on):
        m = to_model(p)

        def render(zz):  # the image head only: [1, H, W]
            return render_rgb(folded_splats(m, zz), cam).color[None, ..., 0]

        return frames_loss(render, m.sigma_z(), 0, frames, labels, i, j, alpha, ibfr_on, band_on, cfg, z, dz,
                           depth)

    params = {("means" if k == "means2d" else k): getattr(model, k) for k in _FIELDS}
    opt = _optimizer(cfg, float(np.hypot(*kept.extent_xy) / 2))
    params, history = fit_frames(key, params, loss_fn, kept, cfg, opt, checkpoint_path=checkpoint_path,
                                 progress=progress, desc="folded")
    return to_model(params), history
