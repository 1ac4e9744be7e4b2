"""Photos as a phone takes them: the object on a table in front of a backdrop, a lens, noise, JPEG.

The clean renders of :mod:`insideout_jax.data.raycast` show the object alone on black, through a
pinhole. Real photos of an object show the room too, through a lens. This module renders, for each
camera (exactly, by ray casting; no Gaussian rasterizer involved):

- **the object**: :func:`~insideout_jax.data.raycast.outer_surface_hits`, textured and shaded as in
  the clean renders;
- **a table**: the plane z = ``table_z`` (the object's lowest point) inside a disc of radius
  ``backdrop_radius``, with a procedural wood-like texture (fractal noise stretched along x) and the
  object's **shadow** under the strongest light (a shadow ray from each table point);
- **a backdrop**: the inside of a cylinder of radius ``backdrop_radius`` about the vertical axis,
  with a procedural poster texture (noise and cellular spots), so it stays in view from every
  azimuth; above it a plain ceiling colour.

Then the photo is taken: radial **lens distortion** (OpenCV model, k1/k2 of a phone lens; the
pinhole image is resampled by :func:`insideout_jax.io.undistort.distort_image`), signal-dependent
**sensor noise** (σ² = a·I + b), and **JPEG** compression. The exact object silhouette (the same
lens applied) is returned as the mask the evaluation scores object selection against.
"""

from __future__ import annotations

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import PinholeCamera, look_at, make_pinhole, pinhole_rays
from insideout_jax.data import raycast

__all__ = ["PhotoSetup", "photo_cameras", "render_scene", "take_photos"]


@dataclasses.dataclass(frozen=True)
class PhotoSetup:
    """How the realistic photos are taken.

    Attributes:
      width, height: the frame, pixels (4:3).
      fov_deg: horizontal field of view.
      distance: camera distance from the object's centre, mm.
      elevations_deg: rings of camera elevation (above the table: ≥ 0).
      k1, k2: radial distortion (OpenCV / COLMAP OPENCV model) of the lens.
      backdrop_radius: radius of the backdrop cylinder and table disc, mm (> distance).
      noise_a, noise_b: sensor noise variance a·I + b (I in [0, 1]).
      jpeg_quality: JPEG quality (0–100).
      seed: the noise's seed.
    """

    width: int = 640
    height: int = 480
    fov_deg: float = 50.0
    distance: float = 520.0
    elevations_deg: tuple = (5.0, 25.0, 45.0)
    k1: float = -0.10
    k2: float = 0.02
    backdrop_radius: float = 900.0
    noise_a: float = 2e-4
    noise_b: float = 2e-5
    jpeg_quality: int = 90
    seed: int = 0

    @property
    def distortion(self) -> tuple:
        return (self.k1, self.k2, 0.0, 0.0)


def photo_cameras(n: int, setup: PhotoSetup, centre=(0.0, 0.0, 0.0)) -> list[PinholeCamera]:
    """n look-at cameras on ``setup``'s elevation rings (staggered azimuths), 4:3 frames."""
    els = np.deg2rad(np.asarray(setup.elevations_deg, np.float64))
    per = np.full(els.size, n // els.size)
    per[: n % els.size] += 1
    f = 0.5 * setup.width / np.tan(np.deg2rad(setup.fov_deg) / 2)
    c = np.asarray(centre, np.float64)
    cams = []
    for r, (el, m) in enumerate(zip(els, per, strict=True)):
        for j in range(m):
            az = 2 * np.pi * (j + 0.5 * (r % 2)) / max(m, 1) + 0.3 * r
            eye = c + setup.distance * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az),
                                                 np.sin(el)])
            rot, t = look_at(eye, c)
            cams.append(make_pinhole(rot, t, f, f, setup.width / 2, setup.height / 2,
                                     setup.width, setup.height))
    return cams


def _wood(p):
    q = p * jnp.asarray([1 / 400.0, 1 / 25.0, 1.0], jnp.float32)
    g = raycast._fbm(q, seed=41, octaves=4)
    rings = 0.5 + 0.5 * jnp.sin(40.0 * g + p[..., 0] / 60.0)
    base = jnp.asarray([0.55, 0.36, 0.20], jnp.float32)
    dark = jnp.asarray([0.32, 0.19, 0.10], jnp.float32)
    col = dark + rings[..., None] * (base - dark)
    f, _ = raycast._worley(p / 18.0, seed=43)  # knots and grain flecks: features for SfM
    return col * (0.75 + 0.25 * jnp.clip(f, 0.0, 1.0))[..., None]


def _poster(p):
    n = raycast._fbm(p / 120.0, seed=51, octaves=4)
    a = jnp.asarray([0.25, 0.45, 0.55], jnp.float32)
    b = jnp.asarray([0.85, 0.82, 0.70], jnp.float32)
    col = a + n[..., None] * (b - a)
    f, tag = raycast._worley(p / 45.0, seed=53)
    spot = (f < 0.35)[..., None]
    tint = jnp.stack([jnp.mod(tag * 7.0, 1.0), jnp.mod(tag * 13.0, 1.0), jnp.mod(tag * 29.0, 1.0)], -1)
    return jnp.where(spot, 0.2 + 0.7 * tint, col)


@jax.jit
def _scene_view(phantom, camera, table_z, radius):
    o, d = pinhole_rays(camera)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    hit, pts, nrm = raycast.outer_surface_hits(phantom, o, d)
    ld = jnp.asarray(raycast.DEFAULT_LIGHT_DIRS, jnp.float32)
    li = jnp.asarray(raycast.DEFAULT_LIGHT_INTENSITIES, jnp.float32)
    obj = raycast.lambert_shade(raycast.surface_albedo(pts), nrm, light_dirs=ld, light_intensities=li,
                                ambient=raycast.DEFAULT_AMBIENT)
    # the backdrop cylinder's far root, the table plane
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - radius ** 2
    t_cyl = (-b + jnp.sqrt(jnp.maximum(b * b - a * c, 0.0))) / jnp.maximum(a, 1e-12)
    t_tab = jnp.where(d[:, 2] < -1e-6, (table_z - o[:, 2]) / jnp.where(d[:, 2] < -1e-6, d[:, 2], -1.0), 1e30)
    on_table = t_tab < t_cyl
    t_bg = jnp.where(on_table, t_tab, t_cyl)
    p_bg = o + t_bg[:, None] * d
    n_bg = jnp.where(on_table[:, None], jnp.asarray([0.0, 0.0, 1.0]),
                     -p_bg * jnp.asarray([1.0, 1.0, 0.0]) / radius)
    # shadow of the object under the strongest light
    key = int(np.argmax(raycast.DEFAULT_LIGHT_INTENSITIES))
    shadow, _, _ = raycast.outer_surface_hits(phantom, p_bg + 0.5 * n_bg, jnp.broadcast_to(ld[key], p_bg.shape))
    cos = jnp.maximum(jnp.sum(n_bg * ld[key], -1), 0.0)
    irr = 0.55 + 0.6 * jnp.where(shadow, 0.0, cos)
    albedo = jnp.where(on_table[:, None], _wood(p_bg), _poster(p_bg))
    ceiling = p_bg[:, 2] > 3 * radius
    bg = jnp.where(ceiling[:, None], jnp.asarray([0.8, 0.8, 0.78]), jnp.clip(albedo * irr[:, None], 0, 1))
    img = jnp.where(hit[:, None], obj, bg)
    return img.reshape(camera.height, camera.width, 3), hit.reshape(camera.height, camera.width)


def render_scene(phantom, cameras, setup: PhotoSetup, table_z: float):
    """([V, H, W, 3] float32 pinhole renders of object, table and backdrop; [V, H, W] bool object
    masks), before the lens and the sensor."""
    imgs, masks = [], []
    for cam in cameras:
        img, m = _scene_view(phantom, cam, jnp.float32(table_z), jnp.float32(setup.backdrop_radius))
        imgs.append(np.asarray(img))
        masks.append(np.asarray(m))
    return np.stack(imgs), np.stack(masks)


def take_photos(phantom, cameras, setup: PhotoSetup, table_z: float):
    """(JPEG bytes per view, [V, H, W] bool object silhouettes through the lens).

    The pinhole renders of :func:`render_scene` go through the lens (``setup.distortion``), the
    sensor noise and JPEG compression, in that order."""
    from insideout_jax.io.undistort import distort_image

    renders, masks = render_scene(phantom, cameras, setup, table_z)
    rng = np.random.default_rng(setup.seed)
    photos, sils = [], []
    for img, m, cam in zip(renders, masks, cameras, strict=True):
        img = distort_image(img, cam, setup.distortion)
        img = img + rng.normal(size=img.shape) * np.sqrt(setup.noise_a * np.clip(img, 0, 1) + setup.noise_b)
        u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(setup.jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        photos.append(buf.tobytes())
        sils.append(distort_image(m.astype(np.float32), cam, setup.distortion) > 0.5)
    return photos, np.stack(sils)
