"""Command line for objects with ground truth.

    python -m insideout_jax.data make skull|matryoshka --out DIR [--views 180] [--detector 256] [--photos 60] [--sfm]
    python -m insideout_jax.data from-ct VOLUME [--spacing DZ DY DX] --out DIR [--iso LEVEL]
                                         [--quantity attenuation|HU] [--offset V] [--flip-z]
                                         [--axes xyz] [--shape A B C --dtype T --byteorder little]
                                         [--padding V] [--unit-attenuation MU] [--keep-largest] [--sfm]
    python -m insideout_jax.data import r2gaussian|naf PATH --out DIR [--length-unit-mm L]
    python -m insideout_jax.data import volume VOLUME --out OBJECT [volume options as from-ct]
    python -m insideout_jax.data export OBJECT --out DIR
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


def _volume_args(q, quantities=("attenuation", "HU")) -> None:
    """How to read a CT volume: what the file does not say (spacing, axes, raw layout, units)."""
    q.add_argument("--spacing", type=float, nargs=3, metavar=("DZ", "DY", "DX"), default=None,
                   help="voxel spacing in mm, [z, y, x] order (read from DICOM files and"
                   " calibrated TIFFs; required for the others)")
    q.add_argument("--axes", default="zyx", help="the file array's axis order, e.g. xyz for"
                   " arrays stored [x, y, z] (TIGRE, NAF); transposed to [z, y, x]")
    q.add_argument("--shape", type=int, nargs=3, default=None, metavar=("A", "B", "C"),
                   help="raw volumes (.raw/.bin/.img/.vol): the array's shape in file order")
    q.add_argument("--dtype", default=None, help="raw volumes: voxel type, e.g. uint16, float32")
    q.add_argument("--byteorder", choices=["little", "big"], default=None,
                   help="raw volumes: byte order (raw files do not say)")
    q.add_argument("--header-bytes", type=int, default=0, help="raw volumes: bytes to skip")
    q.add_argument("--padding", type=float, default=None,
                   help="the value outside the scanner's reconstruction circle, in the file's"
                   " units (default: recognised: DICOM PixelPaddingValue, HU ≤ −1500, or a"
                   " constant minimum at every slice corner); treated as air")
    q.add_argument("--quantity", choices=quantities, default=None,
                   help="what the voxel values are (HU are converted to attenuation per mm);"
                   " DICOM files say HU; default for the others: attenuation")
    q.add_argument("--offset", type=float, default=0.0,
                   help="value subtracted first (e.g. 1000 for volumes stored as HU + 1000)")
    q.add_argument("--flip-z", action="store_true", help="flip the z axis (index 0 = top)")
    q.add_argument("--variable", default=None, help="variable name inside a .mat file")


def _parser() -> argparse.ArgumentParser:
    from insideout_jax.data.objects import BUILTIN_OBJECTS

    p = argparse.ArgumentParser(prog="python -m insideout_jax.data",
                                description="Make object folders with ground truth.")
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="generate a built-in object")
    mk.add_argument("name", choices=list(BUILTIN_OBJECTS))
    mk.add_argument("--out", required=True, help="object folder to write")
    d = SkullConfig()
    mk.add_argument("--views", type=int, default=d.n_views, help="X-ray projections over 360°")
    mk.add_argument("--detector", type=int, default=d.n_detector, help="detector pixels per side")
    mk.add_argument("--volume", type=int, default=d.volume_size, help="CT voxels per side")
    mk.add_argument("--photos", type=int, default=d.n_rgb_views, help="number of RGB renders")
    mk.add_argument("--photo-size", type=int, default=d.rgb_size, help="render width = height"
                    " (realistic: width; height ¾ of it)")
    mk.add_argument("--photo-style", choices=["clean", "realistic"], default=d.photo_style,
                    help="clean renders, or photos as a phone takes them (table, backdrop, lens,"
                    " noise, JPEG)")
    _scanner_args(mk)
    mk.add_argument("--sfm", action="store_true", help="also run SfM (pycolmap) on the photos")

    ct = sub.add_parser("from-ct", help="an object from a CT volume (npy, tif, mat, raw, DICOM folder)")
    ct.add_argument("path", help="volume file or DICOM folder")
    _volume_args(ct)
    ct.add_argument("--unit-attenuation", type=float, default=1.0, metavar="MU",
                    help="attenuation per mm of one unit of the file's values (default 1: the"
                    " values are 1/mm); for volumes normalised to [0, 1], e.g. 0.045 puts the"
                    " TIGRE head's soft tissue (0.44) at water's 0.02 /mm")
    ct.add_argument("--out", required=True, help="object folder to write")
    ct.add_argument("--iso", type=float, default=None,
                    help="isosurface level for the photos, in the volume's units after --offset"
                    " (HU, or attenuation before --unit-attenuation; default: Otsu)")
    ct.add_argument("--keep-largest", action="store_true",
                    help="keep only the largest connected region (drops a table or head rest)")
    ct.add_argument("--views", type=int, default=180)
    ct.add_argument("--detector", type=int, default=256)
    ct.add_argument("--photos", type=int, default=60)
    ct.add_argument("--photo-size", type=int, default=512)
    _scanner_args(ct)
    ct.add_argument("--sfm", action="store_true", help="also run SfM (pycolmap) on the photos")

    im = sub.add_parser("import", help="an object folder from an R²-Gaussian or NAF / X-Gaussian"
                        " data set (projections, geometry; its volume goes to truth/), or a"
                        " scanner's volume into an object folder's ct/ (volume)")
    im.add_argument("kind", choices=["r2gaussian", "naf", "volume"])
    im.add_argument("path", help="R²-Gaussian folder (meta_data.json), NAF .pickle, or a volume"
                    " file / DICOM folder")
    im.add_argument("--out", required=True, help="object folder to write (volume: to add ct/ to)")
    _volume_args(im, ("attenuation", "HU", "density"))
    im.add_argument("--length-unit-mm", type=float, default=None,
                    help="mm per length unit of the file (r2gaussian: required, 1000 for its"
                    " synthetic sets in metres; naf: of the line integrals, default 1000)")
    im.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ex = sub.add_parser("export", help="a generated object as a lab hands it over: JPEG photos,"
                        " raw counts with flat and dark fields, the CT as DICOM in HU")
    ex.add_argument("path", help="object folder (generated)")
    ex.add_argument("--out", required=True, help="folder to write")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    sf = sub.add_parser("sfm", help="run SfM on an object folder's photos")
    sf.add_argument("dir", help="object folder")
    sf.add_argument("--known-intrinsics", action="store_true",
                    help="use the true intrinsics of a generated object")
    for q in (mk, ct, im, ex, sf):
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
    spacing = getattr(args, "spacing", None)
    if spacing is not None and not all(math.isfinite(v) and v > 0 for v in spacing):
        return f"--spacing must be three positive lengths in mm (DZ DY DX), got {spacing}"
    if args.command == "from-ct":
        if not Path(args.path).exists():
            return f"{args.path}: no such file or folder (the CT volume to make the object from)"
        mu = args.unit_attenuation
        if not (math.isfinite(mu) and mu > 0):
            return f"--unit-attenuation must be a positive attenuation per mm, got {mu:g}"
    if args.command == "import":
        if not Path(args.path).exists():
            return f"{args.path}: no such file or folder (the {args.kind} data set to import)"
        if args.kind == "r2gaussian" and args.length_unit_mm is None:
            return ("--length-unit-mm is required for r2gaussian: its files do not say their length"
                    " unit (1000 for the synthetic sets, stored in metres)")
        if args.length_unit_mm is not None and not (math.isfinite(args.length_unit_mm)
                                                    and args.length_unit_mm > 0):
            return f"--length-unit-mm must be a positive number, got {args.length_unit_mm:g}"
    if args.command == "export" and not Path(args.path).is_dir():
        return f"{args.path}: no such object folder"
    if args.command == "sfm" and not Path(args.dir).is_dir():
        return f"{args.dir}: no such object folder"
    return None


def _load_ct(args):
    """The from-ct volume as the file and the options say (nothing guessed)."""
    from insideout_jax import io as iio

    src = Path(args.path)
    records = src.is_dir() or src.with_suffix(".json").is_file()  # DICOM, or our TIFF + json
    return iio.load_volume(src, spacing_zyx=tuple(args.spacing) if args.spacing else None,
                           quantity=args.quantity or (None if records else "attenuation"),
                           variable=args.variable, axes=args.axes, shape_zyx=args.shape,
                           dtype=args.dtype, byteorder=args.byteorder, offset=args.header_bytes)


def _padding_to_air(data, quantity: str, args):
    """Padding outside the reconstruction circle (``--padding``, or recognised) → air, said."""
    import numpy as np

    from insideout_jax.data.calibration import padding_mask

    if args.padding is not None:
        pad = data == np.float32(args.padding - args.offset)
    elif quantity == "density":  # air unknown: the run's calibration finds the padding
        return data
    else:
        pad = padding_mask(data, quantity)
    if pad.any():
        air = -1000.0 if quantity == "HU" else 0.0
        print(f"  {int(pad.sum())} padding voxels (outside the reconstruction circle) set to air ({air:g})")
        data = np.where(pad, np.float32(air), data)
    return data


def _import_volume(args) -> Path:
    """``import volume``: the scanner's volume, read as the options say, into ``--out``/ct/ in its
    own units (a run calibrates HU and vendor units against the projections)."""
    import numpy as np

    from insideout_jax import io as iio

    vol = _load_ct(args)
    data = np.asarray(vol.data, np.float32) - np.float32(args.offset)
    data = data[::-1].copy() if args.flip_z else data
    if vol.quantity == "density" and args.padding is not None:
        raise ValueError("--padding needs HU or attenuation (where air is known); in vendor units"
                         " a constant padding ring is recognised at run time")
    data = _padding_to_air(data, vol.quantity, args)
    out = Path(args.out)
    iio.write_volume(out / iio.VOLUME_FILE, iio.make_volume(data, vol.spacing_zyx, vol.origin_xyz,
                                                            quantity=vol.quantity))
    print(f"imported {args.path}: {data.shape} voxels of {vol.spacing_zyx} mm in {vol.quantity}"
          f" to {out / iio.VOLUME_FILE}")
    return out


def _import(args, build: Path) -> None:
    """``import r2gaussian|naf``: projections (all splits, by angle) and geometry to xray/, the
    data set's volume to truth/ (it is what such data sets are scored against)."""
    import numpy as np

    from insideout_jax import io as iio

    if args.kind == "r2gaussian":
        scan = iio.read_r2gaussian(args.path, length_unit_mm=args.length_unit_mm)
    else:
        scan = iio.read_naf_pickle(args.path, projection_length_unit_mm=args.length_unit_mm or 1000.0)
    geom, proj = scan.geometry, scan.projections
    if scan.heldout_geometry is not None:
        h = scan.heldout_geometry
        cat = (lambda a, b: None if a is None else np.concatenate([np.asarray(a), np.asarray(b)]))
        geom = geom.replace(angles=cat(geom.angles, h.angles), poses=cat(geom.poses, h.poses))
        proj = np.concatenate([proj, scan.heldout_projections])
        order = np.argsort(np.asarray(geom.angles), kind="stable")
        geom, proj = geom.select(order), proj[order]
    iio.write_object(build, geometry=geom, projections=proj, truth_volume=scan.volume)
    print(f"imported {args.kind} {args.path}: {geom.n_views} views of {geom.n_detector[0]}×"
          f"{geom.n_detector[1]} px" + (f", volume {scan.volume.shape} to truth/"
                                          if scan.volume is not None else ", no volume"))


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
    if args.command == "import" and args.kind == "volume":  # into a folder that may hold photos
        target = Path(args.out) / "ct" / "volume.tif"
        if target.exists() and not args.overwrite:
            print(f"error: {target} exists: pass --overwrite to replace it", file=sys.stderr)
            return 2
    elif args.command in ("make", "from-ct", "import", "export"):
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
                                      photo_style=args.photo_style,
                                      read_noise=args.read_noise,
                                      ct_source="exact" if args.exact_ct else "fdk")
            print(f"making '{args.name}' in {out}")
            objects.make_builtin_object(build, cfg, name=args.name)
        elif args.command == "from-ct":
            import numpy as np


            vol = _load_ct(args)
            data = np.asarray(vol.data, np.float32) - np.float32(args.offset)
            if args.flip_z:
                data = data[::-1].copy()
            iso = args.iso  # in the volume's units: scaled with them below
            if args.unit_attenuation != 1.0:
                if vol.quantity != "attenuation":
                    raise ValueError(f"--unit-attenuation is for attenuation volumes; this one is"
                                     f" in {vol.quantity}")
                data = data * np.float32(args.unit_attenuation)
                iso = None if iso is None else iso * args.unit_attenuation
            print(f"making an object from {args.path} {data.shape} in {out}")
            try:
                data = _padding_to_air(data, vol.quantity, args)
                objects.make_ct_object(data, vol.spacing_zyx, build, iso=iso,
                                       quantity=vol.quantity, n_views=args.views,
                                       n_det=args.detector, n_rgb_views=args.photos,
                                       rgb_size=args.photo_size, keep_largest=args.keep_largest,
                                       photons=args.photons, read_noise=args.read_noise,
                                       ct_source="exact" if args.exact_ct else "fdk")
            except ValueError as e:
                raise ValueError(f"{args.path}: {e}") from e
            if args.unit_attenuation != 1.0:  # said where the acquisition is described
                from insideout_jax import io as iio
                from insideout_jax.data.scanner import ACQUISITION_FILE

                rec = iio.read_json(build / ACQUISITION_FILE)
                rec["volume_units"] = f"the file's values x {args.unit_attenuation:g} = attenuation /mm"
                iio.write_json_atomic(build / ACQUISITION_FILE, rec)
        elif args.command == "export":
            from insideout_jax.data.export import export_as_acquired

            args.sfm = False
            for part, what in export_as_acquired(args.path, build).items():
                print(f"  {part}: {what}")
        elif args.command == "import":
            args.sfm = False
            if build is None:
                out = _import_volume(args)
            else:
                _import(args, build)
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
