"""Tile intersection, (tile, depth) sort, ranges and per-Gaussian reductions against brute force."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.render import tiles as tl


def _random_footprints(n, grid, seed):
    rng = np.random.default_rng(seed)
    means = np.stack([rng.uniform(-20, grid.width + 20, n), rng.uniform(-20, grid.height + 20, n)], -1)
    ext = rng.uniform(0.0, 14.0, (n, 2))
    ext[rng.uniform(size=n) < 0.1] = -1.0  # culled
    depths = rng.uniform(1.0, 5.0, n).astype(np.float32)
    depths[rng.integers(0, n, n // 5)] = 2.5  # exact ties
    return means.astype(np.float32), ext.astype(np.float32), depths


def _brute_pairs(means, ext, depths, grid):
    """All (tile, gaussian) pairs whose box contains a pixel centre, sorted (tile, depth, index)."""
    pairs = []
    for g in range(len(means)):
        if np.any(ext[g] < 0):
            continue
        cols = [j for j in range(grid.width) if abs(j + 0.5 - means[g, 0]) <= ext[g, 0]]
        rows = [i for i in range(grid.height) if abs(i + 0.5 - means[g, 1]) <= ext[g, 1]]
        tiles = {(i // grid.tile_size) * grid.tiles_x + j // grid.tile_size for i in rows for j in cols}
        pairs += [(t, depths[g], g) for t in tiles]
    return sorted(pairs)


@pytest.mark.parametrize("tile_size,seed", [(16, 0), (8, 1)])
def test_windows_enumerate_sorted_pairs_exactly(tile_size, seed):
    grid = tl.make_tile_grid(45, 30, tile_size)
    means, ext, depths = _random_footprints(120, grid, seed)
    want = _brute_pairs(means, ext, depths, grid)
    layout = jax.jit(tl.pair_layout, static_argnums=3)(jnp.asarray(means), jnp.asarray(ext),
                                                       jnp.asarray(depths), grid)
    assert int(layout.n_pairs) == len(want)
    cap = 64  # several windows
    window = jax.jit(lambda k: tl.window_intersections(layout, grid, capacity=cap, start=k * cap))
    got = []
    for k in range(-(-len(want) // cap)):
        isect = window(k)
        chex.assert_shape(isect.tile_ids, (cap,))
        used = np.asarray(isect.tile_ids) < grid.n_tiles
        # window slots form a permutation; empty slots sit at the end with sentinels
        assert sorted(np.asarray(isect.slots).tolist()) == list(range(cap))
        assert np.all(np.asarray(isect.gauss_ids)[~used] == len(means))
        assert np.all(np.diff(np.asarray(isect.tile_ids)) >= 0)
        got.append(np.stack([np.asarray(isect.tile_ids)[used], np.asarray(isect.gauss_ids)[used]], 1))
        starts, ends = tl.tile_ranges(isect.tile_ids, grid.n_tiles)
        t_ids = np.asarray(isect.tile_ids)
        for t in range(grid.n_tiles):
            assert np.all(t_ids[int(starts[t]):int(ends[t])] == t)
        assert int(ends[-1]) == used.sum()
    got = np.concatenate(got)
    # within a window pairs are (tile, depth)-sorted; windows are contiguous in depth rank, so
    # the per-tile sequences concatenated over windows must be the brute-force order
    for t in range(grid.n_tiles):
        want_t = [g for (tt, _, g) in want if tt == t]
        assert got[got[:, 0] == t, 1].tolist() == want_t


def test_depth_order_is_stable_argsort():
    rng = np.random.default_rng(3)
    for n in (1, 7, 300, 70_000):  # 70 000 needs three radix passes
        d = rng.uniform(-3, 8, n).astype(np.float32)
        d[rng.integers(0, n, n // 4 + 1)] = 2.0
        d[rng.integers(0, n, n // 10 + 1)] = np.inf
        got = np.asarray(jax.jit(tl.depth_order)(jnp.asarray(d)))
        np.testing.assert_array_equal(got, np.argsort(d, kind="stable"))


def test_tile_rects_match_pixel_centres():
    grid = tl.make_tile_grid(37, 21, 8)
    means, ext, _ = _random_footprints(200, grid, 5)
    rects = np.asarray(tl.tile_rects(jnp.asarray(means), jnp.asarray(ext), grid))
    for g in range(len(means)):
        want = {t for (t, _, gg) in _brute_pairs(means[g:g + 1], ext[g:g + 1], np.zeros(1), grid)}
        x0, y0, x1, y1 = rects[g]
        got = {ty * grid.tiles_x + tx for ty in range(y0, y1) for tx in range(x0, x1)}
        assert got == want


def test_two_key_sort_fallback_equals_packed_keys():
    rng = np.random.default_rng(4)
    tile = jnp.asarray(rng.integers(0, 50, 500), jnp.int32)
    rank = jnp.asarray(rng.permutation(5000)[:500], jnp.int32)
    a = tl._sort_pairs(tile, rank, jnp.ones(500, bool), n=5000, n_tiles=50, packed=True)
    b = tl._sort_pairs(tile, rank, jnp.ones(500, bool), n=5000, n_tiles=50, packed=False)
    want = sorted(zip(np.asarray(tile).tolist(), np.asarray(rank).tolist(), strict=True))
    for got in (a, b):
        assert list(zip(np.asarray(got[0]).tolist(), np.asarray(got[1]).tolist(), strict=True)) == want


def test_pairs_to_gaussians_both_paths_equal_add_at():
    grid = tl.make_tile_grid(45, 30, 8)
    means, ext, depths = _random_footprints(80, grid, 6)
    count = tl.pair_layout(jnp.asarray(means), jnp.asarray(ext), None, grid).n_pairs
    cap = int(count) + 7
    isect = jax.jit(lambda m, e, d: tl.intersect_tiles(m, e, d, grid=grid, capacity=cap))(
        jnp.asarray(means), jnp.asarray(ext), jnp.asarray(depths))
    used = np.asarray(isect.gauss_ids) < 80
    vals = np.random.default_rng(7).normal(size=(cap, 3)).astype(np.float32) * used[:, None]
    want = np.zeros((80, 3))
    np.add.at(want, np.asarray(isect.gauss_ids)[used], vals[used])
    got_cpu = jax.jit(tl.pairs_to_gaussians, static_argnums=2)(jnp.asarray(vals), isect, 80)
    got_scan = jax.jit(tl._pairs_to_gaussians_scan, static_argnums=2)(jnp.asarray(vals), isect, 80)
    np.testing.assert_allclose(got_cpu, want, atol=1e-5)
    np.testing.assert_allclose(got_scan, want, atol=1e-5)


def test_tiles_image_roundtrip():
    grid = tl.make_tile_grid(21, 13, 8)
    img = jnp.asarray(np.random.default_rng(8).normal(size=(13, 21, 3)))
    x = tl.image_to_tiles(img, grid)
    chex.assert_shape(x, (grid.n_tiles, 64, 3))
    np.testing.assert_array_equal(tl.tiles_to_image(x, grid), img)
    u, v = tl.pixel_centers(grid)
    np.testing.assert_array_equal(tl.tiles_to_image(u, grid)[4, :], np.arange(21) + 0.5)
    np.testing.assert_array_equal(tl.tiles_to_image(v, grid)[:, 6], np.arange(13) + 0.5)


def test_make_tile_grid_validates():
    with pytest.raises(ValueError, match="tile_size"):
        tl.make_tile_grid(10, 10, 0)
    with pytest.raises(ValueError, match="width"):
        tl.make_tile_grid(-1, 10, 8)
