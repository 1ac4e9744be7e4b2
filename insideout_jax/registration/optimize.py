"""Registration by optimisation: 3D/3D (a volume onto a volume, RadGS-Reg's per-case route) and
2D/3D render-and-compare (splats onto X-rays, the DiffPose-style baseline).

Both optimise a pose (ω, t) about a fixed centre with Adam from several starts and keep the start
with the lowest final loss. The optimiser works on x = (r·ω, t), both parts in mm (r: the
structure's radius), so one learning rate moves rotation and translation alike.

- 3D/3D: loss (1 − NCC) + (1 − SSIM) between the moved volume and the fixed one (RadGS-Reg
  Eq. 3 without its pose term, which needs the true pose), coarse to fine over block-mean
  pyramids; all starts run at once (vmap).
- 2D/3D: loss 1 − mean over views of the 2-D NCC between the X-ray renders of the moved splats
  and the measured projections.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax.cameras import XrayGeometry
from insideout_jax.registration.pose import so3_exp
from insideout_jax.registration.similarity import ncc3d, ssim3d
from insideout_jax.registration.warp import warp_volume
from insideout_jax.render.xray import render_xray, safe_quats
from insideout_jax.splats import RadSplats, transform_splats

__all__ = ["VolumeRegConfig", "ProjectionRegConfig", "block_mean", "register_volumes",
           "register_projections"]


@dataclasses.dataclass(frozen=True)
class VolumeRegConfig:
    """3D/3D registration: pyramid factors (coarse → fine), Adam steps and rates (mm per step)."""

    levels: tuple = (2, 1)
    steps: tuple = (60, 40)
    lr_mm: tuple = (1.5, 0.3)
    ssim_weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class ProjectionRegConfig:
    """2D/3D render-and-compare: Adam steps and rate (mm per step, cosine decay)."""

    steps: int = 150
    lr_mm: float = 1.0


def block_mean(vol: jax.Array, f: int, spacing_zyx, origin_xyz):
    """(volume, spacing, origin) averaged over f³ blocks (trailing voxels that do not fill a block
    are dropped); the new voxel centre is the block's centre."""
    if f == 1:
        return vol, tuple(float(s) for s in spacing_zyx), tuple(float(o) for o in origin_xyz)
    nz, ny, nx = (s // f for s in vol.shape)
    v = vol[: nz * f, : ny * f, : nx * f].reshape(nz, f, ny, f, nx, f).mean((1, 3, 5))
    sp = np.asarray(spacing_zyx, np.float64)
    org = np.asarray(origin_xyz, np.float64) + (f - 1) / 2 * sp[::-1]
    return v, tuple(sp * f), tuple(org)


def _pose(x, radius):
    return jnp.concatenate([x[:3] / radius, x[3:]])


@functools.partial(jax.jit, static_argnames=("steps", "grids", "ssim_weight"))
def _vol_stage(xs, moving, fixed, centre, radius, data_range, lr, *, steps, grids, ssim_weight):
    (m_sp, m_org), (f_sp, f_org) = grids

    def loss(x):
        moved = warp_volume(moving, _pose(x, radius), centre, m_sp, m_org, out_shape=fixed.shape,
                            out_spacing_zyx=f_sp, out_origin_xyz=f_org)
        return (1.0 - ncc3d(moved, fixed)) + ssim_weight * (1.0 - ssim3d(moved, fixed, data_range))

    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    vg = jax.vmap(jax.value_and_grad(loss))

    def step(carry, _):
        x, st = carry
        val, g = vg(x)
        up, st = jax.vmap(opt.update)(g, st, x)
        return (optax.apply_updates(x, up), st), val

    (xs, _), hist = jax.lax.scan(step, (xs, jax.vmap(opt.init)(xs)), None, length=steps)
    return xs, jax.vmap(loss)(xs), hist


def register_volumes(moving, fixed, *, centre, spacing_zyx, origin_xyz, radius: float, starts,
                     data_range: float | None = None, config: VolumeRegConfig = VolumeRegConfig(),
                     fixed_spacing_zyx=None, fixed_origin_xyz=None) -> dict:
    """The pose T with warp(moving, T) ≈ fixed, 3D/3D, multi-start.

    Args:
      moving: [nz, ny, nx] the volume to move (e.g. the pre-operative CT crop) on the grid
        (``spacing_zyx``, ``origin_xyz``).
      fixed: the target (e.g. the voxelized two-view reconstruction) on its own grid
        (``fixed_spacing_zyx``, ``fixed_origin_xyz``; default: the moving volume's grid).
      centre: [3] rotation centre, mm; radius: structure radius, mm (rotation ↔ mm scale).
      starts: [S, 6] initial poses.
      data_range: SSIM's L (default: the fixed volume's max − min).

    Returns:
      dict(pose [6] float64, loss float, losses [S], poses [S, 6], history [steps total] best start).
    """
    moving, fixed = jnp.asarray(moving, jnp.float32), jnp.asarray(fixed, jnp.float32)
    same_grid = fixed_spacing_zyx is None and fixed_origin_xyz is None
    if moving.ndim != 3 or fixed.ndim != 3 or (same_grid and moving.shape != fixed.shape):
        raise ValueError("moving and fixed must be volumes (of one shape on one grid), got"
                         f" {moving.shape}, {fixed.shape}")
    f_sp0 = spacing_zyx if fixed_spacing_zyx is None else fixed_spacing_zyx
    f_org0 = origin_xyz if fixed_origin_xyz is None else fixed_origin_xyz
    if len(config.levels) != len(config.steps) or len(config.levels) != len(config.lr_mm):
        raise ValueError("VolumeRegConfig: levels, steps and lr_mm must have the same length")
    s0 = np.asarray(starts, np.float64).reshape(-1, 6)
    xs = jnp.asarray(np.concatenate([s0[:, :3] * radius, s0[:, 3:]], 1), jnp.float32)
    dr = float(jnp.max(fixed) - jnp.min(fixed)) if data_range is None else float(data_range)
    c = jnp.asarray(centre, jnp.float32)
    hist = []
    for f, n, lr in zip(config.levels, config.steps, config.lr_mm, strict=True):
        m, sp, org = block_mean(moving, int(f), spacing_zyx, origin_xyz)
        fx, fsp, forg = block_mean(fixed, int(f), f_sp0, f_org0)
        xs, losses, h = _vol_stage(xs, m, fx, c, jnp.float32(radius), jnp.float32(dr), jnp.float32(lr),
                                   steps=int(n), grids=((sp, org), (fsp, forg)),
                                   ssim_weight=float(config.ssim_weight))
        hist.append(np.asarray(h))
    losses = np.asarray(losses, np.float64)
    best = int(np.argmin(losses))
    poses = np.asarray(xs, np.float64)
    poses[:, :3] /= radius
    return dict(pose=poses[best], loss=float(losses[best]), losses=losses, poses=poses,
                history=np.concatenate(hist)[:, best])


def _ncc2d(a, b):
    da = a - a.mean((-2, -1), keepdims=True)
    db = b - b.mean((-2, -1), keepdims=True)
    return jnp.sum(da * db, (-2, -1)) / jnp.sqrt(jnp.sum(da * da, (-2, -1)) * jnp.sum(db * db, (-2, -1)) + 1e-12)


def posed_splats(splats: RadSplats, pose, centre) -> RadSplats:
    """The splats moved by T (pose [6] about ``centre``): means R(p − c) + c + t, covariances R Σ Rᵀ."""
    rot = so3_exp(pose[:3])
    c = jnp.asarray(centre, splats.means.dtype)
    # inactive slots may hold zero quaternions, whose normalisation would put NaN into gradients
    return transform_splats(splats.replace(quats=safe_quats(splats)), rot, c + pose[3:] - rot @ c)


@functools.partial(jax.jit, static_argnames=("steps",))
def _proj_stage(x, splats, geometry, targets, centre, radius, lr, *, steps):
    def loss(x):
        img = render_xray(posed_splats(splats, _pose(x, radius), centre), geometry, backend="xla")
        return 1.0 - jnp.mean(_ncc2d(img, targets))

    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))

    def step(carry, _):
        x, st = carry
        val, g = jax.value_and_grad(loss)(x)
        up, st = opt.update(g, st, x)
        return (optax.apply_updates(x, up), st), val

    (x, _), hist = jax.lax.scan(step, (x, opt.init(x)), None, length=steps)
    return x, loss(x), hist


def register_projections(splats: RadSplats, geometry: XrayGeometry, projections, *, centre,
                         radius: float, starts, config: ProjectionRegConfig = ProjectionRegConfig()) -> dict:
    """2D/3D render-and-compare: the pose T whose moved splats' projections best match
    ``projections`` [V, nv, nu] in ``geometry`` (1 − mean 2-D NCC), multi-start.

    Returns:
      dict(pose [6] float64, loss float, losses [S], poses [S, 6], history [steps] best start).
    """
    proj = jnp.asarray(projections, jnp.float32)
    nv, nu = geometry.n_detector
    if proj.shape != (geometry.n_views, nv, nu):
        raise ValueError(f"projections must have shape [{geometry.n_views}, {nv}, {nu}], got {proj.shape}")
    out = []
    for s in np.asarray(starts, np.float64).reshape(-1, 6):
        x0 = jnp.asarray(np.concatenate([s[:3] * radius, s[3:]]), jnp.float32)
        x, val, h = _proj_stage(x0, splats, geometry, proj, jnp.asarray(centre, jnp.float32),
                                jnp.float32(radius), jnp.float32(config.lr_mm), steps=int(config.steps))
        out.append((np.asarray(x, np.float64), float(val), np.asarray(h)))
    losses = np.array([o[1] for o in out])
    best = int(np.argmin(losses))
    poses = np.stack([o[0] for o in out])
    poses[:, :3] /= radius
    return dict(pose=poses[best], loss=float(losses[best]), losses=losses, poses=poses,
                history=out[best][2])
