"""The outer surface of a volume-filling point set (host side: NumPy, SciPy, scikit-image).

The RGB splats are a *shell* on the object's surface; the radiative splats *fill* its volume.
Matching a shell to a solid point-to-point is ill-posed (a shrunken shell lies inside the solid
with zero residual, and the two sets have different moments: a sphere's shell has per-axis
variance r²/3, the ball r²/5). So the radiative set is first reduced to its outer surface, and
every fitting step matches RGB splats against that surface.

Method (decision; the paper does not say): a kernel density estimate of the points on a grid,
D = (Σᵢ wᵢ δ(x − pᵢ)) * Gσ; its interior plateau level c is the median of D at the points
(leave-one-out: each point's own kernel peak removed); the
surface is the iso-surface D = ``level``·c with ``level`` = ½, extracted by marching cubes after
interior cavities are filled (so only the outer boundary remains). Where the boundary is flat the
half-level of a uniformly filled solid lies exactly on the boundary (half of the kernel's mass is
inside), so unlike "the outermost layer of points" (which lies about half a point spacing inside)
this surface has no systematic inward bias; on a curved boundary the bias is O(σ²·curvature).

**Thin walls** (a matryoshka's 2–3 mm shells, a vase): a wall thinner than the kernel is smeared
into a bump whose half-level lies ≈ 1.2σ from the wall's middle, so the σ = 2-spacing surface
stood 3.2 mm outside the matryoshka's true one (RMS radius +4.6 %, and the fitted scale followed).
A narrow kernel alone does not do: the thresholded wall has pinholes, the exterior leaks in and
the inner dolls' surfaces count as outer. So, for regular points (the fitting stage's voxel
centres, on which a narrow kernel stays smooth), two scales (decision): the wide kernel (σ) says
which air is *outside* (its hole-filled solid, which seals pinholes), the narrow one (``fine``·σ)
says *where* the boundary is; the exterior is the wide kernel's, grown into the narrow kernel's
air by connected air cells within ``reach``·σ of it (not deeper, so a pinhole never opens the
inside). Median distances to the true surfaces (surface → truth / truth → surface, mm) with
``fine`` = ½ against one scale: matryoshka 1.61 / 1.42 against 3.20 / 3.15, skull 1.55 / 0.98
against 1.83 / 1.72, skull (volume-only run) 1.63 / 1.31 against 1.98 / 2.22, Stanford head
1.79 / 1.43 against 1.91 / 2.57 (radiative solids of the cpu preset's runs). The
fitted alignment against the true one (rotation, scale; cpu preset's fitting stage on the same
stage-1 splats): matryoshka 179.6°, 7.5 % → 0.67°, 4.5 % (the right pose now wins the candidate
search), skull 0.34°, 0.27 % → 0.29°, 0.25 %, Stanford head 0.67°, 0.47 % → 0.37°, 0.52 %, skull
(volume-only run) 0.06°, 0.56 % → 0.22°, 0.05 %.
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

__all__ = ["point_spacing", "outer_surface", "outer_surface_points"]


def point_spacing(points: ArrayLike, *, sample: int = 4096, seed: int = 0) -> float:
    """Median nearest-neighbour distance of a point set (units of the points).

    Args:
      points: [N, 3] float, N ≥ 2.
      sample: number of query points drawn at random (all when N ≤ sample).
    """
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 2:
        raise ValueError(f"points must have shape [N, 3] with N >= 2, got {p.shape}")
    rng = np.random.default_rng(seed)
    q = p if len(p) <= sample else p[rng.choice(len(p), sample, replace=False)]
    d, _ = cKDTree(p).query(q, k=2)
    pos = d[:, 1][d[:, 1] > 0]
    return float(np.median(pos)) if len(pos) else 1.0


def _splat_trilinear(grid_shape, coords, weights):
    """Trilinear deposit of weights at fractional grid coordinates [N, 3] (x, y, z order)."""
    vol = np.zeros(grid_shape, np.float64)  # indexed [x, y, z]
    base = np.floor(coords).astype(np.int64)
    frac = coords - base
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (np.where(dx, frac[:, 0], 1 - frac[:, 0]) * np.where(dy, frac[:, 1], 1 - frac[:, 1])
                     * np.where(dz, frac[:, 2], 1 - frac[:, 2]))
                np.add.at(vol, (base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz), w * weights)
    return vol


def _largest_components(verts, faces, min_fraction):
    n = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adj = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    _, lab = connected_components(adj, directed=False)
    sizes = np.bincount(lab)
    keep = sizes >= min_fraction * sizes.max()
    return keep[lab]


def outer_surface_points(points: ArrayLike, weights: ArrayLike | None = None, **kw) -> np.ndarray:
    """[S, 3] float32 outer-surface samples; :func:`outer_surface` without the normals."""
    return outer_surface(points, weights, **kw)[0]


def _density(vol, p, w, sigma, h):
    """(KDE on the grid, interior plateau: leave-one-out median at the points)."""
    dens = ndimage.gaussian_filter(vol, sigma / h, mode="constant")
    at_points = ndimage.map_coordinates(dens, (p / h).T, order=1)
    # Leave-one-out: remove each point's own kernel peak (its self-contribution would raise the
    # plateau by ~1/(points per kernel volume) and pull the surface inward by ~0.06σ). Trilinear
    # deposit and sampling each add a variance of ≈ 1/6 cell² per axis to the kernel.
    sg2 = (sigma / h) ** 2 + 2.0 / 6.0
    at_points = at_points - w / (2 * np.pi * sg2) ** 1.5
    plateau = np.median(at_points[w > 0]) if np.any(w > 0) else 0.0
    if not plateau > 0:
        raise ValueError("points carry no mass; cannot find a surface")
    return dens, plateau


def outer_surface(points: ArrayLike, weights: ArrayLike | None = None, *,
                  sigma: float | None = None, cell: float | None = None, level: float = 0.5,
                  fine: float = 1.0, reach: float = 1.25, max_cells: int = 192,
                  min_component: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Samples and normals of the outer boundary of the solid that ``points`` fill (module doc).

    Args:
      points: [N, 3] float positions filling a volume (e.g. radiative splat centres, mm).
      weights: [N] float ≥ 0 optional masses (e.g. density × splat volume); default 1.
      sigma: kernel standard deviation (units of the points); default 2 × the median
        nearest-neighbour spacing.
      cell: grid spacing; default ``fine`` · sigma / 2 (coarsened so that no axis exceeds
        ``max_cells``).
      level: iso-level as a fraction of the interior plateau (median density at the points).
      fine: the narrow kernel that places the boundary, as a fraction of ``sigma``; 1 (default):
        one scale. Below 1 only for regular points (voxel centres): on scattered points a narrow
        kernel is lumpy (at ½ the test solid's normals were too noisy for point-to-plane ICP).
        See the module doc.
      reach: how far (× ``sigma``) the exterior may grow from the wide kernel's into the narrow
        kernel's air.
      max_cells: largest grid size along an axis.
      min_component: surface components with fewer vertices than this fraction of the largest
        are dropped (floaters).

    Returns:
      verts: [S, 3] float32 marching-cubes vertices of the outer iso-surface (about one per cell²
        of area), in the units and frame of ``points``;
      normals: [S, 3] float32 unit outward normals (minus the density gradient).

    Raises:
      ValueError: on malformed inputs or if no surface is found.
    """
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 4:
        raise ValueError(f"points must have shape [N, 3] with N >= 4, got {p.shape}")
    w = np.ones(len(p)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(p),) or np.any(w < 0):
        raise ValueError(f"weights must be [N] non-negative, got shape {w.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0.0 < fine <= 1.0 or reach < 0:
        raise ValueError(f"fine must be in (0, 1] and reach >= 0, got {fine} and {reach}")
    if sigma is None:
        sigma = 2.0 * point_spacing(p)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    lo = p.min(0) - 4 * sigma
    hi = p.max(0) + 4 * sigma
    h = fine * sigma / 2 if cell is None else float(cell)
    h = max(h, float(np.max(hi - lo)) / (max_cells - 2))
    shape = tuple(int(v) for v in np.ceil((hi - lo) / h).astype(int) + 2)
    vol = _splat_trilinear(shape, (p - lo) / h, w)
    wide, wide_plateau = _density(vol, p - lo, w, sigma, h)
    outside = ~ndimage.binary_fill_holes(wide > level * wide_plateau)
    dens, plateau = (wide, wide_plateau) if fine == 1.0 else _density(vol, p - lo, w, fine * sigma, h)
    iso = level * plateau
    if fine < 1.0 and reach > 0:  # grow the exterior into the narrow kernel's air, near it only
        near = (dens <= iso) & ndimage.binary_dilation(outside, iterations=int(np.ceil(reach * sigma / h)))
        lab, _ = ndimage.label(near)
        hit = np.unique(lab[outside & near])
        outside |= np.isin(lab, hit[hit > 0])
    dens = np.where(~outside & (dens <= iso), plateau, dens)  # fill cavities: outer surface only
    verts, faces, _, _ = marching_cubes(dens, iso, spacing=(h, h, h))
    if len(verts) == 0:
        raise ValueError("no iso-surface found")
    keep = _largest_components(verts, faces, min_component)
    grads = [ndimage.map_coordinates(g, (verts / h).T, order=1) for g in np.gradient(dens, h)]
    normals = -np.stack(grads, axis=1)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
    return (verts[keep] + lo).astype(np.float32), normals[keep].astype(np.float32)
