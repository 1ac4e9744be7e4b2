"""Point-set geometry metrics: hidden point removal and Chamfer distance (paper Table 3).

Host-side NumPy/SciPy code following EVALUATION.md §4. Points are ``[N, 3]`` float in the CT frame,
mm (after the method's alignment).

Protocol (decision, §4): c = bounding-box centre of the radiative centres, r = their maximum
distance from c (fixed per object). Cameras sit at ``c + 3r·v_k`` for the 42 vertices of a
level-1 icosphere; each view runs HPR with ``R = 100 ×`` the maximum point distance from that
camera; a cloud's surface set is the union of its visible points over the views. Chamfer
distance is then ``mean_a min_b ‖a − b‖ + mean_b min_a ‖a − b‖`` (not squared, mm).

Caveat (measured): a larger R marks more points visible. With R = 100× the view distance, interior
points are removed only behind a densely sampled surface: a random shell of 1500 points on a sphere
(gaps ≈ 9 % of r) lets ~95 % of the points at half radius through, while R = 10× removes all of
them; a regular shell of 2000 points (Fibonacci) hides them all at 100×.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, cKDTree
from scipy.spatial.transform import Rotation

from insideout_jax.metrics.mesh import icosphere

__all__ = [
    "chamfer",
    "chamfer_hpr",
    "hidden_point_removal",
    "hpr_cameras",
    "protocol_center_radius",
    "surface_points_hpr",
    "surface_similarity",
]

_ICOSPHERE_LEVEL = {12: 0, 42: 1, 162: 2, 642: 3}


def _points(points, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must be [N, 3], got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one point")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} must be finite")
    return p


def hidden_point_removal(points, camera, radius: float) -> np.ndarray:
    """Points visible from a camera position, by spherical flipping (Katz, Tal, Basri 2007).

    With the camera C at the origin, each point is flipped to ``p̂ = p + 2(R − ‖p‖)·p/‖p‖``; the
    visible points are the vertices of the convex hull of ``{p̂} ∪ {0}`` other than the origin.
    Same indices as open3d's ``PointCloud.hidden_point_removal(camera, radius)``.

    Args:
      points: ``[N, 3]`` float, mm; N ≥ 3 and not all coplanar with the camera.
      camera: ``[3]`` float, mm, viewpoint (must not coincide with a point).
      radius: R, absolute flipping radius, mm; must exceed the largest ``‖p − C‖``.

    Returns:
      ``[M]`` int64 sorted indices into ``points`` of the visible points.
    """
    p = _points(points, "points")
    c = np.asarray(camera, dtype=np.float64).reshape(-1)
    if c.shape != (3,):
        raise ValueError(f"camera must be [3], got shape {np.shape(camera)}")
    if p.shape[0] < 3:
        raise ValueError(f"points must hold at least 3 points, got {p.shape[0]}")
    q = p - c
    dist = np.linalg.norm(q, axis=1)
    if np.any(dist == 0):
        raise ValueError("camera coincides with one of the points")
    if not radius > dist.max():
        raise ValueError(
            f"radius must exceed the largest camera distance {dist.max():.6g}, got {radius}"
        )
    flipped = q + (2.0 * (radius - dist) / dist)[:, None] * q
    hull = ConvexHull(np.vstack([flipped, np.zeros((1, 3))]))
    vis = hull.vertices[hull.vertices < p.shape[0]]
    return np.sort(vis).astype(np.int64)


def protocol_center_radius(points) -> tuple[np.ndarray, float]:
    """Centre and radius of the §4 protocol from the radiative centres.

    Args:
      points: ``[N, 3]`` float, mm, radiative splat centres in the CT frame.

    Returns:
      center: ``[3]`` float64, bounding-box centre, mm.
      r: float, maximum distance of the points from ``center``, mm.
    """
    p = _points(points, "points")
    center = 0.5 * (p.min(axis=0) + p.max(axis=0))
    return center, float(np.linalg.norm(p - center, axis=1).max())


def hpr_cameras(center, r: float, *, n_views: int = 42) -> np.ndarray:
    """Camera positions of the §4 protocol: ``c + 3r·v_k`` for the icosphere vertices ``v_k``.

    Args:
      center: ``[3]`` float, c, mm.
      r: object radius, mm (> 0).
      n_views: number of icosphere vertices: 12, 42 (default, level 1), 162 or 642.

    Returns:
      ``[n_views, 3]`` float64 camera positions, mm.
    """
    if n_views not in _ICOSPHERE_LEVEL:
        raise ValueError(
            f"n_views must be an icosphere vertex count {sorted(_ICOSPHERE_LEVEL)}, got {n_views}"
        )
    if not r > 0:
        raise ValueError(f"r must be > 0, got {r}")
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    if c.shape != (3,):
        raise ValueError(f"center must be [3], got shape {np.shape(center)}")
    dirs, _ = icosphere(_ICOSPHERE_LEVEL[n_views])
    return c + 3.0 * float(r) * dirs


def surface_points_hpr(
    points, *, center, r: float, n_views: int = 42, radius_factor: float = 100.0
) -> np.ndarray:
    """Surface subset of a cloud: union of HPR-visible points over the §4 cameras.

    Args:
      points: ``[N, 3]`` float, mm.
      center: ``[3]`` float, c, mm (bounding-box centre of the radiative centres).
      r: float, mm, max distance of the radiative centres from c.
      n_views: icosphere vertex count (42 = level 1).
      radius_factor: HPR radius as a multiple of the largest camera-to-point distance (100).

    Returns:
      ``[M]`` int64 sorted indices into ``points``.
    """
    p = _points(points, "points")
    visible = np.zeros(p.shape[0], dtype=bool)
    for cam in hpr_cameras(center, r, n_views=n_views):
        far = np.linalg.norm(p - cam, axis=1).max()
        visible[hidden_point_removal(p, cam, radius_factor * far)] = True
    return np.nonzero(visible)[0].astype(np.int64)


def chamfer(a, b) -> dict[str, float]:
    """Chamfer distance between two point sets (nearest neighbours by ``scipy.spatial.cKDTree``).

    Args:
      a: ``[N, 3]`` float, mm.
      b: ``[M, 3]`` float, mm.

    Returns:
      dict with (mm or mm²):
        ``"chamfer"``: ``mean_a min_b ‖a−b‖ + mean_b min_a ‖a−b‖`` (the reported value, §4);
        ``"chamfer_squared"``: the same with squared distances;
        ``"a_to_b"``, ``"b_to_a"``: the two directed means;
        ``"a_to_b_squared"``, ``"b_to_a_squared"``: directed means of squared distances.
    """
    pa, pb = _points(a, "a"), _points(b, "b")
    d_ab, _ = cKDTree(pb).query(pa, k=1)
    d_ba, _ = cKDTree(pa).query(pb, k=1)
    out = {
        "a_to_b": float(d_ab.mean()),
        "b_to_a": float(d_ba.mean()),
        "a_to_b_squared": float(np.mean(d_ab**2)),
        "b_to_a_squared": float(np.mean(d_ba**2)),
    }
    out["chamfer"] = out["a_to_b"] + out["b_to_a"]
    out["chamfer_squared"] = out["a_to_b_squared"] + out["b_to_a_squared"]
    return out


def chamfer_hpr(a, b, *, center, r: float, n_views: int = 42) -> dict[str, float]:
    """Chamfer distance between the HPR surface subsets of two clouds (§4 protocol).

    Args:
      a: ``[N, 3]`` float, mm (e.g. aligned RGB splat centres).
      b: ``[M, 3]`` float, mm (e.g. radiative splat centres).
      center: ``[3]`` float, mm, protocol centre c (fixed per object).
      r: float, mm, protocol radius (fixed per object).
      n_views: icosphere vertex count (42).

    Returns:
      The :func:`chamfer` dict of the surface subsets, plus ``"n_surface_a"`` and
      ``"n_surface_b"`` (point counts, as floats).
    """
    pa, pb = _points(a, "a"), _points(b, "b")
    sa = pa[surface_points_hpr(pa, center=center, r=r, n_views=n_views)]
    sb = pb[surface_points_hpr(pb, center=center, r=r, n_views=n_views)]
    out = chamfer(sa, sb)
    out["n_surface_a"] = float(sa.shape[0])
    out["n_surface_b"] = float(sb.shape[0])
    return out


def surface_similarity(points, surface, normals, init, *, gate: float, trim: float = 0.8,
                       iters: int = 30) -> dict:
    """The similarity that puts ``points`` on a sampled surface: point-to-plane ICP with scale.

    Each iteration pairs every point with its nearest surface sample, keeps the pairs within
    ``gate`` of it (after the current map) and, of those, the fraction ``trim`` with the smallest
    |point-to-plane distance|, and takes one Gauss–Newton step of (small rotation, translation,
    log-scale) about the kept points' centroid. Host side (NumPy, SciPy), independent of the
    fitting package. Used by the evaluation to check its own reference: the SfM model's sparse
    points are on the object's surface, so the similarity that puts them on the true surface is
    the SfM → CT map *of the object*, which the camera-centre map equals only when SfM is a
    similarity of the truth.

    Args:
      points: [N, 3] float (e.g. SfM points, SfM frame).
      surface, normals: [M, 3] float samples of the surface and their unit normals (CT frame, mm).
      init: ``(R [3, 3], t [3], s)`` start, p ↦ s·R·p + t.
      gate: pairs farther apart than this (surface units) are left out (background, outliers).
      trim: fraction of the gated pairs kept.
      iters: Gauss–Newton iterations.

    Returns:
      ``{"rotation": [3, 3], "translation": [3], "scale": float, "points": kept pairs,
      "residual_mm": median |point-to-plane distance| of the kept pairs}``.

    Raises:
      ValueError: malformed inputs, or fewer than 10 points within ``gate``.
    """
    p, q, n = _points(points, "points"), _points(surface, "surface"), _points(normals, "normals")
    if n.shape != q.shape:
        raise ValueError(f"normals {n.shape} do not match the surface {q.shape}")
    if not (gate > 0 and 0 < trim <= 1 and iters >= 1):
        raise ValueError(f"need gate > 0, trim in (0, 1] and iters >= 1; got {gate}, {trim}, {iters}")
    rot, t, s = (np.asarray(init[0], np.float64), np.asarray(init[1], np.float64),
                 float(init[2]))
    tree = cKDTree(q)
    for it in range(iters + 1):
        y = s * p @ rot.T + t
        d, i = tree.query(y)
        r = np.einsum("ij,ij->i", y - q[i], n[i])
        near = d <= gate
        if near.sum() < 10:
            raise ValueError(f"only {int(near.sum())} points lie within {gate:g} of the surface"
                             " under the start map; cannot fit a similarity")
        keep = near & (np.abs(r) <= np.quantile(np.abs(r[near]), trim))
        if it == iters:
            break
        yk, nk = y[keep], n[i[keep]]
        c = yk.mean(0)
        # r + n·(w × (y − c) + v + a (y − c)) = 0 for a small rotation w, translation v, scale 1 + a
        a_mat = np.concatenate([np.cross(yk - c, nk), nk, np.einsum("ij,ij->i", nk, yk - c)[:, None]], 1)
        sol = np.linalg.lstsq(a_mat, -r[keep], rcond=None)[0]
        d_rot = Rotation.from_rotvec(sol[:3]).as_matrix()
        rot, s = d_rot @ rot, s * (1.0 + sol[6])
        t = (1.0 + sol[6]) * (d_rot @ (t - c)) + c + sol[3:6]
    return {"rotation": rot, "translation": t, "scale": s, "points": int(keep.sum()),
            "residual_mm": float(np.median(np.abs(r[keep])))}
