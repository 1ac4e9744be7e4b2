"""Stage 3, internal rendering: train splats on CT cross-sections with the X-ray reference loss.

Loss per slice (paper §4.2): (1−λs)·L1 + λs·D-SSIM + λz·L_zero-one, λs = 0.2, λz = 0.005, between
the rendered slice (:func:`insideout_jax.render.slices.render_slice`, the exact density field on
the plane) and its target, both divided by the target set's maximum so they lie in [0, ~1].

- **Radiative splats** learn the CT slices themselves; optionally the projection loss of stage 1
  stays on (``projection_weight``), so the splats keep explaining the radiographs.
- **RGB splats** learn the outer Canny contour of each slice ({0, 1}); opacity acts as density;
  only geometry (means, log_scales, quats, opacity) moves, never colour (SH frozen).

Decisions (the paper is silent):
- *Opacity of a radiative splat* for the zero-one term: α = 1 − exp(−τ) with τ = ρ·√(2π)·s̄ the
  line integral through the centre along an axis of mean scale s̄ (geometric mean) — the opacity a
  ray through the splat sees. The term then pushes splats to be either clearly present or absent.
- *Rates*: Adam with the paper's 5e-4 for every geometric field, positions in units of the scene
  extent (rate × extent mm), as 3DGS scales its position rate.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax.losses import photometric_loss, xray_reference_loss
from insideout_jax.render.slices import SlicePlane, render_slice
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import RadSplats, RGBSplats
from insideout_jax.train.loop import run_training
from insideout_jax.train.optim import make_optimizer, mask_gradients, merge_params, split_params

__all__ = ["InternalConfig", "train_internal", "radiative_opacity_logits", "stack_planes"]


@dataclasses.dataclass(frozen=True)
class InternalConfig:
    """Internal-rendering constants (paper: 20k iterations, Adam 5e-4, λs 0.2, λz 0.005).

    Attributes:
      iterations: total iterations (one slice each).
      block: iterations per jitted block.
      lr: Adam rate of every geometric field (positions: × scene extent).
      lambda_ssim, lambda_zero_one: loss weights.
      projection_weight: radiative only: weight of the stage-1 projection loss kept on (0 = off).
      cutoff_sigma: slice renderer culling (5σ: ≤ 1.5e-5 relative, EVALUATION §6).
      seed: PRNG seed.
    """

    iterations: int = 20_000
    block: int = 100
    lr: float = 5e-4
    lambda_ssim: float = 0.2
    lambda_zero_one: float = 0.005
    projection_weight: float = 1.0
    cutoff_sigma: float = 5.0
    seed: int = 0


def radiative_opacity_logits(splats: RadSplats) -> jax.Array:
    """[C] logit of α = 1 − exp(−ρ·√(2π)·s̄) (module docstring): log(expm1(τ))."""
    tau = jnp.exp(splats.log_densities + jnp.mean(splats.log_scales, axis=-1)) * jnp.sqrt(2 * jnp.pi)
    tau = jnp.clip(tau, 1e-12, 50.0)
    return jnp.log(jnp.expm1(tau))


def stack_planes(planes) -> SlicePlane:
    """Stack planes of one resolution into one pytree with a leading slice axis."""
    res = {p.resolution for p in planes}
    if len(res) != 1:
        raise ValueError(f"all slices must have one resolution, got {sorted(res)}")
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *planes)


@functools.lru_cache(maxsize=8)
def _make_block(cfg: InternalConfig, kind: str, extent: float, scale: float, p_max: float):
    geo = dict(means=cfg.lr * extent, log_scales=cfg.lr, quats=cfg.lr)
    if kind == "rgb":
        optimizer = make_optimizer(geo | dict(opacity_logits=cfg.lr), frozen=("sh",))
    else:
        optimizer = make_optimizer(geo | dict(log_densities=cfg.lr),
                                   frozen=("opacity_logits", "features", "colors"))

    def loss_fn(params, active, plane, target, geometry, view, proj):
        cls = RGBSplats if kind == "rgb" else RadSplats
        sp = cls(**params, active=active)
        pred = render_slice(sp, plane, cutoff_sigma=cfg.cutoff_sigma) / scale
        logits = sp.opacity_logits if kind == "rgb" else radiative_opacity_logits(sp)
        loss = xray_reference_loss(pred, target / scale, logits, lambda_ssim=cfg.lambda_ssim,
                                   lambda_zero_one=cfg.lambda_zero_one, mask=active)
        if geometry is not None:
            p = render_xray(sp, geometry, view[None])[0] / p_max
            loss = loss + cfg.projection_weight * photometric_loss(p, proj / p_max,
                                                                   lambda_ssim=cfg.lambda_ssim)
        return loss

    def step(carry, xs, *, active, planes, targets, geometry, projections):
        params, opt_state = carry
        s_idx, v_idx = xs
        plane = jax.tree_util.tree_map(lambda x: x[s_idx], planes)
        proj = None if projections is None else projections[v_idx]
        loss, g = jax.value_and_grad(loss_fn)(params, active, plane, targets[s_idx], geometry,
                                              v_idx, proj)
        g = mask_gradients(g, active)
        upd, opt_state = optimizer.update(g, opt_state, params)
        return (optax.apply_updates(params, upd), opt_state), loss

    @jax.jit
    def block(params, opt_state, active, planes, targets, geometry, projections, s_idx, v_idx):
        body = lambda c, x: step(c, x, active=active, planes=planes, targets=targets,
                                 geometry=geometry, projections=projections)
        return jax.lax.scan(body, (params, opt_state), (s_idx, v_idx))

    return optimizer, block


def train_internal(splats: RGBSplats | RadSplats, planes, targets: np.ndarray,
                   cfg: InternalConfig = InternalConfig(), *, projections: np.ndarray | None = None,
                   geometry=None, scene_extent: float | None = None,
                   checkpoint_path: str | Path | None = None, progress: bool = True):
    """Internal rendering of one splat set.

    Args:
      splats: RGBSplats (targets: contours) or RadSplats (targets: CT slices), CT frame, mm.
      planes: S :class:`SlicePlane` of one resolution (H, W).
      targets: [S, H, W] float32 targets (CT attenuation, or {0, 1} contours).
      cfg: constants.
      projections, geometry: radiative only, training projections [V, nv, nu] and their geometry
        for the kept projection loss (used when ``cfg.projection_weight > 0``).
      scene_extent: mm (default: half the diagonal of the active centres' bounding box).
      checkpoint_path: resumable checkpoint.

    Returns:
      (splats, history).
    """
    kind = "rgb" if isinstance(splats, RGBSplats) else "rad"
    tgt = np.asarray(targets, np.float32)
    planes = list(planes)
    if tgt.ndim != 3 or len(tgt) != len(planes) or len(planes) == 0:
        raise ValueError(f"targets must be [S, H, W] with S = {len(planes)} planes, got {tgt.shape}")
    stacked = stack_planes(planes)
    if tuple(tgt.shape[1:]) != tuple(planes[0].resolution):
        raise ValueError(f"targets are {tgt.shape[1:]} but planes are {planes[0].resolution}")
    scale = float(max(tgt.max(), 1e-12))
    act = np.asarray(splats.active)
    if scene_extent is None:
        m = np.asarray(splats.means)[act]
        scene_extent = float(0.5 * np.linalg.norm(m.max(0) - m.min(0)))
    use_proj = kind == "rad" and cfg.projection_weight > 0 and projections is not None
    p_max = float(np.max(projections)) if use_proj else 1.0
    optimizer, block_fn = _make_block(cfg, kind, float(scene_extent), scale, p_max)
    key = jax.random.key(cfg.seed)
    tgt_j = jnp.asarray(tgt)
    proj_j = jnp.asarray(projections, jnp.float32) if use_proj else None
    geom = geometry if use_proj else None
    n_views = int(proj_j.shape[0]) if use_proj else 1

    def fresh(sp):
        params, active = split_params(sp)
        return dict(params=params, active=active, opt_state=optimizer.init(params), step=0)

    def template(capacity):
        pad = jax.tree_util.tree_map(lambda x: jnp.zeros((capacity,) + x.shape[1:], x.dtype), splats)
        return fresh(pad)

    def run_block(state, n):
        k = jax.random.fold_in(key, int(state["step"]))
        s_idx = jax.random.randint(k, (n,), 0, len(planes))
        v_idx = jax.random.randint(jax.random.fold_in(k, 1), (n,), 0, n_views)
        (params, opt_state), losses = block_fn(state["params"], state["opt_state"], state["active"],
                                               stacked, tgt_j, geom, proj_j, s_idx, v_idx)
        return dict(state, params=params, opt_state=opt_state), losses

    state, history = run_training(fresh(splats), n_iters=cfg.iterations, block=cfg.block,
                                  run_block=run_block, after_block=lambda s: s, template=template,
                                  checkpoint_path=checkpoint_path, desc=f"internal {kind}",
                                  progress=progress)
    return merge_params(splats, state["params"], state["active"]), history
