"""The slice renderer's density kernel for the Pallas engine (:mod:`insideout_jax.render.pallas_additive`).

The same values and record cotangents as :data:`insideout_jax.render.slices.DENSITY_KERNEL` (one
channel), on record columns r[k] ([Bk]) and scalar constants aux = (x00 (3), step_c (3),
step_r (3), step_l (3), k²): every intermediate is a [Bk] or [Bk, Pt] block (no 3-vectors, no
3 × 3 matmul), as Triton wants them.
"""

from __future__ import annotations

import jax.numpy as jnp

from insideout_jax.render.additive import tile_local_coords

__all__ = ["density_kernel"]


def _pallas_stage(r, aux, x0, y0, layer, ts):
    """o = W(x_t − μ), g1 = W·step_c, g2 = W·step_r as three lists of [Bk] columns, and x_t − μ."""
    th, tw = ts
    xc = x0 + (tw - 1) / 2.0
    yc = y0 + (th - 1) / 2.0
    d = [aux[j] + xc * aux[3 + j] + yc * aux[6 + j] + layer * aux[9 + j] - r[j] for j in range(3)]
    w = lambda i, j: r[3 + 3 * i + j]  # noqa: E731
    o = [w(i, 0) * d[0] + w(i, 1) * d[1] + w(i, 2) * d[2] for i in range(3)]
    g1 = [w(i, 0) * aux[3] + w(i, 1) * aux[4] + w(i, 2) * aux[5] for i in range(3)]
    g2 = [w(i, 0) * aux[6] + w(i, 1) * aux[7] + w(i, 2) * aux[8] for i in range(3)]
    return o, g1, g2, d


def _pallas_m2(o, g1, g2, ts):
    lx, ly = tile_local_coords(ts, centred=True)
    v = [o[k][:, None] + lx[None] * g1[k][:, None] + ly[None] * g2[k][:, None] for k in range(3)]
    return v[0] * v[0] + v[1] * v[1] + v[2] * v[2], lx, ly


def _pallas_value(r, aux, x0, y0, layer, ts):
    o, g1, g2, _ = _pallas_stage(r, aux, x0, y0, layer, ts)
    m2, _, _ = _pallas_m2(o, g1, g2, ts)
    return jnp.where(m2 <= aux[12], r[12][:, None] * jnp.exp(-0.5 * m2), 0.0)


def _pallas_sums(r, aux, x0, y0, layer, ts, ct):
    """Record cotangents of one pair (μ (3), W row-major (9), peak): :func:`_vjp_density`."""
    o, g1, g2, d = _pallas_stage(r, aux, x0, y0, layer, ts)
    m2, lx, ly = _pallas_m2(o, g1, g2, ts)
    ge = ct * jnp.where(m2 <= aux[12], jnp.exp(-0.5 * m2), 0.0)  # ∂L/∂peak per pixel
    gm = -0.5 * ge * r[12][:, None]  # ∂L/∂m²
    gx, gy = gm * lx[None], gm * ly[None]
    s0, sx, sy = jnp.sum(gm, 1), jnp.sum(gx, 1), jnp.sum(gy, 1)
    sxx, sxy, syy = jnp.sum(gx * lx[None], 1), jnp.sum(gx * ly[None], 1), jnp.sum(gy * ly[None], 1)
    go = [2.0 * (o[i] * s0 + g1[i] * sx + g2[i] * sy) for i in range(3)]
    gg1 = [2.0 * (o[i] * sx + g1[i] * sxx + g2[i] * sxy) for i in range(3)]
    gg2 = [2.0 * (o[i] * sy + g1[i] * sxy + g2[i] * syy) for i in range(3)]
    w = lambda i, j: r[3 + 3 * i + j]  # noqa: E731
    g_mu = [-(w(0, j) * go[0] + w(1, j) * go[1] + w(2, j) * go[2]) for j in range(3)]
    g_w = [go[i] * d[j] + gg1[i] * aux[3 + j] + gg2[i] * aux[6 + j]
           for i in range(3) for j in range(3)]
    return (*g_mu, *g_w, jnp.sum(ge, 1))


def density_kernel():
    """The Pallas kernel (13-column records: μ, W row-major, peak)."""
    from insideout_jax.render import pallas_additive  # noqa: PLC0415 (optional back end)

    return pallas_additive.PallasKernel(13, 13, _pallas_value, _pallas_sums)
