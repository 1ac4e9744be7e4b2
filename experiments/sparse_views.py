#!/usr/bin/env python
"""Radiative splats against FDK from few projections (issue: "the sparse regime").

``python experiments/sparse_views.py --object skull --views 50`` takes N projections equally spaced
over the object's full scan, trains radiative splats on all of them (stage 1b, the chosen preset's
constants) and reconstructs FDK from the same N; both volumes are scored against the true volume
(EVALUATION.md §7: 3D PSNR / SSIM on the comparison grid of the X-ray stage). The result is written
to ``outputs/<object>/sparse_views_<N>.json`` and printed; the report picks it up when present.

It is separate from ``run.py`` because it trains a second radiative model (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from experiments.run import resolve_object  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Radiative splats vs FDK from N projections.")
    p.add_argument("--object", required=True, help="object name under data/ or a folder path")
    p.add_argument("--views", type=int, default=50, help="projections used (equally spaced)")
    p.add_argument("--config", default="cpu", choices=["cpu", "paper", "tiny"])
    p.add_argument("--out", default=None, help="output folder (default: outputs/<object>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import numpy as np

    from experiments.stages import _resample_block, comparison_grid
    from insideout_jax import io as iio
    from insideout_jax.config import preset
    from insideout_jax.fdk import fdk
    from insideout_jax.io.checkpoint import atomic_write_bytes
    from insideout_jax.metrics.image import psnr3d, ssim3d
    from insideout_jax.render.slices import make_voxel_grid, voxelize
    from insideout_jax.train.xray import train_xray

    args = parse_args(argv)
    cfg = preset(args.config)
    name, obj_dir = resolve_object(args.object)
    try:
        obj = iio.read_object(obj_dir, load_images=False)
    except iio.ObjectFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if obj.geometry is None:
        print(f"error: {obj_dir}: no X-ray projections", file=sys.stderr)
        return 2
    truth = obj.truth_volume or obj.volume
    if truth is None:
        print(f"error: {obj_dir}: no true or CT volume to score against", file=sys.stderr)
        return 2
    geom, proj = obj.geometry, obj.projections
    if not 2 <= args.views <= geom.n_views:
        print(f"error: --views must be in [2, {geom.n_views}], got {args.views}", file=sys.stderr)
        return 2
    idx = np.unique(np.round(np.linspace(0, geom.n_views, args.views, endpoint=False)).astype(int))
    g, p = geom.replace(angles=geom.angles[idx]), proj[idx]
    n = cfg.xray.fdk_size
    sp, org = comparison_grid(truth, n)
    ref = _resample_block(np.asarray(truth.data), n)
    rng = float(ref.max())
    print(f"[sparse] {len(idx)} of {geom.n_views} projections; training radiative splats")
    t0 = time.perf_counter()
    splats, _ = train_xray(p, g, cfg.xray.train)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    vol_fdk = np.asarray(fdk(p, g, (n, n, n), sp, org))
    t_fdk = time.perf_counter() - t0
    vol_rad = np.asarray(voxelize(splats, make_voxel_grid((n, n, n), sp, org)))
    result = {"object": name, "config": cfg.name, "n_views": int(len(idx)),
              "n_views_full": int(geom.n_views), "grid": n,
              "fdk": {"psnr3d": float(psnr3d(vol_fdk, ref, data_range=rng)),
                      "ssim3d": float(ssim3d(vol_fdk / rng, ref / rng)), "seconds": t_fdk},
              "radiative": {"psnr3d": float(psnr3d(vol_rad, ref, data_range=rng)),
                            "ssim3d": float(ssim3d(vol_rad / rng, ref / rng)), "seconds": t_train,
                            "n_splats": int(np.asarray(splats.active).sum())}}
    result["radiative_minus_fdk_db"] = result["radiative"]["psnr3d"] - result["fdk"]["psnr3d"]
    out = Path(args.out) if args.out else REPO / "outputs" / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sparse_views_{len(idx)}.json"
    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
    print(f"[sparse] FDK {result['fdk']['psnr3d']:.2f} dB / {result['fdk']['ssim3d']:.4f}, radiative"
          f" {result['radiative']['psnr3d']:.2f} dB / {result['radiative']['ssim3d']:.4f}"
          f" ({result['radiative_minus_fdk_db']:+.2f} dB); written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
