"""Importers for the formats users already have: R²-Gaussian folders, NAF / X-Gaussian pickles,
DICOM CT series, raw volumes, and any volume file by extension (:func:`load_volume`).

Axis and unit conventions of the TIGRE-based formats (R²-Gaussian, NAF, X-Gaussian), read from
their data generators: ``nDetector``/``dDetector``/``sDetector`` are (v, u) = (rows, columns);
``offDetector`` is (u, v); ``offOrigin``, ``nVoxel``, ``dVoxel``, ``sVoxel`` are (x, y, z); volumes
are stored ``[x, y, z]`` (they are transposed here to ``[z, y, x]``); projection rows are already
flipped so the row index grows with +z, angles are radians. These match the geometry of
:mod:`insideout_jax.cameras` without any other change. Lengths are converted to mm; projections
(dimensionless line integrals) are never rescaled; volumes, which are attenuation per length unit
of the simulation, are divided by that unit in mm so that projections = ∫ volume dl(mm) still holds.

Units are never guessed: R²-Gaussian files do not record theirs, so the caller must say
(``length_unit_mm``); NAF pickles store geometry in mm and (per NAF's generator, which divides by
1000 before projecting) line integrals over metres, which is the documented default of
``projection_length_unit_mm``. Pickles run code when loaded: open only files you trust.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import pickle

import numpy as np

from insideout_jax.cameras import XrayGeometry, make_xray_geometry
from insideout_jax.io.dicom import (  # noqa: F401
    DicomSeries,
    read_dicom_series,
)
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import _floats, read_json
from insideout_jax.io.volumes import CTVolume, _imagej_spacing, make_volume, read_volume
from insideout_jax.io.xrayfiles import _read_tiff

__all__ = ["XrayScan", "read_r2gaussian", "read_naf_pickle", "DicomSeries", "read_dicom_series",
           "read_raw", "load_volume"]

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True, eq=False)
class XrayScan:
    """An imported X-ray scan, in the object-folder conventions (mm, radians, [z, y, x]).

    Attributes:
      geometry: training-split geometry.
      projections: [V, nv, nu] float32 line integrals of the training split.
      volume: reference volume (attenuation per mm, centred on the CT-frame origin), or None.
      heldout_geometry, heldout_projections: the test/validation split, or None.
    """

    geometry: XrayGeometry
    projections: np.ndarray
    volume: CTVolume | None = None
    heldout_geometry: XrayGeometry | None = None
    heldout_projections: np.ndarray | None = None


def _field(d: dict, key: str, path, name: str | None = None) -> object:
    if key not in d:
        raise ObjectFolderError(path, name or key, "missing key")
    return d[key]


def _scanner_geometry(cfg: dict, angles, unit_mm: float, path, field_prefix: str = ""
                      ) -> XrayGeometry:
    """TIGRE-style scanner dict (DSD, DSO, nDetector, dDetector|sDetector, offOrigin,
    offDetector, mode) → XrayGeometry in mm."""
    f = lambda k: field_prefix + k  # noqa: E731
    mode = _field(cfg, "mode", path, f("mode"))
    if mode not in ("cone", "parallel"):
        raise ObjectFolderError(path, f("mode"), f"must be 'cone' or 'parallel', got {mode!r}")
    nd = _floats(_field(cfg, "nDetector", path, f("nDetector")), 2, path, f("nDetector"), positive=True)
    if np.any(nd != np.round(nd)):
        raise ObjectFolderError(path, f("nDetector"), f"must be integers, got {nd}")
    if "dDetector" in cfg:
        dd = _floats(cfg["dDetector"], 2, path, f("dDetector"), positive=True)
        if "sDetector" in cfg:
            sd = _floats(cfg["sDetector"], 2, path, f("sDetector"), positive=True)
            if not np.allclose(sd, dd * nd, rtol=1e-5):
                raise ObjectFolderError(path, f("sDetector"), f"{sd} ≠ nDetector·dDetector {dd * nd}")
    elif "sDetector" in cfg:
        dd = _floats(cfg["sDetector"], 2, path, f("sDetector"), positive=True) / nd
    else:
        raise ObjectFolderError(path, f("dDetector"), "missing key (nor sDetector)")
    dist = {}
    for k in ("DSO", "DSD"):  # only the cone beam needs them
        if mode == "parallel" and cfg.get(k) is None:
            dist[k] = None
        else:
            dist[k] = float(_floats(_field(cfg, k, path, f(k)), 1, path, f(k), positive=True)[0]) * unit_mm
    dso, dsd = dist["DSO"], dist["DSD"]
    if mode == "cone" and dsd <= dso:
        raise ObjectFolderError(path, f("DSD"), f"must exceed DSO, got DSD={dsd / unit_mm}, "
                                f"DSO={dso / unit_mm}")
    off_uv = _floats(_field(cfg, "offDetector", path, f("offDetector")), 2, path, f("offDetector"))
    off_xyz = _floats(_field(cfg, "offOrigin", path, f("offOrigin")), 3, path, f("offOrigin"))
    try:
        return make_xray_geometry(mode=mode, n_detector=nd.astype(int), d_detector=dd * unit_mm,
                                  angles=angles, dso=dso, dsd=dsd,
                                  offset_detector=off_uv[::-1] * unit_mm,
                                  offset_origin=off_xyz * unit_mm)
    except ValueError as e:
        raise ObjectFolderError(path, f("scanner"), str(e)) from None


def _check_stack(p, geom: XrayGeometry, path, field: str) -> np.ndarray:
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating) or p.ndim != 3:
        raise ObjectFolderError(path, field, f"must be a float [V, nv, nu] array, got {p.dtype} {p.shape}")
    if p.shape[0] != geom.n_views:
        raise ObjectFolderError(path, field, f"number of projections ({p.shape[0]}) ≠ number of "
                                f"angles ({geom.n_views})")
    if tuple(p.shape[1:]) != tuple(geom.n_detector):
        raise ObjectFolderError(path, field, f"projection size {p.shape[1:]} ≠ nDetector "
                                f"{geom.n_detector}")
    if not np.all(np.isfinite(p)):
        raise ObjectFolderError(path, field, "holds non-finite values")
    return np.ascontiguousarray(p, np.float32)


def _tigre_volume(vol, cfg: dict, unit_mm: float, path, field: str, prefix: str = "") -> CTVolume:
    """[x, y, z] attenuation per file unit → CTVolume [z, y, x] per mm, centred on the origin."""
    vol = np.asarray(vol)
    if vol.ndim != 3 or not (np.issubdtype(vol.dtype, np.floating) or np.issubdtype(vol.dtype, np.integer)):
        raise ObjectFolderError(path, field, f"must be a real [x, y, z] volume, got {vol.dtype} {vol.shape}")
    n_xyz = np.array(vol.shape, np.float64)
    if "nVoxel" in cfg:
        nv = _floats(cfg["nVoxel"], 3, path, prefix + "nVoxel", positive=True)
        if not np.array_equal(nv, n_xyz):
            raise ObjectFolderError(path, prefix + "nVoxel", f"{nv.astype(int).tolist()} ≠ volume shape {vol.shape}")
    if "dVoxel" in cfg:
        d_xyz = _floats(cfg["dVoxel"], 3, path, prefix + "dVoxel", positive=True)
    elif "sVoxel" in cfg:
        d_xyz = _floats(cfg["sVoxel"], 3, path, prefix + "sVoxel", positive=True) / n_xyz
    else:
        raise ObjectFolderError(path, prefix + "dVoxel", "missing key (nor sVoxel): the volume has no spacing")
    if not np.all(np.isfinite(vol)):
        raise ObjectFolderError(path, field, "holds non-finite values")
    data = np.transpose(vol, (2, 1, 0)).astype(np.float32) / np.float32(unit_mm)
    return make_volume(data, (d_xyz[::-1] * unit_mm), None, quantity="attenuation")


def read_r2gaussian(path: PathLike, *, length_unit_mm: float, load_volume: bool = True) -> XrayScan:
    """An R²-Gaussian data folder (``meta_data.json`` + per-view ``.npy`` projections).

    Args:
      path: the folder, or its ``meta_data.json``.
      length_unit_mm: millimetres per length unit of the file (the file does not say; the
        synthetic R²-Gaussian sets are in metres: 1000.0). Geometry lengths are multiplied by it
        and the volume divided by it; projections are unchanged.
      load_volume: read the ``vol`` (or ``ct``) volume when the file names one.

    Raises:
      ObjectFolderError: missing keys or files, malformed scanner fields, projections whose
        count or size disagree with the angles or ``nDetector``, non-finite values.
    """
    if not (np.isfinite(length_unit_mm) and length_unit_mm > 0):
        raise ValueError(f"length_unit_mm must be positive, got {length_unit_mm}")
    path = pathlib.Path(path)
    meta_p = path / "meta_data.json" if path.is_dir() else path
    meta = read_json(meta_p)
    cfg = _field(meta, "scanner", meta_p)
    if not isinstance(cfg, dict):
        raise ObjectFolderError(meta_p, "scanner", "must be a JSON object")
    splits = []
    for split in ("proj_train", "proj_test"):
        entries = meta.get(split) if split == "proj_test" else _field(meta, split, meta_p)
        if entries is None or (split == "proj_test" and len(entries) == 0):
            splits.append(None)
            continue
        if not isinstance(entries, list) or not entries:
            raise ObjectFolderError(meta_p, split, "must be a non-empty list of {file_path, angle}")
        angles, projs = [], []
        for i, e in enumerate(entries):
            where = f"{split}[{i}]"
            if not isinstance(e, dict):
                raise ObjectFolderError(meta_p, where, "must be an object {file_path, angle}")
            angles.append(_floats(_field(e, "angle", meta_p), 1, meta_p, where + ".angle")[0])
            fp = meta_p.parent / str(_field(e, "file_path", meta_p))
            if not fp.is_file():
                raise ObjectFolderError(fp, "<file>", f"projection file of {where} not found")
            try:
                projs.append(np.load(fp, allow_pickle=False))
            except Exception as err:
                raise ObjectFolderError(fp, "<file>", f"not a readable .npy ({err})") from None
            if projs[-1].ndim != 2:
                raise ObjectFolderError(fp, "shape", f"projection must be 2-D, got {projs[-1].shape}")
        geom = _scanner_geometry(cfg, angles, length_unit_mm, meta_p, "scanner.")
        if any(p.shape != tuple(geom.n_detector) for p in projs):
            bad = next(i for i, p in enumerate(projs) if p.shape != tuple(geom.n_detector))
            raise ObjectFolderError(meta_p.parent / entries[bad]["file_path"], "shape",
                                    f"{projs[bad].shape} ≠ scanner.nDetector {geom.n_detector}")
        splits.append((geom, _check_stack(np.stack(projs), geom, meta_p, split)))
    volume = None
    vol_key = "vol" if "vol" in meta else ("ct" if "ct" in meta else None)
    if load_volume and vol_key is not None:
        vp = meta_p.parent / str(meta[vol_key])
        if not vp.is_file():
            raise ObjectFolderError(vp, "<file>", f"volume named by '{vol_key}' not found")
        volume = _tigre_volume(np.load(vp, allow_pickle=False), cfg, length_unit_mm, meta_p, vol_key,
                               "scanner.")
    test = splits[1] or (None, None)
    return XrayScan(splits[0][0], splits[0][1], volume, test[0], test[1])


def read_naf_pickle(path: PathLike, *, projection_length_unit_mm: float = 1000.0,
                    load_volume: bool = True) -> XrayScan:
    """A NAF / X-Gaussian ``.pickle`` (keys DSD, DSO, nDetector, dDetector, offOrigin,
    offDetector, mode, train{projections, angles}, optional val{...}, numTrain, numVal, image).

    Args:
      projection_length_unit_mm: the length unit, in mm, of the line integrals. NAF's generator
        converts the (mm) geometry to metres before projecting, hence 1000 by default; pass 1.0
        for pickles whose projections were computed over millimetres. The volume ``image`` is
        divided by it (attenuation per mm); projections are unchanged.
      load_volume: read ``image`` (needs ``dVoxel``) when present and not None.
    """
    if not (np.isfinite(projection_length_unit_mm) and projection_length_unit_mm > 0):
        raise ValueError(f"projection_length_unit_mm must be positive, got {projection_length_unit_mm}")
    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except Exception as e:
        raise ObjectFolderError(path, "<file>", f"not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ObjectFolderError(path, "<file>", f"must hold a dict, got {type(data).__name__}")
    splits = []
    for split, count in (("train", "numTrain"), ("val", "numVal")):
        part = data.get(split) if split == "val" else _field(data, split, path)
        if part is None:
            splits.append(None)
            continue
        if not isinstance(part, dict):
            raise ObjectFolderError(path, split, "must be a dict {projections, angles}")
        raw = _field(part, "angles", path, f"{split}.angles")
        try:
            angles = np.asarray(raw, np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ObjectFolderError(path, f"{split}.angles", "must be numbers (radians)") from None
        if angles.size == 0 or not np.all(np.isfinite(angles)):
            raise ObjectFolderError(path, f"{split}.angles", "must be a non-empty list of finite radians")
        geom = _scanner_geometry(data, angles, 1.0, path)
        projs = _check_stack(_field(part, "projections", path, f"{split}.projections"), geom, path,
                             f"{split}.projections")
        if count in data and _floats(data[count], 1, path, count)[0] != len(angles):
            raise ObjectFolderError(path, count, f"{data[count]} ≠ number of {split} angles ({len(angles)})")
        splits.append((geom, projs))
    volume = None
    if load_volume and data.get("image") is not None:
        vol = _tigre_volume(data["image"], data, 1.0, path, "image")
        volume = dataclasses.replace(vol, data=vol.data / np.float32(projection_length_unit_mm))
    test = splits[1] or (None, None)
    return XrayScan(splits[0][0], splits[0][1], volume, test[0], test[1])


def read_raw(path: PathLike, shape_zyx, dtype, *, byteorder: str, offset: int = 0) -> np.ndarray:
    """A headerless raw volume, C order ``[z, y, x]`` (x fastest).

    Args:
      shape_zyx: (nz, ny, nx).
      dtype: NumPy dtype of one voxel (e.g. "uint16", "float32").
      byteorder: "little" or "big" (required: raw files do not say).
      offset: header bytes to skip.

    Returns:
      [nz, ny, nx] array of ``dtype`` in native byte order.

    Raises:
      ObjectFolderError: if the file size is not offset + nz·ny·nx·itemsize.
    """
    shape = tuple(int(v) for v in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_zyx must be 3 positive integers, got {shape_zyx}")
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")
    dt = np.dtype(dtype).newbyteorder("<" if byteorder == "little" else ">")
    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    want = int(offset) + int(np.prod(shape)) * dt.itemsize
    size = path.stat().st_size
    if size != want:
        raise ObjectFolderError(path, "<file>", f"size {size} bytes ≠ {want} expected for shape "
                                f"{shape} of {np.dtype(dtype).name} after {offset} header bytes")
    a = np.fromfile(path, dtype=dt, offset=int(offset)).reshape(shape)
    return a.astype(dt.newbyteorder("="))


def _to_zyx(a: np.ndarray, axes: str) -> np.ndarray:
    if sorted(axes) != ["x", "y", "z"]:
        raise ValueError(f"axes must be a permutation of 'xyz' naming the array's axes, got {axes!r}")
    return np.transpose(a, [axes.index(k) for k in "zyx"])


def _pick_mat_variable(path, variable):
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError:
        raise ObjectFolderError(path, "<file>", "MATLAB v7.3 (HDF5) files are not supported; "
                                "save with -v7 or convert to .npy") from None
    except Exception as e:
        raise ObjectFolderError(path, "<file>", f"not a readable .mat file ({e})") from None
    arrays = {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    if variable is not None:
        if variable not in arrays:
            raise ObjectFolderError(path, variable, f"no such variable; found {sorted(arrays)}")
        return arrays[variable], variable
    cands = [k for k, v in arrays.items() if v.ndim == 3 and (
        np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer))]
    if len(cands) != 1:
        raise ObjectFolderError(path, "variable", f"{len(cands)} 3-D numeric variables "
                                f"{sorted(cands)}; name one with variable=")
    return arrays[cands[0]], cands[0]


def load_volume(path: PathLike, *, spacing_zyx=None, origin_xyz=None, quantity: str | None = None,
                axes: str = "zyx", variable: str | None = None, shape_zyx=None, dtype=None,
                byteorder: str | None = None, offset: int = 0) -> CTVolume:
    """Any CT volume by extension: ``.npy``, ``.tif``/``.tiff``, ``.mat``, ``.raw``/``.bin``, or a
    DICOM folder. Used by ``python -m insideout_jax.data from-ct``.

    What a file records (DICOM spacing/origin/HU, a ``.json`` sidecar of a TIFF, an ImageJ
    calibration in mm) is used, and a conflicting argument is an error. What it does not record
    must be given: ``spacing_zyx`` and ``quantity`` for .npy / .mat / raw / plain TIFF.

    Args:
      spacing_zyx: (dz, dy, dx) mm of the output [z, y, x] array.
      origin_xyz: centre of voxel [0, 0, 0] in mm, or "center" to centre the volume on the
        CT-frame origin; default: the file's origin, else centred.
      quantity: "attenuation", "density" or "HU".
      axes: the file array's axis order as letters (e.g. "xyz" for TIGRE / NAF arrays);
        transposed to [z, y, x]. Not used for DICOM.
      variable: .mat variable (default: the only 3-D numeric one).
      shape_zyx, dtype, byteorder, offset: for raw files, see :func:`read_raw`.

    Returns:
      A :class:`CTVolume` (float32).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ObjectFolderError(path, "<file>", "not found")
    suffix = path.suffix.lower()
    file_spacing = file_origin = file_quantity = None
    if (path.is_dir() or path.with_suffix(".json").is_file()) and axes != "zyx":
        raise ValueError(f"axes must be 'zyx' for {path.name}: its axis order is recorded")
    if path.is_dir():
        series = read_dicom_series(path)
        v = series.volume
        a, file_spacing, file_origin, file_quantity = v.data, v.spacing_zyx, v.origin_xyz, "HU"
    elif suffix in (".tif", ".tiff") and path.with_suffix(".json").is_file():
        v = read_volume(path)
        a, file_spacing, file_origin, file_quantity = v.data, v.spacing_zyx, v.origin_xyz, v.quantity
    elif suffix in (".tif", ".tiff"):
        a = _read_tiff(path)
        cal = _imagej_spacing(path)
        if cal is not None:
            if axes != "zyx":
                raise ValueError("axes must be 'zyx' for a TIFF with an ImageJ calibration")
            file_spacing = cal
    elif suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:
            raise ObjectFolderError(path, "<file>", f"not a readable .npy ({e})") from None
    elif suffix == ".mat":
        a, _ = _pick_mat_variable(path, variable)
    elif suffix in (".raw", ".bin", ".img", ".vol"):
        if shape_zyx is None or dtype is None or byteorder is None:
            raise ValueError("raw volumes need shape_zyx, dtype and byteorder")
        a = read_raw(path, shape_zyx, dtype, byteorder=byteorder, offset=offset)
    else:
        raise ObjectFolderError(path, "<file>", f"unsupported volume format {suffix!r} "
                                "(npy, tif, tiff, mat, raw, bin, or a DICOM folder)")
    if a.ndim != 3:
        raise ObjectFolderError(path, "shape", f"volume must be 3-D, got shape {a.shape}")
    a = _to_zyx(a, axes)
    if file_spacing is not None and spacing_zyx is not None and not np.allclose(
            file_spacing, spacing_zyx, rtol=1e-3):
        raise ValueError(f"spacing_zyx {tuple(spacing_zyx)} conflicts with the file's {file_spacing}")
    spacing = file_spacing if file_spacing is not None else spacing_zyx
    if spacing is None:
        raise ValueError(f"spacing_zyx is required: {path.name} carries no voxel spacing")
    if file_quantity is not None and quantity is not None and quantity != file_quantity:
        raise ValueError(f"quantity {quantity!r} conflicts with the file's {file_quantity!r}")
    quantity = file_quantity or quantity
    if quantity is None:
        raise ValueError(f"quantity is required ('attenuation', 'density' or 'HU'): {path.name} does not say")
    if isinstance(origin_xyz, str):
        if origin_xyz != "center":
            raise ValueError(f"origin_xyz must be 3 numbers or 'center', got {origin_xyz!r}")
        origin = None
    else:
        origin = origin_xyz if origin_xyz is not None else file_origin
    try:
        return make_volume(a, spacing, origin, quantity=quantity)
    except ValueError as e:
        raise ObjectFolderError(path, "<file>", str(e)) from None
