"""Stage 2, hierarchical fitting (paper §4.1, Alg. 1): bring the RGB splats into the CT frame.

* :mod:`.neighbors`: exact nearest neighbours in JAX (chunked brute force, uniform grid).
* :mod:`.kmeans`: jitted K-means (k-means++ seeding, Lloyd, empty clusters re-seeded).
* :mod:`.procrustes`: similarity transforms and weighted Umeyama Procrustes.
* :mod:`.icp`: trimmed ICP (point-to-point, symmetric, point-to-plane), vmapped over clusters.
* :mod:`.surface`: the outer surface of a volume-filling point set (host side).
* :mod:`.global_fit`: moments + PCA candidates + ICP.
* :mod:`.visible`: how far the RGB centres lie behind the surface the RGB model shows.
* :mod:`.hierarchical`: Alg. 1, global → local levels → fine, with per-stage reports.

A similarity maps p ↦ s·R·p + t (RGB/SfM frame → CT frame, mm).
"""

from insideout_jax.fitting.global_fit import (
    GlobalFitResult,
    global_fit,
    global_gaussian,
    pca_candidates,
    rad_surface,
    rgb_points,
    symmetric_residual,
)
from insideout_jax.fitting.hierarchical import (
    HierarchicalFitResult,
    StageReport,
    hierarchical_fit,
    neighbor_distortion,
    warp_splats,
)
from insideout_jax.fitting.icp import ICPResult, icp, icp_batched, trimmed_inliers
from insideout_jax.fitting.kmeans import KMeansResult, kmeans, kmeans_plusplus
from insideout_jax.fitting.neighbors import (
    Grid,
    build_grid,
    grid_cell_size,
    grid_nearest,
    knn,
    nearest_neighbor,
    pairwise_sqdist,
)
from insideout_jax.fitting.procrustes import (
    Similarity,
    identity_similarity,
    procrustes,
    rotation_angle,
    similarity_errors,
)
from insideout_jax.fitting.surface import outer_surface, outer_surface_points, point_spacing
from insideout_jax.fitting.visible import hull_depths, visible_depth

__all__ = [
    "GlobalFitResult", "global_fit", "global_gaussian", "pca_candidates", "rad_surface",
    "rgb_points", "symmetric_residual",
    "HierarchicalFitResult", "StageReport", "hierarchical_fit", "neighbor_distortion",
    "warp_splats",
    "ICPResult", "icp", "icp_batched", "trimmed_inliers",
    "KMeansResult", "kmeans", "kmeans_plusplus",
    "Grid", "build_grid", "grid_cell_size", "grid_nearest", "knn", "nearest_neighbor",
    "pairwise_sqdist",
    "Similarity", "identity_similarity", "procrustes", "rotation_angle", "similarity_errors",
    "outer_surface", "outer_surface_points", "point_spacing", "hull_depths", "visible_depth",
]
