"""Registration toolkit against independent references: scipy's Rotation and affine_transform,
scikit-image's SSIM, a float64 NCC, and hand-made mTRE / success / capture-range cases."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial.transform import Rotation
from skimage.metrics import structural_similarity

from insideout_jax.registration.metrics import capture_range, mtre, success_rate
from insideout_jax.registration.pose import (
    apply_pose,
    compose_poses,
    euler_zyx_to_rotmat,
    geodesic_distance,
    invert_pose,
    pose_matrix,
    random_poses,
    so3_exp,
    so3_log,
)
from insideout_jax.registration.similarity import ncc3d, ssim3d
from insideout_jax.registration.warp import warp_volume


def test_so3_exp_and_log_match_scipy_including_small_angles():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.normal(size=(20, 3)), 1e-6 * rng.normal(size=(4, 3)), np.zeros((1, 3))])
    w[0] *= 2.9 / np.linalg.norm(w[0])  # near π
    rot = np.asarray(so3_exp(jnp.asarray(w, jnp.float32)))
    chex.assert_shape(rot, (25, 3, 3))
    np.testing.assert_allclose(rot, Rotation.from_rotvec(w).as_matrix(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(so3_log(jnp.asarray(rot))), w, atol=2e-5)
    g = jax.grad(lambda v: jnp.sum(so3_exp(v) * jnp.arange(9.0).reshape(3, 3)))(jnp.zeros(3))
    assert np.all(np.isfinite(np.asarray(g)))
    # Rz Ry Rx against scipy's intrinsic "ZYX"
    ang = rng.uniform(-0.5, 0.5, (5, 3))
    np.testing.assert_allclose(euler_zyx_to_rotmat(ang), Rotation.from_euler("ZYX", ang[:, ::-1]).as_matrix(),
                               atol=1e-12)


def test_pose_algebra_and_geodesic():
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(random_poses(rng, 1)[0], jnp.float32) for _ in range(2))
    c = jnp.asarray([5.0, -3.0, 10.0])
    p = jnp.asarray(rng.uniform(-30, 30, (7, 3)), jnp.float32)
    rot = Rotation.from_rotvec(np.asarray(a[:3], np.float64)).as_matrix()
    ref = (np.asarray(p, np.float64) - np.asarray(c)) @ rot.T + np.asarray(c) + np.asarray(a[3:])
    np.testing.assert_allclose(np.asarray(apply_pose(a, c, p)), ref, atol=1e-3)
    np.testing.assert_allclose(np.asarray(apply_pose(compose_poses(a, b), c, p)),
                               np.asarray(apply_pose(a, c, apply_pose(b, c, p))), atol=1e-3)
    np.testing.assert_allclose(np.asarray(apply_pose(invert_pose(a), c, apply_pose(a, c, p))), np.asarray(p),
                               atol=1e-3)
    assert float(geodesic_distance(a, a, 30.0)) < 1e-5
    assert np.isfinite(np.asarray(jax.grad(lambda x: geodesic_distance(x, a, 30.0))(a))).all()
    # closed form: rotation by θ about one axis and a translation
    x = jnp.asarray([0.0, 0.0, 0.1, 3.0, 0.0, 4.0])
    np.testing.assert_allclose(float(geodesic_distance(x, jnp.zeros(6), 30.0)), np.hypot(3.0, np.hypot(3.0, 4.0)),
                               rtol=1e-5)
    rr = random_poses(np.random.default_rng(2), 2000)
    assert np.abs(rr[:, 3:]).max() <= 50 and np.abs(rr[:, 3:]).max() > 45
    eul = Rotation.from_rotvec(rr[:, :3]).as_euler("ZYX", degrees=True)
    assert np.abs(eul).max() <= 20 + 1e-6 and np.abs(eul).max() > 19


def test_warp_matches_scipy_affine_transform():
    rng = np.random.default_rng(3)
    vol = ndi.gaussian_filter(rng.random((18, 20, 22)), 1.5).astype(np.float32)
    pose = jnp.asarray([0.12, -0.2, 0.15, 2.0, -3.0, 1.5])
    c, sp, org = jnp.asarray([3.0, 4.0, 5.0]), (2.0, 1.0, 1.5), (-10.0, -8.0, -6.0)
    out = np.asarray(warp_volume(jnp.asarray(vol), pose, c, sp, org))
    rot, b = (np.asarray(x, np.float64) for x in pose_matrix(pose, c))
    s = np.diag([1.5, 1.0, 2.0])  # x, y, z spacing
    m = np.linalg.inv(s) @ rot.T @ s
    off = np.linalg.inv(s) @ (rot.T @ (np.asarray(org) - b) - np.asarray(org))
    perm = np.eye(3)[::-1]  # (x, y, z) ↔ (z, y, x)
    ref = ndi.affine_transform(vol.astype(np.float64), perm @ m @ perm, perm @ off, order=1,
                               mode="grid-constant", cval=0.0)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # T then T⁻¹ returns the interior of a smooth volume within the interpolation error
    smooth = jnp.asarray(ndi.gaussian_filter(rng.random((24, 26, 28)), 3.0), jnp.float32)
    small = jnp.asarray([0.05, -0.03, 0.04, 1.0, -0.5, 0.8])
    back = warp_volume(warp_volume(smooth, small, c, sp, org), invert_pose(small), c, sp, org)
    inner = (slice(6, -6),) * 3
    assert np.abs(np.asarray(back)[inner] - np.asarray(smooth)[inner]).max() < 0.05 * np.ptp(np.asarray(smooth))
    g = jax.grad(lambda q: jnp.sum(warp_volume(jnp.asarray(vol), q, c, sp, org) ** 2))(pose)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0


def test_ncc_and_ssim_against_references():
    rng = np.random.default_rng(4)
    a = ndi.gaussian_filter(rng.random((16, 18, 20)), 1.0)
    b = a + 0.05 * rng.normal(size=a.shape)
    ref = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    np.testing.assert_allclose(float(ncc3d(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))), ref, atol=1e-5)
    np.testing.assert_allclose(float(ncc3d(jnp.asarray(a, jnp.float32), jnp.asarray(3 * a + 2, jnp.float32))), 1.0,
                               atol=1e-5)
    rng_ = float(np.ptp(a))
    ref_s = structural_similarity(a, b, data_range=rng_, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False)
    got = float(ssim3d(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), rng_))
    np.testing.assert_allclose(got, ref_s, atol=1e-4)
    assert float(ssim3d(jnp.asarray(a, jnp.float32), jnp.asarray(a, jnp.float32), rng_)) > 0.9999
    with pytest.raises(ValueError, match="window"):
        ssim3d(jnp.zeros((8, 20, 20)), jnp.zeros((8, 20, 20)), 1.0)


def test_mtre_success_and_capture_range_on_hand_made_cases():
    pts = np.array([[10.0, 0, 0], [-10.0, 0, 0], [0, 10.0, 0], [0, -10.0, 0]])
    c = np.zeros(3)
    # a pure translation of 3 mm: every point moves 3 mm
    np.testing.assert_allclose(mtre(np.array([0, 0, 0, 3.0, 0, 0]), np.zeros(6), c, pts), 3.0, rtol=1e-6)
    # a rotation by θ about z: points at radius 10 in the xy plane move 2·10·sin(θ/2)
    th = 0.2
    np.testing.assert_allclose(mtre(np.array([0, 0, th, 0, 0, 0]), np.zeros(6), c, pts), 20 * np.sin(th / 2),
                               rtol=1e-5)
    assert success_rate([1.0, 1.9, 2.0, 5.0]) == 0.5
    ini = np.array([1.0, 3.0, 6.0, 7.0, 12.0, 13.0, 22.0])
    fin = np.array([0.5, 0.5, 1.0, 1.5, 0.2, 9.0, 0.1])
    cr = capture_range(ini, fin)
    assert [b["n"] for b in cr["bins"]] == [2, 2, 2, 0, 1]
    assert cr["bins"][2]["success_rate"] == 0.5 and cr["bins"][3]["success_rate"] is None
    assert cr["capture_range_mm"] == 10.0 and not cr["censored"]
    assert capture_range([1.0, 6.0], [0.5, 0.5]) == dict(
        bins=[dict(lo=0.0, hi=5.0, n=1, success_rate=1.0), dict(lo=5.0, hi=10.0, n=1, success_rate=1.0)],
        capture_range_mm=10.0, censored=True)


def _blobs():
    vol = np.zeros((28, 28, 28), np.float32)
    z, y, x = np.ogrid[:28, :28, :28]
    for c, r, v in [((10, 12, 14), 5, 1.0), ((18, 16, 10), 3, 0.6), ((14, 20, 18), 4, 0.8)]:
        vol[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] += v
    return ndi.gaussian_filter(vol, 1.0)


def test_volume_registration_recovers_a_known_pose():
    from insideout_jax.registration.optimize import register_volumes
    from insideout_jax.registration.warp import grid_points

    vol, sp, org, c = _blobs(), (2.0, 2.0, 2.0), (-27.0, -27.0, -27.0), np.zeros(3)
    gt = np.array([0.2, -0.15, 0.25, 5.0, -4.0, 3.0])
    fixed = warp_volume(jnp.asarray(vol), jnp.asarray(gt, jnp.float32), c, sp, org)
    res = register_volumes(vol, fixed, centre=c, spacing_zyx=sp, origin_xyz=org, radius=20.0,
                           starts=np.array([[0.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 30, 0]]))
    chex.assert_shape(res["poses"], (2, 6))
    pts = np.asarray(grid_points(vol.shape, sp, org))[vol > 0.3]
    assert mtre(np.zeros(6), gt, c, pts) > 7.0
    assert mtre(res["pose"], gt, c, pts) < 0.2
    assert res["loss"] == res["losses"].min()


def test_render_and_compare_recovers_a_known_pose_from_two_tilted_views():
    from insideout_jax.cameras import carm_geometry
    from insideout_jax.registration.optimize import ProjectionRegConfig, posed_splats, register_projections
    from insideout_jax.render.xray import render_xray
    from insideout_jax.splats import rad_splats_from_points

    rng = np.random.default_rng(0)
    cen = rng.uniform(-15, 15, (12, 3))
    s = rad_splats_from_points(cen, rng.uniform(0.02, 0.05, 12), capacity=16,
                               log_scales=np.log(rng.uniform(2, 6, (12, 3))))
    g = carm_geometry([95.0, 8.0], [5.0, -7.0], pixel_mm=1.5, n_detector=(48, 48))
    gt = np.array([0.15, 0.1, -0.2, 4.0, 3.0, -5.0])
    target = render_xray(posed_splats(s, jnp.asarray(gt, jnp.float32), jnp.zeros(3)), g)
    res = register_projections(s, g, target, centre=np.zeros(3), radius=20.0, starts=np.zeros((1, 6)),
                               config=ProjectionRegConfig(steps=120))
    assert mtre(np.zeros(6), gt, np.zeros(3), cen) > 5.0
    assert mtre(res["pose"], gt, np.zeros(3), cen) < 0.1
