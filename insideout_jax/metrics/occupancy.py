"""Surface metrics of density volumes and splat sets: the iso-surface mesh, its
normal-orientation occupancy (paper Fig. 6) and the internal noise of RGB splats below the true
surface."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from insideout_jax.metrics.mesh import (
    face_normals_areas,
    fibonacci_directions,
    icosphere,
    marching_cubes_mesh,
    spherical_occupancy,
)


def iso_level(volume, *, level="otsu") -> float:
    """Iso value for the density mesh (module docstring: Otsu by default).

    Args:
      volume: ``[Z, Y, X]`` float density (not constant).
      level: ``"otsu"`` (Otsu's threshold of all voxels), ``"half_p99"`` (half the 99th
        percentile) or a number.

    Returns:
      The level, strictly inside the volume's range.
    """
    from skimage.filters import threshold_otsu

    vol = np.asarray(volume, np.float64)
    if vol.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {vol.shape}")
    lo, hi = float(vol.min()), float(vol.max())
    if not hi > lo:
        raise ValueError("volume is constant: it has no iso-surface")
    if isinstance(level, str):
        if level == "otsu":
            value = float(threshold_otsu(vol))
        elif level == "half_p99":
            value = 0.5 * float(np.percentile(vol, 99.0))
        else:
            raise ValueError(f"level must be 'otsu', 'half_p99' or a number, got {level!r}")
    else:
        value = float(level)
    if not lo < value < hi:
        raise ValueError(f"level {value} is not strictly inside the volume range ({lo}, {hi})")
    return value


def density_mesh(volume, spacing_zyx, origin_xyz, *, level="otsu"):
    """Marching-cubes mesh of the continuous density (world xyz mm, outward normals).

    Returns:
      vertices ``[V, 3]`` float64 mm, faces ``[F, 3]`` int64, and the iso level used (float).
    """
    value = iso_level(volume, level=level)
    verts, faces = marching_cubes_mesh(volume, spacing_zyx, origin_xyz, value)
    return verts, faces, value


def occupancy_from_mesh(vertices, faces) -> dict:
    """Spherical occupancy (any / mean) of a mesh's face normals (EVALUATION.md §5).

    Returns:
      ``{"42": {"any", "mean"}, "242": {...}}`` on Fibonacci directions (the metrics.json keys),
      plus ``"icosphere_42"`` and ``"icosphere_162"`` and ``"n_faces"``.
    """
    normals, areas = face_normals_areas(vertices, faces)
    out = {str(n): spherical_occupancy(normals, areas, fibonacci_directions(n)) for n in (42, 242)}
    for lvl in (1, 2):
        dirs, _ = icosphere(lvl)
        out[f"icosphere_{len(dirs)}"] = spherical_occupancy(normals, areas, dirs)
    out["n_faces"] = float(np.asarray(faces).shape[0])
    return out


def occupancy_block(volume, spacing_zyx, origin_xyz, *, level="otsu") -> dict:
    """One ``occupancy[method]`` entry of metrics.json (paper Fig. 6).

    Args:
      volume: ``[Z, Y, X]`` float continuous density (e.g. :func:`render.slices.voxelize`).
      spacing_zyx: ``(dz, dy, dx)`` mm.
      origin_xyz: ``(x, y, z)`` mm, centre of voxel ``[0, 0, 0]``.
      level: iso level, see :func:`iso_level`.

    Returns:
      :func:`occupancy_from_mesh`'s dict plus ``"level"`` (the iso value used).
    """
    verts, faces, value = density_mesh(volume, spacing_zyx, origin_xyz, level=level)
    out = occupancy_from_mesh(verts, faces)
    out["level"] = value
    return out


def depth_below_surface(points, surface_points, surface_normals) -> np.ndarray:
    """Signed depth of points below a sampled surface, mm (positive inside).

    depth(p) = −n_q·(p − q) for the nearest surface sample q with outward unit normal n_q. Exact
    for a plane and, for a sphere of radius ρ sampled with spacing h, within about h²/(8ρ) of
    ρ − ‖p − c‖ near the surface. Far inside a non-convex object the nearest sample may lie on a
    fold, so the value is a depth estimate; a point deep inside is still positive because its
    nearest surface point faces away from it.

    Args:
      points: ``[N, 3]`` float, mm.
      surface_points: ``[M, 3]`` float samples of the outer surface, mm.
      surface_normals: ``[M, 3]`` float unit outward normals.

    Returns:
      ``[N]`` float64 depths, mm.
    """
    p = np.asarray(points, np.float64)
    q = np.asarray(surface_points, np.float64)
    n = np.asarray(surface_normals, np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {p.shape}")
    if q.ndim != 2 or q.shape[1] != 3 or q.shape[0] == 0:
        raise ValueError(f"surface_points must be [M, 3] with M ≥ 1, got shape {q.shape}")
    if n.shape != q.shape:
        raise ValueError(f"surface_normals must be {q.shape}, got {n.shape}")
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("surface_normals must be non-zero")
    n = n / norm
    if p.shape[0] == 0:
        return np.zeros(0)
    _, idx = cKDTree(q).query(p, k=1)
    return -np.einsum("ij,ij->i", p - q[idx], n[idx])


def internal_noise(rgb_splats, true_surface_points, true_normals, *, min_opacity: float = 0.05,
                   depth_mm: float = 3.0) -> float:
    """Fraction of visible RGB splats lying more than ``depth_mm`` inside the true outer surface.

    Counted over active RGB splats with opacity ≥ ``min_opacity``; a splat is internal noise when
    :func:`depth_below_surface` of its centre exceeds ``depth_mm``.

    Args:
      rgb_splats: :class:`insideout_jax.splats.RGBSplats` in the CT frame (mm).
      true_surface_points: ``[M, 3]`` float, mm (``truth/surface.npz``).
      true_normals: ``[M, 3]`` float unit outward normals.
      min_opacity: opacity threshold (0.05).
      depth_mm: depth threshold, mm (3).

    Returns:
      The fraction in [0, 1]; ``nan`` when no splat passes the opacity threshold.
    """
    from insideout_jax.splats import RGBSplats

    if not isinstance(rgb_splats, RGBSplats):
        raise ValueError(f"rgb_splats must be RGBSplats, got {type(rgb_splats).__name__}")
    if not 0.0 <= min_opacity < 1.0:
        raise ValueError(f"min_opacity must be in [0, 1), got {min_opacity}")
    if not depth_mm >= 0.0:
        raise ValueError(f"depth_mm must be >= 0, got {depth_mm}")
    keep = np.asarray(rgb_splats.active) & (np.asarray(rgb_splats.opacities) >= min_opacity)
    if not keep.any():
        return float("nan")
    depth = depth_below_surface(np.asarray(rgb_splats.means)[keep], true_surface_points,
                                true_normals)
    return float(np.mean(depth > depth_mm))
