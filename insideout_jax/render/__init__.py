"""Tile-sorted Gaussian rasterizers as composed, individually public stages.

One tile engine (:mod:`.pairs`): tile boxes → one pair enumeration → decoded runs of slots →
(tile, key) sort → per-tile ranges. RGB (3DGS): project (:mod:`.project`) → pair layout / windows
(:mod:`.tiles`, on :mod:`.pairs`) → composite (:mod:`.rgb`, XLA loop or Pallas kernels in
:mod:`.pallas_rgb`), with a dense reference (:mod:`.reference`). X-ray, slices and voxels: the
additive integrator (:mod:`.additive`, XLA; :mod:`.pallas_additive`, Pallas) on the same
enumeration, in :mod:`.xray` and :mod:`.slices`.
"""

from insideout_jax.render.pairs import (
    PairEnumeration,
    PairSlots,
    decode_slots,
    enumerate_pairs,
    first_position,
    sort_by_tile,
)
from insideout_jax.render.project import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    NEAR_PLANE,
    cov2d_to_conic,
    footprint_extents,
    project_gaussians,
    sh_colors,
)
from insideout_jax.render.reference import render_rgb_dense
from insideout_jax.render.rgb import (
    T_MIN,
    RasterConfig,
    RGBRender,
    composite_rgb,
    default_pair_capacity,
    pack_gaussians,
    pair_capacity_bucket,
    render_rgb,
    resolve_tile_size,
)
from insideout_jax.render.tiles import (
    PairLayout,
    TileGrid,
    TileIntersections,
    depth_order,
    image_to_tiles,
    intersect_tiles,
    make_tile_grid,
    pair_layout,
    pairs_to_gaussians,
    pixel_centers,
    tile_ranges,
    tile_rects,
    tiles_to_image,
    window_intersections,
)

__all__ = [
    "ALPHA_MAX", "ALPHA_MIN", "EPS2D", "NEAR_PLANE", "T_MIN", "PairEnumeration", "PairLayout",
    "PairSlots", "RasterConfig", "decode_slots", "enumerate_pairs", "first_position", "sort_by_tile",
    "RGBRender", "TileGrid", "TileIntersections", "composite_rgb", "cov2d_to_conic",
    "default_pair_capacity", "depth_order", "footprint_extents", "image_to_tiles",
    "intersect_tiles", "make_tile_grid", "pack_gaussians", "pair_capacity_bucket", "pair_layout",
    "pairs_to_gaussians", "pixel_centers", "project_gaussians", "render_rgb", "render_rgb_dense",
    "resolve_tile_size", "sh_colors", "tile_ranges", "tile_rects", "tiles_to_image",
    "window_intersections",
]
