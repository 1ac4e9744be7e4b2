"""Dense reference renderer: every pixel × every Gaussian, no tiles, no custom gradients.

Obviously correct and slow (O(H·W·N)); it exists to test the tile rasterizers, forward and (through
plain autodiff of a ``lax.scan``) backward. It restates the 3DGS rules from scratch with the same
constants as the fast path (documented in :mod:`insideout_jax.render.rgb`):

* EWA projection Σ₂ = J W Σ Wᵀ Jᵀ + 0.3·I with x/z, y/z clamped to 1.3× the field of view for J;
  culled when camera z ≤ near_plane.
* colour = max(0, 0.5 + SH(d)), d = unit(mean − camera centre).
* Front to back (stable sort of camera z): α = min(0.99, o·G); skip α < 1/255 or power > 0;
  stop before T would fall below 1e-4; C += αT·c, D += αT·z, T ← T(1 − α).

Use small images (e.g. 32×48) and a few hundred Gaussians; run in float64 for tight comparisons.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from insideout_jax import sh as sh_lib
from insideout_jax.cameras import PinholeCamera
from insideout_jax.splats import RGBSplats, covariance

__all__ = ["render_rgb_dense"]


def _project_dense(splats: RGBSplats, camera: PinholeCamera, near_plane: float, eps2d: float):
    dtype = splats.means.dtype
    rot = camera.rotation.astype(dtype)
    fx, fy = camera.fx.astype(dtype), camera.fy.astype(dtype)
    cx, cy = camera.cx.astype(dtype), camera.cy.astype(dtype)
    p = jnp.einsum("ij,nj->ni", rot, splats.means) + camera.translation.astype(dtype)
    z = p[:, 2]
    keep = (z > near_plane) & splats.active
    z_safe = jnp.where(keep, z, 1.0)
    u = fx * p[:, 0] / z_safe + cx
    v = fy * p[:, 1] / z_safe + cy
    width, height = camera.width, camera.height
    # J is evaluated at a point whose x/z, y/z lie within the field of view widened by 30 %.
    xz = jnp.clip(p[:, 0] / z_safe, -(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
    yz = jnp.clip(p[:, 1] / z_safe, -(cy / fy + 0.15 * height / fy),
                  (height - cy) / fy + 0.15 * height / fy)
    jac = jnp.zeros((z.shape[0], 2, 3), dtype)
    jac = jac.at[:, 0, 0].set(fx / z_safe).at[:, 0, 2].set(-fx * xz / z_safe)
    jac = jac.at[:, 1, 1].set(fy / z_safe).at[:, 1, 2].set(-fy * yz / z_safe)
    sigma_cam = jnp.einsum("ij,njk,lk->nil", rot, covariance(splats.log_scales, splats.quats), rot)
    cov = jnp.einsum("nij,njk,nlk->nil", jac, sigma_cam, jac) + eps2d * jnp.eye(2, dtype=dtype)
    inv = jnp.linalg.inv(cov)  # conic: a = inv[0,0], b = inv[0,1], c = inv[1,1]
    return u, v, inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1], z, keep


def render_rgb_dense(splats: RGBSplats, camera: PinholeCamera, *,
                     background: jax.Array | None = None, sh_degree: int | None = None,
                     near_plane: float = 0.2, eps2d: float = 0.3
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Dense 3DGS rendering (reference).

    Args:
      splats: RGB splats (capacity C; inactive slots ignored).
      camera: pinhole camera, image W × H.
      background: [3] colour (default black).
      sh_degree: SH bands used (default all).
      near_plane: culling depth.
      eps2d: 2D low-pass variance, px².

    Returns:
      color: [H, W, 3] including T·background.
      alpha: [H, W] 1 − T.
      depth: [H, W] Σ wᵢzᵢ / alpha (0 where alpha = 0).
    """
    dtype = splats.means.dtype
    bg = jnp.zeros(3, dtype) if background is None else jnp.asarray(background, dtype)
    u, v, a, b, c, z, keep = _project_dense(splats, camera, near_plane, eps2d)
    centre = -camera.rotation.astype(dtype).T @ camera.translation.astype(dtype)
    dirs = splats.means - centre
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    rgb = jnp.maximum(sh_lib.eval_sh(splats.sh, dirs, degree=sh_degree) + 0.5, 0.0)
    opacity = jnp.where(keep, jax.nn.sigmoid(splats.opacity_logits), 0.0)
    order = jnp.argsort(jnp.where(keep, z, jnp.inf), stable=True)
    xs = [x[order] for x in (u, v, a, b, c, opacity, rgb, z)]
    jj, ii = jnp.meshgrid(jnp.arange(camera.width, dtype=dtype) + 0.5,
                          jnp.arange(camera.height, dtype=dtype) + 0.5)

    def step(state, g):
        trans, col, dep, done = state
        gu, gv, ga, gb, gc, go, gcol, gz = g
        dx, dy = gu - jj, gv - ii
        power = -0.5 * (ga * dx * dx + gc * dy * dy) - gb * dx * dy
        alpha = jnp.minimum(0.99, go * jnp.exp(power))
        considered = (alpha >= 1.0 / 255.0) & (power <= 0) & ~done
        stop = considered & (trans * (1 - alpha) < 1e-4)
        composite = considered & ~stop
        w = jnp.where(composite, alpha * trans, 0.0)
        col = col + w[..., None] * gcol
        dep = dep + w * gz
        trans = jnp.where(composite, trans * (1 - alpha), trans)
        return (trans, col, dep, done | stop), None

    shape = (camera.height, camera.width)
    init = (jnp.ones(shape, dtype), jnp.zeros(shape + (3,), dtype), jnp.zeros(shape, dtype),
            jnp.zeros(shape, bool))
    (trans, col, dep, _), _ = jax.lax.scan(step, init, xs)
    alpha = 1 - trans
    color = col + trans[..., None] * bg
    pos = alpha > 0
    depth = jnp.where(pos, dep / jnp.where(pos, alpha, 1.0), 0.0)
    return color, alpha, depth
