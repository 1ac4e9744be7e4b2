"""Pallas X-ray kernels in the interpreter (CPU): forward and backward, cone and parallel beam,
against the XLA path and the float64 references; windows, jit, determinism, segment sums.

The interpreter is slow: scenes are tiny (12 Gaussians, 2 views of 36 × 44 px, 18 tiles).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_render_xray import SHAPE, _geom, _grads, _ref, _rel, _scene

from insideout_jax.render import additive as ad
from insideout_jax.render import pairs as pr
from insideout_jax.render import pallas_additive, pallas_xray
from insideout_jax.render.xray import render_xray, resolve_xray_backend, xray_tile_stats
from insideout_jax.render.xray_reference import render_xray_reference

FIELDS = ("means", "log_scales", "quats", "log_densities")


def _ref_grads(s, g, w, cutoff_sigma):
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if x.dtype == jnp.float32 else x, s)
        ang = np.asarray(g.angles, np.float64)
        out = _grads(lambda x: render_xray_reference(x, g, ang, cutoff_sigma=cutoff_sigma), s64,
                     jnp.asarray(w, jnp.float64))
        return [np.asarray(x) for x in out]


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_forward_matches_xla_and_float64_closed_form(mode):
    s, g = _scene(n=12, seed=3), _geom(mode)
    a = render_xray(s, g, backend="xla")
    b = render_xray(s, g, backend="pallas_interpret")
    assert _rel(b, a) < 1e-6  # the same integrals, float32 round-off (measured 1.4e-7)
    ref = _ref(s, g)
    assert ref.max() > 0.1
    assert _rel(b, ref) < 1e-4  # the XLA path's tolerance (test_render_xray)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_backward_matches_xla_and_float64_autodiff(mode):
    """Parallel beam has its own backward kernel (6 moments instead of 13): both are checked."""
    s, g = _scene(n=12, seed=3), _geom(mode)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + SHAPE), jnp.float32)
    fast = _grads(lambda x: render_xray(x, g, backend="pallas_interpret", cutoff_sigma=6.0), s, w)
    xla = _grads(lambda x: render_xray(x, g, backend="xla", cutoff_sigma=6.0), s, w)
    ref = _ref_grads(s, g, w, 6.0)
    for name, a, b, r in zip(FIELDS, fast, xla, ref, strict=True):
        assert np.abs(np.asarray(r)).max() > 0, name
        # moments taken directly about the record centre instead of shifted from the tile centre:
        # a different float32 summation (measured ≤ 8e-6)
        assert _rel(a, b) < 2e-5, name
        assert _rel(a, r) < 2e-5, name  # the XLA path's tolerance at 6σ (test_render_xray)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_windows_jit_and_determinism(mode):
    """Any window capacity gives the same result (nothing truncated, pairs split over windows,
    records straddling two windows); jit needs no capacity; repeated backwards are bitwise equal."""
    s, g = _scene(n=12, seed=5), _geom(mode)
    n_pairs = xray_tile_stats(s, g)["tile_pairs"]
    cap = 16
    assert n_pairs > 3 * cap  # several windows
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2,) + SHAPE), jnp.float32)

    def loss(x, **kw):
        return jnp.sum(render_xray(x, g, backend="pallas_interpret", **kw) * w)

    f = jax.jit(jax.value_and_grad(loss, allow_int=True))
    v1, g1 = f(s)
    v2, g2 = f(s)
    np.testing.assert_array_equal(np.asarray(v1), np.asarray(v2))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    v3, g3 = jax.jit(jax.value_and_grad(lambda x: loss(x, capacity=cap), allow_int=True))(s)
    assert abs(float(v3) - float(v1)) <= 1e-5 * abs(float(v1))
    for name in FIELDS:
        assert _rel(getattr(g3, name), getattr(g1, name)) < 1e-6, name
    xla = render_xray(s, g, backend="xla")
    small = render_xray(s, g, backend="pallas_interpret", capacity=cap)
    assert _rel(small, xla) < 1e-6


def test_sorted_segment_sum_matches_numpy():
    rng = np.random.default_rng(0)
    ids = np.sort(rng.integers(0, 9, 200)).astype(np.int32)
    ids[-7:] = 9  # dropped rows (id ≥ n), e.g. the invalid slots of a window
    vals = rng.normal(size=(200, 3)).astype(np.float32)
    out = np.asarray(pallas_additive.sorted_segment_sum(jnp.asarray(vals), jnp.asarray(ids), 9))
    ref = np.zeros((9, 3))
    np.add.at(ref, ids[ids < 9], vals[ids < 9].astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert np.all(out[np.setdiff1d(np.arange(9), ids)] == 0)


def test_segments_give_every_pair_one_row_of_its_tile():
    s, g = _scene(n=12, seed=3), _geom("cone")
    from insideout_jax.render import xray as xr

    layout = xr._layout(g, 2, 16, 1)
    rec, boxes, _ = xr._xray_setup(s, g, g.angles, jnp.float32(5.0), layout)
    bk, cap = 16, 64
    en = pr.enumerate_pairs(boxes, run=cap)
    rid, pos, valid, seg, n_rows = pallas_additive.build_segments(en, layout, cap, bk, 32)
    rid, pos, valid, seg = map(np.asarray, (rid, pos, valid, seg))
    assert int(en.total) > 32 + cap  # the window is full
    assert valid.all() and np.all(np.diff(rid) >= 0)  # record-major order
    assert len(set(pos.tolist())) == cap and pos.max() < n_rows
    # every pair's row lies in the block range of its tile, and the ranges do not overlap
    tile_of_row = np.full(n_rows, -1)
    for t in range(layout.n_tiles):
        start, nblk = seg[t]
        assert start % bk == 0
        assert np.all(tile_of_row[start:start + nblk * bk] == -1)
        tile_of_row[start:start + nblk * bk] = t
    pairs, _ = pr.decode_slots(en, 32, cap, pr.first_position(en, 32), tiles_x=layout.tiles_x,
                               tiles_y=layout.tiles_y, n_tiles=layout.n_tiles)
    np.testing.assert_array_equal(tile_of_row[pos], np.asarray(pairs.tile))
    # within a tile the rows keep the slot order (a stable sort by tile)
    for t in range(layout.n_tiles):
        rows = pos[np.asarray(pairs.tile) == t]
        assert np.all(np.diff(rows) == 1)


def test_auto_backend_is_xla_off_gpu_and_bad_arguments_are_named():
    if jax.default_backend() != "gpu":
        assert resolve_xray_backend("auto") == "xla"
    else:
        assert resolve_xray_backend("auto") == "pallas"
    with pytest.raises(ValueError, match="backend"):
        resolve_xray_backend("triton")
    layout = ad.TileLayout(1, 2, 2, 16, 16)
    rec, boxes = jnp.zeros((4, 14)), jnp.zeros((4, 6), jnp.int32)
    with pytest.raises(ValueError, match="rec"):
        pallas_xray.integrate_tiles(rec[:, :13], boxes, layout, mode="cone", cutoff_sigma=5.0)
    with pytest.raises(ValueError, match="tile_h"):
        pallas_xray.integrate_tiles(rec, boxes, ad.TileLayout(1, 2, 2, 12, 16), mode="cone",
                                    cutoff_sigma=5.0)
    with pytest.raises(ValueError, match="pair_block"):
        pallas_xray.integrate_tiles(rec, boxes, layout, mode="cone", cutoff_sigma=5.0,
                                    pair_block=24)
    with pytest.raises(ValueError, match="mode"):
        pallas_xray.integrate_tiles(rec, boxes, layout, mode="fan", cutoff_sigma=5.0)
