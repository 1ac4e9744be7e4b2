"""Jitted K-means for 3D points: k-means++ seeding, Lloyd iterations, empty clusters re-seeded.

Paper §4.1 clusters each splat set with K-means (Hartigan & Wong) at K = ⌊N/10⌋ and ⌊N/2⌋. This is
Lloyd's algorithm with the classic (non-greedy) k-means++ seeding of Arthur & Vassilvitskii:

* seeding: the first centre uniform at random, each next one drawn with probability ∝ D(x)², D the
  distance to the nearest centre chosen so far (inverse-CDF sampling on a running cumulative sum,
  O(N) per centre, no [N, K] matrix);
* Lloyd: assign every point to its nearest centre (exact search,
  :func:`insideout_jax.fitting.neighbors.nearest_neighbor`: chunked brute force with memory
  ``chunk × K`` floats, or the uniform-grid search for large N·K), move every centre to the mean
  of its points;
* a centre left without points is moved onto the point farthest from its own centre (distinct
  points for distinct empty clusters, farthest first, as scikit-learn does);
* stop when no label changes, when the total squared centre shift is ≤ ``tol`` × (mean per-axis
  variance of the data) (scikit-learn's criterion), or after ``iters`` iterations.

Memory: N = 200 000, K = 20 000 with ``chunk = 512``: XLA's compiled temporary buffers are
≈ 0.1 GB (``tests/test_fitting_kmeans.py`` checks the compiled memory analysis against 4 GB).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from insideout_jax.fitting.neighbors import nearest_neighbor

__all__ = ["KMeansResult", "kmeans", "kmeans_plusplus"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes:
      centroids: [K, 3] float32 cluster centres (units of the input).
      labels: [N] int32 index of each point's nearest centre (consistent with ``centroids``).
      counts: [K] int32 points per cluster.
      inertia: [] float32 Σ squared distance of each point to its centre.
      n_iter: [] int32 Lloyd iterations run.
      converged: [] bool, True when stopped by the label or tolerance criterion.
    """

    centroids: jax.Array
    labels: jax.Array
    counts: jax.Array
    inertia: jax.Array
    n_iter: jax.Array
    converged: jax.Array


def _sqdist_to(x: jax.Array, c: jax.Array) -> jax.Array:
    return jnp.sum((x - c) ** 2, axis=-1)


@partial(jax.jit, static_argnames=("k",))
def kmeans_plusplus(key: jax.Array, points: jax.Array, *, k: int) -> jax.Array:
    """k-means++ seeding (D² sampling), jitted.

    Args:
      key: PRNG key.
      points: [N, 3] float32.
      k: number of centres (static), 1 ≤ k ≤ N.

    Returns:
      [k, 3] float32 initial centres, each one of the points.
    """
    x = points.astype(jnp.float32)
    n = x.shape[0]
    key0, key = jax.random.split(key)
    first = x[jax.random.randint(key0, (), 0, n)]
    cents = jnp.zeros((k, 3), jnp.float32).at[0].set(first)
    d = _sqdist_to(x, first)

    def body(j, carry):
        cents, d, key = carry
        key, sub, sub2 = jax.random.split(key, 3)
        cdf = jnp.cumsum(d)
        total = cdf[-1]
        u = jax.random.uniform(sub, (), jnp.float32) * total
        idx = jnp.minimum(jnp.searchsorted(cdf, u, side="right"), n - 1)
        # All remaining mass zero (fewer distinct points than k): any point will do.
        idx = jnp.where(total > 0, idx, jax.random.randint(sub2, (), 0, n))
        c = x[idx]
        return cents.at[j].set(c), jnp.minimum(d, _sqdist_to(x, c)), key

    cents, _, _ = jax.lax.fori_loop(1, k, body, (cents, d, key))
    return cents


def _update(x: jax.Array, labels: jax.Array, d2: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    sums = jax.ops.segment_sum(x, labels, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=k)
    cents = sums / jnp.maximum(counts, 1)[:, None].astype(x.dtype)
    empty = counts == 0

    def reseed(cents):
        far = jnp.argsort(-d2)  # farthest points from their centres first
        rank = jnp.clip(jnp.cumsum(empty) - 1, 0, x.shape[0] - 1)
        return jnp.where(empty[:, None], x[far[rank]], cents)

    cents = jax.lax.cond(jnp.any(empty), reseed, lambda c: c, cents)
    return cents, counts


@partial(jax.jit, static_argnames=("k", "chunk", "method"))
def _lloyd(x, init, iters, tol_abs, *, k, chunk, method):
    def assign(c):
        return nearest_neighbor(x, c, chunk=chunk, method=method)

    labels0, d20 = assign(init)

    def cond(st):
        _, _, _, it, done = st
        return (it < iters) & ~done

    def body(st):
        c, labels, d2, it, _ = st
        new, _ = _update(x, labels, d2, k)
        shift = jnp.sum((new - c) ** 2)
        new_labels, new_d2 = assign(new)
        done = (shift <= tol_abs) | jnp.all(new_labels == labels)
        return new, new_labels, new_d2, it + 1, done

    st = (init, labels0, d20, jnp.int32(0), jnp.bool_(False))
    c, labels, d2, it, done = jax.lax.while_loop(cond, body, st)
    counts = jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=k)
    return KMeansResult(c, labels, counts, jnp.sum(d2), it, done)


def kmeans(points: ArrayLike, k: int, key: jax.Array, *, iters: int = 100, tol: float = 1e-4,
           chunk: int = 512, init: ArrayLike | None = None, method: str = "auto") -> KMeansResult:
    """K-means clustering of 3D points (k-means++ seeding, Lloyd iterations; jitted core).

    Args:
      points: [N, 3] float positions (any unit).
      k: number of clusters, 1 ≤ k ≤ N.
      key: PRNG key for the seeding.
      iters: maximum Lloyd iterations (one iteration = centre update + re-assignment).
      tol: relative tolerance on the total squared centre shift (times the mean per-axis variance
        of the points); 0 runs until labels stop changing or ``iters`` is reached.
      chunk: points per distance block; peak memory of the assignment ≈ chunk × k × 4 bytes.
      init: [k, 3] optional initial centres (skips the seeding).
      method: nearest-centre search, ``"brute"``, ``"grid"`` or ``"auto"``
        (:func:`insideout_jax.fitting.neighbors.nearest_neighbor`; all exact).

    Returns:
      A :class:`KMeansResult`; labels are consistent with the returned centroids.

    Raises:
      ValueError: on a malformed ``points``, ``k``, ``iters``, ``tol``, ``chunk`` or ``init``.
    """
    x = jnp.asarray(points, jnp.float32)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {x.shape}")
    n = x.shape[0]
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, N={n}], got {k}")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if method not in ("auto", "brute", "grid"):
        raise ValueError(f"method must be 'auto', 'brute' or 'grid', got {method!r}")
    k = int(k)
    if init is None:
        c0 = kmeans_plusplus(key, x, k=k)
    else:
        c0 = jnp.asarray(init, jnp.float32)
        if c0.shape != (k, 3):
            raise ValueError(f"init must have shape [{k}, 3], got {c0.shape}")
    tol_abs = float(tol) * float(np.mean(np.var(np.asarray(x), axis=0)))
    return _lloyd(x, c0, jnp.int32(iters), jnp.float32(tol_abs), k=k, chunk=int(chunk),
                  method=method)
