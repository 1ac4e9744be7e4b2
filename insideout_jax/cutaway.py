"""Cut-away renders of the unified model: everything on one side of a plane removed, the cut face
showing the density field on that plane through a transfer function, composited with the RGB
splats that remain.

Definitions (decisions the paper leaves open):

* **What is removed.** Splats whose *centres* lie on the side the plane's normal points to are
  removed whole; the others are kept whole (a kept splat is never clipped).
* **The cut face** is the density field of the *whole* model (every splat, kept or removed: the
  material at the plane) sampled on the plane. It is rendered exactly on a plane grid by the
  additive slice renderer (:func:`~insideout_jax.render.slices.render_slice`) and mapped into the
  image like a texture: every pixel whose ray meets the plane in front of the camera takes the
  bilinear interpolation of the grid at the meeting point. The grid covers the part of the plane
  the camera sees within the model's reach, at a fixed number of cells (the image's larger side by
  default).
* **Transfer function.** With the window ``(lo, hi)`` (1/mm), r = clip((ρ − lo) / (hi − lo), 0, 1);
  the face's colour is ``colormap(r)`` and its opacity ``face_opacity · r`` (air is clear).
* **Compositing.** All kept splats are on one side of the plane. When the camera is on the removed
  side the face is in front of them: ``out = α·face + (1 − α)·rgb``; otherwise it is behind
  them: ``out = (rgb − T·bg) + T·(α·face + (1 − α)·bg)`` with T the splats' transmittance.

Differentiable with respect to the model's densities, colours and opacities (through the
rasterizer, the slice renderer and the bilinear map) when ``window`` is given. The face grid's
placement is decided on the host from the splats' positions and scales, so those must be
concrete (not traced).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import PinholeCamera
from insideout_jax.render.rgb import RasterConfig, render_rgb
from insideout_jax.render.slices import SlicePlane, make_slice_plane, render_slice
from insideout_jax.visual import UnifiedModel, as_radiative

__all__ = ["CutPlane", "CutawayRender", "make_cut_plane", "colormap_table", "colormap_rgb",
           "camera_centre", "render_cutaway",
           "face_grid", "ray_plane_points", "composite_cutaway", "kept_model"]


@dataclasses.dataclass(frozen=True)
class CutPlane:
    """The plane {x : (x − point)·normal = 0}; the side ``normal`` points to is cut away."""

    point: np.ndarray  # [3] mm
    normal: np.ndarray  # [3] unit


def make_cut_plane(point, normal) -> CutPlane:
    """Validated :class:`CutPlane` (ValueError naming the argument)."""
    p = np.asarray(point, np.float64).reshape(-1)
    n = np.asarray(normal, np.float64).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise ValueError(f"point must be 3 finite numbers (mm), got {point}")
    if n.shape != (3,) or not np.all(np.isfinite(n)) or np.linalg.norm(n) < 1e-9:
        raise ValueError(f"normal must be a non-zero 3-vector, got {normal}")
    return CutPlane(p, n / np.linalg.norm(n))


@dataclasses.dataclass(frozen=True)
class CutawayRender:
    """Output of :func:`render_cutaway`: ``color`` [H, W, 3] in [0, 1]; ``face_alpha`` [H, W]
    (opacity of the cut face at each pixel; 0 where the ray misses it); ``face_density`` [H, W]
    (ρ at the face, 1/mm; 0 where the ray misses); ``window`` (lo, hi) used."""

    color: jax.Array
    face_alpha: jax.Array
    face_density: jax.Array
    window: tuple


def colormap_table(name: str = "inferno", n: int = 256) -> np.ndarray:
    """[n, 3] float32 RGB of a matplotlib colour map."""
    from matplotlib import colormaps

    return np.asarray(colormaps[name](np.linspace(0.0, 1.0, n))[:, :3], np.float32)


def colormap_rgb(r: np.ndarray, name: str = "inferno") -> np.ndarray:
    """[..., 3] float64 colours of r ∈ [0, 1] on a matplotlib colour map (linear between entries)."""
    table = colormap_table(name)
    x = np.linspace(0.0, 1.0, len(table))
    return np.stack([np.interp(r, x, table[:, c]) for c in range(3)], -1)


def camera_centre(camera: PinholeCamera) -> np.ndarray:
    """[3] float64 camera centre −Rᵀt on the host (``cameras.camera_center`` is its float32,
    traceable twin)."""
    return -np.asarray(camera.rotation, np.float64).T @ np.asarray(camera.translation, np.float64)


def kept_model(model: UnifiedModel, cut: CutPlane) -> UnifiedModel:
    """The model with every splat whose centre is on the cut side made inactive."""
    side = (jnp.asarray(model.splats.means) - jnp.asarray(cut.point, jnp.float32)) @ jnp.asarray(
        cut.normal, jnp.float32)
    return dataclasses.replace(model, splats=model.splats.replace(active=model.splats.active & (side <= 0)))


def ray_plane_points(camera: PinholeCamera, cut: CutPlane) -> tuple[np.ndarray, np.ndarray]:
    """([H, W, 3] float64 points where the pixel-centre rays meet the plane, [H, W] bool: met in
    front of the camera). Host side."""
    r = np.asarray(camera.rotation, np.float64)
    c = camera_centre(camera)
    u = np.arange(camera.width) + 0.5
    v = np.arange(camera.height) + 0.5
    uu, vv = np.meshgrid(u, v)
    d_cam = np.stack([(uu - float(camera.cx)) / float(camera.fx), (vv - float(camera.cy)) / float(camera.fy),
                      np.ones_like(uu)], -1)
    d = d_cam @ r  # rows: Rᵀ d_cam
    den = d @ cut.normal
    t = np.where(np.abs(den) > 1e-12, ((cut.point - c) @ cut.normal) / np.where(den == 0, 1, den), -1.0)
    hit = t > 0
    return c + np.where(hit, t, 0.0)[..., None] * d, hit


def _basis(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = np.cross(normal, a)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


_REACH = 6.0  # = render_slice's default cutoff_sigma


def face_grid(model: UnifiedModel, camera: PinholeCamera, cut: CutPlane, *,
              resolution: int | None = None) -> SlicePlane | None:
    """The plane grid of the cut face: the part of the plane the camera sees, within the model's
    extent (centres ± 6σ: the slice renderer's cutoff, so the field is 0 beyond the grid), at
    ``resolution``² cells (default: the image's larger side; one grid size for every camera of
    that image size, so a turntable compiles once). None when the camera does not see the plane
    there."""
    pts, hit = ray_plane_points(camera, cut)
    act = np.asarray(model.splats.active)
    means = np.asarray(model.splats.means, np.float64)[act]
    sig = np.exp(np.asarray(model.splats.log_scales, np.float64)[act]).max(1, keepdims=True)
    lo, hi = (means - _REACH * sig).min(0), (means + _REACH * sig).max(0)
    inside = hit & np.all((pts >= lo) & (pts <= hi), axis=-1)
    if not inside.any():
        return None
    res = int(resolution or max(camera.width, camera.height))
    e1, e2 = _basis(cut.normal)
    q = pts[inside] - cut.point
    a, b = q @ e1, q @ e2
    ext = np.array([a.max() - a.min(), b.max() - b.min()])
    ext = np.maximum(ext * (1 + 2.0 / res), 1e-6)  # one cell of margin each side
    centre = cut.point + (a.max() + a.min()) / 2 * e1 + (b.max() + b.min()) / 2 * e2
    return make_slice_plane(centre, e1, e2, ext, (res, res))


def _plane_coords(plane: SlicePlane, pts: np.ndarray) -> np.ndarray:
    """[H, W, 2] continuous (row, col) grid coordinates of points on the plane (pixel centres at
    integer + 0.5 → index coordinates − 0.5)."""
    h, w = plane.resolution
    o = np.asarray(plane.origin, np.float64)
    e1, e2 = np.asarray(plane.e1, np.float64), np.asarray(plane.e2, np.float64)
    ext = np.asarray(plane.extent, np.float64)
    q = pts - o
    col = (q @ e1 + ext[0] / 2) / ext[0] * w - 0.5
    row = (q @ e2 + ext[1] / 2) / ext[1] * h - 0.5
    return np.stack([row, col], -1)


def _bilinear(img: jax.Array, rc: jax.Array) -> jax.Array:
    """Bilinear samples of img [h, w] at (row, col) [..., 2]; 0 outside the grid's samples."""
    return jax.scipy.ndimage.map_coordinates(img, [rc[..., 0], rc[..., 1]], order=1, mode="constant",
                                             cval=0.0)


def composite_cutaway(rgb_color, rgb_alpha, face_rgb, face_alpha, background, camera_on_cut_side: bool):
    """The compositing rule of the module docstring ([H, W, 3] arrays, alpha [H, W])."""
    a = face_alpha[..., None]
    if camera_on_cut_side:
        return a * face_rgb + (1 - a) * rgb_color
    t = (1 - rgb_alpha)[..., None]
    return rgb_color - t * background + t * (a * face_rgb + (1 - a) * background)


def render_cutaway(model: UnifiedModel, camera: PinholeCamera, cut: CutPlane, *, window=None,
                   face_opacity: float = 1.0, colormap: str = "inferno", background=(1.0, 1.0, 1.0),
                   config: RasterConfig = RasterConfig(), face_resolution: int | None = None
                   ) -> CutawayRender:
    """Render ``model`` from ``camera`` with the side of ``cut`` its normal points to removed.

    Args:
      model: the unified model (:class:`~insideout_jax.visual.UnifiedModel`).
      camera: pinhole camera.
      cut: :func:`make_cut_plane`.
      window: (lo, hi) density window of the face, 1/mm; default (5 %, 100 %) of the largest peak
        density of the model.
      face_opacity: opacity of the face where r = 1.
      colormap: matplotlib colour map of the face.
      background: RGB behind everything, in [0, 1].
      config: rasterizer options.
      face_resolution: cells per side of the face grid (default: the image's larger side).

    Returns:
      :class:`CutawayRender`.
    """
    if not 0.0 <= face_opacity <= 1.0:
        raise ValueError(f"face_opacity must be in [0, 1], got {face_opacity}")
    if window is None:
        dens = np.exp(np.asarray(model.log_densities, np.float64))[np.asarray(model.splats.active)]
        top = float(dens.max()) if dens.size else 1.0
        window = (0.05 * top, top)
    lo, hi = (float(x) for x in window)
    if not hi > lo:
        raise ValueError(f"window must have hi > lo, got {window}")
    bg = jnp.asarray(background, jnp.float32)
    kept = kept_model(model, cut)
    rgb = render_rgb(kept.splats, camera, background=bg, config=config)
    plane = face_grid(model, camera, cut, resolution=face_resolution)
    h, w = camera.height, camera.width
    if plane is None:
        rho = jnp.zeros((h, w), jnp.float32)
    else:
        grid_img = render_slice(as_radiative(model), plane)
        pts, hit = ray_plane_points(camera, cut)
        rc = jnp.asarray(_plane_coords(plane, pts), jnp.float32)
        rho = jnp.where(jnp.asarray(hit), _bilinear(grid_img, rc), 0.0)
    r = jnp.clip((rho - lo) / (hi - lo), 0.0, 1.0)
    table = jnp.asarray(colormap_table(colormap))
    face_rgb = _bilinear_table(table, r)
    alpha = face_opacity * r
    cam_side = float((camera_centre(camera) - cut.point) @ cut.normal) > 0
    color = composite_cutaway(rgb.color, rgb.alpha, face_rgb, alpha, bg, cam_side)
    return CutawayRender(color, alpha, rho, (lo, hi))


def _bilinear_table(table: jax.Array, r: jax.Array) -> jax.Array:
    """Linear interpolation of a [n, 3] colour table at r ∈ [0, 1] → [..., 3]."""
    x = r * (table.shape[0] - 1)
    i0 = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, table.shape[0] - 2)
    f = (x - i0)[..., None]
    return table[i0] * (1 - f) + table[i0 + 1] * f
