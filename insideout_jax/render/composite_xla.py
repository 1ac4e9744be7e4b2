"""The RGB compositor's XLA path: front-to-back alpha compositing of tile-sorted pair windows
and its hand-written backward (the reference the Pallas kernels are checked against)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import xla
from insideout_jax.render import project as proj
from insideout_jax.render import tiles as tl

T_MIN = 1e-4  # compositing stops before T would fall below this (3DGS)
N_PARAMS = 10  # packed per-Gaussian parameters: u, v, a, b, c, opacity, r, g, b, depth


def _local_coords(grid: tl.TileGrid, dtype):
    """Pixel-centre offsets inside a tile: lx, ly [S²] (0.5 … S − 0.5), row-major."""
    s = grid.tile_size
    ly, lx = np.divmod(np.arange(s * s), s)
    return jnp.asarray(lx + 0.5, dtype), jnp.asarray(ly + 0.5, dtype)


def _tile_origins(tiles, grid: tl.TileGrid, dtype):
    """Pixel coordinates (x, y) of the top-left corner of tiles [M] (dummy tile T allowed)."""
    ty, tx = jnp.divmod(tiles, grid.tiles_x)
    return (tx * grid.tile_size).astype(dtype), (ty * grid.tile_size).astype(dtype)


def _eval_pair(pj, ox, oy, lx, ly, trans):
    """One Gaussian per tile (pj: [10, M]) on the tiles' pixels (trans: [M, S²], signed).

    ``trans`` > 0: the pixel is compositing; < 0: it has stopped and |trans| is its final T (one
    array carries both, which saves memory traffic in the XLA loops). The arithmetic (dx = u −
    pixel centre, the order of operations) is that of the reference.

    Returns:
      og (o·G, unclamped), alpha (0 where skipped), w (αT where composited, else 0), keep (the
      pixel is still compositing after this pair) and the new signed transmittance.
    """
    dx = pj[0][:, None] - (ox[:, None] + lx)
    dy = pj[1][:, None] - (oy[:, None] + ly)
    a, b, c = pj[2][:, None], pj[3][:, None], pj[4][:, None]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    og = pj[5][:, None] * jnp.exp(power)
    alpha = jnp.minimum(proj.ALPHA_MAX, og)
    alpha = jnp.where((alpha >= proj.ALPHA_MIN) & (power <= 0), alpha, 0)
    t_next = trans * (1 - alpha)
    keep = t_next >= T_MIN  # False for stopped pixels (trans < 0) and for the stopping pair
    w = jnp.where(keep, alpha * trans, 0)
    return og, alpha, w, keep, jnp.where(keep, t_next, -jnp.abs(trans))


def _fwd_step(carry, pj, ox, oy, lx, ly):
    trans, c0, c1, c2, dep = carry
    _, _, w, _, t_next = _eval_pair(pj, ox, oy, lx, ly, trans)
    c0 = c0 + w * pj[6][:, None]
    c1 = c1 + w * pj[7][:, None]
    c2 = c2 + w * pj[8][:, None]
    dep = dep + w * pj[9][:, None]
    return (t_next, c0, c1, c2, dep), None


def _bwd_step(carry, pj, ox, oy, lx, ly, g0, g1, g2, gd, r):
    """Front-to-back backward step; emits the per-pixel ∂L/∂power and weights w for reduction."""
    trans, qacc = carry
    og, alpha, w, keep, t_next = _eval_pair(pj, ox, oy, lx, ly, trans)
    q = g0 * pj[6][:, None] + g1 * pj[7][:, None] + g2 * pj[8][:, None] + gd * pj[9][:, None]
    qacc = qacc + w * q
    dalpha = trans * q - (r - qacc) / (1 - alpha)
    live = keep & (alpha > 0) & (og < proj.ALPHA_MAX)  # composited and not clamped
    dpow = jnp.where(live, dalpha * og, 0)  # ∂L/∂power = ∂L/∂α · o·G
    return (t_next, qacc), (dpow, w)


def _reduce_pair_grads(pp, dpow, w, cot_g, ox, oy, grid):
    """Per-pair gradients from per-pixel terms.

    Args:
      pp: [B, 10, M] pair parameters; dpow, w: [B, M, S²]; cot_g: [4, M, S²] (g_r, g_g, g_b, g_D);
      ox, oy: [M] tile origins.

    Returns:
      [B, 10, M] ∂L/∂(u, v, a, b, c, o, r, g, b, z) per pair.

    The sums Σ_p dpow·{1, x, y, x², xy, y²} over a tile's pixels come from one matmul with a fixed
    basis in tile-centred coordinates; moments in dx = u − x follow by expanding the polynomials
    (well conditioned: both the pixel and the mean are taken relative to the tile centre).
    """
    h = 0.5 * grid.tile_size
    lx, ly = _local_coords(grid, pp.dtype)
    lx, ly = lx - h, ly - h
    basis = jnp.stack([jnp.ones_like(lx), lx, ly, lx * lx, lx * ly, ly * ly], axis=-1)
    s = jnp.einsum("bmp,pk->kbm", dpow, basis, precision=xla.HIGHEST)  # [6, B, M]
    wg = jnp.einsum("bmp,kmp->kbm", w, cot_g, precision=xla.HIGHEST)  # [4, B, M]
    mx = pp[:, 0] - (ox + h)
    my = pp[:, 1] - (oy + h)
    a, b, c, o = pp[:, 2], pp[:, 3], pp[:, 4], pp[:, 5]
    sdx = mx * s[0] - s[1]
    sdy = my * s[0] - s[2]
    sdxx = mx * mx * s[0] - 2 * mx * s[1] + s[3]
    sdxy = mx * my * s[0] - mx * s[2] - my * s[1] + s[4]
    sdyy = my * my * s[0] - 2 * my * s[2] + s[5]
    d_o = jnp.where(o > 0, s[0] / jnp.where(o > 0, o, 1), 0)  # Σ ∂L/∂α·G = Σ dpow / o
    return jnp.stack([-(a * sdx + b * sdy), -(b * sdx + c * sdy), -0.5 * sdxx, -sdxy, -0.5 * sdyy,
                      d_o, wg[0], wg[1], wg[2], wg[3]], axis=1)


def _pad_row(x, value):
    return jnp.concatenate([x, jnp.full((1,) + x.shape[1:], value, x.dtype)], axis=0)


def _loop_tiles(starts, ends, trans, m, chunk, body_fn, carry0):
    """Run ``body_fn`` on the next chunk of m active tiles until no tile is active.

    A tile is active while its list has pairs left and some of its pixels are still compositing
    (signed ``trans`` [T + 1, S²] > 0). Each step takes the first m active tiles in order of
    decreasing list length, so long lists start early and do not leave a tail of nearly empty
    steps. Row T is a dummy tile with an empty list (it fills the step when fewer than m tiles
    are active).
    """
    t = starts.shape[0]
    starts_p = _pad_row(starts, 0)
    ends_p = _pad_row(ends, 0)
    by_length = _pad_row(jnp.argsort(starts - ends).astype(jnp.int32), t)  # longest first

    def active_of(pos, trans):
        return (pos < ends_p) & jnp.any(trans > 0, axis=1)

    def cond(c):
        return jnp.any(c[0])

    def body(c):
        active, pos, trans, carry = c
        tiles = by_length[jnp.nonzero(active[by_length], size=m, fill_value=t)[0]]
        idx = pos[tiles][:, None] + jnp.arange(chunk, dtype=jnp.int32)
        ok = idx < ends_p[tiles][:, None]
        trans, carry = body_fn(tiles, idx, ok, trans, carry)
        pos = pos.at[tiles].add(chunk)
        return active_of(pos, trans), pos, trans, carry

    out = jax.lax.while_loop(cond, body, (active_of(starts_p, trans), starts_p, trans, carry0))
    return out[2], out[3]


def composite_window_xla(pair_params, starts, ends, state, *, grid, chunk, m):
    """Forward compositing of one window of sorted pairs (XLA).

    Args:
      pair_params: [P, 10] packed parameters of the sorted pairs (:func:`pack_gaussians` rows).
      starts, ends: [T] int32 per-tile ranges into the pair list.
      state: [T, 5, S²] per-pixel (T, C_r, C_g, C_b, D) before this window; the transmittance is
        signed: negative once the pixel has stopped (|T| is then final; pixels outside the image
        start at −1).
      grid: the tiling (static).
      chunk: pairs per tile per step (static).
      m: tiles per step (static).

    Returns:
      state after compositing the window.
    """
    p = pair_params.shape[0]
    pp_pad = _pad_row(pair_params, 0)
    lx, ly = _local_coords(grid, pair_params.dtype)

    def body_fn(tiles, idx, ok, trans, acc):
        pp = jnp.transpose(pp_pad[jnp.where(ok, idx, p)], (1, 2, 0))  # [chunk, 10, m]
        rows = acc[tiles]
        ox, oy = _tile_origins(tiles, grid, pair_params.dtype)
        carry = (trans[tiles], rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
        step = functools.partial(_fwd_step, ox=ox, oy=oy, lx=lx, ly=ly)
        carry, _ = jax.lax.scan(step, carry, pp)
        return trans.at[tiles].set(carry[0]), acc.at[tiles].set(jnp.stack(carry[1:], axis=1))

    trans, acc = _loop_tiles(starts, ends, _pad_row(state[:, 0], -1), m, chunk, body_fn,
                             _pad_row(state[:, 1:], 0))
    return jnp.concatenate([trans[:-1, None], acc[:-1]], axis=1)


def composite_window_bwd_xla(pair_params, starts, ends, bstate, cot, *, grid, chunk, m):
    """Backward of one window (XLA): per-pair gradients, front to back.

    Args:
      pair_params, starts, ends, grid, chunk, m: as in :func:`composite_window_xla`.
      bstate: [T, 2, S²] per-pixel (signed T, Σ w q) before this window.
      cot: [T, 5, S²] per-pixel (g_r, g_g, g_b, g_D, R) (see the module docstring).

    Returns:
      (pair_grads [P, 10], bstate) – gradients w.r.t. the packed parameters of each pair.
    """
    p = pair_params.shape[0]
    pp_pad = _pad_row(pair_params, 0)
    cot_p = _pad_row(cot, 0)
    lx, ly = _local_coords(grid, pair_params.dtype)

    def body_fn(tiles, idx, ok, trans, c):
        qacc, grads = c
        safe = jnp.where(ok, idx, p)
        pp = jnp.transpose(pp_pad[safe], (1, 2, 0))  # [chunk, 10, m]
        cr = jnp.moveaxis(cot_p[tiles], 1, 0)  # [5, m, S²]
        ox, oy = _tile_origins(tiles, grid, pair_params.dtype)
        step = functools.partial(_bwd_step, ox=ox, oy=oy, lx=lx, ly=ly, g0=cr[0], g1=cr[1],
                                 g2=cr[2], gd=cr[3], r=cr[4])
        (t_new, q_new), (dpow, w) = jax.lax.scan(step, (trans[tiles], qacc[tiles]), pp)
        g = _reduce_pair_grads(pp, dpow, w, cr[:4], ox, oy, grid)  # [chunk, 10, m]
        grads = grads.at[safe].set(jnp.transpose(g, (2, 0, 1)))  # [m, chunk, 10]
        return trans.at[tiles].set(t_new), (qacc.at[tiles].set(q_new), grads)

    grads0 = jnp.zeros((p + 1, N_PARAMS), pair_params.dtype)
    trans, (qacc, grads) = _loop_tiles(starts, ends, _pad_row(bstate[:, 0], -1), m, chunk,
                                       body_fn, (_pad_row(bstate[:, 1], 0), grads0))
    return grads[:-1], jnp.stack([trans[:-1], qacc[:-1]], axis=1)
