"""Evaluation metrics (host-side NumPy/SciPy; EVALUATION.md §1-§5).

* :mod:`.image`: PSNR variants, reported (valid) SSIM, 3D SSIM/PSNR, PIQE with MATLAB semantics.
* :mod:`.geometry`: hidden point removal and Chamfer distance (paper Table 3); the similarity
  that puts points on a sampled surface (the evaluation's check of its alignment reference).
* :mod:`.mesh`: marching cubes, icospheres, Fibonacci directions, normal orientation histogram and
  spherical occupancy (paper Fig. 5-6).
"""

from insideout_jax.metrics.geometry import (
    chamfer,
    chamfer_hpr,
    hidden_point_removal,
    hpr_cameras,
    protocol_center_radius,
    surface_points_hpr,
    surface_similarity,
)
from insideout_jax.metrics.image import (
    PiqeResult,
    piqe,
    piqe_slice,
    psnr,
    psnr3d,
    psnr_affine,
    psnr_minmax,
    ssim3d,
    ssim_padded,
    ssim_valid,
    to_uint8_minmax,
)
from insideout_jax.metrics.mesh import (
    face_normals_areas,
    fibonacci_directions,
    icosphere,
    marching_cubes_mesh,
    normal_orientation_histogram,
    spherical_occupancy,
)

__all__ = [
    "PiqeResult",
    "chamfer",
    "chamfer_hpr",
    "face_normals_areas",
    "fibonacci_directions",
    "hidden_point_removal",
    "hpr_cameras",
    "icosphere",
    "marching_cubes_mesh",
    "normal_orientation_histogram",
    "piqe",
    "piqe_slice",
    "protocol_center_radius",
    "psnr",
    "psnr3d",
    "psnr_affine",
    "psnr_minmax",
    "spherical_occupancy",
    "ssim3d",
    "ssim_padded",
    "ssim_valid",
    "surface_points_hpr",
    "surface_similarity",
    "to_uint8_minmax",
]
