"""Host-side I/O: object folders, COLMAP models, importers, 3DGS PLY files.

Every reader validates what it reads and raises :class:`ObjectFolderError` (a ``ValueError``)
whose message names the file and the field. Nothing is guessed: units, spacings, axis orders and
quantities come from the file or from an explicit argument.
"""

from insideout_jax.io.colmap import ColmapModel, make_colmap_model, read_colmap, write_colmap
from insideout_jax.io.detector import CountsConversion, counts_to_line_integrals
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.images import MASKS_DIR, read_masks
from insideout_jax.io.importers import (
    DicomSeries,
    XrayScan,
    load_volume,
    read_dicom_series,
    read_naf_pickle,
    read_r2gaussian,
    read_raw,
)
from insideout_jax.io.objects import (
    COLMAP_DIR,
    GEOMETRY_FILE,
    IMAGE_EXTENSIONS,
    IMAGES_DIR,
    PROJECTIONS_FILE,
    QUANTITIES,
    TRANSFORM_FILE,
    TRUTH_VOLUME_FILE,
    VOLUME_DICOM_DIR,
    VOLUME_FILE,
    CTVolume,
    ObjectFolder,
    Similarity,
    list_images,
    make_similarity,
    make_volume,
    read_geometry,
    read_image,
    read_images,
    read_json,
    read_object,
    read_projections,
    read_transform,
    read_volume,
    write_geometry,
    write_images,
    write_json_atomic,
    write_object,
    write_projections,
    write_transform,
    write_volume,
)
from insideout_jax.io.ply import read_ply, write_ply

__all__ = [
    "ObjectFolderError",
    # object folders
    "ObjectFolder", "read_object", "write_object", "CTVolume", "make_volume", "Similarity",
    "make_similarity", "read_geometry", "write_geometry", "read_projections", "write_projections",
    "read_volume", "write_volume", "list_images", "read_image", "read_images", "write_images",
    "read_transform", "write_transform", "read_json", "write_json_atomic", "read_masks", "MASKS_DIR",
    "GEOMETRY_FILE", "PROJECTIONS_FILE", "VOLUME_FILE", "VOLUME_DICOM_DIR", "IMAGES_DIR", "COLMAP_DIR",
    "TRUTH_VOLUME_FILE", "TRANSFORM_FILE", "IMAGE_EXTENSIONS", "QUANTITIES",
    # detector counts
    "CountsConversion", "counts_to_line_integrals",
    # COLMAP
    "ColmapModel", "make_colmap_model", "read_colmap", "write_colmap",
    # importers
    "XrayScan", "read_r2gaussian", "read_naf_pickle", "DicomSeries", "read_dicom_series",
    "read_raw", "load_volume",
    # PLY
    "write_ply", "read_ply",
]
