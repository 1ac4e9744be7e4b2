"""insideout_jax: RGB photos + X-ray CT fused into one Gaussian-splat model (InsideOut, in JAX).

Conventions, stated once for the whole package:

- Units: millimetres in the CT frame, radians for angles; the RGB (SfM) frame is arbitrary until
  hierarchical fitting maps it into the CT frame.
- Quaternions are (w, x, y, z). Cameras are world → camera (COLMAP). Images are HWC float32 in
  [0, 1]. Volumes are indexed [z, y, x] with ``spacing_zyx`` and ``origin_xyz`` (centre of voxel
  [0, 0, 0]). X-ray projections are line integrals −ln(I/I0), [V, nv, nu].

Dimension glossary used in docstrings: C capacity of a splat set, N active splats, V views,
H × W image, nv × nu detector, T tiles, K SH coefficients = (degree + 1)², F feature channels,
E ellipsoids of a phantom.
"""

from insideout_jax.cameras import (
    PinholeCamera,
    XrayGeometry,
    camera_center,
    carm_geometry,
    geometry_from_projection_matrices,
    look_at,
    make_pinhole,
    make_xray_geometry,
    pinhole_from_colmap,
    pinhole_rays,
    project_points,
    projection_matrices,
    transform_camera,
    xray_project,
    xray_project_jacobian,
    xray_rays,
)
from insideout_jax.fdk import fdk
from insideout_jax.render.reference import render_rgb_dense
from insideout_jax.render.rgb import RasterConfig, RGBRender, render_rgb
from insideout_jax.render.slices import (
    SlicePlane,
    VoxelGrid,
    axial_plane,
    coronal_plane,
    make_slice_plane,
    make_voxel_grid,
    render_slice,
    voxelize,
)
from insideout_jax.render.xgaussian import render_xgaussian
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import (
    RadSplats,
    RGBSplats,
    concatenate,
    covariance,
    rad_splats_from_points,
    rgb_splats_from_points,
    select_active,
    splat_covariances,
    transform_splats,
)

__version__ = "0.1.0"

__all__ = [
    "PinholeCamera", "XrayGeometry", "camera_center", "look_at", "make_pinhole",
    "make_xray_geometry", "pinhole_from_colmap", "pinhole_rays", "project_points",
    "transform_camera", "xray_project", "xray_project_jacobian", "xray_rays", "carm_geometry",
    "projection_matrices", "geometry_from_projection_matrices",
    "RGBSplats", "RadSplats", "concatenate", "covariance", "rad_splats_from_points",
    "rgb_splats_from_points", "select_active", "splat_covariances", "transform_splats",
    "render_rgb", "render_rgb_dense", "RasterConfig", "RGBRender", "render_xray", "render_xgaussian",
    "render_slice", "voxelize", "SlicePlane", "VoxelGrid", "make_slice_plane", "make_voxel_grid",
    "axial_plane", "coronal_plane", "fdk",
]
