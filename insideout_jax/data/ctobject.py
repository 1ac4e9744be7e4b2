"""Objects from a CT volume: ray-marched cone-beam projections and isosurface photos.

Volumes are indexed ``[z, y, x]`` with ``spacing_zyx`` (mm) and ``origin_xyz`` (mm, centre of voxel
[0, 0, 0]); the field between voxel centres is the trilinear interpolant, and it falls linearly to 0
over one voxel outside the grid.

Projections (:func:`ct_volume_projections`): each ray is clipped to the grid's box (one voxel beyond
the outer voxel centres) and sampled at the midpoints of steps of ``step_mm`` (default: the smallest
voxel spacing); line integral = step · Σ f(samples). Marching error (measured on the
voxelized skull, 1.25 mm voxels, against steps of 1/16 voxel): relative L1 1.3e-5 at half-voxel
steps, 2.4e-5 at one-voxel steps. Against the closed-form projections of the phantom itself the
difference is ≈ 0.5 % (relative L1), all of it from the voxelization (``tests/test_ctobject.py``).

Photos (:func:`render_isosurface_rgb`): each ray finds the first crossing f = level of the
trilinear field. It advances by sphere tracing on a Euclidean distance map of the voxels ≥ level
(a safe step: distance − 2·voxel diagonal, at least the fine step), then bisects the bracketing
step; normals are −∇f of a lightly smoothed copy of the volume (σ = 1 voxel), shading and texture as
in :mod:`insideout_jax.data.raycast` (:func:`~insideout_jax.data.raycast.shade_points`).

Photos and the true surface of a stepped volume (:func:`without_steps`): where the values jump
from air to a flat tissue value (the TIGRE head) the trilinear field crosses the half level in
bumps between voxel centres, and a photo's silhouette is the envelope of those bumps, while the
true surface (:func:`outer_isosurface`, marching cubes) and the projections see their mean. So a
from-ct object's photos are rendered from the volume smoothed by one voxel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.ndimage import map_coordinates
from jax.typing import ArrayLike
from scipy import ndimage

from insideout_jax.cameras import (
    PinholeCamera,
    XrayGeometry,
    make_xray_geometry,
    pinhole_rays,
    ring_cameras,
    xray_rays,
)
from insideout_jax.data.raycast import (
    DEFAULT_AMBIENT,
    DEFAULT_LIGHT_DIRS,
    DEFAULT_LIGHT_INTENSITIES,
    shade_points,
)

__all__ = ["hu_to_attenuation", "ct_volume_projections", "default_ct_geometry", "default_iso_level",
           "without_steps",
           "default_ct_cameras", "render_isosurface_rgb", "largest_component_mask", "MU_WATER"]

MU_WATER = 0.02  # attenuation of water, 1/mm (the skull phantom's soft tissue)


def hu_to_attenuation(hu: ArrayLike, *, mu_water: float = MU_WATER) -> np.ndarray:
    """Linear attenuation from Hounsfield units: μ = μ_water·(1 + HU/1000), clipped at 0.

    Args:
      hu: [...] HU (air −1000, water 0, bone ≈ +1000…+2000).
      mu_water: attenuation of water, 1/mm.

    Returns:
      [...] float32 attenuation, 1/mm.
    """
    h = np.asarray(hu, np.float32)
    return np.maximum(np.float32(mu_water) * (1.0 + h / 1000.0), 0.0).astype(np.float32)


def _check_volume(volume, spacing_zyx, origin_xyz):
    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"volume must be a [z, y, x] array with ≥ 2 voxels per axis, got {vol.shape}")
    sp = np.asarray(spacing_zyx, np.float64).ravel()
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise ValueError(f"spacing_zyx must be 3 positive numbers (mm), got {spacing_zyx}")
    org = np.asarray(origin_xyz, np.float64).ravel()
    if org.shape != (3,) or not np.all(np.isfinite(org)):
        raise ValueError(f"origin_xyz must be 3 finite numbers (mm), got {origin_xyz}")
    return vol, sp, org


def _box(shape, sp, org):
    """(lo, hi) xyz corners of the grid box: one voxel beyond the outer voxel centres."""
    sp_xyz = sp[::-1]
    n_xyz = np.asarray(shape[::-1], np.float64)
    return org - sp_xyz, org + n_xyz * sp_xyz


def _slab(o, d, lo, hi):
    """Entry/exit τ of rays o + τd [R, 3] in the box [lo, hi] (empty when t_near ≥ t_far)."""
    inv = 1.0 / jnp.where(jnp.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (lo - o) * inv, (hi - o) * inv
    return jnp.max(jnp.minimum(t1, t2), -1), jnp.min(jnp.maximum(t1, t2), -1)


def _sample(vol, x, org, sp_xyz, mode="constant"):
    """Trilinear field at world points x [..., 3]; beyond the outer voxel centres it falls to 0
    over one voxel (``mode="constant"``) or keeps the edge value (``mode="nearest"``)."""
    idx = (x - org) / sp_xyz  # [..., 3] fractional (i, j, k) = (x, y, z) indices
    return map_coordinates(vol, [idx[..., 2], idx[..., 1], idx[..., 0]], order=1, mode=mode,
                           cval=0.0)


def _march_view(vol, org, sp_xyz, lo, hi, geom, angle, step, n_steps):
    o, d = xray_rays(geom, angle)
    nv, nu = geom.n_detector
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    t0, t1 = _slab(o, d, lo, hi)

    def body(k, acc):
        t = t0 + (k + 0.5) * step
        f = _sample(vol, o + t[:, None] * d, org, sp_xyz)
        return acc + jnp.where(t < t1, f, 0.0)

    acc = jax.lax.fori_loop(0, n_steps, body, jnp.zeros(o.shape[0], jnp.float32))
    return (acc * step).reshape(nv, nu)


_march_view_jit = jax.jit(_march_view, static_argnames=("n_steps",))


@jax.jit
def _view_chord(geom, angle, lo, hi):
    o, d = xray_rays(geom, angle)
    t0, t1 = _slab(o.reshape(-1, 3), d.reshape(-1, 3), lo, hi)
    return jnp.max(jnp.maximum(t1 - t0, 0.0))


def _max_chord(geom, lo, hi) -> float:
    """Longest path of any ray of the geometry through the box, mm (sets the static step count)."""
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    return max(float(_view_chord(geom, jnp.asarray(a, jnp.float32), lo, hi)) for a in np.asarray(geom.views))


def ct_volume_projections(volume: ArrayLike, spacing_zyx, origin_xyz, geometry: XrayGeometry, *,
                          step_mm: float | None = None) -> np.ndarray:
    """Line integrals through a voxel volume by ray marching with trilinear interpolation.

    Args:
      volume: [nz, ny, nx] attenuation, 1/mm.
      spacing_zyx: (dz, dy, dx) mm.
      origin_xyz: (x, y, z) mm, centre of voxel [0, 0, 0].
      geometry: cone- or parallel-beam geometry.
      step_mm: marching step along each ray (default: the smallest spacing; see the module
        docstring for the measured error).

    Returns:
      [V, nv, nu] float32 line integrals.
    """
    vol, sp, org = _check_volume(volume, spacing_zyx, origin_xyz)
    if not isinstance(geometry, XrayGeometry):
        raise ValueError(f"geometry must be an XrayGeometry, got {type(geometry).__name__}")
    step = float(sp.min()) if step_mm is None else float(step_mm)
    if not step > 0:
        raise ValueError(f"step_mm must be positive, got {step_mm}")
    lo, hi = _box(vol.shape, sp, org)
    n_steps = int(np.ceil(_max_chord(geometry, lo, hi) / step)) + 1
    args = [jnp.asarray(a, jnp.float32) for a in (vol, org, sp[::-1], lo, hi)]
    return np.stack([np.asarray(_march_view_jit(*args, geometry, jnp.asarray(a, jnp.float32),
                                                jnp.float32(step), n_steps))
                     for a in np.asarray(geometry.views)])


def default_ct_geometry(shape_zyx, spacing_zyx, origin_xyz, *, n_views: int = 180,
                        n_det: int = 256) -> XrayGeometry:
    """Cone beam over 360°, DSO 1000 mm, DSD 1500 mm, square detector covering the whole grid box.

    The detector half-size is the larger of the box's cylinder silhouette DSD·r/√(DSO² − r²) and its
    height z_max·DSD/(DSO − r), plus 5 %; r is the largest distance of a box corner from the z axis.
    """
    shape = tuple(int(v) for v in shape_zyx)
    sp = np.asarray(spacing_zyx, np.float64)
    lo, hi = _box(shape, sp, np.asarray(origin_xyz, np.float64))
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    r = float(np.max(np.hypot(corners[:, 0], corners[:, 1])))
    zmax = float(np.max(np.abs(corners[:, 2])))
    dso, dsd = 1000.0, 1500.0
    if r >= 0.9 * dso:
        raise ValueError(f"the volume (radius {r:.0f} mm about the z axis) is too large for DSO {dso} mm")
    half = 1.05 * max(dsd * r / np.sqrt(dso ** 2 - r ** 2), zmax * dsd / (dso - r))
    pix = 2 * half / int(n_det)
    angles = 2 * np.pi * np.arange(int(n_views)) / int(n_views)
    return make_xray_geometry(mode="cone", dso=dso, dsd=dsd, n_detector=(n_det, n_det),
                              d_detector=(pix, pix), angles=angles)


def default_iso_level(volume: ArrayLike) -> float:
    """Skin level: Otsu's threshold between air and tissue (in the volume's units), moved to the
    middle of the gap between the values on its two sides.

    Where no value lies between air and tissue (a phantom with air exactly 0 and tissue flattened
    to a constant, e.g. the TIGRE head) Otsu's criterion is flat over the whole gap and its first
    bin sits just above the air: an isosurface there is half a voxel outside the half-level one.
    On a scan with noise the gap is one histogram bin wide and the level does not move.
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(volume, np.float32)
    s = v[:: max(1, v.shape[0] // 64)]
    t = float(threshold_otsu(s))
    below, above = s[s <= t], s[s > t]
    if below.size == 0 or above.size == 0:
        return t
    return float(0.5 * (float(below.max()) + float(above.min())))


def without_steps(volume: ArrayLike) -> np.ndarray:
    """The volume smoothed by a one-voxel Gaussian (per axis): the field a from-ct object's photos
    are rendered from (decision), so that they show the surface its projections and its true
    surface see, not the envelope of its voxel steps (module doc).

    Measured on a binary sphere of radius 30 voxels seen at 4 px per voxel: the rendered disk's
    radius exceeds the marching-cubes surface's by 1.02 px rendered from the volume itself, 0.63 /
    0.26 / 0.04 px from the volume smoothed by σ = 0.5 / 0.75 / 1 voxel; the smoothed surface's own
    radius moves 0.03 voxel inward at σ = 1 (its curvature). On the TIGRE head (flat tissue) the
    photos' edges stood 0.8 px outside the true surface's rims in the true cameras before; on the
    Stanford head (a scan, with partial-volume ramps) 0.19 px.
    """
    return ndimage.gaussian_filter(np.asarray(volume, np.float32), 1.0, mode="nearest")  # float32


def outer_isosurface(volume: ArrayLike, spacing_zyx, origin_xyz, level: float, *, n: int = 20000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points [n, 3], unit outward normals [n, 3]) on the volume's *outer* isosurface at ``level``
    (mm, CT frame): the surface the photos show, the true surface of a from-ct object.

    Cavities that do not reach the outside (a brain inside a skull, the air between nested shells)
    are filled first, so their walls are not counted as outer surface; passages open to the outside
    stay. Marching cubes (scikit-image) on the filled volume, padded with air so the surface
    closes at the grid's border; points uniform over the area, normals of their triangles
    (pointing from high to low density: outwards).
    """
    from insideout_jax.metrics.mesh import marching_cubes_mesh, sample_surface

    v = np.asarray(volume, np.float32)
    top = float(v.max())
    if not top > level:
        raise ValueError(f"no voxel exceeds the isosurface level {level:.4g} (max {top:.4g})")
    enclosed = ndimage.binary_fill_holes(v >= level) & (v < level)
    v = np.pad(np.where(enclosed, top, v), 1, constant_values=min(float(v.min()), 0.0))
    origin = np.asarray(origin_xyz, np.float64) - np.asarray(spacing_zyx, np.float64)[::-1]
    verts, faces = marching_cubes_mesh(v, spacing_zyx, origin, float(level))
    pts, nrm = sample_surface(verts, faces, n, seed=seed, with_normals=True)
    return pts.astype(np.float32), nrm.astype(np.float32)


def largest_component_mask(volume: ArrayLike, level: float, *, dilate_voxels: int = 2) -> np.ndarray:
    """Mask of the largest connected region ≥ level, dilated (to drop e.g. a CT head rest).

    Returns:
      [nz, ny, nx] bool; ``volume * mask`` keeps the object and zeroes detached parts.
    """
    lab, n = ndimage.label(np.asarray(volume) >= level)
    if n == 0:
        raise ValueError(f"no voxel reaches level {level}")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    mask = lab == int(np.argmax(sizes))
    mask = ndimage.binary_fill_holes(mask)
    return ndimage.binary_dilation(mask, iterations=int(dilate_voxels)) if dilate_voxels else mask


def default_ct_cameras(shape_zyx, spacing_zyx, origin_xyz, *, n: int = 60, size: int = 512,
                       elevations_deg=(-25.0, 0.0, 25.0, 50.0), fov_deg: float = 40.0
                       ) -> list[PinholeCamera]:
    """Look-at cameras on elevation rings around the grid centre; the grid's largest side fills
    about 75 % of the frame (the object inside it somewhat less)."""
    shape = tuple(int(v) for v in shape_zyx)
    sp = np.asarray(spacing_zyx, np.float64)
    lo, hi = _box(shape, sp, np.asarray(origin_xyz, np.float64))
    lo, hi = lo + sp[::-1], hi - sp[::-1]  # outer voxel centres
    centre = 0.5 * (lo + hi)
    dist = 0.5 * float(np.max(hi - lo)) / np.tan(np.deg2rad(fov_deg) / 2) / 0.75 + 0.5 * float(
        np.max(hi - lo))
    return ring_cameras(n, size=size, centre=centre, distance=dist, elevations_deg=elevations_deg,
                        fov_deg=fov_deg)


# ---------------------------------------------------------------------------------------------
# isosurface photos
# ---------------------------------------------------------------------------------------------


def _trace_block(vol, dist, org, sp_xyz, level, safety, h, o, d, t, t_end, t_prev, state, n_iter):
    """n_iter sphere-tracing steps; state 0 = marching, 1 = hit, 2 = left the box."""

    def body(_, carry):
        t, t_prev, state = carry
        x = o + t[:, None] * d
        f = _sample(vol, x, org, sp_xyz, "nearest")
        dd = _sample(dist, x, org, sp_xyz, "nearest")
        run = state == 0
        hit = run & (f >= level)
        out = run & ~hit & (t > t_end)
        state = jnp.where(hit, 1, jnp.where(out, 2, state))
        adv = state == 0
        step = jnp.maximum(dd - safety, h)
        return jnp.where(adv, t + step, t), jnp.where(adv, t, t_prev), state

    return jax.lax.fori_loop(0, n_iter, body, (t, t_prev, state))


_trace_block_jit = jax.jit(_trace_block, static_argnames=("n_iter",))


@jax.jit
def _finish(vol, smooth, org, sp_xyz, level, o, d, t_lo, t_hi):
    """Bisection of the bracketing step, then the hit points and −∇f normals."""
    def bis(_, c):
        lo, hi = c
        mid = 0.5 * (lo + hi)
        inside = _sample(vol, o + mid[:, None] * d, org, sp_xyz, "nearest") >= level
        return jnp.where(inside, lo, mid), jnp.where(inside, mid, hi)

    t_lo, t_hi = jax.lax.fori_loop(0, 12, bis, (t_lo, t_hi))
    x = o + (0.5 * (t_lo + t_hi))[:, None] * d
    eps = 0.5 * jnp.min(sp_xyz)
    grad = jnp.stack([_sample(smooth, x + eps * e, org, sp_xyz, "nearest")
                      - _sample(smooth, x - eps * e, org, sp_xyz, "nearest")
                      for e in jnp.eye(3, dtype=x.dtype)], -1)
    return x, -grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)


def _bucket(n: int) -> int:
    """Padded batch size: a power of 4 (few distinct shapes, so few compilations)."""
    b = 4096
    while b < n:
        b *= 4
    return b


def render_isosurface_rgb(volume: ArrayLike, spacing_zyx, origin_xyz, level: float, cameras, *,
                          step_mm: float | None = None,
                          light_dirs: ArrayLike = DEFAULT_LIGHT_DIRS,
                          light_intensities: ArrayLike = DEFAULT_LIGHT_INTENSITIES,
                          ambient: float = DEFAULT_AMBIENT, max_steps: int = 4000) -> np.ndarray:
    """Textured, shaded renders of the isosurface f = level (first crossing along each ray).

    Args:
      volume: [nz, ny, nx] values (any units; ``level`` in the same units).
      spacing_zyx: (dz, dy, dx) mm; origin_xyz: (x, y, z) mm (centre of voxel [0, 0, 0]).
      level: isosurface value; the object is where the trilinear field ≥ level.
      cameras: list of V :class:`PinholeCamera` of one image size, outside the object.
      step_mm: smallest marching step (default: half the smallest spacing).
      light_dirs, light_intensities, ambient: shading (see :func:`raycast.lambert_shade`).
      max_steps: give up on a ray after this many steps (counted as a miss).

    Returns:
      [V, H, W, 3] float32 RGB in [0, 1], background 0.
    """
    vol, sp, org = _check_volume(volume, spacing_zyx, origin_xyz)
    cameras = list(cameras)
    if not cameras or not all(isinstance(c, PinholeCamera) for c in cameras):
        raise ValueError("cameras must be a non-empty list of PinholeCamera")
    if len({(c.height, c.width) for c in cameras}) != 1:
        raise ValueError("cameras must share one image size")
    if not np.any(vol >= level):
        raise ValueError(f"no voxel reaches level {level}")
    h = 0.5 * float(sp.min()) if step_mm is None else float(step_mm)
    if not h > 0:
        raise ValueError(f"step_mm must be positive, got {step_mm}")
    dist = ndimage.distance_transform_edt(vol < level, sampling=sp).astype(np.float32)
    smooth = ndimage.gaussian_filter(vol, 1.0, mode="nearest").astype(np.float32)
    safety = 2.0 * float(np.linalg.norm(sp))
    lo, hi = _box(vol.shape, sp, org)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    jv, jd, js, jo, jsp = f32(vol), f32(dist), f32(smooth), f32(org), f32(sp[::-1])
    lvl, jsafe, jh = f32(level), f32(safety), f32(h)
    out = []
    for cam in cameras:
        o, d = pinhole_rays(cam)
        o, d = o.reshape(-1, 3), d.reshape(-1, 3)
        t0, t1 = _slab(o, d, f32(lo), f32(hi))
        t = np.array(jnp.maximum(t0, 0.0))
        t_end = np.array(t1)
        t_prev = t.copy()
        state = np.where(t_end > t, 0, 2).astype(np.int32)
        o_np, d_np = np.asarray(o), np.asarray(d)
        steps = 0
        while steps < max_steps:
            act = np.nonzero(state == 0)[0]
            if act.size == 0:
                break
            nb = _bucket(act.size)
            pad = np.concatenate([act, np.full(nb - act.size, act[0])])
            tt, tp, st = _trace_block_jit(jv, jd, jo, jsp, lvl, jsafe, jh, f32(o_np[pad]),
                                          f32(d_np[pad]), f32(t[pad]), f32(t_end[pad]),
                                          f32(t_prev[pad]), jnp.asarray(state[pad]), n_iter=16)
            t[act], t_prev[act], state[act] = (np.asarray(tt)[: act.size], np.asarray(tp)[: act.size],
                                               np.asarray(st)[: act.size])
            steps += 16
        hit = state == 1
        x, nrm = (np.asarray(a) for a in _finish(jv, js, jo, jsp, lvl, o, d, f32(t_prev), f32(t)))
        rgb = np.zeros((hit.size, 3), np.float32)
        rgb[hit] = shade_points(x[hit], nrm[hit], light_dirs=light_dirs,
                                light_intensities=light_intensities, ambient=ambient)
        out.append(rgb.reshape(cam.height, cam.width, 3))
    return np.stack(out)
