"""K-means: Lloyd against a float64 NumPy reference, k-means++ seeding, empty-cluster re-seeding,
convergence, input checks, and the compiled memory footprint at N = 200 000, K = 20 000."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fitting_shapes import surface_samples

from insideout_jax.fitting.kmeans import kmeans, kmeans_plusplus


def _lloyd_reference(x, c, iters):
    """Plain float64 Lloyd: `iters` (update, re-assign) rounds, like scikit-learn's loop."""
    x = x.astype(np.float64)
    c = c.astype(np.float64)
    lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    for _ in range(iters):
        new = np.stack([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(len(c))])
        c = new
        lab = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    inertia = ((x - c[lab]) ** 2).sum()
    return c, lab, inertia


@pytest.mark.parametrize("method", ["brute", "grid"])
def test_lloyd_matches_float64_reference(method):
    rng = np.random.default_rng(0)
    x = surface_samples(1500, rng)
    init = x[rng.choice(len(x), 60, replace=False)]
    res = kmeans(x, 60, None, init=init, iters=8, tol=0.0, method=method)
    c_ref, lab_ref, inertia_ref = _lloyd_reference(x, init, int(res.n_iter))
    chex.assert_shape(res.centroids, (60, 3))
    chex.assert_shape(res.labels, (1500,))
    assert np.mean(np.asarray(res.labels) == lab_ref) > 0.998  # float32 near-ties may differ
    np.testing.assert_allclose(np.asarray(res.centroids), c_ref, atol=2e-3)
    assert float(res.inertia) == pytest.approx(inertia_ref, rel=1e-4)
    assert np.asarray(res.counts).sum() == 1500
    np.testing.assert_array_equal(np.asarray(res.counts), np.bincount(np.asarray(res.labels),
                                                                      minlength=60))


def test_matches_scikit_learn_with_the_same_init():
    sklearn = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(1)
    x = surface_samples(2000, rng)
    init = x[rng.choice(len(x), 80, replace=False)]
    ours = kmeans(x, 80, None, init=init, iters=300, tol=0.0)
    ref = sklearn.KMeans(80, init=init, n_init=1, max_iter=300, tol=0.0).fit(x.astype(np.float64))
    assert bool(ours.converged)
    assert float(ours.inertia) == pytest.approx(ref.inertia_, rel=1e-4)


def test_kmeans_plusplus_picks_data_points_and_spreads_over_blobs():
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
    x = (centres[rng.integers(0, 4, 800)] + 0.05 * rng.normal(size=(800, 3))).astype(np.float32)
    hits = 0
    for seed in range(10):
        c = np.asarray(kmeans_plusplus(jax.random.key(seed), jnp.asarray(x), k=4))
        # Every seed is one of the points.
        assert np.all(np.min(np.abs(c[:, None, :] - x[None]).sum(-1), axis=1) == 0)
        blob = np.argmin(((c[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        hits += len(set(blob.tolist())) == 4
    # D² sampling: P(a blob is missed) ≈ 3 · (0.05² / 10²) per draw, so all 10 runs cover them.
    assert hits == 10


def test_empty_clusters_are_reseeded():
    rng = np.random.default_rng(3)
    x = surface_samples(600, rng)
    init = np.repeat(x[:5], 4, axis=0)  # 20 centres, only 5 distinct: 15 start empty
    res = kmeans(x, 20, None, init=init, iters=30)
    assert np.all(np.asarray(res.counts) > 0)
    # The re-seeded solution is far better than keeping 5 effective clusters.
    five = kmeans(x, 5, None, init=x[:5], iters=30)
    assert float(res.inertia) < 0.5 * float(five.inertia)


def test_converges_and_is_deterministic():
    rng = np.random.default_rng(4)
    x = surface_samples(1000, rng)
    a = kmeans(x, 30, jax.random.key(0), iters=200)
    b = kmeans(x, 30, jax.random.key(0), iters=200)
    assert bool(a.converged) and int(a.n_iter) < 200
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    # At convergence every point is with its nearest centroid.
    d = ((x[:, None, :] - np.asarray(a.centroids)[None]) ** 2).sum(-1)
    assert np.mean(np.argmin(d, 1) == np.asarray(a.labels)) > 0.999


def test_input_validation():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="points"):
        kmeans(np.zeros((10, 2)), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="k must"):
        kmeans(x, 11, jax.random.key(0))
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, None, init=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="method"):
        kmeans(x, 2, jax.random.key(0), method="kd")


def test_memory_for_200k_points_and_20k_clusters_is_under_4gb():
    """XLA's compiled memory analysis of the whole Lloyd loop (and of the seeding) at full size."""
    km = importlib.import_module("insideout_jax.fitting.kmeans")  # the module, not the function

    x = jax.ShapeDtypeStruct((200_000, 3), jnp.float32)
    c = jax.ShapeDtypeStruct((20_000, 3), jnp.float32)
    for method in ("auto", "brute"):
        compiled = km._lloyd.lower(x, c, jnp.int32(10), jnp.float32(0.0), k=20_000, chunk=512,
                                   method=method).compile()
        mem = compiled.memory_analysis()
        total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes)
        assert total < 4 * 2**30, (method, total)
        assert total < 0.5 * 2**30  # in fact ≈ 0.1 GB: chunk × K floats, not N × K
    seed = km.kmeans_plusplus.lower(jax.random.key(0), x, k=20_000).compile().memory_analysis()
    assert seed.temp_size_in_bytes < 0.5 * 2**30
