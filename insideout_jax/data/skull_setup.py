"""The built-in skull's acquisition: scanner geometry, CT grid, photo cameras and projection noise."""

from __future__ import annotations

import numpy as np

from insideout_jax.cameras import PinholeCamera, XrayGeometry, make_xray_geometry, ring_cameras


def default_skull_geometry(n_views: int = 180, n_det: int = 256) -> XrayGeometry:
    """Cone beam over 360° (θ_k = 2πk/V), DSO 1000 mm, DSD 1500 mm, a 409.6 mm square detector.

    The head (radius ≤ 104 mm about the z axis, |z| ≤ 114 mm) projects to at most ±157 mm (u) and
    ±191 mm (v) on the detector, leaving a margin of ≥ 13 mm on every side.
    """
    if int(n_views) <= 0 or int(n_det) <= 0:
        raise ValueError(f"n_views and n_det must be positive, got {n_views}, {n_det}")
    pix = 409.6 / int(n_det)
    angles = 2 * np.pi * np.arange(int(n_views)) / int(n_views)
    return make_xray_geometry(mode="cone", dso=1000.0, dsd=1500.0, n_detector=(n_det, n_det),
                              d_detector=(pix, pix), angles=angles)


def default_skull_grid(size: int = 128) -> tuple[tuple, tuple, tuple]:
    """A cubic grid of ``size``³ voxels covering 256 mm centred on the origin.

    Returns:
      (shape_zyx, spacing_zyx mm, origin_xyz mm) for :func:`phantom_volume`.
    """
    if int(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    h = 256.0 / int(size)
    o = -0.5 * (int(size) - 1) * h
    return (int(size),) * 3, (h, h, h), (o, o, o)


def default_skull_cameras(n: int = 72, *, size: int = 512,
                          elevations_deg=(-25.0, 0.0, 25.0, 50.0), distance: float = 480.0,
                          fov_deg: float = 40.0) -> list[PinholeCamera]:
    """Look-at cameras on rings of constant elevation around the head (target = origin).

    The views are shared as evenly as possible between the rings; each ring's azimuths are
    staggered by half a step relative to the previous ring. With the defaults the head (≈ 215 mm)
    fills about 65% of the frame.

    Returns:
      n :class:`PinholeCamera` (square images, principal point at the image centre).
    """
    return ring_cameras(n, size=size, distance=distance, elevations_deg=elevations_deg,
                        fov_deg=fov_deg)


def add_projection_noise(projections, seed: int = 0, *, i0: float = 1e5,
                         read_sigma: float = 10.0) -> np.ndarray:
    """Noisy line integrals: Poisson photon counts plus Gaussian read noise, back to −ln(I/I0).

    counts = Poisson(i0·exp(−p)) + N(0, read_sigma²), clipped to ≥ 1 count; p' = −ln(counts/i0).

    Args:
      projections: [V, nv, nu] line integrals.
      seed: random seed.
      i0: unattenuated photon count per pixel.
      read_sigma: standard deviation of the read noise, counts.

    Returns:
      [V, nv, nu] float32 noisy line integrals.
    """
    if not i0 > 0:
        raise ValueError(f"i0 must be > 0, got {i0}")
    from insideout_jax.data.scanner import detector_noise

    return detector_noise(projections, photons=i0, read_noise=read_sigma, seed=seed)[0]
