"""Surfaces of mask fields and the surface metrics of MedGS's evaluation (host-side NumPy / SciPy).

Surface of a mask field: a [Z, Y, X] volume of the mask head (or of interpolated masks), an
optional Gaussian smoothing in mm, marching cubes at 0.5 (scikit-image, via
:func:`insideout_jax.metrics.mesh.marching_cubes_mesh`).

Metrics between two surfaces, from ``n_points`` area-uniform samples on each (MedGS: 50 000):
directed nearest-neighbour distances d_PQ (every sample of P to the nearest sample of Q) and d_QP;

- CD  = ½(mean d_PQ + mean d_QP)               (MedGS's ``evaluate.py``)
- ASD = mean of all distances of both directions (the average symmetric surface distance)
- HD  = max(max d_PQ, max d_QP)
- HD95 = max(95th percentile of d_PQ, 95th percentile of d_QP)

all in mm. MedGS first rescales the predicted mesh uniformly to the reference's size and aligns
it by ICP, which hides size and position errors; :func:`surface_metrics` reports both ("raw" and
"rescale_icp").
"""

from __future__ import annotations

import numpy as np

from insideout_jax.fitting.procrustes import procrustes
from insideout_jax.metrics.mesh import marching_cubes_mesh, sample_surface  # noqa: F401 (re-exported)

__all__ = ["mask_surface", "sample_surface", "surface_distances", "rescale_icp", "surface_metrics"]


def mask_surface(volume, spacing_zyx, origin_xyz, *, level: float = 0.5, smooth_mm: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a mask field (vertices [V, 3] world xyz mm, faces [F, 3]).

    Args:
      volume: [Z, Y, X] mask field (≈ 1 inside, 0 outside).
      spacing_zyx, origin_xyz: the grid, mm.
      level: iso value.
      smooth_mm: standard deviation of a Gaussian smoothing before marching cubes, mm (0 = none).

    Raises:
      ValueError: if the field never crosses ``level`` (no surface).
    """
    from scipy import ndimage

    v = np.asarray(volume, np.float32)
    if smooth_mm > 0:
        v = ndimage.gaussian_filter(v, sigma=[smooth_mm / float(s) for s in spacing_zyx], mode="nearest")
    if not (v.min() < level < v.max()):
        raise ValueError(f"the mask field ({v.min():.3g} … {v.max():.3g}) never crosses level {level}: "
                         "no surface")
    # pad with the outside value so that the surface is closed where the mask touches the grid's border
    pad = np.pad(v, 1, mode="constant", constant_values=min(float(v.min()), 0.0))
    origin = np.asarray(origin_xyz, np.float64) - np.asarray(spacing_zyx, np.float64)[::-1]
    return marching_cubes_mesh(pad, spacing_zyx, origin, level)


def surface_distances(pred, ref) -> dict[str, float]:
    """CD, ASD, HD and HD95 (mm) between two point samples of surfaces (module docstring)."""
    from scipy.spatial import cKDTree

    p = np.asarray(pred, np.float64)
    q = np.asarray(ref, np.float64)
    for name, x in (("pred", p), ("ref", q)):
        if x.ndim != 2 or x.shape[1] != 3 or len(x) == 0:
            raise ValueError(f"{name} must be [M >= 1, 3] points, got shape {x.shape}")
    d_pq = cKDTree(q).query(p)[0]
    d_qp = cKDTree(p).query(q)[0]
    return {
        "cd": float(0.5 * (d_pq.mean() + d_qp.mean())),
        "asd": float(np.concatenate([d_pq, d_qp]).mean()),
        "hd": float(max(d_pq.max(), d_qp.max())),
        "hd95": float(max(np.percentile(d_pq, 95), np.percentile(d_qp, 95))),
    }


def rescale_icp(pred, ref, *, iterations: int = 50, tol: float = 1e-6) -> np.ndarray:
    """MedGS's alignment: scale ``pred`` uniformly to ``ref``'s size, centre it on ``ref``, then rigid
    point-to-point ICP (nearest neighbours, Kabsch).

    Decision: the size is the RMS distance of the samples to their centroid, which does not change
    under rotation (MedGS's bounding-box extents do, so a rotated prediction would be mis-scaled).

    Returns:
      [M, 3] the aligned ``pred`` points.
    """
    from scipy.spatial import cKDTree

    p = np.asarray(pred, np.float64)
    q = np.asarray(ref, np.float64)
    cp, cq = p.mean(0), q.mean(0)
    rp = np.sqrt(np.mean(np.sum((p - cp) ** 2, axis=1)))
    rq = np.sqrt(np.mean(np.sum((q - cq) ** 2, axis=1)))
    x = (p - cp) * (rq / rp if rp > 0 else 1.0) + cq
    tree = cKDTree(q)
    prev = np.inf
    for _ in range(int(iterations)):
        d, idx = tree.query(x)
        fit = procrustes(x, q[idx], with_scale=False)  # rigid (Kabsch)
        x = x @ np.asarray(fit.rotation, np.float64).T + np.asarray(fit.translation, np.float64)
        err = float(np.mean(d))
        if prev - err < tol * max(err, 1e-12):
            break
        prev = err
    return x


def surface_metrics(pred_mesh, ref_mesh, *, n_points: int = 50_000, seed: int = 0) -> dict:
    """{"raw": {cd, asd, hd, hd95}, "rescale_icp": {…}} between two meshes ((vertices, faces) each)."""
    p = sample_surface(*pred_mesh, n_points, seed=seed)
    q = sample_surface(*ref_mesh, n_points, seed=seed + 1)
    return {"raw": surface_distances(p, q), "rescale_icp": surface_distances(rescale_icp(p, q), q)}
