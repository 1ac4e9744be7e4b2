"""Structure from motion with pycolmap on the CPU: SIFT, exhaustive matching, incremental mapping.

The photos of an object are placed in COLMAP's own arbitrary frame (rotation, translation, scale
unknown), exactly as for real data; hierarchical fitting later maps that frame to the CT frame. For
generated objects the true similarity SfM → CT frame is recovered afterwards by aligning the SfM
camera centres with the true ones (:func:`align_camera_centres`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SfMError", "SfMResult", "run_sfm", "align_camera_centres", "declared_camera_model",
           "SFM_CAMERA_MODELS", "SFM_OPTIONS_FILE"]

SFM_CAMERA_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV", "SIMPLE_PINHOLE", "PINHOLE")
SFM_OPTIONS_FILE = "rgb/sfm.json"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class SfMError(RuntimeError):
    """Structure from motion failed (too few images registered, no model, bad inputs)."""


@dataclasses.dataclass(frozen=True)
class SfMResult:
    """What :func:`run_sfm` produced.

    Attributes:
      model_dir: folder of the written COLMAP model (``.../sparse/0``).
      n_images: images given.
      n_registered: images with a recovered pose.
      n_points: sparse 3-D points.
      registered_names: file names of the registered images, sorted.
      mean_reprojection_error: pixels.
    """

    model_dir: Path
    n_images: int
    n_registered: int
    n_points: int
    registered_names: tuple
    mean_reprojection_error: float

    @property
    def registered_fraction(self) -> float:
        return self.n_registered / max(self.n_images, 1)


def declared_camera_model(obj_dir: str | Path) -> str | None:
    """The camera model an object folder declares for its photos in ``rgb/sfm.json``
    (``{"camera_model": "SIMPLE_PINHOLE"}``: photos taken without a lens, or already undistorted),
    or None where there is no such file (SfM then uses the preset's model).

    Why a folder may say so: with a lens model, SfM estimates a lens even where there is none, and
    the focal length trades off against it while the object fills only the frame's centre. On the
    TIGRE head's renders (no lens) SIMPLE_RADIAL found k = +0.024 and a focal length 0.9 % short;
    the SfM points then put the object 0.72 % smaller than the camera centres do, and the fitted
    scale was 1.52 % off the camera-centre reference. With SIMPLE_PINHOLE on the same photos: 0.33
    %, 0.29 % and 1.07 % (measured; the visible-depth bias of
    :mod:`insideout_jax.fitting.visible` is the rest).

    Raises:
      ValueError: naming the file and the field, where it is not JSON or names no known model.
    """
    path = Path(obj_dir) / SFM_OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        options = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    model = options.get("camera_model") if isinstance(options, dict) else None
    if model not in SFM_CAMERA_MODELS:
        raise ValueError(f"{path}: field 'camera_model' must be one of {', '.join(SFM_CAMERA_MODELS)};"
                         f" got {model!r}")
    return model


def _list_images(image_dir: Path) -> list[str]:
    if not image_dir.is_dir():
        raise SfMError(f"image folder {image_dir} does not exist")
    names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if len(names) < 3:
        raise SfMError(f"{image_dir}: SfM needs at least 3 images, found {len(names)}"
                       f" (accepted suffixes: {', '.join(_IMAGE_SUFFIXES)})")
    return names


def run_sfm(image_dir: str | Path, sparse_dir: str | Path, *, camera_model: str = "SIMPLE_RADIAL",
            known_intrinsics: tuple[float, ...] | None = None, min_registered_fraction: float = 0.7,
            max_num_features: int = 8192, num_threads: int = -1, seed: int = 0,
            verbose: bool = False) -> SfMResult:
    """Run SfM on a folder of photos and write the largest model to ``sparse_dir/0``.

    Photos of one size share one camera (``CameraMode.SINGLE``); photos of mixed sizes (two
    cameras, portrait and landscape shots) get a camera each (``PER_IMAGE``: each photo's
    intrinsics and lens are estimated from its own matches, a weaker estimate than a shared one).
    COLMAP's ``AUTO`` is not used: without EXIF focal lengths it gave each of 58 same-size photos
    its own camera. With a distorted camera model the lens is estimated with the poses; the photos
    stay as taken, and the pipeline undistorts them on reading
    (:func:`insideout_jax.io.validate.read_registered_photos`).

    Args:
      image_dir: folder of photos (png / jpg / tif / bmp).
      sparse_dir: output root; the model goes to ``sparse_dir/0`` (replaced if present).
      camera_model: "SIMPLE_RADIAL" (f, cx, cy and one radial coefficient k, COLMAP's default),
        "RADIAL" (k1, k2), "OPENCV" (fx, fy, k1, k2, p1, p2), or the undistorted "SIMPLE_PINHOLE",
        "PINHOLE".
      known_intrinsics: (fx, fy, cx, cy) in pixels: use a PINHOLE camera with these fixed
        parameters (not refined by bundle adjustment).
      min_registered_fraction: raise :class:`SfMError` below this fraction of registered images.
      max_num_features: SIFT features per image.
      num_threads: -1 = all cores; 1 makes extraction, matching and mapping deterministic.
      seed: COLMAP's random seed (deterministic RANSAC sampling).

    Returns:
      An :class:`SfMResult`.

    Raises:
      SfMError: with the numbers, when too few images register or no model is found.
      ValueError: for an unsupported camera model or malformed intrinsics.
    """
    import pycolmap

    image_dir, sparse_dir = Path(image_dir), Path(sparse_dir)
    names = _list_images(image_dir)
    if camera_model not in SFM_CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {SFM_CAMERA_MODELS}, got {camera_model!r}")
    from PIL import Image

    sizes = set()
    for n in names:  # headers only
        with Image.open(image_dir / n) as im:
            sizes.add(im.size)
    mode = pycolmap.CameraMode.SINGLE if len(sizes) == 1 else pycolmap.CameraMode.PER_IMAGE
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = camera_model
    mapper = pycolmap.IncrementalPipelineOptions()
    mapper.num_threads = num_threads
    mapper.random_seed = seed
    if known_intrinsics is not None:
        k = tuple(float(v) for v in known_intrinsics)
        if len(k) != 4 or not all(np.isfinite(k)) or k[0] <= 0 or k[1] <= 0:
            raise ValueError(f"known_intrinsics must be (fx, fy, cx, cy) with fx, fy > 0, got"
                             f" {known_intrinsics}")
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(f"{v:.10g}" for v in k)
        mapper.ba_refine_focal_length = False
        mapper.ba_refine_principal_point = False
        mapper.ba_refine_extra_params = False
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = num_threads
    extraction.sift.max_num_features = max_num_features
    pycolmap.set_random_seed(seed)
    if not verbose:  # COLMAP logs every image at INFO level; keep warnings and errors only
        pycolmap.logging.minloglevel = pycolmap.logging.WARNING

    with tempfile.TemporaryDirectory(prefix="insideout_sfm_") as tmp:
        db = Path(tmp) / "database.db"
        out = Path(tmp) / "sparse"
        out.mkdir()
        pycolmap.extract_features(db, image_dir, image_names=names,
                                  camera_mode=mode, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = num_threads  # one thread: the same matches every run
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
        models = pycolmap.incremental_mapping(db, image_dir, out, options=mapper)
        if not models:
            raise SfMError(f"{image_dir}: SfM found no model for {len(names)} images (too few"
                           " matches: photos need overlap and texture)")
        best = max(models.values(), key=lambda r: r.num_reg_images())
        n_reg = best.num_reg_images()
        frac = n_reg / len(names)
        if frac < min_registered_fraction:
            raise SfMError(f"{image_dir}: SfM registered only {n_reg} of {len(names)} images"
                           f" ({100 * frac:.0f}% < {100 * min_registered_fraction:.0f}%). Use more"
                           " overlapping, textured photos, or give known_intrinsics.")
        target = sparse_dir / "0"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        best.write(target)
        reg_names = tuple(sorted(best.image(i).name for i in best.reg_image_ids()))
        return SfMResult(model_dir=target, n_images=len(names), n_registered=n_reg,
                         n_points=best.num_points3D(), registered_names=reg_names,
                         mean_reprojection_error=float(best.compute_mean_reprojection_error()))


def align_camera_centres(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Similarity (R, t, s) with dst ≈ s·R·src + t, by least squares (pycolmap's Umeyama).

    Args:
      src: [M, 3] camera centres in the SfM frame (M ≥ 3, not collinear).
      dst: [M, 3] the same cameras' true centres in the CT frame, mm.

    Returns:
      rotation [3, 3], translation [3] (mm), scale (mm per SfM unit).
    """
    import pycolmap

    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"src and dst must both be [M, 3] with M >= 3, got {src.shape}, {dst.shape}")
    sim = pycolmap.estimate_sim3d(src, dst)
    if sim is None:
        raise SfMError("camera centres are degenerate (collinear?): no similarity found")
    m = np.asarray(sim.matrix())
    scale = float(sim.scale)
    return m[:, :3] / scale, m[:, 3].copy(), scale
