"""CT volumes: :class:`CTVolume` (data ``[z, y, x]``, spacing, origin, quantity) and its TIFF + JSON files."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tifffile

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import (
    PathLike,
    _atomic_write,
    _key,
    _vector,
    read_json,
    write_json_atomic,
)
from insideout_jax.io.xrayfiles import (
    _read_tiff,
)

QUANTITIES = ("attenuation", "density", "HU")


@dataclasses.dataclass(frozen=True, eq=False)
class CTVolume:
    """A volume on a regular grid (host-side NumPy).

    Attributes:
      data: [nz, ny, nx] float32 values (see ``quantity``).
      spacing_zyx: (dz, dy, dx) voxel spacing, mm, all > 0.
      origin_xyz: (x, y, z) world position of the centre of voxel [0, 0, 0], mm.
      quantity: "attenuation" (1/mm), "density" or "HU".
    """

    data: np.ndarray
    spacing_zyx: tuple
    origin_xyz: tuple
    quantity: str

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)


def make_volume(data, spacing_zyx, origin_xyz=None, *, quantity: str) -> CTVolume:
    """Validated :class:`CTVolume`.

    Args:
      data: [nz, ny, nx] real array (cast to float32).
      spacing_zyx: 3 positive spacings (dz, dy, dx), mm.
      origin_xyz: centre of voxel [0, 0, 0], mm; ``None`` centres the volume on the CT-frame
        origin (the rotation axis): origin = −(n − 1)/2 · spacing per axis.
      quantity: one of :data:`QUANTITIES`.

    Raises:
      ValueError: naming the argument.
    """
    a = np.asarray(data)
    if a.ndim != 3 or min(a.shape) < 1:
        raise ValueError(f"data must be a [nz, ny, nx] array, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"data must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("data holds non-finite values")
    sp = np.asarray(spacing_zyx, np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_zyx must be 3 positive numbers (mm), got {spacing_zyx}")
    if origin_xyz is None:
        n_xyz = np.array(a.shape[::-1], np.float64)
        org = -(n_xyz - 1) / 2 * sp[::-1]
    else:
        org = np.asarray(origin_xyz, np.float64)
        if org.shape != (3,) or not np.all(np.isfinite(org)):
            raise ValueError(f"origin_xyz must be 3 finite numbers (mm), got {origin_xyz}")
    if quantity not in QUANTITIES:
        raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
    return CTVolume(a, tuple(float(v) for v in sp), tuple(float(v) for v in org), quantity)


def _imagej_spacing(path) -> tuple | None:
    """(dz, dy, dx) mm from ImageJ calibration, or ``None`` when the TIFF has none in mm."""
    with tifffile.TiffFile(path) as tif:
        meta = tif.imagej_metadata
        if not meta or meta.get("unit") not in ("mm", "millimeter") or "spacing" not in meta:
            return None
        page = tif.pages[0]
        xr, yr = page.tags.get("XResolution"), page.tags.get("YResolution")
        if xr is None or yr is None:
            return None
        dx = xr.value[1] / xr.value[0]
        dy = yr.value[1] / yr.value[0]
        return float(meta["spacing"]), float(dy), float(dx)


def read_volume(path: PathLike, json_path: PathLike | None = None) -> CTVolume:
    """``ct/volume.tif`` + ``ct/volume.json`` → :class:`CTVolume`.

    Args:
      path: the TIFF, [nz, ny, nx] (a 2-D TIFF is one slice).
      json_path: the metadata (default: ``path`` with suffix ``.json``). Required keys:
        ``spacing_zyx`` (3 positive), ``origin_xyz`` (3 finite), ``units`` ("mm"), ``quantity``.

    Raises:
      ObjectFolderError: missing/unreadable files or keys, non-positive spacing, wrong shape or
        dtype, non-finite values, or an ImageJ calibration in the TIFF that disagrees with the JSON.
    """
    path = pathlib.Path(path)
    jp = path.with_suffix(".json") if json_path is None else pathlib.Path(json_path)
    meta = read_json(jp)
    sp = _vector(_key(meta, "spacing_zyx", jp), 3, jp, "spacing_zyx", positive=True)
    org = _vector(_key(meta, "origin_xyz", jp), 3, jp, "origin_xyz")
    units = _key(meta, "units", jp)
    if units != "mm":
        raise ObjectFolderError(jp, "units", f"must be 'mm', got {units!r}")
    quantity = _key(meta, "quantity", jp)
    if quantity not in QUANTITIES:
        raise ObjectFolderError(jp, "quantity", f"must be one of {QUANTITIES}, got {quantity!r}")
    a = _read_tiff(path)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ObjectFolderError(path, "shape", f"must be [nz, ny, nx], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ObjectFolderError(path, "dtype", f"must be real numbers, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ObjectFolderError(path, "values", f"{int(np.sum(~np.isfinite(a)))} non-finite values")
    tif_sp = _imagej_spacing(path)
    if tif_sp is not None and not np.allclose(tif_sp, sp, rtol=1e-5, atol=0):
        raise ObjectFolderError(path, "spacing", f"ImageJ calibration {tif_sp} (z, y, x mm) "
                                f"disagrees with {jp.name} spacing_zyx {sp}")
    return make_volume(a, sp, org, quantity=quantity)


def write_volume(path: PathLike, volume: CTVolume) -> pathlib.Path:
    """Write ``volume`` as an ImageJ float32 TIFF (spacing in its calibration) plus a JSON sidecar.

    Returns:
      The TIFF path; the sidecar is ``path`` with suffix ``.json``.
    """
    if not isinstance(volume, CTVolume):
        raise ValueError(f"volume must be a CTVolume, got {type(volume).__name__}")
    a = np.ascontiguousarray(volume.data, dtype=np.float32)
    dz, dy, dx = volume.spacing_zyx

    def write(tmp):
        tifffile.imwrite(tmp, a, imagej=True, resolution=(1.0 / dx, 1.0 / dy),
                         metadata={"axes": "ZYX", "spacing": dz, "unit": "mm"})

    out = _atomic_write(path, write)
    write_json_atomic(out.with_suffix(".json"), {
        "spacing_zyx": [float(v) for v in volume.spacing_zyx],
        "origin_xyz": [float(v) for v in volume.origin_xyz],
        "units": "mm", "quantity": volume.quantity})
    return out
