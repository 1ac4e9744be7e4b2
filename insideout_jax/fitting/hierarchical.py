"""Hierarchical fitting (paper Alg. 1): global similarity, then local and fine corrections.

Stages, for ``schedule = (1/10, 1/2, 1)`` (paper: K ∈ {⌊N/10⌋, ⌊N/2⌋, N}):

1. **Global** (:func:`insideout_jax.fitting.global_fit.global_fit`): moments + PCA + symmetric
   trimmed ICP with scale, RGB centres against the radiative set's outer surface.
2. **Local**, one level per fraction f < 1, K = ⌊f·N⌋: K-means of the RGB centres; per-cluster
   rigid trimmed ICP (vmapped, clusters padded to a fixed size with masks); the per-cluster
   motions become one smooth displacement field.
3. **Fine** (f = 1, K = N, every Gaussian its own cluster): each RGB centre's displacement to its
   nearest surface sample (trimmed), turned into a smooth field the same way; a few iterations.

Decisions (the paper does not say how clusters correspond across modalities, nor how per-cluster
motions stay coherent):

* **Correspondence.** The RGB clusters' centroids are the sites of *both* modalities' clusters:
  the radiative outer-surface samples are assigned to their nearest RGB centroid, so RGB cluster
  k is matched with the surface samples of the same Voronoi cell (only those within
  ``reach`` × the cluster's radius of its centroid, and at most the nearest 8 × the median
  count of them). This is K-means of the radiative surface
  with the RGB centres held fixed; matching two independent K-means runs by index is meaningless
  and matching by centroid distance pairs patches of different extent. The radiative set is
  represented by its outer surface because the RGB set is a shell (see ``global_fit``).
* **Regularisation.** Each cluster's ICP is rigid (no per-cluster scale) and carries a prior
  (``prior_weight``) pulling toward no motion, so flat or tiny clusters cannot slide. The
  per-point displacements of all clusters are then blended into one smooth field by normalised
  Gaussian convolution (σ = ``smoothing`` × the median cluster radius at local levels, ×
  the RGB point spacing at the fine level, and never below ``min_sigma`` × the RGB set's RMS
  radius: the radiative surface is itself noisy at short range, so short-range fields would copy
  its noise), capped at σ per stage. A smooth field moves
  neighbours together, so the surface cannot tear; covariances are rotated by the polar rotation of
  the field's Jacobian (I + ∇u), so means and covariances move consistently (SH rotates too).
* **Gate (two-fold cross-validation).** The radiative set is split at random into two halves and
  each half gets its own outer surface (independent noise). A stage's field is estimated against
  one half's surface and must lower the symmetric trimmed residual to the *other* half's surface
  by at least ``min_gain`` (relative), and vice versa; the applied field is the mean of the two.
  A field that only copies surface noise does not generalise to the other half and is rejected
  (recorded as such). Measured on the test solid: without this gate every local and fine stage
  lowered the residual to the full surface while *raising* the true per-point error by 35–65 %;
  with it, those stages are rejected when the RGB set is an exact similarity image, and accepted
  (and lower the true error) when it carries a smooth non-rigid distortion.
  Each stage's neighbour-distance distortion (relative to the global fit) is reported so that
  tearing or stretching is visible.
* **Centres against a surface.** RGB splat centres lie behind the surface the RGB model shows
  (:mod:`insideout_jax.fitting.visible`); matched to the radiative surface itself they grow the
  RGB set by that depth over the object's radius. With ``rgb_depth`` the radiative surfaces (both
  halves too) move inward by it first, converted to CT units by the ratio of the two sets' RMS
  radii (a scale error of a few % there moves the surface by a few % of the depth). Measured on
  the same stage-1 splats of the cpu preset: the fitted scale error went 3.3 → 0.7 % on the
  matryoshka and 1.1 → 0.9 % on the skull.

Cameras of the RGB set should be moved with the global similarity only
(:func:`insideout_jax.cameras.transform_camera`); the local and fine corrections are small
non-rigid refinements of the splats.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import ndimage
from scipy.spatial import cKDTree

from insideout_jax import sh as sh_lib
from insideout_jax.fitting.global_fit import (
    GlobalFitResult,
    _normaliser,
    global_fit,
    rad_surface,
    symmetric_residual,
)
from insideout_jax.fitting.icp import icp_batched
from insideout_jax.fitting.kmeans import kmeans
from insideout_jax.fitting.procrustes import Similarity, procrustes
from insideout_jax.fitting.surface import _splat_trilinear, point_spacing
from insideout_jax.splats import (
    RadSplats,
    RGBSplats,
    quat_multiply,
    rotmat_to_quat,
    transform_splats,
)

__all__ = ["StageReport", "HierarchicalFitResult", "hierarchical_fit", "neighbor_distortion",
           "warp_splats"]


@dataclasses.dataclass(frozen=True)
class StageReport:
    """Diagnostics of one stage (host-side record).

    Attributes:
      name: ``"global"``, ``"local_<f>"`` or ``"fine"``.
      accepted: False when the gate rejected the stage (the splats were left unchanged).
      transform: effective RGB → CT similarity after the stage: Procrustes from the input RGB
        centres to the centres after this stage (for the global stage, the global fit itself).
        The runner compares it with the true transform (rotation, scale, translation errors).
      residual: symmetric trimmed mean distance, RGB centres ↔ radiative surface (CT units, mm).
      residual_before: the same before the stage (``nan`` for the global stage).
      displacement_mean / displacement_max: of the centres during this stage (mm).
      distortion: :func:`neighbor_distortion` of the centres after this stage vs after the
        global stage (all zeros for the global stage).
      clusters: K (0 for global).
      seconds: wall time of the stage.
      targets_dropped: surface targets left out by the per-cluster cap of the local ICP (summed
        over both halves and iterations; 0 when the cap did not bite).
      grid_coarsening: how much coarser than σ/2 the displacement field's grid had to be to stay
        within ``max_cells`` per axis (1.0: not coarsened; the largest over the stage).
      means: [N, 3] float32 centres of the active RGB splats after the stage (CT frame), for
        per-stage metrics (e.g. Chamfer distance, error against a known truth).
    """

    name: str
    accepted: bool
    transform: Similarity
    residual: float
    residual_before: float
    displacement_mean: float
    displacement_max: float
    distortion: dict
    clusters: int
    seconds: float
    means: np.ndarray
    targets_dropped: int = 0
    grid_coarsening: float = 1.0


@dataclasses.dataclass(frozen=True)
class HierarchicalFitResult:
    """Result of :func:`hierarchical_fit`.

    Attributes:
      splats: the aligned :class:`RGBSplats` (CT frame, same capacity and mask as the input).
      transform: the global RGB → CT :class:`Similarity` (move the RGB cameras with this).
      stages: one :class:`StageReport` per stage, in order.
      surface: [S, 3] float32 radiative outer-surface samples (CT frame) used as the target.
      global_result: the global level's :class:`GlobalFitResult` (its candidates, ambiguity).
    """

    splats: RGBSplats
    transform: Similarity
    stages: tuple[StageReport, ...]
    surface: np.ndarray
    global_result: GlobalFitResult | None = None


def neighbor_distortion(before: ArrayLike, after: ArrayLike, *, k: int = 8,
                        scale: float = 1.0) -> dict:
    """Neighbour-distance distortion of a point set's deformation.

    For each point and its k nearest neighbours in ``before``, r = ‖aᵢ − aⱼ‖ / (scale·‖bᵢ − bⱼ‖).

    Args:
      before: [N, 3] positions before.
      after: [N, 3] the same points after.
      k: neighbours per point.
      scale: expected uniform scale factor between the two (1 for a rigid motion).

    Returns:
      ``median``, ``p99`` and ``max`` of |r − 1|, and ``frac_over_10pct`` / ``frac_over_50pct``,
      the fractions of pairs stretched or compressed by more than 10 % / 50 % (tearing shows as
      large ``max`` and ``frac_over_50pct``).
    """
    b = np.asarray(before, np.float64)
    a = np.asarray(after, np.float64)
    if b.shape != a.shape or b.ndim != 2 or b.shape[1] != 3 or len(b) <= k:
        raise ValueError(f"before and after must be equal [N, 3] with N > k, got {b.shape}, {a.shape}")
    _, idx = cKDTree(b).query(b, k=k + 1)
    i = np.repeat(np.arange(len(b)), k)
    j = idx[:, 1:].reshape(-1)
    db = np.linalg.norm(b[i] - b[j], axis=1)
    ok = db > 0
    r = np.linalg.norm(a[i] - a[j], axis=1)[ok] / (scale * db[ok])
    e = np.abs(r - 1.0)
    return {"median": float(np.median(e)), "p99": float(np.percentile(e, 99)),
            "max": float(e.max()), "frac_over_10pct": float(np.mean(e > 0.1)),
            "frac_over_50pct": float(np.mean(e > 0.5))}


def _smooth_field(points, values, weights, sigma, *, max_cells=160):
    """Normalised Gaussian convolution of point values; field and Jacobian at the points.

    Returns (u [N, d], jac [N, d, 3], coarsening) with jac[n, c, a] = ∂u_c/∂x_a and coarsening =
    the grid step over σ/2 (> 1 where ``max_cells`` per axis forced a coarser grid).
    """
    p = np.asarray(points, np.float64)
    lo = p.min(0) - 4 * sigma
    hi = p.max(0) + 4 * sigma
    h = max(sigma / 2, float(np.max(hi - lo)) / (max_cells - 2))
    shape = tuple(int(v) for v in np.ceil((hi - lo) / h).astype(int) + 2)
    coords = (p - lo) / h
    den = ndimage.gaussian_filter(_splat_trilinear(shape, coords, weights), sigma / h,
                                  mode="constant")
    den = np.maximum(den, 1e-12 * max(den.max(), 1e-300))
    d = values.shape[1]
    u = np.empty((len(p), d))
    jac = np.empty((len(p), d, 3))
    for c in range(d):
        num = ndimage.gaussian_filter(_splat_trilinear(shape, coords, weights * values[:, c]),
                                      sigma / h, mode="constant")
        field = num / den
        u[:, c] = ndimage.map_coordinates(field, coords.T, order=1)
        for a, g in enumerate(np.gradient(field, h)):
            jac[:, c, a] = ndimage.map_coordinates(g, coords.T, order=1)
    return u, jac, h / (sigma / 2)


def _polar_rotation(m: np.ndarray) -> np.ndarray:
    """Nearest proper rotations [N, 3, 3] to matrices [N, 3, 3] (polar decomposition)."""
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[:, :, 2] *= d[:, None]
    return u @ vt


@jax.jit
def warp_splats(splats: RGBSplats, new_means: jax.Array, rotations: jax.Array) -> RGBSplats:
    """Move every splat to its own new centre and rotate it by its own rotation.

    Covariances Σᵢ ↦ Rᵢ Σᵢ Rᵢᵀ (quaternions composed), SH rotated per splat.

    Args:
      splats: [C] RGB splats.
      new_means: [C, 3] float32 new centres.
      rotations: [C, 3, 3] float32 proper rotations.
    """
    qn = splats.quats / jnp.linalg.norm(splats.quats, axis=-1, keepdims=True)
    quats = quat_multiply(rotmat_to_quat(rotations), qn)
    sh = jax.vmap(lambda c, r: sh_lib.rotate_sh(c[None], r)[0])(splats.sh, rotations)
    return splats.replace(means=new_means.astype(splats.means.dtype), quats=quats, sh=sh)


def _pad_groups(points, labels, k):
    """Points grouped by label into [k, M, 3] with a mask; M = next power of two ≥ max count."""
    counts = np.bincount(labels, minlength=k)
    m = int(2 ** np.ceil(np.log2(max(int(counts.max()), 4))))
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(labels)) - starts[labels[order]]
    out = np.zeros((k, m, 3), np.float32)
    mask = np.zeros((k, m), bool)
    out[labels[order], rank] = points[order]
    mask[labels[order], rank] = True
    slot = np.empty(len(labels), np.int64)
    slot[order] = rank
    return out, mask, slot


def _effective(src, dst) -> Similarity:
    return procrustes(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))


def _cluster(p, k, key, kmeans_iters):
    km = kmeans(p, k, key, iters=kmeans_iters, tol=1e-4)
    labels = np.asarray(km.labels)
    cent = np.asarray(km.centroids, np.float64)
    radius = np.sqrt(np.bincount(labels, np.sum((p - cent[labels]) ** 2, 1), minlength=k)
                     / np.maximum(np.bincount(labels, minlength=k), 1))
    r_med = float(np.median(radius[radius > 0])) if np.any(radius > 0) else 1.0
    return labels, cent, radius, r_med


def _local_displacements(p, surf, clusters, *, icp_iters, trim, prior_weight, reach):
    """Per-point displacements from vmapped per-cluster rigid ICP against the matched surface, their
    weights, and the number of surface targets the per-cluster cap left out."""
    labels, cent, radius, r_med = clusters
    k = len(cent)
    d_s, lab_s = cKDTree(cent).query(surf)  # host side: one query, no compilation
    near = d_s <= reach * np.maximum(radius[lab_s], r_med)
    # At most `cap` targets per cluster (its nearest ones), so that one large Voronoi cell (an
    # RGB cluster beside a region the photos never saw) cannot blow up the padded batch.
    counts = np.bincount(lab_s[near], minlength=k)
    cap = int(max(64, 8 * np.median(counts[counts > 0]))) if np.any(counts) else 64
    order = np.lexsort((d_s, lab_s))
    rank = np.empty(len(order), np.int64)
    first = np.searchsorted(lab_s[order], lab_s[order])
    rank[order] = np.arange(len(order)) - first
    dropped = int(np.sum(near & (rank >= cap)))
    near &= rank < cap
    src, src_mask, slot = _pad_groups(p.astype(np.float32), labels, k)
    dst, dst_mask, _ = _pad_groups(surf[near], lab_s[near], k)
    res = icp_batched(src, dst, src_mask, dst_mask, iters=icp_iters, trim=trim,
                      prior_weight=prior_weight)
    usable = (src_mask.sum(1) >= 3) & (dst_mask.sum(1) >= 3)
    moved = np.asarray(res.transform.apply(jnp.asarray(src)))
    return moved[labels, slot] - p, usable[labels].astype(np.float64), dropped


def _fine_displacements(p, surf, trim):
    d, idx = cKDTree(surf).query(p)
    d2 = d * d
    disp = surf[idx].astype(np.float64) - p
    return disp, (d2 <= np.quantile(d2, trim)).astype(np.float64)


def _field(p, disp, w, sigma):
    """Smoothed, capped displacement field, rotations at the points and the grid's coarsening
    (None if no data)."""
    if w.sum() == 0:
        return None
    u, jac, coarsening = _smooth_field(p, disp, w, sigma)
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    u = u * np.minimum(1.0, sigma / np.maximum(norm, 1e-30))  # cap the step at σ
    return u, _polar_rotation(np.eye(3) + jac), coarsening


def _split_rad(rad, seed):
    """Two random halves of the radiative set (splats or points)."""
    if isinstance(rad, RadSplats):
        idx = np.flatnonzero(np.asarray(rad.active))
        take = lambda i: jax.tree_util.tree_map(lambda x: x[i], rad)  # noqa: E731
    else:
        pts = np.asarray(rad, np.float32)
        idx = np.arange(len(pts))
        take = lambda i: pts[i]  # noqa: E731
    perm = np.random.default_rng(seed).permutation(idx)
    return take(np.sort(perm[: len(perm) // 2])), take(np.sort(perm[len(perm) // 2:]))


def hierarchical_fit(rgb: RGBSplats, rad, *, schedule=(0.1, 0.5, 1.0), seed: int = 0,
                     smoothing: float = 2.0, min_sigma: float = 0.1, prior_weight: float = 1.0,
                     reach: float = 2.5, trim: float = 0.9, kmeans_iters: int = 20,
                     icp_iters: int = 10, fine_iters: int = 3, min_gain: float = 0.01,
                     global_kw: dict | None = None, surface_kw: dict | None = None,
                     rgb_depth: float = 0.0) -> HierarchicalFitResult:
    """Align RGB splats to radiative splats: paper Alg. 1 with the decisions of the module docstring.

    Args:
      rgb: RGB splats in the SfM frame (active slots are fitted; inactive ones move with the
        global similarity only).
      rad: radiative splats (or [P, 3] centres filling the volume) in the CT frame, mm.
      schedule: cluster fractions f (K = ⌊f·N⌋); f < 1 is a local level, f = 1 the fine stage.
      seed: seed of the K-means seeding, the subsampling and the radiative split.
      smoothing: field σ in median cluster radii (local) or RGB point spacings (fine) ...
      min_sigma: ... but at least this fraction of the RGB set's RMS radius.
      prior_weight: per-cluster ICP pull toward no motion (:func:`insideout_jax.fitting.icp`).
      reach: surface samples farther than ``reach`` × cluster radius from a centroid are ignored.
      trim: ICP / fine inlier fraction.
      kmeans_iters: Lloyd iterations per level.
      icp_iters: per-cluster ICP iterations.
      fine_iters: iterations of the fine stage.
      min_gain: a stage must lower the held-out residual by this relative amount to be kept.
      global_kw: extra keyword arguments for :func:`global_fit`.
      surface_kw: keyword arguments for the radiative outer surfaces (:func:`rad_surface`, e.g.
        ``fine`` for voxel centres).
      rgb_depth: how far the RGB centres lie behind the surface the RGB model shows (RGB units,
        :func:`insideout_jax.fitting.visible.visible_depth`). The radiative surfaces move inward
        along their normals by it × the ratio of the two sets' RMS radii (the scale before any
        fit), so that centres are matched to where centres belong.

    Returns:
      A :class:`HierarchicalFitResult`.
    """
    if not isinstance(rgb, RGBSplats):
        raise ValueError(f"rgb must be RGBSplats, got {type(rgb).__name__}")
    sched = tuple(float(f) for f in schedule)
    if any(not 0.0 < f <= 1.0 for f in sched):
        raise ValueError(f"schedule fractions must be in (0, 1], got {schedule}")
    if smoothing <= 0 or reach <= 0 or not 0 < trim <= 1 or min_gain < 0 or min_sigma < 0:
        raise ValueError("smoothing, reach must be > 0; trim in (0, 1]; min_gain, min_sigma >= 0")
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    if not rgb_depth >= 0.0:
        raise ValueError(f"rgb_depth must be >= 0, got {rgb_depth}")
    surf, normals = rad_surface(rad, **(surface_kw or {}))
    halves = [rad_surface(h, **(surface_kw or {})) for h in _split_rad(rad, seed)]
    shift = 0.0 if rgb_depth == 0.0 else rgb_depth * _normaliser(np.asarray(surf, np.float64))[1] / (
        _normaliser(np.asarray(rgb.means, np.float64)[np.asarray(rgb.active)])[1])
    surf = (surf - shift * normals).astype(np.float32)
    halves = [(h - shift * hn).astype(np.float32) for h, hn in halves]
    glob = global_fit(rgb, rad, surface=(surf, normals), seed=seed, **(global_kw or {}))
    tr = glob.transform
    splats = transform_splats(rgb, tr.rotation, tr.translation, tr.scale)
    active = np.asarray(splats.active)
    p_in = np.asarray(rgb.means, np.float64)[active]
    p_glob = np.asarray(splats.means, np.float64)[active]
    res = symmetric_residual(p_glob, surf, trim=trim)
    stages = [StageReport("global", True, tr, res, float("nan"), 0.0, 0.0,
                          neighbor_distortion(p_glob, p_glob), 0, time.perf_counter() - t0,
                          p_glob.astype(np.float32))]
    n = len(p_glob)
    spacing = point_spacing(p_glob)
    sigma_floor = min_sigma * float(np.sqrt(np.mean(np.sum((p_glob - p_glob.mean(0)) ** 2, 1))))
    p = p_glob
    for f in sched:
        t1 = time.perf_counter()
        k = max(1, int(np.floor(f * n)))
        fine = k >= n
        key, sub = jax.random.split(key)
        name = "fine" if fine else f"local_{f:g}"
        before = res
        cur = p
        rots_total = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        clusters = None if fine else _cluster(p, k, sub, kmeans_iters)
        dropped, coarsening = 0, 1.0
        for _ in range(fine_iters if fine else 1):
            # Two-fold cross-validation: the field estimated against one half's surface must
            # lower the residual to the other half's (independent noise), and vice versa.
            fields, ok = [], True
            for est, held in ((0, 1), (1, 0)):
                if fine:
                    disp, w = _fine_displacements(cur, halves[est], trim)
                    sigma = max(smoothing * spacing, sigma_floor)
                else:
                    disp, w, n_out = _local_displacements(cur, halves[est], clusters,
                                                          icp_iters=icp_iters, trim=trim,
                                                          prior_weight=prior_weight, reach=reach)
                    dropped += n_out
                    sigma = max(smoothing * clusters[3], sigma_floor)
                fld = _field(cur, disp, w, sigma)
                if fld is None:
                    ok = False
                    break
                coarsening = max(coarsening, fld[2])
                r0 = symmetric_residual(cur, halves[held], trim=trim)
                r1 = symmetric_residual(cur + fld[0], halves[held], trim=trim)
                ok = ok and r1 < r0 * (1.0 - min_gain)
                fields.append(fld)
            if not ok:
                break
            u = (fields[0][0] + fields[1][0]) / 2
            rot = _polar_rotation(fields[0][1] + fields[1][1])
            cur = cur + u
            rots_total = rot @ rots_total
        accepted = cur is not p
        if accepted:
            means = np.asarray(splats.means).copy()
            means[active] = cur
            rots = np.broadcast_to(np.eye(3, dtype=np.float32), (splats.capacity, 3, 3)).copy()
            rots[active] = rots_total
            splats = warp_splats(splats, jnp.asarray(means, jnp.float32), jnp.asarray(rots))
            disp_all = np.linalg.norm(cur - p, axis=1)
            p = cur
            res = symmetric_residual(p, surf, trim=trim)
        else:
            disp_all = np.zeros(1)
        stages.append(StageReport(
            name, bool(accepted), _effective(p_in, p), res, before, float(disp_all.mean()),
            float(disp_all.max()), neighbor_distortion(p_glob, p), k, time.perf_counter() - t1,
            p.astype(np.float32), dropped, float(coarsening)))
    return HierarchicalFitResult(splats=splats, transform=tr, stages=tuple(stages), surface=surf,
                                 global_result=glob)
