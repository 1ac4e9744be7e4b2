"""An object as a lab hands it over: JPEG photos, raw detector counts with flat and dark fields, the
CT as a DICOM series in HU with padding outside its reconstruction circle.

``python -m insideout_jax.data export OBJECT --out DIR`` turns a generated object folder into what
its acquisition would have produced, so that the import path (:mod:`insideout_jax.io.detector`,
:mod:`insideout_jax.data.calibration`, DICOM reading, SfM with a lens) is exercised end to end
against a known truth:

- ``rgb/images``: the photos as JPEG (PNG renders are re-encoded at quality 92); no COLMAP model
  (SfM runs as on real photos);
- ``xray/projections.tif``: uint16 counts ``D + G·F₀·e^(−p)`` (rounded), with a per-pixel gain map
  G (± 5 %, smooth), flat level F₀ (default 60 000 counts) and dark level D ≈ 100 (± 5 counts per
  pixel); ``xray/flat.tif`` holds four flat exposures (Poisson noise) and ``xray/dark.tif`` the
  dark field; ``xray/geometry.json`` unchanged;
- ``ct/dicom/``: the CT as int16 slices, HU = (μ / 0.02 − 1)·1000, −3024 HU padding outside the
  inscribed circle of each slice (declared as PixelPaddingValue);
- ``truth/`` and ``xray/acquisition.json`` copied (the evaluation's), except ``truth/transform.json``
  (it belongs to the source's SfM model).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from insideout_jax import io as iio

__all__ = ["export_as_acquired"]


def _smooth_field(rng, shape, amplitude: float) -> np.ndarray:
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 16)
    return 1.0 + amplitude * f / max(float(np.abs(f).max()), 1e-12)


def export_as_acquired(src, out, *, flat_level: float = 60000.0, dark_level: float = 100.0,
                       seed: int = 0) -> dict:
    """Write the "as acquired" form of object folder ``src`` into ``out`` (module docstring).

    Returns:
      A summary {part: what was written}.
    """
    import cv2

    from insideout_jax.data.calibration import inplane_radius
    from insideout_jax.data.ctobject import MU_WATER
    from insideout_jax.data.scanner import ACQUISITION_FILE
    from insideout_jax.io.checkpoint import atomic_write_bytes
    from insideout_jax.io.dicom import write_dicom_series

    src, out = Path(src), Path(out)
    obj = iio.read_object(src, load_images=False, load_truth=False)
    if obj.geometry is None or obj.volume is None or not obj.image_names:
        raise ValueError(f"{src}: an export needs photos, projections and a CT volume")
    if obj.volume.quantity != "attenuation":
        raise ValueError(f"{src}: the CT volume is in {obj.volume.quantity}, not attenuation")
    rng = np.random.default_rng(seed)
    summary = {}
    (out / iio.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    for name in obj.image_names:
        p = src / iio.IMAGES_DIR / name
        if p.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(p, out / iio.IMAGES_DIR / name)
        else:
            img = iio.read_image(p, as_uint8=True)
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            atomic_write_bytes(out / iio.IMAGES_DIR / (p.stem + ".jpg"), buf.tobytes())
    summary["photos"] = f"{len(obj.image_names)} JPEG"
    p = np.asarray(obj.projections, np.float64)
    det = p.shape[1:]
    gain = _smooth_field(rng, det, 0.05)
    dark = dark_level + rng.uniform(-5.0, 5.0, det)
    counts = np.clip(np.round(dark + gain * flat_level * np.exp(-p)), 0, 65535).astype(np.uint16)
    flats = np.clip(rng.poisson(np.broadcast_to(gain * flat_level, (4, *det))) + dark, 0, 65535)
    iio.write_geometry(out / iio.GEOMETRY_FILE, obj.geometry)
    _tiff(out / iio.PROJECTIONS_FILE, counts)
    _tiff(out / "xray" / "flat.tif", flats.astype(np.uint16))
    _tiff(out / "xray" / "dark.tif", np.round(dark).astype(np.uint16))
    summary["projections"] = (f"{p.shape[0]} views of uint16 counts (flat {flat_level:g}, dark"
                              f" {dark_level:g}), 4 flat fields, 1 dark field")
    vol = obj.volume
    hu = (np.asarray(vol.data, np.float64) / MU_WATER - 1.0) * 1000.0
    outside = inplane_radius(*hu.shape[1:]) > 1.0
    files = write_dicom_series(out / iio.VOLUME_DICOM_DIR,
                               iio.make_volume(hu, vol.spacing_zyx, vol.origin_xyz, quantity="HU"),
                               padding=np.broadcast_to(outside, hu.shape))
    summary["ct"] = f"DICOM series of {len(files)} slices in HU, −3024 HU padding outside the circle"
    if (src / "truth").is_dir():
        shutil.copytree(src / "truth", out / "truth", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("transform.json"))
        shutil.copyfile(src / ACQUISITION_FILE, out / ACQUISITION_FILE)
        cams = out / "truth" / "cameras.json"
        if cams.is_file():  # the photos' new names
            d = iio.read_json(cams)
            iio.write_json_atomic(cams, {Path(k).stem + ".jpg": v for k, v in d.items()})
        summary["truth"] = "copied (for the evaluation)"
    return summary


def _tiff(path: Path, a: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, a, photometric="minisblack")
