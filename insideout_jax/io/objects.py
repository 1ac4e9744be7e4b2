"""Object folders: reading and writing every file of the layout in DESIGN.md "Objects and data".

```
<object>/
  rgb/images/*.png|jpg            photos (or renders), HWC RGB
  rgb/sparse/0/                   optional COLMAP model (see :mod:`insideout_jax.io.colmap`)
  xray/projections.tif            float32 [V, nv, nu] line integrals, in the order of the angles
  xray/geometry.json              scanner geometry (schema in OUTPUTS.md), mm and radians
  ct/volume.tif + ct/volume.json  float32 [nz, ny, nx] volume, spacing_zyx, origin_xyz (mm)
  truth/volume.tif + volume.json  generated objects only: ground-truth density volume
  truth/transform.json            generated objects only: SfM frame → CT frame similarity
```

Conventions: lengths in mm, angles in radians, volumes indexed ``[z, y, x]`` with ``origin_xyz`` the
world position of the centre of voxel [0, 0, 0] (voxel [k, j, i] sits at origin + (i·dx, j·dy, k·dz)),
images HWC RGB. Every reader validates what it reads and raises :class:`ObjectFolderError` naming
the file and the field; nothing is guessed (no default units, no silent casts of integer
projections, no dropped alpha channels). Writers are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping

import cv2
import numpy as np
import tifffile

from insideout_jax.cameras import XrayGeometry, make_xray_geometry
from insideout_jax.io.colmap import ColmapModel, read_colmap, write_colmap
from insideout_jax.io.errors import ObjectFolderError

__all__ = [
    "GEOMETRY_FILE", "PROJECTIONS_FILE", "VOLUME_FILE", "IMAGES_DIR", "COLMAP_DIR",
    "TRUTH_VOLUME_FILE", "TRANSFORM_FILE", "IMAGE_EXTENSIONS", "QUANTITIES",
    "CTVolume", "make_volume", "Similarity", "make_similarity", "ObjectFolder",
    "read_object", "write_object", "read_geometry", "write_geometry", "read_projections",
    "write_projections", "read_volume", "write_volume", "list_images", "read_image", "read_images",
    "write_images", "read_transform", "write_transform", "write_json_atomic", "read_json",
]

GEOMETRY_FILE = "xray/geometry.json"
PROJECTIONS_FILE = "xray/projections.tif"
VOLUME_FILE = "ct/volume.tif"
IMAGES_DIR = "rgb/images"
COLMAP_DIR = "rgb/sparse/0"
TRUTH_VOLUME_FILE = "truth/volume.tif"
TRANSFORM_FILE = "truth/transform.json"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
QUANTITIES = ("attenuation", "density", "HU")

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------
# JSON and field checks
# ----------------------------------------------------------------------------------------------


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: PathLike, obj) -> pathlib.Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file + ``os.replace``).

    Raises:
      ValueError: if ``obj`` holds NaN or infinity (not valid JSON).
    """
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic_write(path, write)


def read_json(path: PathLike) -> dict:
    """A JSON object (dict) from ``path``; :class:`ObjectFolderError` if missing or malformed."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f, parse_constant=lambda c: float("nan"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ObjectFolderError(path, "<file>", f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ObjectFolderError(path, "<file>", f"must hold a JSON object, got {type(obj).__name__}")
    return obj


def _key(d: dict, key: str, path) -> object:
    if key not in d:
        raise ObjectFolderError(path, key, "missing key")
    return d[key]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v, path, field: str, *, positive: bool = False) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise ObjectFolderError(path, field, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise ObjectFolderError(path, field, f"must be positive, got {v!r}")
    return float(v)


def _vector(v, n: int | None, path, field: str, *, positive: bool = False,
            integer: bool = False) -> list:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        want = f"a list of {n} numbers" if n is not None else "a list of numbers"
        got = f"a list of {len(v)}" if isinstance(v, list) else repr(v)
        raise ObjectFolderError(path, field, f"must be {want}, got {got}")
    out = [_number(x, path, field, positive=positive) for x in v]
    if integer and any(x != int(x) for x in out):
        raise ObjectFolderError(path, field, f"must be integers, got {v}")
    return [int(x) for x in out] if integer else out


# ----------------------------------------------------------------------------------------------
# xray/geometry.json and xray/projections.tif
# ----------------------------------------------------------------------------------------------


def read_geometry(path: PathLike) -> XrayGeometry:
    """``xray/geometry.json`` → :class:`XrayGeometry` (schema in OUTPUTS.md; ``units`` must be "mm").

    Every key of the schema is required; ``DSO``/``DSD`` may be ``null`` in parallel mode.
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
    try:
        return make_xray_geometry(mode=mode, n_detector=nd, d_detector=dd, angles=angles,
                                  dso=dist["DSO"], dsd=dist["DSD"], offset_detector=od,
                                  offset_origin=oo)
    except ValueError as e:  # anything the checks above did not name
        raise ObjectFolderError(path, "<file>", str(e)) from None


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
    }


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
    """``xray/projections.tif`` → [V, nv, nu] float32 line integrals (−ln I/I0, dimensionless).

    Args:
      geometry: when given, V must equal its number of angles and (nv, nu) its ``n_detector``.

    Raises:
      ObjectFolderError: unreadable file, non-float data (raw intensities or counts must be
        converted to line integrals first), wrong rank, non-finite values, or a mismatch with
        ``geometry``.
    """
    p = _read_tiff(path)
    if not np.issubdtype(p.dtype, np.floating):
        raise ObjectFolderError(path, "dtype", f"projections must be float line integrals, got {p.dtype}")
    if p.ndim == 2:  # a single page is one projection
        p = p[None]
    if p.ndim != 3:
        raise ObjectFolderError(path, "shape", f"must be [V, nv, nu], got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ObjectFolderError(path, "values", f"{int(np.sum(~np.isfinite(p)))} non-finite values")
    if geometry is not None:
        if p.shape[0] != geometry.n_views:
            raise ObjectFolderError(path, "shape", f"number of projections ({p.shape[0]}) ≠ number"
                                    f" of angles in the geometry ({geometry.n_views})")
        if tuple(p.shape[1:]) != tuple(geometry.n_detector):
            raise ObjectFolderError(path, "shape", f"projection size {tuple(p.shape[1:])} ≠ "
                                    f"geometry n_detector {tuple(geometry.n_detector)} (nv, nu)")
    return p.astype(np.float32, copy=False)


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


# ----------------------------------------------------------------------------------------------
# Volumes: ct/volume.tif + ct/volume.json
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# RGB images
# ----------------------------------------------------------------------------------------------


def list_images(folder: PathLike) -> tuple:
    """Sorted file names of the PNG/JPEG images directly in ``folder``."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ObjectFolderError(folder, "<file>", "image folder not found")
    return tuple(sorted(p.name for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))


def read_image(path: PathLike, *, as_uint8: bool = False, background=None) -> np.ndarray:
    """One photo as RGB.

    Args:
      as_uint8: return [H, W, 3] uint8 (8-bit files only) instead of float32 in [0, 1].
      background: (r, g, b) in [0, 1] to composite a non-opaque alpha channel onto; an image
        with a non-opaque alpha channel and no ``background`` is an error (never dropped silently).
        A fully opaque alpha channel is dropped.

    Returns:
      [H, W, 3] float32 in [0, 1] (8-bit: v/255, 16-bit: v/65535), or uint8. Grey images are
      repeated over the three channels.
    """
    path = pathlib.Path(path)
    try:
        buf = np.fromfile(path, np.uint8)
    except OSError as e:
        raise ObjectFolderError(path, "<file>", f"cannot read file ({e})") from None
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise ObjectFolderError(path, "<file>", "not a readable image (PNG/JPEG expected)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ObjectFolderError(path, "dtype", f"must be 8- or 16-bit, got {img.dtype}")
    full = float(np.iinfo(img.dtype).max)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    elif img.shape[2] == 3:
        img = img[..., ::-1]
    elif img.shape[2] == 4:
        alpha = img[..., 3]
        img = img[..., 2::-1]
        if np.any(alpha != full):
            if background is None:
                raise ObjectFolderError(path, "alpha", "image has a non-opaque alpha channel; pass"
                                        " background=(r, g, b) to composite it")
            a = alpha[..., None].astype(np.float32) / full
            bg = np.asarray(background, np.float32).reshape(1, 1, 3)
            rgb = img.astype(np.float32) / full * a + bg * (1 - a)
            if as_uint8:
                if full != 255:
                    raise ObjectFolderError(path, "dtype", "16-bit image cannot be returned as uint8")
                return np.round(rgb * 255).astype(np.uint8)
            return rgb
    else:
        raise ObjectFolderError(path, "channels", f"must have 1, 3 or 4 channels, got {img.shape[2]}")
    img = np.ascontiguousarray(img)
    if as_uint8:
        if img.dtype != np.uint8:
            raise ObjectFolderError(path, "dtype", "16-bit image cannot be returned as uint8 without loss")
        return img
    return img.astype(np.float32) / np.float32(full)


def read_images(folder: PathLike, *, as_uint8: bool = False, background=None) -> dict:
    """All photos of ``folder`` (e.g. ``rgb/images``), see :func:`read_image`.

    Returns:
      {file name: [H, W, 3] image}, in sorted name order.

    Raises:
      ObjectFolderError: missing folder, no images, or any unreadable image (named).
    """
    names = list_images(folder)
    if not names:
        raise ObjectFolderError(folder, "<file>", f"no {'/'.join(IMAGE_EXTENSIONS)} images found")
    folder = pathlib.Path(folder)
    return {n: read_image(folder / n, as_uint8=as_uint8, background=background) for n in names}


def write_images(folder: PathLike, images: Mapping) -> list:
    """Write {name: [H, W, 3] uint8, or float in [0, 1] (rounded to 8 bits)} as PNG/JPEG files."""
    folder = pathlib.Path(folder)
    out = []
    for name, img in images.items():
        if pathlib.Path(name).name != name or pathlib.Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValueError(f"image name must be a plain file name ending in {IMAGE_EXTENSIONS}, got {name!r}")
        a = np.asarray(img)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"images[{name!r}] must be [H, W, 3], got shape {a.shape}")
        if np.issubdtype(a.dtype, np.floating):
            if not (np.all(np.isfinite(a)) and a.min() >= 0 and a.max() <= 1):
                raise ValueError(f"images[{name!r}]: float images must lie in [0, 1]")
            a = np.round(a * 255).astype(np.uint8)
        elif a.dtype != np.uint8:
            raise ValueError(f"images[{name!r}] must be uint8 or float, got {a.dtype}")
        ok, buf = cv2.imencode(pathlib.Path(name).suffix, np.ascontiguousarray(a[..., ::-1]))
        if not ok:
            raise ValueError(f"images[{name!r}]: OpenCV could not encode the image")
        out.append(_atomic_write(folder / name, buf.tofile))
    return out


# ----------------------------------------------------------------------------------------------
# truth/transform.json
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Similarity:
    """p ↦ scale · rotation @ p + translation (SfM frame → CT frame for ``truth/transform.json``).

    Attributes:
      rotation: [3, 3] float64 proper rotation.
      translation: [3] float64, mm.
      scale: float > 0.
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float

    def apply(self, points) -> np.ndarray:
        """[..., 3] points mapped by the similarity (float64)."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation


def _similarity_problem(rot, t, s) -> tuple | None:
    if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
        return "rotation", f"must be a finite 3×3 matrix, got shape {rot.shape}"
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-5 or abs(np.linalg.det(rot) - 1) > 1e-5:
        return "rotation", "must be a proper rotation (RᵀR = I, det = +1 within 1e-5)"
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        return "translation", f"must be 3 finite numbers, got shape {t.shape}"
    if not (np.isfinite(s) and s > 0):
        return "scale", f"must be positive, got {s}"
    return None


def make_similarity(rotation, translation, scale=1.0) -> Similarity:
    """Validated :class:`Similarity`; ``ValueError`` names the bad argument."""
    rot, t = np.asarray(rotation, np.float64), np.asarray(translation, np.float64)
    s = float(scale)
    bad = _similarity_problem(rot, t, s)
    if bad:
        raise ValueError(f"{bad[0]} {bad[1]}")
    return Similarity(rot, t, s)


def read_transform(path: PathLike) -> Similarity:
    """``truth/transform.json`` ({"rotation": 3×3, "translation": [3], "scale": s}) → Similarity."""
    d = read_json(path)
    rows = _key(d, "rotation", path)
    if not isinstance(rows, list) or len(rows) != 3:
        raise ObjectFolderError(path, "rotation", "must be a list of 3 rows")
    rot = np.array([_vector(r, 3, path, "rotation") for r in rows], np.float64)
    t = np.array(_vector(_key(d, "translation", path), 3, path, "translation"), np.float64)
    s = _number(_key(d, "scale", path), path, "scale", positive=True)
    bad = _similarity_problem(rot, t, s)
    if bad:
        raise ObjectFolderError(path, *bad)
    return Similarity(rot, t, s)


def write_transform(path: PathLike, transform: Similarity) -> pathlib.Path:
    """Write ``transform`` to ``path`` (exact float64 round trip)."""
    if not isinstance(transform, Similarity):
        raise ValueError(f"transform must be a Similarity, got {type(transform).__name__}")
    return write_json_atomic(path, {"rotation": np.asarray(transform.rotation).tolist(),
                                    "translation": np.asarray(transform.translation).tolist(),
                                    "scale": float(transform.scale)})


# ----------------------------------------------------------------------------------------------
# Whole object folders
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectFolder:
    """Everything read from one object folder; absent parts are ``None`` (or empty).

    Attributes:
      root: the folder.
      geometry: from ``xray/geometry.json``.
      projections: [V, nv, nu] float32 from ``xray/projections.tif``.
      volume: ``ct/volume.tif`` (+ json).
      image_names: sorted names in ``rgb/images``.
      images: {name: [H, W, 3]} when read with ``load_images=True``.
      colmap: the model in ``rgb/sparse/0``.
      truth_volume: ``truth/volume.tif`` (+ json), generated objects only.
      truth_transform: ``truth/transform.json``, generated objects only.
    """

    root: pathlib.Path
    geometry: XrayGeometry | None = None
    projections: np.ndarray | None = None
    volume: CTVolume | None = None
    image_names: tuple = ()
    images: dict | None = None
    colmap: ColmapModel | None = None
    truth_volume: CTVolume | None = None
    truth_transform: Similarity | None = None


def read_object(path: PathLike, *, load_images: bool = True, images_as_uint8: bool = False,
                image_background=None) -> ObjectFolder:
    """Read and cross-check an object folder.

    Args:
      load_images: decode the photos (otherwise only their names are listed).
      images_as_uint8, image_background: passed to :func:`read_image`.

    Raises:
      ObjectFolderError: for any malformed file, for geometry without projections (or the
        reverse), for COLMAP images missing from ``rgb/images``, or when the folder holds none of
        ``rgb/images``, ``xray/geometry.json``, ``ct/volume.tif``.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise ObjectFolderError(root, "<file>", "object folder not found")
    geom_p, proj_p = root / GEOMETRY_FILE, root / PROJECTIONS_FILE
    geometry = projections = None
    if geom_p.exists() or proj_p.exists():
        if not geom_p.exists():
            raise ObjectFolderError(geom_p, "<file>", f"missing although {PROJECTIONS_FILE} exists")
        geometry = read_geometry(geom_p)
        projections = read_projections(proj_p, geometry)
    vol_p, truth_p = root / VOLUME_FILE, root / TRUTH_VOLUME_FILE
    volume = read_volume(vol_p) if vol_p.exists() else None
    truth_volume = read_volume(truth_p) if truth_p.exists() else None
    tr_p = root / TRANSFORM_FILE
    transform = read_transform(tr_p) if tr_p.exists() else None
    img_dir = root / IMAGES_DIR
    names = list_images(img_dir) if img_dir.is_dir() else ()
    images = None
    if load_images and names:
        images = read_images(img_dir, as_uint8=images_as_uint8, background=image_background)
    colmap = None
    if (root / COLMAP_DIR).exists():
        colmap = read_colmap(root / COLMAP_DIR)
        missing = sorted(set(colmap.image_names) - set(names))
        if missing:
            raise ObjectFolderError(root / COLMAP_DIR, "images", f"{len(missing)} registered images"
                                    f" are not in {IMAGES_DIR}: {missing[:5]}")
    if geometry is None and volume is None and not names:
        raise ObjectFolderError(root, "<file>", f"not an object folder: none of {IMAGES_DIR}, "
                                f"{GEOMETRY_FILE}, {VOLUME_FILE}")
    return ObjectFolder(root, geometry, projections, volume, names, images, colmap, truth_volume,
                        transform)


def write_object(path: PathLike, *, geometry: XrayGeometry | None = None, projections=None,
                 volume: CTVolume | None = None, images: Mapping | None = None,
                 colmap: ColmapModel | None = None, truth_volume: CTVolume | None = None,
                 truth_transform: Similarity | None = None) -> pathlib.Path:
    """Write the given parts of an object folder (others are left untouched).

    ``geometry`` and ``projections`` go together. Images written as uint8 PNG read back
    bit-identically; float images are rounded to 8 bits.

    Returns:
      The folder path.
    """
    root = pathlib.Path(path)
    if (geometry is None) != (projections is None):
        raise ValueError("geometry and projections must be given together")
    if colmap is not None and images is None and not (root / IMAGES_DIR).is_dir():
        raise ValueError("colmap needs the images it registers (pass images=)")
    root.mkdir(parents=True, exist_ok=True)
    if geometry is not None:
        write_projections(root / PROJECTIONS_FILE, projections, geometry)
        write_geometry(root / GEOMETRY_FILE, geometry)
    if volume is not None:
        write_volume(root / VOLUME_FILE, volume)
    if images is not None:
        write_images(root / IMAGES_DIR, images)
    if colmap is not None:
        write_colmap(root / COLMAP_DIR, colmap)
    if truth_volume is not None:
        write_volume(root / TRUTH_VOLUME_FILE, truth_volume)
    if truth_transform is not None:
        write_transform(root / TRANSFORM_FILE, truth_transform)
    return root
