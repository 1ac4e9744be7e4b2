"""Cone-beam FDK reconstruction (Feldkamp, Davis, Kress 1984) in JAX, and its parallel-beam limit.

The classical baseline for the radiative splats, and the way to obtain ``ct/volume`` for objects
that have projections only. Steps, with the detector rescaled to the rotation axis (virtual
detector, pixel sizes du·DSO/DSD, dv·DSO/DSD):

1. cosine weighting p_w(u, v) = p(u, v) · DSO / sqrt(DSO² + u² + v²);
2. ramp filtering of each detector row with the band-limited Ram-Lak kernel (spatial form
   h[0] = 1/(4τ²), h[odd n] = −1/(n π τ)², h[even n] = 0), zero-padded FFT convolution, times τ;
3. weighted backprojection f(x) = (Δθ-weighted sum over views) of (DSO/U)² · p̃(u(x), v(x)) with
   U = DSO − x·e_r, u(x) = DSO·(x·e_u)/U, v(x) = DSO·z/U, bilinear interpolation, and a factor ½
   for a full 360° scan (every ray is seen twice). Angular weights are the trapezoid widths of the
   (possibly non-uniform) angles; short scans get no Parker weighting (a documented limitation).

General per-view poses (e.g. C-arm views, ``geometry.poses``) use the same steps in each view's
own frame (x·e_r, x·e_u, x·e_v about its isocentre), weighted by the azimuths' Δθ: exact for the
circular scan, the usual approximation for other orbits.

Parallel beam uses the same filter with τ = du and f(x) = ½ Σ Δθ · p̃(x·e_u, z) over 360°
(or Σ over 180°).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import XrayGeometry, circular_poses

__all__ = ["fdk", "ramp_kernel", "filter_projections", "angular_weights"]


def ramp_kernel(n: int, tau: float) -> np.ndarray:
    """Spatial Ram-Lak kernel h[k] for k = −(n−1)..(n−1), sample spacing ``tau`` (mm)."""
    k = np.arange(-(n - 1), n)
    h = np.zeros(k.shape, np.float64)
    h[k == 0] = 1.0 / (4.0 * tau**2)
    odd = (k % 2) != 0
    h[odd] = -1.0 / (np.pi * k[odd] * tau) ** 2
    return h


def filter_projections(proj: jax.Array, tau: float) -> jax.Array:
    """Ramp-filter every detector row (axis −1) by zero-padded FFT convolution.

    Args:
      proj: [..., nu] weighted projections.
      tau: detector sample spacing along u, mm (at the rotation axis for cone beam).

    Returns:
      [..., nu] filtered projections (units of proj / mm).
    """
    nu = proj.shape[-1]
    h = ramp_kernel(nu, tau)
    size = int(2 ** np.ceil(np.log2(3 * nu - 2)))
    hf = jnp.fft.rfft(jnp.asarray(h, jnp.float32), n=size)
    pf = jnp.fft.rfft(proj, n=size, axis=-1)
    full = jnp.fft.irfft(pf * hf, n=size, axis=-1)
    return full[..., nu - 1: 2 * nu - 1] * tau


def angular_weights(angles: np.ndarray) -> np.ndarray:
    """Δθ per view: half the gap to each neighbour on the circle (trapezoid rule)."""
    a = np.asarray(angles, np.float64)
    order = np.argsort(a)
    s = a[order]
    span = s[-1] - s[0]
    full_circle = span + (span / max(len(s) - 1, 1)) >= 2 * np.pi - 1e-6
    gaps = np.diff(s)
    if full_circle:
        wrap = 2 * np.pi - span
        prev = np.concatenate([[wrap], gaps])
        nxt = np.concatenate([gaps, [wrap]])
    else:
        prev = np.concatenate([[gaps[0] if len(gaps) else 0.0], gaps])
        nxt = np.concatenate([gaps, [gaps[-1] if len(gaps) else 0.0]])
    w = 0.5 * (prev + nxt)
    out = np.empty_like(w)
    out[order] = w
    return out


def _bilinear(img: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Sample img [H, W] at float (column x, row y) with zero outside."""
    h, w = img.shape
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0i, y0i = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def tap(yi, xi):
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        return jnp.where(ok, img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)], 0.0)

    return ((1 - fx) * (1 - fy) * tap(y0i, x0i) + fx * (1 - fy) * tap(y0i, x0i + 1)
            + (1 - fx) * fy * tap(y0i + 1, x0i) + fx * fy * tap(y0i + 1, x0i + 1))


def fdk(projections: jax.Array, geometry: XrayGeometry, shape_zyx: tuple, spacing_zyx,
        origin_xyz) -> jax.Array:
    """FDK (cone) or filtered backprojection (parallel) reconstruction.

    Args:
      projections: [V, nv, nu] line integrals, in the order of the geometry's views.
      geometry: the scanner geometry.
      shape_zyx: output volume shape (static).
      spacing_zyx: [3] voxel spacing, mm.
      origin_xyz: [3] centre of voxel [0, 0, 0], mm (CT frame).

    Returns:
      [nz, ny, nx] float32 attenuation per mm.
    """
    proj = jnp.asarray(projections, jnp.float32)
    nv, nu = geometry.n_detector
    if proj.ndim != 3 or proj.shape[1:] != (nv, nu) or proj.shape[0] != geometry.n_views:
        raise ValueError(f"projections must have shape [V={geometry.n_views}, {nv}, {nu}], got"
                         f" {proj.shape}")
    angles = np.asarray(geometry.angles, np.float64)
    wts = angular_weights(angles)
    span = float(np.sum(wts))
    redundancy = 0.5 if span > 1.5 * np.pi else 1.0  # 360° scans see every line twice
    dv, du = (float(v) for v in np.asarray(geometry.d_detector))
    cone = geometry.mode == "cone"
    dso = float(geometry.dso)
    mag = float(geometry.dsd) / dso if cone else 1.0
    du_i, dv_i = du / mag, dv / mag  # at the isocentre
    poses = jnp.asarray(circular_poses(geometry), jnp.float32)  # per-view frame, iso, offsets
    if cone:
        def cosine(pose):
            u = (jnp.arange(nu) - (nu - 1) / 2) * du_i + pose[4, 1] / mag
            v = (jnp.arange(nv) - (nv - 1) / 2) * dv_i + pose[4, 0] / mag
            return dso / jnp.sqrt(dso**2 + u[None, :] ** 2 + v[:, None] ** 2)
        proj = proj * jax.vmap(cosine)(poses)
    filt = filter_projections(proj, du_i)

    nz, ny, nx = (int(s) for s in shape_zyx)
    sz, sy, sx = (float(s) for s in np.asarray(spacing_zyx))
    ox, oy, oz = (float(s) for s in np.asarray(origin_xyz))
    xs = jnp.asarray(ox + np.arange(nx) * sx, jnp.float32)[None, None, :]
    ys = jnp.asarray(oy + np.arange(ny) * sy, jnp.float32)[None, :, None]
    zs = jnp.asarray(oz + np.arange(nz) * sz, jnp.float32)[:, None, None]

    def one_view(vol, args):
        img, pose, w = args
        e_r, e_u, e_v, iso = pose[0], pose[1], pose[2], pose[3]
        x, y, z = xs - iso[0], ys - iso[1], zs - iso[2]
        dot = lambda e: x * e[0] + y * e[1] + z * e[2]  # noqa: E731  [nz, ny, nx] by broadcasting
        pr, pu, pv = dot(e_r), dot(e_u), dot(e_v)
        scale = dso / (dso - pr) if cone else jnp.ones_like(pr)
        col = (pu * scale - pose[4, 1] / mag) / du_i + (nu - 1) / 2
        row = (pv * scale - pose[4, 0] / mag) / dv_i + (nv - 1) / 2
        val = _bilinear(img, jnp.broadcast_to(col, (nz, ny, nx)), jnp.broadcast_to(row, (nz, ny, nx)))
        return vol + w * jnp.square(scale) * val, None

    @jax.jit
    def backproject(filt, poses, wts):
        vol0 = jnp.zeros((nz, ny, nx), jnp.float32)
        vol, _ = jax.lax.scan(one_view, vol0, (filt, poses, wts))
        return vol

    vol = backproject(filt, poses, jnp.asarray(wts, jnp.float32))
    return vol * redundancy
