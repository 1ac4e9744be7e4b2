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


def _random_ellipses(n, grid, seed):
    """Footprints with elongated, rotated α-ellipses, their boxes and the ellipse rows."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-10, grid.width + 10, n)
    v = rng.uniform(-10, grid.height + 10, n)
    sig = rng.uniform(0.5, 9.0, (n, 2))
    sig[: n // 3, 1] *= 0.1  # thin needles
    th = rng.uniform(0, np.pi, n)
    r = np.stack([np.cos(th), -np.sin(th), np.sin(th), np.cos(th)], -1).reshape(n, 2, 2)
    cov = r @ (sig[:, :, None] ** 2 * np.eye(2)) @ np.swapaxes(r, 1, 2)
    conic = np.linalg.inv(cov)
    q_max = rng.uniform(0.5, 11.0, n)
    q_max[rng.uniform(size=n) < 0.05] = -1.0  # cannot contribute
    half = np.sqrt(np.maximum(q_max[:, None], 0) * np.stack([cov[:, 0, 0], cov[:, 1, 1]], -1))
    ext = np.where(q_max[:, None] >= 0, half + 0.01, -1.0)
    ell = np.stack([u, v, conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1], q_max], -1)
    return np.stack([u, v], -1).astype(np.float32), ext.astype(np.float32), ell.astype(np.float32)


def test_tile_touches_is_exact_on_the_pixel_centres():
    """Every tile with a pixel centre inside the ellipse is kept (float64 brute force), and a kept
    tile's pixel-centre rectangle reaches the ellipse (fine sampling, tolerance 1e-3 in q)."""
    grid = tl.make_tile_grid(64, 48, 8)
    _, _, ell = _random_ellipses(300, grid, 3)
    g, t = np.meshgrid(np.arange(300), np.arange(grid.n_tiles), indexing="ij")
    got = np.asarray(tl.tile_touches(jnp.asarray(ell[g.ravel()]), jnp.asarray(t.ravel(), jnp.int32),
                                     grid)).reshape(300, grid.n_tiles)
    e = ell.astype(np.float64)
    fine = np.linspace(0.5, grid.tile_size - 0.5, 57)
    for gi in range(300):
        u, v, a, b, c, qm = e[gi]
        for ti in range(grid.n_tiles):
            ox, oy = ti % grid.tiles_x * grid.tile_size, ti // grid.tiles_x * grid.tile_size
            px, py = np.meshgrid(ox + np.arange(grid.tile_size) + 0.5 - u,
                                 oy + np.arange(grid.tile_size) + 0.5 - v)
            q_pix = (a * px * px + 2 * b * px * py + c * py * py).min()
            if qm >= 0 and q_pix <= qm:
                assert got[gi, ti], (gi, ti)
            if got[gi, ti]:
                fx, fy = np.meshgrid(ox + fine - u, oy + fine - v)
                assert qm >= 0 and (a * fx * fx + 2 * b * fx * fy + c * fy * fy).min() <= qm + 1e-3
    assert 0 < got.sum() < got.size


def test_ellipse_windows_keep_exactly_the_touching_pairs():
    """With ``ellipses`` the window lists hold the box pairs whose tile the ellipse reaches, in
    (tile, rank) order, and the slots stay a permutation of the window."""
    grid = tl.make_tile_grid(64, 48, 8)
    means, ext, ell = _random_ellipses(200, grid, 4)
    depths = np.random.default_rng(5).uniform(1, 5, 200).astype(np.float32)
    layout = tl.pair_layout(jnp.asarray(means), jnp.asarray(ext), jnp.asarray(depths), grid)
    box = _brute_pairs(means, ext, depths, grid)
    keep = np.asarray(tl.tile_touches(jnp.asarray(ell[[p[2] for p in box]]),
                                      jnp.asarray([p[0] for p in box], jnp.int32), grid))
    want = [(p[0], p[2]) for p, k in zip(box, keep, strict=True) if k]
    assert len(want) < 0.9 * len(box)  # the corner tiles of the boxes are gone
    cap = 128
    got = []
    for k in range(-(-len(box) // cap)):
        isect = tl.window_intersections(layout, grid, capacity=cap, start=k * cap,
                                        ellipses=jnp.asarray(ell))
        assert sorted(np.asarray(isect.slots).tolist()) == list(range(cap))
        used = np.asarray(isect.tile_ids) < grid.n_tiles
        assert np.all(np.asarray(isect.gauss_ids)[~used] == 200)
        assert np.all(np.diff(np.asarray(isect.tile_ids)) >= 0)  # by tile, sentinels last
        vals = jnp.asarray(np.where(used[:, None], np.random.default_rng(k).normal(size=(cap, 3)), 0),
                           jnp.float32)  # the scan reduction (GPU) needs the slot permutation
        np.testing.assert_allclose(tl._pairs_to_gaussians_scan(vals, isect, 200),
                                   jax.ops.segment_sum(vals, isect.gauss_ids, 201)[:200], atol=1e-5)
        got += list(zip(np.asarray(isect.tile_ids)[used].tolist(),
                        np.asarray(isect.gauss_ids)[used].tolist(), strict=True))
    assert sorted(got) == sorted(want)
