"""Check an object folder before any work: everything a pipeline run reads, in seconds.

:func:`read_object` already checks each file against its schema (fields, types, signs, finite
values, angles that look like degrees, projections that look like raw counts, shapes against the
geometry, COLMAP images that are missing). :func:`validate_object` adds what only shows across
files or in the pixels: every photo decodes, has 1, 3 or 4 channels (a transparent alpha is a
cut-out, its mask; not all transparent) and matches the size of its COLMAP camera (photos of
mixed sizes are resampled to their common size on reading: :func:`read_registered_photos`); there
are enough photos for a held-out split; the CT volume and the projections are
not empty. It never opens ``truth/`` (that is the evaluation's alone).
"""

from __future__ import annotations

import os

import numpy as np

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.images import read_alpha, read_image
from insideout_jax.io.objects import (
    COLMAP_DIR,
    IMAGES_DIR,
    PROJECTIONS_FILE,
    VOLUME_FILE,
    ObjectFolder,
    read_object,
)

__all__ = ["MIN_PHOTOS", "validate_object", "check_photo_size", "read_registered_photos",
           "registered_cameras", "common_size"]

MIN_PHOTOS = 3
"""Fewer photos cannot be split into training and held-out views (nor registered by SfM)."""


def check_photo_size(path, image: np.ndarray, camera, colmap_dir) -> None:
    """ObjectFolderError when a photo is not the size of its COLMAP camera (never resized
    silently)."""
    h, w = image.shape[:2]
    if (h, w) != (camera.height, camera.width):
        raise ObjectFolderError(path, "size", f"the photo is {w}×{h} but its camera in {colmap_dir}"
                                f" is {camera.width}×{camera.height}: give the photos SfM registered,"
                                " or run SfM again (remove rgb/sparse)")


def common_size(sizes) -> tuple[int, int]:
    """(width, height) the photos are trained at: the most frequent of ``sizes`` ((w, h) each);
    among equally frequent ones, the largest."""
    sizes = [(int(w), int(h)) for w, h in sizes]
    if not sizes:
        raise ValueError("no photo sizes")
    return max(set(sizes), key=lambda s: (sizes.count(s), s[0] * s[1]))


def registered_cameras(model) -> list:
    """The cameras of ``model`` (a :class:`ColmapModel`) at the photos' common size
    (:func:`common_size`): a camera of another size is resized to it
    (:func:`insideout_jax.cameras.resize_camera`), as :func:`read_registered_photos` resamples its
    photo."""
    from insideout_jax.cameras import resize_camera

    w, h = common_size([(c.width, c.height) for c in model.cameras])
    return [c if (c.width, c.height) == (w, h) else resize_camera(c, w, h) for c in model.cameras]


def read_registered_photos(root, model, background=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, list]:
    """(photos [V, H, W, 3] float32, their cameras): the photos of ``model`` (a
    :class:`ColmapModel`) in its order, each checked against its camera's size (never resized
    silently) and, where its lens is distorted, undistorted onto its pinhole camera
    (:func:`insideout_jax.io.undistort.undistort_image`; not where the lens moves no pixel by
    :data:`~insideout_jax.io.undistort.NEGLIGIBLE_PX`). Cut-outs (a transparent alpha channel,
    also the object's mask) are composited onto the training ``background``.

    Photos of mixed sizes (two cameras, or portrait and landscape shots) are resampled to the
    common size (:func:`common_size`; area averaging when shrinking, bilinear when enlarging) and
    their cameras resized with them (:func:`registered_cameras`): the geometry stays exact, at the
    cost of the resolution the resampling takes away.
    """
    import cv2

    from insideout_jax.io.undistort import NEGLIGIBLE_PX, max_displacement, undistort_image

    root = os.fspath(root)
    cams = registered_cameras(model)
    imgs = []
    for k, (name, cam) in enumerate(zip(model.image_names, model.cameras, strict=True)):
        path = os.path.join(root, IMAGES_DIR, name)
        img = read_image(path, background=background)
        check_photo_size(path, img, cam, os.path.join(root, COLMAP_DIR))
        dist = model.distortion[k] if model.distortion else None
        if dist is not None and max_displacement(cam, dist) >= NEGLIGIBLE_PX:
            img = undistort_image(img, cam, dist)
        w, h = cams[k].width, cams[k].height
        if (img.shape[1], img.shape[0]) != (w, h):
            shrink = w <= img.shape[1] and h <= img.shape[0]
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        imgs.append(img)
    return np.stack(imgs), cams


def validate_object(path: str | os.PathLike, *, check_photos: bool = True) -> ObjectFolder:
    """Read and check an object folder as a pipeline run will use it (no ``truth/``).

    Args:
      path: the object folder.
      check_photos: decode every photo (the slowest check: about 10 ms per megapixel).

    Returns:
      The :class:`ObjectFolder` (photos not loaded).

    Raises:
      ObjectFolderError: naming the file and the field, for the first problem found.
    """
    obj = read_object(path, load_images=False, load_truth=False)
    root = obj.root
    if obj.volume is not None and min(obj.volume.shape) < 2:
        raise ObjectFolderError(root / VOLUME_FILE, "shape", f"{obj.volume.shape} voxels: a CT volume"
                                " has at least 2 along each axis (is it one slice?)")
    if obj.volume is not None and not np.any(np.asarray(obj.volume.data) != 0):
        raise ObjectFolderError(root / VOLUME_FILE, "values", "every voxel is 0: the CT volume is"
                                " empty (a failed export or a wrong --offset?)")
    if obj.projections is not None and not np.any(obj.projections > 0):
        raise ObjectFolderError(root / PROJECTIONS_FILE, "values", "no positive line integral: the"
                                " projections are empty (flat fields only?)")
    names = obj.image_names
    if names and len(names) < MIN_PHOTOS:
        raise ObjectFolderError(root / IMAGES_DIR, "<file>", f"{len(names)} photo(s); at least"
                                f" {MIN_PHOTOS} are needed (training views and held-out views)")
    if check_photos and names:
        cams = dict(zip(obj.colmap.image_names, obj.colmap.cameras, strict=True)) if obj.colmap else {}
        for name in names:
            p = root / IMAGES_DIR / name
            img = read_image(p, background=(0.0, 0.0, 0.0))  # decodes; checks depth and channels
            read_alpha(p)  # a cut-out's alpha is its mask: refused only when nothing is left
            if name in cams:
                check_photo_size(p, img, cams[name], root / COLMAP_DIR)
    return obj
