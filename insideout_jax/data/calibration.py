"""A scanner's volume in its own units: padding recognised, units calibrated against the projections.

A reconstructed CT comes in HU, HU + 1024, vendor units or [0, 1], and outside its reconstruction
circle it holds a *padding* value (DICOM PixelPaddingValue, −2000 or −3024 HU, or a constant ring)
that is not the object. The radiative and internal stages need attenuation per mm in the frame of
the projections. This module

1. finds the padding (:func:`padding_mask`): values ≤ −1500 in HU (no material is below air's
   −1000, noise included), or, in any units, a constant value at every in-plane corner of every
   slice that is the volume's minimum, stands apart from the rest (a gap > 10 % of the range) and
   stays outside the inscribed circle (inside it, < 1 %: else it is air clipped at a constant);
2. refuses a volume whose "object" is the field-of-view cylinder (:func:`check_not_fov_cylinder`):
   padding that was not recognised makes the whole reconstruction disc look like the object;
3. fits the units to the projections (:func:`calibrate_volume`): with ``m`` the non-padding
   voxels and ``P`` the project's own ray-marching projector
   (:func:`insideout_jax.data.ctobject.ct_volume_projections`),

       p ≈ a · P(v·m) + b · P(m)              (least squares over a subset of views)

   so attenuation μ = max(a·v + b, 0) = a·(v − v_air) above air (v_air = −b/a), padding → 0. The relative RMS
   residual of the fit checks the volume's registration with the projection geometry: above
   ``max_residual`` the volume does not sit where the projections see the object (pose, axis
   order, flip, spacing) and the calibration stops with the residual.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from insideout_jax.cameras import XrayGeometry
from insideout_jax.io.volumes import CTVolume, make_volume

__all__ = ["HU_PADDING_BELOW", "CTCalibration", "inplane_radius", "padding_mask",
           "check_not_fov_cylinder", "calibrate_volume"]

HU_PADDING_BELOW = -1500.0
"""HU values at or below this are padding (air is −1000; −2000 and −3024 are the usual pads)."""
_RING_GAP = 0.1  # a constant corner value is padding when the next value is this fraction of the range above it


@dataclasses.dataclass(frozen=True)
class CTCalibration:
    """The fit of a volume's units to the projections.

    Attributes:
      quantity: what the volume's values were ("HU", "density", …).
      scale: attenuation (1/mm) per unit of the volume.
      air_value: the volume's value of air (μ = scale·(v − air_value)).
      residual: relative RMS residual of the fit over the views used.
      n_views: views used in the fit.
      n_padding: voxels recognised as padding (set to air).
    """

    quantity: str
    scale: float
    air_value: float
    residual: float
    n_views: int
    n_padding: int

    def describe(self) -> str:
        return (f"CT volume in {self.quantity} calibrated to the projections' attenuation units by"
                f" least squares over {self.n_views} views: μ = {self.scale:.4g}/mm per unit"
                f" above air, air at {self.air_value:.5g}; relative residual"
                f" {100 * self.residual:.1f} %;"
                f" {self.n_padding} padding voxels treated as air")


def inplane_radius(ny: int, nx: int) -> np.ndarray:
    """[ny, nx] distance of each voxel centre from the slice centre, 1 on the inscribed circle
    (ellipse) of the slice: the reconstruction circle of a scanner's volume."""
    yy, xx = np.mgrid[:ny, :nx]
    return np.hypot((yy - (ny - 1) / 2) / (ny / 2), (xx - (nx - 1) / 2) / (nx / 2))


def padding_mask(data, quantity: str) -> np.ndarray:
    """[nz, ny, nx] bool: the voxels that are padding, not object (module docstring, rule 1)."""
    v = np.asarray(data)
    if quantity == "HU":
        return v <= HU_PADDING_BELOW
    corners = v[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo or not np.all(corners == lo):
        return np.zeros(v.shape, bool)
    above = v[v > lo]
    ring = v == lo
    inside = inplane_radius(*v.shape[1:]) < 0.9
    if (above.size and float(above.min()) - lo > _RING_GAP * (hi - lo)
            and float(ring[:, inside].mean()) < 0.01):  # outside the circle only: not clipped air
        return ring
    return np.zeros(v.shape, bool)


def check_not_fov_cylinder(data, padding: np.ndarray, level: float, where: str = "the volume") -> None:
    """ValueError when the voxels ≥ ``level`` fill the inscribed reconstruction cylinder up to its
    rim (≥ 90 % of the rim voxels of the middle slices): then the "object" is the scanner's field of
    view, and its padding was not recognised."""
    v = np.asarray(data)
    nz = v.shape[0]
    r = inplane_radius(*v.shape[1:])
    rim = (r > 0.9) & (r < 0.97)
    mid = slice(nz // 4, max(nz // 4 + 1, 3 * nz // 4))
    fg = (v[mid] >= level) & ~padding[mid]
    if rim.any() and float(fg[:, rim].mean()) >= 0.9:
        pad = v[:, 0, 0]
        raise ValueError(f"{where}: the object fills the reconstruction circle up to its rim — it is"
                         " the scanner's field of view, not an object: the value outside the circle"
                         f" (e.g. {float(pad.min()):g} at the slice corners) was not recognised as"
                         " padding; give the padding value (--padding) or the volume's offset")


def calibrate_volume(volume: CTVolume, projections, geometry: XrayGeometry, *, n_views: int = 8,
                     max_residual: float = 0.25) -> tuple[CTVolume, CTCalibration]:
    """A volume in any units → attenuation (1/mm), fitted to the projections (module docstring).

    Args:
      volume: the scanner's volume (any ``quantity``) in the CT frame of ``geometry``.
      projections: [V, nv, nu] line integrals.
      geometry: their geometry.
      n_views: views used for the fit (evenly spread).
      max_residual: largest relative RMS residual accepted.

    Returns:
      (attenuation volume, :class:`CTCalibration`).

    Raises:
      ValueError: the fit's residual exceeds ``max_residual`` (the volume is not registered with
        the projections), or the fitted scale is not positive.
    """
    from insideout_jax.data.ctobject import ct_volume_projections

    data = np.asarray(volume.data, np.float64)
    pad = padding_mask(data, volume.quantity)
    m = (~pad).astype(np.float32)
    k = np.unique(np.linspace(0, geometry.n_views - 1, min(n_views, geometry.n_views)).round().astype(int))
    args = (volume.spacing_zyx, volume.origin_xyz, geometry.select(k))
    pv = ct_volume_projections((data * m).astype(np.float32), *args).astype(np.float64).ravel()
    pm = ct_volume_projections(m, *args).astype(np.float64).ravel()
    y = np.asarray(projections, np.float64)[k].ravel()
    (a, b), *_ = np.linalg.lstsq(np.stack([pv, pm], 1), y, rcond=None)
    residual = float(np.linalg.norm(a * pv + b * pm - y) / max(np.linalg.norm(y), 1e-30))
    if residual > max_residual or not a > 0:
        raise ValueError(f"the CT volume does not match the projections: the best scale and offset"
                         f" (μ = {a:.4g}·v + {b:.4g}) leave a relative residual of"
                         f" {100 * residual:.0f} % (at most {100 * max_residual:.0f} % expected):"
                         " the volume is not registered with the projection geometry — check its"
                         " origin, spacing, axis order (--axes) and orientation (--flip-z)")
    mu = np.where(pad, 0.0, np.maximum(a * data + b, 0.0)).astype(np.float32)  # no negative μ
    out = make_volume(mu, volume.spacing_zyx, volume.origin_xyz, quantity="attenuation")
    return out, CTCalibration(volume.quantity, float(a), float(-b / a), residual, int(k.size),
                              int(pad.sum()))

