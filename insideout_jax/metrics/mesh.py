"""Meshes and normal statistics: marching cubes, icospheres, Fibonacci directions, occupancy.

Host-side NumPy/scikit-image code (EVALUATION.md §5). Volumes are indexed ``[z, y, x]`` with
``spacing_zyx`` (mm) and ``origin_xyz`` (mm, centre of voxel ``[0, 0, 0]``); meshes are returned in
world ``xyz`` mm with faces wound so that normals point **outwards** (from high to low density).

Normal orientation histogram: every face's unit normal is assigned to the nearest reference
direction (maximum dot product); a bin's mass is the total area of its faces. Spherical occupancy
reports

* ``any``  = fraction of bins holding at least one (non-degenerate) face (≈ 1 on any closed mesh),
* ``mean`` = fraction of bins whose area mass exceeds the uniform share ``1/D`` of the total
  (≈ 0.5 on a smooth closed shell; the reading consistent with the paper's 0.43-0.48).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull

__all__ = [
    "sample_surface",
    "face_normals_areas",
    "fibonacci_directions",
    "icosphere",
    "marching_cubes_mesh",
    "normal_orientation_histogram",
    "spherical_occupancy",
]

_CHUNK = 65536  # faces per block when assigning bins ([chunk, D] dot products)


def fibonacci_directions(n: int) -> np.ndarray:
    """Fibonacci lattice on the unit sphere (§5).

    ``z_i = 1 − (2i+1)/n``, ``r_i = sqrt(1 − z_i²)``, ``φ_i = i·π(3 − √5)``,
    direction ``(r_i cos φ_i, r_i sin φ_i, z_i)`` for ``i = 0 … n−1``.

    Args:
      n: number of directions (≥ 1).

    Returns:
      ``[n, 3]`` float64 unit vectors.
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def icosphere(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic icosphere: the icosahedron with each triangle split in 4, ``level`` times.

    Vertex counts are ``10·4^level + 2`` (12, 42, 162, 642, …); new vertices are edge midpoints
    projected onto the unit sphere.

    Args:
      level: subdivision level (≥ 0).

    Returns:
      vertices: ``[V, 3]`` float64 unit vectors.
      faces: ``[F, 3]`` int64, counter-clockwise seen from outside, F = 20·4^level.
    """
    level = int(level)
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    base = []
    for s1 in (-1.0, 1.0):
        for s2 in (-1.0, 1.0):
            base += [(0.0, s1, s2 * phi), (s1, s2 * phi, 0.0), (s2 * phi, 0.0, s1)]
    verts = np.asarray(base)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    faces = _outward(verts, ConvexHull(verts).simplices)
    vert_list = list(verts)
    for _ in range(level):
        midpoint: dict[tuple[int, int], int] = {}
        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = (_midpoint(vert_list, midpoint, i, j) for i, j in ((a, b), (b, c), (c, a)))
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = np.asarray(new_faces, dtype=np.int64)
    return np.asarray(vert_list), np.asarray(faces, dtype=np.int64)


def _midpoint(vert_list: list, cache: dict, i: int, j: int) -> int:
    """Index of the unit-sphere midpoint of edge (i, j), appended to ``vert_list`` once."""
    key = (min(i, j), max(i, j))
    if key not in cache:
        m = vert_list[i] + vert_list[j]
        vert_list.append(m / np.linalg.norm(m))
        cache[key] = len(vert_list) - 1
    return cache[key]


def _outward(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip faces of a star-shaped (about the origin) mesh so that normals point away from 0."""
    faces = np.asarray(faces, dtype=np.int64)
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", normal, tri.mean(axis=1)) < 0
    faces[flip] = faces[flip][:, ::-1]
    return faces


def marching_cubes_mesh(
    volume, spacing_zyx, origin_xyz, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a density volume (scikit-image marching cubes) in world coordinates.

    Args:
      volume: ``[Z, Y, X]`` float density (continuous values; binary volumes quantise the normals).
      spacing_zyx: ``(dz, dy, dx)`` voxel spacing, mm.
      origin_xyz: ``(x0, y0, z0)`` world position of the centre of voxel ``[0, 0, 0]``, mm.
      level: iso value, strictly between the volume's min and max.

    Returns:
      vertices: ``[V, 3]`` float64 world ``xyz``, mm.
      faces: ``[F, 3]`` int64 vertex indices; normals (right-hand rule) point from high to low
        density.
    """
    from skimage import measure  # local import: scikit-image is heavy and only needed here

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {vol.shape}")
    spacing = np.asarray(spacing_zyx, dtype=np.float64).reshape(-1)
    origin = np.asarray(origin_xyz, dtype=np.float64).reshape(-1)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing_zyx must be 3 positive numbers, got {spacing_zyx}")
    if origin.shape != (3,):
        raise ValueError(f"origin_xyz must be 3 numbers, got {origin_xyz}")
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        raise ValueError(
            f"level must lie strictly inside the volume range ({lo}, {hi}), got {level}"
        )
    verts_zyx, faces, _, _ = measure.marching_cubes(vol, level=level, spacing=tuple(spacing))
    vertices = verts_zyx[:, ::-1] + origin
    # skimage winds "descent" faces by the left-hand rule in (z, y, x) index space; reversing the
    # axis order to (x, y, z) mirrors the mesh, so the right-hand rule now gives outward normals.
    return vertices, np.ascontiguousarray(faces, dtype=np.int64)


def face_normals_areas(vertices, faces) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (right-hand rule) and areas of triangles.

    Args:
      vertices: ``[V, 3]`` float, mm.
      faces: ``[F, 3]`` int.

    Returns:
      normals: ``[F, 3]`` float64 unit vectors (zero for degenerate faces).
      areas: ``[F]`` float64, mm².
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3], got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got shape {f.shape}")
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(cross, axis=1)
    normals = np.divide(cross, norm[:, None], out=np.zeros_like(cross), where=norm[:, None] > 0)
    return normals, 0.5 * norm


def _bins(normals: np.ndarray, areas: np.ndarray, directions: np.ndarray):
    """Nearest-direction bin per face; area mass and face count per bin (degenerate faces out)."""
    n = np.asarray(normals, dtype=np.float64)
    a = np.asarray(areas, dtype=np.float64)
    d = np.asarray(directions, dtype=np.float64)
    if n.ndim != 2 or n.shape[1] != 3:
        raise ValueError(f"normals must be [F, 3], got shape {n.shape}")
    if a.shape != (n.shape[0],):
        raise ValueError(f"areas must be [F] with F = {n.shape[0]}, got shape {a.shape}")
    if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] < 1:
        raise ValueError(f"directions must be [D, 3], got shape {d.shape}")
    keep = (a > 0) & (np.linalg.norm(n, axis=1) > 0)
    n, a = n[keep], a[keep]
    idx = np.empty(n.shape[0], dtype=np.int64)
    for s in range(0, n.shape[0], _CHUNK):
        idx[s : s + _CHUNK] = np.argmax(n[s : s + _CHUNK] @ d.T, axis=1)
    mass = np.bincount(idx, weights=a, minlength=d.shape[0])
    count = np.bincount(idx, minlength=d.shape[0])
    return mass, count


def normal_orientation_histogram(normals, areas, directions) -> np.ndarray:
    """Area-weighted histogram of face normals over reference directions.

    Args:
      normals: ``[F, 3]`` float unit normals.
      areas: ``[F]`` float face areas, mm² (faces of zero area are ignored).
      directions: ``[D, 3]`` float unit reference directions (e.g. :func:`fibonacci_directions`).

    Returns:
      ``[D]`` float64 fraction of the total area per bin (sums to 1; all zeros for an empty mesh).
    """
    mass, _ = _bins(normals, areas, directions)
    total = mass.sum()
    return mass / total if total > 0 else mass


def spherical_occupancy(normals, areas, directions) -> dict[str, float]:
    """Spherical occupancy of face normals (paper Fig. 6, EVALUATION.md §5).

    Args:
      normals: ``[F, 3]`` float unit normals.
      areas: ``[F]`` float face areas, mm².
      directions: ``[D, 3]`` float unit reference directions.

    Returns:
      ``{"any": fraction of bins with >= 1 face, "mean": fraction of bins whose area fraction
      exceeds 1/D}``.
    """
    mass, count = _bins(normals, areas, directions)
    nbins = mass.shape[0]
    total = mass.sum()
    frac = mass / total if total > 0 else mass
    return {"any": float(np.mean(count > 0)), "mean": float(np.mean(frac > 1.0 / nbins))}


def sample_surface(vertices, faces, n: int, *, seed: int = 0, with_normals: bool = False):
    """[n, 3] points uniformly distributed over the area of a triangle mesh; with
    ``with_normals``, (points, [n, 3] unit normals of their faces, right-hand rule)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"need vertices [V, 3] and faces [F >= 1, 3], got {v.shape} and {f.shape}")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not area.sum() > 0:
        raise ValueError("the mesh has zero area")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=int(n), p=area / area.sum())
    u, w = rng.random(int(n)), rng.random(int(n))
    flip = u + w > 1
    u[flip], w[flip] = 1 - u[flip], 1 - w[flip]
    p = a[tri] + u[:, None] * (b[tri] - a[tri]) + w[:, None] * (c[tri] - a[tri])
    if not with_normals:
        return p
    nrm = np.cross(b[tri] - a[tri], c[tri] - a[tri])
    return p, nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
