"""Stage 4, visual alignment: colour transfer and detail cloning → the unified model (paper §4.3).

- **Colour transfer**: every radiative splat takes the view-independent colour (DC term) of its
  nearest RGB splat (exact 1-NN, chunked and jitted: :func:`insideout_jax.fitting.neighbors
  .nearest_neighbor`).
- **Detail cloning**: RGB splats whose largest covariance eigenvalue (largest scale²) is ≤ the
  p-th percentile (p = 95) of the RGB set join the model, keeping their full SH colour and opacity.

The unified model (:class:`UnifiedModel`) is one splat set that renders as RGB (colour + opacity:
:attr:`UnifiedModel.splats`, for the RGB rasterizer) and as density (:func:`as_radiative`, for
projections, slices and volumes). Decisions (the paper is silent):

- *Opacity of a radiative splat* in RGB renders: α = 1 − exp(−ρ·√(2π)·s̄), the opacity of a ray
  through its centre (same as the internal-rendering zero-one term).
- *Density of a cloned RGB splat*: zero by default (``clone_density="zero"``): cloning adds surface
  appearance, not mass, so the unified model's projections, slices and volumes are exactly the
  radiative model's, in CT units. ``"nearest"`` gives each clone the density of its nearest radiative
  splat instead (density transfer, the mirror image of colour transfer); measured on the skull it
  adds a second skin of mass where the clones overlap the radiative skin and costs 6 dB (train) to
  11 dB (held-out) of cross-section PSNR, so it is not the default.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import sh as sh_lib
from insideout_jax.fitting.neighbors import nearest_neighbor
from insideout_jax.internal.train import radiative_opacity_logits
from insideout_jax.render.rgb import RasterConfig, fitted_pair_capacity
from insideout_jax.splats import RadSplats, RGBSplats, select_active

__all__ = ["NO_DENSITY", "UnifiedModel", "colour_transfer", "detail_clone_mask", "unify",
           "refine_colours", "as_radiative",
           "write_unified_ply"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UnifiedModel:
    """The InsideOut model: one splat set with colour, opacity and density.

    Attributes:
      splats: [C] RGB view (means, scales, rotations, opacity logits, SH colour).
      log_densities: [C] float32 log peak density (1/mm).
      radiative: [C] bool, True for splats that came from the radiative set.
    """

    splats: RGBSplats
    log_densities: jax.Array
    radiative: jax.Array


def colour_transfer(rad: RadSplats, rgb: RGBSplats) -> jax.Array:
    """[C_rad, 3] colour in [0, 1] of each radiative splat: the DC colour of its nearest active RGB splat."""
    idx, _ = nearest_neighbor(rad.means, rgb.means, rgb.active)
    dc = sh_lib.sh0_to_rgb(rgb.sh[:, 0, :])
    return jnp.clip(dc[idx], 0.0, 1.0)


def detail_clone_mask(rgb: RGBSplats, *, percentile: float = 95.0) -> np.ndarray:
    """[C] bool: active RGB splats whose largest covariance eigenvalue ≤ the percentile of the set."""
    act = np.asarray(rgb.active)
    lam = np.exp(2.0 * np.asarray(rgb.log_scales, np.float64)).max(axis=1)  # eigenvalues = scale²
    if not act.any():
        return act.copy()
    thr = np.percentile(lam[act], percentile)
    return act & (lam <= thr)


NO_DENSITY = -1.0e4  # log density of a splat without mass: exp() is exactly 0 in float32


def unify(rad: RadSplats, rgb: RGBSplats, *, percentile: float = 95.0,
          clone_density: str = "zero") -> UnifiedModel:
    """Colour transfer + detail cloning (both sets in the CT frame, after fitting).

    ``clone_density``: "zero" (default) or "nearest" (module docstring).

    Returns:
      The :class:`UnifiedModel` of the active radiative splats followed by the cloned RGB splats.
    """
    if clone_density not in ("zero", "nearest"):
        raise ValueError(f'clone_density must be "zero" or "nearest", got {clone_density!r}')
    rad_a = select_active(rad)
    rgb_a = select_active(rgb)
    if rad_a.capacity == 0 or rgb_a.capacity == 0:
        raise ValueError("both splat sets need at least one active splat")
    colours = colour_transfer(rad_a, rgb_a)
    keep = detail_clone_mask(rgb_a, percentile=percentile)
    clones = jax.tree_util.tree_map(lambda x: x[np.flatnonzero(keep)], rgb_a)
    k = rgb_a.sh.shape[1]
    sh_rad = jnp.zeros((rad_a.capacity, k, 3), jnp.float32).at[:, 0].set(sh_lib.rgb_to_sh0(colours))
    splats = RGBSplats(
        means=jnp.concatenate([rad_a.means, clones.means]),
        log_scales=jnp.concatenate([rad_a.log_scales, clones.log_scales]),
        quats=jnp.concatenate([rad_a.quats, clones.quats]),
        opacity_logits=jnp.concatenate([radiative_opacity_logits(rad_a), clones.opacity_logits]),
        sh=jnp.concatenate([sh_rad, clones.sh]),
        active=jnp.ones(rad_a.capacity + clones.capacity, bool))
    if clone_density == "nearest":
        nn, _ = nearest_neighbor(clones.means, rad_a.means)
        clone_dens = rad_a.log_densities[nn]
    else:
        clone_dens = jnp.full(clones.capacity, NO_DENSITY, jnp.float32)
    dens = jnp.concatenate([rad_a.log_densities, clone_dens])
    radiative = jnp.concatenate([jnp.ones(rad_a.capacity, bool), jnp.zeros(clones.capacity, bool)])
    return UnifiedModel(splats, dens, radiative)


@functools.lru_cache(maxsize=8)
def colour_fit_block(lr: float, background: tuple, lambda_ssim: float,
                     raster: RasterConfig = RasterConfig()):
    """(optimizer, jitted block) of :func:`refine_colours`: ``run(params, opt_state, active,
    order, cams, photos)`` runs one iteration per index of ``order`` (SH rates only; cached, so
    repeated fits and benchmarks reuse the compiled code). ``raster``: the rasterizer's options."""
    import optax

    from insideout_jax.losses import photometric_loss
    from insideout_jax.render.rgb import render_rgb
    from insideout_jax.train.optim import make_optimizer
    from insideout_jax.train.rgb import sh_optimizer

    optimizer = make_optimizer({"sh": sh_optimizer(lr)},
                               frozen=("means", "log_scales", "quats", "opacity_logits"))
    bg = jnp.asarray(background, jnp.float32)

    def loss_fn(params, active, cam, img):
        out = render_rgb(RGBSplats(**params, active=active), cam, background=bg, config=raster)
        return photometric_loss(out.color, img, lambda_ssim=lambda_ssim)

    @jax.jit
    def run(params, opt_state, active, order, cams, imgs):
        def step(carry, i):
            params, opt_state = carry
            cam = jax.tree_util.tree_map(lambda x: x[i], cams)
            loss, g = jax.value_and_grad(loss_fn)(params, active, cam, imgs[i])
            upd, opt_state = optimizer.update(g, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), loss

        return jax.lax.scan(step, (params, opt_state), order)

    return optimizer, run


def refine_colours(model: UnifiedModel, photos, cameras, *, iterations: int = 300,
                   lr: float = 2.5e-3, block: int = 50, background=(0.0, 0.0, 0.0),
                   lambda_ssim: float = 0.2, seed: int = 0, progress: bool = True):
    """Fit the unified model's colours (SH only) to the training photos.

    Decision (the paper stops after colour transfer): detail cloning leaves out the 5 % largest RGB
    splats, and the radiative splats that take their place carry one nearest-neighbour colour, so
    the unified model loses 1.6-2 dB on held-out photos (measured on the skull). A short 3DGS
    colour fit (Adam, DC at ``lr``, higher bands at ``lr``/20; loss (1−λs)·L1 + λs·D-SSIM) on the
    *training* photos restores it. Means, scales, rotations, opacities and densities are frozen,
    so projections, slices and volumes are exactly those of the model before.

    Args:
      model: the unified model (CT frame).
      photos: [V, H, W, 3] training photos in [0, 1].
      cameras: V same-sized cameras in the CT frame.
      iterations, lr, block, background, lambda_ssim, seed: schedule and loss.

    Returns:
      (model with new SH, history).
    """
    from insideout_jax.train.loop import run_training
    from insideout_jax.train.optim import merge_params, split_params
    from insideout_jax.train.rgb import stack_cameras

    imgs = jnp.asarray(photos, jnp.float32)
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or len(cameras) != imgs.shape[0]:
        raise ValueError(f"photos must be [V, H, W, 3] with one camera each, got {imgs.shape} and"
                         f" {len(cameras)} cameras")
    cams = stack_cameras(cameras)
    if (int(cams.width), int(cams.height)) != (imgs.shape[2], imgs.shape[1]):
        raise ValueError(f"cameras are {int(cams.width)}×{int(cams.height)} but photos are"
                         f" {imgs.shape[2]}×{imgs.shape[1]}")
    raster = RasterConfig(pair_capacity=fitted_pair_capacity(model.splats, cameras))  # fixed shapes
    optimizer, run = colour_fit_block(float(lr), tuple(float(b) for b in background),
                                      float(lambda_ssim), raster)
    key = jax.random.key(seed)
    params, active = split_params(model.splats)

    def run_block(state, n):
        order = jax.random.randint(jax.random.fold_in(key, int(state["step"])), (n,), 0,
                                   imgs.shape[0])
        (p, o), losses = run(state["params"], state["opt_state"], state["active"], order, cams,
                             imgs)
        return dict(state, params=p, opt_state=o), losses

    state = dict(params=params, active=active, opt_state=optimizer.init(params), step=0)
    state, history = run_training(state, n_iters=iterations, block=block, run_block=run_block,
                                  after_block=lambda s: s, template=None, desc="colour fit",
                                  progress=progress)
    splats = merge_params(model.splats, state["params"], state["active"])
    return dataclasses.replace(model, splats=splats), history


def as_radiative(model: UnifiedModel) -> RadSplats:
    """The density view of the unified model (for projections, slices, volumes)."""
    s = model.splats
    return RadSplats(means=s.means, log_scales=s.log_scales, quats=s.quats,
                     log_densities=model.log_densities, opacity_logits=s.opacity_logits,
                     features=jnp.exp(model.log_densities)[:, None],
                     colors=jnp.clip(sh_lib.sh0_to_rgb(s.sh[:, 0, :]), 0.0, 1.0), active=s.active)


def write_unified_ply(path: str | Path, model: UnifiedModel) -> Path:
    """3DGS PLY (Inria fields, full SH) of the unified model plus ``density`` and ``radiative``."""
    from plyfile import PlyData, PlyElement

    from insideout_jax.io.ply import write_ply

    path = Path(path)
    write_ply(path, model.splats)
    v = PlyData.read(str(path))["vertex"].data
    act = np.asarray(model.splats.active)
    dens = np.exp(np.asarray(model.log_densities, np.float64))[act].astype(np.float32)
    rad = np.asarray(model.radiative)[act].astype(np.float32)
    out = np.empty(len(v), dtype=v.dtype.descr + [("density", "<f4"), ("radiative", "<f4")])
    for name in v.dtype.names:
        out[name] = v[name]
    out["density"], out["radiative"] = dens, rad
    PlyData([PlyElement.describe(out, "vertex")], byte_order="<").write(str(path))
    return path
