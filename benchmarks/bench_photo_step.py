"""One 3DGS training step on phone-sized photos (issue 23), against any checkout of the project.

    python benchmarks/bench_photo_step.py --prepare [--out outputs/bench_photo_step]
    python benchmarks/bench_photo_step.py --json [--out ...] [--repo PATH] [--repeats 5]

``--prepare`` takes ``--photos`` realistic photos of the built-in skull (table, backdrop, sensor
noise, JPEG: :mod:`insideout_jax.data.scene`) in portrait ``--width`` × ``--height`` frames (540 ×
960: a 1080 × 1920 phone photo at the cpu preset's half size), through a pinhole lens (the
pipeline trains on undistorted photos), then trains 3DGS (the cpu preset's constants) from
points on the object's surface and keeps, under ``--out``, the photos, the cameras and the
splats of the first block that reached ``--target`` active splats (or the last block).

The timing run (``--json``) imports the package from ``--repo`` (default: this checkout), so the
same state times the previous main in the same sitting (a ``git worktree`` of it). It builds
that checkout's own jitted 3DGS block (``insideout_jax.train.rgb._make_block``) with the
rasterizer options its ``train_rgb`` uses (the pair capacity fitted to the splats where the
checkout has :func:`fitted_pair_capacity`, else the default) and prints one JSON line: ``step_ms``
(one iteration, median over repeats of a ``--block``-iteration block), ``n_splats``, ``height``,
``width``, ``tile_pairs`` (the first view's), ``pair_capacity``, ``repo`` (its ``git describe``)
and, against a float32 matmul timed after every repeat, ``floor_ms``, ``ratio_to_floor``,
``ratio_to_matmul``, ``matmul_gflops``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _import_from(repo: Path):
    for p in (str(REPO / "benchmarks"), str(repo)):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)


def _save_cams(cams) -> dict:
    keys = ("rotation", "translation", "fx", "fy", "cx", "cy")
    import numpy as np

    out = {f"cam_{k}": np.stack([np.asarray(getattr(c, k)) for c in cams]) for k in keys}
    out["cam_size"] = np.array([cams[0].width, cams[0].height])
    return out


def _load_cams(z):
    from insideout_jax.cameras import make_pinhole

    w, h = (int(x) for x in z["cam_size"])
    return [make_pinhole(z["cam_rotation"][i], z["cam_translation"][i], float(z["cam_fx"][i]),
                         float(z["cam_fy"][i]), float(z["cam_cx"][i]), float(z["cam_cy"][i]), w, h)
            for i in range(len(z["cam_fx"]))]


def prepare(args, out: Path) -> None:
    import cv2
    import numpy as np

    from insideout_jax.config import preset
    from insideout_jax.data import phantom as ph
    from insideout_jax.data import scene
    from insideout_jax.data.objects import _builtin_phantom
    from insideout_jax.train.loop import keep_snapshots, load_snapshot
    from insideout_jax.train.rgb import train_rgb

    phantom = _builtin_phantom("skull")
    setup = scene.PhotoSetup(width=args.width, height=args.height, k1=0.0, k2=0.0)
    cams = scene.photo_cameras(args.photos, setup)
    pts, _ = ph.phantom_surface_points(phantom, args.points)
    pts = np.asarray(pts, np.float32)
    print(f"photos: {len(cams)} of {args.width}×{args.height}", flush=True)
    jpegs, _ = scene.take_photos(phantom, cams, setup, float(pts[:, 2].min()))
    imgs = np.stack([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                     for j in jpegs]).astype(np.float32) / 255.0
    cfg = dataclasses.replace(preset("cpu").rgb.train, iterations=args.iterations)
    n_blocks = -(-cfg.iterations // cfg.block)
    with keep_snapshots(out / "snapshots", [k / n_blocks for k in range(n_blocks + 1)]):
        train_rgb(imgs, cams, pts, None, cfg, desc="photo 3DGS")
    snaps = sorted((out / "snapshots").glob("photo_3dgs.step*.npz"))
    counts = [int(np.sum(load_snapshot(p)[1])) for p in snaps]
    pick = next((i for i, c in enumerate(counts) if c >= args.target), len(snaps) - 1)
    params, active, meta = load_snapshot(snaps[pick])
    np.savez(out / "state.npz", photos=(imgs * 255 + 0.5).astype(np.uint8), active=active,
             step=int(meta["step"]), **{f"params/{k}": v for k, v in params.items()},
             **_save_cams(cams))
    print(f"kept step {int(meta['step'])}: {counts[pick]} active splats -> {out / 'state.npz'}")


def time_step(args, out: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from reference_timing import FLOP_PER_PAIR_PIXEL, MatmulProbe, paired

    from insideout_jax.config import preset
    from insideout_jax.render import rgb as R
    from insideout_jax.splats import RGBSplats
    from insideout_jax.train import rgb as T

    with np.load(out / "state.npz") as z:
        params = {k.split("/", 1)[1]: jnp.asarray(z[k]) for k in z.files if k.startswith("params/")}
        active, step = jnp.asarray(z["active"]), int(z["step"])
        imgs = jnp.asarray(z["photos"], jnp.float32) / 255.0
        cams = _load_cams(z)
    cfg = preset("cpu").rgb.train
    v, h, w, _ = imgs.shape
    sp = RGBSplats(**params, active=active)
    raster = R.RasterConfig()
    if hasattr(R, "fitted_pair_capacity"):
        raster = R.RasterConfig(pair_capacity=R.fitted_pair_capacity(sp, cams))
    optimizer, block = T._make_block(cfg, raster, w, h, T.scene_extent(cams))
    degree = min(cfg.sh_degree, step // cfg.sh_up_every)
    opt_state = optimizer.init(params)
    zeros = jnp.zeros(active.shape[0], jnp.float32)
    order = jnp.arange(args.block) % v
    stacked = T.stack_cameras(cams)
    run = lambda: block(params, opt_state, zeros, zeros, active, order, stacked, imgs, degree)  # noqa: E731
    res = paired(run, args.repeats, MatmulProbe())
    pairs = int(R.render_rgb(sp, cams[0], sh_degree=degree, config=raster).n_pairs)
    tile = R.resolve_tile_size(raster) if hasattr(R, "resolve_tile_size") else 8
    scaled = dataclasses.replace(res, seconds=tuple(t / args.block for t in res.seconds))
    desc = subprocess.run(["git", "-C", str(args.repo), "describe", "--always", "--dirty"],
                          capture_output=True, text=True).stdout.strip()
    row = dict(benchmark="photo_train_step", repo=desc, step=step, n_splats=int(np.sum(active)),
               height=h, width=w, tile_pairs=pairs, tile_pixels=tile * tile,
               pair_capacity=raster.pair_capacity or "default",
               step_ms=round(scaled.ms_median, 3))
    row.update(scaled.fields(pairs * tile * tile * FLOP_PER_PAIR_PIXEL))
    row.update(device=jax.devices()[0].platform, jax_version=jax.__version__)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prepare", action="store_true", help="make the photos and the state")
    parser.add_argument("--json", action="store_true", help="time one step, one JSON line")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_photo_step"))
    parser.add_argument("--repo", default=str(REPO), help="the checkout to time (default: this)")
    parser.add_argument("--photos", type=int, default=50)
    parser.add_argument("--width", type=int, default=540)
    parser.add_argument("--height", type=int, default=960)
    parser.add_argument("--points", type=int, default=48_000, help="initial surface points")
    parser.add_argument("--iterations", type=int, default=500, help="3DGS iterations at most")
    parser.add_argument("--target", type=int, default=50_000, help="active splats to keep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block", type=int, default=5, help="iterations of the timed block")
    args = parser.parse_args()
    out = Path(args.out)
    _import_from(Path(args.repo).resolve() if not args.prepare else REPO)
    if args.prepare:
        out.mkdir(parents=True, exist_ok=True)
        prepare(args, out)
    elif not (out / "state.npz").is_file():
        raise SystemExit(f"{out / 'state.npz'}: no state; run with --prepare first")
    else:
        print(json.dumps(time_step(args, out)) if args.json else time_step(args, out), flush=True)


if __name__ == "__main__":
    main()
