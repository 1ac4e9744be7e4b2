"""Photo-like RGB renders of analytic and voxel objects, independent of the Gaussian rasterizers.

Rays through pixel centres (:func:`insideout_jax.cameras.pinhole_rays`) hit the object's outer
surface exactly: for a :class:`~insideout_jax.data.phantom.Phantom` the first entry into the union of
its outer group (closed-form ray–ellipsoid intersections). The hit point is coloured by a procedural
3D texture evaluated *at the surface point in the object frame*, so the same point has the same
colour in every view (what SfM needs), and shaded Lambertian + ambient with directional lights fixed
in the object frame (appearance does not change with the viewpoint).

Texture (:func:`surface_albedo`): fractal value noise (5 octaves, base wavelength 40 mm) mixes a
light and a dark skin tone and a second noise adds bluish patches; three layers of cellular
(Worley) spots (cells of 10, 6 and 3.6 mm, radius 0.18–0.38 cell, dark or light, chosen per cell by
hashing) add high-contrast blobs at the scales SIFT detects (3–10 px in the default photos: on
the default skull ≈ 900 keypoints per 512² view and ≈ 200 correct matches between neighbouring
views). Everything is a deterministic function of the 3D point (integer hashing, no random state).

Images are HWC float32 in [0, 1]; the background is black.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from insideout_jax.cameras import PinholeCamera, pinhole_rays
from insideout_jax.data.phantom import _intervals

__all__ = ["surface_albedo", "lambert_shade", "shade_points", "render_phantom_rgb", "outer_surface_hits",
           "DEFAULT_LIGHT_DIRS", "DEFAULT_LIGHT_INTENSITIES", "DEFAULT_AMBIENT"]

# directions towards the lights (object frame, normalised below) and their intensities
DEFAULT_LIGHT_DIRS = np.array([[0.5, -0.6, 0.8], [-0.7, 0.3, 0.3], [0.2, 0.8, -0.4]])
DEFAULT_LIGHT_DIRS = DEFAULT_LIGHT_DIRS / np.linalg.norm(DEFAULT_LIGHT_DIRS, axis=1, keepdims=True)
DEFAULT_LIGHT_INTENSITIES = np.array([0.55, 0.3, 0.2])
DEFAULT_AMBIENT = 0.45


# ---------------------------------------------------------------------------------------------
# procedural texture
# ---------------------------------------------------------------------------------------------


def _hash3(i: jax.Array, j: jax.Array, k: jax.Array, seed: int) -> jax.Array:
    """uint32 hash of integer lattice coordinates (int32 arrays of one shape)."""
    u = lambda v: jnp.asarray(v).astype(jnp.uint32)  # noqa: E731
    h = u(i) * jnp.uint32(0x8DA6B343) ^ u(j) * jnp.uint32(0xD8163841) ^ u(k) * jnp.uint32(0xCB1AB31F)
    h = h ^ jnp.uint32(seed * 0x9E3779B9 & 0xFFFFFFFF)
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _unit(h: jax.Array) -> jax.Array:
    return (h >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))


_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], np.int32)  # [8, 3]
_NEIGHBOURS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                       np.int32)  # [27, 3]


def _value_noise(p: jax.Array, seed: int) -> jax.Array:
    """Smooth lattice value noise in [0, 1] at points [..., 3] (lattice spacing 1)."""
    c = jnp.floor(p)
    f = p - c
    w = f * f * (3.0 - 2.0 * f)
    cc = c.astype(jnp.int32)[..., None, :] + _CORNERS  # [..., 8, 3]
    v = _unit(_hash3(cc[..., 0], cc[..., 1], cc[..., 2], seed))  # [..., 8]
    wc = jnp.where(_CORNERS == 1, w[..., None, :], 1.0 - w[..., None, :])  # [..., 8, 3]
    return jnp.sum(jnp.prod(wc, -1) * v, -1)


def _fbm(p: jax.Array, seed: int, octaves: int = 5, gain: float = 0.55) -> jax.Array:
    """Fractal sum of value noise, normalised to about [0, 1]."""
    total, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        total = total + amp * _value_noise(p * (2.0 ** o) + 17.3 * o, seed + o)
        norm += amp
        amp *= gain
    return total / norm


def _worley(p: jax.Array, seed: int) -> tuple[jax.Array, jax.Array]:
    """Cellular noise: distance to the nearest feature point (one jittered point per unit cell)
    and a uniform [0, 1) value attached to that point; both [...]."""
    cc = jnp.floor(p).astype(jnp.int32)[..., None, :] + _NEIGHBOURS  # [..., 27, 3]
    i, j, k = cc[..., 0], cc[..., 1], cc[..., 2]
    fp = cc + jnp.stack([_unit(_hash3(i, j, k, seed + o)) for o in (0, 101, 202)], -1)
    dist = jnp.linalg.norm(p[..., None, :] - fp, axis=-1)  # [..., 27]
    near = jnp.argmin(dist, -1)
    tag = _unit(_hash3(*(jnp.take_along_axis(a, near[..., None], -1)[..., 0] for a in (i, j, k)),
                       seed + 303))
    return jnp.min(dist, -1), tag


def _smoothstep(a, b, x):
    t = jnp.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def surface_albedo(points: ArrayLike) -> jax.Array:
    """Procedural albedo of surface points (object frame), deterministic.

    Args:
      points: [..., 3] float32 mm.

    Returns:
      [..., 3] float32 RGB albedo in [0, 1].
    """
    p = jnp.asarray(points, jnp.float32)
    n1 = _fbm(p / 40.0, seed=1)
    n2 = _fbm(p / 25.0 + 31.7, seed=7, octaves=3)
    light = jnp.asarray([0.92, 0.72, 0.56], jnp.float32)
    dark = jnp.asarray([0.42, 0.24, 0.16], jnp.float32)
    blue = jnp.asarray([0.30, 0.42, 0.62], jnp.float32)
    t = _smoothstep(0.3, 0.7, n1)[..., None]
    col = dark + t * (light - dark)
    col = col + 0.6 * _smoothstep(0.55, 0.75, n2)[..., None] * (blue - col)
    # three layers of spots; per cell: radius, shade (dark or light) and presence from hashes
    for k, (cell, off) in enumerate(((10.0, 0.0), (6.0, 3.1), (3.6, 7.7))):
        f, tag = _worley(p / cell + off, seed=3 + 10 * k)
        radius = 0.18 + 0.2 * jnp.mod(tag * 7.0, 1.0)
        spot = _smoothstep(radius, radius - 0.08, f)
        shade = jnp.where(jnp.mod(tag * 13.0, 1.0) < 0.6, 0.08, 0.98)  # dark or light spot
        tint = jnp.stack([shade, shade * (0.8 + 0.2 * jnp.mod(tag * 29.0, 1.0)), shade * 0.85], -1)
        col = col + 0.85 * spot[..., None] * (tint - col)
    return jnp.clip(col, 0.0, 1.0)


def lambert_shade(albedo: jax.Array, normals: jax.Array, *, light_dirs: ArrayLike = DEFAULT_LIGHT_DIRS,
                  light_intensities: ArrayLike = DEFAULT_LIGHT_INTENSITIES,
                  ambient: float = DEFAULT_AMBIENT) -> jax.Array:
    """Lambertian + ambient: albedo · (ambient + Σ_l I_l · max(0, n·l_l)), clipped to [0, 1].

    Args:
      albedo: [..., 3] float32 in [0, 1].
      normals: [..., 3] float32 unit outward normals (object frame).
      light_dirs: [L, 3] unit directions towards the lights (object frame).
      light_intensities: [L] float32.
      ambient: ambient term.

    Returns:
      [..., 3] float32 RGB in [0, 1].
    """
    ldir = jnp.asarray(light_dirs, jnp.float32)
    lint = jnp.asarray(light_intensities, jnp.float32)
    # written with column slices, not `sum(lint * max(n @ lᵀ, 0), -1)`: XLA CPU (jaxlib 0.10.2)
    # miscompiles that reduce-then-broadcast pattern for 10923 ≤ N ≤ ~40000 rows
    irr = ambient
    for k in range(ldir.shape[0]):
        cos = normals[..., 0] * ldir[k, 0] + normals[..., 1] * ldir[k, 1] + normals[..., 2] * ldir[k, 2]
        irr = irr + lint[k] * jnp.maximum(cos, 0.0)
    return jnp.clip(albedo * irr[..., None], 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# phantom renders
# ---------------------------------------------------------------------------------------------


def outer_surface_hits(phantom, origins: jax.Array, dirs: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """First intersection of rays with the phantom's outer surface (union of the outer group).

    Args:
      phantom: :class:`~insideout_jax.data.phantom.Phantom`.
      origins: [R, 3] float32 ray origins outside the object, mm.
      dirs: [R, 3] float32 unit directions.

    Returns:
      hit: [R] bool; points: [R, 3] float32 mm; normals: [R, 3] float32 unit outward normals
      (undefined where not hit).
    """
    idx = np.asarray(phantom.groups[phantom.outer_group])
    c, s, r = phantom.centres[idx], phantom.semi_axes[idx], phantom.rotations[idx]
    t_in, _, hit = _intervals(jnp, origins, dirs, c, s, r)  # [K, R]
    valid = hit & (t_in > 0)
    big = jnp.float32(1e30)
    t_k = jnp.where(valid, t_in, big)
    k = jnp.argmin(t_k, axis=0)
    t = jnp.min(t_k, axis=0)
    any_hit = t < big
    pts = origins + jnp.where(any_hit, t, 0.0)[:, None] * dirs
    loc = jnp.einsum("rk,rkj->rj", pts - c[k], r[k]) / s[k] ** 2  # gradient in the local frame
    nrm = jnp.einsum("rj,rkj->rk", loc, r[k])
    nrm = nrm / jnp.maximum(jnp.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
    return any_hit, pts, nrm


@jax.jit
def _view_hits(phantom, camera: PinholeCamera):
    o, d = pinhole_rays(camera)
    return outer_surface_hits(phantom, o.reshape(-1, 3), d.reshape(-1, 3))


@jax.jit
def _shade(points, normals, light_dirs, light_intensities, ambient):
    return lambert_shade(surface_albedo(points), normals, light_dirs=light_dirs,
                         light_intensities=light_intensities, ambient=ambient)


def shade_points(points, normals, *, light_dirs: ArrayLike = DEFAULT_LIGHT_DIRS,
                 light_intensities: ArrayLike = DEFAULT_LIGHT_INTENSITIES,
                 ambient: float = DEFAULT_AMBIENT) -> np.ndarray:
    """Textured, shaded colour of surface points (in padded chunks of 32768: one compilation).

    Args:
      points: [N, 3] float32 mm (object frame); normals: [N, 3] unit outward normals.

    Returns:
      [N, 3] float32 RGB in [0, 1].
    """
    points = np.asarray(points, np.float32)
    normals = np.asarray(normals, np.float32)
    n = points.shape[0]
    out = np.zeros((n, 3), np.float32)
    if n == 0:
        return out
    chunk = 32768
    ld = jnp.asarray(light_dirs, jnp.float32)
    li = jnp.asarray(light_intensities, jnp.float32)
    for a in range(0, n, chunk):
        p = np.zeros((chunk, 3), np.float32)
        q = np.tile(np.float32([0, 0, 1]), (chunk, 1))
        m = min(chunk, n - a)
        p[:m], q[:m] = points[a:a + m], normals[a:a + m]
        out[a:a + m] = np.asarray(_shade(jnp.asarray(p), jnp.asarray(q), ld, li, jnp.float32(ambient)))[:m]
    return out


def render_phantom_rgb(phantom, cameras, *, light_dirs: ArrayLike = DEFAULT_LIGHT_DIRS,
                       light_intensities: ArrayLike = DEFAULT_LIGHT_INTENSITIES,
                       ambient: float = DEFAULT_AMBIENT) -> np.ndarray:
    """Textured, shaded renders of the phantom's outer surface.

    Args:
      phantom: :class:`~insideout_jax.data.phantom.Phantom`.
      cameras: list of V :class:`~insideout_jax.cameras.PinholeCamera` of one image size.
      light_dirs: [L, 3] unit directions towards the lights, object frame.
      light_intensities: [L] intensities.
      ambient: ambient term.

    Returns:
      [V, H, W, 3] float32 RGB in [0, 1], background 0.
    """
    cameras = list(cameras)
    if not cameras or not all(isinstance(c, PinholeCamera) for c in cameras):
        raise ValueError("cameras must be a non-empty list of PinholeCamera")
    if len({(c.height, c.width) for c in cameras}) != 1:
        raise ValueError("cameras must share one image size")
    ld = jnp.asarray(light_dirs, jnp.float32)
    li = jnp.asarray(light_intensities, jnp.float32)
    if ld.ndim != 2 or ld.shape[1] != 3 or li.shape != (ld.shape[0],):
        raise ValueError(f"light_dirs must be [L, 3] and light_intensities [L], got {ld.shape}, {li.shape}")
    out = []
    for cam in cameras:
        hit, pts, nrm = (np.asarray(a) for a in _view_hits(phantom, cam))
        img = np.zeros((hit.size, 3), np.float32)
        img[hit] = shade_points(pts[hit], nrm[hit], light_dirs=ld, light_intensities=li,
                                ambient=ambient)
        out.append(img.reshape(cam.height, cam.width, 3))
    return np.stack(out)
