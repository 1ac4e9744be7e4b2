"""Pallas kernels for the radiative rasterizer: same contract as the XLA path of ``xray.py``.

Layout (built with XLA ops): the (record, tile) pairs are enumerated in record order exactly as in
:func:`insideout_jax.render.additive.decode_pairs`, stably sorted by tile, and scattered into a
**segment-padded** array: tile t owns rows [start_t, start_t + n_chunks_t · Bk), Bk = ``pair_block``,
so every block of Bk rows belongs to exactly one tile. One program per tile then

- forward: loops over its blocks, evaluates the records on its Pt pixels and sums them in
  registers (no atomics, no depth sort), writes its tile row once;
- backward: reads its tile's cotangent row, computes each pair's record cotangent with the same
  hand-written VJP as the XLA path (pixel moments by a small matmul) and writes them to the pair's
  own rows — disjoint writes, so the result is deterministic. XLA then segment-sums the pair
  cotangents per record (pairs in record order, sorted segment ids).

The pair list needs a static capacity. Outside ``jit`` it is computed on the host (next power of
two of the exact count); under ``jit`` the caller passes ``capacity`` and an overflow poisons the
output with NaN (never a silent truncation). Shapes handed to the kernels are powers of two or
multiples of the tile size so that the Triton lowering accepts them; the kernels are tested on CPU
with ``interpret=True`` against the XLA path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from insideout_jax.render import additive as ad
from insideout_jax.render import xray as xr

__all__ = ["integrate_tiles", "build_segments"]

_K = 16  # record columns padded to a power of two


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def build_segments(boxes: jax.Array, layout: ad.TileLayout, capacity: int, pair_block: int):
    """Tile-sorted, segment-padded pair layout.

    Args:
      boxes: [R, 6] int32 tile boxes.
      layout: static tile layout.
      capacity: static number of pair slots (≥ the number of pairs, or the output is poisoned).
      pair_block: Bk, rows per kernel block.

    Returns:
      rid: [capacity] int32 record of each pair (record-major order), pos: [capacity] int32 row of
      each pair in the padded layout (= n_rows for invalid pairs), valid: [capacity] bool,
      seg: [T_pad, 2] int32 (first row, number of blocks) per tile, n_rows: static padded row count,
      total: [] int32 exact number of pairs.
    """
    nt = layout.n_tiles
    incl = jnp.cumsum(ad.box_counts(boxes))
    total = incl[-1]
    k = jnp.arange(capacity, dtype=jnp.int32)
    rid, _, _, _, tile, valid = ad.decode_pairs(boxes, incl, k, layout)
    per_tile = jax.ops.segment_sum(valid.astype(jnp.int32), tile, nt + 1)[:nt]
    n_blocks = (per_tile + pair_block - 1) // pair_block
    seg_start = (jnp.cumsum(n_blocks) - n_blocks) * pair_block
    order = jnp.argsort(tile, stable=True)
    sorted_tile = tile[order]
    first = jnp.searchsorted(sorted_tile, sorted_tile, side="left")
    n_rows = _next_pow2(capacity + nt * (pair_block - 1) + pair_block)
    seg_start_pad = jnp.concatenate([seg_start, jnp.full((1,), n_rows, jnp.int32)])
    pos_sorted = seg_start_pad[sorted_tile] + (jnp.arange(capacity) - first)
    pos_sorted = jnp.where(sorted_tile < nt, pos_sorted, n_rows)
    pos = jnp.zeros(capacity, jnp.int32).at[order].set(pos_sorted.astype(jnp.int32))
    t_pad = _next_pow2(nt)
    seg = jnp.zeros((t_pad, 2), jnp.int32).at[:nt].set(jnp.stack([seg_start, n_blocks], 1))
    return rid, pos, valid, seg, n_rows, total


def _tile_origin(t, layout):
    tx = t % layout.tiles_x
    ty = (t // layout.tiles_x) % layout.tiles_y
    layer = t // (layout.tiles_x * layout.tiles_y)
    return tx * layout.tile_w, ty * layout.tile_h, layer


def _fwd_kernel(seg_ref, rec_ref, out_ref, *, kernel, layout, k2, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0, layer = _tile_origin(t, layout)
    full = lambda v: jnp.full((bk,), v, jnp.int32)  # noqa: E731
    ts = (layout.tile_h, layout.tile_w)

    def body(c, acc):
        rec = rec_ref[pl.ds(start + c * bk, bk), :]
        vals = kernel.eval(rec, k2, full(x0), full(y0), full(layer), ts)
        return acc + jnp.sum(vals, axis=0)

    acc = jax.lax.fori_loop(0, nblk, body, jnp.zeros((layout.tile_pixels,), jnp.float32))
    out_ref[...] = acc[None, :]


def _bwd_kernel(seg_ref, rec_ref, ct_ref, out_ref, *, kernel, layout, k2, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0, layer = _tile_origin(t, layout)
    full = lambda v: jnp.full((bk,), v, jnp.int32)  # noqa: E731
    ts = (layout.tile_h, layout.tile_w)
    ct = jnp.broadcast_to(ct_ref[...], (bk, layout.tile_pixels))

    def body(c, carry):
        rows = pl.ds(start + c * bk, bk)
        g = kernel.vjp(rec_ref[rows, :], k2, full(x0), full(y0), full(layer), ts, ct)
        out_ref[rows, :] = jnp.pad(g, ((0, 0), (0, _K - g.shape[1])))
        return carry

    jax.lax.fori_loop(0, nblk, body, 0)


def _call_fwd(kernel, layout, k2, bk, interpret, seg, rec_rows):
    nt = layout.n_tiles
    fn = functools.partial(_fwd_kernel, kernel=kernel, layout=layout, k2=k2, bk=bk)
    return pl.pallas_call(
        fn, grid=(nt,),
        in_specs=[pl.BlockSpec(seg.shape, lambda t: (0, 0)),
                  pl.BlockSpec(rec_rows.shape, lambda t: (0, 0))],
        out_specs=pl.BlockSpec((1, layout.tile_pixels), lambda t: (t, 0)),
        out_shape=jax.ShapeDtypeStruct((nt, layout.tile_pixels), jnp.float32),
        interpret=interpret)(seg, rec_rows)


def _call_bwd(kernel, layout, k2, bk, interpret, seg, rec_rows, ct):
    nt = layout.n_tiles
    fn = functools.partial(_bwd_kernel, kernel=kernel, layout=layout, k2=k2, bk=bk)
    return pl.pallas_call(
        fn, grid=(nt,),
        in_specs=[pl.BlockSpec(seg.shape, lambda t: (0, 0)),
                  pl.BlockSpec(rec_rows.shape, lambda t: (0, 0)),
                  pl.BlockSpec((1, layout.tile_pixels), lambda t: (t, 0))],
        out_specs=pl.BlockSpec(rec_rows.shape, lambda t: (0, 0)),
        out_shape=jax.ShapeDtypeStruct(rec_rows.shape, jnp.float32),
        interpret=interpret)(seg, rec_rows, ct)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5, 6))
def _integrate(kernel, layout, k2, bk, interpret, capacity, n_records, rec, boxes):
    return _integrate_fwd(kernel, layout, k2, bk, interpret, capacity, n_records, rec, boxes)[0]


def _rows(rec, boxes, layout, capacity, bk):
    rid, pos, valid, seg, n_rows, total = build_segments(boxes, layout, capacity, bk)
    rec16 = jnp.pad(rec, ((0, 0), (0, _K - rec.shape[1])))
    rows = jnp.zeros((n_rows, _K), rec.dtype).at[pos].set(rec16[rid], mode="drop")
    return rows, rid, pos, valid, seg, total


def _integrate_fwd(kernel, layout, k2, bk, interpret, capacity, n_records, rec, boxes):
    rows, rid, pos, valid, seg, total = _rows(rec, boxes, layout, capacity, bk)
    buf = _call_fwd(kernel, layout, k2, bk, interpret, seg, rows)
    buf = jnp.where(total > capacity, jnp.nan, buf)
    return buf, (rec, rows, rid, pos, valid, seg, total)


def _integrate_bwd(kernel, layout, k2, bk, interpret, capacity, n_records, res, ct):
    rec, rows, rid, pos, valid, seg, total = res
    g_rows = _call_bwd(kernel, layout, k2, bk, interpret, seg, rows, ct)
    g_pairs = jnp.where(valid[:, None], g_rows.at[pos].get(mode="fill", fill_value=0.0), 0.0)
    g = jax.ops.segment_sum(g_pairs, rid, n_records, indices_are_sorted=True)
    g = g[:, : ad.vjp_width(kernel, rec, jnp.float32(k2), (layout.tile_h, layout.tile_w), bk)]
    if kernel.finish is not None:
        g = kernel.finish(rec, jnp.float32(k2), g)
    g = jnp.where(total > capacity, jnp.nan, g)
    return g, None


_integrate.defvjp(_integrate_fwd, _integrate_bwd)


def integrate_tiles(rec: jax.Array, boxes: jax.Array, layout: ad.TileLayout, *, mode: str,
                    cutoff_sigma: float, interpret: bool = False, capacity: int | None = None,
                    pair_block: int = 32) -> jax.Array:
    """Pallas version of ``sum_splat`` for X-ray records.

    Args:
      rec: [R, 14] float32 X-ray records (``xray.XRAY_RECORD_FIELDS``).
      boxes: [R, 6] int32 tile boxes.
      layout: static tile layout.
      mode: "cone" or "parallel".
      cutoff_sigma: k (static).
      interpret: run the kernels in the Pallas interpreter (CPU tests).
      capacity: static pair capacity; None computes it on the host (not under ``jit``).
      pair_block: pairs per kernel block (static, power of two ≥ 16 for Triton).

    Returns:
      [T, Pt] float32 per-tile sums (NaN everywhere if the pairs exceed ``capacity``).
    """
    if capacity is None:
        try:
            n = int(jnp.sum(ad.box_counts(boxes)))
        except jax.errors.ConcretizationTypeError as e:
            raise ValueError("backend='pallas' under jit needs an explicit capacity= (number of "
                             "tile pairs; see xray_tile_stats)") from e
        capacity = _next_pow2(max(n, 1024))
    kernel = xr.CONE_KERNEL if mode == "cone" else xr.PARALLEL_KERNEL
    return _integrate(kernel, layout, float(cutoff_sigma) ** 2, int(pair_block), bool(interpret),
                      int(capacity), rec.shape[0], rec, boxes)
