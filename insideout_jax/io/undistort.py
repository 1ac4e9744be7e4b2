"""Lens distortion of photos as taken: COLMAP's distorted camera models, undistortion with OpenCV.

Phone and DSLR photos carry radial (and tangential) lens distortion. SfM estimates it
(:func:`insideout_jax.data.sfm.run_sfm` with ``camera_model="SIMPLE_RADIAL"`` or ``"OPENCV"``);
the rest of the pipeline renders pinhole cameras, so each photo is *undistorted* on reading: resampled
(bilinear) onto the pinhole camera with the same intrinsics, ``fx, fy, cx, cy``.

Distortion (COLMAP's models, which are OpenCV's): with normalised coordinates x = (u − cx)/fx,
y = (v − cy)/fy and r² = x² + y²,

    x_d = x (1 + k1 r² + k2 r⁴) + 2 p1 x y + p2 (r² + 2 x²)
    y_d = y (1 + k1 r² + k2 r⁴) + p1 (r² + 2 y²) + 2 p2 x y

SIMPLE_RADIAL (f, cx, cy, k) is k1 = k; RADIAL (f, cx, cy, k1, k2); OPENCV (fx, fy, cx, cy, k1, k2,
p1, p2), in COLMAP's pixel coordinates (pixel (0, 0)'s centre at (0.5, 0.5)); images are resampled
with OpenCV's ``remap`` at the closed form's positions.
"""

from __future__ import annotations

import functools
import types

import cv2
import numpy as np

__all__ = ["DISTORTED_MODELS", "NEGLIGIBLE_PX", "split_colmap_params", "undistort_image",
           "distort_image", "undistort_points", "distort_points", "max_displacement"]

DISTORTED_MODELS = ("SIMPLE_RADIAL", "RADIAL", "OPENCV")
NEGLIGIBLE_PX = 0.05
"""A lens that moves no pixel of the photo by this much is left alone: resampling would blur the
photo more (bilinear) than the distortion displaces it."""


def split_colmap_params(model: str, params) -> tuple[np.ndarray, np.ndarray | None]:
    """COLMAP camera parameters → ((fx, fy, cx, cy), (k1, k2, p1, p2) or None when undistorted).

    Raises:
      ValueError: an unknown model or a wrong number of parameters.
    """
    p = np.asarray(params, np.float64).ravel()
    sizes = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8}
    if model not in sizes:
        raise ValueError(f"camera model {model!r} is not supported: use one of {tuple(sizes)}"
                         " (or undistort the images first, e.g. pycolmap.undistort_images)")
    if p.size != sizes[model]:
        raise ValueError(f"{model} camera needs {sizes[model]} params, got {p.size}")
    if model == "SIMPLE_PINHOLE":
        return np.array([p[0], p[0], p[1], p[2]]), None
    if model == "PINHOLE":
        return p.copy(), None
    if model == "SIMPLE_RADIAL":
        return np.array([p[0], p[0], p[1], p[2]]), np.array([p[3], 0.0, 0.0, 0.0])
    if model == "RADIAL":
        return np.array([p[0], p[0], p[1], p[2]]), np.array([p[3], p[4], 0.0, 0.0])
    return p[:4].copy(), p[4:8].copy()


def undistort_points(uv, camera, dist, *, iterations: int = 100) -> np.ndarray:
    """[N, 2] pixel positions in the distorted photo → where the pinhole ``camera`` sees them
    (the closed form of :func:`distort_points` inverted by fixed-point iteration)."""
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    k1, k2, p1, p2 = (float(v) for v in dist)
    xd = (uv[:, 0] - float(camera.cx)) / float(camera.fx)
    yd = (uv[:, 1] - float(camera.cy)) / float(camera.fy)
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        x = (xd - 2 * p1 * x * y - p2 * (r2 + 2 * x * x)) / radial
        y = (yd - p1 * (r2 + 2 * y * y) - 2 * p2 * x * y) / radial
    return np.stack([x * float(camera.fx) + float(camera.cx),
                     y * float(camera.fy) + float(camera.cy)], axis=1)


def distort_points(uv, camera, dist) -> np.ndarray:
    """[N, 2] pinhole pixel positions → where the distorted photo holds them (the closed form)."""
    uv = np.asarray(uv, np.float64).reshape(-1, 2)
    k1, k2, p1, p2 = (float(v) for v in dist)
    x = (uv[:, 0] - float(camera.cx)) / float(camera.fx)
    y = (uv[:, 1] - float(camera.cy)) / float(camera.fy)
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd * float(camera.fx) + float(camera.cx),
                     yd * float(camera.fy) + float(camera.cy)], axis=1)


def max_displacement(camera, dist) -> float:
    """Largest shift (px) the lens gives any point of the photo's border (where it is largest for
    a monotonic lens)."""
    w, h = camera.width, camera.height
    t = np.linspace(0.0, 1.0, 65)
    border = np.concatenate([np.stack([t * w, 0 * t], 1), np.stack([t * w, 0 * t + h], 1),
                             np.stack([0 * t, t * h], 1), np.stack([0 * t + w, t * h], 1)])
    return float(np.abs(distort_points(border, camera, dist) - border).max())


def _pixel_centres(h: int, w: int) -> np.ndarray:
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([jj.ravel(), ii.ravel()], 1)


def _resample(img, camera, src_uv) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) != (camera.width, camera.height):
        raise ValueError(f"the photo is {w}×{h}, its camera {camera.width}×{camera.height}")
    src = src_uv - 0.5  # COLMAP pixel centres → array indices
    return cv2.remap(np.ascontiguousarray(img), src[:, 0].reshape(h, w).astype(np.float32),
                     src[:, 1].reshape(h, w).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def undistort_image(img: np.ndarray, camera, dist) -> np.ndarray:
    """A distorted photo [H, W, C] → the pinhole ``camera``'s image (bilinear; the border, where
    the photo holds nothing, repeats its edge)."""
    return _resample(img, camera, _lens_map("distort", *_lens_key(img, camera, dist)))


def distort_image(img: np.ndarray, camera, dist) -> np.ndarray:
    """A pinhole image → the photo a lens with ``dist`` takes (the inverse of
    :func:`undistort_image`; for generating photos as taken)."""
    return _resample(img, camera, _lens_map("undistort", *_lens_key(img, camera, dist)))


def _lens_key(img, camera, dist) -> tuple:
    h, w = img.shape[:2]
    return (h, w, float(camera.fx), float(camera.fy), float(camera.cx), float(camera.cy),
            tuple(float(v) for v in np.asarray(dist).ravel()))


@functools.lru_cache(maxsize=16)
def _lens_map(direction, h, w, fx, fy, cx, cy, dist) -> np.ndarray:
    """Where each pixel centre of an h×w image samples its source, for one lens and one camera
    (a photo set shares them: the map is computed once, not per photo)."""
    cam = types.SimpleNamespace(fx=fx, fy=fy, cx=cx, cy=cy)
    fn = distort_points if direction == "distort" else undistort_points
    out = fn(_pixel_centres(h, w), cam, dist)
    out.setflags(write=False)
    return out
