"""Real spherical harmonics in the 3DGS convention, and their rotation.

Conventions: directions are unit vectors ``[..., 3]`` (x, y, z) in the world frame, pointing from
the camera centre to the Gaussian (as in 3DGS). Colour = ``0.5 + Σ_k sh[k] · Y_k(d)``, clamped at 0
by the rasterizer. Degree d has K = (d + 1)² coefficients, ordered by band l then by m as in the
reference 3DGS implementation (band 1: y, z, x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import xla

__all__ = ["SH_C0", "num_sh_coeffs", "sh_degree_from_coeffs", "sh_basis", "eval_sh", "rotate_sh",
           "rgb_to_sh0", "sh0_to_rgb"]

SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
       0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
       -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def num_sh_coeffs(degree: int) -> int:
    """Number of SH coefficients K = (degree + 1)² for degree 0..3."""
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"sh degree must be 0, 1, 2 or 3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_coeffs(k: int) -> int:
    """Inverse of :func:`num_sh_coeffs`; raises ``ValueError`` for a K that is not a square ≤ 16."""
    for d in range(4):
        if (d + 1) ** 2 == k:
            return d
    raise ValueError(f"number of SH coefficients must be 1, 4, 9 or 16, got {k}")


def sh_basis(dirs: jax.Array, degree: int) -> jax.Array:
    """Real SH basis values.

    Args:
      dirs: [..., 3] unit directions.
      degree: 0..3 (static).

    Returns:
      [..., K] basis values, K = (degree + 1)².
    """
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [jnp.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2.0 * zz - xx - yy), _C2[3] * xz,
                _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    return jnp.stack(out, axis=-1)


def eval_sh(sh: jax.Array, dirs: jax.Array, *, degree: int | None = None) -> jax.Array:
    """Colour from SH coefficients, before the +0.5 offset and clamping.

    Args:
      sh: [..., K, 3] coefficients.
      dirs: [..., 3] unit view directions.
      degree: use only bands up to this degree (default: all of ``sh``).

    Returns:
      [..., 3] Σ_k sh[k] Y_k(d).
    """
    k_all = sh.shape[-2]
    deg = sh_degree_from_coeffs(k_all) if degree is None else degree
    k = (deg + 1) ** 2
    basis = sh_basis(dirs, deg)
    return jnp.einsum("...k,...kc->...c", basis, sh[..., :k, :], precision=xla.HIGHEST)


def rgb_to_sh0(rgb: jax.Array) -> jax.Array:
    """DC coefficient that renders as colour ``rgb`` (in [0, 1])."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: jax.Array) -> jax.Array:
    """Colour of the DC coefficient alone (view-independent part)."""
    return sh0 * SH_C0 + 0.5


def _band_rotation(rot: jax.Array, degree: int) -> jax.Array:
    """[K, K] matrix M with sh' = M @ sh for a world rotation ``rot`` [3, 3].

    The rotated colour field must satisfy f'(d) = f(Rᵀ d). Each band is closed under rotation, so
    M is found exactly (up to round-off) by least squares on a fixed set of directions:
    Y(D) M = Y(D Rᵀᵀ) … with Y evaluated at sample directions D and at Rᵀ D.
    """
    n = 64
    i = np.arange(n) + 0.5
    zs = 1.0 - 2.0 * i / n
    rs = np.sqrt(1.0 - zs**2)
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    samples = np.stack([rs * np.cos(phi), rs * np.sin(phi), zs], axis=-1)
    samples = jnp.asarray(samples, dtype=rot.dtype)
    y_d = sh_basis(samples, degree)  # [n, K]
    y_rd = sh_basis(samples @ rot, degree)  # rows are Rᵀ d
    # f'(d) = Σ_j c'_j Y_j(d) = Σ_i c_i Y_i(Rᵀ d)  →  Y(D) c' = Y(RᵀD) c  →  c' = pinv(Y(D)) Y(RᵀD) c
    return jnp.linalg.lstsq(y_d, y_rd)[0]


def rotate_sh(sh: jax.Array, rot: jax.Array) -> jax.Array:
    """Rotate SH colour coefficients with the scene.

    When world points move as p' = R p, view directions move as d' = R d, and a view-dependent colour
    must satisfy f'(d') = f(d). Degree 0 is invariant; bands 1..3 mix within each band.

    Args:
      sh: [N, K, 3] coefficients.
      rot: [3, 3] proper rotation.

    Returns:
      [N, K, 3] rotated coefficients.
    """
    k = sh.shape[-2]
    degree = sh_degree_from_coeffs(k)
    if degree == 0:
        return sh
    m = _band_rotation(rot.astype(sh.dtype), degree)
    # Zero the (numerically tiny) couplings across bands so band structure is kept exactly.
    band = np.concatenate([np.full(2 * l + 1, l) for l in range(degree + 1)])
    mask = jnp.asarray(band[:, None] == band[None, :], dtype=sh.dtype)
    rotated = jnp.einsum("jk,nkc->njc", m * mask, sh, precision=xla.HIGHEST)
    return rotated.at[..., 0, :].set(sh[..., 0, :])  # the DC band is rotation invariant, exactly
