"""Stage 1b: radiative splats from X-ray projections (ACUI initialisation, density-aware training).

- **ACUI** (paper §3.2, X-Gaussian): centres drawn uniformly in the cuboid that the detector sees
  from every angle (the field-of-view cylinder's bounding box, or a given box), isotropic scales
  from the 3-NN distance, and one common density chosen so the initial projections have the mean
  of the measured ones.
- **FDK initialisation** (R²-Gaussian's, ``init="fdk"``): the FDK reconstruction of the training
  projections on the scanned cuboid; centres drawn uniformly among its voxels above
  ``init_threshold`` × its 99.9th percentile (a fraction of the data's own range), isotropic scales
  from the 3-NN distance, and each splat's density set so it carries the FDK mass of its share of
  that region: ρᵢ = FDK(xᵢ) · (V / N) / ((2π)^{3/2} σᵢ³).
- **Loss** on projections scaled by the largest training value p_max (so [0, 1]):
  (1−λs)·L1 + λs·(1 − SSIM), optionally + λ_tv · TV of the field voxelized on a random cube.
- **Densification** is density-aware (:mod:`insideout_jax.train.densify`): clone and split keep the
  mass ∫ρG, splats of negligible density are pruned. The statistic is the norm of the gradient
  with respect to the centre (per mm), averaged over the views in which the splat was seen.
- Every ``holdout_every``-th view is held out; ``lax.scan`` blocks, progress bar and atomic
  checkpoints as for RGB training (:mod:`insideout_jax.train.loop`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax import xla
from insideout_jax.cameras import XrayGeometry
from insideout_jax.losses import photometric_loss, tv_3d
from insideout_jax.render.slices import VoxelGrid, voxelize
from insideout_jax.render.xray import render_xray, resolve_xray_backend
from insideout_jax.splats import RadSplats, knn_log_scales, pad_to_capacity, rad_splats_from_points, select_active
from insideout_jax.train.densify import DensifyConfig, densify_if_due, initial_train_state
from insideout_jax.train.loop import run_training
from insideout_jax.train.optim import make_optimizer, mask_gradients, merge_params

__all__ = ["XrayTrainConfig", "train_xray", "acui_points", "checked_projections", "fdk_init", "scan_cuboid",
           "evaluate_xray", "score_projections"]


@dataclasses.dataclass(frozen=True)
class XrayTrainConfig:
    """Radiative training constants (rates after R²-Gaussian / X-Gaussian, scaled to mm).

    Attributes:
      iterations: total iterations (paper, X-Gaussian: 5k).
      block: iterations per jitted block.
      views_per_step: projections rendered per iteration.
      n_init: initial points.
      init: "acui" (uniform in the scanned cuboid) or "fdk" (where the FDK reconstruction of the
        training projections is dense; module docstring).
      init_threshold: the FDK initialisation keeps voxels above this fraction of its 99.9th
        percentile.
      init_grid: voxels per side of that FDK reconstruction.
      lambda_ssim: λs.
      lambda_tv: weight of the 3D total variation (0 = off).
      tv_size: voxels per side of the random TV cube; tv_spacing its voxel size (mm).
      position_lr_init, position_lr_final: × cuboid half-diagonal (mm), exponential decay.
      density_lr, scaling_lr, rotation_lr: Adam rates (log density, log scale, quaternion).
      densify_from, densify_until, densify_every: densification window and period.
      densify: constants (grad_threshold in units of the per-mm centre gradient).
      capacity_factor: initial capacity = factor × n_init.
      holdout_every: every k-th view is held out.
      seed: PRNG seed.
      backend: back end of the X-ray renderer (:func:`~insideout_jax.render.xray.render_xray`)
        and of the TV term's voxelizer: "auto" (Pallas kernels on GPU, XLA elsewhere), "xla",
        "pallas" or "pallas_interpret" (the kernels in the Pallas interpreter; tests).
    """

    iterations: int = 5000
    block: int = 100
    views_per_step: int = 1
    n_init: int = 20_000
    init: str = "acui"
    init_threshold: float = 0.05
    init_grid: int = 96
    lambda_ssim: float = 0.2
    lambda_tv: float = 0.0
    tv_size: int = 24
    tv_spacing: float = 2.0
    position_lr_init: float = 2e-4
    position_lr_final: float = 2e-5
    density_lr: float = 1e-2
    scaling_lr: float = 5e-3
    rotation_lr: float = 1e-3
    densify_from: int = 500
    densify_until: int = 3000
    densify_every: int = 100
    densify: DensifyConfig = DensifyConfig(grad_threshold=2e-5, percent_dense=0.01,
                                           min_density=1e-6, max_scale_fraction=0.2)
    capacity_factor: float = 2.0
    holdout_every: int = 8
    seed: int = 0
    backend: str = "auto"


def checked_projections(projections, geometry: XrayGeometry) -> tuple[np.ndarray, float]:
    """(float32 projections, their maximum) after checking them for training.

    Raises:
      ValueError: for a shape other than [V, nv, nu] of ``geometry``, non-finite values, or
        projections all ≤ 0 (nothing to reconstruct).
    """
    proj = np.asarray(projections, np.float32)
    nv, nu = geometry.n_detector
    if proj.shape != (geometry.n_views, nv, nu):
        raise ValueError(f"projections must have shape [{geometry.n_views}, {nv}, {nu}], got {proj.shape}")
    if not np.all(np.isfinite(proj)):
        raise ValueError("projections contain non-finite values")
    p_max = float(proj.max())
    if p_max <= 0:
        raise ValueError("projections are all ≤ 0: nothing to reconstruct")
    return proj, p_max


def scan_cuboid(geometry: XrayGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) xyz (mm, CT frame) of the box around the field-of-view cylinder.

    The cylinder is the set of points seen by the detector from every angle: its radius is the
    detector half-width at the rotation axis, its height the detector height there. For per-view
    poses (no rotation axis) it is the cube of half-side min(radius, half-height) around the mean
    isocentre.
    """
    nv, nu = geometry.n_detector
    dv, du = (float(x) for x in np.asarray(geometry.d_detector))
    mag = float(geometry.dsd) / float(geometry.dso) if geometry.mode == "cone" else 1.0
    r = 0.5 * nu * du / mag
    h = 0.5 * nv * dv / mag
    off = np.asarray(geometry.offset_origin, np.float64)
    ov = float(np.asarray(geometry.offset_detector)[0]) / mag
    if geometry.mode == "cone":  # the cone narrows towards the source: shrink to the safe part
        dso = float(geometry.dso)
        h = h * (dso - r) / dso
    if geometry.poses is not None:
        c = np.asarray(geometry.poses, np.float64)[:, 3].mean(0)
        a = min(r, h)
        return c - a, c + a
    lo = np.array([-r, -r, -h + ov]) - off
    hi = np.array([r, r, h + ov]) - off
    return lo, hi


def acui_points(key: jax.Array, lo, hi, n: int) -> np.ndarray:
    """[n, 3] centres uniform in the cuboid [lo, hi] (ACUI)."""
    u = np.asarray(jax.random.uniform(key, (n, 3)), np.float64)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return (lo + u * (hi - lo)).astype(np.float32)


def fdk_init(projections: np.ndarray, geometry: XrayGeometry, key: jax.Array, lo, hi, n: int, *,
             threshold: float, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points [n, 3], log_scales [n, 3], densities [n]) of the FDK initialisation (module docstring).

    Raises:
      ValueError: if no voxel of the reconstruction is above the threshold.
    """
    from insideout_jax.fdk import fdk

    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    sp_xyz = (hi - lo) / grid
    vol = np.asarray(fdk(projections, geometry, (grid,) * 3, sp_xyz[::-1], lo + 0.5 * sp_xyz))
    cut = threshold * float(np.percentile(vol, 99.9))
    idx = np.flatnonzero(vol > max(cut, 0.0))
    if len(idx) == 0:
        raise ValueError("the FDK reconstruction of the projections has no voxel above the"
                         f" initialisation threshold ({threshold} of its 99.9th percentile)")
    k1, k2 = jax.random.split(key)
    pick = idx[np.asarray(jax.random.randint(k1, (n,), 0, len(idx)))]
    zyx = np.stack(np.unravel_index(pick, vol.shape), -1).astype(np.float64)
    jitter = np.asarray(jax.random.uniform(k2, (n, 3)), np.float64) - 0.5
    pts = lo + (zyx[:, ::-1] + 0.5 + jitter) * sp_xyz
    log_scales = knn_log_scales(pts)
    sigma3 = np.exp(3.0 * log_scales[:, 0].astype(np.float64))
    mass = vol.ravel()[pick] * (len(idx) * float(np.prod(sp_xyz)) / n)
    rho = np.maximum(mass / ((2 * np.pi) ** 1.5 * sigma3), 1e-8)
    return pts.astype(np.float32), log_scales, rho.astype(np.float32)


def _initial_density(proj_mean: float, lo, hi, n: int, scale: float, path_len: float) -> float:
    """Common peak density so that a uniform-ish field reproduces the mean projection value."""
    vol = float(np.prod(np.asarray(hi) - np.asarray(lo)))
    field = proj_mean / max(path_len, 1e-6)  # mean attenuation along a ray (1/mm)
    mass_per = (2 * np.pi) ** 1.5 * scale**3
    return float(max(field * vol / (n * mass_per), 1e-8))


@functools.lru_cache(maxsize=8)
def _make_block(cfg: XrayTrainConfig, extent: float, p_max: float):
    pos = optax.exponential_decay(cfg.position_lr_init * extent, max(cfg.iterations, 1),
                                  cfg.position_lr_final / cfg.position_lr_init)
    optimizer = make_optimizer(dict(means=pos, log_scales=cfg.scaling_lr, quats=cfg.rotation_lr,
                                    log_densities=cfg.density_lr),
                               frozen=("opacity_logits", "features", "colors"))

    def loss_fn(params, active, geometry, views, target, tv_origin):
        sp = RadSplats(**params, active=active)
        pred = render_xray(sp, geometry, views, backend=cfg.backend) / p_max
        loss = jnp.mean(jax.vmap(lambda a, b: photometric_loss(a, b, lambda_ssim=cfg.lambda_ssim))(
            pred, target / p_max))
        if cfg.lambda_tv > 0:
            grid = VoxelGrid(jnp.full(3, cfg.tv_spacing, jnp.float32), tv_origin, (cfg.tv_size,) * 3)
            loss = loss + cfg.lambda_tv * tv_3d(voxelize(sp, grid, backend=cfg.backend))
        return loss

    def step(carry, xs, *, active, geometry, projections):
        params, opt_state, grad_acc, count = carry
        views, tv_origin = xs
        loss, g = jax.value_and_grad(loss_fn)(params, active, geometry, views, projections[views],
                                              tv_origin)
        g = mask_gradients(g, active)
        upd, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        grad_acc = grad_acc + jnp.where(active, jnp.linalg.norm(g["means"], axis=-1), 0.0)
        count = count + active.astype(jnp.float32)
        return (params, opt_state, grad_acc, count), loss

    @xla.jit
    def block(params, opt_state, grad_acc, count, active, geometry, projections, views, tv_origins):
        body = lambda c, x: step(c, x, active=active, geometry=geometry, projections=projections)
        return jax.lax.scan(body, (params, opt_state, grad_acc, count), (views, tv_origins))

    return optimizer, block


def train_xray(projections: np.ndarray, geometry: XrayGeometry,
               cfg: XrayTrainConfig = XrayTrainConfig(), *, bbox=None,
               checkpoint_path: str | Path | None = None, progress: bool = True,
               init_splats: RadSplats | None = None):
    """Train radiative splats on projections (training views only).

    Args:
      projections: [V, nv, nu] float32 line integrals, in the order of the geometry's views.
      geometry: the scanner geometry of these views.
      cfg: constants.
      bbox: optional (lo, hi) xyz box for ACUI (default :func:`scan_cuboid`).
      checkpoint_path: ``.npz`` saved after every block; an existing one is resumed.
      init_splats: start from these splats (e.g. a prior model of the same object) instead of
        ``cfg.init``; capacity becomes ``capacity_factor`` × their active count.

    Returns:
      (splats, history).
    """
    resolve_xray_backend(cfg.backend, runnable=True)  # ValueError for a bad back end, before any work
    if cfg.init not in ("acui", "fdk"):
        raise ValueError(f"init must be 'acui' or 'fdk', got {cfg.init!r}")
    proj, p_max = checked_projections(projections, geometry)
    lo, hi = scan_cuboid(geometry) if bbox is None else (np.asarray(bbox[0]), np.asarray(bbox[1]))
    extent = float(0.5 * np.linalg.norm(hi - lo))
    key = jax.random.key(cfg.seed)
    cap = int(np.ceil(cfg.capacity_factor * cfg.n_init))
    if init_splats is not None:
        init = select_active(init_splats)
        init = pad_to_capacity(init, int(np.ceil(cfg.capacity_factor * init.means.shape[0])))
    elif cfg.init == "fdk":
        pts, ls, rho = fdk_init(proj, geometry, jax.random.fold_in(key, 1), lo, hi, cfg.n_init,
                                threshold=cfg.init_threshold, grid=cfg.init_grid)
        init = rad_splats_from_points(pts, rho, capacity=cap, log_scales=ls)
    else:
        pts = acui_points(jax.random.fold_in(key, 1), lo, hi, cfg.n_init)
        init = rad_splats_from_points(pts, 1.0, capacity=cap)
        scale = float(np.exp(np.median(np.asarray(init.log_scales[: cfg.n_init, 0]))))
        rho0 = _initial_density(float(proj.mean()), lo, hi, cfg.n_init, scale, float(hi[0] - lo[0]))
        init = init.replace(log_densities=jnp.where(init.active, np.log(rho0), init.log_densities))
    optimizer, block_fn = _make_block(cfg, extent, p_max)
    proj_j = jnp.asarray(proj)
    v = len(proj)
    vps = min(cfg.views_per_step, v)
    tv_span = np.maximum(hi - lo - cfg.tv_size * cfg.tv_spacing, 0.0)

    def fresh_state(splats: RadSplats) -> dict:
        return initial_train_state(splats, optimizer)

    def template(capacity: int) -> dict:
        return fresh_state(rad_splats_from_points(np.zeros((1, 3), np.float32), capacity=capacity))

    def run_block(state, n):
        k = jax.random.fold_in(key, int(state["step"]))
        views = jax.random.randint(k, (n, vps), 0, v)
        u = np.asarray(jax.random.uniform(jax.random.fold_in(k, 1), (n, 3)))
        tv_origins = jnp.asarray(lo + u * tv_span, jnp.float32)
        (params, opt_state, acc, cnt), losses = block_fn(
            state["params"], state["opt_state"], state["grad_acc"], state["count"],
            state["active"], geometry, proj_j, views, tv_origins)
        return dict(state, params=params, opt_state=opt_state, grad_acc=acc, count=cnt), losses

    def after_block(state):
        return densify_if_due(state, init, key, optimizer, start=cfg.densify_from,
                              until=cfg.densify_until, every=cfg.densify_every, block=cfg.block,
                              scene_extent=extent, cfg=cfg.densify)

    state, history = run_training(fresh_state(init), n_iters=cfg.iterations, block=cfg.block,
                                  run_block=run_block, after_block=after_block, template=template,
                                  checkpoint_path=checkpoint_path, desc="xray GS",
                                  progress=progress)
    return merge_params(init, state["params"], state["active"]), history


def evaluate_xray(splats: RadSplats, projections: np.ndarray, geometry: XrayGeometry,
                  views=None, *, backend: str = "auto") -> dict:
    """Held-out projection metrics of radiative splats (:func:`score_projections`).

    ``backend``: the X-ray renderer's (:func:`~insideout_jax.render.xray.render_xray`).
    """
    idx = np.arange(geometry.n_views) if views is None else np.asarray(views)
    return score_projections(
        lambda i: render_xray(splats, geometry, np.array([i]), backend=backend)[0], projections, idx)


def score_projections(render_view, projections: np.ndarray, views) -> dict:
    """PSNR (min–max normalised, EVALUATION §2) and valid SSIM (both images min–max normalised) of
    ``render_view(i)`` against ``projections[i]``, mean over ``views``."""
    from insideout_jax.metrics.image import psnr_minmax, ssim_valid

    def to_unit_range(x):
        lo, hi = float(x.min()), float(x.max())
        return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)

    ps, ss = [], []
    for i in views:
        pred = np.asarray(render_view(int(i)))
        ref = np.asarray(projections[i], np.float32)
        ps.append(psnr_minmax(pred, ref))
        ss.append(ssim_valid(to_unit_range(pred), to_unit_range(ref)))
    return {"psnr": float(np.nanmean(ps)), "ssim": float(np.nanmean(ss)), "n_views": len(views)}
