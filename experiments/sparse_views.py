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
    from insideout_jax import io as iio
    from insideout_jax.config import preset
    from insideout_jax.io.checkpoint import atomic_write_bytes
    from insideout_jax.pipeline import PipelineInputError
    from insideout_jax.pipeline.stages import sparse_view_comparison

    args = parse_args(argv)
    cfg = preset(args.config)
    name, obj_dir = resolve_object(args.object)
    try:
        obj = iio.read_object(obj_dir, load_images=False)
        if obj.geometry is None:
            raise PipelineInputError(f"{obj_dir}: no X-ray projections")
        truth = obj.truth_volume or obj.volume
        if truth is None:
            raise PipelineInputError(f"{obj_dir}: no true or CT volume to score against")
        print(f"[sparse] {args.views} of {obj.geometry.n_views} projections; training radiative splats")
        result = sparse_view_comparison(obj.projections, obj.geometry, args.views, cfg.xray, truth,
                                        progress=True)
    except (iio.ObjectFolderError, PipelineInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"object": name, "config": cfg.name, **result}
    out = Path(args.out) if args.out else REPO / "outputs" / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"sparse_views_{result['n_views']}.json"
    atomic_write_bytes(path, json.dumps(result, indent=2).encode())
    print(f"[sparse] FDK {result['fdk']['psnr3d']:.2f} dB / {result['fdk']['ssim3d']:.4f}, radiative"
          f" {result['radiative']['psnr3d']:.2f} dB / {result['radiative']['ssim3d']:.4f}"
          f" ({result['radiative_minus_fdk_db']:+.2f} dB); written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
