"""Additive tile engine: order-independent accumulation of per-record footprints on pixel tiles.

Used by the radiative rasterizer (:mod:`insideout_jax.render.xray`) and the slice renderer /
voxelizer (:mod:`insideout_jax.render.slices`). A *record* (one Gaussian in one view or volume) has
a box of tiles (tx0, ty0, layer0, ntx, nty, n_layers); every (record, tile) pair is evaluated on the
tile's pixels by a :class:`SplatKernel` and the values are summed per tile. No depth order exists or
is needed (the quantities are sums).

Pairs come from the tile engine's shared enumeration (:mod:`insideout_jax.render.pairs`, the
records in their own order with those that have pairs first), decoded ``chunk`` slots per step of
a ``while_loop`` whose trip count is the dynamic number of pairs: nothing is ever truncated and no
pair capacity has to be guessed or synchronised to the host. The sums need no order, so the chunks
are not sorted by tile (the Pallas engine sorts them, for its per-tile programs). Each step adds
its pairs' rows into the per-tile buffer. The backward pass (``jax.custom_vjp``) replays the same
chunks: it reads each pair's tile cotangent row, computes the pair's contribution with the
kernel's hand-written VJP (or ``jax.vjp`` of its ``eval``) and adds it to its record (segment
sum, indices sorted); an optional per-record ``finish`` turns the summed contributions into
record cotangents once, after the loop. Both loops run in a fixed order, so results are bitwise
reproducible on CPU. On a GPU, XLA lowers the scatter-adds with atomics, so sums may be reordered
from run to run (float32 round-off; tested tolerance 1e-6 relative in ``tests/test_gpu.py``); the
Pallas engine (:mod:`insideout_jax.render.pallas_additive`, the default there) is deterministic.

Hand-written VJPs reduce pixel sums to *moments* Σₚ g·lx^i·ly^j of one map g per pair, computed
with one matmul against pair-independent monomials of the tile-centred pixel offsets
(:func:`raw_moments`, :func:`tile_moments`).

Glossary: R records, T tiles (= n_layers · tiles_y · tiles_x), Pt pixels per tile, B pairs per
chunk, K record width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import xla
from insideout_jax.render import pairs as pr
from insideout_jax.render.pairs import box_counts  # noqa: F401  (re-exported)

__all__ = ["TileLayout", "tile_local_coords", "pixel_bounds_to_boxes", "box_counts",
           "SplatKernel", "vjp_width", "sum_splat", "raw_moments", "shift_moments",
           "tile_moments"]

_BOUND_MARGIN_PX = 0.01  # absorbs float32 rounding of exact footprint bounds

@dataclasses.dataclass(frozen=True)
class TileLayout:
    """Static description of the tiled output buffer [n_layers · tiles_y · tiles_x, channels · th · tw]
    (a tile's row holds its ``channels`` maps one after the other, each row-major)."""

    n_layers: int
    tiles_y: int
    tiles_x: int
    tile_h: int = 16
    tile_w: int = 16
    chunk: int = 1024
    channels: int = 1

    @property
    def n_tiles(self) -> int:
        return self.n_layers * self.tiles_y * self.tiles_x

    @property
    def tile_pixels(self) -> int:
        return self.tile_h * self.tile_w

    @property
    def row_width(self) -> int:
        """Values per tile in the buffer (channels · th · tw)."""
        return self.channels * self.tile_pixels

    def untile_channels(self, buf: jax.Array, height: int, width: int) -> jax.Array:
        """[T, channels · Pt] → [channels, n_layers, height, width] (crops the partial border tiles)."""
        c = self.channels
        x = buf.reshape(self.n_layers, self.tiles_y, self.tiles_x, c, self.tile_h, self.tile_w)
        x = x.transpose(3, 0, 1, 4, 2, 5).reshape(c, self.n_layers, self.tiles_y * self.tile_h,
                                                   self.tiles_x * self.tile_w)
        return x[:, :, :height, :width]

    def untile(self, buf: jax.Array, height: int, width: int) -> jax.Array:
        """[T, Pt] → [n_layers, height, width] of a one-channel layout (:meth:`untile_channels`)."""
        if self.channels != 1:
            raise ValueError(f"untile is for one channel; this layout has {self.channels}: use untile_channels")
        return self.untile_channels(buf, height, width)[0]

    def tile(self, img: jax.Array) -> jax.Array:
        """[n_layers, H, W] → [T, Pt] (zero-padded), the inverse of :meth:`untile`."""
        h, w = img.shape[1:]
        img = jnp.pad(img, ((0, 0), (0, self.tiles_y * self.tile_h - h),
                            (0, self.tiles_x * self.tile_w - w)))
        x = img.reshape(self.n_layers, self.tiles_y, self.tile_h, self.tiles_x, self.tile_w)
        return x.transpose(0, 1, 3, 2, 4).reshape(self.n_tiles, self.tile_pixels)


def tile_local_coords(tile_shape: tuple[int, int], *, centred: bool = False
                      ) -> tuple[jax.Array, jax.Array]:
    """[Pt] float32 column and row offsets (lx, ly) of the pixels of a (th, tw) tile, row-major.

    Built from ``iota`` (no captured constants, so kernels can use it inside Pallas). With
    ``centred`` the offsets are taken from the tile centre ((tw − 1)/2, (th − 1)/2).
    """
    th, tw = tile_shape
    idx = jax.lax.iota(jnp.int32, th * tw)
    lx = (idx % tw).astype(jnp.float32)
    ly = (idx // tw).astype(jnp.float32)
    if centred:
        lx, ly = lx - (tw - 1) / 2.0, ly - (th - 1) / 2.0
    return lx, ly


def pixel_bounds_to_boxes(lo_x, hi_x, lo_y, hi_y, layer0, n_layer, ok, layout: TileLayout,
                          width: int, height: int) -> jax.Array:
    """Tile boxes of records from inclusive pixel-coordinate bounds.

    Args:
      lo_x, hi_x, lo_y, hi_y: [R] float32 bounds of the footprint in pixel coordinates (pixel
        centres at integers); pixels with lo ≤ coordinate ≤ hi are covered.
      layer0, n_layer: [R] int32 first layer and number of layers.
      ok: [R] bool; False records get an empty box.

    Returns:
      [R, 6] int32 (tx0, ty0, layer0, ntx, nty, n_layer); an empty box has a zero count.
    """
    big = float(max(width, height) + 2)
    x0 = jnp.ceil(jnp.clip(lo_x - _BOUND_MARGIN_PX, -1.0, big)).astype(jnp.int32)
    x1 = jnp.floor(jnp.clip(hi_x + _BOUND_MARGIN_PX, -1.0, big)).astype(jnp.int32)
    y0 = jnp.ceil(jnp.clip(lo_y - _BOUND_MARGIN_PX, -1.0, big)).astype(jnp.int32)
    y1 = jnp.floor(jnp.clip(hi_y + _BOUND_MARGIN_PX, -1.0, big)).astype(jnp.int32)
    x0, x1 = jnp.maximum(x0, 0), jnp.minimum(x1, width - 1)
    y0, y1 = jnp.maximum(y0, 0), jnp.minimum(y1, height - 1)
    ok = ok & (x1 >= x0) & (y1 >= y0) & (n_layer > 0)
    tx0, tx1 = x0 // layout.tile_w, x1 // layout.tile_w
    ty0, ty1 = y0 // layout.tile_h, y1 // layout.tile_h
    ntx = jnp.where(ok, tx1 - tx0 + 1, 0)
    nty = jnp.where(ok, ty1 - ty0 + 1, 0)
    nl = jnp.where(ok, n_layer, 0)
    z = jnp.zeros_like(tx0)
    return jnp.stack([jnp.where(ok, tx0, z), jnp.where(ok, ty0, z), jnp.where(ok, layer0, z),
                      ntx, nty, nl], axis=-1).astype(jnp.int32)


class SplatKernel(NamedTuple):
    """Per-pixel evaluation of records on tiles, and optionally its hand-written VJP.

    ``eval(records [B, K], aux, x0 [B], y0 [B], layer [B], tile_shape) → [B, Pt]``: the value of
    each pair's record on the pixels of its tile (pixel (x0 + lx, y0 + ly) of layer ``layer``, with
    (lx, ly) = :func:`tile_local_coords` (tile_shape), tile_shape = (th, tw) static); [B, channels ·
    Pt] (the channels' maps one after the other) for a multi-channel layout, ``ct`` likewise.
    ``vjp(records, aux, x0, y0, layer, tile_shape, ct [B, Pt]) → [B, M]``: per-pair contributions
    that are summed per record; when None, ``jax.vjp`` of ``eval`` is used.
    ``finish(records [R, K], aux, sums [R, M]) → [R, K]``: record cotangents from the per-record
    sums (None: the sums are the cotangents, M = K). A kernel whose VJP is a fixed function of a
    few pixel moments per record returns those moments from ``vjp`` (taken about the record's own
    centre, so that they add up over its tiles) and does the per-record algebra once in ``finish``,
    instead of once per (record, tile) pair inside the loop.
    """

    eval: Callable[..., jax.Array]
    vjp: Callable[..., jax.Array] | None = None
    finish: Callable[..., jax.Array] | None = None


def vjp_width(kernel: SplatKernel, records: jax.Array, aux, tile_shape, batch: int, channels: int = 1
              ) -> int:
    """Static width M of ``kernel.vjp``'s per-pair output (K when the kernel has no ``finish``)."""
    if kernel.finish is None:
        return records.shape[1]
    i32 = jax.ShapeDtypeStruct((batch,), jnp.int32)
    out = jax.eval_shape(
        lambda r, a, x0, y0, la, ct: kernel.vjp(r, a, x0, y0, la, tile_shape, ct),
        jax.ShapeDtypeStruct((batch, records.shape[1]), records.dtype), aux, i32, i32, i32,
        jax.ShapeDtypeStruct((batch, channels * tile_shape[0] * tile_shape[1]), records.dtype))
    return out.shape[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def sum_splat(kernel: SplatKernel, layout: TileLayout, records: jax.Array, aux, boxes: jax.Array
              ) -> jax.Array:
    """Additive tile accumulation of per-record footprints, with a chunked custom VJP.

    Args:
      kernel: static :class:`SplatKernel`.
      layout: static :class:`TileLayout`.
      records: [R, K] float32 per-record coefficients (differentiable).
      aux: pytree of arrays shared by all records (not differentiated: zero cotangent).
      boxes: [R, 6] int32 tile boxes from :func:`pixel_bounds_to_boxes`.

    Returns:
      [T, channels · Pt] float32 per-tile sums.
    """
    return _sum_splat_fwd_impl(kernel, layout, records, aux,
                               pr.enumerate_pairs(boxes, run=layout.chunk))


def _decode_chunk(en: pr.PairEnumeration, layout: TileLayout, c, p0):
    """Pairs of chunk c: (position, tile origin x0, y0 in pixels, layer, tile, valid), next p0."""
    pairs, p1 = pr.decode_slots(en, c * layout.chunk, layout.chunk, p0, tiles_x=layout.tiles_x,
                                tiles_y=layout.tiles_y, n_tiles=layout.n_tiles)
    return (pairs.position, pairs.tx * layout.tile_w, pairs.ty * layout.tile_h, pairs.layer,
            pairs.tile, pairs.valid, p1)


def _n_chunks(en: pr.PairEnumeration, chunk: int) -> jax.Array:
    return (en.total + chunk - 1) // chunk  # total is 0 on overflow: no chunk runs


def _sum_splat_fwd_impl(kernel, layout, records, aux, en: pr.PairEnumeration):
    if records.shape[0] == 0:  # no records, no pairs: nothing to decode
        return jnp.zeros((layout.n_tiles, layout.row_width), records.dtype)
    crec = records[en.order]
    ts = (layout.tile_h, layout.tile_w)

    def body(c, carry):
        buf, r0 = carry
        rid, x0, y0, layer, tile, valid, r0 = _decode_chunk(en, layout, c, r0)
        vals = kernel.eval(crec[rid], aux, x0, y0, layer, ts)
        vals = jnp.where(valid[:, None], vals, 0.0)
        return buf.at[tile].add(vals, mode="drop"), r0

    buf0 = jnp.zeros((layout.n_tiles, layout.row_width), records.dtype)
    buf = jax.lax.fori_loop(0, _n_chunks(en, layout.chunk), body, (buf0, jnp.int32(0)))[0]
    return jnp.where(en.overflow, jnp.nan, buf)  # wrapped counts: NaN, never a partial sum


def _sum_splat_fwd(kernel, layout, records, aux, boxes):
    en = pr.enumerate_pairs(boxes, run=layout.chunk)  # the backward replays the same enumeration
    return _sum_splat_fwd_impl(kernel, layout, records, aux, en), (records, aux, en)


def _sum_splat_bwd(kernel, layout, res, ct):
    records, aux, en = res
    if records.shape[0] == 0:
        return jnp.zeros_like(records), jax.tree_util.tree_map(jnp.zeros_like, aux), None
    crec = records[en.order]
    ts = (layout.tile_h, layout.tile_w)
    ct_pad = jnp.concatenate([ct, jnp.zeros((1, ct.shape[1]), ct.dtype)], axis=0)

    def body(c, carry):
        acc, r0 = carry
        rid, x0, y0, layer, tile, valid, r0 = _decode_chunk(en, layout, c, r0)
        ct_pairs = ct_pad[tile]  # invalid pairs read the zero row
        rec = crec[rid]
        if kernel.vjp is not None:
            g = kernel.vjp(rec, aux, x0, y0, layer, ts, ct_pairs)
        else:
            _, vjp = jax.vjp(lambda r: kernel.eval(r, aux, x0, y0, layer, ts), rec)
            (g,) = vjp(ct_pairs)
        g = jnp.where(valid[:, None], g, 0.0)
        return acc.at[rid].add(g, indices_are_sorted=True), r0

    width = vjp_width(kernel, records, aux, ts, layout.chunk, layout.channels)
    acc0 = jnp.zeros((records.shape[0], width), records.dtype)
    acc = jax.lax.fori_loop(0, _n_chunks(en, layout.chunk), body, (acc0, jnp.int32(0)))[0]
    acc = jnp.zeros_like(acc).at[en.order].set(acc, unique_indices=True)  # original record order
    if kernel.finish is not None:
        acc = kernel.finish(records, aux, acc)
    zeros_aux = jax.tree_util.tree_map(jnp.zeros_like, aux)
    return acc, zeros_aux, None


sum_splat.defvjp(_sum_splat_fwd, _sum_splat_bwd)


_MONO = [(i, d - i) for d in range(5) for i in range(d, -1, -1)]
_MONO_INDEX = {m: k for k, m in enumerate(_MONO)}
# MONO_SHIFT[α, β]: index of l^α · l^β among _MONO, for α, β of degree ≤ 2
MONO_SHIFT = np.array([[_MONO_INDEX[(a[0] + b[0], a[1] + b[1])] for b in _MONO[:6]]
                   for a in _MONO[:6]])


def raw_moments(tile_shape, g, n_mono: int = 6) -> jax.Array:
    """[B, n_mono] Σₚ g·lx^i·ly^j over the first ``n_mono`` monomials (tile-centred coordinates).

    One matmul against pair-independent monomials. (One matmul per map: XLA:CPU evaluates a
    stacked operand element by element, measured 25x slower.)
    """
    lx, ly = tile_local_coords(tile_shape, centred=True)
    mono = jnp.stack([lx**i * ly**j for i, j in _MONO[:n_mono]], 1)
    return xla.dot(g, mono)


def shift_moments(m, ox, oy):
    """Moments about the tile centre → moments in Δ = (ox, oy) + l (exact binomial shift).

    Args:
      m: [B, 6] (S0, Sx, Sy, Sxx, Sxy, Syy) in tile-centred coordinates.
      ox, oy: [B] offsets.

    Returns:
      six [B] arrays (S0, SΔx, SΔy, SΔx², SΔxΔy, SΔy²).
    """
    m0, mx, my, mxx, mxy, myy = (m[:, i] for i in range(6))
    return (m0, mx + ox * m0, my + oy * m0, mxx + ox * (2.0 * mx + ox * m0),
            mxy + ox * my + oy * (mx + ox * m0), myy + oy * (2.0 * my + oy * m0))


def tile_moments(tile_shape, maps, ox=None, oy=None):
    """Per-pair pixel moments of maps, Σₚ g·{1, Δx, Δy, Δx², ΔxΔy, Δy²}.

    Δx = ox + lxc, Δy = oy + lyc with (lxc, lyc) the pixel offsets from the tile centre.

    Args:
      tile_shape: (tile_h, tile_w), static.
      maps: list of [B, Pt] maps (e.g. cotangent × partial derivative per pixel).
      ox, oy: [B] float32 offsets of the tile centre, or None for moments about the tile centre.

    Returns:
      per map, a tuple of six [B] arrays (S0, Sx, Sy, Sxx, Sxy, Syy).
    """
    out = []
    for g in maps:
        m = raw_moments(tile_shape, g)
        out.append(tuple(m[:, i] for i in range(6)) if ox is None else shift_moments(m, ox, oy))
    return out
