"""Rigid poses about a centre: T(p) = R·(p − c) + c + t, R = exp([ω]×) (axis-angle ω, radians), t mm.

Rotating about the centre c of the structure decouples rotation and translation (SEED_SYSTEMS
§1.3): a pose is the pair (ω, t), stored as one [6] vector ``(ω, t)``. Everything is jittable and
differentiable, including at ω = 0 (series forms below the small-angle threshold).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from insideout_jax import xla

__all__ = ["so3_exp", "so3_log", "pose_matrix", "apply_pose", "compose_poses", "invert_pose",
           "rotation_angle", "geodesic_distance", "random_poses", "euler_zyx_to_rotmat"]

_SMALL = 1e-4


def _hat(w):
    z = jnp.zeros_like(w[..., 0])
    return jnp.stack([jnp.stack([z, -w[..., 2], w[..., 1]], -1),
                      jnp.stack([w[..., 2], z, -w[..., 0]], -1),
                      jnp.stack([-w[..., 1], w[..., 0], z], -1)], -2)


def so3_exp(omega: jax.Array) -> jax.Array:
    """[..., 3, 3] R = exp([ω]×) (Rodrigues), exact gradients at ω = 0."""
    w = jnp.asarray(omega)
    th2 = jnp.sum(w * w, -1)
    small = th2 < _SMALL**2
    th2s = jnp.where(small, 1.0, th2)
    th = jnp.sqrt(th2s)
    a = jnp.where(small, 1.0 - th2 / 6.0, jnp.sin(th) / th)
    b = jnp.where(small, 0.5 - th2 / 24.0, (1.0 - jnp.cos(th)) / th2s)
    k = _hat(w)
    eye = jnp.eye(3, dtype=w.dtype)
    return eye + a[..., None, None] * k + b[..., None, None] * jnp.matmul(k, k, precision=xla.HIGHEST)


def rotation_angle(rot: jax.Array) -> jax.Array:
    """[...] angle in [0, π] of rotation matrices (atan2 form: accurate at small angles)."""
    cos = (jnp.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = jnp.stack([rot[..., 2, 1] - rot[..., 1, 2], rot[..., 0, 2] - rot[..., 2, 0],
                      rot[..., 1, 0] - rot[..., 0, 1]], -1)
    return jnp.arctan2(jnp.linalg.norm(skew, axis=-1) / 2.0, cos)


def so3_log(rot: jax.Array) -> jax.Array:
    """[..., 3] ω with exp([ω]×) = R, |ω| ≤ π; finite gradients everywhere (series near 0)."""
    r = jnp.asarray(rot)
    skew = jnp.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                      r[..., 1, 0] - r[..., 0, 1]], -1) / 2.0  # sin θ · axis
    cos = (jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    sn2 = jnp.sum(skew * skew, -1)
    small = (sn2 < _SMALL**2) & (cos > 0)
    sn = jnp.sqrt(jnp.where(small, 1.0, sn2))
    th = jnp.arctan2(sn, cos)
    scale = jnp.where(small, 1.0 + sn2 / 6.0, th / sn)
    near_pi = (cos < -0.999) & ~small
    # near π the skew part vanishes: the axis is the largest column of R + Rᵀ − (tr − 1)·I
    sym = (r + jnp.swapaxes(r, -1, -2)) / 2.0 - jnp.eye(3, dtype=r.dtype) * cos[..., None, None]
    col = jnp.argmax(jnp.diagonal(sym, axis1=-2, axis2=-1), -1)
    axis = jnp.take_along_axis(sym, col[..., None, None], -1)[..., 0]
    axis = axis / jnp.sqrt(jnp.sum(axis * axis, -1, keepdims=True) + 1e-30)
    axis = axis * jnp.where(jnp.sum(axis * skew, -1, keepdims=True) < 0, -1.0, 1.0)
    return jnp.where(near_pi[..., None], axis * th[..., None], skew * scale[..., None])


def pose_matrix(pose: jax.Array, centre: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(R [..., 3, 3], b [..., 3]) with T(p) = R p + b, b = c + t − R c."""
    pose = jnp.asarray(pose)
    rot = so3_exp(pose[..., :3])
    c = jnp.asarray(centre, pose.dtype)
    return rot, c + pose[..., 3:] - jnp.einsum("...ij,j->...i", rot, c, precision=xla.HIGHEST)


def apply_pose(pose: jax.Array, centre: jax.Array, points: jax.Array) -> jax.Array:
    """T(p) for points [..., N, 3] and one pose [6] (or a batch [..., 6] with points [..., N, 3])."""
    rot, b = pose_matrix(pose, centre)
    return jnp.einsum("...ij,...nj->...ni", rot, points, precision=xla.HIGHEST) + b[..., None, :]


def compose_poses(a: jax.Array, b: jax.Array) -> jax.Array:
    """The pose of T_a ∘ T_b (apply b first), both about the same centre: ω = log(R_a R_b),
    t = R_a t_b + t_a."""
    ra, rb = so3_exp(a[..., :3]), so3_exp(b[..., :3])
    t = jnp.einsum("...ij,...j->...i", ra, b[..., 3:], precision=xla.HIGHEST) + a[..., 3:]
    return jnp.concatenate([so3_log(jnp.matmul(ra, rb, precision=xla.HIGHEST)), t], -1)


def invert_pose(pose: jax.Array) -> jax.Array:
    """The pose of T⁻¹ about the same centre: ω' = −ω, t' = −Rᵀ t."""
    rot = so3_exp(pose[..., :3])
    t = jnp.einsum("...ji,...j->...i", rot, pose[..., 3:], precision=xla.HIGHEST)
    return jnp.concatenate([-pose[..., :3], -t], -1)


def geodesic_distance(a: jax.Array, b: jax.Array, radius: float) -> jax.Array:
    """[...] sqrt((r·θ)² + ‖t_a − t_b‖²) in mm: θ the angle of R_aᵀR_b, r the structure's radius
    (SEED_SYSTEMS §1.2 step 7 [D]); differentiable, including at a = b (a 1e-12 mm² floor)."""
    rel = jnp.swapaxes(so3_exp(a[..., :3]), -1, -2) @ so3_exp(b[..., :3])
    w = so3_log(rel)
    dt = a[..., 3:] - b[..., 3:]
    return jnp.sqrt(radius * radius * jnp.sum(w * w, -1) + jnp.sum(dt * dt, -1) + 1e-12)


def euler_zyx_to_rotmat(angles_rad: np.ndarray) -> np.ndarray:
    """[..., 3, 3] R = Rz(γ) Ry(β) Rx(α) for angles [..., 3] = (α, β, γ), float64 NumPy."""
    a = np.asarray(angles_rad, np.float64)
    ca, sa, cb, sb, cg, sg = (f(a[..., k]) for k in range(3) for f in (np.cos, np.sin))
    o, z = np.ones_like(ca), np.zeros_like(ca)
    rx = np.stack([np.stack([o, z, z], -1), np.stack([z, ca, -sa], -1), np.stack([z, sa, ca], -1)], -2)
    ry = np.stack([np.stack([cb, z, sb], -1), np.stack([z, o, z], -1), np.stack([-sb, z, cb], -1)], -2)
    rz = np.stack([np.stack([cg, -sg, z], -1), np.stack([sg, cg, z], -1), np.stack([z, z, o], -1)], -2)
    return rz @ ry @ rx


def random_poses(rng: np.random.Generator, n: int, *, max_rot_deg: float = 20.0,
                 max_trans_mm: float = 50.0) -> np.ndarray:
    """[n, 6] float64 poses with Euler ZYX angles each U[−max_rot, max_rot] and translations each
    U[−max_trans, max_trans] mm (RadGS-Reg's RegM pairs: ±20°, ±50 mm)."""
    ang = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg, (int(n), 3)))
    w = Rotation.from_matrix(euler_zyx_to_rotmat(ang)).as_rotvec()
    return np.concatenate([w, rng.uniform(-max_trans_mm, max_trans_mm, (int(n), 3))], -1)
