"""Cameras: a pinhole camera with COLMAP conventions, and cone-/parallel-beam X-ray geometry.

Pinhole (COLMAP): a world point p has camera coordinates x = R p + t (x right, y down, z forward);
it projects to pixel coordinates u = fx·x/z + cx, v = fy·y/z + cy, where the centre of the pixel in
row i, column j is at (u, v) = (j + 0.5, i + 0.5). Only undistorted models (PINHOLE,
SIMPLE_PINHOLE) are accepted: undistort photos first (e.g. ``colmap image_undistorter``).

X-ray (TIGRE / R²-Gaussian convention, all lengths mm, angles radians). Scanner frame: z is the
rotation axis. A CT-frame point p sits at p + offset_origin in the scanner frame. For view angle θ:

- source S = DSO·(cos θ, sin θ, 0);
- detector centre D = S + DSD·(−cos θ, −sin θ, 0) = (DSO − DSD)·(cos θ, sin θ, 0);
- detector axes u = (−sin θ, cos θ, 0) (columns), v = (0, 0, 1) (rows, index grows with +z);
- centre of detector pixel (row i, column j) = D + (j − (nu−1)/2 + ou/du)·du·u
  + (i − (nv−1)/2 + ov/dv)·dv·v.

Cone beam: the ray of a pixel runs from S through the pixel centre. Parallel beam: every ray has
direction (−cos θ, −sin θ, 0) and passes through the pixel centre of the same detector grid placed
at the rotation axis (D = 0); it is the DSO → ∞ limit of the cone beam with DSD − DSO fixed.
Ray origins are returned in the CT frame and directions are unit vectors; a line integral is
∫ f(o + τ·d) dτ over the whole line (the object lies between source and detector).

Detector pixel coordinates are returned as (column, row) = (j, i), in pixels, with pixel centres at
integer values (as array indices), i.e. ``uv[..., 0]`` indexes u / columns.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "PinholeCamera", "make_pinhole", "pinhole_from_colmap", "look_at", "scale_camera", "ring_cameras", "camera_center",
    "world_to_camera", "project_points", "pinhole_rays", "transform_camera", "intrinsic_matrix",
    "XrayGeometry", "make_xray_geometry", "xray_frame", "xray_source", "xray_rays", "xray_project",
    "xray_project_jacobian", "xray_pixel_centers", "UNDISTORTED_MODELS",
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


def _finite_array(x, shape, name) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a}")
    return a


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
    return -camera.rotation.T @ camera.translation


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


# ----------------------------------------------------------------------------------------------
# X-ray geometry
# ----------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class XrayGeometry:
    """Cone- or parallel-beam scanner geometry (see the module docstring for the convention).

    Attributes:
      dso: [] float32 source → rotation axis distance, mm (unused in parallel mode).
      dsd: [] float32 source → detector distance, mm (unused in parallel mode).
      d_detector: [2] float32 pixel size (dv, du), mm.
      offset_detector: [2] float32 detector offset (ov, ou), mm.
      offset_origin: [3] float32 object offset (x, y, z), mm.
      angles: [V] float32 view angles θ, radians.
      mode: "cone" or "parallel" (static).
      n_detector: (nv, nu) detector rows and columns (static).
    """

    dso: jax.Array
    dsd: jax.Array
    d_detector: jax.Array
    offset_detector: jax.Array
    offset_origin: jax.Array
    angles: jax.Array
    mode: str = dataclasses.field(metadata=dict(static=True))
    n_detector: tuple = dataclasses.field(metadata=dict(static=True))

    @property
    def n_views(self) -> int:
        return self.angles.shape[-1]

    def replace(self, **kw) -> XrayGeometry:
        return dataclasses.replace(self, **kw)


def make_xray_geometry(*, mode: str, n_detector, d_detector, angles, dso: float | None = None,
                       dsd: float | None = None, offset_detector=(0.0, 0.0),
                       offset_origin=(0.0, 0.0, 0.0)) -> XrayGeometry:
    """Validated :class:`XrayGeometry`.

    Raises:
      ValueError: naming the field, for an unknown mode, non-positive DSO/DSD or pixel sizes,
        DSD ≤ DSO, a detector size that is not two positive integers, or non-finite values.
    """
    if mode not in ("cone", "parallel"):
        raise ValueError(f"mode must be 'cone' or 'parallel', got {mode!r}")
    nd = tuple(int(v) for v in np.asarray(n_detector).ravel())
    if len(nd) != 2 or min(nd) <= 0 or not np.allclose(np.asarray(n_detector, float), nd):
        raise ValueError(f"n_detector must be two positive integers [nv, nu], got {n_detector}")
    dd = _finite_array(d_detector, (2,), "d_detector")
    if np.any(dd <= 0):
        raise ValueError(f"d_detector must be positive [dv, du] in mm, got {dd}")
    od = _finite_array(offset_detector, (2,), "offset_detector")
    oo = _finite_array(offset_origin, (3,), "offset_origin")
    ang = np.asarray(angles, np.float64)
    if ang.ndim != 1 or ang.size == 0 or not np.all(np.isfinite(ang)):
        raise ValueError(f"angles must be a non-empty 1-D list of finite radians, got shape {ang.shape}")
    if mode == "cone":
        if dso is None or dsd is None:
            raise ValueError("cone beam needs DSO and DSD (mm)")
        if not (np.isfinite(dso) and dso > 0):
            raise ValueError(f"DSO must be positive (mm), got {dso}")
        if not (np.isfinite(dsd) and dsd > dso):
            raise ValueError("DSD must be larger than DSO (the detector lies beyond the axis), got"
                             f" DSD={dsd}, DSO={dso}")
    dso_v = 0.0 if dso is None else float(dso)
    dsd_v = 0.0 if dsd is None else float(dsd)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return XrayGeometry(f32(dso_v), f32(dsd_v), f32(dd), f32(od), f32(oo), f32(ang), mode, nd)


def xray_frame(angle):
    """(e_r, e_u, e_v) of view angle θ: axis → source, detector columns, detector rows (+z)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    z = jnp.zeros_like(c)
    e_r = jnp.stack([c, s, z], -1)  # axis → source
    e_u = jnp.stack([-s, c, z], -1)
    e_v = jnp.stack([z, z, jnp.ones_like(c)], -1)
    return e_r, e_u, e_v


def xray_source(geom: XrayGeometry, angle: jax.Array) -> jax.Array:
    """[3] source position in the CT frame (cone beam) for view angle θ."""
    e_r, _, _ = xray_frame(angle)
    return geom.dso * e_r - geom.offset_origin


def xray_pixel_centers(geom: XrayGeometry, angle: jax.Array) -> jax.Array:
    """[nv, nu, 3] detector pixel centres in the CT frame for view angle θ."""
    nv, nu = geom.n_detector
    dv, du = geom.d_detector[0], geom.d_detector[1]
    ov, ou = geom.offset_detector[0], geom.offset_detector[1]
    e_r, e_u, e_v = xray_frame(angle)
    centre = (geom.dso - geom.dsd) * e_r if geom.mode == "cone" else jnp.zeros(3, e_r.dtype)
    cu = (jnp.arange(nu, dtype=e_r.dtype) - (nu - 1) / 2) * du + ou
    cv = (jnp.arange(nv, dtype=e_r.dtype) - (nv - 1) / 2) * dv + ov
    pts = centre + cu[None, :, None] * e_u + cv[:, None, None] * e_v
    return pts - geom.offset_origin


def xray_rays(geom: XrayGeometry, angle: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rays of every detector pixel for view angle θ.

    Returns:
      origins: [nv, nu, 3] ray origins in the CT frame (the source for cone beam; for parallel
        beam the pixel centre moved back by max(DSO, 1e4 mm) towards the source side).
      dirs: [nv, nu, 3] unit directions pointing from the source side to the detector.
    """
    pix = xray_pixel_centers(geom, angle)
    e_r, _, _ = xray_frame(angle)
    if geom.mode == "cone":
        src = xray_source(geom, angle)
        d = pix - src
        d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
        return jnp.broadcast_to(src, pix.shape), d
    back = jnp.maximum(geom.dso, 1e4)
    d = jnp.broadcast_to(-e_r, pix.shape)
    return pix + back * e_r, d


def xray_project(geom: XrayGeometry, angle: jax.Array, points: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    """World (CT frame) points → detector pixel coordinates for view angle θ.

    Args:
      points: [..., 3] mm.

    Returns:
      uv: [..., 2] (column j, row i) in pixels, pixel centres at integers.
      depth: [...] distance from the source along the central ray (cone), or along the beam
        from the rotation axis plane (parallel: −(p·e_r)), mm.
    """
    nv, nu = geom.n_detector
    e_r, e_u, e_v = xray_frame(angle)
    p = points + geom.offset_origin
    pr = p @ e_r
    pu = p @ e_u
    pv = p @ e_v
    if geom.mode == "cone":
        depth = geom.dso - pr
        mag = geom.dsd / depth
    else:
        depth = -pr
        mag = jnp.ones_like(pr)
    dv, du = geom.d_detector[0], geom.d_detector[1]
    ov, ou = geom.offset_detector[0], geom.offset_detector[1]
    j = (mag * pu - ou) / du + (nu - 1) / 2
    i = (mag * pv - ov) / dv + (nv - 1) / 2
    return jnp.stack([j, i], axis=-1), depth


def xray_project_jacobian(geom: XrayGeometry, angle: jax.Array, points: jax.Array) -> jax.Array:
    """Jacobian ∂(j, i)/∂p of :func:`xray_project`, closed form.

    Args:
      points: [..., 3] mm.

    Returns:
      [..., 2, 3] pixels per mm.
    """
    e_r, e_u, e_v = xray_frame(angle)
    p = points + geom.offset_origin
    dv, du = geom.d_detector[0], geom.d_detector[1]
    if geom.mode == "cone":
        depth = geom.dso - p @ e_r
        mag = geom.dsd / depth
        pu = p @ e_u
        pv = p @ e_v
        # ∂(M·pu)/∂p = M e_u + pu · ∂M/∂p, with ∂M/∂p = DSD/depth² · e_r
        dm = (geom.dsd / depth**2)[..., None] * e_r
        row_j = mag[..., None] * e_u + pu[..., None] * dm
        row_i = mag[..., None] * e_v + pv[..., None] * dm
    else:
        shape = points.shape[:-1] + (3,)
        row_j = jnp.broadcast_to(e_u, shape)
        row_i = jnp.broadcast_to(e_v, shape)
    return jnp.stack([row_j / du, row_i / dv], axis=-2)
