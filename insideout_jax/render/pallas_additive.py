"""Pallas engine for additive tile accumulation: the GPU counterpart of ``additive.sum_splat``.

Used by the X-ray rasterizer (:mod:`insideout_jax.render.pallas_xray`) and the slice renderer /
voxelizer (:mod:`insideout_jax.render.slices`). Layout (built with XLA ops): the (record, tile)
pairs come from the tile engine's shared enumeration (:mod:`insideout_jax.render.pairs`, records in
their own order), ``capacity`` slots per *window*. The pairs of one window are sorted by (tile, slot)
with the shared packed-key sort, cut into per-tile ranges, and scattered into
a **segment-padded**, column-major array [16, n_rows]: tile t owns rows [start_t, start_t +
n_blocks_t · Bk), Bk = ``pair_block``, so every block of Bk rows belongs to exactly one tile. One
program per tile then

- forward: loops over its blocks, evaluates the records on its Pt pixels (``PallasKernel.value``)
  and sums them in registers (no atomics), and adds its tile row once;
- backward: reads its tile's cotangent row, reduces each pair's per-pixel VJP terms to a few sums
  (``PallasKernel.sums``) and writes them to the pair's own column: disjoint writes, so the result
  is deterministic. XLA then adds the pair columns per record with a segmented associative scan
  (pairs in record order; no scatter-add, whose GPU lowering uses atomics) and applies the
  kernel's ``finish`` once per record.

Windows run one after another until every pair is done (a loop over the dynamic pair count), so
the capacity is a static performance knob and nothing is ever truncated: no host-side count,
usable under ``jit`` with any number of pairs.

Written for the Triton back end of Pallas (``compiler_params`` select it; JAX's default GPU back
end is Mosaic GPU): every array inside a kernel is a power-of-two block ([Bk], [Pt], [Bk, Pt]);
records are read column by column, the shared constants (``aux``) as scalars; pixel coordinates
come from ``iota``; no slices, concatenation or matmul. ``tests/test_pallas_lowering.py`` lowers
the kernels to Triton IR on a CPU host (``jax.export`` for ``cuda``); on CPU they run with
``interpret=True`` and are tested against the XLA path and the float64 references.

Glossary: R records, K record width (≤ 16), T tiles, Pt pixels per tile, Bk pairs per block.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from insideout_jax.render import additive as ad
from insideout_jax.render import pairs as pr

__all__ = ["PallasKernel", "integrate", "build_segments", "default_window_capacity",
           "sorted_segment_sum", "check_power_of_two"]

_K = 16  # record columns padded to a power of two
_TRITON = plt.CompilerParams(num_warps=4, num_stages=1)


class PallasKernel(NamedTuple):
    """Per-pair evaluation of records on a tile inside the Pallas programs.

    ``value(r, aux, x0, y0, layer, tile_shape) → [Bk, Pt]``: r is a list of the first ``n_cols``
    record columns ([Bk] each), aux the ref of the shared constants (read as scalars ``aux[i]``),
    x0, y0, layer [] float32 the tile's pixel origin and layer, tile_shape = (th, tw) static.
    ``sums(r, aux, x0, y0, layer, tile_shape, ct [1, Pt]) → width [Bk] arrays``: per-pair sums of the
    VJP, added up per record. ``finish(records [R, K], sums [R, width]) → [R, K]``: record cotangents
    (None: the sums are the cotangents, width = K).
    """

    n_cols: int
    width: int
    value: Callable[..., jax.Array]
    sums: Callable[..., tuple]
    finish: Callable[..., jax.Array] | None = None


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def check_power_of_two(name: str, value: int) -> None:
    """ValueError naming ``name`` unless ``value`` is a positive power of two (Triton blocks)."""
    if int(value) < 1 or int(value) & (int(value) - 1):
        raise ValueError(f"{name} must be a power of two for the Pallas kernels, got {value}")


def default_window_capacity(n_records: int) -> int:
    """Pairs per window: 4 per record (most footprints touch ≤ 4 tiles of 16 px), rounded up to
    a power of two, at least 4096. Larger scenes run further windows."""
    return _next_pow2(max(4096, 4 * int(n_records)))


def build_segments(en: pr.PairEnumeration, layout: ad.TileLayout, capacity: int, pair_block: int,
                   start: jax.Array | int = 0):
    """Tile-sorted, segment-padded layout of the pairs [start, start + capacity).

    Args:
      en: the shared pair enumeration (:func:`insideout_jax.render.pairs.enumerate_pairs` in the
        records' own order).
      layout: static tile layout.
      capacity: static number of pair slots of the window.
      pair_block: Bk, rows per kernel block.
      start: [] int32 first slot of the window.

    Returns:
      rid: [capacity] int32 record of each pair (in slot order, so sorted; R for invalid slots),
      pos: [capacity] int32 row of each pair in the padded layout (= n_rows for invalid slots),
      valid: [capacity] bool, seg: [T_pad, 2] int32 (first row, number of blocks) per tile,
      n_rows: static padded row count.
    """
    nt = layout.n_tiles
    pairs, _ = pr.decode_slots(en, start, capacity, pr.first_position(en, start),
                               tiles_x=layout.tiles_x, tiles_y=layout.tiles_y, n_tiles=nt)
    rid = jnp.where(pairs.valid, pairs.record, en.order.shape[0])
    slot = jnp.arange(capacity, dtype=jnp.int32)
    s_tile, s_slot, s_valid = pr.sort_by_tile(pairs.tile, slot, pairs.valid, n_tiles=nt,
                                              key_bound=capacity)
    first, end = pr.tile_ranges(s_tile, nt)
    n_blocks = (end - first + pair_block - 1) // pair_block
    seg_start = (jnp.cumsum(n_blocks) - n_blocks) * pair_block
    n_rows = _next_pow2(capacity + nt * (pair_block - 1) + pair_block)
    tile_c = jnp.minimum(s_tile, nt - 1)
    pos_sorted = jnp.where(s_valid, seg_start[tile_c] + slot - first[tile_c], n_rows)
    pos = jnp.full((capacity,), n_rows, jnp.int32).at[jnp.where(s_valid, s_slot, capacity)].set(
        pos_sorted.astype(jnp.int32), mode="drop", unique_indices=True)
    t_pad = _next_pow2(nt)
    seg = jnp.zeros((t_pad, 2), jnp.int32).at[:nt].set(jnp.stack([seg_start, n_blocks], 1))
    return rid, pos, pairs.valid, seg, n_rows


def sorted_segment_sum(values: jax.Array, ids: jax.Array, n: int) -> jax.Array:
    """Deterministic per-segment sums of rows whose segment ids are sorted.

    A segmented associative scan (fixed reduction tree on every back end; no scatter-add, whose
    GPU lowering uses atomics), then each segment's last row is written with a unique-index set.

    Args:
      values: [P, F] float32 rows.
      ids: [P] int32 segment of each row, non-decreasing; rows with id ≥ n are dropped.
      n: number of segments.

    Returns:
      [n, F] sums (zero for empty segments).
    """
    if values.shape[0] == 0:
        return jnp.zeros((n, values.shape[1]), values.dtype)
    new = jnp.concatenate([jnp.ones(1, bool), ids[1:] != ids[:-1]])
    last = jnp.concatenate([ids[1:] != ids[:-1], jnp.ones(1, bool)])

    def combine(a, b):
        fa, va = a
        fb, vb = b
        return fa | fb, jnp.where(fb[:, None], vb, va + vb)

    _, csum = jax.lax.associative_scan(combine, (new, values))
    out = jnp.zeros((n + 1, values.shape[1]), values.dtype)
    return out.at[jnp.where(last, jnp.minimum(ids, n), n)].set(csum, mode="drop")[:n]


# ----------------------------------------------------------------------------------------------
# Programs (one per tile)
# ----------------------------------------------------------------------------------------------


def _tile_origin(t, layout):
    tx = t % layout.tiles_x
    ty = (t // layout.tiles_x) % layout.tiles_y
    layer = t // (layout.tiles_x * layout.tiles_y)
    f = lambda v: v.astype(jnp.float32)  # noqa: E731
    return f(tx * layout.tile_w), f(ty * layout.tile_h), f(layer)


def _fwd_kernel(seg_ref, aux_ref, rec_ref, buf_ref, out_ref, *, kernel, layout, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0, layer = _tile_origin(t, layout)
    ts = (layout.tile_h, layout.tile_w)

    def body(c, acc):
        rows = pl.ds(start + c * bk, bk)
        r = [rec_ref[k, rows] for k in range(kernel.n_cols)]
        return acc + jnp.sum(kernel.value(r, aux_ref, x0, y0, layer, ts), axis=0)

    acc = jax.lax.fori_loop(0, nblk, body, jnp.zeros((layout.tile_pixels,), jnp.float32))
    out_ref[...] = buf_ref[...] + acc  # buf_ref aliases out_ref: the earlier windows' sums


def _bwd_kernel(seg_ref, aux_ref, rec_ref, ct_ref, out_ref, *, kernel, layout, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0, layer = _tile_origin(t, layout)
    ts = (layout.tile_h, layout.tile_w)
    ct = ct_ref[...][None, :]

    def body(c, carry):
        rows = pl.ds(start + c * bk, bk)
        r = [rec_ref[k, rows] for k in range(kernel.n_cols)]
        for k, s in enumerate(kernel.sums(r, aux_ref, x0, y0, layer, ts, ct)):
            out_ref[k, rows] = s
        return carry

    jax.lax.fori_loop(0, nblk, body, 0)


def _params(interpret):
    return dict(interpret=interpret, compiler_params=None if interpret else _TRITON)


def _call_fwd(kernel, layout, bk, interpret, seg, aux, rows, buf):
    fn = functools.partial(_fwd_kernel, kernel=kernel, layout=layout, bk=bk)
    tile = pl.BlockSpec((None, layout.tile_pixels), lambda t: (t, 0))
    return pl.pallas_call(
        fn, grid=(layout.n_tiles,),
        in_specs=[pl.no_block_spec, pl.no_block_spec, pl.no_block_spec, tile], out_specs=tile,
        out_shape=jax.ShapeDtypeStruct(buf.shape, jnp.float32), input_output_aliases={3: 0},
        **_params(interpret))(seg, aux, rows, buf)


def _call_bwd(kernel, layout, bk, interpret, seg, aux, rows, ct):
    fn = functools.partial(_bwd_kernel, kernel=kernel, layout=layout, bk=bk)
    return pl.pallas_call(
        fn, grid=(layout.n_tiles,),
        in_specs=[pl.no_block_spec, pl.no_block_spec, pl.no_block_spec,
                  pl.BlockSpec((None, layout.tile_pixels), lambda t: (t, 0))],
        out_specs=pl.no_block_spec,
        out_shape=jax.ShapeDtypeStruct((_K, rows.shape[1]), jnp.float32),
        **_params(interpret))(seg, aux, rows, ct)


# ----------------------------------------------------------------------------------------------
# Windows and the custom VJP
# ----------------------------------------------------------------------------------------------


def _window(rec, en, layout, capacity, bk, w):
    rid, pos, valid, seg, n_rows = build_segments(en, layout, capacity, bk, w * capacity)
    rec16 = jnp.pad(rec, ((0, 1), (0, _K - rec.shape[1])))  # row R: zeros (invalid slots)
    rows = jnp.zeros((_K, n_rows), rec.dtype).at[:, pos].set(rec16[rid].T, mode="drop")
    return rid, pos, valid, seg, rows


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _integrate(kernel, layout, bk, interpret, capacity, rec, aux, boxes):
    return _integrate_fwd(kernel, layout, bk, interpret, capacity, rec, aux, boxes)[0]


def _integrate_fwd(kernel, layout, bk, interpret, capacity, rec, aux, boxes):
    en = pr.enumerate_pairs(boxes, run=capacity)

    def body(w, buf):
        _, _, _, seg, rows = _window(rec, en, layout, capacity, bk, w)
        return _call_fwd(kernel, layout, bk, interpret, seg, aux, rows, buf)

    buf0 = jnp.zeros((layout.n_tiles, layout.tile_pixels), jnp.float32)
    buf = jax.lax.fori_loop(0, pr.n_windows(en, capacity), body, buf0)
    buf = jnp.where(en.overflow, jnp.nan, buf)  # nothing summed: NaN
    return buf, (rec, aux, en)  # the backward replays the same enumeration


def _integrate_bwd(kernel, layout, bk, interpret, capacity, res, ct):
    rec, aux, en = res
    n_rec = rec.shape[0]

    def body(w, acc):
        rid, pos, valid, seg, rows = _window(rec, en, layout, capacity, bk, w)
        g_rows = _call_bwd(kernel, layout, bk, interpret, seg, aux, rows, ct)
        g_pairs = jnp.take(g_rows[:kernel.width], pos, axis=1, mode="fill", fill_value=0.0).T
        g_pairs = jnp.where(valid[:, None], g_pairs, 0.0)
        return acc + sorted_segment_sum(g_pairs, rid, n_rec)

    acc0 = jnp.zeros((n_rec, kernel.width), jnp.float32)
    sums = jax.lax.fori_loop(0, pr.n_windows(en, capacity), body, acc0)
    g = sums if kernel.finish is None else kernel.finish(rec, sums)
    return g, jnp.zeros_like(aux), None


_integrate.defvjp(_integrate_fwd, _integrate_bwd)


def integrate(kernel: PallasKernel, layout: ad.TileLayout, rec: jax.Array, aux: jax.Array,
              boxes: jax.Array, *, interpret: bool = False, capacity: int | None = None,
              pair_block: int = 16) -> jax.Array:
    """Additive tile accumulation of per-record footprints with Pallas kernels (jit-able).

    Args:
      kernel: static :class:`PallasKernel`.
      layout: static tile layout; tile_h and tile_w powers of two.
      rec: [R, K] float32 records, K ≤ 16 (differentiable).
      aux: [A] float32 constants shared by all records (not differentiated: zero cotangent).
      boxes: [R, 6] int32 tile boxes.
      interpret: run the kernels in the Pallas interpreter (CPU tests).
      capacity: static pairs per window (performance and memory only; more pairs run further
        windows). None: :func:`default_window_capacity` of R.
      pair_block: Bk, pairs per kernel block (static, a power of two; ≥ 16 for Triton).

    Returns:
      [T, Pt] float32 per-tile sums.

    Raises:
      ValueError: naming the argument, for blocks that are not powers of two, a record wider than
        16 columns or a non-positive capacity.
    """
    check_power_of_two("pair_block", pair_block)
    check_power_of_two("layout.tile_h", layout.tile_h)
    check_power_of_two("layout.tile_w", layout.tile_w)
    if rec.ndim != 2 or not kernel.n_cols <= rec.shape[1] <= _K:
        raise ValueError(f"rec must have shape [R, K] with {kernel.n_cols} ≤ K ≤ {_K}, got "
                         f"{rec.shape}")
    if aux.ndim != 1:
        raise ValueError(f"aux must be a 1-D array of constants, got shape {aux.shape}")
    cap = default_window_capacity(rec.shape[0]) if capacity is None else int(capacity)
    if cap < 1:
        raise ValueError(f"capacity must be positive or None, got {capacity}")
    if rec.shape[0] == 0:  # no records, no pairs: an empty sum (and a zero gradient)
        return jnp.zeros((layout.n_tiles, layout.tile_pixels), jnp.float32)
    return _integrate(kernel, layout, int(pair_block), bool(interpret), cap, rec,
                      jnp.asarray(aux, jnp.float32), boxes)
