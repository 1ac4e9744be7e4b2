"""Stage 1a: 3DGS training of RGB splats from photos and SfM points (Kerbl et al. 2023).

Initialisation from the SfM points (scale from the 3-NN distance, opacity 0.1), optax Adam with the
3DGS per-parameter rates (position rate × scene extent with exponential decay), loss
(1−λs)·L1 + λs·(1 − SSIM) with λs = 0.2, SH degree raised every ``sh_up_every`` iterations,
densification (clone / split / prune) and opacity reset in fixed-capacity buffers with the
optimizer moments remapped, every ``holdout_every``-th photo held out, ``lax.scan`` over blocks
of iterations, a progress bar and atomic checkpoints (:mod:`insideout_jax.train.loop`).

The densification statistic is the 3DGS one: the norm of the gradient with respect to the
projected centre, in NDC units (pixel gradient × (W/2, H/2)), averaged over the iterations in which
the splat was visible.
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
from insideout_jax.cameras import PinholeCamera, camera_center
from insideout_jax.losses import photometric_loss
from insideout_jax.render.rgb import RasterConfig, fitted_pair_capacity, render_rgb
from insideout_jax.splats import RGBSplats, rgb_splats_from_points
from insideout_jax.train.densify import DensifyConfig, densify_if_due, initial_train_state
from insideout_jax.train.loop import run_training
from insideout_jax.train.optim import make_optimizer, mask_gradients, merge_params

__all__ = ["RGBTrainConfig", "train_rgb", "scene_extent", "holdout_split", "stack_cameras",
           "sh_optimizer",
           "evaluate_rgb"]


@dataclasses.dataclass(frozen=True)
class RGBTrainConfig:
    """3DGS training constants (defaults: Kerbl et al., ``arguments/__init__.py``; the paper
    trains 20k iterations).

    Attributes:
      iterations: total iterations (one photo each).
      block: iterations per jitted block (densification and checkpoints happen between blocks).
      lambda_ssim: λs of the photometric loss.
      position_lr_init, position_lr_final: × scene extent, exponential decay over
        ``position_lr_steps``.
      sh_lr: DC colour rate; higher SH bands use sh_lr / 20.
      opacity_lr, scaling_lr, rotation_lr: per-field Adam rates.
      sh_degree: final SH degree; starts at 0 and rises by one every ``sh_up_every``.
      densify_from, densify_until, densify_every: densification window and period.
      opacity_reset_every: 3DGS opacity reset period (within the densification window).
      densify: clone / split / prune constants.
      capacity_factor: initial capacity = factor × number of SfM points.
      holdout_every: every k-th photo (sorted by name) is held out for evaluation.
      background: background colour (r, g, b) in [0, 1].
      seed: PRNG seed.
    """

    iterations: int = 20_000
    block: int = 100
    lambda_ssim: float = 0.2
    position_lr_init: float = 1.6e-4
    position_lr_final: float = 1.6e-6
    position_lr_steps: int = 30_000
    sh_lr: float = 2.5e-3
    opacity_lr: float = 0.025
    scaling_lr: float = 5e-3
    rotation_lr: float = 1e-3
    sh_degree: int = 3
    sh_up_every: int = 1000
    densify_from: int = 500
    densify_until: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    densify: DensifyConfig = DensifyConfig()
    capacity_factor: float = 4.0
    holdout_every: int = 8
    background: tuple = (0.0, 0.0, 0.0)
    seed: int = 0


def holdout_split(n: int, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): every ``every``-th item (0, every, 2·every, …) is held out."""
    idx = np.arange(n)
    held = idx[::every] if every > 0 else idx[:0]
    return np.setdiff1d(idx, held), held


def scene_extent(cameras) -> float:
    """3DGS scene radius: 1.1 × the largest distance of a camera centre from their mean."""
    c = np.stack([np.asarray(camera_center(cam), np.float64) for cam in cameras])
    return float(1.1 * np.linalg.norm(c - c.mean(0), axis=1).max())


def stack_cameras(cameras) -> PinholeCamera:
    """Stack same-sized cameras into one pytree with a leading view axis."""
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) != 1:
        raise ValueError(f"all photos must have one size for batched training, got {sorted(sizes)}")
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *cameras)


def sh_optimizer(lr: float) -> optax.GradientTransformation:
    """3DGS's colour optimizer: Adam with the DC band at ``lr`` and bands ≥ 1 at ``lr`` / 20."""
    def update(updates, state, params=None):
        del params

        def scale(u):  # u: [C, K, 3]
            w = jnp.where(jnp.arange(u.shape[1]) == 0, 1.0, 1.0 / 20.0)[None, :, None]
            return u * w

        return jax.tree_util.tree_map(scale, updates), state

    return optax.chain(optax.adam(lr, eps=1e-15),
                       optax.GradientTransformation(lambda p: optax.EmptyState(), update))


def _optimizer(cfg: RGBTrainConfig, extent: float):
    pos = optax.exponential_decay(cfg.position_lr_init * extent, cfg.position_lr_steps,
                                  cfg.position_lr_final / cfg.position_lr_init)
    rates = dict(means=pos, log_scales=cfg.scaling_lr, quats=cfg.rotation_lr,
                 opacity_logits=cfg.opacity_lr, sh=sh_optimizer(cfg.sh_lr))
    return make_optimizer(rates)


@functools.lru_cache(maxsize=16)
def _make_block(cfg: RGBTrainConfig, raster: RasterConfig, width: int, height: int, extent: float):
    """(optimizer, jitted block) — cached so repeated or resumed runs reuse compiled code."""
    optimizer = _optimizer(cfg, extent)
    bg = jnp.asarray(cfg.background, jnp.float32)
    ndc = jnp.asarray([width / 2.0, height / 2.0], jnp.float32)

    def loss_fn(params, delta, active, cam, img, degree):
        sp = RGBSplats(**params, active=active)
        out = render_rgb(sp, cam, background=bg, sh_degree=degree, means2d_delta=delta,
                         config=raster)
        return photometric_loss(out.color, img, lambda_ssim=cfg.lambda_ssim), out.visible

    def step(carry, xs, *, active, cams, images, degree):
        params, opt_state, grad_acc, count = carry
        idx = xs
        cam = jax.tree_util.tree_map(lambda x: x[idx], cams)
        delta = jnp.zeros((params["means"].shape[0], 2), jnp.float32)
        (loss, vis), (g, gd) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            params, delta, active, cam, images[idx], degree)
        g = mask_gradients(g, active)
        upd, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, upd)
        seen = vis & active
        grad_acc = grad_acc + jnp.where(seen, jnp.linalg.norm(gd * ndc, axis=-1), 0.0)
        count = count + seen.astype(jnp.float32)
        return (params, opt_state, grad_acc, count), loss

    @xla.jit(static_argnames=("degree",))
    def block(params, opt_state, grad_acc, count, active, order, cams, images, degree):
        body = lambda c, x: step(c, x, active=active, cams=cams, images=images, degree=degree)
        return jax.lax.scan(body, (params, opt_state, grad_acc, count), order)

    return optimizer, block


def train_rgb(images: np.ndarray, cameras, points: np.ndarray, colors: np.ndarray | None = None,
              cfg: RGBTrainConfig = RGBTrainConfig(), *, raster: RasterConfig = RasterConfig(),
              checkpoint_path: str | Path | None = None, progress: bool = True, desc: str = "rgb 3DGS"):
    """Train RGB splats on the given (training) photos.

    Args:
      images: [V, H, W, 3] float32 photos in [0, 1] (training views only).
      cameras: V :class:`PinholeCamera` of size W × H.
      points: [N, 3] SfM points (initial centres).
      colors: [N, 3] point colours in [0, 1] (default grey).
      cfg: constants.
      raster: rasterizer options (speed only); with ``pair_capacity=None`` the capacity is
        fitted to the splats before every block (:func:`fitted_pair_capacity` on up to four
        training views).
      checkpoint_path: ``.npz`` saved after every block; an existing one is resumed.
      desc: the progress bar's label.

    Returns:
      (splats, history): trained :class:`RGBSplats` and the per-block loss / time history.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [V, H, W, 3], got {images.shape}")
    if len(cameras) != len(images):
        raise ValueError(f"{len(cameras)} cameras for {len(images)} images")
    v, h, w, _ = images.shape
    cams = stack_cameras(cameras)
    if (cams.width, cams.height) != (w, h):
        raise ValueError(f"cameras are {cams.width}×{cams.height} but images are {w}×{h}")
    extent = scene_extent(cameras)
    points = np.asarray(points, np.float32)
    cap0 = int(max(len(points), np.ceil(cfg.capacity_factor * len(points))))
    init = rgb_splats_from_points(points, colors, sh_degree=cfg.sh_degree, capacity=cap0)
    optimizer = _make_block(cfg, raster, w, h, extent)[0]
    images_j = jnp.asarray(images)
    key = jax.random.key(cfg.seed)

    def fresh_state(splats: RGBSplats) -> dict:
        return initial_train_state(splats, optimizer)

    def template(capacity: int) -> dict:
        base = rgb_splats_from_points(np.zeros((1, 3), np.float32), sh_degree=cfg.sh_degree,
                                      capacity=capacity)
        return fresh_state(base)

    def run_block(state, n):
        step0 = int(state["step"])
        order = jax.random.randint(jax.random.fold_in(key, step0), (n,), 0, v)
        degree = min(cfg.sh_degree, step0 // cfg.sh_up_every)
        fitted = raster
        if raster.pair_capacity is None:
            sp = merge_params(init, state["params"], state["active"])
            fitted = dataclasses.replace(raster, pair_capacity=fitted_pair_capacity(sp, cameras, raster))
        block_fn = _make_block(cfg, fitted, w, h, extent)[1]
        (params, opt_state, acc, cnt), losses = block_fn(
            state["params"], state["opt_state"], state["grad_acc"], state["count"],
            state["active"], order, cams, images_j, degree)
        return dict(state, params=params, opt_state=opt_state, grad_acc=acc, count=cnt), losses

    def after_block(state):
        return densify_if_due(state, init, key, optimizer, start=cfg.densify_from,
                              until=cfg.densify_until, every=cfg.densify_every, block=cfg.block,
                              scene_extent=extent, cfg=cfg.densify,
                              reset_every=cfg.opacity_reset_every)

    state, history = run_training(fresh_state(init), n_iters=cfg.iterations, block=cfg.block,
                                  run_block=run_block, after_block=after_block, template=template,
                                  checkpoint_path=checkpoint_path, desc=desc,
                                  progress=progress)
    return merge_params(init, state["params"], state["active"]), history


def evaluate_rgb(splats: RGBSplats, images: np.ndarray, cameras, *, background=(0.0, 0.0, 0.0),
                 raster: RasterConfig = RasterConfig()) -> dict:
    """PSNR (data range 1) and valid-form SSIM of renders against photos, mean over views."""
    from insideout_jax.metrics.image import psnr, ssim_valid

    ps, ss = [], []
    bg = jnp.asarray(background, jnp.float32)
    for img, cam in zip(images, cameras, strict=True):
        out = np.clip(np.asarray(render_rgb(splats, cam, background=bg, config=raster).color), 0, 1)
        ps.append(float(psnr(out, img)))
        ss.append(float(ssim_valid(out, img)))
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "n_views": len(ps)}
