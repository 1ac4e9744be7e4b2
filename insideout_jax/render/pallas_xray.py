"""Pallas kernels for the radiative rasterizer: same contract as the XLA path of ``xray.py``.

Layout (built with XLA ops): the (record, tile) pairs are enumerated in record order exactly as in
:func:`insideout_jax.render.additive.decode_pairs`, ``capacity`` pairs per *window*. The pairs of
one window are stably sorted by tile and scattered into a **segment-padded**, column-major array
[16, n_rows]: tile t owns rows [start_t, start_t + n_blocks_t · Bk), Bk = ``pair_block``, so every
block of Bk rows belongs to exactly one tile. One program per tile then

- forward: loops over its blocks, evaluates the records on its Pt pixels and sums them in
  registers (no atomics, no depth sort), adds its tile row once;
- backward: reads its tile's cotangent row, reduces each pair's per-pixel VJP terms to the 13 (cone)
  or 6 (parallel) sums of :func:`insideout_jax.render.xray._vjp_cone` / ``_vjp_parallel`` (taken
  directly about the record centre) and writes them to the pair's own column — disjoint writes, so
  the result is deterministic. XLA then sums the pair columns per record with a segmented
  associative scan (pairs in record order; no scatter-add, no atomics) and applies the kernel's
  ``finish`` once per record.

Windows are processed one after another until every pair is done (a ``while_loop`` over the
dynamic pair count), so the window capacity is a static performance knob and nothing is ever
truncated: no host-side count, usable under ``jit`` with any number of pairs.

Written for the Triton back end of Pallas (``compiler_params`` select it; JAX's default GPU back
end is Mosaic GPU): every array inside a kernel is a power-of-two block ([Bk], [Pt], [Bk, Pt]);
records are read column by column from a column-major array (no slices of non-power-of-two width,
no concatenation, no matmul); pixel coordinates come from ``iota``. ``tests/test_pallas_lowering.py``
lowers both kernels to Triton IR on a CPU host (``jax.export`` for ``cuda``); on CPU they run with
``interpret=True`` and are tested against the XLA path and the float64 references.

Glossary: R records, T tiles, Pt pixels per tile, Bk pairs per kernel block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from insideout_jax.render import additive as ad
from insideout_jax.render import xray as xr

__all__ = ["integrate_tiles", "build_segments", "default_window_capacity", "sorted_segment_sum"]

_K = 16  # record columns padded to a power of two
_N_REC = 14  # X-ray record width (xray.XRAY_RECORD_FIELDS)
_TRITON = plt.CompilerParams(num_warps=4, num_stages=1)


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 1).bit_length()


def default_window_capacity(n_records: int) -> int:
    """Pairs per window: 4 per record (16-px tiles: most X-ray footprints touch ≤ 4 tiles),
    rounded up to a power of two, at least 4096. Larger scenes run further windows."""
    return _next_pow2(max(4096, 4 * int(n_records)))


def build_segments(boxes: jax.Array, layout: ad.TileLayout, capacity: int, pair_block: int,
                   start: jax.Array | int = 0):
    """Tile-sorted, segment-padded layout of the pairs [start, start + capacity).

    Args:
      boxes: [R, 6] int32 tile boxes.
      layout: static tile layout.
      capacity: static number of pair slots of the window.
      pair_block: Bk, rows per kernel block.
      start: [] int32 first pair of the window (record-major enumeration).

    Returns:
      rid: [capacity] int32 record of each pair (record-major, so sorted; R for invalid slots),
      pos: [capacity] int32 row of each pair in the padded layout (= n_rows for invalid slots),
      valid: [capacity] bool, seg: [T_pad, 2] int32 (first row, number of blocks) per tile,
      n_rows: static padded row count, total: [] int32 number of pairs of all windows.
    """
    nt = layout.n_tiles
    n_rec = boxes.shape[0]
    incl = jnp.cumsum(ad.box_counts(boxes))
    total = incl[-1]
    k = start + jnp.arange(capacity, dtype=jnp.int32)
    rid, _, _, _, tile, valid = ad.decode_pairs(boxes, incl, k, layout)
    rid = jnp.where(valid, rid, n_rec)
    per_tile = jax.ops.segment_sum(valid.astype(jnp.int32), tile, nt + 1)[:nt]  # integers: exact
    n_blocks = (per_tile + pair_block - 1) // pair_block
    seg_start = (jnp.cumsum(n_blocks) - n_blocks) * pair_block
    order = jnp.argsort(tile, stable=True)
    sorted_tile = tile[order]
    first = jnp.searchsorted(sorted_tile, sorted_tile, side="left")
    n_rows = _next_pow2(capacity + nt * (pair_block - 1) + pair_block)
    seg_start_pad = jnp.concatenate([seg_start, jnp.full((1,), n_rows, jnp.int32)])
    pos_sorted = seg_start_pad[sorted_tile] + (jnp.arange(capacity) - first)
    pos_sorted = jnp.where(sorted_tile < nt, pos_sorted, n_rows)
    pos = jnp.zeros(capacity, jnp.int32).at[order].set(pos_sorted.astype(jnp.int32),
                                                       unique_indices=True)
    t_pad = _next_pow2(nt)
    seg = jnp.zeros((t_pad, 2), jnp.int32).at[:nt].set(jnp.stack([seg_start, n_blocks], 1))
    return rid, pos, valid, seg, n_rows, total


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
    p = values.shape[0]
    if p == 0:
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
# Kernels: records as 14 columns [Bk] read from the column-major rows (see the module docstring)
# ----------------------------------------------------------------------------------------------


def _tile_origin(t, layout):
    tx = t % layout.tiles_x
    ty = (t // layout.tiles_x) % layout.tiles_y
    return (tx * layout.tile_w).astype(jnp.float32), (ty * layout.tile_h).astype(jnp.float32)


def _pixel_terms(r, x0, y0, ts, cone: bool):
    """Per-pixel offsets, N, ε and m² of a block of records (columns r[k]: [Bk]).

    The arithmetic of ``xray._offsets``, ``_quad_n`` and ``_cone_terms`` (rsqrt form), written on
    columns so that every intermediate is a [Bk] or [Bk, Pt] block.
    """
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


def _load_records(rec_ref, rows):
    return [rec_ref[k, rows] for k in range(_N_REC)]


def _fwd_kernel(seg_ref, rec_ref, buf_ref, out_ref, *, layout, cone, k2, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0 = _tile_origin(t, layout)
    ts = (layout.tile_h, layout.tile_w)

    def body(c, acc):
        r = _load_records(rec_ref, pl.ds(start + c * bk, bk))
        _, _, _, _, rr, m2 = _pixel_terms(r, x0, y0, ts, cone)
        val = r[13][:, None] * jnp.exp(-0.5 * m2)
        if cone:
            val = val * rr
        return acc + jnp.sum(jnp.where(m2 <= k2, val, 0.0), axis=0)

    acc = jax.lax.fori_loop(0, nblk, body, jnp.zeros((layout.tile_pixels,), jnp.float32))
    out_ref[...] = buf_ref[...] + acc  # buf_ref aliases out_ref: the earlier windows' sums


def _moments6(p, dj, di):
    """Σₚ p·{1, Δj, Δi, Δj², ΔjΔi, Δi²} per row of [Bk, Pt] maps, as six [Bk] sums."""
    pj, pi = p * dj, p * di
    return (jnp.sum(p, 1), jnp.sum(pj, 1), jnp.sum(pi, 1), jnp.sum(pj * dj, 1),
            jnp.sum(pj * di, 1), jnp.sum(pi * di, 1))


def _bwd_kernel(seg_ref, rec_ref, ct_ref, out_ref, *, layout, cone, k2, bk):
    t = pl.program_id(0)
    start, nblk = seg_ref[t, 0], seg_ref[t, 1]
    x0, y0 = _tile_origin(t, layout)
    ts = (layout.tile_h, layout.tile_w)
    ct = ct_ref[...][None, :]

    def body(c, carry):
        rows = pl.ds(start + c * bk, bk)
        r = _load_records(rec_ref, rows)
        dj, di, n, eps, rr, m2 = _pixel_terms(r, x0, y0, ts, cone)
        e = jnp.where(m2 <= k2, jnp.exp(-0.5 * m2), 0.0)
        if cone:  # u = ct·e·a^(−5/2); sums of u·(N − a), u·a (moments) and u·a² (xray._vjp_cone)
            r2 = rr * rr
            u = ct * (e * (rr * r2 * r2))
            a = 1.0 + eps
            sums = _moments6(u * (n - a), dj, di) + _moments6(u * a, dj, di)
            sums = sums + (jnp.sum(u * a * a, 1),)
        else:  # moments of u = ct·e (xray._vjp_parallel)
            sums = _moments6(ct * e, dj, di)
        for k, s in enumerate(sums):
            out_ref[k, rows] = s
        return carry

    jax.lax.fori_loop(0, nblk, body, 0)


def _call_fwd(layout, cone, k2, bk, interpret, seg, rows, buf):
    fn = functools.partial(_fwd_kernel, layout=layout, cone=cone, k2=k2, bk=bk)
    tile = pl.BlockSpec((None, layout.tile_pixels), lambda t: (t, 0))
    return pl.pallas_call(
        fn, grid=(layout.n_tiles,),
        in_specs=[pl.no_block_spec, pl.no_block_spec, tile],
        out_specs=tile,
        out_shape=jax.ShapeDtypeStruct(buf.shape, jnp.float32),
        input_output_aliases={2: 0},
        interpret=interpret, compiler_params=None if interpret else _TRITON)(seg, rows, buf)


def _call_bwd(layout, cone, k2, bk, interpret, seg, rows, ct):
    fn = functools.partial(_bwd_kernel, layout=layout, cone=cone, k2=k2, bk=bk)
    return pl.pallas_call(
        fn, grid=(layout.n_tiles,),
        in_specs=[pl.no_block_spec, pl.no_block_spec,
                  pl.BlockSpec((None, layout.tile_pixels), lambda t: (t, 0))],
        out_specs=pl.no_block_spec,
        out_shape=jax.ShapeDtypeStruct(rows.shape, jnp.float32),
        interpret=interpret, compiler_params=None if interpret else _TRITON)(seg, rows, ct)


# ----------------------------------------------------------------------------------------------
# Windows and the custom VJP
# ----------------------------------------------------------------------------------------------


def _window(rec, boxes, layout, capacity, bk, w):
    rid, pos, valid, seg, n_rows, total = build_segments(boxes, layout, capacity, bk,
                                                         w * capacity)
    rec16 = jnp.pad(rec, ((0, 1), (0, _K - rec.shape[1])))  # row R: zeros (invalid slots)
    rows = jnp.zeros((_K, n_rows), rec.dtype).at[:, pos].set(rec16[rid].T, mode="drop")
    return rid, pos, valid, seg, rows


def _n_windows(boxes, capacity):
    total = jnp.sum(ad.box_counts(boxes))
    return jnp.maximum(1, (total + capacity - 1) // capacity)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5))
def _integrate(cone, layout, k2, bk, interpret, capacity, rec, boxes):
    return _integrate_fwd(cone, layout, k2, bk, interpret, capacity, rec, boxes)[0]


def _integrate_fwd(cone, layout, k2, bk, interpret, capacity, rec, boxes):
    def body(w, buf):
        _, _, _, seg, rows = _window(rec, boxes, layout, capacity, bk, w)
        return _call_fwd(layout, cone, k2, bk, interpret, seg, rows, buf)

    buf0 = jnp.zeros((layout.n_tiles, layout.tile_pixels), jnp.float32)
    buf = jax.lax.fori_loop(0, _n_windows(boxes, capacity), body, buf0)
    return buf, (rec, boxes)


def _integrate_bwd(cone, layout, k2, bk, interpret, capacity, res, ct):
    rec, boxes = res
    n_rec = rec.shape[0]
    width = 13 if cone else 6

    def body(w, acc):
        rid, pos, valid, seg, rows = _window(rec, boxes, layout, capacity, bk, w)
        g_rows = _call_bwd(layout, cone, k2, bk, interpret, seg, rows, ct)
        g_pairs = jnp.take(g_rows[:width], pos, axis=1, mode="fill", fill_value=0.0).T
        g_pairs = jnp.where(valid[:, None], g_pairs, 0.0)
        return acc + sorted_segment_sum(g_pairs, rid, n_rec)

    acc0 = jnp.zeros((n_rec, width), jnp.float32)
    sums = jax.lax.fori_loop(0, _n_windows(boxes, capacity), body, acc0)
    finish = xr.CONE_KERNEL.finish if cone else xr.PARALLEL_KERNEL.finish
    return finish(rec, jnp.float32(k2), sums), None


_integrate.defvjp(_integrate_fwd, _integrate_bwd)


def integrate_tiles(rec: jax.Array, boxes: jax.Array, layout: ad.TileLayout, *, mode: str,
                    cutoff_sigma: float, interpret: bool = False, capacity: int | None = None,
                    pair_block: int = 16) -> jax.Array:
    """Pallas version of ``sum_splat`` for X-ray records (jit-able; nothing is truncated).

    Args:
      rec: [R, 14] float32 X-ray records (``xray.XRAY_RECORD_FIELDS``).
      boxes: [R, 6] int32 tile boxes.
      layout: static tile layout; tile_h and tile_w powers of two.
      mode: "cone" or "parallel".
      cutoff_sigma: k (static float).
      interpret: run the kernels in the Pallas interpreter (CPU tests).
      capacity: static pairs per window (performance and memory only; more pairs run further
        windows). None: :func:`default_window_capacity` of R.
      pair_block: Bk, pairs per kernel block (static, a power of two ≥ 16 for Triton).

    Returns:
      [T, Pt] float32 per-tile sums.

    Raises:
      ValueError: naming the argument, for an unknown mode, a traced cutoff_sigma, or a pair
        block or tile that is not a power of two.
    """
    if mode not in ("cone", "parallel"):
        raise ValueError(f"mode must be 'cone' or 'parallel', got {mode!r}")
    try:
        k = float(cutoff_sigma)
    except jax.errors.ConcretizationTypeError as e:
        raise ValueError("cutoff_sigma must be a static Python float for the Pallas back end "
                         "(it is compiled into the kernels)") from e
    for name, v in (("pair_block", pair_block), ("layout.tile_h", layout.tile_h),
                    ("layout.tile_w", layout.tile_w)):
        if int(v) < 1 or int(v) & (int(v) - 1):
            raise ValueError(f"{name} must be a power of two for the Pallas kernels, got {v}")
    if rec.ndim != 2 or rec.shape[1] != _N_REC:
        raise ValueError(f"rec must have shape [R, {_N_REC}], got {rec.shape}")
    cap = default_window_capacity(rec.shape[0]) if capacity is None else int(capacity)
    if cap < 1:
        raise ValueError(f"capacity must be positive or None, got {capacity}")
    return _integrate(mode == "cone", layout, k * k, int(pair_block), bool(interpret), cap, rec,
                      boxes)
