"""X-ray records and the per-pair integral kernels of the radiative rasterizer.

A record holds one (view, Gaussian)'s coefficients (``XRAY_RECORD_FIELDS``): its centre pixel,
the quadratic aₙ and the whitened offsets X, Y, and the constant K (the closed form and its
cancellation-free evaluation are derived in :mod:`insideout_jax.render.xray`). The kernels
(:class:`~insideout_jax.render.additive.SplatKernel`: forward value, backward moments, record
cotangents) are shared by the XLA engine (:mod:`insideout_jax.render.xray`) and the Pallas
kernels (:mod:`insideout_jax.render.pallas_xray`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from insideout_jax import xla
from insideout_jax.cameras import XrayGeometry, view_frame
from insideout_jax.render.additive import (
    MONO_SHIFT,
    SplatKernel,
    TileLayout,
    raw_moments,
    shift_moments,
    tile_local_coords,
)
from insideout_jax.splats import RadSplats, quat_to_rotmat

__all__ = ["CONE_KERNEL", "CONE_SERIES_KERNEL", "PARALLEL_KERNEL", "SERIES_EPS",
           "XRAY_RECORD_FIELDS", "safe_quats", "series_records", "xray_records"]

XRAY_RECORD_FIELDS = ("j0", "i0", "aj", "ai", "ajj", "aji", "aii", "x0", "x1", "x2",
                      "y0", "y1", "y2", "k")
_SQRT_2PI = math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# X-ray records: per (view, Gaussian) coefficients and exact footprint bounds
# ----------------------------------------------------------------------------------------------


def _silhouette_range(mu_u, depth, g_u, g_r, k2):
    """Exact range of tan-coordinates σ = u/DSD of the k-σ ellipsoid's cone-beam silhouette.

    Solves (μu − σ·depth)² = k²(Σuu + 2σΣur + σ²Σrr) for the two tangent planes through the
    source; valid where depth² > k²Σrr (the ellipsoid lies entirely in front of the source).
    Σab = g_a·g_b with g_e = S Rᵀ e; the discriminant is evaluated as a sum of non-negative terms,
    k²[det/Σrr·(depth² − k²Σrr) + Σrr·(μu + Σur·depth/Σrr)²] with det = ‖g_u × g_r‖², so needle-like
    Gaussians do not lose it to cancellation.
    """
    s_rr = jnp.sum(g_r * g_r, -1)
    s_ur = jnp.sum(g_u * g_r, -1)
    det = jnp.sum(jnp.square(jnp.cross(g_u, g_r)), -1)
    alpha = depth * depth - k2 * s_rr
    beta = mu_u * depth + k2 * s_ur
    alpha = jnp.where(alpha > 0, alpha, 1.0)
    disc = k2 * (det / s_rr * alpha + s_rr * jnp.square(mu_u + s_ur * depth / s_rr))
    root = jnp.sqrt(disc)
    return (beta - root) / alpha, (beta + root) / alpha


def _view_records(means, rot, scales, rho, geom: XrayGeometry, view, k2):
    """Records [C, 14] and pixel bounds [C, 4] (jlo, jhi, ilo, ihi) for one view (angle or pose)."""
    e_r, e_u, e_v, iso, ov, ou = view_frame(geom, view)
    nv, nu = geom.n_detector
    dv, du = geom.d_detector[0], geom.d_detector[1]
    cj, ci = (nu - 1) / 2.0, (nv - 1) / 2.0
    p = means - iso
    pr, pu, pv = (xla.dot(p, e) for e in (e_r, e_u, e_v))  # full float32, also on a GPU

    def whiten(x):  # [C, 3] → W x = (Rᵀ x) / s
        # explicit sums: XLA:CPU runs [C, 3] x [C, 3, 3] batched dots as C tiny matmuls
        return sum(x[:, b, None] * rot[:, b, :] for b in range(3)) / scales

    def sqrt_cov(e):  # [C, 3] g_e = S Rᵀ e, so that aᵀΣb = g_a·g_b
        return sum(e[b] * rot[:, b, :] for b in range(3)) * scales

    g_u, g_v, g_r = sqrt_cov(e_u), sqrt_cov(e_v), sqrt_cov(e_r)
    s_uu, s_vv, s_rr = (jnp.sum(g * g, -1) for g in (g_u, g_v, g_r))
    if geom.mode == "cone":
        depth = geom.dso - pr
        ok = (depth > 0) & (depth * depth > k2 * s_rr)
        depth_s = jnp.where(ok, depth, geom.dso)
        t0 = depth_s / geom.dsd
        j0 = (pu / t0 - ou) / du + cj
        i0 = (pv / t0 - ov) / dv + ci
        w = p - geom.dso * e_r
        w = jnp.where(ok[:, None], w, -e_r)
        wp = whiten(w)
        nw = jnp.linalg.norm(wp, axis=-1)
        wh = wp / nw[:, None]
        up = whiten(jnp.broadcast_to(e_u, p.shape)) * (t0 * du)[:, None]
        vp = whiten(jnp.broadcast_to(e_v, p.shape)) * (t0 * dv)[:, None]
        un, vn = up / nw[:, None], vp / nw[:, None]
        dot = lambda a, b: jnp.sum(a * b, axis=-1)  # noqa: E731
        acoef = jnp.stack([dot(wh, un), dot(wh, vn), dot(un, un), dot(un, vn), dot(vn, vn)], -1)
        kk = rho * _SQRT_2PI * t0 / nw
        lo_u, hi_u = _silhouette_range(pu, depth_s, g_u, g_r, k2)
        lo_v, hi_v = _silhouette_range(pv, depth_s, g_v, g_r, k2)
        jlo, jhi = (geom.dsd * lo_u - ou) / du + cj, (geom.dsd * hi_u - ou) / du + cj
        ilo, ihi = (geom.dsd * lo_v - ov) / dv + ci, (geom.dsd * hi_v - ov) / dv + ci
    else:
        ok = jnp.ones(p.shape[:1], bool)
        j0 = (pu - ou) / du + cj
        i0 = (pv - ov) / dv + ci
        wp = whiten(jnp.broadcast_to(-e_r, p.shape))
        nw = jnp.linalg.norm(wp, axis=-1)
        wh = wp / nw[:, None]
        up = whiten(jnp.broadcast_to(e_u, p.shape)) * du
        vp = whiten(jnp.broadcast_to(e_v, p.shape)) * dv
        acoef = jnp.zeros(p.shape[:1] + (5,), p.dtype)
        kk = rho * _SQRT_2PI / nw
        k = jnp.sqrt(k2)
        hj, hi_ = k * jnp.sqrt(s_uu) / du, k * jnp.sqrt(s_vv) / dv
        jlo, jhi, ilo, ihi = j0 - hj, j0 + hj, i0 - hi_, i0 + hi_
    xv = jnp.cross(up, wh)
    yv = jnp.cross(vp, wh)
    rec = jnp.concatenate([j0[:, None], i0[:, None], acoef, xv, yv, kk[:, None]], axis=-1)
    bounds = jnp.stack([jlo, jhi, ilo, ihi], axis=-1)
    return rec, bounds, ok


def safe_quats(splats) -> jax.Array:
    """[C, 4] quaternions with inactive slots replaced by the identity (they may hold zeros, whose
    normalisation would put NaN into gradients even when multiplied by zero)."""
    ident = jnp.asarray([1.0, 0.0, 0.0, 0.0], splats.quats.dtype)
    return jnp.where(splats.active[:, None], splats.quats, ident)


def xray_records(splats: RadSplats, geometry: XrayGeometry, views: jax.Array, *,
                 cutoff_sigma: float = 5.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projection stage: per (view, Gaussian) line-integral coefficients and footprint bounds.

    Args:
      splats: radiative splats (capacity C).
      geometry: scanner geometry (cone or parallel beam).
      views: [V] float32 view angles (radians) or [V, 5, 3] poses (``geometry.views``).
      cutoff_sigma: k (float or [] float32 array); a Gaussian contributes where the ray's
        Mahalanobis distance m ≤ k.

    Returns:
      records: [V, C, 14] float32, fields :data:`XRAY_RECORD_FIELDS` (pixel units for j0, i0).
      bounds: [V, C, 4] float32 exact (jlo, jhi, ilo, ihi) pixel bounds of the k-σ silhouette.
      ok: [V, C] bool; False for inactive splats and, in cone beam, for Gaussians whose k-σ
        ellipsoid reaches the plane of the source (depth² ≤ k²·Σrr), which are not rendered.
    """
    k2 = jnp.asarray(cutoff_sigma, jnp.float32) ** 2
    rot = quat_to_rotmat(safe_quats(splats))
    scales = jnp.exp(splats.log_scales)
    rho = jnp.exp(splats.log_densities)
    fn = lambda a: _view_records(splats.means, rot, scales, rho, geometry, a, k2)  # noqa: E731
    rec, bounds, ok = jax.vmap(fn)(views)
    ok = ok & splats.active[None, :]
    return rec, bounds, ok


def _offsets(rec, x0, y0, ts):
    lx, ly = tile_local_coords(ts)
    dj = (x0.astype(jnp.float32) - rec[:, 0])[:, None] + lx[None, :]
    di = (y0.astype(jnp.float32) - rec[:, 1])[:, None] + ly[None, :]
    return dj, di


def _gram(rec):
    """[B] entries of the Gram matrix of X, Y: N = Δj²·xx + 2ΔjΔi·xy + Δi²·yy."""
    xv, yv = rec[:, 7:10], rec[:, 10:13]
    return jnp.sum(xv * xv, 1), jnp.sum(xv * yv, 1), jnp.sum(yv * yv, 1)


def _quad_n(rec, dj, di):
    """Per-pixel N = ‖Δj·X + Δi·Y‖² as a quadratic form (5 operations per pixel instead of 9)."""
    xx, xy, yy = (v[:, None] for v in _gram(rec))
    return dj * (xx * dj + 2.0 * xy * di) + yy * (di * di)


# Records whose |a − 1| stays below this bound on every pixel of their tiles evaluate a^(−1/2) as its
# Taylor polynomial of degree 5 in ε = a − 1 (truncation error ≤ (231/1024)·|ε|⁶/(1 − |ε|) ≤ 2.5e-7, the size of
# float32 rounding): five fused multiply-adds instead of the rsqrt instruction with its Newton steps
# and special-case masks (measured 1.4x faster on the whole rasterizer). For cone beam ε is about
# (in-plane offset / source distance) × anisotropy, far below the bound for all but needle-like
# Gaussians, which keep the rsqrt form (a separate pass of the same engine).
SERIES_EPS = 0.1


def _rsqrt_1p(eps, series: bool):
    """(1 + ε)^(−1/2): Taylor polynomial of degree 5 (``series``, |ε| ≤ ``SERIES_EPS``) or rsqrt."""
    if series:
        return 1.0 + eps * (-0.5 + eps * (0.375 + eps * (-0.3125 + eps * (0.2734375
                                                                       - eps * 0.24609375))))
    return jax.lax.rsqrt(1.0 + eps)


def _cone_terms(rec, dj, di, series: bool = False):
    """Per-pixel r = a^(−1/2) and m² = N/a of cone-beam records."""
    c = lambda i: rec[:, i][:, None]  # noqa: E731
    eps = dj * (2.0 * c(2) + dj * c(4) + 2.0 * di * c(5)) + di * (2.0 * c(3) + di * c(6))
    r = _rsqrt_1p(eps, series)
    return r, _quad_n(rec, dj, di) * (r * r)


def series_records(rec: jax.Array, boxes: jax.Array, layout: TileLayout) -> jax.Array:
    """[R] bool: records whose |a − 1| ≤ ``SERIES_EPS`` on every pixel of their tile box.

    A rigorous bound (triangle inequality on the quadratic ε(Δj, Δi) over the box's pixel extent),
    so the series form is only ever used inside its error bound.
    """
    x_lo = (boxes[:, 0] * layout.tile_w).astype(jnp.float32) - rec[:, 0]
    x_hi = x_lo + (boxes[:, 3] * layout.tile_w - 1).astype(jnp.float32)
    y_lo = (boxes[:, 1] * layout.tile_h).astype(jnp.float32) - rec[:, 1]
    y_hi = y_lo + (boxes[:, 4] * layout.tile_h - 1).astype(jnp.float32)
    xm = jnp.maximum(jnp.abs(x_lo), jnp.abs(x_hi))
    ym = jnp.maximum(jnp.abs(y_lo), jnp.abs(y_hi))
    aj, ai, ajj, aji, aii = (jnp.abs(rec[:, k]) for k in range(2, 7))
    bound = xm * (2.0 * aj + ajj * xm + 2.0 * aji * ym) + ym * (2.0 * ai + aii * ym)
    return bound <= SERIES_EPS


def _eval_cone(rec, aux, x0, y0, layer, ts, series: bool = False):
    dj, di = _offsets(rec, x0, y0, ts)
    r, m2 = _cone_terms(rec, dj, di, series)
    val = rec[:, 13:14] * r * jnp.exp(-0.5 * m2)
    return jnp.where(m2 <= aux, val, 0.0)


def _centre_offsets(rec, x0, y0, ts):
    """Offsets (ox, oy) of the tile centre from the record's centre pixel (j0, i0)."""
    th, tw = ts
    return (x0.astype(jnp.float32) + (tw - 1) / 2.0 - rec[:, 0],
            y0.astype(jnp.float32) + (th - 1) / 2.0 - rec[:, 1])


def _record_moments(rec, x0, y0, ts, g):
    """[B, 6] Σₚ g·{1, Δj, Δi, Δj², ΔjΔi, Δi²} about the record centre (they add over tiles)."""
    return jnp.stack(shift_moments(raw_moments(ts, g), *_centre_offsets(rec, x0, y0, ts)), 1)


def _n_grads(rec, nj, ni, njj, nji, nii):
    """Cotangents of X, Y, j0, i0 through N = ‖Δj·X + Δi·Y‖² from gn moments (gn = ∂L/∂N)."""
    xv, yv = rec[:, 7:10], rec[:, 10:13]
    xx, xy, yy = _gram(rec)
    gx = 2.0 * (xv * njj[:, None] + yv * nji[:, None])
    gy = 2.0 * (xv * nji[:, None] + yv * nii[:, None])
    gj0 = -2.0 * (xx * nj + xy * ni)
    gi0 = -2.0 * (xy * nj + yy * ni)
    return gx, gy, gj0, gi0


def _vjp_cone(rec, aux, x0, y0, layer, ts, ct, series: bool = False):
    """Per-pair pixel sums for the VJP of :func:`_eval_cone` ([B, Pt] cotangents → [B, 13]).

    With v = K·r·e (r = a^(−1/2), e = exp(−½N/a)) and u = ct·e·r⁵ (the only per-pixel map):
    ∂L/∂K = Σ u·a², ∂L/∂a = (K/2)·u·(N − a), ∂L/∂N = −(K/2)·u·a per pixel. a and N are quadratic
    polynomials of the pixel offset, so the moments of degree ≤ 2 of u·(N − a) and u·a follow from
    the moments of u of degree ≤ 4 (one matmul) and the pair's polynomial coefficients. They are
    returned about the record centre (so that they add up over the record's tiles), with Σ u·a²;
    :func:`_finish_cone` turns their per-record sums into record cotangents.
    """
    dj, di = _offsets(rec, x0, y0, ts)
    r, m2 = _cone_terms(rec, dj, di, series)
    r2 = r * r
    u = ct * jnp.where(m2 <= aux, r * r2 * r2 * jnp.exp(-0.5 * m2), 0.0)
    mu = raw_moments(ts, u, 15)
    ox, oy = _centre_offsets(rec, x0, y0, ts)
    aj, ai, ajj, aji, aii = (rec[:, k] for k in range(2, 7))
    xx, xy, yy = _gram(rec)
    # a and N as polynomials in the tile-centred l (coefficients on 1, lx, ly, lx², lxly, ly²)
    apoly = (1.0 + ox * (2.0 * aj + ajj * ox + 2.0 * aji * oy) + oy * (2.0 * ai + aii * oy),
             2.0 * (aj + ajj * ox + aji * oy), 2.0 * (ai + aji * ox + aii * oy), ajj, 2.0 * aji, aii)
    npoly = (ox * (xx * ox + 2.0 * xy * oy) + yy * oy * oy, 2.0 * (xx * ox + xy * oy),
             2.0 * (xy * ox + yy * oy), xx, 2.0 * xy, yy)

    def poly_moments(coef):  # Σ u·P(l)·l^α for the six α of degree ≤ 2, as [B, 6]
        # explicit sums of products (a gathered [B, 6, 6] operand is several times slower on CPU)
        return jnp.stack([sum(mu[:, int(MONO_SHIFT[al, k])] * coef[k] for k in range(6))
                          for al in range(6)], 1)

    sn = poly_moments(apoly)  # u·a
    sa = poly_moments(tuple(n - a for n, a in zip(npoly, apoly, strict=True)))  # u·(N − a)
    gk = sum(sn[:, k] * apoly[k] for k in range(6))  # Σ u·a²
    sa, sn = (jnp.stack(shift_moments(m, ox, oy), 1) for m in (sa, sn))
    return jnp.concatenate([sa, sn, gk[:, None]], axis=1)


def _finish_cone(rec, aux, s):
    """Record cotangents [R, 14] from the per-record sums [R, 13] of :func:`_vjp_cone`."""
    half_k = 0.5 * rec[:, 13]
    a0, a_j, a_i, ajj_, aji_, aii_ = (half_k * s[:, k] for k in range(6))
    n_j, n_i, njj, nji, nii = (-half_k * s[:, k] for k in range(7, 12))
    gx, gy, gj0, gi0 = _n_grads(rec, n_j, n_i, njj, nji, nii)
    aj, ai, ajj, aji, aii = (rec[:, k] for k in range(2, 7))
    gj0 = gj0 - 2.0 * (aj * a0 + ajj * a_j + aji * a_i)
    gi0 = gi0 - 2.0 * (ai * a0 + aii * a_i + aji * a_j)
    return jnp.concatenate([jnp.stack([gj0, gi0, 2.0 * a_j, 2.0 * a_i, ajj_, 2.0 * aji_, aii_], 1),
                            gx, gy, s[:, 12:13]], axis=1)


def _eval_parallel(rec, aux, x0, y0, layer, ts):
    dj, di = _offsets(rec, x0, y0, ts)
    m2 = _quad_n(rec, dj, di)
    return jnp.where(m2 <= aux, rec[:, 13:14] * jnp.exp(-0.5 * m2), 0.0)


def _vjp_parallel(rec, aux, x0, y0, layer, ts, ct):
    """Per-pair sums for the VJP of :func:`_eval_parallel`: the moments of u = ct·e ([B, 6])."""
    dj, di = _offsets(rec, x0, y0, ts)
    m2 = _quad_n(rec, dj, di)
    return _record_moments(rec, x0, y0, ts, ct * jnp.where(m2 <= aux, jnp.exp(-0.5 * m2), 0.0))


def _finish_parallel(rec, aux, s):
    """Record cotangents [R, 14] from the per-record moments of u (∂L/∂N = −(K/2)·u)."""
    half_k = -0.5 * rec[:, 13]
    gx, gy, gj0, gi0 = _n_grads(rec, *(half_k * s[:, k] for k in range(1, 6)))
    z = jnp.zeros((rec.shape[0], 5), rec.dtype)
    return jnp.concatenate([gj0[:, None], gi0[:, None], z, gx, gy, s[:, 0:1]], axis=1)


CONE_KERNEL = SplatKernel(_eval_cone, _vjp_cone, _finish_cone)
# the same kernel with a^(−1/2) as its series, for the records of :func:`series_records`
CONE_SERIES_KERNEL = SplatKernel(functools.partial(_eval_cone, series=True),
                                 functools.partial(_vjp_cone, series=True), _finish_cone)
PARALLEL_KERNEL = SplatKernel(_eval_parallel, _vjp_parallel, _finish_parallel)
