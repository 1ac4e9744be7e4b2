"""Photos of an object folder (``rgb/images``): listing, reading (validated, HWC RGB) and writing."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import cv2
import numpy as np

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import (
    PathLike,
    _atomic_write,
)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGES_DIR = "rgb/images"
"""An object folder's photos."""


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
                raise ObjectFolderError(path, "alpha", "the photo has a transparent alpha channel:"
                                        " flatten it onto the background it was taken on (an image"
                                        " editor, or `convert IN -background white -flatten OUT`);"
                                        " from Python, read_image(..., background=(r, g, b))")
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


MASKS_DIR = "rgb/masks"
"""The user's object masks: ``rgb/masks/<photo stem>.png``, non-zero = object. Without that
folder, the photos' own alpha channels are the masks (:func:`read_masks`)."""


def read_alpha(path: PathLike) -> np.ndarray | None:
    """[H, W] float32 alpha in [0, 1] of a PNG with a non-opaque alpha channel; None for a photo
    without one (or a fully opaque one).

    Raises:
      ObjectFolderError: a fully transparent photo (nothing of the object in it).
    """
    path = pathlib.Path(path)
    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        return None
    full = float(np.iinfo(img.dtype).max)
    alpha = img[..., 3]
    if np.all(alpha == full):
        return None
    if not np.any(alpha):
        raise ObjectFolderError(path, "alpha", "the photo is fully transparent (alpha 0 everywhere):"
                                " as a cut-out its object is empty; remove it, or flatten it")
    return alpha.astype(np.float32) / np.float32(full)


def read_masks(root: PathLike, names, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """[V, H, W] bool object masks of the photos ``names``: from ``rgb/masks`` when that folder
    exists; otherwise from the photos' alpha channels (cut-outs: alpha ≥ ½ is the object; a photo
    without transparency among cut-outs is all object, i.e. it constrains nothing); None when
    there is neither. ``size`` (width, height): masks of another size are resampled to it
    (nearest), as the photos of mixed sizes are (:func:`insideout_jax.io.validate.read_registered_photos`).

    Raises:
      ObjectFolderError: a photo without its mask, or a mask that is not a readable image.
    """
    def fit(m):
        if size is None or (m.shape[1], m.shape[0]) == tuple(size):
            return m
        return cv2.resize(m.astype(np.uint8), tuple(int(v) for v in size),
                          interpolation=cv2.INTER_NEAREST) > 0

    folder = pathlib.Path(root) / MASKS_DIR
    if not folder.is_dir():
        alphas = [read_alpha(pathlib.Path(root) / IMAGES_DIR / n) for n in names]
        if all(a is None for a in alphas):
            return None
        shape = next(a.shape for a in alphas if a is not None) if size is None else size[::-1]
        return np.stack([np.ones(shape, bool) if a is None else fit(a >= 0.5) for a in alphas])
    out = []
    for name in names:
        p = folder / (pathlib.Path(name).stem + ".png")
        if not p.is_file():
            raise ObjectFolderError(p, "<file>", f"missing: {MASKS_DIR} holds masks, but not the one"
                                    f" of {name} (one <photo stem>.png per photo)")
        m = cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise ObjectFolderError(p, "<file>", "not a readable image (PNG mask expected)")
        out.append(fit(m > 0))
    return np.stack(out)
