"""Pallas kernels for the radiative rasterizer: same contract as the XLA path of ``xray.py``.

The engine (windows of tile-sorted pairs, one program per tile, deterministic per-record sums) is
:mod:`insideout_jax.render.pallas_additive`. This module holds the per-pair evaluation of X-ray
records on a tile, written on record columns ([Bk] arrays) so that every intermediate is a
power-of-two block:

- forward: the arithmetic of ``xray._offsets``, ``_quad_n`` and ``_cone_terms`` (rsqrt form; the
  XLA path's a^(−1/2) series is a CPU optimisation);
- backward: the 13 (cone) or 6 (parallel) per-pair sums of ``xray._vjp_cone`` /
  ``_vjp_parallel``, taken directly about the record centre (the XLA path takes moments about the
  tile centre with one matmul and shifts them), then the XLA path's ``finish`` once per record.

Glossary: R records, T tiles, Pt pixels per tile, Bk pairs per kernel block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from insideout_jax.render import additive as ad
from insideout_jax.render import pallas_additive as pa
from insideout_jax.render import xray_records as xr

__all__ = ["integrate_tiles", "CONE_PALLAS", "PARALLEL_PALLAS"]

_N_REC = 14  # X-ray record width (xray.XRAY_RECORD_FIELDS); aux = [k²]


def _pixel_terms(r, x0, y0, ts, cone: bool):
    """Per-pixel offsets (Δj, Δi), N, ε and m² of a block of records (columns r[k]: [Bk])."""
    lx, ly = ad.tile_local_coords(ts)
    dj = (x0 - r[0])[:, None] + lx[None, :]
    di = (y0 - r[1])[:, None] + ly[None, :]
    xx = r[7] * r[7] + r[8] * r[8] + r[9] * r[9]
    xy = r[7] * r[10] + r[8] * r[11] + r[9] * r[12]
    yy = r[10] * r[10] + r[11] * r[11] + r[12] * r[12]
    n = dj * (xx[:, None] * dj + 2.0 * xy[:, None] * di) + yy[:, None] * (di * di)
    if not cone:
        return dj, di, n, None, None, n
    c = lambda k: r[k][:, None]  # noqa: E731
    eps = dj * (2.0 * c(2) + dj * c(4) + 2.0 * di * c(5)) + di * (2.0 * c(3) + di * c(6))
    rr = jax.lax.rsqrt(1.0 + eps)
    return dj, di, n, eps, rr, n * (rr * rr)


def _value(r, aux, x0, y0, layer, ts, *, cone):
    _, _, _, _, rr, m2 = _pixel_terms(r, x0, y0, ts, cone)
    val = r[13][:, None] * jnp.exp(-0.5 * m2)
    if cone:
        val = val * rr
    return jnp.where(m2 <= aux[0], val, 0.0)


def _moments6(p, dj, di):
    """Σₚ p·{1, Δj, Δi, Δj², ΔjΔi, Δi²} per row of [Bk, Pt] maps, as six [Bk] sums."""
    pj, pi = p * dj, p * di
    return (jnp.sum(p, 1), jnp.sum(pj, 1), jnp.sum(pi, 1), jnp.sum(pj * dj, 1),
            jnp.sum(pj * di, 1), jnp.sum(pi * di, 1))


def _sums(r, aux, x0, y0, layer, ts, ct, *, cone):
    dj, di, n, eps, rr, m2 = _pixel_terms(r, x0, y0, ts, cone)
    inside = m2 <= aux[0]
    if not cone:  # moments of u = ct·e (xray._vjp_parallel)
        return _moments6(ct * jnp.where(inside, jnp.exp(-0.5 * m2), 0.0), dj, di)
    # u = ct·e·a^(−5/2); moments of u·(N − a) and u·a, and Σ u·a² (xray._vjp_cone). The mask is
    # applied to the whole product, so a pixel outside the cut-off never contributes 0·inf = NaN.
    r2 = rr * rr
    u = ct * jnp.where(inside, jnp.exp(-0.5 * m2) * (rr * r2 * r2), 0.0)
    a = 1.0 + eps
    ua = u * a
    return _moments6(u * (n - a), dj, di) + _moments6(ua, dj, di) + (jnp.sum(ua * a, 1),)


def _value_cone(r, aux, x0, y0, layer, ts):
    return _value(r, aux, x0, y0, layer, ts, cone=True)


def _value_parallel(r, aux, x0, y0, layer, ts):
    return _value(r, aux, x0, y0, layer, ts, cone=False)


def _sums_cone(r, aux, x0, y0, layer, ts, ct):
    return _sums(r, aux, x0, y0, layer, ts, ct, cone=True)


def _sums_parallel(r, aux, x0, y0, layer, ts, ct):
    return _sums(r, aux, x0, y0, layer, ts, ct, cone=False)


def _finish_cone(rec, s):
    return xr.CONE_KERNEL.finish(rec, None, s)


def _finish_parallel(rec, s):
    return xr.PARALLEL_KERNEL.finish(rec, None, s)


CONE_PALLAS = pa.PallasKernel(_N_REC, 13, _value_cone, _sums_cone, _finish_cone)
PARALLEL_PALLAS = pa.PallasKernel(_N_REC, 6, _value_parallel, _sums_parallel, _finish_parallel)


def integrate_tiles(rec: jax.Array, boxes: jax.Array, layout: ad.TileLayout, *, mode: str,
                    cutoff_sigma, interpret: bool = False, capacity: int | None = None,
                    pair_block: int = 16) -> jax.Array:
    """Pallas version of ``sum_splat`` for X-ray records (jit-able; nothing is truncated).

    Args:
      rec: [R, 14] float32 X-ray records (``xray.XRAY_RECORD_FIELDS``).
      boxes: [R, 6] int32 tile boxes.
      layout: static tile layout; tile_h and tile_w powers of two.
      mode: "cone" or "parallel".
      cutoff_sigma: k (float or [] float32 array; not differentiated).
      interpret: run the kernels in the Pallas interpreter (CPU tests).
      capacity: static pairs per window (performance and memory only; more pairs run further
        windows). None: :func:`~insideout_jax.render.pallas_additive.default_window_capacity`.
      pair_block: Bk, pairs per kernel block (static, a power of two ≥ 16 for Triton).

    Returns:
      [T, Pt] float32 per-tile sums.

    Raises:
      ValueError: naming the argument, for an unknown mode, a record that is not [R, 14], or the
        engine's checks (:func:`~insideout_jax.render.pallas_additive.integrate`).
    """
    if mode not in ("cone", "parallel"):
        raise ValueError(f"mode must be 'cone' or 'parallel', got {mode!r}")
    if rec.ndim != 2 or rec.shape[1] != _N_REC:
        raise ValueError(f"rec must have shape [R, {_N_REC}], got {rec.shape}")
    k = jax.lax.stop_gradient(jnp.asarray(cutoff_sigma, jnp.float32))
    return pa.integrate(CONE_PALLAS if mode == "cone" else PARALLEL_PALLAS, layout, rec,
                        (k * k)[None], boxes, interpret=interpret, capacity=capacity,
                        pair_block=pair_block)
