"""The tile engine's shared stages (render/pairs.py) against brute-force numpy enumerations and
numpy sorts, and their use by the additive integrator, the Pallas segments and the RGB windows."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.render import additive as ad
from insideout_jax.render import pairs as pr


def brute_pairs(boxes, order, tiles_x, tiles_y):
    """Every (record, tile) pair, position-major, by nested Python loops: record, tx, ty, layer,
    tile and the index of the tile inside its box."""
    out = []
    for r in order:
        tx0, ty0, l0, ntx, nty, nl = (int(v) for v in boxes[r])
        local = 0
        for layer in range(l0, l0 + nl):
            for ty in range(ty0, ty0 + nty):
                for tx in range(tx0, tx0 + ntx):
                    if ntx and nty:
                        out.append((r, tx, ty, layer, (layer * tiles_y + ty) * tiles_x + tx, local))
                        local += 1
    return np.asarray(out, np.int64).reshape(-1, 6)


def _random_boxes(rng, r, tiles=(5, 4, 3), p_empty=0.3):
    tx, ty, tl_ = tiles
    ntx, nty, nl = rng.integers(1, 4, r), rng.integers(1, 3, r), rng.integers(1, 3, r)
    boxes = np.stack([rng.integers(0, tx - ntx + 1), rng.integers(0, ty - nty + 1),
                      rng.integers(0, tl_ - nl + 1), ntx, nty, nl], 1)
    boxes[rng.random(r) < p_empty, 3:] = 0
    return boxes.astype(np.int32)


def _stable_partition(boxes):
    counts = boxes[:, 3] * boxes[:, 4] * boxes[:, 5]
    return [i for i in range(len(boxes)) if counts[i] > 0] + [i for i in range(len(boxes))
                                                              if counts[i] == 0]


def _decode_all(en, size, tiles):
    """Decode every slot in runs of ``size``, carrying the position as the engines do."""
    tx, ty, nl = tiles
    got, p0 = [], jnp.int32(0)
    for c in range(max(1, -(-int(en.total) // size))):
        pairs, p0 = pr.decode_slots(en, c * size, size, p0, tiles_x=tx, tiles_y=ty,
                                    n_tiles=tx * ty * nl)
        got.append(pairs)
    return jax.tree_util.tree_map(lambda *x: np.concatenate([np.asarray(v) for v in x]), *got)


@pytest.mark.parametrize("run", [1, 3, 8, 64])
def test_decoding_runs_enumerates_every_pair_once_in_order(run):
    # Empty records interspersed, multi-layer boxes, runs below and above the largest box.
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, 40)
    tiles = (5, 4, 3)
    want = brute_pairs(boxes, _stable_partition(boxes), 5, 4)
    en = pr.enumerate_pairs(jnp.asarray(boxes), run=run)
    chex.assert_shape(en.starts, (40 + run + 1,))
    assert int(en.total) == len(want) and not bool(en.overflow)
    got = _decode_all(en, run, tiles)
    total = len(want)
    assert got.valid[:total].all() and not got.valid[total:].any()
    for k, name in enumerate(("record", "tx", "ty", "layer", "tile", "local")):
        np.testing.assert_array_equal(getattr(got, name)[:total], want[:, k], err_msg=name)
    assert (got.tile[total:] == 5 * 4 * 3).all()  # padding pairs point at no tile


def test_a_given_order_and_windows_at_any_start():
    """A front-to-back order (records without pairs last) and windows found by first_position,
    including a run longer than the padding (decoded through a copy)."""
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 30)
    counts = boxes[:, 3] * boxes[:, 4] * boxes[:, 5]
    depth = np.where(counts > 0, rng.random(30), np.inf)
    order = np.argsort(depth, kind="stable")
    want = brute_pairs(boxes, order, 5, 4)
    en = pr.enumerate_pairs(jnp.asarray(boxes), jnp.asarray(order, jnp.int32), run=7)
    np.testing.assert_array_equal(np.asarray(en.order), order)
    for start, size in [(0, 7), (5, 7), (11, 7), (len(want) - 3, 7), (2, 40)]:
        pairs, _ = pr.decode_slots(en, start, size, pr.first_position(en, start), tiles_x=5,
                                   tiles_y=4, n_tiles=60)
        n_ok = max(0, min(size, len(want) - start))
        assert np.asarray(pairs.valid).sum() == n_ok
        np.testing.assert_array_equal(np.asarray(pairs.record)[:n_ok], want[start:start + n_ok, 0])
        np.testing.assert_array_equal(np.asarray(pairs.tile)[:n_ok], want[start:start + n_ok, 4])


def test_no_pairs_and_a_total_that_is_a_multiple_of_the_run():
    # pair counts 2, 0, 2, 0: a total that is a multiple of the run, empty records at the end
    boxes = np.asarray([[0, 0, 0, 2, 1, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 2, 1],
                        [1, 1, 0, 0, 0, 0]], np.int32)
    en = pr.enumerate_pairs(jnp.asarray(boxes), run=2)
    got = _decode_all(en, 2, (2, 2, 1))
    want = brute_pairs(boxes, [0, 2, 1, 3], 2, 2)
    np.testing.assert_array_equal(got.record, want[:, 0])
    np.testing.assert_array_equal(got.tile, want[:, 4])
    empty = pr.enumerate_pairs(jnp.asarray(boxes).at[:, 3:].set(0), run=2)
    assert int(empty.total) == 0 and not _decode_all(empty, 2, (2, 2, 1)).valid.any()


def test_the_additive_integrator_sums_every_pair_and_nothing_without_pairs():
    """sum_splat on the shared enumeration against the brute-force pair list; zero output and
    zero gradients when no record has pairs."""
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, 25, tiles=(5, 4, 3))
    layout = ad.TileLayout(3, 4, 5, 2, 2, chunk=3)
    w = rng.normal(size=(25, 1)).astype(np.float32)

    def ev(rec, aux, x0, y0, layer, ts):  # value = weight · (1 + tile origin x + 10·layer)
        return jnp.broadcast_to(rec[:, :1] * (1.0 + x0 + 10.0 * layer)[:, None],
                                (rec.shape[0], ts[0] * ts[1]))

    out = np.asarray(ad.sum_splat(ad.SplatKernel(ev), layout, jnp.asarray(w), jnp.float32(0),
                                  jnp.asarray(boxes)))
    expect = np.zeros((60, 4))
    for r, tx, _, layer, tile, _ in brute_pairs(boxes, range(25), 5, 4):
        expect[tile] += w[r, 0] * (1.0 + 2 * tx + 10.0 * layer)
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-5)

    empty = jnp.asarray(boxes).at[:, 3:].set(0)
    val, g = jax.value_and_grad(lambda r: jnp.sum(ad.sum_splat(
        ad.SplatKernel(ev), layout, r, jnp.float32(0), empty)))(jnp.asarray(w))
    assert float(val) == 0.0 and not np.any(np.asarray(g))


@pytest.mark.parametrize("n_tiles, key_bound", [(60, 512), (2**20, 2**14)])
def test_sort_by_tile_packed_and_lexicographic_match_numpy(n_tiles, key_bound):
    """The packed uint32 key (9 + 6 bits) and the two-operand sort (21 + 14 > 32 bits) give
    numpy's lexsort order, invalid pairs last; tile_ranges match searchsorted."""
    rng = np.random.default_rng(0)
    p = 300
    tile = rng.integers(0, n_tiles, p).astype(np.int32)
    key = rng.permutation(key_bound)[:p].astype(np.int32)  # unique keys
    valid = rng.random(p) < 0.8
    s_tile, s_key, s_valid = (np.asarray(x) for x in pr.sort_by_tile(
        jnp.asarray(tile), jnp.asarray(key), jnp.asarray(valid), n_tiles=n_tiles,
        key_bound=key_bound))
    idx = np.lexsort((key[valid], tile[valid]))
    m = int(valid.sum())
    np.testing.assert_array_equal(s_tile[:m], tile[valid][idx])
    np.testing.assert_array_equal(s_key[:m], key[valid][idx])
    assert s_valid[:m].all() and not s_valid[m:].any()
    assert (s_tile[m:] == n_tiles).all() and (s_key[m:] == key_bound).all()
    if n_tiles <= 64:
        starts, ends = (np.asarray(x) for x in pr.tile_ranges(jnp.asarray(s_tile), n_tiles))
        np.testing.assert_array_equal(starts, np.searchsorted(s_tile, np.arange(n_tiles), "left"))
        np.testing.assert_array_equal(ends, np.searchsorted(s_tile, np.arange(n_tiles), "right"))


def test_rects_become_one_layer_boxes():
    rects = jnp.asarray([[1, 2, 4, 3], [0, 0, 0, 0], [2, 1, 3, 4]], jnp.int32)
    boxes = np.asarray(pr.rects_to_boxes(rects))
    np.testing.assert_array_equal(boxes, [[1, 2, 0, 3, 1, 1], [0, 0, 0, 0, 0, 0],
                                          [2, 1, 0, 1, 3, 1]])
    np.testing.assert_array_equal(np.asarray(pr.box_counts(jnp.asarray(boxes))), [3, 0, 3])


@pytest.mark.parametrize("backend", ["xla", "pallas_interpret"])
def test_no_records_sum_to_zero_on_both_back_ends(backend):
    """An empty splat set voxelizes to zeros (an empty sum), with an empty gradient, instead of
    failing inside the enumeration."""
    from insideout_jax.render.slices import make_voxel_grid, voxelize
    from insideout_jax.splats import rad_splats_from_points

    s = rad_splats_from_points(jnp.zeros((3, 3)), 0.01)
    empty = jax.tree_util.tree_map(lambda x: x[:0], s)
    grid = make_voxel_grid((8, 8, 8), (1.0, 1.0, 1.0), (-4.0, -4.0, -4.0))
    vol = voxelize(empty, grid, backend=backend)
    chex.assert_shape(vol, (8, 8, 8))
    assert not np.any(np.asarray(vol))
    g = jax.grad(lambda sp: voxelize(sp, grid, backend=backend).sum(), allow_int=True)(empty)
    chex.assert_shape(g.means, (0, 3))
    en = pr.enumerate_pairs(jnp.zeros((0, 6), jnp.int32), run=4)
    assert int(en.total) == 0 and not bool(en.overflow)
