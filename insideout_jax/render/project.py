"""Stage 1 of the rasterizers: 3D Gaussians → 2D screen-space footprints (EWA splatting).

Conventions (stated once for the whole ``render`` package):

* Pixel coordinates are COLMAP's: pixel (row i, column j) spans [j, j + 1] × [i, i + 1] and its
  centre is at (u, v) = (j + 0.5, i + 0.5). A camera point x_cam projects to
  (u, v) = (fx·x/z + cx, fy·y/z + cy).
* A 2D footprint is described by its mean ``means2d`` [N, 2] (u, v) px, its covariance
  ``cov2d`` [N, 3] = (Σ_uu, Σ_uv, Σ_vv) px² *including* the +0.3 px² low-pass of 3DGS, and its conic
  (inverse covariance) ``conics`` [N, 3] = (a, b, c) 1/px², so that the Gaussian at pixel centre p is
  G(p) = exp(power), power = −½(a·dx² + c·dy²) − b·dx·dy with (dx, dy) = mean − p.
* Opacity-weighted alpha follows 3DGS: α = min(0.99, o·G); pairs with α < 1/255 are skipped.

This module is differentiable by plain autodiff (it is cheap, per Gaussian); only the per-pixel
compositing has a hand-written backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from insideout_jax import sh as sh_lib
from insideout_jax.cameras import PinholeCamera, camera_center

__all__ = ["EPS2D", "ALPHA_MIN", "ALPHA_MAX", "NEAR_PLANE", "project_gaussians", "cov2d_to_conic",
           "footprint_extents", "sh_colors"]

EPS2D = 0.3  # px², low-pass added to the 2D covariance (3DGS, Kerbl et al. 2023, cuda forward.cu)
ALPHA_MIN = 1.0 / 255.0  # pairs with α below this are skipped (3DGS)
ALPHA_MAX = 0.99  # α is clamped at this value (3DGS)
NEAR_PLANE = 0.2  # Gaussians with camera depth z ≤ this are culled (3DGS in_frustum test)
_FOV_MARGIN = 0.3  # the Jacobian is evaluated with x/z, y/z clamped to 1.3× the field of view (3DGS)


def project_gaussians(means: jax.Array, log_scales: jax.Array, quats: jax.Array,
                      camera: PinholeCamera, *, near_plane: float = NEAR_PLANE,
                      eps2d: float = EPS2D) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EWA projection of 3D Gaussians to the image plane (3DGS ``computeCov2D``).

    Σ₂ = J W Σ Wᵀ Jᵀ + eps2d·I, with W the camera rotation and J the Jacobian of the perspective
    projection at the Gaussian's centre. As in 3DGS, J is evaluated with x/z and y/z clamped to the
    field of view widened by 30 % on each side (gsplat's generalisation to an off-centre principal
    point: limits (W − cx)/fx + 0.3·W/(2fx) and cx/fx + 0.3·W/(2fx)), which keeps far off-screen
    Gaussians from exploding; the mean itself is projected without clamping.

    Args:
      means: [N, 3] centres, world units.
      log_scales: [N, 3] log standard deviations, log world units.
      quats: [N, 4] rotations (w, x, y, z), not necessarily normalised.
      camera: pinhole camera (world → camera).
      near_plane: Gaussians with camera z ≤ near_plane are reported as not ``in_front``.
      eps2d: low-pass variance added to the 2D covariance, px².

    Returns:
      means2d: [N, 2] (u, v) pixel coordinates of the projected centres.
      cov2d: [N, 3] (Σ_uu, Σ_uv, Σ_vv), px², including ``eps2d``.
      depths: [N] camera-space z of the centres (world units).
      in_front: [N] bool, z > near_plane and everything finite.
    """
    rc = camera.rotation.astype(means.dtype)
    tc = camera.translation.astype(means.dtype)
    mx, my, mz = jnp.transpose(means)
    x, y, z = (rc[i, 0] * mx + rc[i, 1] * my + rc[i, 2] * mz + tc[i] for i in range(3))
    in_front = z > near_plane
    zs = jnp.where(in_front, z, 1.0)  # keeps culled entries finite (their outputs are never used)
    u = camera.fx * x / zs + camera.cx
    v = camera.fy * y / zs + camera.cy
    w, h = camera.width, camera.height
    lim_x_pos = (w - camera.cx) / camera.fx + _FOV_MARGIN * 0.5 * w / camera.fx
    lim_x_neg = camera.cx / camera.fx + _FOV_MARGIN * 0.5 * w / camera.fx
    lim_y_pos = (h - camera.cy) / camera.fy + _FOV_MARGIN * 0.5 * h / camera.fy
    lim_y_neg = camera.cy / camera.fy + _FOV_MARGIN * 0.5 * h / camera.fy
    tx = zs * jnp.clip(x / zs, -lim_x_neg, lim_x_pos)
    ty = zs * jnp.clip(y / zs, -lim_y_neg, lim_y_pos)
    # Σ₂ = (J W R S)(J W R S)ᵀ + eps2d·I, written component-wise on [N] arrays: tiny batched
    # matmuls and reductions over short axes are slow on CPU, forward and in autodiff.
    rot = rc
    j00, j02 = camera.fx / zs, -camera.fx * tx / (zs * zs)
    j11, j12 = camera.fy / zs, -camera.fy * ty / (zs * zs)
    jw0 = [j00 * rot[0, k] + j02 * rot[2, k] for k in range(3)]  # row 0 of J W
    jw1 = [j11 * rot[1, k] + j12 * rot[2, k] for k in range(3)]  # row 1 of J W
    r = _rotation_entries(quats)
    sc = jnp.exp(jnp.transpose(log_scales))
    m0 = [(jw0[0] * r[0][j] + jw0[1] * r[1][j] + jw0[2] * r[2][j]) * sc[j] for j in range(3)]
    m1 = [(jw1[0] * r[0][j] + jw1[1] * r[1][j] + jw1[2] * r[2][j]) * sc[j] for j in range(3)]
    cov2d = jnp.stack([
        m0[0] * m0[0] + m0[1] * m0[1] + m0[2] * m0[2] + eps2d,
        m0[0] * m1[0] + m0[1] * m1[1] + m0[2] * m1[2],
        m1[0] * m1[0] + m1[1] * m1[1] + m1[2] * m1[2] + eps2d], axis=-1)
    finite = jnp.all(jnp.isfinite(cov2d), axis=-1) & jnp.isfinite(u) & jnp.isfinite(v)
    return jnp.stack([u, v], axis=-1), cov2d, z, in_front & finite


def _rotation_entries(quats: jax.Array) -> list[list[jax.Array]]:
    """R[i][j] as [N] arrays for quaternions (w, x, y, z) (same matrix as splats.quat_to_rotmat)."""
    w, x, y, z = jnp.transpose(quats)  # rows are contiguous: cheap slices and transposes
    inv = jax.lax.rsqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w * inv, x * inv, y * inv, z * inv
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]


def cov2d_to_conic(cov2d: jax.Array) -> jax.Array:
    """Inverse of a 2D covariance.

    Args:
      cov2d: [N, 3] (Σ_uu, Σ_uv, Σ_vv), px², positive definite (guaranteed by the +eps2d low-pass).

    Returns:
      [N, 3] conic (a, b, c) = (Σ_vv, −Σ_uv, Σ_uu) / det, 1/px².
    """
    sxx, sxy, syy = cov2d[:, 0], cov2d[:, 1], cov2d[:, 2]
    det = sxx * syy - sxy * sxy
    det = jnp.where(det > 0, det, 1.0)
    return jnp.stack([syy / det, -sxy / det, sxx / det], axis=-1)


def footprint_extents(cov2d: jax.Array, opacities: jax.Array, *,
                      alpha_min: float = ALPHA_MIN) -> jax.Array:
    """Conservative half-extents of the region where a Gaussian can pass the α ≥ alpha_min test.

    o·G(p) ≥ alpha_min ⇔ ½ dᵀΣ₂⁻¹d ≤ τ with τ = ln(o / alpha_min); that ellipse spans
    ±sqrt(2τ·Σ_uu) in u and ±sqrt(2τ·Σ_vv) in v. A relative margin of 1e-3 plus 1e-2 px absorbs
    round-off, so tile culling with these extents never drops a pair that the dense α test would
    keep (this is what makes the tiled rasterizer exact). Gaussians with o < alpha_min get −1
    (they can never contribute).

    Args:
      cov2d: [N, 3] (Σ_uu, Σ_uv, Σ_vv), px².
      opacities: [N] in [0, 1].
      alpha_min: the skip threshold.

    Returns:
      [N, 2] half-extents (e_u, e_v) in px, or −1 for Gaussians that cannot contribute.
    """
    cov2d = jax.lax.stop_gradient(cov2d)
    opacities = jax.lax.stop_gradient(opacities)
    safe_o = jnp.maximum(opacities, alpha_min)
    tau = jnp.log(safe_o / alpha_min)
    ext = jnp.sqrt(2.0 * tau[:, None] * jnp.maximum(cov2d[:, 0::2], 0.0)) * 1.001 + 0.01
    return jnp.where((opacities >= alpha_min)[:, None], ext, -1.0)


def sh_colors(sh: jax.Array, means: jax.Array, camera: PinholeCamera, *,
              degree: int | None = None) -> jax.Array:
    """View-dependent RGB colour of every Gaussian (3DGS ``computeColorFromSH``).

    colour = max(0, 0.5 + Σ_k sh[k]·Y_k(d)), with d the unit direction from the camera centre to
    the Gaussian's centre (world frame). The clamp at 0 has zero gradient where it is active, as in
    3DGS.

    Args:
      sh: [N, K, 3] SH coefficients, K = (degree + 1)² ≥ coefficients used.
      means: [N, 3] centres, world units.
      camera: the viewing camera.
      degree: SH bands used (0..3); default all bands of ``sh``.

    Returns:
      [N, 3] colours, ≥ 0.
    """
    d = means - camera_center(camera).astype(means.dtype)
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    d = d * jax.lax.rsqrt(jnp.maximum(dx * dx + dy * dy + dz * dz, 1e-24))[:, None]
    return jnp.maximum(sh_lib.eval_sh(sh, d, degree=degree) + 0.5, 0.0)
