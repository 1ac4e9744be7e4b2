"""The CT of the biplanar experiment as attenuation per mm: a CT file or an object folder's CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from insideout_jax.data.ctobject import hu_to_attenuation
from insideout_jax.io.importers import load_volume
from insideout_jax.io.volumes import read_volume

__all__ = ["load_attenuation", "add_ct_arguments", "attenuation_from_args"]


def load_attenuation(ct, object_name, *, repo: Path, spacing=None, quantity=None, offset: float = 0.0,
                     flip_z: bool = False, axes: str = "zyx", scale: float = 1.0) -> tuple:
    """(name, [nz, ny, nx] float32 attenuation 1/mm, spacing_zyx, origin_xyz).

    ``ct``: a volume file (``spacing`` and ``quantity`` where the file does not record them; HU
    are converted with :func:`~insideout_jax.data.ctobject.hu_to_attenuation` after subtracting
    ``offset``; attenuation is multiplied by ``scale``, e.g. to turn a phantom's relative values
    into 1/mm). ``axes``: the file array's axis order (e.g. "xyz"). ``object_name``:
    ``data/<name>/ct/volume.tif`` (a name or a folder path) — the CT the user has, never ``truth/``.

    Raises:
      ValueError: for a quantity that is not attenuation or HU.
    """
    if object_name is not None:
        folder = Path(object_name) if Path(object_name).is_dir() else repo / "data" / object_name
        vol = read_volume(folder / "ct" / "volume.tif")
        name = folder.name
    else:
        vol = load_volume(ct, spacing_zyx=None if spacing is None else tuple(spacing), quantity=quantity, axes=axes)
        name = Path(ct).stem.split("_")[0] if Path(ct).suffix else Path(ct).name
    data = np.asarray(vol.data, np.float32) - np.float32(offset)
    if flip_z:
        data = data[::-1].copy()
    if vol.quantity == "HU":
        data = hu_to_attenuation(data)
    elif vol.quantity == "attenuation":
        data = data * np.float32(scale)
    else:
        raise ValueError(f"the CT holds {vol.quantity!r}: the experiment needs attenuation or HU (--quantity)")
    return name, np.asarray(data, np.float32), tuple(vol.spacing_zyx), tuple(vol.origin_xyz)


def add_ct_arguments(parser) -> None:
    """The CT options shared by ``experiments/biplanar.py`` and ``python -m insideout_jax.biplanar``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ct", help="a CT volume (npy, tif(+json), mat, raw, DICOM folder)")
    src.add_argument("--object", help="an object under data/ (its ct/volume)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("DZ", "DY", "DX"))
    parser.add_argument("--quantity", choices=["attenuation", "HU"], default=None)
    parser.add_argument("--offset", type=float, default=0.0, help="subtracted from the stored values")
    parser.add_argument("--flip-z", action="store_true")
    parser.add_argument("--axes", default="zyx", help="the file array's axis order, e.g. xyz")
    parser.add_argument("--scale", type=float, default=1.0, help="attenuation × this (relative values → 1/mm)")
    parser.add_argument("--centre", type=float, nargs=3, metavar=("X", "Y", "Z"), help="structure centre, mm")
    parser.add_argument("--out", default=None, help="default: outputs/biplanar/<name>")


def attenuation_from_args(args, repo: Path) -> tuple[str, np.ndarray, tuple, tuple, Path]:
    """(name, attenuation, spacing_zyx, origin_xyz, output folder) from :func:`add_ct_arguments`."""
    name, vol, sp, org = load_attenuation(args.ct, args.object, repo=repo, spacing=args.spacing,
                                          quantity=args.quantity, offset=args.offset, flip_z=args.flip_z,
                                          axes=args.axes, scale=args.scale)
    out = Path(args.out) if args.out else repo / "outputs" / "biplanar" / name
    return name, vol, sp, org, out
