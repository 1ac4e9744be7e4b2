"""Pair counts cannot wrap silently (issue #17): both tile engines (the RGB compositor's
rank-major windows and the additive engine behind X-ray, slices and voxelize) count (tile,
Gaussian) pairs in int32. A total at or above ``tiles.PAIR_LIMIT`` is built here cheaply – a
tile size of one pixel over a large virtual image, a few splats covering all of it – and must end
in ``PairCountOverflow`` naming the call and how to split it (outside a trace), or NaN (under a
trace), never an image made from wrapped counts. Just below the bound the count is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import PinholeCamera
from insideout_jax.render import tiles as tl
from insideout_jax.render.rgb import RasterConfig, render_rgb
from insideout_jax.render.slices import axial_plane, make_voxel_grid, render_slice, voxelize
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points


def _covering(n, extent):
    """n splats at the origin whose footprints cover a box of ±extent (mm)."""
    pts = np.zeros((n, 3), np.float32) + np.linspace(-1e-3, 1e-3, n, dtype=np.float32)[:, None]
    return np.full((n, 3), np.log(extent), np.float32), pts


@pytest.mark.parametrize("n, over", [(6, False), (7, True)])
def test_the_rgb_pair_layout_counts_exactly_below_the_bound_and_flags_above(n, over):
    """16384² one-pixel tiles = 2²⁸ tiles; n footprints covering them all make n·2²⁸ pairs."""
    grid = tl.TileGrid(16384, 16384, tile_size=1)
    means = jnp.full((n, 2), 8192.0)
    extents = jnp.full((n, 2), 1e6)
    layout = tl.pair_layout(means, extents, jnp.arange(n, dtype=jnp.float32), grid)
    assert bool(layout.overflow) is over
    assert int(layout.n_pairs) == (0 if over else n * 2**28)  # 6·2²⁸ = 1.61e9 fits int32 exactly


def test_render_rgb_refuses_an_overflowing_pair_count_with_what_to_do():
    size, n = 1024, 2048  # 2048 footprints × 1024² one-pixel tiles = 2.1e9 pairs
    log_scales, pts = _covering(n, 1e3)
    sp = rgb_splats_from_points(pts + np.array([0, 0, 10.0], np.float32), capacity=n)
    sp = sp.replace(log_scales=jnp.asarray(log_scales), opacity_logits=jnp.full(n, 5.0))
    cam = PinholeCamera(np.eye(3, dtype=np.float32), np.zeros(3, np.float32), 1000.0, 1000.0,
                        size / 2, size / 2, size, size)
    cfg = RasterConfig(tile_size=1, backend="xla")
    with pytest.raises(tl.PairCountOverflow, match=r"render_rgb of 2048 splats at 1024×1024 needs more"
                       r" than 1\.88e\+09 .*lower resolution"):
        render_rgb(sp, cam, config=cfg)
    # under a trace nothing can be raised: the image is NaN, not the background
    color = jax.jit(lambda s: render_rgb(s, cam, config=cfg).color)(sp)
    assert bool(jnp.all(jnp.isnan(color)))


@pytest.mark.parametrize("backend", ["xla", "pallas_interpret"])
def test_render_slice_refuses_an_overflowing_pair_count(backend):
    n = 512  # 512 splats × 2048² one-pixel tiles = 2.1e9 pairs
    log_scales, pts = _covering(n, 1e3)
    sp = rad_splats_from_points(pts, 0.01, log_scales=log_scales)
    plane = axial_plane(0.0, (0.0, 0.0), (100.0, 100.0), (2048, 2048))
    with pytest.raises(tl.PairCountOverflow, match=r"render_slice of 512 splats at 2048×2048 .*in parts"):
        render_slice(sp, plane, tile_size=1, backend=backend)
    img = jax.jit(lambda s: render_slice(s, plane, tile_size=1, backend=backend))(sp)
    assert bool(jnp.all(jnp.isnan(img)))


def test_voxelize_refuses_an_overflowing_pair_count_and_says_to_use_slabs():
    n = 1024  # 1024 splats × 2048·32·32 one-voxel tiles = 2.1e9 pairs
    log_scales, pts = _covering(n, 1e4)
    sp = rad_splats_from_points(pts, 0.01, log_scales=log_scales)
    grid = make_voxel_grid((2048, 32, 32), (1.0, 1.0, 1.0), (-16.0, -16.0, -1024.0))
    with pytest.raises(tl.PairCountOverflow, match=r"voxelize of 1024 splats on a 2048×32×32 grid .*z-slabs"):
        voxelize(sp, grid, tile_size=1)


@pytest.mark.parametrize("n, over", [(6, False), (7, True)])
def test_the_additive_enumeration_counts_exactly_below_the_bound_and_flags_above(n, over):
    """n boxes of 2¹⁴ × 2¹⁴ tiles in one layer: n·2²⁸ pairs; a zero total (no chunk runs) above
    the bound."""
    from insideout_jax.render import pairs as pr

    boxes = jnp.tile(jnp.array([[0, 0, 0, 2**14, 2**14, 1]], jnp.int32), (n, 1))
    en = pr.enumerate_pairs(boxes, run=1024)
    assert bool(en.overflow) is over
    assert int(en.total) == (0 if over else n * 2**28)


def test_pairs_beyond_two_to_the_thirty_go_to_their_own_records():
    """Below the bound every pair is decoded to its record and tile, also past 2³⁰ where a
    padding marker of 2³⁰ once captured them: boxes of 2²⁸, 2²⁸, 2²⁸, 2²⁸, 1000, 2²⁸, 2²⁸ pairs,
    chunks straddling 2³⁰ and the record that starts 1000 pairs later, against searchsorted."""
    from insideout_jax.render import additive as ad
    from insideout_jax.render import pairs as pr

    big, small = [0, 0, 0, 2**14, 2**14, 1], [0, 0, 0, 1000, 1, 1]
    boxes = jnp.array([big] * 4 + [small] + [big] * 2, jnp.int32)
    layout = ad.TileLayout(1, 2**14, 2**14, 1, 1, 1024)
    en = pr.enumerate_pairs(boxes, run=layout.chunk)
    counts = np.array([2**28] * 4 + [1000] + [2**28] * 2, np.int64)
    incl = np.cumsum(counts)
    assert not bool(en.overflow) and int(en.total) == incl[-1]
    for k0 in (2**30 - 1024, 2**30, 2**30 + 1024, incl[-1] - 1024):
        c = k0 // 1024
        r0 = int(np.searchsorted(incl, c * 1024, side="right"))
        assert int(pr.first_position(en, c * 1024)) == r0
        rid, x0, y0, _, tile, valid, _ = ad._decode_chunk(en, layout, jnp.int32(c), jnp.int32(r0))
        k = c * 1024 + np.arange(1024)
        want = np.searchsorted(incl, k, side="right")
        np.testing.assert_array_equal(np.asarray(rid), want)
        local = k - (incl - counts)[want]
        wx = np.where(counts[want] == 1000, 1000, 2**14)
        np.testing.assert_array_equal(np.asarray(x0), local % wx)
        assert bool(np.all(np.asarray(valid)))
