"""Hierarchical fitting (Alg. 1): every stage measured against the ground truth.

Two scenes of the test solid, same sizes (one compilation): the RGB shell is an exact similarity
image of the true surface ("rigid"), or additionally carries a smooth non-rigid distortion of
≈ 2 % of the object size ("warped", like SfM drift). Per stage: the error of each RGB centre
against its true CT position, its distance to the true surface, and the neighbour-distance
distortion (tearing / stretching)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from test_fitting_shapes import SIZE, interior_samples, random_similarity, surface_samples

from insideout_jax import sh as sh_lib
from insideout_jax.fitting.hierarchical import (
    hierarchical_fit,
    neighbor_distortion,
    warp_splats,
)
from insideout_jax.fitting.procrustes import Similarity, similarity_errors
from insideout_jax.splats import (
    covariance,
    rgb_splats_from_points,
    splat_covariances,
    transform_splats,
)

N_RGB = 2000


def _warp(q, amp):
    return q + amp * np.stack([np.sin(2.0 * q[:, 1]), np.sin(1.7 * q[:, 2] + 0.5),
                               np.cos(1.9 * q[:, 0])], axis=1)


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(21)
    vol = interior_samples(10000, rng)
    true_surface = cKDTree(surface_samples(60000, rng))
    out = {}
    for name, amp in (("rigid", 0.0), ("warped", 0.03)):
        q = surface_samples(N_RGB, rng)  # true CT positions of the RGB centres
        rot, t, s = random_similarity(rng)
        pts = ((_warp(q, amp) - t) @ rot) / s
        rgb = rgb_splats_from_points(pts, sh_degree=1, capacity=N_RGB + 7)  # 7 inactive slots
        res = hierarchical_fit(rgb, vol, seed=3)
        truth = Similarity(jnp.asarray(rot, jnp.float32), jnp.asarray(t, jnp.float32),
                           jnp.asarray(s, jnp.float32))
        out[name] = (q, rgb, res, truth)
    return out, true_surface


def _stage_errors(q, res, true_surface):
    rows = {}
    for st in res.stages:
        rows[st.name] = (float(np.mean(np.linalg.norm(st.means - q, axis=1))),
                         float(np.mean(true_surface.query(st.means)[0])))
    return rows


def test_stages_are_reported_and_the_splats_follow(scenes):
    out, _ = scenes
    q, rgb, res, truth = out["rigid"]
    assert [st.name for st in res.stages] == ["global", "local_0.1", "local_0.5", "fine"]
    assert [st.clusters for st in res.stages] == [0, N_RGB // 10, N_RGB // 2, N_RGB]
    chex.assert_shape(res.splats.means, (N_RGB + 7, 3))
    np.testing.assert_array_equal(np.asarray(res.splats.active), np.asarray(rgb.active))
    np.testing.assert_allclose(np.asarray(res.splats.means)[: N_RGB], res.stages[-1].means,
                               atol=1e-5)
    for st in res.stages:  # every stage's effective similarity is within the global tolerance
        e = similarity_errors(st.transform, truth, center=jnp.asarray(rgb.means[:N_RGB].mean(0)))
        assert float(e["rot_deg"]) < 2.0 and float(e["scale_rel"]) < 0.02, (st.name, e)


def test_no_stage_makes_the_rigid_case_worse(scenes):
    """With an exact similarity there is nothing non-rigid to fix: later stages must not raise
    the true error (the cross-validated gate rejects fields that only copy surface noise)."""
    out, true_surface = scenes
    q, _, res, _ = out["rigid"]
    rows = _stage_errors(q, res, true_surface)
    print("\nrigid: stage → (mean point error, mean distance to true surface):", rows)
    g_err, g_surf = rows["global"]
    assert g_err < 0.01 * SIZE
    for name, (err, surf) in rows.items():
        assert err <= g_err * 1.02 + 1e-6, (name, rows)
        assert surf <= g_surf * 1.02 + 1e-6, (name, rows)


def test_local_stages_reduce_a_smooth_distortion_without_tearing(scenes):
    out, true_surface = scenes
    q, _, res, _ = out["warped"]
    rows = _stage_errors(q, res, true_surface)
    print("\nwarped: stage → (mean point error, mean distance to true surface):", rows)
    print("accepted:", {st.name: st.accepted for st in res.stages})
    print("distortion:", {st.name: st.distortion for st in res.stages})
    assert any(st.accepted for st in res.stages[1:])
    names = list(rows)
    for a, b in zip(names[:-1], names[1:], strict=True):  # never worse than the stage before, on both measures
        assert rows[b][0] <= rows[a][0] * 1.02 and rows[b][1] <= rows[a][1] * 1.02, rows
    assert rows["fine"][1] < 0.9 * rows["global"][1]  # closer to the true surface
    assert rows["fine"][0] < rows["global"][0]
    last = res.stages[-1].distortion
    assert last["frac_over_50pct"] == 0.0 and last["p99"] < 0.1  # no tearing, mild stretching


def test_warp_splats_moves_means_and_covariances_consistently():
    rng = np.random.default_rng(22)
    sp = rgb_splats_from_points(rng.normal(size=(30, 3)), sh_degree=2)
    sp = sp.replace(quats=jnp.asarray(rng.normal(size=(30, 4)), jnp.float32),
                    sh=jnp.asarray(rng.normal(size=(30, 9, 3)), jnp.float32))
    rots = Rotation.random(30, random_state=rng).as_matrix().astype(np.float32)
    new = rng.normal(size=(30, 3)).astype(np.float32)
    out = warp_splats(sp, jnp.asarray(new), jnp.asarray(rots))
    np.testing.assert_allclose(np.asarray(out.means), new)
    cov0 = np.asarray(splat_covariances(sp))
    cov1 = np.asarray(covariance(out.log_scales, out.quats))
    np.testing.assert_allclose(cov1, np.einsum("nij,njk,nlk->nil", rots, cov0, rots), atol=1e-5)
    # Per-splat SH rotation equals the set-wide rotation when every splat turns the same way.
    same = np.broadcast_to(rots[0], (30, 3, 3))
    a = warp_splats(sp, sp.means, jnp.asarray(same))
    b = transform_splats(sp, rots[0], np.zeros(3))
    np.testing.assert_allclose(np.asarray(a.sh), np.asarray(b.sh), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.sh), np.asarray(sh_lib.rotate_sh(sp.sh, rots[0])),
                               atol=1e-5)
    jax.block_until_ready(a)


def test_neighbor_distortion_statistics():
    rng = np.random.default_rng(23)
    p = rng.normal(size=(500, 3))
    rot = Rotation.random(random_state=rng).as_matrix()
    sim = 3.0 * p @ rot.T + 1.0
    d = neighbor_distortion(p, sim, scale=3.0)
    assert d["max"] < 1e-9
    stretched = p * np.array([1.2, 1.0, 1.0])
    d = neighbor_distortion(p, stretched)
    assert 0.0 < d["median"] < 0.2 and d["max"] <= 0.2 + 1e-9 and d["frac_over_50pct"] == 0.0
    with pytest.raises(ValueError):
        neighbor_distortion(p, p[:10])
    with pytest.raises(ValueError, match="rgb"):
        hierarchical_fit(p, p)


def test_the_caps_of_the_local_fit_are_counted_where_they_bite():
    """Issue #17: the per-cluster target cap and the field's cell cap coarsen a fit; both are
    counted (closed forms), never applied silently."""
    from insideout_jax.fitting import hierarchical as hf
    from insideout_jax.reporting.markdown import _caps

    rng = np.random.default_rng(0)
    cent = np.stack([np.arange(10) * 100.0, np.zeros(10), np.zeros(10)], 1)
    p = np.repeat(cent, 20, axis=0) + rng.normal(scale=1.0, size=(200, 3))
    labels = np.repeat(np.arange(10), 20)
    radius = np.full(10, 1.7)
    # 10 targets beside every cluster, 1000 beside cluster 3: the cap is max(64, 8 · median 10)
    # = 80 targets per cluster, so 1000 − 80 are left out
    surf = np.concatenate([np.repeat(cent, 10, 0), np.repeat(cent[3:4], 990, 0)])
    surf = (surf + rng.normal(scale=0.5, size=surf.shape)).astype(np.float32)
    _, _, dropped = hf._local_displacements(p, surf, (labels, cent, radius, 1.7), icp_iters=2,
                                            trim=0.9, prior_weight=0.1, reach=2.5)
    assert dropped == 1000 - 80
    # the field's grid: step max(σ/2, (extent + 8σ) / (max_cells − 2)) → coarsening step / (σ/2)
    pts = np.stack([np.linspace(0, 1000, 50), np.zeros(50), np.zeros(50)], 1)
    _, _, c = hf._smooth_field(pts, np.zeros((50, 3)), np.ones(50), 1.0)
    assert c == pytest.approx((1000 + 8) / 158 / 0.5)
    _, _, c = hf._smooth_field(pts[:5] / 100, np.zeros((5, 3)), np.ones(5), 1.0)
    assert c == 1.0
    lines = _caps({"xray_culled_at_source": 3, "fitting_targets_dropped": {"local_0.1": 920},
                   "fitting_grid_coarsening": {"local_0.1": 12.76, "fine": 1.0}})
    assert any("920 surface targets" in x for x in lines) and any("12.76×" in x for x in lines)
    assert not any("fine" in x for x in lines) and any("3 radiative splats" in x for x in lines)
    assert _caps({"xray_culled_at_source": 0}) == []
