"""No renderer contains a float32 matrix product at default precision.

On a GPU, XLA runs a default-precision float32 ``dot_general`` in TF32 (a 10-bit mantissa): in the
X-ray records the detector coordinates ``p·e`` came out ~5e-4 relative off, the images 1e-3 off the
float64 closed form (measured on an H200, ``tests/test_gpu.py``), while the CPU, which has no TF32,
showed nothing. The check runs here, on the CPU, by reading the traced programs: every float32
``dot_general`` in the forward and backward passes must ask for ``Precision.HIGHEST``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_render_rgb as trgb
from jax._src import source_info_util
from jax.extend.core import ClosedJaxpr, Jaxpr
from test_render_xray import _geom
from test_slices import _planes
from test_slices import _scene as _slice_scene

from insideout_jax.render import RasterConfig, render_rgb
from insideout_jax.render.slices import make_voxel_grid, render_slice, voxelize
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import rad_splats_from_points


def _subjaxprs(value):
    if isinstance(value, ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _subjaxprs(v)


def _low_precision_dots(jaxpr: Jaxpr) -> list[str]:
    """Every float32 dot_general in ``jaxpr`` (nested ones too) not at HIGHEST, with its source."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            prec = eqn.params.get("precision")
            f32 = any(v.aval.dtype == jnp.float32 for v in eqn.invars)
            if f32 and (prec is None or any(p != jax.lax.Precision.HIGHEST for p in prec)):
                found.append(source_info_util.summarize(eqn.source_info))
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                found += _low_precision_dots(sub)
    return found


def _forward_and_backward(render, splats):
    """The jaxpr of render's forward and its vector-Jacobian product."""
    def f(s):
        out, vjp = jax.vjp(lambda x: jnp.sum(render(x) ** 2), s)
        return out, vjp(jnp.float32(1.0))
    return jax.make_jaxpr(f)(splats).jaxpr


def _xray_scene(n=60, seed=0):
    rng = np.random.default_rng(seed)
    s = rad_splats_from_points(rng.uniform(-20, 20, (n, 3)), rng.uniform(0.005, 0.03, n),
                               log_scales=np.log(rng.uniform(1.0, 4.0, (n, 3))))
    return s.replace(quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32))


# the self-check of the detector below: a default-precision product is found
def test_the_check_finds_a_default_precision_product():
    x = jnp.ones((4, 3), jnp.float32)
    assert len(_low_precision_dots(jax.make_jaxpr(lambda a: a @ a.T)(x).jaxpr)) == 1
    hi = jax.make_jaxpr(lambda a: jnp.dot(a, a.T, precision=jax.lax.Precision.HIGHEST))(x)
    assert _low_precision_dots(hi.jaxpr) == []


@pytest.mark.parametrize("backend", ["xla", "pallas_interpret"])
@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_xray_renderer_has_no_default_precision_products(mode, backend):
    g = _geom(mode, shape=(32, 48), n_views=2)
    jaxpr = _forward_and_backward(lambda s: render_xray(s, g, backend=backend), _xray_scene())
    assert _low_precision_dots(jaxpr) == []


def test_rgb_renderer_has_no_default_precision_products():
    splats, cam = trgb._scene(n=40)
    cfg = RasterConfig()
    jaxpr = _forward_and_backward(lambda s: render_rgb(s, cam, config=cfg).color, splats)
    assert _low_precision_dots(jaxpr) == []


def test_slice_renderer_and_voxelizer_have_no_default_precision_products():
    s = _slice_scene()
    plane = _planes()["oblique"]
    assert _low_precision_dots(_forward_and_backward(lambda x: render_slice(x, plane), s)) == []
    grid = make_voxel_grid((4, 16, 16), (2.0, 2.0, 2.0), (-16.0, -16.0, -4.0))
    assert _low_precision_dots(_forward_and_backward(lambda x: voxelize(x, grid), s)) == []


def test_registration_and_fitting_transforms_have_no_default_precision_products():
    """The pose algebra of the registration and the similarity / Procrustes of the fitting run on a
    GPU inside their trainers and ICP: full float32 there too."""
    from insideout_jax.fitting.procrustes import Similarity, procrustes
    from insideout_jax.registration.pose import apply_pose, compose_poses, invert_pose

    rng = np.random.default_rng(0)
    pts = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)
    pose = jnp.asarray(rng.normal(size=6) * 0.3, jnp.float32)
    centre = jnp.ones(3, jnp.float32)

    def pose_algebra(p):
        q = compose_poses(p, invert_pose(p * 0.5))
        return jnp.sum(apply_pose(q, centre, pts) ** 2)

    def fit(x):
        t = procrustes(x, x * 1.5 + 2.0, with_scale=True)
        return jnp.sum(t.compose(t.inverse()).apply(x) ** 2)

    assert _low_precision_dots(_forward_and_backward(pose_algebra, pose)) == []
    assert _low_precision_dots(_forward_and_backward(fit, pts)) == []
    assert isinstance(procrustes(pts, pts), Similarity)
