"""Object folders: reading and writing every file of the layout in DESIGN.md "Objects and data".

```
<object>/
  rgb/images/*.png|jpg            photos (or renders), HWC RGB
  rgb/sparse/0/                   optional COLMAP model (see :mod:`insideout_jax.io.colmap`)
  xray/projections.tif            float32 [V, nv, nu] line integrals, in the order of the angles,
                                  or raw counts with xray/flat.tif (+ dark.tif) or xray/detector.json
                                  (converted on reading: :mod:`insideout_jax.io.detector`)
  xray/geometry.json              scanner geometry (schema in OUTPUTS.md), mm and radians
  ct/volume.tif + ct/volume.json  float32 [nz, ny, nx] volume, spacing_zyx, origin_xyz (mm)
  ct/dicom/                       or the scanner's DICOM series (HU; read when volume.tif is absent)
  truth/volume.tif + volume.json  generated objects only: ground-truth density volume
  truth/transform.json            generated objects only: SfM frame → CT frame similarity
```

Conventions: lengths in mm, angles in radians, volumes indexed ``[z, y, x]`` with ``origin_xyz`` the
world position of the centre of voxel [0, 0, 0] (voxel [k, j, i] sits at origin + (i·dx, j·dy, k·dz)),
images HWC RGB. Every reader validates what it reads and raises :class:`ObjectFolderError` naming
the file and the field; nothing is guessed (no default units, no silent casts of integer
projections, no dropped alpha channels). Writers are atomic (temporary file + ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

import numpy as np

from insideout_jax.cameras import XrayGeometry
from insideout_jax.io.colmap import ColmapModel, read_colmap, write_colmap
from insideout_jax.io.detector import CountsConversion, read_detector_fields
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.images import (  # noqa: F401
    IMAGE_EXTENSIONS,
    IMAGES_DIR,
    list_images,
    read_image,
    read_images,
    write_images,
)
from insideout_jax.io.jsonfile import (  # noqa: F401
    PathLike,
    read_json,
    write_json_atomic,
)
from insideout_jax.io.transforms import (  # noqa: F401
    Similarity,
    make_similarity,
    read_transform,
    write_transform,
)
from insideout_jax.io.volumes import (  # noqa: F401
    QUANTITIES,
    CTVolume,
    make_volume,
    read_volume,
    write_volume,
)
from insideout_jax.io.xrayfiles import (  # noqa: F401
    _read_tiff,
    read_geometry,
    read_measured_projections,
    read_projections,
    write_geometry,
    write_projections,
)

__all__ = [
    "GEOMETRY_FILE", "PROJECTIONS_FILE", "VOLUME_FILE", "VOLUME_DICOM_DIR", "IMAGES_DIR", "COLMAP_DIR",
    "TRUTH_VOLUME_FILE", "TRANSFORM_FILE", "IMAGE_EXTENSIONS", "QUANTITIES",
    "CTVolume", "make_volume", "Similarity", "make_similarity", "ObjectFolder",
    "read_object", "write_object", "read_geometry", "write_geometry", "read_projections",
    "write_projections", "read_volume", "write_volume", "list_images", "read_image", "read_images",
    "write_images", "read_transform", "write_transform", "write_json_atomic", "read_json",
]

GEOMETRY_FILE = "xray/geometry.json"
PROJECTIONS_FILE = "xray/projections.tif"
VOLUME_FILE = "ct/volume.tif"
VOLUME_DICOM_DIR = "ct/dicom"
COLMAP_DIR = "rgb/sparse/0"
TRUTH_VOLUME_FILE = "truth/volume.tif"
TRANSFORM_FILE = "truth/transform.json"


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectFolder:
    """Everything read from one object folder; absent parts are ``None`` (or empty).

    Attributes:
      root: the folder.
      geometry: from ``xray/geometry.json``.
      projections: [V, nv, nu] float32 from ``xray/projections.tif``.
      volume: ``ct/volume.tif`` (+ json).
      image_names: sorted names in ``rgb/images``.
      images: {name: [H, W, 3]} when read with ``load_images=True``.
      colmap: the model in ``rgb/sparse/0``.
      truth_volume: ``truth/volume.tif`` (+ json), generated objects only.
      truth_transform: ``truth/transform.json``, generated objects only.
      xray_conversion: how raw counts were turned into line integrals (None when the folder held
        line integrals).
    """

    root: pathlib.Path
    geometry: XrayGeometry | None = None
    projections: np.ndarray | None = None
    volume: CTVolume | None = None
    image_names: tuple = ()
    images: dict | None = None
    colmap: ColmapModel | None = None
    truth_volume: CTVolume | None = None
    truth_transform: Similarity | None = None
    xray_conversion: CountsConversion | None = None


def read_object(path: PathLike, *, load_images: bool = True, images_as_uint8: bool = False,
                image_background=None, load_truth: bool = True) -> ObjectFolder:
    """Read and cross-check an object folder.

    Args:
      load_images: decode the photos (otherwise only their names are listed).
      load_truth: read ``truth/`` (volume, transform); False for everything but an evaluation,
        which leaves ``truth_volume`` and ``truth_transform`` None without opening a file there.
      images_as_uint8, image_background: passed to :func:`read_image`.

    Raises:
      ObjectFolderError: for any malformed file, for geometry without projections (or the
        reverse), for COLMAP images missing from ``rgb/images``, or when the folder holds none of
        ``rgb/images``, ``xray/geometry.json``, ``ct/volume.tif``.
    """
    root = pathlib.Path(path)
    if not root.is_dir():
        raise ObjectFolderError(root, "<file>", "object folder not found")
    geom_p, proj_p = root / GEOMETRY_FILE, root / PROJECTIONS_FILE
    geometry = projections = conversion = None
    if geom_p.exists() or proj_p.exists():
        if not geom_p.exists():
            raise ObjectFolderError(geom_p, "<file>", f"missing although {PROJECTIONS_FILE} exists")
        geometry = read_geometry(geom_p)
        projections, conversion = read_measured_projections(
            proj_p, geometry, counts=read_detector_fields(root, _read_tiff))
    vol_p, truth_p = root / VOLUME_FILE, root / TRUTH_VOLUME_FILE
    volume = read_volume(vol_p) if vol_p.exists() else None
    if volume is None and (root / VOLUME_DICOM_DIR).is_dir():
        from insideout_jax.io.dicom import read_dicom_series

        volume = read_dicom_series(root / VOLUME_DICOM_DIR).volume
    truth_volume = read_volume(truth_p) if load_truth and truth_p.exists() else None
    tr_p = root / TRANSFORM_FILE
    transform = read_transform(tr_p) if load_truth and tr_p.exists() else None
    img_dir = root / IMAGES_DIR
    names = list_images(img_dir) if img_dir.is_dir() else ()
    images = None
    if load_images and names:
        images = read_images(img_dir, as_uint8=images_as_uint8, background=image_background)
    colmap = None
    if (root / COLMAP_DIR).exists():
        colmap = read_colmap(root / COLMAP_DIR)
        missing = sorted(set(colmap.image_names) - set(names))
        if missing:
            raise ObjectFolderError(root / COLMAP_DIR, "images", f"{len(missing)} registered images"
                                    f" are not in {IMAGES_DIR}: {missing[:5]}")
    if geometry is None and volume is None and not names:
        raise ObjectFolderError(root, "<file>", f"not an object folder: none of {IMAGES_DIR}, "
                                f"{GEOMETRY_FILE}, {VOLUME_FILE}")
    return ObjectFolder(root, geometry, projections, volume, names, images, colmap, truth_volume,
                        transform, conversion)


def write_object(path: PathLike, *, geometry: XrayGeometry | None = None, projections=None,
                 volume: CTVolume | None = None, images: Mapping | None = None,
                 colmap: ColmapModel | None = None, truth_volume: CTVolume | None = None,
                 truth_transform: Similarity | None = None) -> pathlib.Path:
    """Write the given parts of an object folder (others are left untouched).

    ``geometry`` and ``projections`` go together. Images written as uint8 PNG read back
    bit-identically; float images are rounded to 8 bits.

    Returns:
      The folder path.
    """
    root = pathlib.Path(path)
    if (geometry is None) != (projections is None):
        raise ValueError("geometry and projections must be given together")
    if colmap is not None and images is None and not (root / IMAGES_DIR).is_dir():
        raise ValueError("colmap needs the images it registers (pass images=)")
    root.mkdir(parents=True, exist_ok=True)
    if geometry is not None:
        write_projections(root / PROJECTIONS_FILE, projections, geometry)
        write_geometry(root / GEOMETRY_FILE, geometry)
    if volume is not None:
        write_volume(root / VOLUME_FILE, volume)
    if images is not None:
        write_images(root / IMAGES_DIR, images)
    if colmap is not None:
        write_colmap(root / COLMAP_DIR, colmap)
    if truth_volume is not None:
        write_volume(root / TRUTH_VOLUME_FILE, truth_volume)
    if truth_transform is not None:
        write_transform(root / TRANSFORM_FILE, truth_transform)
    return root
