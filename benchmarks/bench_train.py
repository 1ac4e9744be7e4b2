"""One training step of each pipeline stage, broken down, on states saved from a real run (issue 23).

    python benchmarks/bench_train.py --prepare [--object skull] [--out outputs/bench_train_skull]
    python benchmarks/bench_train.py --json [--out outputs/bench_train_skull] [--repeats 5]

``--prepare`` runs the pipeline (cpu preset) on the object up to the visual stage with
:func:`insideout_jax.train.loop.keep_snapshots`, which keeps the splats of every training loop at
its start (end of the first block), middle and end under ``<out>/snapshots/``. The timing run
loads them and, for each stage × phase, prints one JSON line with the keys documented below.

Each line is one (stage, phase) on one training view (the first of the stage's training set), on
the buffers the trainer steps on (compacted after the last densification, ``DensifyConfig.compact``,
unless ``--pair-capacity default``):

* ``benchmark`` ("train_step"), ``stage`` (``rgb`` 3DGS, ``radiative``, ``internal_rad``,
  ``internal_rgb``, ``colour_fit``), ``phase`` (``start``, ``middle``, ``end``), ``step``,
  ``n_iters``, ``n_splats`` (active), ``height``, ``width`` (image or detector or slice),
  ``cull`` (the RGB rasterizer's tile culling, ``--cull`` for the RGB stage), ``pair_capacity``
  (``fitted``: the trainers' pair capacity fitted to the splats; ``default``: RasterConfig's);
* ``step_ms``: one iteration of the stage's own jitted training block (timed over ``--block``
  iterations, divided), everything included;
* the breakdown, each jitted on its own: ``raster_fwd_ms`` (the renderer), ``raster_bwd_ms`` (its
  backward alone, from saved residuals), ``loss_ms`` (the loss on the rendered image, SSIM
  included, value and gradient), ``extra_ms`` (the stage's other terms: the radiative TV on a
  voxelized patch, the internal stage's projection / photo term, 0 elsewhere), ``optimizer_ms``
  (Adam update and apply), ``densify_ms`` (one densify-and-prune between blocks, host work
  included; 0 where the stage does not densify at this step: after its densification window)
  and ``densify_ms_per_step`` (÷ the period);
* ``tile_pairs``, ``tile_pixels`` and, against a float32 matmul timed after every repeat
  (``benchmarks/reference_timing.py``): ``floor_ms`` (pairs × tile pixels × 80 flop),
  ``raster_fwdbwd_ms``, ``raster_ratio_to_floor`` (renderer forward + backward) and
  ``step_ratio_to_floor`` (the whole step), ``ratio_to_matmul`` and ``matmul_gflops`` (of the
  step); ``device``, ``jax_version``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from reference_timing import FLOP_PER_PAIR_PIXEL, MatmulProbe, Paired, paired  # noqa: E402

from insideout_jax import xla  # noqa: E402
from insideout_jax.losses import photometric_loss  # noqa: E402
from insideout_jax.render.rgb import (  # noqa: E402
    RasterConfig,
    fitted_pair_capacity,
    render_rgb,
    resolve_tile_size,
)
from insideout_jax.render.xray import render_xray  # noqa: E402
from insideout_jax.splats import RadSplats, RGBSplats, select_active  # noqa: E402
from insideout_jax.train.optim import mask_gradients, split_params  # noqa: E402

PREPARE_STAGES = ("data", "sfm", "rgb", "xray", "fitting", "internal", "visual")


def prepare(obj: str, out: Path) -> int:
    """Run the pipeline (cpu preset) on ``obj`` up to the visual stage, keeping snapshots."""
    from experiments import run
    from insideout_jax.train.loop import keep_snapshots

    with keep_snapshots(out / "snapshots", (0.0, 0.5, 1.0)):
        return run.main(["--object", obj, "--out", str(out), "--overwrite",
                         "--stages", *PREPARE_STAGES])


PHASES = ("start", "middle", "end")
STAGES = {"rgb": "rgb_3dgs", "radiative": "xray_gs", "internal_rad": "internal_rad",
          "internal_rgb": "internal_rgb", "colour_fit": "colour_fit"}


@dataclasses.dataclass
class Kit:
    """One stage's training step, split into the parts that are timed."""

    params: dict
    active: jax.Array
    render: Callable  # params -> rendered image(s)
    loss: Callable  # image -> scalar
    optimizer: optax.GradientTransformation
    run_block: Callable  # (params, opt_state, n) -> outputs of the stage's own jitted block
    extra: Callable | None = None  # params -> scalar: the stage's other loss terms
    densify: Callable | None = None  # (params, opt_state) -> new state (host), or None
    densify_every: int = 1
    pairs: int | None = None
    tile_pixels: int | None = None
    shape: tuple = ()


def snapshots(folder: Path, label: str) -> dict:
    """{phase: snapshot path} of one stage, in step order (start, middle, end)."""
    paths = sorted(folder.glob(f"{label}.step*.npz"))
    if not paths:
        return {}
    if len(paths) < 3:
        return dict(zip(PHASES[-len(paths):], paths, strict=True))
    return dict(zip(PHASES, (paths[0], paths[len(paths) // 2], paths[-1]), strict=True))


def _train_state(kit: Kit, params, opt_state):
    c = params["means"].shape[0]
    return dict(params=params, active=kit.active, opt_state=opt_state,
                grad_acc=jnp.zeros(c, jnp.float32), count=jnp.zeros(c, jnp.float32))


def _densify_fn(like, optimizer, extent, cfg):
    from insideout_jax.train.densify import densify_train_state

    def run(state):
        return densify_train_state(state, like, jax.random.key(0), optimizer, scene_extent=extent,
                                   cfg=cfg)
    return run


def _compacted(params, active, meta, tcfg, optimizer, on: bool):
    """The buffers a trainer steps on at this snapshot: compacted once no densification can follow
    (``DensifyConfig.compact``; ``on`` False: as the trainers before issue 23)."""
    from insideout_jax.train.densify import compact_train_state, densification_over

    over = densification_over(int(meta["step"]), block=tcfg.block, until=tcfg.densify_until,
                              every=tcfg.densify_every)
    if not (on and tcfg.densify.compact and over):
        return params, active
    p = {k: jnp.asarray(v) for k, v in params.items()}
    c = len(active)
    st = compact_train_state(dict(params=p, active=active, opt_state=optimizer.init(p),
                                  grad_acc=jnp.zeros(c), count=jnp.zeros(c)), optimizer)
    return {k: np.asarray(v) for k, v in st["params"].items()}, st["active"]


def _densify_due(meta, tcfg) -> bool:
    return tcfg.densify_every > 0 and int(meta["step"]) <= tcfg.densify_until


def _raster(splats, cams, capacity: str, **kw) -> RasterConfig:
    """The trainers' rasterizer options: the pair capacity fitted to the splats, or the default."""
    if capacity == "default":
        return RasterConfig(**kw)
    return RasterConfig(pair_capacity=fitted_pair_capacity(splats, cams), **kw)


def rgb_kit(ctx, params, active, meta, cull: str = "ellipse", capacity: str = "fitted") -> Kit:
    from experiments import stages as S
    from insideout_jax.train import rgb as T

    tcfg = ctx.cfg.rgb.train
    imgs, cams, _ = S.load_photos(ctx)
    tr, _ = T.holdout_split(len(imgs), tcfg.holdout_every)
    imgs, cams = imgs[tr], [cams[i] for i in tr]
    v, h, w, _ = imgs.shape
    extent = T.scene_extent(cams)
    optimizer = T._make_block(tcfg, RasterConfig(), w, h, extent)[0]
    params, active = _compacted(params, active, meta, tcfg, optimizer, capacity == "fitted")
    like = RGBSplats(**params, active=active)
    raster = _raster(like, cams, capacity, cull=cull)
    optimizer, block = T._make_block(tcfg, raster, w, h, extent)
    stacked, images = T.stack_cameras(cams), jnp.asarray(imgs)
    degree = min(tcfg.sh_degree, int(meta["step"]) // tcfg.sh_up_every)
    bg = jnp.asarray(tcfg.background, jnp.float32)
    render = lambda p: render_rgb(RGBSplats(**p, active=active), cams[0], background=bg,  # noqa: E731
                                  sh_degree=degree, config=raster).color
    loss = lambda img: photometric_loss(img, images[0], lambda_ssim=tcfg.lambda_ssim)  # noqa: E731

    def run_block(p, o, n):
        st = _train_state(kit, p, o)
        order = jnp.arange(n) % v
        return block(p, o, st["grad_acc"], st["count"], active, order, stacked, images, degree)

    out = render_rgb(like, cams[0], sh_degree=degree, config=raster)
    kit = Kit(params, active, render, loss, optimizer, run_block,
              densify=(_densify_fn(like, optimizer, extent, tcfg.densify)
                       if _densify_due(meta, tcfg) else None),
              densify_every=tcfg.densify_every, pairs=int(out.n_pairs),
              tile_pixels=resolve_tile_size(raster) ** 2, shape=(h, w))
    return kit


def radiative_kit(ctx, params, active, meta) -> Kit:
    from insideout_jax.render.xray import render_xray, xray_tile_stats
    from insideout_jax.train import xray as T

    xcfg = ctx.cfg.xray.train
    proj, geom = ctx.training_views()
    proj, p_max = T.checked_projections(proj, geom)
    lo, hi = T.scan_cuboid(geom)
    extent = float(0.5 * np.linalg.norm(hi - lo))
    optimizer, block = T._make_block(xcfg, extent, p_max)
    params, active = _compacted(params, active, meta, xcfg, optimizer, True)
    proj_j = jnp.asarray(proj)
    vps = min(xcfg.views_per_step, len(proj))
    views0 = jnp.arange(vps)
    render = lambda p: render_xray(RadSplats(**p, active=active), geom, views0,  # noqa: E731
                                   backend=xcfg.backend) / p_max
    loss = lambda img: jnp.mean(jax.vmap(  # noqa: E731
        lambda a, b: photometric_loss(a, b, lambda_ssim=xcfg.lambda_ssim))(img, proj_j[views0] / p_max))

    def run_block(p, o, n):
        st = _train_state(kit, p, o)
        views = (jnp.arange(n * vps) % len(proj)).reshape(n, vps)
        tv = jnp.broadcast_to(jnp.asarray(lo, jnp.float32), (n, 3))
        return block(p, o, st["grad_acc"], st["count"], active, geom, proj_j, views, tv)

    like = RadSplats(**params, active=active)
    pairs = xray_tile_stats(like, geom, views0)["tile_pairs"]
    kit = Kit(params, active, render, loss, optimizer, run_block,
              densify=(_densify_fn(like, optimizer, extent, xcfg.densify)
                       if _densify_due(meta, xcfg) else None),
              densify_every=xcfg.densify_every, pairs=int(pairs), tile_pixels=16 ** 2,
              shape=tuple(proj.shape[1:]))
    return kit


def internal_kit(ctx, params, active, meta, kind: str, capacity: str = "fitted",
                 compact: bool = True) -> Kit:
    from experiments import stages as S
    from insideout_jax.internal import train as T
    from insideout_jax.internal.pseudo_gt import outer_contour_target
    from insideout_jax.losses import xray_reference_loss
    from insideout_jax.pipeline import geometry as pg
    from insideout_jax.render.slices import render_slice
    from insideout_jax.train.rgb import stack_cameras

    icfg = ctx.cfg.internal
    cfg = icfg.rad if kind == "rad" else icfg.rgb
    cls = RadSplats if kind == "rad" else RGBSplats
    if compact:  # as train_internal does: the active slots only
        params, active = split_params(select_active(cls(**params, active=active)))
    _, planes, refs = pg.slice_set(ctx.ct, icfg, heldout=False)
    targets = refs if kind == "rad" else np.stack([outer_contour_target(r) for r in refs])
    scale = float(targets.max()) if targets.max() > 0 else 1.0
    start = ctx.splats("xray_splats" if kind == "rad" else "rgb_aligned")
    m = np.asarray(start.means)[np.asarray(start.active)]
    extent = float(0.5 * np.linalg.norm(m.max(0) - m.min(0)))
    bg = jnp.asarray(ctx.cfg.rgb.train.background, jnp.float32)
    views = view_targets = None
    p_max = 1.0
    if kind == "rad" and cfg.projection_weight > 0:
        proj, geom = ctx.training_views()
        p_max = float(np.max(proj))
        views, view_targets = geom, jnp.asarray(proj, jnp.float32)
    elif kind == "rgb" and cfg.photo_weight > 0:
        photos, cams = S.photos_in_ct_frame(ctx)[0]
        views, view_targets = stack_cameras(cams), jnp.asarray(photos, jnp.float32)
    raster = RasterConfig()
    if kind == "rgb" and views is not None:
        raster = _raster(cls(**params, active=active), cams, capacity)
    optimizer, block = T._make_block(cfg, kind, extent, scale, p_max, raster)
    stacked, tgt = T.stack_planes(planes), jnp.asarray(targets)
    plane0 = planes[0]
    sp = lambda p: cls(**p, active=active)  # noqa: E731
    logits = (lambda s: s.opacity_logits) if kind == "rgb" else T.radiative_opacity_logits
    render = lambda p: render_slice(sp(p), plane0, cutoff_sigma=cfg.cutoff_sigma,  # noqa: E731
                                    backend=cfg.backend) / scale
    loss = lambda img: xray_reference_loss(  # noqa: E731
        img, tgt[0] / scale, jax.lax.stop_gradient(logits(sp(params))), lambda_ssim=cfg.lambda_ssim,
        lambda_zero_one=cfg.lambda_zero_one, mask=active)
    extra = None
    if views is not None:
        if kind == "rad":
            extra = lambda p: photometric_loss(  # noqa: E731
                render_xray(sp(p), views, jnp.arange(1), backend=cfg.backend)[0] / p_max,
                view_targets[0] / p_max, lambda_ssim=cfg.lambda_ssim) / cfg.view_every
        else:
            cam0 = jax.tree_util.tree_map(lambda x: x[0], views)
            extra = lambda p: photometric_loss(  # noqa: E731
                render_rgb(sp(p), cam0, background=bg, config=raster).color, view_targets[0],
                lambda_ssim=cfg.lambda_ssim) / cfg.view_every

    def run_block(p, o, n):
        st = _train_state(kit, p, o)
        s_idx = jnp.arange(n) % len(planes)
        with_view = jnp.asarray(np.arange(n) % cfg.view_every == 0)
        return block(p, o, st["grad_acc"], st["count"], active, stacked, tgt, views, view_targets,
                     bg, s_idx, jnp.zeros(n, jnp.int32), with_view)

    like = cls(**params, active=active)
    kit = Kit(params, active, render, loss, optimizer, run_block, extra=extra,
              densify=(_densify_fn(like, optimizer, extent, cfg.densify)
                       if _densify_due(meta, cfg) else None),
              densify_every=max(cfg.densify_every, 1), shape=tuple(plane0.resolution))
    return kit


def colour_kit(ctx, params, active, meta, capacity: str = "fitted") -> Kit:
    from experiments import stages as S
    from insideout_jax.train.rgb import stack_cameras
    from insideout_jax.visual import colour_fit_block

    vcfg = ctx.cfg.visual
    bg = tuple(float(b) for b in ctx.cfg.rgb.train.background)
    photos, cams = S.photos_in_ct_frame(ctx)[0]
    raster = _raster(RGBSplats(**params, active=active), cams, capacity)
    optimizer, block = colour_fit_block(float(vcfg.colour_lr), bg, 0.2, raster)
    stacked, images = stack_cameras(cams), jnp.asarray(photos, jnp.float32)
    render = lambda p: render_rgb(RGBSplats(**p, active=active), cams[0], config=raster,  # noqa: E731
                                  background=jnp.asarray(bg, jnp.float32)).color
    loss = lambda img: photometric_loss(img, images[0], lambda_ssim=0.2)  # noqa: E731

    def run_block(p, o, n):
        return block(p, o, active, jnp.arange(n) % len(photos), stacked, images)

    out = render_rgb(RGBSplats(**params, active=active), cams[0], config=raster)
    return Kit(params, active, render, loss, optimizer, run_block, pairs=int(out.n_pairs),
               tile_pixels=resolve_tile_size(RasterConfig()) ** 2,
               shape=(photos.shape[1], photos.shape[2]))


def _scaled(p: Paired, n: int) -> Paired:
    return dataclasses.replace(p, seconds=tuple(t / n for t in p.seconds))


def time_kit(kit: Kit, repeats: int, block: int, probe: MatmulProbe) -> dict:
    """The timed parts of one step (module docstring)."""
    params = jax.tree_util.tree_map(jnp.asarray, kit.params)
    ms = lambda fn, r=repeats: round(paired(fn, r).ms_median, 3)  # noqa: E731
    fwd = xla.jit(kit.render)
    img = fwd(params)
    vjp = xla.jit(lambda p: jax.vjp(kit.render, p))
    _, back = vjp(params)
    ct = xla.jit(jax.grad(kit.loss))(img)
    bwd = xla.jit(lambda b, c: b(c)[0])
    fwdbwd = xla.jit(lambda p, c: jax.vjp(kit.render, p)[1](c)[0])
    grads = bwd(back, ct)
    loss_vg = xla.jit(jax.value_and_grad(kit.loss))
    opt_state = kit.optimizer.init(params)

    @xla.jit
    def opt(g, s, p):
        upd, s = kit.optimizer.update(mask_gradients(g, kit.active), s, p)
        return optax.apply_updates(p, upd), s

    row = dict(raster_fwd_ms=ms(lambda: fwd(params)), raster_bwd_ms=ms(lambda: bwd(back, ct)),
               loss_ms=ms(lambda: loss_vg(img)),
               extra_ms=0.0, optimizer_ms=ms(lambda: opt(grads, opt_state, params)))
    if kit.extra is not None:
        ex = xla.jit(jax.value_and_grad(kit.extra))
        row["extra_ms"] = ms(lambda: ex(params))
    fb = paired(lambda: fwdbwd(params, ct), repeats, probe)
    st = _scaled(paired(lambda: kit.run_block(params, opt_state, block), repeats, probe), block)
    row.update(raster_fwdbwd_ms=round(fb.ms_median, 3), step_ms=round(st.ms_median, 3))
    if kit.densify is not None:
        out = kit.run_block(params, opt_state, block)  # a real statistic for the criteria
        state = _train_state(kit, out[0][0], out[0][1]) | dict(grad_acc=out[0][2], count=out[0][3])
        t = []
        for _ in range(max(1, repeats // 2) + 1):
            t0 = time.perf_counter()
            jax.block_until_ready(kit.densify(dict(state)))
            t.append(time.perf_counter() - t0)
        row["densify_ms"] = round(float(np.median(t[1:])) * 1e3, 3)  # the first compiles
        row["densify_ms_per_step"] = round(row["densify_ms"] / kit.densify_every, 3)
    else:
        row.update(densify_ms=0.0, densify_ms_per_step=0.0)
    flop = kit.pairs * kit.tile_pixels * FLOP_PER_PAIR_PIXEL if kit.pairs else None
    row.update(tile_pairs=kit.pairs, tile_pixels=kit.tile_pixels)
    f_fb, f_st = fb.fields(flop), st.fields(flop)
    if flop:
        row.update(floor_ms=f_st["floor_ms"], raster_ratio_to_floor=f_fb["ratio_to_floor"],
                   step_ratio_to_floor=f_st["ratio_to_floor"])
    row.update(ratio_to_matmul=f_st["ratio_to_matmul"], matmul_gflops=f_st["matmul_gflops"])
    return row


def run_context(out: Path, obj: str):
    """The prepared run's context (its config, its object folder)."""
    from experiments import run
    from experiments import stages as S
    from insideout_jax.config import preset

    name, obj_dir = run.resolve_object(obj)
    cfg_name = json.loads((out / "config.json").read_text())["name"]
    return S.RunContext(object_name=name, object_dir=obj_dir, out_dir=out, cfg=preset(cfg_name))


def bench_all(out: Path, args):
    from insideout_jax.train.loop import load_snapshot

    folder = out / "snapshots"
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no snapshots; run `python benchmarks/bench_train.py --prepare"
                         f" --object {args.object}` first")
    ctx = run_context(out, args.object)
    probe = MatmulProbe()
    cap = args.pair_capacity
    builders = dict(rgb=lambda *a: rgb_kit(*a, cull=args.cull, capacity=cap),
                    radiative=radiative_kit, colour_fit=lambda *a: colour_kit(*a, capacity=cap),
                    internal_rad=lambda *a: internal_kit(*a, kind="rad", compact=cap == "fitted"),
                    internal_rgb=lambda *a: internal_kit(*a, kind="rgb", capacity=cap,
                                                         compact=cap == "fitted"))
    dev = jax.devices()[0]
    for stage in args.stages or STAGES:
        for phase, path in snapshots(folder, STAGES[stage]).items():
            if args.phases and phase not in args.phases:
                continue
            params, active, meta = load_snapshot(path)
            kit = builders[stage](ctx, params, jnp.asarray(active), meta)
            row = dict(benchmark="train_step", stage=stage, phase=phase, step=int(meta["step"]),
                       n_iters=int(meta["n_iters"]), n_splats=int(np.sum(active)),
                       height=int(kit.shape[0]), width=int(kit.shape[1]),
                       cull=args.cull if stage == "rgb" else RasterConfig.cull,
                       pair_capacity=args.pair_capacity)
            row.update(time_kit(kit, args.repeats, args.block, probe))
            row.update(device=dev.platform, jax_version=jax.__version__)
            yield row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true",
                        help="run the pipeline and keep the training snapshots (minutes)")
    parser.add_argument("--object", default="skull")
    parser.add_argument("--out", default=None, help="default: outputs/bench_train_<object>")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=5, help="iterations of the timed block")
    parser.add_argument("--stages", nargs="+", default=None, help="default: all")
    parser.add_argument("--cull", default="ellipse", choices=["ellipse", "box"],
                        help="RGB stage: the rasterizer's tile culling (RasterConfig.cull)")
    parser.add_argument("--pair-capacity", default="fitted", choices=["fitted", "default"],
                        help="RGB renders: the pair capacity the trainers fit to the splats, or"
                             " RasterConfig's default; 'default' also keeps the internal stage's"
                             " inactive slots (the trainers before issue 23)")
    parser.add_argument("--phases", nargs="+", default=None, help="default: start middle end")
    args = parser.parse_args()
    out = Path(args.out) if args.out else REPO / "outputs" / f"bench_train_{args.object}"
    if args.prepare:
        sys.exit(prepare(args.object, out))
    for row in bench_all(out, args):
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
