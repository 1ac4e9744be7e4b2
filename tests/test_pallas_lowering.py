"""The Pallas kernels (RGB, X-ray, slices / voxelizer) lower to Triton IR for CUDA, on any host.

``jax.export`` with ``platforms=["cuda"]`` runs the Pallas → Triton lowering in Python without a
GPU: an operation the Triton back end does not support (a slice, a block that is not a power of
two, ...) fails here. What it cannot check is the Triton → PTX compilation and the run, which
``pytest -m gpu`` (tests/test_gpu.py) does on a GPU. The export records the host's code paths for
the XLA parts around the kernels (e.g. the CPU segment sum of the RGB backward), not the GPU ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import make_pinhole, make_xray_geometry
from insideout_jax.render import RasterConfig, render_rgb
from insideout_jax.render.slices import axial_plane, make_voxel_grid, render_slice, voxelize
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points

_TRITON_CALL = "xla.gpu.triton"
_DISABLED = [jax.export.DisabledSafetyCheck.custom_call("__gpu$" + _TRITON_CALL)]


def _lower_for_cuda(fn, *args) -> str:
    exp = jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=_DISABLED)(*args)
    return exp.mlir_module()


def _n_triton_calls(text: str) -> int:
    return text.count("stablehlo.custom_call @__gpu$" + _TRITON_CALL)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_xray_kernels_lower_to_triton(mode):
    rng = np.random.default_rng(0)
    s = rad_splats_from_points(rng.uniform(-20, 20, (16, 3)), 0.02)
    g = make_xray_geometry(mode=mode, n_detector=(40, 48), d_detector=(1.5, 1.5), dso=400.0,
                           dsd=600.0, angles=[0.1, 1.3])
    render = lambda sp: render_xray(sp, g, backend="pallas")  # noqa: E731
    fwd = _lower_for_cuda(render, s)
    assert _n_triton_calls(fwd) == 1 and "mosaic_gpu" not in fwd

    def loss(means, log_scales, quats, log_densities):
        sp = s.replace(means=means, log_scales=log_scales, quats=quats, log_densities=log_densities)
        return jnp.sum(render(sp) ** 2)

    bwd = _lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2, 3)), s.means, s.log_scales, s.quats,
                          s.log_densities)
    assert _n_triton_calls(bwd) == 2  # the forward kernel and the backward kernel


def test_rgb_kernels_lower_to_triton():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-1, 1, (24, 2)), rng.uniform(4, 6, (24, 1))], 1)
    s = rgb_splats_from_points(pts, sh_degree=1)
    cam = make_pinhole(np.eye(3), np.zeros(3), 40.0, 40.0, 24.0, 20.0, 48, 40)
    cfg = RasterConfig(backend="pallas")
    fwd = _lower_for_cuda(lambda sp: render_rgb(sp, cam, config=cfg).color, s)
    assert _n_triton_calls(fwd) == 1 and "mosaic_gpu" not in fwd

    def loss(means, log_scales, opacity_logits):
        sp = s.replace(means=means, log_scales=log_scales, opacity_logits=opacity_logits)
        out = render_rgb(sp, cam, config=cfg)
        return jnp.sum(out.color) + jnp.sum(out.alpha * out.depth)

    bwd = _lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2)), s.means, s.log_scales,
                          s.opacity_logits)
    assert _n_triton_calls(bwd) == 2


def test_slice_and_voxelizer_kernels_lower_to_triton():
    rng = np.random.default_rng(0)
    s = rad_splats_from_points(rng.uniform(-20, 20, (16, 3)), 0.02)
    plane = axial_plane(0.0, (0.0, 0.0), (60.0, 60.0), (40, 48))
    grid = make_voxel_grid((4, 20, 24), (3.0, 3.0, 3.0), (-30.0, -30.0, -6.0))

    def loss(means, log_scales):
        sp = s.replace(means=means, log_scales=log_scales)
        return (jnp.sum(render_slice(sp, plane, backend="pallas") ** 2)
                + jnp.sum(voxelize(sp, grid, backend="pallas") ** 2))

    fwd = _lower_for_cuda(lambda m: loss(m, s.log_scales), s.means)
    assert _n_triton_calls(fwd) == 2 and "mosaic_gpu" not in fwd
    bwd = _lower_for_cuda(jax.grad(loss, argnums=(0, 1)), s.means, s.log_scales)
    assert _n_triton_calls(bwd) == 4  # forward and backward kernels of both
