"""Differentiable 3D similarity: global normalised cross-correlation and SSIM.

SSIM follows Wang et al. (2004) with a separable Gaussian window (σ = 1.5, truncated at 3.5σ:
11 taps), C1 = (0.01·L)², C2 = (0.03·L)², population covariances, averaged over the voxels
whose window lies inside the volume — the same numbers as scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ncc3d", "ssim3d", "gaussian_taps"]


def ncc3d(a: jax.Array, b: jax.Array, mask: jax.Array | None = None, eps: float = 1e-8) -> jax.Array:
    """[] global zero-mean NCC of two volumes in [−1, 1] (over ``mask`` where given)."""
    w = jnp.ones_like(a) if mask is None else mask.astype(a.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    da = a - jnp.sum(w * a) / n
    db = b - jnp.sum(w * b) / n
    num = jnp.sum(w * da * db)
    return num / jnp.sqrt(jnp.sum(w * da * da) * jnp.sum(w * db * db) + eps)


def gaussian_taps(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """Normalised 1-D Gaussian window of radius int(truncate·σ + 0.5) (scipy's)."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _blur_valid(x, taps):
    n = len(taps)
    for ax in range(x.ndim):
        m = x.shape[ax] - n + 1
        x = sum(float(taps[k]) * jax.lax.slice_in_dim(x, k, k + m, axis=ax) for k in range(n))
    return x


def ssim3d(a: jax.Array, b: jax.Array, data_range: float, *, sigma: float = 1.5) -> jax.Array:
    """[] mean SSIM of two [nz, ny, nx] volumes (each side > the 11-voxel window at σ = 1.5)."""
    taps = gaussian_taps(sigma)
    if min(a.shape) < len(taps):
        raise ValueError(f"volumes of shape {a.shape} are smaller than the {len(taps)}-voxel SSIM window")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _blur_valid(a, taps), _blur_valid(b, taps)
    saa = _blur_valid(a * a, taps) - mu_a * mu_a
    sbb = _blur_valid(b * b, taps) - mu_b * mu_b
    sab = _blur_valid(a * b, taps) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return jnp.mean(s)


