"""Cameras: a pinhole camera with COLMAP conventions, and cone-/parallel-beam X-ray geometry.

Pinhole (COLMAP): a world point p has camera coordinates x = R p + t (x right, y down, z forward);
it projects to pixel coordinates u = fx·x/z + cx, v = fy·y/z + cy, where the centre of the pixel in
row i, column j is at (u, v) = (j + 0.5, i + 0.5). Only undistorted models (PINHOLE,
SIMPLE_PINHOLE) are accepted: undistort photos first (e.g. ``colmap image_undistorter``).

X-ray geometry (cone/parallel beam, circular scans and general per-view poses) lives in
:mod:`insideout_jax.xray_geometry`; its names are re-exported here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from insideout_jax import xla
from insideout_jax.xray_geometry import (  # noqa: F401  (re-exported)
    XrayGeometry,
    _finite_array,
    carm_geometry,
    carm_poses,
    circular_poses,
    geometry_from_projection_matrices,
    make_xray_geometry,
    projection_matrices,
    view_frame,
    view_params,
    xray_frame,
    xray_pixel_centers,
    xray_project,
    xray_project_jacobian,
    xray_rays,
    xray_source,
)

__all__ = [
    "PinholeCamera", "make_pinhole", "pinhole_from_colmap", "look_at", "scale_camera", "ring_cameras", "camera_center",
    "world_to_camera", "project_points", "pinhole_rays", "transform_camera", "intrinsic_matrix",
    "XrayGeometry", "make_xray_geometry", "xray_frame", "xray_source", "xray_rays", "xray_project",
    "xray_project_jacobian", "xray_pixel_centers", "UNDISTORTED_MODELS", "view_frame", "view_params",
    "circular_poses", "carm_poses", "carm_geometry", "projection_matrices",
    "geometry_from_projection_matrices",
]

UNDISTORTED_MODELS = ("PINHOLE", "SIMPLE_PINHOLE")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PinholeCamera:
    """An undistorted pinhole camera, COLMAP conventions (world → camera).

    Attributes:
      rotation: [3, 3] float32 R (world → camera).
      translation: [3] float32 t (world → camera), x_cam = R p + t.
      fx, fy: [] float32 focal lengths in pixels.
      cx, cy: [] float32 principal point in pixels (pixel (0, 0) spans [0, 1]²).
      width, height: image size in pixels (static).
    """

    rotation: jax.Array
    translation: jax.Array
    fx: jax.Array
    fy: jax.Array
    cx: jax.Array
    cy: jax.Array
    width: int = dataclasses.field(metadata=dict(static=True))
    height: int = dataclasses.field(metadata=dict(static=True))

    def replace(self, **kw) -> PinholeCamera:
        return dataclasses.replace(self, **kw)


def make_pinhole(rotation: ArrayLike, translation: ArrayLike, fx: float, fy: float, cx: float,
                 cy: float, width: int, height: int) -> PinholeCamera:
    """Validated :class:`PinholeCamera` (float32 leaves).

    Raises:
      ValueError: if R is not a proper rotation (RᵀR = I, det = +1 within 1e-4), focal lengths or
        image size are not positive, or any value is not finite.
    """
    rot = _finite_array(rotation, (3, 3), "rotation")
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-4 or abs(np.linalg.det(rot) - 1.0) > 1e-4:
        raise ValueError(f"rotation must be a proper rotation matrix (RᵀR = I, det = +1), got {rot}")
    t = _finite_array(translation, (3,), "translation")
    for name, v in (("fx", fx), ("fy", fy)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive focal length in pixels, got {v}")
    for name, v in (("cx", cx), ("cy", cy)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be positive, got {width}×{height}")
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return PinholeCamera(f32(rot), f32(t), f32(fx), f32(fy), f32(cx), f32(cy),
                         int(width), int(height))


def pinhole_from_colmap(model: str, params: ArrayLike, width: int, height: int,
                        rotation: ArrayLike, translation: ArrayLike) -> PinholeCamera:
    """Camera from a COLMAP camera model and image pose.

    Args:
      model: COLMAP model name; only "PINHOLE" (fx, fy, cx, cy) and "SIMPLE_PINHOLE" (f, cx, cy).
      params: the model's parameters.
      width, height: image size in pixels.
      rotation, translation: the image's world → camera pose (``cam_from_world``).

    Raises:
      ValueError: for a distorted or unknown model (undistort the images first), or a wrong number
        of parameters.
    """
    p = np.asarray(params, dtype=np.float64).ravel()
    if model == "PINHOLE":
        if p.size != 4:
            raise ValueError(f"PINHOLE camera needs 4 params (fx, fy, cx, cy), got {p.size}")
        fx, fy, cx, cy = p
    elif model == "SIMPLE_PINHOLE":
        if p.size != 3:
            raise ValueError(f"SIMPLE_PINHOLE camera needs 3 params (f, cx, cy), got {p.size}")
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:
        raise ValueError(
            f"camera model {model!r} is not supported: only undistorted models {UNDISTORTED_MODELS}"
            " are accepted. Undistort the images first (e.g. `colmap image_undistorter`, or"
            " pycolmap.undistort_images) and use the undistorted model.")
    return make_pinhole(rotation, translation, fx, fy, cx, cy, width, height)


def scale_camera(camera: PinholeCamera, factor: float) -> PinholeCamera:
    """The same camera for images resized by ``factor`` (e.g. 0.5 halves width and height).

    Pixel edges stay aligned: u' = factor·u, so fx, fy, cx, cy all scale by ``factor``.

    Raises:
      ValueError: when the new size is not a whole number of pixels.
    """
    w, h = camera.width * factor, camera.height * factor
    if abs(w - round(w)) > 1e-6 or abs(h - round(h)) > 1e-6 or round(w) < 1 or round(h) < 1:
        raise ValueError(f"factor {factor} gives a non-integer image size {w}×{h}")
    return camera.replace(fx=camera.fx * factor, fy=camera.fy * factor, cx=camera.cx * factor,
                          cy=camera.cy * factor, width=int(round(w)), height=int(round(h)))


def resize_camera(camera: PinholeCamera, width: int, height: int) -> PinholeCamera:
    """The same camera for its image resampled to ``width`` × ``height`` (the aspect may change:
    a portrait photo on a landscape canvas). Pixel edges stay aligned, u' = u·W'/W and
    v' = v·H'/H, so fx and cx scale with the width, fy and cy with the height (non-square pixels
    where the aspect changes: still an exact pinhole)."""
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be positive, got {width}×{height}")
    sx, sy = int(width) / camera.width, int(height) / camera.height
    return camera.replace(fx=camera.fx * sx, fy=camera.fy * sy, cx=camera.cx * sx,
                          cy=camera.cy * sy, width=int(width), height=int(height))


def look_at(eye: ArrayLike, target: ArrayLike, up: ArrayLike = (0.0, 0.0, 1.0)) -> tuple:
    """World → camera (R, t) of a camera at ``eye`` looking at ``target`` (y down in the image).

    Returns:
      (R [3, 3], t [3]) as float64 NumPy arrays.
    """
    eye = np.asarray(eye, np.float64)
    fwd = np.asarray(target, np.float64) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("up must not be parallel to the viewing direction")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd])  # rows: camera x, y, z axes in world coordinates
    return rot, -rot @ eye


def ring_cameras(n: int, *, size: int, centre=(0.0, 0.0, 0.0), distance: float,
                 elevations_deg=(-25.0, 0.0, 25.0, 50.0), fov_deg: float = 40.0) -> list:
    """Look-at cameras on rings of constant elevation around ``centre`` (z up).

    The n views are shared as evenly as possible between the rings; each ring's azimuths are
    staggered by half a step relative to the previous ring.

    Returns:
      n :class:`PinholeCamera` (square ``size`` images, principal point at the image centre).
    """
    els = np.deg2rad(np.asarray(elevations_deg, np.float64))
    if els.ndim != 1 or els.size == 0 or np.any(np.abs(els) >= np.pi / 2 - 1e-3):
        raise ValueError(f"elevations_deg must be a list of angles in (−90°, 90°), got {elevations_deg}")
    if int(n) <= 0 or int(size) <= 0:
        raise ValueError(f"n and size must be positive, got {n}, {size}")
    c = np.asarray(centre, np.float64)
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    per_ring = np.full(els.size, int(n) // els.size)
    per_ring[: int(n) % els.size] += 1
    cams = []
    for r, (el, m) in enumerate(zip(els, per_ring, strict=True)):
        for j in range(m):
            az = 2 * np.pi * (j + 0.5 * (r % 2)) / max(m, 1)
            eye = c + distance * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            rot, t = look_at(eye, c)
            cams.append(make_pinhole(rot, t, f, f, size / 2, size / 2, size, size))
    return cams


def intrinsic_matrix(camera: PinholeCamera) -> jax.Array:
    """[3, 3] K."""
    z = jnp.zeros_like(camera.fx)
    return jnp.stack([jnp.stack([camera.fx, z, camera.cx]), jnp.stack([z, camera.fy, camera.cy]),
                      jnp.stack([z, z, jnp.ones_like(z)])])


def camera_center(camera: PinholeCamera) -> jax.Array:
    """[3] camera centre in the world frame, −Rᵀ t."""
    return -jnp.dot(camera.rotation.T, camera.translation, precision=xla.HIGHEST)


def world_to_camera(camera: PinholeCamera, points: jax.Array) -> jax.Array:
    """[..., 3] camera coordinates R p + t of world points [..., 3]."""
    return points @ camera.rotation.T + camera.translation


def project_points(camera: PinholeCamera, points: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pixel coordinates and depth of world points.

    Returns:
      uv: [..., 2] (u, v) pixels (pixel (i, j) centre at (j + 0.5, i + 0.5)).
      depth: [...] camera z (points behind the camera have depth ≤ 0).
    """
    x = world_to_camera(camera, points)
    z = x[..., 2]
    u = camera.fx * x[..., 0] / z + camera.cx
    v = camera.fy * x[..., 1] / z + camera.cy
    return jnp.stack([u, v], axis=-1), z


def pinhole_rays(camera: PinholeCamera) -> tuple[jax.Array, jax.Array]:
    """Rays through every pixel centre.

    Returns:
      origins: [H, W, 3] camera centre (world).
      dirs: [H, W, 3] unit directions (world).
    """
    j, i = jnp.meshgrid(jnp.arange(camera.width) + 0.5, jnp.arange(camera.height) + 0.5)
    d_cam = jnp.stack([(j - camera.cx) / camera.fx, (i - camera.cy) / camera.fy,
                       jnp.ones_like(j)], axis=-1)
    d = d_cam @ camera.rotation  # Rᵀ d_cam, row-vector form
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
    o = jnp.broadcast_to(camera_center(camera), d.shape)
    return o, d


def transform_camera(camera: PinholeCamera, rotation: ArrayLike, translation: ArrayLike,
                     scale: ArrayLike = 1.0) -> PinholeCamera:
    """The camera that sees the world mapped by p' = s·R·p + t exactly as ``camera`` saw p.

    Camera coordinates are scaled by s (depths scale, pixels do not move): R' = R_c Rᵀ,
    t' = s·t_c − R_c Rᵀ t.
    """
    rot = jnp.asarray(rotation, camera.rotation.dtype)
    t = jnp.asarray(translation, camera.rotation.dtype)
    s = jnp.asarray(scale, camera.rotation.dtype)
    r_new = camera.rotation @ rot.T
    return camera.replace(rotation=r_new, translation=s * camera.translation - r_new @ t)
