"""The trainers' back end (``backend=`` in their configs): one jitted training step with the
Pallas kernels (interpreted on CPU) gives the loss and gradients of the XLA path. The steps use
every renderer with Pallas kernels: X-ray projections and the TV term's voxelizer (radiative
training), slices and projections (internal rendering).

The gradients are read from the optimizer state after one Adam step: its first moment is
(1 − β₁)·g and its second (1 − β₂)·g², per field, and ``grad_acc`` holds ‖∂L/∂means‖ per splat.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_render_xray import _geom, _scene

from insideout_jax.internal.train import InternalConfig, stack_planes, train_internal
from insideout_jax.internal.train import _make_block as internal_block
from insideout_jax.render.slices import axial_plane
from insideout_jax.render.xray import render_xray
from insideout_jax.train.densify import initial_train_state
from insideout_jax.train.xray import XrayTrainConfig, train_xray
from insideout_jax.train.xray import _make_block as xray_block


def _assert_trees_close(a, b, tol, min_nonzero=1):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    n_nonzero = 0
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = np.abs(y).max() if y.size else 0.0
        n_nonzero += scale > 0
        assert np.abs(x - y).max(initial=0.0) <= tol * max(scale, 1e-30)
    assert n_nonzero >= min_nonzero  # the comparison covers real gradients, not only zeros


@pytest.fixture(scope="module")
def xray_data():
    s, g = _scene(n=12, seed=3), _geom("cone")
    target = np.asarray(render_xray(_scene(n=12, seed=8), g))
    return s, g, jnp.asarray(target)


def test_xray_training_step_pallas_matches_xla(xray_data):
    s, g, target = xray_data
    out = {}
    for backend in ("xla", "pallas_interpret"):
        cfg = XrayTrainConfig(iterations=1, block=1, backend=backend, lambda_tv=0.1, tv_size=8,
                              tv_spacing=4.0)
        optimizer, block = xray_block(cfg, 30.0, float(target.max()))
        st = initial_train_state(s, optimizer)
        (_, opt_state, acc, _), losses = block(
            st["params"], st["opt_state"], st["grad_acc"], st["count"], st["active"], g, target,
            jnp.asarray([[1]]), jnp.full((1, 3), -16.0, jnp.float32))
        out[backend] = (losses, acc, opt_state)
    (l1, a1, o1), (l2, a2, o2) = out["xla"], out["pallas_interpret"]
    assert float(l1[0]) > 0
    np.testing.assert_allclose(np.asarray(l2), np.asarray(l1), rtol=1e-5)
    assert float(a1.max()) > 0
    _assert_trees_close(a2, a1, 2e-5)
    # 4 fields × (μ, ν): (1 − β₂)·g² doubles the relative error of g
    _assert_trees_close(o2, o1, 5e-5, min_nonzero=8)


def test_internal_training_step_pallas_matches_xla(xray_data):
    s, g, target = xray_data
    planes = stack_planes([axial_plane(0.0, (0.0, 0.0), (60.0, 60.0), (16, 16))])
    slices = jnp.asarray(np.random.default_rng(0).uniform(0, 0.05, (1, 16, 16)), jnp.float32)
    out = {}
    for backend in ("xla", "pallas_interpret"):
        cfg = InternalConfig(iterations=1, block=1, projection_weight=1.0, backend=backend)
        optimizer, block = internal_block(cfg, "rad", 30.0, 0.05, float(target.max()))
        st = initial_train_state(s, optimizer)
        (_, opt_state, acc, _), losses = block(
            st["params"], st["opt_state"], st["grad_acc"], st["count"], st["active"], planes,
            slices, g, target, jnp.zeros(3, jnp.float32), jnp.asarray([0]), jnp.asarray([1]),
            jnp.asarray([True]))
        out[backend] = (losses, acc, opt_state)
    (l1, a1, o1), (l2, a2, o2) = out["xla"], out["pallas_interpret"]
    np.testing.assert_allclose(np.asarray(l2), np.asarray(l1), rtol=1e-5)
    _assert_trees_close(a2, a1, 2e-5)
    _assert_trees_close(o2, o1, 5e-5, min_nonzero=8)


def test_trainers_name_an_unknown_backend(xray_data):
    s, g, target = xray_data
    with pytest.raises(ValueError, match="backend"):
        train_xray(np.asarray(target), g, XrayTrainConfig(iterations=1, block=1, backend="cuda"),
                   progress=False)
    planes = [axial_plane(0.0, (0.0, 0.0), (60.0, 60.0), (16, 16))]
    with pytest.raises(ValueError, match="backend"):
        train_internal(s, planes, np.zeros((1, 16, 16), np.float32),
                       InternalConfig(iterations=1, block=1, backend="triton"), progress=False)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the message on machines without a GPU")
def test_trainers_refuse_compiled_pallas_without_a_gpu(xray_data):
    s, g, target = xray_data
    with pytest.raises(ValueError, match="backend='pallas'.*'auto' or 'xla'"):
        train_xray(np.asarray(target), g, XrayTrainConfig(iterations=1, block=1, backend="pallas"),
                   progress=False)
