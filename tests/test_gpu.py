"""GPU checks (``pytest -m gpu`` on a GPU machine; skipped elsewhere by ``conftest.py``).

The Pallas kernels (RGB, X-ray cone and parallel beam, slices / voxelizer) compiled by Triton and
run on the GPU, at moderate sizes, against the XLA path on the same GPU and the float64 references
(computed on the host's CPU device, independent of the GPU's arithmetic), with the CPU tests'
tolerances. These caught the X-ray records' detector coordinates running in TF32 on the GPU (images
1e-3 off the float64 reference; 3.7e-6 with full float32, ``tests/test_precision.py``); plus
determinism of the backward passes and one training step of each X-ray trainer with
``backend="auto"``.

Tolerances Pallas vs XLA are 10× the CPU ones (1e-5): XLA:GPU and Triton use their own ``exp`` and
``rsqrt`` (and XLA the a^(−1/2) series), so the two float32 paths differ by a few ulp per term.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_render_rgb as trgb
from test_pallas_xray import FIELDS as XFIELDS
from test_pallas_xray import _ref_grads
from test_render_xray import _geom, _grads, _ref, _rel
from test_slices import _field, _planes
from test_slices import _scene as _slice_scene
from test_train_backend import _assert_trees_close

from insideout_jax.internal.train import InternalConfig, stack_planes
from insideout_jax.internal.train import _make_block as internal_block
from insideout_jax.render import RasterConfig
from insideout_jax.render.slices import (
    axial_plane,
    make_voxel_grid,
    render_slice,
    slice_pixel_centers,
    voxel_centers,
    voxelize,
)
from insideout_jax.render.xray import render_xray, resolve_xray_backend
from insideout_jax.splats import rad_splats_from_points
from insideout_jax.train.densify import initial_train_state
from insideout_jax.train.xray import XrayTrainConfig
from insideout_jax.train.xray import _make_block as xray_block

pytestmark = pytest.mark.gpu

SHAPE = (72, 88)  # 5 × 6 tiles of 16 px per view, partial border tiles


def _xray_scene(n=400, seed=0, extent=30.0, scale=(1.0, 5.0)):
    rng = np.random.default_rng(seed)
    s = rad_splats_from_points(rng.uniform(-extent, extent, (n, 3)), rng.uniform(0.005, 0.03, n),
                               log_scales=np.log(rng.uniform(*scale, (n, 3))))
    return s.replace(quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32))


def _on_host(fn, *args):
    """``fn(*args)`` on the CPU device, arguments moved there: an independent float64 reference."""
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        return fn(*jax.device_put(args, cpu))


def test_default_backend_is_gpu_and_auto_picks_pallas():
    assert jax.default_backend() == "gpu"
    assert resolve_xray_backend("auto") == "pallas"


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_xray_pallas_forward_matches_xla_and_float64(mode):
    s, g = _xray_scene(), _geom(mode, shape=SHAPE, n_views=3)
    fast = render_xray(s, g, backend="pallas")
    assert _rel(fast, render_xray(s, g, backend="xla")) < 1e-5
    ref = _on_host(_ref, s, g)
    assert ref.max() > 0.1
    assert _rel(fast, ref) < 1e-4  # the CPU tolerance
    # a small window capacity: many windows, same result
    assert _rel(render_xray(s, g, backend="pallas", capacity=256), fast) < 1e-6


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_xray_pallas_backward_matches_xla_and_float64(mode):
    s, g = _xray_scene(n=200, seed=1), _geom(mode, shape=SHAPE, n_views=3)
    w = jnp.asarray(np.random.default_rng(5).normal(size=(3,) + SHAPE), jnp.float32)
    fast = _grads(lambda x: render_xray(x, g, backend="pallas", cutoff_sigma=6.0), s, w)
    xla = _grads(lambda x: render_xray(x, g, backend="xla", cutoff_sigma=6.0), s, w)
    ref = _on_host(_ref_grads, s, g, w, 6.0)
    for name, a, b, r in zip(XFIELDS, fast, xla, ref, strict=True):
        assert _rel(a, r) < 2e-5, name  # the CPU tolerance at 6σ
        assert _rel(a, b) < 2e-5, name


def test_xray_pallas_backward_is_deterministic():
    """Pallas: disjoint writes and segmented scans, so repeated backwards are bitwise equal."""
    s, g = _xray_scene(n=2000, seed=2), _geom("cone", shape=(128, 128), n_views=2)
    w = jnp.asarray(np.random.default_rng(6).normal(size=(2, 128, 128)), jnp.float32)

    def loss(x):
        return jnp.sum(render_xray(x, g, backend="pallas") * w)

    f = jax.jit(jax.grad(loss, allow_int=True))
    a, b = f(s), f(s)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_xray_xla_path_on_gpu_is_reproducible_within_tolerance():
    """The XLA path's scatter-adds use atomics on a GPU: its sums may change order between runs.
    Documented tolerance: 1e-6 relative (float32 round-off of a reordered sum)."""
    s, g = _xray_scene(n=2000, seed=2), _geom("cone", shape=(128, 128), n_views=2)
    w = jnp.asarray(np.random.default_rng(6).normal(size=(2, 128, 128)), jnp.float32)
    f = jax.jit(jax.grad(lambda x: jnp.sum(render_xray(x, g, backend="xla") * w), allow_int=True))
    a, b = f(s), f(s)
    for name in XFIELDS:
        assert _rel(getattr(a, name), getattr(b, name)) < 1e-6, name


@pytest.fixture(scope="module")
def rgb_scene():
    splats, cam = trgb._scene()
    return splats, cam, trgb._ref_value_and_grad(splats, cam)


@pytest.mark.parametrize("pair_capacity", [None, 128], ids=["one-window", "windows"])
def test_rgb_pallas_matches_xla_and_float64(rgb_scene, pair_capacity):
    splats, cam, ((_, (c_ref, a_ref, d_ref)), (g_ref, gb_ref)) = rgb_scene
    cfg = RasterConfig(backend="pallas", pair_capacity=pair_capacity)
    (_, out), (g, gb, _) = trgb._fast_value_and_grad(splats, cam, cfg)
    (_, o_x), (g_x, gb_x, _) = trgb._fast_value_and_grad(splats, cam, trgb.MAIN)
    if pair_capacity is not None:
        assert int(out.n_pairs) > 2 * pair_capacity
    assert np.abs(out.color - c_ref).max() <= 1e-5  # the CPU tolerances (test_render_rgb)
    assert np.abs(out.alpha - a_ref).max() <= 1e-5
    assert np.abs(out.alpha * out.depth - a_ref * d_ref).max() <= 1e-5 * np.abs(d_ref).max()
    assert np.abs(out.color - o_x.color).max() <= 1e-5
    for name in trgb.FIELDS:
        assert trgb._rel(getattr(g, name), getattr(g_ref, name)) <= 1e-4, name
        assert trgb._rel(getattr(g, name), getattr(g_x, name)) <= 1e-4, name
    assert trgb._rel(gb, gb_ref) <= 1e-4


def test_rgb_pallas_backward_is_deterministic(rgb_scene):
    splats, cam, _ = rgb_scene
    cfg = RasterConfig(backend="pallas", pair_capacity=128)
    _, g1 = trgb._fast_value_and_grad(splats, cam, cfg)
    _, g2 = trgb._fast_value_and_grad(splats, cam, dataclasses.replace(cfg))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("backend", ["pallas", "xla"])
def test_slices_and_voxelizer_match_brute_force(backend):
    s = _slice_scene()
    for name, plane in _planes().items():
        ref = _field(s, slice_pixel_centers(plane))
        assert _rel(render_slice(s, plane, backend=backend), ref) < 1e-5, name  # CPU tolerance
    grid = make_voxel_grid((20, 24, 28), (2.0, 1.5, 1.75), (-24.0, -18.0, -20.0))
    ref = _field(s, voxel_centers(grid))
    assert _rel(voxelize(s, grid, backend=backend), ref) < 1e-5
    assert _rel(voxelize(s, grid, backend=backend, capacity=256), ref) < 1e-5  # windows


def test_slice_pallas_gradients_match_xla_and_are_deterministic():
    s, plane = _slice_scene(), _planes()["oblique"]
    w = jnp.asarray(np.random.default_rng(3).normal(size=plane.resolution), jnp.float32)

    def grads(backend):
        f = jax.jit(jax.grad(lambda x: jnp.sum(render_slice(x, plane, backend=backend) * w),
                             allow_int=True))
        return f(s)

    a, b, x = grads("pallas"), grads("pallas"), grads("xla")
    for name in XFIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
        assert _rel(getattr(a, name), getattr(x, name)) < 2e-5, name


def test_training_steps_with_auto_match_xla():
    s, g = _xray_scene(n=300, seed=3), _geom("cone", shape=SHAPE, n_views=3)
    target = render_xray(_xray_scene(n=300, seed=4), g, backend="xla")
    planes = stack_planes([axial_plane(0.0, (0.0, 0.0), (60.0, 60.0), (64, 64))])
    slices = jnp.asarray(np.random.default_rng(0).uniform(0, 0.05, (1, 64, 64)), jnp.float32)
    for trainer in ("xray", "internal"):
        out = {}
        for backend in ("xla", "auto"):
            if trainer == "xray":
                cfg = XrayTrainConfig(iterations=1, block=1, backend=backend, lambda_tv=0.1,
                                      tv_size=16, tv_spacing=2.0)
                optimizer, block = xray_block(cfg, 30.0, float(target.max()))
                extra = (g, target, jnp.asarray([[1]]), jnp.full((1, 3), -16.0, jnp.float32))
            else:
                cfg = InternalConfig(iterations=1, block=1, projection_weight=1.0, backend=backend)
                optimizer, block = internal_block(cfg, "rad", 30.0, 0.05, float(target.max()))
                extra = (planes, slices, g, target, jnp.zeros(3, jnp.float32), jnp.asarray([0]),
                         jnp.asarray([1]), jnp.asarray([True]))
            st = initial_train_state(s, optimizer)
            (_, opt_state, acc, _), losses = block(st["params"], st["opt_state"], st["grad_acc"],
                                                   st["count"], st["active"], *extra)
            out[backend] = (losses, acc, opt_state)
        (l1, a1, o1), (l2, a2, o2) = out["xla"], out["auto"]
        np.testing.assert_allclose(np.asarray(l2), np.asarray(l1), rtol=1e-5, err_msg=trainer)
        _assert_trees_close(a2, a1, 2e-5)
        _assert_trees_close(o2, o1, 5e-5, min_nonzero=8)
