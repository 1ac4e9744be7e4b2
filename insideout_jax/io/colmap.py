"""COLMAP sparse models (``rgb/sparse/0``) via pycolmap: cameras, image names, sparse points.

Cameras follow COLMAP's conventions exactly (world → camera pose ``cam_from_world``, pixel (0, 0)
spanning [0, 1]², see :mod:`insideout_jax.cameras`), so no conversion happens here. Undistorted models
(PINHOLE, SIMPLE_PINHOLE) and distorted ones (SIMPLE_RADIAL, RADIAL, OPENCV) are read; for the
latter the camera is the pinhole part and ``distortion`` holds (k1, k2, p1, p2), with which the
photos are undistorted on reading (:mod:`insideout_jax.io.undistort`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from insideout_jax.cameras import PinholeCamera, pinhole_from_colmap
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.undistort import split_colmap_params

__all__ = ["ColmapModel", "make_colmap_model", "read_colmap", "write_colmap"]

_FILES = ("cameras", "images", "points3D")


@dataclasses.dataclass(frozen=True, eq=False)
class ColmapModel:
    """A COLMAP reconstruction reduced to what the pipeline uses.

    Attributes:
      image_names: registered image names (relative to ``rgb/images``), sorted.
      cameras: one :class:`PinholeCamera` per name, same order.
      points_xyz: [P, 3] float64 sparse points (SfM frame, arbitrary units).
      points_rgb: [P, 3] uint8 point colours.
      points_error: [P] float64 mean reprojection error in pixels (−1 where unknown).
      unregistered: names of images in the model without a pose.
      distortion: per name, None or [4] (k1, k2, p1, p2) of its lens (COLMAP's distorted models);
        empty when no camera is distorted.
    """

    image_names: tuple
    cameras: tuple
    points_xyz: np.ndarray
    points_rgb: np.ndarray
    points_error: np.ndarray
    unregistered: tuple = ()
    distortion: tuple = ()

    @property
    def distorted(self) -> bool:
        return any(d is not None for d in self.distortion)


def make_colmap_model(image_names, cameras, points_xyz=None, points_rgb=None) -> ColmapModel:
    """Validated :class:`ColmapModel` (e.g. for generated objects); sorted by image name.

    Args:
      image_names: N distinct names.
      cameras: N :class:`PinholeCamera`.
      points_xyz: [P, 3] points (default: none).
      points_rgb: [P, 3] uint8 colours (default: grey 128).
    """
    names = [str(n) for n in image_names]
    cams = list(cameras)
    if len(names) != len(cams) or not names:
        raise ValueError(f"image_names ({len(names)}) and cameras ({len(cams)}) must have the same"
                         " non-zero length")
    if len(set(names)) != len(names):
        raise ValueError("image_names must be distinct")
    if not all(isinstance(c, PinholeCamera) for c in cams):
        raise ValueError("cameras must be PinholeCamera instances")
    xyz = np.zeros((0, 3)) if points_xyz is None else np.asarray(points_xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.all(np.isfinite(xyz)):
        raise ValueError(f"points_xyz must be a finite [P, 3] array, got shape {xyz.shape}")
    if points_rgb is None:
        rgb = np.full(xyz.shape, 128, np.uint8)
    else:
        rgb = np.asarray(points_rgb)
        if rgb.shape != xyz.shape or rgb.dtype != np.uint8:
            raise ValueError(f"points_rgb must be uint8 {xyz.shape}, got {rgb.dtype} {rgb.shape}")
    order = sorted(range(len(names)), key=names.__getitem__)
    return ColmapModel(tuple(names[i] for i in order), tuple(cams[i] for i in order), xyz, rgb,
                       np.full(len(xyz), -1.0))


def _model_file(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for ext in (".bin", ".txt"):
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    return None


def read_colmap(model_dir: str | os.PathLike) -> ColmapModel:
    """Read a COLMAP model folder (binary or text) with pycolmap.

    Raises:
      ObjectFolderError: missing folder or file, a file pycolmap cannot parse, an unknown camera
        model, invalid intrinsics or poses, or no registered image.
    """
    import pycolmap

    folder = pathlib.Path(model_dir)
    if not folder.is_dir():
        raise ObjectFolderError(folder, "<file>", "COLMAP model folder not found")
    for stem in _FILES:
        if _model_file(folder, stem) is None:
            raise ObjectFolderError(folder / f"{stem}.bin", "<file>",
                                    f"missing ({stem}.bin or {stem}.txt expected)")
    try:
        rec = pycolmap.Reconstruction(folder)
    except Exception as e:  # pycolmap raises ValueError/RuntimeError for corrupt files
        raise ObjectFolderError(folder, "<file>", f"pycolmap cannot read the model ({e})") from None
    cam_file = _model_file(folder, "cameras")
    named, unregistered = [], []
    for image in rec.images.values():
        if not image.has_pose:
            unregistered.append(image.name)
            continue
        cam = rec.cameras[image.camera_id]
        pose = image.cam_from_world()
        try:
            k, dist = split_colmap_params(cam.model_name, np.asarray(cam.params))
            pinhole = pinhole_from_colmap("PINHOLE", k, cam.width, cam.height,
                                          pose.rotation.matrix(), pose.translation)
        except ValueError as e:
            raise ObjectFolderError(cam_file, f"camera {image.camera_id} (image {image.name!r})",
                                    str(e)) from None
        named.append((image.name, pinhole, dist))
    if not named:
        raise ObjectFolderError(_model_file(folder, "images"), "images", "no registered image")
    named.sort(key=lambda x: x[0])
    ids = sorted(rec.points3D.keys())
    pts = [rec.points3D[i] for i in ids]
    xyz = np.array([p.xyz for p in pts], np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], np.uint8).reshape(-1, 3)
    err = np.array([p.error for p in pts], np.float64).reshape(-1)
    dist = tuple(d for *_, d in named)
    return ColmapModel(tuple(n for n, *_ in named), tuple(c for _, c, _ in named), xyz, rgb, err,
                       tuple(sorted(unregistered)), dist if any(d is not None for d in dist) else ())


def write_colmap(model_dir: str | os.PathLike, model: ColmapModel) -> pathlib.Path:
    """Write ``model`` as a binary COLMAP model (one PINHOLE camera per image, points without
    tracks). Reading it back gives the same names and points and cameras equal to float32
    rounding (poses pass through a quaternion)."""
    import pycolmap

    if not isinstance(model, ColmapModel):
        raise ValueError(f"model must be a ColmapModel, got {type(model).__name__}")
    rec = pycolmap.Reconstruction()
    for i, (name, c) in enumerate(zip(model.image_names, model.cameras, strict=True), start=1):
        cam = pycolmap.Camera.create_from_model_name(i, "PINHOLE", float(c.fx), c.width, c.height)
        cam.params = [float(c.fx), float(c.fy), float(c.cx), float(c.cy)]
        rec.add_camera_with_trivial_rig(cam)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(c.rotation, np.float64)),
                                np.asarray(c.translation, np.float64))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=i, image_id=i), pose)
    for xyz, rgb in zip(model.points_xyz, model.points_rgb, strict=True):
        rec.add_point3D(np.asarray(xyz, np.float64), pycolmap.Track(), np.asarray(rgb, np.uint8))
    folder = pathlib.Path(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rec.write(folder)
    return folder
