"""Command line for objects with ground truth.

    python -m insideout_jax.data make skull --out DIR [--views 180] [--detector 256] [--photos 60] [--sfm]
    python -m insideout_jax.data from-ct VOLUME --spacing DZ DY DX --out DIR [--iso LEVEL]
                                         [--quantity attenuation|HU] [--offset V] [--flip-z]
                                         [--keep-largest] [--sfm]
    python -m insideout_jax.data sfm DIR

Errors in the inputs end with a message naming the file and the field, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
import traceback
from pathlib import Path

from insideout_jax.config import SfMConfig, SkullConfig
from insideout_jax.data.sfm import SfMError
from insideout_jax.io.errors import os_error_message


def _scanner_args(p) -> None:
    d = SkullConfig()
    p.add_argument("--photons", type=float, default=d.photons,
                   help="incident photons per detector pixel (Poisson noise; 0: noise-free)")
    p.add_argument("--read-noise", type=float, default=d.read_noise, help="read noise, counts")
    p.add_argument("--exact-ct", action="store_true",
                   help="ct/ = the exact volume instead of the scanner's FDK (ablations only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing object folder at --out (it is never replaced silently)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m insideout_jax.data",
                                description="Make object folders with ground truth.")
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="generate a built-in object")
    mk.add_argument("name", choices=["skull"])
    mk.add_argument("--out", required=True, help="object folder to write")
    d = SkullConfig()
    mk.add_argument("--views", type=int, default=d.n_views, help="X-ray projections over 360°")
    mk.add_argument("--detector", type=int, default=d.n_detector, help="detector pixels per side")
    mk.add_argument("--volume", type=int, default=d.volume_size, help="CT voxels per side")
    mk.add_argument("--photos", type=int, default=d.n_rgb_views, help="number of RGB renders")
    mk.add_argument("--photo-size", type=int, default=d.rgb_size, help="render width = height")
    _scanner_args(mk)
    mk.add_argument("--sfm", action="store_true", help="also run SfM (pycolmap) on the photos")

    ct = sub.add_parser("from-ct", help="an object from a CT volume (npy, tif, mat, raw, DICOM folder)")
    ct.add_argument("volume", help="volume file or DICOM folder")
    ct.add_argument("--spacing", type=float, nargs=3, metavar=("DZ", "DY", "DX"), required=True,
                    help="voxel spacing in mm, [z, y, x] order")
    ct.add_argument("--out", required=True, help="object folder to write")
    ct.add_argument("--iso", type=float, default=None,
                    help="isosurface level for the photos, in the volume's units (default: Otsu)")
    ct.add_argument("--quantity", choices=["attenuation", "HU"], default="attenuation",
                    help="what the voxel values are (HU are converted to attenuation per mm)")
    ct.add_argument("--offset", type=float, default=0.0,
                    help="value subtracted first (e.g. 1000 for volumes stored as HU + 1000)")
    ct.add_argument("--flip-z", action="store_true", help="flip the z axis (index 0 = top)")
    ct.add_argument("--variable", default=None, help="variable name inside a .mat file")
    ct.add_argument("--keep-largest", action="store_true",
                    help="keep only the largest connected region (drops a table or head rest)")
    ct.add_argument("--views", type=int, default=180)
    ct.add_argument("--detector", type=int, default=256)
    ct.add_argument("--photos", type=int, default=60)
    ct.add_argument("--photo-size", type=int, default=512)
    _scanner_args(ct)
    ct.add_argument("--sfm", action="store_true", help="also run SfM (pycolmap) on the photos")

    sf = sub.add_parser("sfm", help="run SfM on an object folder's photos")
    sf.add_argument("dir", help="object folder")
    sf.add_argument("--known-intrinsics", action="store_true",
                    help="use the true intrinsics of a generated object")
    for q in (mk, ct, sf):
        q.add_argument("--debug", action="store_true",
                       help="show the traceback of errors in the input too (bugs always show theirs)")
    return p


# (option, attribute, smallest value): below it an object cannot be scanned, split or evaluated
_LIMITS = (("--views", "views", 4), ("--detector", "detector", 8), ("--photos", "photos", 3),
           ("--photo-size", "photo_size", 16), ("--photons", "photons", 0),
           ("--read-noise", "read_noise", 0))


def _check_args(args) -> str | None:
    """A message for option values no object can be made with (before any work), else None."""
    import math

    for opt, attr, low in _LIMITS:
        v = getattr(args, attr, None)
        if v is not None and not (math.isfinite(v) and v >= low):
            return f"{opt} must be at least {low}, got {v:g}"
    if args.command == "make" and not 8 <= args.volume <= 256:
        return f"--volume must be 8 to 256 voxels per side, got {args.volume}"
    if args.command == "from-ct":
        if not all(math.isfinite(v) and v > 0 for v in args.spacing):
            return f"--spacing must be three positive lengths in mm (DZ DY DX), got {args.spacing}"
        if not Path(args.volume).exists():
            return f"{args.volume}: no such file or folder (the CT volume to make the object from)"
    if args.command == "sfm" and not Path(args.dir).is_dir():
        return f"{args.dir}: no such object folder"
    return None


def _move_into_place(build: Path, out: Path) -> Path:
    """Replace ``out`` (absent, empty, or an earlier object under --overwrite) by ``build``."""
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    build.rename(out)
    return out


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from insideout_jax.data import objects

    problem = _check_args(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    build = None
    if args.command in ("make", "from-ct"):
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
            print(f"error: {out} exists and is not empty: pass --overwrite to replace it, or"
                  " give another --out", file=sys.stderr)
            return 2
        # made in a sibling folder and moved into place when complete: a failure or Ctrl-C
        # leaves neither a half-made object nor a lost old one
        build = out.parent / f".{out.name}.partial"
        shutil.rmtree(build, ignore_errors=True)
    try:
        if args.command == "make":
            cfg = dataclasses.replace(SkullConfig(), n_views=args.views, n_detector=args.detector,
                                      volume_size=args.volume, n_rgb_views=args.photos,
                                      rgb_size=args.photo_size, photons=args.photons,
                                      read_noise=args.read_noise,
                                      ct_source="exact" if args.exact_ct else "fdk")
            print(f"making '{args.name}' in {out}")
            objects.make_skull_object(build, cfg)
        elif args.command == "from-ct":
            import numpy as np

            from insideout_jax import io as iio

            vol = iio.load_volume(args.volume, spacing_zyx=tuple(args.spacing),
                                  quantity=args.quantity, variable=args.variable)
            data = np.asarray(vol.data, np.float32) - np.float32(args.offset)
            if args.flip_z:
                data = data[::-1].copy()
            print(f"making an object from {args.volume} {data.shape} in {out}")
            try:
                objects.make_ct_object(data, vol.spacing_zyx, build, iso=args.iso,
                                       quantity=args.quantity, n_views=args.views,
                                       n_det=args.detector, n_rgb_views=args.photos,
                                       rgb_size=args.photo_size, keep_largest=args.keep_largest,
                                       photons=args.photons, read_noise=args.read_noise,
                                       ct_source="exact" if args.exact_ct else "fdk")
            except ValueError as e:
                raise ValueError(f"{args.volume}: {e}") from e
        else:
            out = Path(args.dir)
            args.sfm = True
        if build is not None:
            out = _move_into_place(build, out)
        if args.sfm:
            cfg = SfMConfig(use_known_intrinsics=getattr(args, "known_intrinsics", False))
            print("structure from motion (pycolmap, CPU)")
            objects.ensure_sfm(out, cfg, with_truth=True)
    except BaseException as e:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)
        if isinstance(e, OSError) and os_error_message(e):  # a full disk, a forbidden folder
            print(f"error: {os_error_message(e)}", file=sys.stderr)
            return 2
        if not isinstance(e, (ValueError, SfMError, FileNotFoundError)):
            raise  # a bug (or Ctrl-C): its traceback
        # the input's fault
        if args.debug:
            traceback.print_exception(e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f} s: {objects.describe_object(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
