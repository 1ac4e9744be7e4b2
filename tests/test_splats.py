"""Splat pytrees: jit / vmap / tree round trips, covariances, similarity transforms, SH rotation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from insideout_jax import sh as sh_lib
from insideout_jax import splats as S


def _random_rgb(n=20, cap=24, degree=3, seed=0):
    rng = np.random.default_rng(seed)
    sp = S.rgb_splats_from_points(rng.normal(size=(n, 3)) * 10, rng.uniform(size=(n, 3)),
                                  sh_degree=degree, capacity=cap)
    k = sh_lib.num_sh_coeffs(degree)
    return sp.replace(
        log_scales=jnp.asarray(rng.normal(size=(cap, 3)) * 0.5, jnp.float32),
        quats=jnp.asarray(rng.normal(size=(cap, 4)), jnp.float32),
        sh=jnp.asarray(rng.normal(size=(cap, k, 3)), jnp.float32),
    )


def _random_rad(n=20, cap=24, seed=1):
    rng = np.random.default_rng(seed)
    sp = S.rad_splats_from_points(rng.normal(size=(n, 3)) * 10, rng.uniform(0.1, 1, n), capacity=cap)
    return sp.replace(log_scales=jnp.asarray(rng.normal(size=(cap, 3)) * 0.5, jnp.float32),
                      quats=jnp.asarray(rng.normal(size=(cap, 4)), jnp.float32))


def test_shapes_dtypes_and_active_mask():
    sp = _random_rgb()
    chex.assert_shape([sp.means, sp.log_scales], (24, 3))
    chex.assert_shape(sp.quats, (24, 4))
    chex.assert_shape([sp.opacity_logits, sp.active], (24,))
    chex.assert_shape(sp.sh, (24, 16, 3))
    chex.assert_type([sp.means, sp.sh, sp.opacity_logits], jnp.float32)
    assert sp.active.dtype == jnp.bool_ and S.num_active(sp) == 20 and sp.sh_degree == 3
    np.testing.assert_allclose(np.asarray(sp.opacities[:20]), 0.1, rtol=1e-6)
    rad = _random_rad()
    chex.assert_shape([rad.log_densities, rad.opacity_logits, rad.active], (24,))
    chex.assert_shape(rad.features, (24, 1))
    chex.assert_shape(rad.colors, (24, 3))


@pytest.mark.parametrize("make", [_random_rgb, _random_rad])
def test_pytree_roundtrip_jit_vmap(make):
    sp = make()
    leaves, treedef = jax.tree_util.tree_flatten(sp)
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    chex.assert_trees_all_equal(sp, back)
    assert type(back) is type(sp)

    @jax.jit
    def shift(s):
        return s.replace(means=s.means + 1.0)

    out = shift(sp)
    np.testing.assert_allclose(out.means, sp.means + 1.0)
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack(x), sp, shift(sp), shift(shift(sp)))
    covs = jax.vmap(S.splat_covariances)(batch)
    chex.assert_shape(covs, (3, 24, 3, 3))
    np.testing.assert_allclose(covs[1], covs[0], rtol=1e-6)
    moved = jax.vmap(lambda s: S.transform_splats(s, jnp.eye(3), jnp.ones(3), 2.0))(batch)
    np.testing.assert_allclose(moved.means[2], 2 * (sp.means + 2.0) + 1.0, rtol=1e-5)


def test_covariance_spd_and_float64_reference():
    rng = np.random.default_rng(3)
    ls = rng.normal(size=(50, 3)) * 0.7
    q = rng.normal(size=(50, 4))
    cov = np.asarray(S.covariance(jnp.asarray(ls, jnp.float32), jnp.asarray(q, jnp.float32)))
    # float64 reference: scipy's rotation (xyzw order) and explicit R S² Rᵀ
    rot = Rotation.from_quat(np.concatenate([q[:, 1:], q[:, :1]], axis=1)).as_matrix()
    ref = np.einsum("nij,nj,nkj->nik", rot, np.exp(2 * ls), rot)
    np.testing.assert_allclose(cov, ref, rtol=2e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(cov, np.swapaxes(cov, -1, -2), atol=1e-6 * np.abs(ref).max())
    assert np.all(np.linalg.eigvalsh(cov.astype(np.float64)) > 0)


def test_quaternion_roundtrip_and_product():
    rng = np.random.default_rng(4)
    rot = Rotation.random(100, random_state=5).as_matrix()
    q = S.rotmat_to_quat(jnp.asarray(rot, jnp.float32))
    np.testing.assert_allclose(S.quat_to_rotmat(q), rot, atol=2e-6)
    a, b = rng.normal(size=(2, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(S.quat_to_rotmat(S.quat_multiply(jnp.asarray(a), jnp.asarray(b))),
                               S.quat_to_rotmat(a) @ S.quat_to_rotmat(b), atol=2e-6)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), log_s=st.floats(-3, 3))
def test_similarity_transform_moves_first_and_second_moments(seed, log_s):
    sp = _random_rad(seed=seed % 7)
    rot = Rotation.random(random_state=seed).as_matrix()
    t = np.random.default_rng(seed).normal(size=3) * 5
    s = float(np.exp(log_s))
    out = S.transform_splats(sp, rot, t, s)
    mu = np.asarray(sp.means, np.float64)
    cov = np.asarray(S.splat_covariances(sp), np.float64)
    np.testing.assert_allclose(out.means, s * mu @ rot.T + t, rtol=1e-5, atol=1e-4 * s * 30)
    want = s**2 * np.einsum("ij,njk,lk->nil", rot, cov, rot)
    got = np.asarray(S.splat_covariances(out), np.float64)
    scale = np.abs(want).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got / scale, want / scale, atol=5e-5)
    # untouched fields
    np.testing.assert_array_equal(out.log_densities, sp.log_densities)
    np.testing.assert_array_equal(out.active, sp.active)


def test_similarity_rotates_view_dependent_colour():
    sp = _random_rgb(degree=3)
    rot = Rotation.from_euler("xyz", [30, -50, 110], degrees=True).as_matrix()
    out = S.transform_splats(sp, rot, np.zeros(3), 3.0)
    d = np.random.default_rng(9).normal(size=(sp.capacity, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    before = sh_lib.eval_sh(sp.sh, jnp.asarray(d, jnp.float32))
    after = sh_lib.eval_sh(out.sh, jnp.asarray(d @ rot.T, jnp.float32))  # same direction, moved
    np.testing.assert_allclose(after, before, atol=5e-5 * float(np.abs(before).max()))
    np.testing.assert_array_equal(out.sh[:, 0], sp.sh[:, 0])  # DC unchanged


def test_select_concatenate_pad():
    a, b = _random_rgb(n=5, cap=8), _random_rgb(n=3, cap=4, seed=2)
    ab = S.concatenate(a, b)
    assert ab.capacity == 12 and S.num_active(ab) == 8
    act = S.select_active(ab)
    assert act.capacity == 8 and bool(act.active.all())
    np.testing.assert_array_equal(act.means[:5], a.means[:5])
    np.testing.assert_array_equal(act.means[5:], b.means[:3])
    grown = S.pad_to_capacity(act, 16)
    assert grown.capacity == 16 and S.num_active(grown) == 8
    assert np.all(np.isfinite(np.asarray(S.splat_covariances(grown))))
    with pytest.raises(ValueError, match="cannot concatenate"):
        S.concatenate(a, _random_rad())
    with pytest.raises(ValueError, match="per-splat field shapes"):
        S.concatenate(a, _random_rgb(degree=1))


def test_builders_validate_and_init_like_3dgs():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [5, 5, 5]], np.float32)
    sp = S.rgb_splats_from_points(pts, sh_degree=0)
    d = np.sort(np.linalg.norm(pts[:, None] - pts[None], axis=-1), axis=1)[:, 1:4]
    np.testing.assert_allclose(np.exp(sp.log_scales[:, 0]), np.sqrt((d**2).mean(1)), rtol=1e-5)
    with pytest.raises(ValueError, match=r"points must have shape \[N, 3\]"):
        S.rgb_splats_from_points(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        S.rgb_splats_from_points(np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="capacity"):
        S.rgb_splats_from_points(pts, capacity=2)
    with pytest.raises(ValueError, match="densities must be > 0"):
        S.rad_splats_from_points(pts, densities=0.0)
    with pytest.raises(ValueError, match="sh degree"):
        S.rgb_splats_from_points(pts, sh_degree=4)
