"""What a CT scanner does to the exact object: noisy detector counts, the log transform, and a
reconstruction on the scanner's own grid. The built-in objects use it, so that the CT the
pipeline learns from is a reconstruction with noise and cone-beam artefacts, not the truth.

Noise model (a photon-counting flat-panel after dark and flat-field correction): counts
N = Poisson(I₀·e^(−p)) + 𝒩(0, σ_r²), clipped to ≥ 1 count (starved pixels), p' = −ln(N / I₀).
I₀ = 0 means no noise (p' = p). What was simulated is written to ``xray/acquisition.json``.
"""

from __future__ import annotations

import math

import numpy as np

from insideout_jax import io as iio

__all__ = ["ACQUISITION_FILE", "GENERATOR_VERSION", "detector_noise", "scanner_ct", "scanner_grid"]

ACQUISITION_FILE = "xray/acquisition.json"
# 1: exact projections, ct/ = truth/ (before 2026-12); 2: noisy projections, ct/ = their FDK
GENERATOR_VERSION = 2


MAX_STARVED = 0.01  # from-ct refuses a scan whose detector is starved on more pixels than this


def detector_noise(projections, *, photons: float, read_noise: float, seed: int,
                   max_starved: float | None = None):
    """(noisy line integrals [V, nv, nu] float32, the model's record for acquisition.json).

    Raises:
      ValueError: for negative photons or read noise, or (with ``max_starved``) when more than
        that fraction of the pixels receive no photon: the object attenuates more than the
        source can pass, usually because the volume's values are not attenuation per mm.
    """
    if not (photons >= 0 and read_noise >= 0 and math.isfinite(photons)):
        raise ValueError(f"photons must be ≥ 0 (0: noise-free) and read_noise ≥ 0, got {photons},"
                         f" {read_noise}")
    record = {"model": "Poisson photon counts + Gaussian read noise, -ln(N/I0), N clipped at 1",
              "photons_per_pixel": float(photons), "read_noise_counts": float(read_noise),
              "seed": int(seed)}
    p = np.asarray(projections, np.float64)
    if photons == 0:
        return p.astype(np.float32), dict(record, model="noise-free line integrals")
    rng = np.random.default_rng(seed)
    counts = rng.poisson(photons * np.exp(-p)) + read_noise * rng.normal(size=p.shape)
    starved = int(np.count_nonzero(counts < 1.0))
    record["starved_pixels"] = starved
    if max_starved is not None and starved > max_starved * counts.size:
        raise ValueError(
            f"{100 * starved / counts.size:.1f} % of the detector pixels receive no photon: the line"
            f" integrals reach {float(p.max()):.3g}, above ln(photons) = {math.log(photons):.3g}. Are"
            " the volume's values attenuation per mm? (a volume normalised to [0, 1]: give"
            " --unit-attenuation; Hounsfield units: --quantity HU) Otherwise give more --photons")
    return (-np.log(np.maximum(counts, 1.0) / photons)).astype(np.float32), record


def scanner_grid(geometry, lo_xyz, hi_xyz, *, max_voxels: int):
    """(shape_zyx, spacing_zyx, origin_xyz) of the reconstruction grid: voxels the size of a
    detector pixel at the rotation axis (coarser when a side would pass ``max_voxels``), cubic,
    covering the box [lo, hi] (mm)."""
    du = float(np.asarray(geometry.d_detector)[1])
    mag = float(geometry.dsd) / float(geometry.dso) if geometry.mode == "cone" else 1.0
    ext = np.asarray(hi_xyz, np.float64) - np.asarray(lo_xyz, np.float64)
    sp = max(du / mag, float(ext.max()) / max_voxels)
    n_xyz = np.maximum(np.ceil(ext / sp).astype(int), 1)
    centre = 0.5 * (np.asarray(lo_xyz) + np.asarray(hi_xyz))
    origin = centre - 0.5 * (n_xyz - 1) * sp
    return tuple(int(v) for v in n_xyz[::-1]), (sp, sp, sp), tuple(float(v) for v in origin)


def scanner_ct(projections, geometry, lo_xyz, hi_xyz, *, max_voxels: int):
    """(CT volume, record): FDK of all the scan's projections on :func:`scanner_grid`, the way a
    scanner reconstructs (negative values from noise are kept, as in a real CT)."""
    from insideout_jax.fdk import fdk

    shape, sp, org = scanner_grid(geometry, lo_xyz, hi_xyz, max_voxels=max_voxels)
    vol = np.asarray(fdk(projections, geometry, shape, sp, org), np.float32)
    record = {"reconstruction": "FDK (Ram-Lak ramp filter, cosine and angular weights)",
              "views": int(geometry.n_views), "shape_zyx": list(shape), "spacing_mm": sp[0],
              "origin_xyz": list(org)}
    return iio.make_volume(vol, sp, org, quantity="attenuation"), record
