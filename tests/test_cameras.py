"""Pinhole cameras (COLMAP conventions) and cone/parallel-beam X-ray geometry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from insideout_jax import cameras as C


def _cone(**kw):
    args = dict(mode="cone", n_detector=(24, 32), d_detector=(1.5, 2.0),
                angles=np.linspace(0, 2 * np.pi, 7, endpoint=False), dso=1000.0, dsd=1500.0)
    args.update(kw)
    return C.make_xray_geometry(**args)


def test_central_ray_passes_through_rotation_axis():
    # Odd detector: the middle pixel is the central ray; it must hit the z axis (x = y = 0).
    g = _cone(n_detector=(25, 33))
    for a in np.asarray(g.angles):
        o, d = C.xray_rays(g, jnp.float32(a))
        oc, dc = np.asarray(o[12, 16], np.float64), np.asarray(d[12, 16], np.float64)
        tau = -oc[:2] @ dc[:2] / (dc[:2] @ dc[:2])
        np.testing.assert_allclose((oc + tau * dc)[:2], 0.0, atol=1e-4)
        np.testing.assert_allclose(oc, 1000 * np.array([np.cos(a), np.sin(a), 0]), atol=1e-3)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_project_then_backproject_hits_point(mode):
    g = _cone(mode=mode, offset_detector=(3.0, -4.0), offset_origin=(5.0, -7.0, 2.0))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-60, 60, size=(200, 3))
    with jax.enable_x64(True):
        g64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), g)
        for a in np.asarray(g.angles, np.float64)[:3]:
            uv, _ = C.xray_project(g64, jnp.float64(a), jnp.asarray(pts))
            # cast the ray back through that detector position (bilinear in the pixel grid is
            # exact: pixel centres are affine in (j, i))
            pix = C.xray_pixel_centers(g64, jnp.float64(a))
            e_u = (pix[0, 1] - pix[0, 0]) / 1.0
            e_v = (pix[1, 0] - pix[0, 0]) / 1.0
            det = pix[0, 0] + uv[:, :1] * e_u + uv[:, 1:] * e_v
            if mode == "cone":
                src = C.xray_source(g64, jnp.float64(a))
                d = det - src
                o = src
            else:
                d = jnp.broadcast_to(-jnp.array([np.cos(a), np.sin(a), 0.0]), det.shape)
                o = det
            d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
            p = jnp.asarray(pts)
            closest = o + jnp.sum((p - o) * d, -1, keepdims=True) * d
            assert float(jnp.abs(closest - p).max()) < 1e-5


def test_rays_project_back_onto_their_pixels():
    g = _cone(offset_detector=(1.0, 2.0), offset_origin=(3.0, -2.0, 1.0))
    a = g.angles[2]
    o, d = C.xray_rays(g, a)
    chex.assert_shape([o, d], (24, 32, 3))
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-6)
    uv, depth = C.xray_project(g, a, o + 800.0 * d)
    j, i = np.meshgrid(np.arange(32), np.arange(24))
    np.testing.assert_allclose(uv[..., 0], j, atol=2e-4)
    np.testing.assert_allclose(uv[..., 1], i, atol=2e-4)
    assert np.all(np.asarray(depth) > 0)
    # row index grows with +z, column with u = (−sin θ, cos θ, 0)
    assert float(o[0, 0, 2] + 800 * d[0, 0, 2]) < float(o[-1, 0, 2] + 800 * d[-1, 0, 2])


def test_parallel_is_the_cone_limit():
    far = 1e9
    with jax.enable_x64(True):
        cone = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                      _cone(dso=far, dsd=far + 500.0))
        par = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                     _cone(mode="parallel"))
        pts = jnp.asarray(np.random.default_rng(1).uniform(-50, 50, (100, 3)))
        for a in cone.angles[:3]:
            uc, _ = C.xray_project(cone, a, pts)
            up, _ = C.xray_project(par, a, pts)
            np.testing.assert_allclose(uc, up, atol=1e-3)  # error O(size/DSO)·pixels
            _, dc = C.xray_rays(cone, a)
            _, dp = C.xray_rays(par, a)
            np.testing.assert_allclose(dc, dp, atol=1e-4)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_jacobian_matches_finite_differences(mode):
    g = _cone(mode=mode, offset_origin=(2.0, 1.0, -3.0))
    with jax.enable_x64(True):
        g64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), g)
        pts = np.random.default_rng(2).uniform(-80, 80, (10, 3))
        a = g64.angles[3]
        jac = np.asarray(C.xray_project_jacobian(g64, a, jnp.asarray(pts)))
        chex.assert_shape(jac, (10, 2, 3))
        h = 1e-4
        for k in range(3):
            e = np.zeros(3)
            e[k] = h
            up = np.asarray(C.xray_project(g64, a, jnp.asarray(pts + e))[0])
            dn = np.asarray(C.xray_project(g64, a, jnp.asarray(pts - e))[0])
            np.testing.assert_allclose(jac[:, :, k], (up - dn) / (2 * h), rtol=1e-6, atol=1e-9)


def test_geometry_validation_messages():
    with pytest.raises(ValueError, match="mode must be"):
        _cone(mode="fan")
    with pytest.raises(ValueError, match="DSD must be larger than DSO"):
        _cone(dsd=900.0)
    with pytest.raises(ValueError, match="d_detector must be positive"):
        _cone(d_detector=(0.0, 1.0))
    with pytest.raises(ValueError, match="n_detector"):
        _cone(n_detector=(24, 0))
    with pytest.raises(ValueError, match="angles"):
        _cone(angles=[])
    with pytest.raises(ValueError, match="DSO"):
        C.make_xray_geometry(mode="cone", n_detector=(4, 4), d_detector=(1, 1), angles=[0.0])


def test_geometry_is_a_pytree_under_jit():
    g = _cone()

    @jax.jit
    def f(geom):
        return C.xray_rays(geom, geom.angles[1])[1].sum()

    assert np.isfinite(float(f(g)))
    leaves, tree = jax.tree_util.tree_flatten(g)
    g2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert g2.mode == "cone" and g2.n_detector == (24, 32)


def _camera():
    rot, t = C.look_at([120.0, -40.0, 30.0], [0.0, 0.0, 0.0])
    return C.make_pinhole(rot, t, 300.0, 310.0, 33.0, 22.0, 64, 48)


def test_pinhole_rays_project_to_pixel_centres():
    cam = _camera()
    o, d = C.pinhole_rays(cam)
    chex.assert_shape([o, d], (48, 64, 3))
    uv, z = C.project_points(cam, o + 50.0 * d)
    j, i = np.meshgrid(np.arange(64) + 0.5, np.arange(48) + 0.5)
    np.testing.assert_allclose(uv[..., 0], j, atol=1e-3)
    np.testing.assert_allclose(uv[..., 1], i, atol=1e-3)
    assert np.all(np.asarray(z) > 0)
    np.testing.assert_allclose(C.camera_center(cam), [120.0, -40.0, 30.0], atol=1e-4)


def test_camera_moves_with_similarity():
    cam = _camera()
    rot = Rotation.random(random_state=3).as_matrix()
    t, s = np.array([10.0, -3.0, 7.0]), 2.5
    pts = np.random.default_rng(4).uniform(-20, 20, (50, 3))
    uv0, z0 = C.project_points(cam, jnp.asarray(pts, jnp.float32))
    cam2 = C.transform_camera(cam, rot, t, s)
    uv1, z1 = C.project_points(cam2, jnp.asarray(s * pts @ rot.T + t, jnp.float32))
    np.testing.assert_allclose(uv1, uv0, atol=2e-3)
    np.testing.assert_allclose(z1, s * z0, rtol=1e-4)


def test_colmap_models():
    rot, t = np.eye(3), np.zeros(3)
    cam = C.pinhole_from_colmap("SIMPLE_PINHOLE", [100.0, 32.0, 24.0], 64, 48, rot, t)
    assert float(cam.fx) == float(cam.fy) == 100.0
    cam = C.pinhole_from_colmap("PINHOLE", [100.0, 90.0, 32.0, 24.0], 64, 48, rot, t)
    np.testing.assert_allclose(C.intrinsic_matrix(cam), [[100, 0, 32], [0, 90, 24], [0, 0, 1]])
    with pytest.raises(ValueError, match="undistort"):
        C.pinhole_from_colmap("OPENCV", [100, 100, 32, 24, 0.1, 0, 0, 0], 64, 48, rot, t)
    with pytest.raises(ValueError, match="needs 4 params"):
        C.pinhole_from_colmap("PINHOLE", [100.0, 32.0, 24.0], 64, 48, rot, t)
    with pytest.raises(ValueError, match="proper rotation"):
        C.make_pinhole(-np.eye(3), t, 1, 1, 0, 0, 4, 4)
    with pytest.raises(ValueError, match="focal"):
        C.make_pinhole(rot, t, -1, 1, 0, 0, 4, 4)


def test_scale_camera_keeps_pixel_edges():
    cam = _camera()
    half = C.scale_camera(cam, 0.5)
    assert (half.width, half.height) == (32, 24)
    pts = jnp.asarray(np.random.default_rng(5).uniform(-20, 20, (20, 3)), jnp.float32)
    np.testing.assert_allclose(C.project_points(half, pts)[0], 0.5 * C.project_points(cam, pts)[0],
                               rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="non-integer image size"):
        C.scale_camera(cam, 0.3)
