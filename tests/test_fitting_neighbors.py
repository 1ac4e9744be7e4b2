"""Exact nearest neighbours (brute force and uniform grid) against SciPy's k-d tree."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree
from test_fitting_shapes import surface_samples

from insideout_jax.fitting.neighbors import knn, nearest_neighbor

M, P = 3000, 2500  # one shape for every case below: one compilation per method


def _cases():
    rng = np.random.default_rng(0)
    surf_q, surf_p = surface_samples(M, rng), surface_samples(P, rng)
    yield "surface", surf_q, surf_p
    # Heavy-tailed density (sparse regions force the grid's brute-force fallback).
    yield "gaussian", rng.standard_t(2, size=(M, 3)).astype(np.float32), \
        rng.normal(size=(P, 3)).astype(np.float32)
    # Queries far outside the points' box, and coincident duplicates among the points.
    far = surf_q * 3 + 5
    dup = surf_p.copy()
    dup[1::2] = dup[::2][: len(dup[1::2])]
    yield "far+dups", far, dup


@pytest.mark.parametrize("method", ["brute", "grid"])
def test_nearest_neighbor_matches_kdtree(method):
    for name, q, p in _cases():
        idx, d2 = nearest_neighbor(jnp.asarray(q), jnp.asarray(p), method=method)
        chex.assert_shape([idx, d2], (M,))
        chex.assert_type(idx, jnp.int32)
        dref, _ = cKDTree(p.astype(np.float64)).query(q.astype(np.float64))
        # Distances exact (float32); the index attains that distance (ties may differ).
        np.testing.assert_allclose(np.sqrt(np.asarray(d2)), dref, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        got = np.linalg.norm(p[np.asarray(idx)].astype(np.float64) - q, axis=1)
        np.testing.assert_allclose(got, dref, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method", ["brute", "grid"])
def test_masked_points_are_never_returned(method):
    rng = np.random.default_rng(1)
    q, p = surface_samples(M, rng), surface_samples(P, rng)
    mask = rng.uniform(size=P) < 0.3
    idx, d2 = nearest_neighbor(jnp.asarray(q), jnp.asarray(p), jnp.asarray(mask), method=method)
    assert np.all(mask[np.asarray(idx)])
    dref, iref = cKDTree(p[mask]).query(q)
    np.testing.assert_allclose(np.sqrt(np.asarray(d2)), dref, rtol=1e-5, atol=1e-6)


def test_knn_matches_kdtree():
    rng = np.random.default_rng(2)
    q, p = rng.normal(size=(300, 3)).astype(np.float32), rng.normal(size=(500, 3)).astype(np.float32)
    idx, d2 = knn(jnp.asarray(q), jnp.asarray(p), k=5)
    chex.assert_shape([idx, d2], (300, 5))
    dref, iref = cKDTree(p).query(q, k=5)
    np.testing.assert_allclose(np.sqrt(np.asarray(d2)), dref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(idx), iref)
