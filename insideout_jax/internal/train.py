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

from insideout_jax import xla
from insideout_jax.losses import photometric_loss, xray_reference_loss
from insideout_jax.render.rgb import RasterConfig, fitted_pair_capacity, render_rgb
from insideout_jax.render.slices import SlicePlane, render_slice
from insideout_jax.render.xray import render_xray, resolve_xray_backend
from insideout_jax.splats import RadSplats, RGBSplats, select_active
from insideout_jax.train.densify import DensifyConfig, densify_if_due, initial_train_state
from insideout_jax.train.loop import run_training
from insideout_jax.train.optim import make_optimizer, mask_gradients, merge_params

__all__ = ["InternalConfig", "train_internal", "radiative_opacity_logits", "stack_planes"]


@dataclasses.dataclass(frozen=True)
class InternalConfig:
    """Internal-rendering constants (paper: 20k iterations, Adam 5e-4, λs 0.2, λz 0.005).

    Attributes:
      iterations: total iterations (one slice each).
      block: iterations per jitted block.
      lr: Adam rate of means (× scene extent), log scales and quaternions (paper: 5e-4).
      density_lr: Adam rate of the log densities (radiative) or opacity logits (RGB).
      scale_lr, rotation_lr: Adam rates of the log scales and quaternions.
        ``None`` means ``lr``, the paper's single rate; the ``cpu`` preset, 10-30× shorter, uses
        stage 1's per-field rates instead (measured: at 5e-4 the splats barely move in 600 steps).
      lambda_ssim, lambda_zero_one: loss weights.
      projection_weight: radiative only: weight of the stage-1 projection loss kept on (0 = off).
      photo_weight: RGB only: weight of the 3DGS photometric loss on the training photos kept on
        (0 = off, the paper's contour-only training).
      projection_every: the kept view term (projections or photos) is evaluated on every k-th
        iteration only (weight × k, so its mean weight is unchanged); slices are cheap, views not.
      densify_every: 0 = fixed splat set; else densify / prune (:mod:`insideout_jax.train.densify`,
        mass-preserving for radiative splats) every this many iterations until ``densify_until``.
      densify_until: last iteration that densifies.
      densify: constants (grad_threshold in units of the per-mm centre gradient of this loss).
      cutoff_sigma: slice renderer culling (5σ: ≤ 1.5e-5 relative, EVALUATION §6).
      density_cap: radiative only: after every step, peak densities are clipped to
        ``density_cap`` × the targets' maximum (None = off). A splat's peak density is a lower
        bound of the field at its centre (densities are ≥ 0), so a field that matches the CT never
        exceeds the CT's maximum there; without the cap, mass-preserving splits leave small
        over-dense children between the slice planes, which no slice sees and the projections
        (which see only mass) cannot locate.
      seed: PRNG seed.
      backend: back end of the slice renderer (:func:`~insideout_jax.render.slices.render_slice`)
        and of the X-ray renderer of the projection term: "auto" (Pallas kernels on GPU, XLA
        elsewhere), "xla", "pallas" or "pallas_interpret" (the kernels in the Pallas interpreter;
        tests). RGB splats' photo term uses ``render_rgb``'s own "auto".
    """

    iterations: int = 20_000
    block: int = 100
    lr: float = 5e-4
    density_lr: float | None = None
    scale_lr: float | None = None
    rotation_lr: float | None = None
    lambda_ssim: float = 0.2
    lambda_zero_one: float = 0.005
    projection_weight: float = 1.0
    photo_weight: float = 0.0
    projection_every: int = 1
    densify_every: int = 0
    densify_until: int = 0
    densify: DensifyConfig = DensifyConfig()
    cutoff_sigma: float = 5.0
    density_cap: float | None = None
    seed: int = 0
    backend: str = "auto"

    @property
    def view_every(self) -> int:
        """Period (≥ 1) of the kept view term."""
        return max(int(self.projection_every), 1)


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


@functools.lru_cache(maxsize=16)
def _make_block(cfg: InternalConfig, kind: str, extent: float, scale: float, p_max: float,
                raster: RasterConfig = RasterConfig()):
    rate = lambda r: cfg.lr if r is None else r  # noqa: E731
    geo = dict(means=cfg.lr * extent, log_scales=rate(cfg.scale_lr), quats=rate(cfg.rotation_lr))
    d_lr = rate(cfg.density_lr)
    if kind == "rgb":
        optimizer = make_optimizer(geo | dict(opacity_logits=d_lr), frozen=("sh",))
    else:
        optimizer = make_optimizer(geo | dict(log_densities=d_lr),
                                   frozen=("opacity_logits", "features", "colors"))

    every = cfg.view_every
    view_weight = cfg.projection_weight if kind == "rad" else cfg.photo_weight

    def view_term(sp, views, view, view_target, background):
        if kind == "rad":  # stage 1's projection loss
            p = render_xray(sp, views, view[None], backend=cfg.backend)[0] / p_max
            return photometric_loss(p, view_target / p_max, lambda_ssim=cfg.lambda_ssim)
        cam = jax.tree_util.tree_map(lambda x: x[view], views)  # 3DGS's photometric loss
        img = render_rgb(sp, cam, background=background, config=raster).color
        return photometric_loss(img, view_target, lambda_ssim=cfg.lambda_ssim)

    def loss_fn(params, active, plane, target, views, view, view_target, with_view, background):
        cls = RGBSplats if kind == "rgb" else RadSplats
        sp = cls(**params, active=active)
        pred = render_slice(sp, plane, cutoff_sigma=cfg.cutoff_sigma, backend=cfg.backend) / scale
        logits = sp.opacity_logits if kind == "rgb" else radiative_opacity_logits(sp)
        loss = xray_reference_loss(pred, target / scale, logits, lambda_ssim=cfg.lambda_ssim,
                                   lambda_zero_one=cfg.lambda_zero_one, mask=active)
        if views is not None:
            term = functools.partial(view_term, views=views, view=view, view_target=view_target,
                                     background=background)
            term = term(sp) if every == 1 else jax.lax.cond(
                with_view, term, lambda sp: jnp.zeros((), jnp.float32), sp)
            loss = loss + view_weight * every * term
        return loss

    def step(carry, xs, *, active, planes, targets, views, view_targets, background):
        params, opt_state, grad_acc, count = carry
        s_idx, v_idx, with_view = xs
        plane = jax.tree_util.tree_map(lambda x: x[s_idx], planes)
        vt = None if view_targets is None else view_targets[v_idx]
        loss, g = jax.value_and_grad(loss_fn)(params, active, plane, targets[s_idx], views, v_idx,
                                              vt, with_view, background)
        g = mask_gradients(g, active)
        upd, opt_state = optimizer.update(g, opt_state, params)
        grad_acc = grad_acc + jnp.where(active, jnp.linalg.norm(g["means"], axis=-1), 0.0)
        count = count + active.astype(jnp.float32)
        params = optax.apply_updates(params, upd)
        if kind == "rad" and cfg.density_cap is not None:
            cap = float(np.log(cfg.density_cap * scale))
            params = dict(params, log_densities=jnp.minimum(params["log_densities"], cap))
        return (params, opt_state, grad_acc, count), loss

    @xla.jit
    def block(params, opt_state, grad_acc, count, active, planes, targets, views, view_targets,
              background, s_idx, v_idx, with_view):
        body = lambda c, x: step(c, x, active=active, planes=planes, targets=targets, views=views,
                                 view_targets=view_targets, background=background)
        return jax.lax.scan(body, (params, opt_state, grad_acc, count), (s_idx, v_idx, with_view))

    return optimizer, block


def train_internal(splats: RGBSplats | RadSplats, planes, targets: np.ndarray,
                   cfg: InternalConfig = InternalConfig(), *, projections: np.ndarray | None = None,
                   geometry=None, photos: np.ndarray | None = None, cameras=None,
                   background=(0.0, 0.0, 0.0), scene_extent: float | None = None,
                   checkpoint_path: str | Path | None = None, progress: bool = True):
    """Internal rendering of one splat set.

    Args:
      splats: RGBSplats (targets: contours) or RadSplats (targets: CT slices), CT frame, mm.
      planes: S :class:`SlicePlane` of one resolution (H, W).
      targets: [S, H, W] float32 targets (CT attenuation, or {0, 1} contours).
      cfg: constants.
      projections, geometry: radiative only, training projections [V, nv, nu] and their geometry
        for the kept projection loss (used when ``cfg.projection_weight > 0``).
      photos, cameras, background: RGB only, training photos [V, H, W, 3] in [0, 1], their V
        same-sized cameras in the CT frame and the background colour, for the kept photometric
        loss (used when ``cfg.photo_weight > 0``).
      scene_extent: mm (default: half the diagonal of the active centres' bounding box).
      checkpoint_path: resumable checkpoint.

    Returns:
      (splats, history): the trained splats hold the active slots of ``splats`` only, in their
      order (plus any that densification adds).
    """
    kind = "rgb" if isinstance(splats, RGBSplats) else "rad"
    resolve_xray_backend(cfg.backend, runnable=True)  # ValueError for a bad back end, before any work
    tgt = np.asarray(targets, np.float32)
    planes = list(planes)
    if tgt.ndim != 3 or len(tgt) != len(planes) or len(planes) == 0:
        raise ValueError(f"targets must be [S, H, W] with S = {len(planes)} planes, got {tgt.shape}")
    stacked = stack_planes(planes)
    if tuple(tgt.shape[1:]) != tuple(planes[0].resolution):
        raise ValueError(f"targets are {tgt.shape[1:]} but planes are {planes[0].resolution}")
    scale = float(tgt.max()) if tgt.max() > 0 else 1.0  # all-zero targets: "nothing here"
    act = np.asarray(splats.active)
    if 0 < act.sum() < len(act):
        # Only the active slots (order kept): the object's selection leaves the RGB set ~10 % full
        # (skull: 21.9k of 284k slots), and every step projects and updates every slot.
        splats = select_active(splats)
        act = np.asarray(splats.active)
    if scene_extent is None:
        m = np.asarray(splats.means)[act]
        scene_extent = float(0.5 * np.linalg.norm(m.max(0) - m.min(0)))
    use_proj = kind == "rad" and cfg.projection_weight > 0 and projections is not None
    use_photo = kind == "rgb" and cfg.photo_weight > 0 and photos is not None
    p_max = float(np.max(projections)) if use_proj else 1.0
    if use_proj and not (np.all(np.isfinite(projections)) and p_max > 0):
        raise ValueError("projections must be finite with a positive maximum (line integrals)")
    optimizer = _make_block(cfg, kind, float(scene_extent), scale, p_max)[0]
    key = jax.random.key(cfg.seed)
    tgt_j = jnp.asarray(tgt)
    views, view_targets, n_views = None, None, 1
    if use_proj:
        views, view_targets = geometry, jnp.asarray(projections, jnp.float32)
    elif use_photo:
        from insideout_jax.train.rgb import stack_cameras

        if cameras is None or len(cameras) != len(photos):
            raise ValueError(f"{len(photos)} photos need as many cameras")
        views, view_targets = stack_cameras(cameras), jnp.asarray(photos, jnp.float32)
    if view_targets is not None:
        n_views = int(view_targets.shape[0])
    bg = jnp.asarray(background, jnp.float32)

    def fresh(sp):
        return initial_train_state(sp, optimizer)

    def template(capacity):
        pad = jax.tree_util.tree_map(lambda x: jnp.zeros((capacity,) + x.shape[1:], x.dtype), splats)
        return fresh(pad)

    every = cfg.view_every

    def run_block(state, n):
        step0 = int(state["step"])
        raster = RasterConfig()
        if use_photo:  # the photo term's pair capacity, fitted to the current splats
            sp = merge_params(splats, state["params"], state["active"])
            raster = RasterConfig(pair_capacity=fitted_pair_capacity(sp, cameras))
        block_fn = _make_block(cfg, kind, float(scene_extent), scale, p_max, raster)[1]
        k = jax.random.fold_in(key, step0)
        s_idx = jax.random.randint(k, (n,), 0, len(planes))
        v_idx = jax.random.randint(jax.random.fold_in(k, 1), (n,), 0, n_views)
        with_view = jnp.asarray((step0 + np.arange(n)) % every == 0)
        (params, opt_state, acc, cnt), losses = block_fn(
            state["params"], state["opt_state"], state["grad_acc"], state["count"], state["active"],
            stacked, tgt_j, views, view_targets, bg, s_idx, v_idx, with_view)
        return dict(state, params=params, opt_state=opt_state, grad_acc=acc, count=cnt), losses

    def after_block(state):
        return densify_if_due(state, splats, key, optimizer, start=0, until=cfg.densify_until,
                              every=cfg.densify_every, block=cfg.block,
                              scene_extent=float(scene_extent), cfg=cfg.densify)

    state, history = run_training(fresh(splats), n_iters=cfg.iterations, block=cfg.block,
                                  run_block=run_block, after_block=after_block, template=template,
                                  checkpoint_path=checkpoint_path, desc=f"internal {kind}",
                                  progress=progress)
    return merge_params(splats, state["params"], state["active"]), history
