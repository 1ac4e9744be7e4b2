"""Stages 2–3 of the RGB rasterizer: tile intersection, (tile, depth) sort, per-tile ranges.

Built on the tile engine's shared stages (:mod:`insideout_jax.render.pairs`: one box format, one
pair enumeration, one packed-key sort, one range search), which the additive integrator and both
Pallas back ends use too; nothing here knows about colour or density.

The image is cut into square tiles of ``tile_size`` px (row-major tile ids,
``tile = ty·tiles_x + tx``). A footprint (mean, half-extents) touches the tiles whose pixel centres
fall inside its axis-aligned box; every (tile, Gaussian) touch is one **pair**. Given the
footprints' ellipses, a window leaves out the box pairs whose tile the ellipse does not reach
(:func:`tile_touches`, exact; their slots stay empty, windows and pair count are the boxes').

**Pair list and windows.** Gaussians are ranked front to back (stable order of depth; ties by
index; Gaussians without pairs last; with ``depths=None`` the index order, Gaussians without pairs
last). Pairs are enumerated rank-major (:func:`~insideout_jax.render.pairs.enumerate_pairs`): all
pairs of rank 0 (its tiles row-major inside its box), then rank 1, … A fixed-capacity buffer holds
the slots ``[start, start + capacity)`` (a *window*, decoded by
:func:`~insideout_jax.render.pairs.decode_slots`). A window that does not hold every pair is not an
error: the caller processes the next window (``start += capacity``) and composites it behind the
first – exact, because windows are contiguous in rank, so every tile sees its Gaussians front to
back. ``n_pairs`` (the total) says how many windows are needed.

**Pair-count bound.** Slots are int32; totals are checked against :data:`PAIR_LIMIT` first
(:mod:`insideout_jax.render.pair_limit`, re-exported here).

**Sort key.** Inside a window the pairs are sorted by
:func:`~insideout_jax.render.pairs.sort_by_tile` with the rank as key:

    key = (tile << rank_bits) | rank          (uint32; empty slots get 0xFFFFFFFF)

with ``rank_bits = bit_length(N − 1)`` and ``tile_bits = bit_length(n_tiles)`` (tile id n_tiles is
kept free as the "empty" value). Sorting the keys alone (XLA's fast single-array sort) orders pairs
by tile, then front to back; the Gaussian is recovered as ``order[key & (2^rank_bits − 1)]``. Keys
are unique, so the order is fully determined. When ``tile_bits + rank_bits > 32`` a two-operand
lexicographic sort on (tile, rank) is used instead (same order, slower).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.render import pairs as pr
from insideout_jax.render.pair_limit import (  # re-exported
    PAIR_LIMIT,
    PairCountOverflow,
    pairs_overflow,
    raise_on_overflow,
)
from insideout_jax.render.pairs import tile_ranges  # noqa: F401  (re-exported)

__all__ = ["PAIR_LIMIT", "PairCountOverflow", "pairs_overflow", "raise_on_overflow",
           "TileGrid", "make_tile_grid", "tile_rects", "depth_order", "PairLayout", "pair_layout",
           "TileIntersections", "tile_touches", "window_intersections", "intersect_tiles", "tile_ranges",
           "pairs_to_gaussians", "pixel_centers", "tiles_to_image", "image_to_tiles"]


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Static description of the tiling of an image (hashable; use as a static argument).

    Attributes:
      width, height: image size W × H in pixels.
      tile_size: tile edge S in pixels.
    """

    width: int
    height: int
    tile_size: int = 16

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile_size)

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile_size)

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size


def make_tile_grid(width: int, height: int, tile_size: int = 16) -> TileGrid:
    """Validated :class:`TileGrid`.

    Raises:
      ValueError: if a size is not a positive integer.
    """
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        if int(v) != v or int(v) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    return TileGrid(int(width), int(height), int(tile_size))


def tile_rects(means2d: jax.Array, extents: jax.Array, grid: TileGrid) -> jax.Array:
    """Tile boxes touched by footprints.

    Pixel column j (centre j + 0.5) is touched when |j + 0.5 − u| ≤ e_u; likewise rows.

    Args:
      means2d: [N, 2] (u, v) px.
      extents: [N, 2] half-extents (e_u, e_v) px; a negative value culls the Gaussian.
      grid: the tiling.

    Returns:
      [N, 4] int32 (x0, y0, x1, y1): tiles x0 ≤ tx < x1, y0 ≤ ty < y1 (empty: all zero).
    """
    means2d = jax.lax.stop_gradient(means2d)
    extents = jax.lax.stop_gradient(extents)
    size = jnp.asarray([grid.width, grid.height], means2d.dtype)
    lo = jnp.ceil(means2d - extents - 0.5)
    hi = jnp.floor(means2d + extents - 0.5)
    ok = jnp.all((extents >= 0) & (hi >= 0) & (lo <= size - 1) & (lo <= hi)
                 & jnp.isfinite(means2d) & jnp.isfinite(extents), axis=-1)
    lo = jnp.clip(jnp.nan_to_num(lo), 0, size - 1).astype(jnp.int32) // grid.tile_size
    hi = jnp.clip(jnp.nan_to_num(hi), 0, size - 1).astype(jnp.int32) // grid.tile_size + 1
    rect = jnp.concatenate([lo, hi], axis=-1)
    return jnp.where(ok[:, None], rect, 0)


class PairLayout(NamedTuple):
    """Rank-major enumeration of all (tile, Gaussian) pairs (see the module docstring).

    Attributes:
      rects: [N, 4] int32 tile boxes (x0, y0, x1, y1) per Gaussian.
      enumeration: the shared :class:`~insideout_jax.render.pairs.PairEnumeration` of the
        one-layer boxes in front-to-back order (position = rank).
    """

    rects: jax.Array
    enumeration: pr.PairEnumeration

    @property
    def order(self) -> jax.Array:
        """[N] int32, order[r] = Gaussian of rank r (front to back; Gaussians without pairs last)."""
        return self.enumeration.order

    @property
    def n_pairs(self) -> jax.Array:
        """[] int32 total number of pairs; 0 when ``overflow``."""
        return self.enumeration.total

    @property
    def overflow(self) -> jax.Array:
        """[] bool, the total reaches :data:`PAIR_LIMIT` (render nothing, return NaN)."""
        return self.enumeration.overflow


def _ordered_bits(x: jax.Array) -> jax.Array:
    """uint32 keys that sort like the float32 values (sign-magnitude → two's-order trick)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    neg = (bits >> 31) == 1
    return jnp.where(neg, ~bits, bits | jnp.uint32(0x80000000))


def depth_order(depths: jax.Array) -> jax.Array:
    """Stable front-to-back order: order[r] = index of the Gaussian with rank r.

    Equals ``argsort(depths, stable=True)`` (ties by index). For float32 depths it is computed as
    an LSD radix sort made of XLA's fast single-array uint32 sorts: with i = bit_length(N − 1)
    index bits, each pass sorts the keys ``(digit << i) | position`` of the next 32 − i bits of
    the depth (least significant digit first); the position makes every pass stable and the keys
    unique. Two passes for N ≤ 65 536, three up to 2²⁰. Other dtypes use ``argsort``.

    Args:
      depths: [N] depths (+inf for Gaussians that produce no pairs).

    Returns:
      [N] int32 permutation.
    """
    n = depths.shape[0]
    idx_bits = max(1, int(n - 1).bit_length())
    if depths.dtype != jnp.float32 or idx_bits > 24:
        return jnp.argsort(depths, stable=True).astype(jnp.int32)
    key = _ordered_bits(depths)
    digit_bits = 32 - idx_bits
    position = jnp.arange(n, dtype=jnp.uint32)
    perm = jnp.arange(n, dtype=jnp.int32)
    for shift in range(0, 32, digit_bits):
        digit = (key[perm] >> shift) & jnp.uint32((1 << digit_bits) - 1)
        skey = jnp.sort((digit << idx_bits) | position)
        perm = perm[(skey & jnp.uint32((1 << idx_bits) - 1)).astype(jnp.int32)]
    return perm


def pair_layout(means2d: jax.Array, extents: jax.Array, depths: jax.Array | None,
                grid: TileGrid, *, capacity: int = 1) -> PairLayout:
    """Tile boxes, front-to-back ranks and the pair enumeration.

    Args:
      means2d: [N, 2] (u, v) px.
      extents: [N, 2] half-extents px (negative: culled).
      depths: [N] sort depth (smaller is in front), or None for index order.
      grid: the tiling.
      capacity: the windows' size (pads the enumeration so that windows decode without a copy).

    Returns:
      A :class:`PairLayout`.
    """
    rects = tile_rects(means2d, extents, grid)
    boxes = pr.rects_to_boxes(rects)
    order = None
    if depths is not None:
        counts = pr.box_counts(boxes)
        d = jax.lax.stop_gradient(depths)
        # every Gaussian with pairs before every one without (a non-finite depth sorts last of them)
        key = jnp.where(counts > 0, jnp.where(jnp.isfinite(d), d, jnp.finfo(d.dtype).max), jnp.inf)
        order = depth_order(key)
    return PairLayout(rects, pr.enumerate_pairs(boxes, order, run=capacity))


class TileIntersections(NamedTuple):
    """One window of pairs, sorted by (tile, rank).

    Attributes:
      tile_ids: [P] int32 ascending tile ids; empty slots hold n_tiles (at the end).
      gauss_ids: [P] int32 Gaussian index per pair; empty slots hold N.
      ranks: [P] int32 front-to-back rank per pair; empty slots hold N.
      slots: [P] int32 position of the pair in the window's rank-major order (a permutation of
        0..P−1), used for deterministic per-Gaussian reductions.
      n_pairs: [] int32 total number of pairs over all windows.
    """

    tile_ids: jax.Array
    gauss_ids: jax.Array
    ranks: jax.Array
    slots: jax.Array
    n_pairs: jax.Array


def tile_touches(ellipses: jax.Array, tile: jax.Array, grid: TileGrid) -> jax.Array:
    """[P] bool: the ellipse {d : dᵀ A d ≤ q_max} around (u, v) reaches the rectangle spanned by
    the tile's pixel centres (exact: the minimum of q(d) = a·dx² + 2b·dx·dy + c·dy² over it is 0
    with the centre inside, else the least of the four edges' clamped 1D minima).

    Args:
      ellipses: [P, 6] (u, v, a, b, c, q_max) per pair, px (conic A = [[a, b], [b, c]] positive
        definite; q_max < 0: touches nothing).
      tile: [P] int32 tile ids.
      grid: the tiling.
    """
    e = jax.lax.stop_gradient(ellipses)
    u, v, a, b, c, q_max = (e[:, k] for k in range(6))
    ts = grid.tile_size
    x0 = (tile % grid.tiles_x * ts).astype(e.dtype) + 0.5 - u  # dx range [x0, x1]
    y0 = (tile // grid.tiles_x * ts).astype(e.dtype) + 0.5 - v
    x1, y1 = x0 + (ts - 1), y0 + (ts - 1)
    safe_a, safe_c = jnp.where(a > 0, a, 1.0), jnp.where(c > 0, c, 1.0)

    def q(dx, dy):
        return a * dx * dx + 2 * b * dx * dy + c * dy * dy

    def on_x_edge(dx):  # dx fixed, dy free in [y0, y1]
        return q(dx, jnp.clip(-b * dx / safe_c, y0, y1))

    def on_y_edge(dy):
        return q(jnp.clip(-b * dy / safe_a, x0, x1), dy)

    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    q_min = jnp.minimum(jnp.minimum(on_x_edge(x0), on_x_edge(x1)),
                        jnp.minimum(on_y_edge(y0), on_y_edge(y1)))
    return (q_max >= 0) & (inside | (q_min <= q_max))


def window_intersections(layout: PairLayout, grid: TileGrid, *, capacity: int,
                         start: jax.Array | int = 0, ellipses: jax.Array | None = None
                         ) -> TileIntersections:
    """Sorted pairs of the window of slots [start, start + capacity).

    Args:
      layout: from :func:`pair_layout`.
      grid: the tiling.
      capacity: P, static number of slots in the window.
      start: first global slot of the window (int32 scalar, may be traced).
      ellipses: optional [N, 6] (u, v, a, b, c, q_max) per Gaussian: the box pairs whose tile the
        ellipse does not reach (:func:`tile_touches`) are left out of the window's tile lists
        (their slots stay empty), so the compositing loops never see them.

    Returns:
      A :class:`TileIntersections` of length P.
    """
    en = layout.enumeration
    n = en.order.shape[0]
    t = grid.n_tiles
    start = jnp.asarray(start, jnp.int32)
    pairs, _ = pr.decode_slots(en, start, capacity, pr.first_position(en, start),
                               tiles_x=grid.tiles_x, tiles_y=grid.tiles_y, n_tiles=t)
    used = pairs.valid
    if ellipses is not None:
        used = used & tile_touches(ellipses[pairs.record], pairs.tile, grid)
    s_tile, s_rank, s_used = pr.sort_by_tile(pairs.tile, pairs.position, used, n_tiles=t,
                                             key_bound=n)
    window_slot = jnp.arange(capacity, dtype=jnp.int32)
    rank_c = jnp.minimum(s_rank, n - 1)
    s_gauss = jnp.where(s_used, en.order[rank_c], n)
    # Window slot of each sorted pair (inverse of the sort permutation), recomputed from its
    # (tile, rank): slot = starts[rank] + index of the tile inside the Gaussian's box − start.
    s_box = en.boxes[rank_c]
    s_local = (s_tile // grid.tiles_x - s_box[:, 1]) * s_box[:, 3] + s_tile % grid.tiles_x - s_box[:, 0]
    s_slot = en.starts[rank_c] + s_local - start
    # Empty slots: the sorted tail takes the empty window slots in order (a permutation).
    if ellipses is None:
        s_slot = jnp.where(s_used, s_slot, window_slot)
    else:
        free = jnp.nonzero(~used, size=capacity, fill_value=capacity - 1)[0].astype(jnp.int32)
        n_used = jnp.sum(used, dtype=jnp.int32)
        s_slot = jnp.where(s_used, s_slot, free[jnp.clip(window_slot - n_used, 0, capacity - 1)])
    return TileIntersections(s_tile, s_gauss, s_rank, s_slot, en.total)


def intersect_tiles(means2d: jax.Array, extents: jax.Array, depths: jax.Array | None, *,
                    grid: TileGrid, capacity: int, start: jax.Array | int = 0
                    ) -> TileIntersections:
    """:func:`pair_layout` followed by :func:`window_intersections` (one window).

    Args:
      means2d: [N, 2] (u, v) px.
      extents: [N, 2] half-extents px (negative: culled).
      depths: [N] sort depths (front = small), or None for index order.
      grid: the tiling.
      capacity: P slots in the window (static).
      start: first slot of the window.
    """
    layout = pair_layout(means2d, extents, depths, grid)
    return window_intersections(layout, grid, capacity=capacity, start=start)


def pairs_to_gaussians(values: jax.Array, isect: TileIntersections, n: int) -> jax.Array:
    """Deterministic per-Gaussian sums of per-pair values.

    On CPU a sequential segment sum (XLA CPU applies scatter updates in order, so the result is
    reproducible). Elsewhere the pairs are permuted to rank-major order (each Gaussian's pairs
    contiguous) and summed with a segmented associative scan, whose reduction tree is fixed – no
    atomics, no order dependence.

    Args:
      values: [P, F] per-pair values (empty slots must hold zeros).
      isect: the window the values belong to.
      n: N, number of Gaussians.

    Returns:
      [N, F] sums.
    """
    if jax.default_backend() == "cpu":
        return jax.ops.segment_sum(values, isect.gauss_ids, num_segments=n + 1)[:n]
    return _pairs_to_gaussians_scan(values, isect, n)


def _pairs_to_gaussians_scan(values: jax.Array, isect: TileIntersections, n: int) -> jax.Array:
    """Rank-major permutation + segmented associative scan (deterministic on every back end)."""
    p = values.shape[0]
    rank_major = jnp.zeros_like(values).at[isect.slots].set(values, unique_indices=True)
    ranks = jnp.full((p,), n, jnp.int32).at[isect.slots].set(isect.ranks, unique_indices=True)
    gauss = jnp.full((p,), n, jnp.int32).at[isect.slots].set(isect.gauss_ids, unique_indices=True)
    # Empty slots (zero values) may sit inside a Gaussian's run (pairs left out by the ellipse
    # test): they join the run before them, so every run is one Gaussian's, unbroken.
    src = jax.lax.cummax(jnp.where(ranks < n, jnp.arange(p, dtype=jnp.int32), -1))
    ranks = jnp.where(src >= 0, ranks[jnp.maximum(src, 0)], n)
    gauss = jnp.where(src >= 0, gauss[jnp.maximum(src, 0)], n)
    first = jnp.concatenate([jnp.ones(1, bool), ranks[1:] != ranks[:-1]])
    last = jnp.concatenate([ranks[1:] != ranks[:-1], jnp.ones(1, bool)])

    def combine(a, b):
        fa, va = a
        fb, vb = b
        return fa | fb, jnp.where(fb[:, None], vb, va + vb)

    _, csum = jax.lax.associative_scan(combine, (first, rank_major))
    # The last pair of each Gaussian's run holds its total; each Gaussian has one last pair.
    out = jnp.zeros((n + 1, values.shape[1]), values.dtype)
    return out.at[jnp.where(last, gauss, n)].set(csum, mode="drop")[:n]


def pixel_centers(grid: TileGrid, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Pixel-centre coordinates in tile-major layout.

    Returns:
      u, v: [T, S²] pixel centres (j + 0.5, i + 0.5) of every tile's pixels, row-major in the tile.
    """
    s = grid.tile_size
    ty, tx = np.divmod(np.arange(grid.n_tiles), grid.tiles_x)
    ly, lx = np.divmod(np.arange(s * s), s)
    u = (tx[:, None] * s + lx[None, :] + 0.5).astype(np.float64)
    v = (ty[:, None] * s + ly[None, :] + 0.5).astype(np.float64)
    return jnp.asarray(u, dtype), jnp.asarray(v, dtype)


def tiles_to_image(x: jax.Array, grid: TileGrid) -> jax.Array:
    """[T, S², ...] tile-major values → [H, W, ...] image (tiles cropped at the border)."""
    s = grid.tile_size
    rest = x.shape[2:]
    img = x.reshape((grid.tiles_y, grid.tiles_x, s, s) + rest)
    img = jnp.moveaxis(img, 2, 1).reshape((grid.tiles_y * s, grid.tiles_x * s) + rest)
    return img[: grid.height, : grid.width]


def image_to_tiles(img: jax.Array, grid: TileGrid) -> jax.Array:
    """[H, W, ...] image → [T, S², ...] tile-major values (zero padding outside the image)."""
    s = grid.tile_size
    rest = img.shape[2:]
    pad = [(0, grid.tiles_y * s - grid.height), (0, grid.tiles_x * s - grid.width)]
    img = jnp.pad(img, pad + [(0, 0)] * len(rest))
    x = img.reshape((grid.tiles_y, s, grid.tiles_x, s) + rest)
    return jnp.moveaxis(x, 2, 1).reshape((grid.n_tiles, s * s) + rest)
