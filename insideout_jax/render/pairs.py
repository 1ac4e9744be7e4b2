"""The tile engine's shared stages: tile boxes → one pair enumeration → (tile, key) sort → ranges.

Every rasterizer of the package goes through these stages: the RGB compositor
(:mod:`insideout_jax.render.tiles`, :mod:`insideout_jax.render.rgb`), the additive integrator of
the X-ray projector, the slice renderer and the voxelizer (:mod:`insideout_jax.render.additive`)
and both Pallas back ends (:mod:`insideout_jax.render.pallas_additive`,
:mod:`insideout_jax.render.pallas_rgb`).

**Boxes.** A record (one Gaussian in one view, plane stack or volume) touches a box of tiles,
``[R, 6]`` int32 ``(tx0, ty0, layer0, ntx, nty, n_layers)`` (an image is one layer); every
(record, tile) pair in the box is one pair. Tiles are numbered ``(layer · tiles_y + ty) · tiles_x
+ tx``.

**Enumeration** (:func:`enumerate_pairs`). The records are put in an *order* — front to back for
compositing, the records' own order for sums — in which every record that has pairs comes before
every record that has none. Pairs are enumerated position-major (all pairs of position 0, its tiles
layer-, row- and column-major inside its box, then position 1, …): the pair with *slot* s belongs
to the position p with ``starts[p] ≤ s < starts[p + 1]``.

**Decoding a run of slots** (:func:`decode_slots`). B consecutive slots belong to at most B
consecutive positions from the one that owns the first slot (each of them owns at least one pair),
so one scatter and one prefix sum over B + 1 slots find them, without a binary search per pair
(on XLA:CPU a ``searchsorted`` over R records costs ~16 small loop steps per chunk). The position
that owns the first slot is either carried from the previous run or found once
(:func:`first_position`).

**Sort** (:func:`sort_by_tile`). One packed uint32 key per pair, ``(tile << key_bits) | key``
(empty slots 0xFFFFFFFF), sorted by XLA's fast single-array sort; a two-operand lexicographic sort
when ``tile_bits + key_bits > 32``. The RGB compositor's key is the front-to-back rank; the Pallas
integrator's is the pair's slot in its window (a stable sort by tile). :func:`tile_ranges` turns
sorted tile ids into per-tile ``[start, end)`` ranges.

The additive XLA integrator consumes the decoded runs directly (its per-tile sums need no order,
and its scatter-add into the tile rows needs no ranges); every other consumer sorts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.render.pair_limit import pairs_overflow

__all__ = ["PairEnumeration", "PairSlots", "box_counts", "box_tile", "rects_to_boxes", "enumerate_pairs",
           "n_windows", "first_position", "decode_slots", "sort_by_tile", "tile_ranges"]

NO_START = np.iinfo(np.int32).max
"""Padding of the first-slot table: beyond every slot (< ``PAIR_LIMIT``)."""


def box_counts(boxes: jax.Array) -> jax.Array:
    """[R] int32 number of (record, tile) pairs of each box."""
    return boxes[:, 3] * boxes[:, 4] * boxes[:, 5]


def rects_to_boxes(rects: jax.Array) -> jax.Array:
    """[R, 4] (x0, y0, x1, y1) tile rectangles (x0 ≤ tx < x1; empty: all zero) → [R, 6] one-layer
    boxes."""
    ntx, nty = rects[:, 2] - rects[:, 0], rects[:, 3] - rects[:, 1]
    layers = ((ntx > 0) & (nty > 0)).astype(jnp.int32)
    zero = jnp.zeros_like(ntx)
    return jnp.stack([rects[:, 0], rects[:, 1], zero, ntx, nty, layers], axis=-1).astype(jnp.int32)


class PairEnumeration(NamedTuple):
    """Position-major enumeration of all (record, tile) pairs (see the module docstring).

    Attributes:
      order: [R] int32 record at each position (records with pairs first).
      boxes: [R, 6] int32 boxes by position.
      starts: [R + pad] int32 first slot of each position, then ``pad`` ≥ 1 entries of
        :data:`NO_START` (a run of B slots needs pad ≥ B + 1 to be decoded without copying).
      total: [] int32 number of pairs; 0 when ``overflow``.
      overflow: [] bool, the total reaches ``PAIR_LIMIT`` (int32 slots would wrap: do nothing,
        return NaN).
    """

    order: jax.Array
    boxes: jax.Array
    starts: jax.Array
    total: jax.Array
    overflow: jax.Array


def enumerate_pairs(boxes: jax.Array, order: jax.Array | None = None, *, run: int = 1
                    ) -> PairEnumeration:
    """The pair enumeration of ``boxes`` in ``order``.

    Args:
      boxes: [R, 6] int32 tile boxes (empty: a zero count).
      order: [R] int32 permutation (record at each position) with every record that has pairs
        before every record that has none; None: the records' own order with the empty ones moved
        to the end (a stable partition).
      run: the longest run of slots that will be decoded at once (pads ``starts`` for it).

    Returns:
      A :class:`PairEnumeration`.
    """
    counts = box_counts(boxes)
    if order is None:
        nz = counts > 0
        before_nz = jnp.cumsum(nz.astype(jnp.int32))
        before_z = jnp.cumsum((~nz).astype(jnp.int32))
        pos = jnp.where(nz, before_nz - 1, jnp.sum(nz, dtype=jnp.int32) + before_z - 1)
        order = jnp.zeros_like(pos).at[pos].set(jnp.arange(pos.shape[0], dtype=pos.dtype),
                                                unique_indices=True)
    order = order.astype(jnp.int32)
    ocounts = counts[order]
    incl = jnp.cumsum(ocounts, dtype=jnp.int32)
    starts = jnp.concatenate([incl - ocounts, jnp.full((int(run) + 1,), NO_START, jnp.int32)])
    overflow = pairs_overflow(counts)
    total = incl[-1] if incl.shape[0] else jnp.int32(0)
    return PairEnumeration(order, boxes[order], starts, jnp.where(overflow, 0, total), overflow)


def n_windows(en: PairEnumeration, capacity: int) -> jax.Array:
    """[] int32 windows of ``capacity`` slots that hold every pair: at least one, and 0 when the
    total reaches ``PAIR_LIMIT`` (nothing may run on wrapped counts)."""
    return jnp.where(en.overflow, 0, jnp.maximum(1, (en.total + capacity - 1) // capacity))


def first_position(en: PairEnumeration, start) -> jax.Array:
    """[] int32 position that owns slot ``start`` (one binary search; runs that follow each other
    carry it from :func:`decode_slots` instead)."""
    r = en.order.shape[0]
    p = jnp.searchsorted(en.starts[:r], jnp.asarray(start, jnp.int32), side="right") - 1
    return jnp.clip(p, 0, r - 1).astype(jnp.int32)


class PairSlots(NamedTuple):
    """A decoded run of slots.

    Attributes:
      position: [B] int32 position of each pair's record in the enumeration order.
      record: [B] int32 the record (``order[position]``).
      tx, ty, layer: [B] int32 the pair's tile coordinates.
      tile: [B] int32 flat tile id; ``n_tiles`` for invalid slots.
      local: [B] int32 index of the tile inside its record's box (slot − starts[position]).
      valid: [B] bool, the slot holds a pair (slot < total).
    """

    position: jax.Array
    record: jax.Array
    tx: jax.Array
    ty: jax.Array
    layer: jax.Array
    tile: jax.Array
    local: jax.Array
    valid: jax.Array


def box_tile(box: jax.Array, local: jax.Array, tiles_x: int, tiles_y: int, *,
             layers: bool = True):
    """Tile ``local`` (layer-, row-, column-major) of each box [B, 6] → tx, ty, layer, flat id.

    ``layers=False`` (static): every box has at most one layer, at layer 0 (an image tiling), so
    the layer arithmetic, two integer divisions per pair, is skipped.
    """
    ntx = jnp.maximum(box[:, 3], 1)
    tx = box[:, 0] + local % ntx
    if not layers:
        ty = box[:, 1] + local // ntx
        return tx, ty, jnp.zeros_like(tx), ty * tiles_x + tx
    nty = jnp.maximum(box[:, 4], 1)
    ty = box[:, 1] + (local // ntx) % nty
    layer = box[:, 2] + local // (ntx * nty)
    return tx, ty, layer, (layer * tiles_y + ty) * tiles_x + tx


def decode_slots(en: PairEnumeration, start, size: int, p0, *, tiles_x: int, tiles_y: int,
                 n_tiles: int) -> tuple[PairSlots, jax.Array]:
    """Slots [start, start + size) → their pairs, and the position that owns slot start + size.

    Args:
      en: from :func:`enumerate_pairs`.
      start: [] int32 first slot (may be traced).
      size: B, static.
      p0: [] int32 position that owns slot ``start`` (0 for slot 0, then carried, or
        :func:`first_position`).
      tiles_x, tiles_y, n_tiles: the tiling (static); every box lies inside it.

    Returns:
      (:class:`PairSlots` of length B, [] int32 position that owns the next run's first slot).
    """
    r = en.order.shape[0]
    starts = en.starts
    if starts.shape[0] - r < size + 1:  # not padded for runs this long: pad here (a copy)
        starts = jnp.concatenate([starts, jnp.full((size + 1,), NO_START, jnp.int32)])
    k0 = jnp.asarray(start, jnp.int32)
    win = jax.lax.dynamic_slice(starts, (p0,), (size + 1,))  # first slots of positions p0 … p0 + B
    # position p0 + j (j ≥ 1) starts after k0: mark its first slot (offsets ≥ B + 1 are dropped);
    # empty positions share their successor's start, so the running sum steps over them
    marks = jnp.zeros((size + 1,), jnp.int32).at[win[1:] - k0].add(1, mode="drop")
    csum = jnp.cumsum(marks)
    ploc = csum[:size]
    position = jnp.minimum(p0 + ploc, r - 1)
    slot = k0 + jnp.arange(size, dtype=jnp.int32)
    valid = slot < en.total
    local = slot - win[ploc]
    tx, ty, layer, tile = box_tile(en.boxes[position], local, tiles_x, tiles_y,
                                   layers=n_tiles > tiles_x * tiles_y)
    tile = jnp.where(valid, tile, n_tiles)
    pairs = PairSlots(position, en.order[position], tx, ty, layer, tile, local, valid)
    return pairs, jnp.minimum(p0 + csum[size], r - 1)


def sort_by_tile(tile: jax.Array, key: jax.Array, valid: jax.Array, *, n_tiles: int,
                 key_bound: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Sort pairs by (tile, key); keys are unique within a tile and in [0, key_bound).

    Returns:
      (tile, key, valid) in sorted order; invalid slots last, with tile ``n_tiles`` and key
      ``key_bound``.
    """
    key_bits = max(1, int(key_bound - 1).bit_length())
    if key_bits + int(n_tiles).bit_length() <= 32:
        packed = (tile.astype(jnp.uint32) << key_bits) | jnp.where(valid, key, 0).astype(jnp.uint32)
        packed = jnp.sort(jnp.where(valid, packed, jnp.uint32(0xFFFFFFFF)))
        s_valid = packed != jnp.uint32(0xFFFFFFFF)
        s_tile = jnp.where(s_valid, (packed >> key_bits).astype(jnp.int32), n_tiles)
        s_key = jnp.where(s_valid, (packed & jnp.uint32((1 << key_bits) - 1)).astype(jnp.int32),
                          key_bound)
        return s_tile, s_key, s_valid
    s_tile, s_key = jax.lax.sort((jnp.where(valid, tile, n_tiles), jnp.where(valid, key, key_bound)),
                                 num_keys=2)
    return s_tile, s_key, s_tile < n_tiles


def tile_ranges(tile_ids: jax.Array, n_tiles: int) -> tuple[jax.Array, jax.Array]:
    """Per-tile [start, end) ranges into a sorted pair list.

    Args:
      tile_ids: [P] int32 ascending (empty slots hold n_tiles).
      n_tiles: T.

    Returns:
      starts, ends: [T] int32.
    """
    bounds = jnp.searchsorted(tile_ids, jnp.arange(n_tiles + 1, dtype=tile_ids.dtype), side="left",
                              method="scan").astype(jnp.int32)
    return bounds[:-1], bounds[1:]
