"""X-ray files of an object folder: ``xray/geometry.json`` (schema in OUTPUTS.md) and ``xray/projections.tif``."""

from __future__ import annotations

import pathlib

import numpy as np
import tifffile

from insideout_jax.cameras import XrayGeometry, geometry_from_projection_matrices, make_xray_geometry
from insideout_jax.io.detector import (
    DARK_FILE,
    DETECTOR_FILE,
    FLAT_FILE,
    CountsConversion,
    check_line_integrals,
    counts_to_line_integrals,
)
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import (
    PathLike,
    _atomic_write,
    _key,
    _number,
    _vector,
    read_json,
    write_json_atomic,
)

MAX_ANGLE_RAD = 4.0 * np.pi + 1e-3  # two turns: beyond it, angles are degrees


def read_geometry(path: PathLike) -> XrayGeometry:
    """``xray/geometry.json`` → :class:`XrayGeometry` (schema in OUTPUTS.md; ``units`` must be "mm").

    Every key of the schema is required; ``DSO``/``DSD`` may be ``null`` in parallel mode. General
    views: an optional ``poses`` ([V][5][3]: e_r, e_u, e_v, iso, (ov, ou, 0) per view) or, for cone
    beam, ``projection_matrices`` ([V][3][4]); then ``angles`` is informational (one per view) and
    ``offset_detector``/``offset_origin`` must be zero (they are per view).
    """
    d = read_json(path)
    mode = _key(d, "mode", path)
    if mode not in ("cone", "parallel"):
        raise ObjectFolderError(path, "mode", f"must be 'cone' or 'parallel', got {mode!r}")
    units = _key(d, "units", path)
    if units != "mm":
        raise ObjectFolderError(path, "units", f"must be 'mm' (convert lengths first), got {units!r}")
    nd = _vector(_key(d, "n_detector", path), 2, path, "n_detector", positive=True, integer=True)
    dd = _vector(_key(d, "d_detector", path), 2, path, "d_detector", positive=True)
    od = _vector(_key(d, "offset_detector", path), 2, path, "offset_detector")
    oo = _vector(_key(d, "offset_origin", path), 3, path, "offset_origin")
    angles = _vector(_key(d, "angles", path), None, path, "angles")
    if not angles:
        raise ObjectFolderError(path, "angles", "must hold at least one angle (radians)")
    if max(abs(a) for a in angles) > MAX_ANGLE_RAD:
        raise ObjectFolderError(path, "angles", f"reach {max(abs(a) for a in angles):g}, beyond two"
                                " turns: they look like degrees; the schema's angles are radians"
                                " (multiply degrees by π/180)")
    dist = {}
    for name in ("DSO", "DSD"):
        v = _key(d, name, path)
        if v is None and mode == "parallel":
            dist[name] = None
        else:
            dist[name] = _number(v, path, name, positive=True)
    if mode == "cone" and dist["DSD"] <= dist["DSO"]:
        raise ObjectFolderError(path, "DSD", f"must exceed DSO (detector beyond the axis), got "
                                f"DSD={dist['DSD']}, DSO={dist['DSO']}")
    if "poses" in d or "projection_matrices" in d:
        return _posed_geometry(d, path, mode, nd, dd, od, oo, len(angles), dist)
    try:
        return make_xray_geometry(mode=mode, n_detector=nd, d_detector=dd, angles=angles,
                                  dso=dist["DSO"], dsd=dist["DSD"], offset_detector=od,
                                  offset_origin=oo)
    except ValueError as e:  # anything the checks above did not name
        raise ObjectFolderError(path, "<file>", str(e)) from None


def _posed_geometry(d, path, mode, nd, dd, od, oo, n_angles, dist) -> XrayGeometry:
    key = "poses" if "poses" in d else "projection_matrices"
    shape = (5, 3) if key == "poses" else (3, 4)
    try:
        arr = np.asarray(d[key], np.float64)
    except (TypeError, ValueError):
        raise ObjectFolderError(path, key, f"must be a list of {shape[0]}×{shape[1]} number arrays") from None
    if arr.ndim != 3 or arr.shape[1:] != shape or not np.all(np.isfinite(arr)):
        raise ObjectFolderError(path, key, f"must have shape [V, {shape[0]}, {shape[1]}] of finite numbers,"
                                f" got {list(arr.shape)}")
    if arr.shape[0] != n_angles:
        raise ObjectFolderError(path, key, f"has {arr.shape[0]} views but 'angles' has {n_angles}")
    if any(v != 0 for v in (*od, *oo)):
        raise ObjectFolderError(path, "offset_detector", "must be zero with per-view poses (offsets go in"
                                " the poses)")
    try:
        if key == "poses":
            return make_xray_geometry(mode=mode, n_detector=nd, d_detector=dd, dso=dist["DSO"],
                                      dsd=dist["DSD"], poses=arr)
        if mode != "cone":
            raise ValueError("projection_matrices describe cone-beam views: mode must be 'cone'")
        g = geometry_from_projection_matrices(arr, n_detector=nd, d_detector=dd, dso=dist["DSO"])
    except ValueError as e:
        raise ObjectFolderError(path, key, str(e)) from None
    if abs(float(g.dsd) - dist["DSD"]) > 1e-3 * dist["DSD"]:
        raise ObjectFolderError(path, "DSD", f"{dist['DSD']} mm disagrees with the projection matrices'"
                                f" {float(g.dsd):.6g} mm (focal length × pixel size)")
    return g


def _geometry_dict(geom: XrayGeometry) -> dict:
    def dist(v):
        v = float(np.asarray(v))
        return None if (geom.mode == "parallel" and v == 0.0) else v

    return {
        "mode": geom.mode, "DSO": dist(geom.dso), "DSD": dist(geom.dsd),
        "n_detector": [int(v) for v in geom.n_detector],
        "d_detector": np.asarray(geom.d_detector).tolist(),
        "offset_detector": np.asarray(geom.offset_detector).tolist(),
        "offset_origin": np.asarray(geom.offset_origin).tolist(),
        "angles": np.asarray(geom.angles).ravel().tolist(), "units": "mm",
    } | ({} if geom.poses is None else {"poses": np.asarray(geom.poses).tolist()})


def write_geometry(path: PathLike, geometry: XrayGeometry) -> pathlib.Path:
    """Write ``geometry`` to ``path`` (``xray/geometry.json`` schema); reading it back is exact."""
    if not isinstance(geometry, XrayGeometry):
        raise ValueError(f"geometry must be an XrayGeometry, got {type(geometry).__name__}")
    return write_json_atomic(path, _geometry_dict(geometry))


def _read_tiff(path: PathLike) -> np.ndarray:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    try:
        return tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for corrupt files
        raise ObjectFolderError(path, "<file>", f"not a readable TIFF ({type(e).__name__}: {e})") from None


def read_projections(path: PathLike, geometry: XrayGeometry | None = None) -> np.ndarray:
    """``xray/projections.tif`` of line integrals → [V, nv, nu] float32 (−ln I/I0,
    dimensionless); raw counts are refused (:func:`read_measured_projections` converts them)."""
    return read_measured_projections(path, geometry)[0]


def read_measured_projections(path: PathLike, geometry: XrayGeometry | None = None, *, counts=None
                              ) -> tuple[np.ndarray, CountsConversion | None]:
    """``xray/projections.tif`` as measured → ([V, nv, nu] float32 line integrals, the counts'
    :class:`CountsConversion` or None when the file holds line integrals).

    Args:
      geometry: when given, V must equal its number of angles and (nv, nu) its ``n_detector``.
      counts: the detector fields of :func:`insideout_jax.io.detector.read_detector_fields`
        (``flat``/``dark`` or ``i0``/``dark``) when the file holds raw counts; then the counts are
        converted. None or empty: the file must hold line integrals.

    Raises:
      ObjectFolderError: unreadable file, integer data without detector fields, wrong rank,
        values no attenuation gives (:func:`~insideout_jax.io.detector.check_line_integrals`), or a
        mismatch with ``geometry``.
    """
    p = _read_tiff(path)
    if p.ndim == 2:  # a single page is one projection
        p = p[None]
    if p.ndim != 3:
        raise ObjectFolderError(path, "shape", f"must be [V, nv, nu], got shape {p.shape}")
    if geometry is not None:
        if p.shape[0] != geometry.n_views:
            raise ObjectFolderError(path, "shape", f"number of projections ({p.shape[0]}) ≠ number"
                                    f" of angles in the geometry ({geometry.n_views})")
        if tuple(p.shape[1:]) != tuple(geometry.n_detector):
            raise ObjectFolderError(path, "shape", f"projection size {tuple(p.shape[1:])} ≠ "
                                    f"geometry n_detector {tuple(geometry.n_detector)} (nv, nu)")
    conversion = None
    if counts:
        p, conversion = counts_to_line_integrals(p, path=path, **counts)
    elif not np.issubdtype(p.dtype, np.floating):
        raise ObjectFolderError(path, "dtype", f"{p.dtype} values are raw detector counts: give the"
                                f" flat field as {FLAT_FILE} (and the dark field as {DARK_FILE}) or"
                                f" the unattenuated count as \"i0\" in {DETECTOR_FILE}; or store"
                                " float line integrals −ln(I/I0)")
    check_line_integrals(p, path)
    return p.astype(np.float32, copy=False), conversion


def write_projections(path: PathLike, projections, geometry: XrayGeometry | None = None
                      ) -> pathlib.Path:
    """Write [V, nv, nu] float32 line integrals as a TIFF stack (bit-exact round trip)."""
    p = np.asarray(projections)
    if p.ndim != 3 or not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"projections must be a float [V, nv, nu] array, got {p.dtype} {p.shape}")
    if geometry is not None and (p.shape[0] != geometry.n_views
                                 or tuple(p.shape[1:]) != tuple(geometry.n_detector)):
        raise ValueError(f"projections shape {p.shape} does not match the geometry "
                         f"({geometry.n_views} angles, n_detector {geometry.n_detector})")
    p = np.ascontiguousarray(p, dtype=np.float32)
    return _atomic_write(path, lambda tmp: tifffile.imwrite(tmp, p, photometric="minisblack"))
