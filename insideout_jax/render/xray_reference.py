"""Dense, obviously-correct references for the radiative renderers (float64-capable).

Every function here evaluates every Gaussian at every ray or point, with the textbook formulas and
no culling, in the dtype asked for (float64 needs ``jax.enable_x64``). They exist to test the fast
renderers and are O(N · pixels) in time and memory: use small sizes.

- :func:`render_xray_reference`: per ray (origin o, direction d) and Gaussian (μ, P = Σ⁻¹, ρ),
  ρ‖d‖·sqrt(2π/a)·exp(−½(c − b²/a)), a = dᵀPd, b = dᵀPq, c = qᵀPq, q = o − μ, integrated over the
  whole line (EVALUATION.md §7).
- :func:`density_field_reference`: Σᵢ ρᵢ exp(−½ (x − μᵢ)ᵀ Pᵢ (x − μᵢ)) at arbitrary points.
- :func:`reference_rays`: detector rays computed in the requested dtype from the convention in
  :mod:`insideout_jax.cameras` (``cameras.xray_rays`` computes pixel positions in float32).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from insideout_jax.cameras import XrayGeometry, view_frame
from insideout_jax.splats import RadSplats, RGBSplats, quat_to_rotmat

__all__ = ["reference_rays", "render_xray_reference", "density_field_reference",
           "precision_matrices"]


def precision_matrices(log_scales: jax.Array, quats: jax.Array) -> jax.Array:
    """[N, 3, 3] P = Σ⁻¹ = R diag(exp(−2·log_scales)) Rᵀ (1/mm²)."""
    rot = quat_to_rotmat(quats)
    m = rot * jnp.exp(-log_scales)[:, None, :]
    return m @ jnp.swapaxes(m, -1, -2)


def reference_rays(geometry: XrayGeometry, angle, *, dtype=jnp.float64
                   ) -> tuple[jax.Array, jax.Array]:
    """Rays of all detector pixels for one view (an angle or a [5, 3] pose), in ``dtype``.

    Returns:
      origins: [nv, nu, 3] source (cone) or pixel centre on the plane through the axis (parallel).
      dirs: [nv, nu, 3] pixel − source (cone, not normalised) or the unit beam direction.
    """
    g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), geometry)
    e_r, e_u, e_v, iso, ov, ou = view_frame(g, jnp.asarray(angle, dtype))
    nv, nu = geometry.n_detector
    cu = (jnp.arange(nu, dtype=dtype) - (nu - 1) / 2) * g.d_detector[1] + ou
    cv = (jnp.arange(nv, dtype=dtype) - (nv - 1) / 2) * g.d_detector[0] + ov
    plane = cu[None, :, None] * e_u + cv[:, None, None] * e_v
    if geometry.mode == "cone":
        src = g.dso * e_r
        pix = (g.dso - g.dsd) * e_r + plane
        o = jnp.broadcast_to(src, pix.shape) + iso
        return o, pix - src
    o = plane + iso
    return o, jnp.broadcast_to(-e_r, o.shape)


def _as_dtype(splats, dtype):
    s = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, splats)
    # inactive slots may hold zero quaternions: replace them so nothing is NaN (even × 0)
    ident = jnp.asarray([1.0, 0.0, 0.0, 0.0], dtype)
    return s.replace(quats=jnp.where(s.active[:, None], s.quats, ident))


def render_xray_reference(splats: RadSplats, geometry: XrayGeometry, angles, *,
                          dtype=jnp.float64, cutoff_sigma: float | None = None) -> jax.Array:
    """Dense closed-form line integrals.

    Args:
      splats: radiative splats (inactive ones contribute nothing).
      geometry: scanner geometry.
      angles: [V] view angles (radians) or [V, 5, 3] poses.
      dtype: computation dtype.
      cutoff_sigma: None (no culling) or k: drop a Gaussian from a ray whose Mahalanobis
        distance to it exceeds k (the fast renderer's truncation, for exact comparisons).

    Returns:
      [V, nv, nu] line integrals in ``dtype``.
    """
    s = _as_dtype(splats, dtype)
    prec = precision_matrices(s.log_scales, s.quats)
    rho = jnp.where(s.active, jnp.exp(s.log_densities), 0.0)

    def one_view(angle):
        o, d = reference_rays(geometry, angle, dtype=dtype)
        q = o[:, :, None, :] - s.means  # [nv, nu, N, 3]
        pd = jnp.einsum("nab,ijb->ijna", prec, d)
        a = jnp.einsum("ija,ijna->ijn", d, pd)
        b = jnp.sum(q * pd, axis=-1)
        c = jnp.einsum("ijna,nab,ijnb->ijn", q, prec, q)
        norm_d = jnp.linalg.norm(d, axis=-1)[..., None]
        m2 = c - b * b / a
        val = rho * norm_d * jnp.sqrt(2 * math.pi / a) * jnp.exp(-0.5 * m2)
        if cutoff_sigma is not None:
            val = jnp.where(m2 <= cutoff_sigma**2, val, 0.0)
        return jnp.sum(val, axis=-1)

    return jax.lax.map(one_view, jnp.asarray(angles, dtype))


def density_field_reference(splats: RadSplats | RGBSplats, points: jax.Array, *,
                            dtype=jnp.float64, cutoff_sigma: float | None = None) -> jax.Array:
    """Σᵢ ρᵢ exp(−½ dᵀPᵢd) at every point (RGB splats: opacity as ρ).

    Args:
      splats: radiative or RGB splats.
      points: [..., 3] mm.
      cutoff_sigma: None (no culling) or k: drop terms with dᵀPᵢd > k².

    Returns:
      [...] density in ``dtype``.
    """
    s = _as_dtype(splats, dtype)
    prec = precision_matrices(s.log_scales, s.quats)
    if isinstance(s, RadSplats):
        peak = jnp.exp(s.log_densities)
    else:
        peak = jax.nn.sigmoid(s.opacity_logits)
    peak = jnp.where(s.active, peak, 0.0)
    pts = jnp.asarray(points, dtype)
    flat = pts.reshape(-1, 3)

    def one(x):
        d = x - s.means
        m2 = jnp.einsum("na,nab,nb->n", d, prec, d)
        val = peak * jnp.exp(-0.5 * m2)
        if cutoff_sigma is not None:
            val = jnp.where(m2 <= cutoff_sigma**2, val, 0.0)
        return jnp.sum(val)

    return jax.lax.map(one, flat, batch_size=256).reshape(pts.shape[:-1])
