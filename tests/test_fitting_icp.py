"""ICP: convergence from ≥ 30° on a surface-vs-solid pair, partial overlap, point-to-plane,
the identity prior, and the vmapped padded-cluster version against per-cluster calls."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from test_fitting_shapes import interior_samples, surface_samples

from insideout_jax.fitting.icp import icp, icp_batched
from insideout_jax.fitting.procrustes import Similarity, identity_similarity, similarity_errors
from insideout_jax.fitting.surface import outer_surface


@pytest.fixture(scope="module")
def pair():
    """A surface-like set (the 'RGB shell'), a solid-like set, and the solid's outer surface."""
    rng = np.random.default_rng(0)
    shell = surface_samples(800, rng)
    solid = interior_samples(8000, rng)
    surf, normals = outer_surface(solid)
    return shell, solid, surf, normals


def _misaligned(angle_deg, seed):
    """A true RGB → CT map whose rotation is ``angle_deg`` about a random axis."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    rot = Rotation.from_rotvec(axis / np.linalg.norm(axis) * np.radians(angle_deg)).as_matrix()
    return rot, rng.normal(size=3) * 0.2, float(np.exp(rng.uniform(-0.3, 0.3)))


def _truth(rot, t, s=1.0):
    return Similarity(jnp.asarray(rot, jnp.float32), jnp.asarray(t, jnp.float32),
                      jnp.asarray(s, jnp.float32))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_converges_from_35_degrees_surface_vs_solid(pair, seed):
    """35° about a random axis, scale 0.74–1.35, shifted: point-to-plane with scale recovers it."""
    shell, _, surf, normals = pair
    rot, t, s = _misaligned(35.0, seed)
    src = ((shell - t) @ rot) / s  # RGB frame; the truth maps src → shell
    res = icp(src, surf, iters=30, with_scale=True, tol=1e-6, dst_normals=normals)
    e = similarity_errors(res.transform, _truth(rot, t, s), center=jnp.asarray(src.mean(0)))
    assert float(e["rot_deg"]) < 2.0 and float(e["scale_rel"]) < 0.02, e
    assert float(res.rmse) < 0.2 * float(res.rmse_init)


def test_symmetric_point_to_point_from_35_degrees(pair):
    """Symmetric point-to-point ICP with scale (no normals) reaches the right basin too."""
    shell, _, surf, _ = pair
    sub = surf[np.random.default_rng(1).choice(len(surf), 2000, replace=False)]
    for seed in (0, 1):
        rot, t, s = _misaligned(35.0, seed)
        src = ((shell - t) @ rot) / s
        res = icp(src, sub, iters=60, with_scale=True, symmetric=True, tol=1e-6)
        e = similarity_errors(res.transform, _truth(rot, t, s), center=jnp.asarray(src.mean(0)))
        assert float(e["rot_deg"]) < 5.0 and float(e["scale_rel"]) < 0.02, e


def test_matching_the_raw_solid_is_ill_posed_which_is_why_the_surface_is_used(pair):
    """Shell against the solid's points with free scale: a shrunken shell lies inside the solid
    with a small residual, so the scale collapses; against the outer surface it does not."""
    shell, solid, surf, normals = pair
    rot, t, _ = _misaligned(10.0, 5)
    src = (shell - t) @ rot
    to_solid = icp(src, solid, iters=100, with_scale=True, tol=1e-7)
    to_surface = icp(src, surf, iters=30, with_scale=True, tol=1e-7, dst_normals=normals)
    e_surf = similarity_errors(to_surface.transform, _truth(rot, t))
    assert float(to_solid.transform.scale) < 0.95  # shrunk into the volume
    assert float(e_surf["scale_rel"]) < 0.02 and float(e_surf["rot_deg"]) < 2.0


def test_trimming_handles_partial_overlap_and_outliers(pair):
    shell, _, surf, normals = pair
    rng = np.random.default_rng(7)
    part = shell[shell[:, 0] > 0.0]  # only half of the object was seen
    part = np.concatenate([part, rng.uniform(-3, 3, size=(40, 3)).astype(np.float32)])  # floaters
    rot, t, _ = _misaligned(20.0, 8)
    src = (part - t) @ rot
    res = icp(src, surf, iters=60, trim=0.8, tol=1e-6, dst_normals=normals)
    e = similarity_errors(res.transform, _truth(rot, t), center=jnp.asarray(src.mean(0)))
    assert float(e["rot_deg"]) < 3.0 and float(e["trans"]) < 0.03, e
    untrimmed = icp(src, surf, iters=60, trim=1.0, tol=1e-6, dst_normals=normals)
    e_u = similarity_errors(untrimmed.transform, _truth(rot, t), center=jnp.asarray(src.mean(0)))
    assert float(e_u["rot_deg"]) > 3 * float(e["rot_deg"])  # the floaters wreck the untrimmed fit


def test_prior_weight_pulls_toward_init():
    rng = np.random.default_rng(9)
    plane = np.c_[rng.uniform(-1, 1, (200, 2)), np.zeros(200)].astype(np.float32)
    target = plane + np.array([0.3, 0.0, 0.0], np.float32)  # a flat patch: sliding is free
    free = icp(plane, target, iters=50)
    held = icp(plane, target, iters=50, prior_weight=100.0)
    assert float(jnp.linalg.norm(held.transform.translation)) < 0.2 * float(
        jnp.linalg.norm(free.transform.translation))


def test_batched_matches_single_calls():
    rng = np.random.default_rng(10)
    b, m, p = 4, 24, 40
    src = np.zeros((b, m, 3), np.float32)
    dst = np.full((b, p, 3), 1e3, np.float32)  # padding rows are far garbage (masked)
    sm = np.zeros((b, m), bool)
    dm = np.zeros((b, p), bool)
    sizes = [(24, 40), (10, 30), (5, 12), (17, 40)]
    for i, (ns, nd) in enumerate(sizes):
        d = rng.normal(size=(nd, 3)).astype(np.float32)
        r = Rotation.from_rotvec(rng.normal(size=3) * 0.2).as_matrix().astype(np.float32)
        src[i, :ns] = (d[:ns] - 0.1) @ r + 0.01 * rng.normal(size=(ns, 3)).astype(np.float32)
        dst[i, :nd] = d
        sm[i, :ns] = True
        dm[i, :nd] = True
    res = icp_batched(src, dst, sm, dm, iters=30, trim=0.9, prior_weight=0.1)
    chex.assert_shape(res.transform.rotation, (b, 3, 3))
    for i in range(b):  # one at a time, same padded arrays and masks (one compilation)
        one = icp(src[i], dst[i], src_mask=sm[i], dst_mask=dm[i], iters=30, trim=0.9,
                  prior_weight=0.1)
        np.testing.assert_allclose(np.asarray(res.transform.rotation[i]),
                                   np.asarray(one.transform.rotation), atol=1e-4)
        np.testing.assert_allclose(np.asarray(res.transform.translation[i]),
                                   np.asarray(one.transform.translation), atol=1e-4)


def test_input_validation():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="src"):
        icp(np.zeros((10, 2)), x)
    with pytest.raises(ValueError, match="trim"):
        icp(x, x, trim=0.0)
    with pytest.raises(ValueError, match="dst_normals"):
        icp(x, x, dst_normals=np.zeros((9, 3)))
    with pytest.raises(ValueError, match="batch"):
        icp_batched(np.zeros((2, 4, 3)), np.zeros((3, 4, 3)), np.ones((2, 4), bool),
                    np.ones((3, 4), bool))
    assert isinstance(identity_similarity(), Similarity)
    jax.block_until_ready(icp(x + np.arange(10)[:, None], x + np.arange(10)[:, None], iters=2))
