"""Weighted Procrustes (Umeyama) and similarity helpers against independent truths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from insideout_jax.fitting.procrustes import (
    Similarity,
    procrustes,
    rotation_angle,
    similarity_errors,
)


def _horn(src, dst, w):
    """Independent float64 reference: Horn's (1987) unit-quaternion method, then the scale."""
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    m = (a * w[:, None]).T @ b  # Σ w a bᵀ
    sxx, sxy, sxz = m[0]
    syx, syy, syz = m[1]
    szx, szy, szz = m[2]
    n = np.array([
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ])
    q = np.linalg.eigh(n)[1][:, -1]  # (w, x, y, z)
    rot = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
    s = np.sum(w * np.sum(b * (a @ rot.T), 1)) / np.sum(w * np.sum(a * a, 1))
    return rot, md - s * rot @ ms, s


_jit_procrustes = jax.jit(procrustes)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 60),
       log_s=st.floats(np.log(0.01), np.log(100.0)))
def test_recovers_random_similarities_noiseless(seed, n, log_s):
    rng = np.random.default_rng(seed)
    rot = Rotation.random(random_state=rng).as_matrix()
    s = float(np.exp(log_s))
    t = rng.normal(size=3) * 10 * s
    src = rng.normal(size=(n, 3)) * rng.uniform(0.5, 2.0, size=3)
    dst = s * src @ rot.T + t
    # Padded to a fixed length (zero weights on garbage rows): one compiled program for all n.
    pad_s = np.concatenate([src, rng.normal(size=(64 - n, 3)) * 1e3])
    pad_d = np.concatenate([dst, rng.normal(size=(64 - n, 3)) * 1e3])
    w = (np.arange(64) < n).astype(np.float32)
    est = _jit_procrustes(jnp.asarray(pad_s, jnp.float32), jnp.asarray(pad_d, jnp.float32), w)
    # ≤ 1e-5: rotation entries, relative scale, translation relative to the target's extent.
    np.testing.assert_allclose(np.asarray(est.rotation), rot, atol=1e-5)
    assert abs(float(est.scale) / s - 1) <= 1e-5
    extent = s * np.abs(src).max() + np.abs(t).max()
    assert np.max(np.abs(np.asarray(est.translation) - t)) <= 1e-5 * extent
    assert abs(np.linalg.det(np.asarray(est.rotation)) - 1) < 1e-5


def test_matches_horn_reference_on_noisy_weighted_data():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(200, 3))
    rot = Rotation.random(random_state=rng).as_matrix()
    dst = 2.5 * src @ rot.T + [1.0, -2.0, 3.0] + 0.2 * rng.normal(size=src.shape)
    w = rng.uniform(0, 1, size=200)
    r_ref, t_ref, s_ref = _horn(src, dst, w)
    with jax.enable_x64(True):
        est = procrustes(jnp.asarray(src), jnp.asarray(dst), jnp.asarray(w))
        np.testing.assert_allclose(np.asarray(est.rotation), r_ref, atol=1e-10)
        np.testing.assert_allclose(float(est.scale), s_ref, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(est.translation), t_ref, atol=1e-9)


def test_never_returns_a_reflection():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(50, 3))
    mirrored = src * np.array([-1.0, 1.0, 1.0])  # the best orthogonal fit is a reflection
    est = procrustes(jnp.asarray(src, jnp.float32), jnp.asarray(mirrored, jnp.float32))
    assert np.linalg.det(np.asarray(est.rotation)) == pytest.approx(1.0, abs=1e-5)
    # Planar source (rank 2): still proper.
    flat = src * np.array([1.0, 1.0, 0.0])
    est = procrustes(jnp.asarray(flat, jnp.float32), jnp.asarray(flat[:, ::-1].copy(), jnp.float32))
    assert np.linalg.det(np.asarray(est.rotation)) == pytest.approx(1.0, abs=1e-5)


def test_zero_weights_ignore_outliers_and_rigid_mode():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(40, 3)).astype(np.float32)
    rot = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    dst = (src @ rot.T + [4.0, 0.0, -1.0]).astype(np.float32)
    dst_bad = dst.copy()
    dst_bad[:10] += 100.0 * rng.normal(size=(10, 3)).astype(np.float32)
    w = np.ones(40, np.float32)
    w[:10] = 0.0
    est = procrustes(dst_bad * 0 + src, dst_bad, w, with_scale=False)
    np.testing.assert_allclose(np.asarray(est.rotation), rot, atol=1e-5)
    assert float(est.scale) == 1.0
    np.testing.assert_allclose(np.asarray(est.translation), [4.0, 0.0, -1.0], atol=1e-5)


def test_degenerate_inputs_give_identity():
    z = jnp.zeros((5, 3))
    est = procrustes(z, z + 1.0, jnp.zeros(5))
    np.testing.assert_allclose(np.asarray(est.rotation), np.eye(3))
    assert float(est.scale) == 1.0


def test_vmap_batches_and_jit():
    rng = np.random.default_rng(6)
    src = rng.normal(size=(7, 30, 3)).astype(np.float32)
    rots = Rotation.random(7, random_state=rng).as_matrix().astype(np.float32)
    dst = np.einsum("bij,bnj->bni", rots, src) * 3.0
    est = jax.jit(jax.vmap(procrustes))(jnp.asarray(src), jnp.asarray(dst))
    chex.assert_shape(est.rotation, (7, 3, 3))
    chex.assert_shape(est.scale, (7,))
    np.testing.assert_allclose(np.asarray(est.rotation), rots, atol=1e-5)
    np.testing.assert_allclose(np.asarray(est.scale), 3.0, rtol=1e-5)


def test_similarity_compose_inverse_apply():
    rng = np.random.default_rng(7)
    a = Similarity(jnp.asarray(Rotation.random(random_state=rng).as_matrix(), jnp.float32),
                   jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray(2.0))
    b = Similarity(jnp.asarray(Rotation.random(random_state=rng).as_matrix(), jnp.float32),
                   jnp.asarray([-1.0, 0.5, 0.0]), jnp.asarray(0.25))
    p = jnp.asarray(rng.normal(size=(10, 3)), jnp.float32)
    np.testing.assert_allclose(np.asarray(a.compose(b).apply(p)), np.asarray(a.apply(b.apply(p))),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.inverse().apply(a.apply(p))), np.asarray(p), atol=1e-5)


def test_rotation_angle_and_errors():
    for ang in (1e-4, 0.01, 1.0, 3.0):
        r = Rotation.from_rotvec(np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]) * ang)
        assert float(rotation_angle(jnp.asarray(r.as_matrix(), jnp.float32))) == pytest.approx(
            ang, rel=1e-3)
    truth = Similarity(jnp.eye(3), jnp.zeros(3), jnp.asarray(2.0))
    est = Similarity(jnp.asarray(Rotation.from_rotvec([0, 0, np.radians(2.0)]).as_matrix(),
                                 jnp.float32), jnp.asarray([0.0, 0.3, 0.4]), jnp.asarray(2.1))
    e = similarity_errors(est, truth)
    assert float(e["rot_deg"]) == pytest.approx(2.0, rel=1e-4)
    assert float(e["scale_rel"]) == pytest.approx(0.05, rel=1e-4)
    assert float(e["trans"]) == pytest.approx(0.5, rel=1e-5)
