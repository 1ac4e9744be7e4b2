"""General X-ray geometry (per-view poses, C-arm views, projection matrices) against independent
references: the circular scan it generalises, a float64 closed form built by hand from the
C-arm's angles, and pixel coordinates from the projection matrices."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import (
    carm_geometry,
    carm_poses,
    circular_poses,
    geometry_from_projection_matrices,
    make_xray_geometry,
    projection_matrices,
    xray_project,
    xray_rays,
)
from insideout_jax.data.ctobject import ct_volume_projections
from insideout_jax.fdk import fdk
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.xrayfiles import read_geometry, write_geometry
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import rad_splats_from_points

SHAPE = (36, 44)


def _circular(mode="cone", n_views=3):
    return make_xray_geometry(mode=mode, n_detector=SHAPE, d_detector=(2.0, 1.6), dso=400.0, dsd=600.0,
                              angles=np.linspace(0.3, 0.3 + 2 * np.pi, n_views, endpoint=False),
                              offset_detector=(3.0, -2.5), offset_origin=(2.0, -1.0, 3.0))


def _posed(g):
    return make_xray_geometry(mode=g.mode, n_detector=g.n_detector, d_detector=np.asarray(g.d_detector),
                              dso=float(g.dso), dsd=float(g.dsd), poses=circular_poses(g))


def _scene(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return rad_splats_from_points(rng.uniform(-20, 20, (n, 3)), rng.uniform(0.01, 0.05, n), capacity=16,
                                  log_scales=np.log(rng.uniform(1.5, 5.0, (n, 3))))


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_posed_geometry_reproduces_the_circular_scan(mode):
    g = _circular(mode)
    p = _posed(g)
    chex.assert_shape(p.poses, (3, 5, 3))
    np.testing.assert_allclose(np.asarray(p.angles), np.angle(np.exp(1j * np.asarray(g.angles))), atol=1e-6)
    for k in range(3):
        for a, b in zip(xray_rays(g, g.angles[k]), xray_rays(p, p.poses[k]), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4)
    s = _scene()
    ref = np.asarray(render_xray(s, g))
    np.testing.assert_allclose(np.asarray(render_xray(s, p)), ref, atol=2e-6 * np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(render_xray(s, p, views=[2, 0])), ref[[2, 0]],
                               atol=2e-6 * np.abs(ref).max())
    vol = np.zeros((8, 10, 12), np.float32)
    vol[2:6, 3:8, 4:9] = 0.02
    args = (vol, (2.0, 2.0, 2.0), (-11.0, -9.0, -7.0))
    ref_p = ct_volume_projections(*args, g)
    np.testing.assert_allclose(ct_volume_projections(*args, p), ref_p, atol=1e-5 * ref_p.max())
    ref_v = np.asarray(fdk(ref_p, g, (8, 10, 12), (2.0, 2.0, 2.0), (-11.0, -9.0, -7.0)))
    np.testing.assert_allclose(np.asarray(fdk(ref_p, p, (8, 10, 12), (2.0, 2.0, 2.0), (-11.0, -9.0, -7.0))),
                               ref_v, atol=1e-4 * np.abs(ref_v).max())


def _hand_rays(alpha, beta, iso, dso, dsd, nv, nu, pix):
    """Float64 rays of a C-arm view built from its definition (source azimuth α, tilt β)."""
    e_r = np.array([math.cos(beta) * math.cos(alpha), math.cos(beta) * math.sin(alpha), math.sin(beta)])
    e_u = np.array([-math.sin(alpha), math.cos(alpha), 0.0])
    e_v = np.cross(e_r, e_u)
    src = iso + dso * e_r
    centre = iso - (dsd - dso) * e_r
    j, i = np.meshgrid(np.arange(nu) - (nu - 1) / 2, np.arange(nv) - (nv - 1) / 2)
    pixels = centre + (j * pix)[..., None] * e_u + (i * pix)[..., None] * e_v
    return src, pixels - src


def test_tilted_carm_projection_of_a_gaussian_matches_the_float64_closed_form():
    mu, sig = np.array([6.0, -4.0, 9.0]), np.array([3.0, 5.0, 2.0])
    q = np.array([0.9, 0.2, -0.3, 0.25])
    q /= np.linalg.norm(q)
    s = rad_splats_from_points(mu[None], np.array([0.05]), capacity=1, log_scales=np.log(sig)[None])
    s = s.replace(quats=jnp.asarray(q[None], jnp.float32))
    iso = np.array([2.0, -3.0, 5.0])
    prim, sec = np.array([90.0 + 11.0, -13.0]), np.array([-14.0, 9.0])  # AP and LAT, tilted
    g = carm_geometry(prim, sec, pixel_mm=0.8, n_detector=(48, 40), isocentre=iso)
    img = np.asarray(render_xray(s, g, cutoff_sigma=7.0))
    chex.assert_shape(img, (2, 48, 40))
    w, x, y, z = q
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    prec = rot @ np.diag(sig**-2.0) @ rot.T
    for k in range(2):
        src, d = _hand_rays(math.radians(prim[k]), math.radians(sec[k]), iso, 750.0, 1124.0, 48, 40, 0.8)
        qv = src - mu
        a = np.einsum("...i,ij,...j->...", d, prec, d)
        b = np.einsum("...i,ij,...j->...", d, prec, qv)
        c = qv @ prec @ qv
        ref = 0.05 * np.linalg.norm(d, axis=-1) * np.sqrt(2 * np.pi / a) * np.exp(-0.5 * (c - b * b / a))
        assert ref.max() > 0.3
        np.testing.assert_allclose(img[k], ref, atol=2e-5 * ref.max())


def test_projection_matrices_round_trip_and_project_points():
    g = carm_geometry([90.0, 4.0, 200.0], [10.0, -15.0, 3.0], pixel_mm=0.6, n_detector=(30, 50),
                      isocentre=(1.0, 2.0, -3.0))
    g = g.replace(poses=g.poses.at[:, 4, :2].set(jnp.asarray([[1.2, -0.6], [0.0, 2.4], [-3.0, 0.3]])))
    mats = projection_matrices(g) * np.array([2.0, -0.5, 7.0])[:, None, None]  # any scale per view
    pts = np.random.default_rng(1).uniform(-40, 40, (20, 3))
    for k in range(3):
        h = mats[k] @ np.concatenate([pts, np.ones((20, 1))], 1).T
        uv, depth = xray_project(g, g.poses[k], jnp.asarray(pts, jnp.float32))
        np.testing.assert_allclose((h[:2] / h[2]).T, np.asarray(uv), atol=2e-3)
    back = geometry_from_projection_matrices(mats, n_detector=(30, 50), d_detector=(0.6, 0.6), dso=750.0)
    np.testing.assert_allclose(np.asarray(back.poses), np.asarray(g.poses), atol=1e-4)
    assert abs(float(back.dsd) - 1124.0) < 1e-3
    skewed = mats.copy()
    skewed[0, 0, :3] += 0.05 * skewed[0, 1, :3]
    with pytest.raises(ValueError, match="matrix 0"):
        geometry_from_projection_matrices(skewed, n_detector=(30, 50), d_detector=(0.6, 0.6), dso=750.0)
    mirrored = mats.copy()
    mirrored[:, 0] = (50 - 1) * mirrored[:, 2] - mirrored[:, 0]  # columns flipped: j → nu − 1 − j
    with pytest.raises(ValueError, match="mirrored"):
        geometry_from_projection_matrices(mirrored, n_detector=(30, 50), d_detector=(0.6, 0.6), dso=750.0)


def test_carm_poses_and_bad_poses():
    p = carm_poses([0.0, 90.0])
    np.testing.assert_allclose(p[0, 0], [1, 0, 0], atol=1e-12)  # lateral: source on +x
    np.testing.assert_allclose(p[1, 0], [0, 1, 0], atol=1e-12)  # AP: source on +y
    bad = p.copy()
    bad[0, 1] *= -1  # left-handed frame
    with pytest.raises(ValueError, match=r"poses\[0\]"):
        make_xray_geometry(mode="cone", n_detector=(8, 8), d_detector=(1, 1), dso=10, dsd=20, poses=bad)
    with pytest.raises(ValueError, match="not both"):
        make_xray_geometry(mode="cone", n_detector=(8, 8), d_detector=(1, 1), dso=10, dsd=20, poses=p,
                           angles=[0.0, 1.0])
    g = carm_geometry([0.0, 90.0], pixel_mm=1.0, n_detector=(8, 8))
    with pytest.raises(ValueError, match="poses"):
        render_xray(_scene(), g, views=np.array([0.0, 0.5]))


def test_geometry_json_with_poses_and_projection_matrices(tmp_path):
    g = carm_geometry([92.0, -7.0], [4.0, 12.0], pixel_mm=0.5, n_detector=(20, 24), isocentre=(0, 1, 2))
    write_geometry(tmp_path / "g.json", g)
    back = read_geometry(tmp_path / "g.json")
    np.testing.assert_array_equal(np.asarray(back.poses), np.asarray(g.poses))
    d = json.loads((tmp_path / "g.json").read_text())
    del d["poses"]
    d["projection_matrices"] = projection_matrices(g).tolist()
    (tmp_path / "m.json").write_text(json.dumps(d))
    np.testing.assert_allclose(np.asarray(read_geometry(tmp_path / "m.json").poses), np.asarray(g.poses),
                               atol=1e-4)
    d["projection_matrices"] = d["projection_matrices"][:1]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ObjectFolderError, match="projection_matrices"):
        read_geometry(tmp_path / "bad.json")
    with jax.default_device(jax.devices("cpu")[0]):
        assert back.select([1]).n_views == 1
