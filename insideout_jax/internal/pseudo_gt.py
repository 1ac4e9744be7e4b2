"""Pseudo ground truth for internal rendering: CT cross-sections and their outer contours.

Slices (EVALUATION.md §6): axial (z = const) and coronal (y = const) planes every 15 mm on a grid
centred on the object's bounding box; held-out planes are offset by half the spacing (7.5 mm). A
plane is sampled at ``resolution × resolution`` pixel centres over the bounding box's extent in its
two in-plane axes, by trilinear interpolation of the CT volume (zero outside the volume).

Pixel layout of a slice image: row index r, column index c; for an axial slice the columns run
along +x and rows along +y; for a coronal slice the columns run along +x and rows along +z. Pixel
centres are at ``lo + (k + 0.5)·(hi − lo)/resolution``.

RGB targets (decision, §6): u8 = round(255·minmax(slice)), 5×5 Gaussian blur, Canny with
(0.5·t, t) where t is Otsu's threshold, L2 gradient, 3×3 closing, all external and internal
contours, keep the one with the largest bounding-box area, drawn 1 px wide as a {0, 1} image.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["AxisSlice", "slice_positions", "make_slices", "slice_pixel_centres", "to_plane",
           "sample_volume_on_slice", "outer_contour_target"]

_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2)}  # (normal axis, column axis, row axis) in xyz


@dataclasses.dataclass(frozen=True)
class AxisSlice:
    """An axis-aligned cross-section.

    Attributes:
      kind: "axial" (z = position) or "coronal" (y = position).
      position: mm along the normal axis.
      col_range: (lo, hi) mm along the column axis (x for both kinds).
      row_range: (lo, hi) mm along the row axis (y for axial, z for coronal).
      resolution: pixels per side.
      heldout: True for the planes offset by half the spacing.
    """

    kind: str
    position: float
    col_range: tuple
    row_range: tuple
    resolution: int = 512
    heldout: bool = False

    @property
    def axes(self) -> tuple:
        return _AXES[self.kind]


def slice_positions(lo: float, hi: float, *, spacing: float = 15.0, offset: float = 0.0
                    ) -> np.ndarray:
    """Positions c + offset + k·spacing (k ∈ ℤ) inside [lo, hi], c = (lo + hi)/2, ascending."""
    if spacing <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    c = 0.5 * (lo + hi) + offset
    kmin = int(np.ceil((lo - c) / spacing - 1e-9))
    kmax = int(np.floor((hi - c) / spacing + 1e-9))
    return c + spacing * np.arange(kmin, kmax + 1, dtype=np.float64)


def make_slices(bbox_min, bbox_max, *, spacing: float = 15.0, resolution: int = 512,
                heldout: bool = False) -> list:
    """Axial and coronal slices of a bounding box (xyz, mm), training or held-out set."""
    lo, hi = np.asarray(bbox_min, float), np.asarray(bbox_max, float)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise ValueError(f"bbox_min/bbox_max must be xyz with max > min, got {lo}, {hi}")
    offset = 0.5 * spacing if heldout else 0.0
    out = []
    for kind, (n_ax, c_ax, r_ax) in _AXES.items():
        for pos in slice_positions(lo[n_ax], hi[n_ax], spacing=spacing, offset=offset):
            out.append(AxisSlice(kind, float(pos), (float(lo[c_ax]), float(hi[c_ax])),
                                 (float(lo[r_ax]), float(hi[r_ax])), resolution, heldout))
    return out


def to_plane(s: AxisSlice):
    """The :class:`~insideout_jax.render.slices.SlicePlane` with the same pixel centres."""
    from insideout_jax.render.slices import make_slice_plane

    n_ax, c_ax, r_ax = s.axes
    origin = np.zeros(3)
    origin[n_ax] = s.position
    origin[c_ax] = 0.5 * (s.col_range[0] + s.col_range[1])
    origin[r_ax] = 0.5 * (s.row_range[0] + s.row_range[1])
    e1, e2 = np.eye(3)[c_ax], np.eye(3)[r_ax]
    extent = (s.col_range[1] - s.col_range[0], s.row_range[1] - s.row_range[0])
    return make_slice_plane(origin, e1, e2, extent, (s.resolution, s.resolution))


def slice_pixel_centres(s: AxisSlice) -> np.ndarray:
    """[R, R, 3] world xyz (mm) of every pixel centre of a slice."""
    n_ax, c_ax, r_ax = s.axes
    r = s.resolution
    cols = s.col_range[0] + (np.arange(r) + 0.5) * (s.col_range[1] - s.col_range[0]) / r
    rows = s.row_range[0] + (np.arange(r) + 0.5) * (s.row_range[1] - s.row_range[0]) / r
    pts = np.zeros((r, r, 3))
    pts[..., c_ax] = cols[None, :]
    pts[..., r_ax] = rows[:, None]
    pts[..., n_ax] = s.position
    return pts


def sample_volume_on_slice(volume: np.ndarray, spacing_zyx, origin_xyz, s: AxisSlice) -> np.ndarray:
    """Trilinear samples [R, R] float32 of a volume [z, y, x] at a slice's pixel centres."""
    pts = slice_pixel_centres(s).reshape(-1, 3)
    sp = np.asarray(spacing_zyx, float)
    org = np.asarray(origin_xyz, float)
    idx = np.stack([(pts[:, 2] - org[2]) / sp[0], (pts[:, 1] - org[1]) / sp[1],
                    (pts[:, 0] - org[0]) / sp[2]])
    vals = ndimage.map_coordinates(np.asarray(volume, np.float32), idx, order=1, mode="constant",
                                   cval=0.0)
    return vals.reshape(s.resolution, s.resolution).astype(np.float32)


def outer_contour_target(slice_img: np.ndarray) -> np.ndarray:
    """{0, 1} float32 image of the slice's outermost Canny contour (decision in §6).

    Returns all zeros for a constant slice (no edge to follow).
    """
    x = np.asarray(slice_img, np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.zeros(x.shape, np.float32)
    u8 = np.round(255.0 * (x - lo) / (hi - lo)).astype(np.uint8)
    blur = cv2.GaussianBlur(u8, (5, 5), 0)
    t, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    edges = cv2.Canny(blur, 0.5 * t, t, L2gradient=True)
    edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(x.shape, np.uint8)
    if contours:
        areas = [cv2.boundingRect(c)[2] * cv2.boundingRect(c)[3] for c in contours]
        cv2.drawContours(out, [contours[int(np.argmax(areas))]], -1, 1, thickness=1)
    return out.astype(np.float32)
