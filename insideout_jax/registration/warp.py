"""Differentiable rigid resampling of a volume (trilinear), in the volumes' world frame (mm).

Volumes follow ``ct/volume.json``: voxel [k, j, i] of a [nz, ny, nx] array sits at
origin + (i·dx, j·dy, k·dz). ``warp_volume(vol, pose)`` is the volume of the object moved by T:
out(x) = vol(T⁻¹(x)) on the same (or another) grid, so that a structure at p appears at T(p).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from insideout_jax.registration.pose import pose_matrix

__all__ = ["grid_points", "sample_volume", "warp_volume"]


def grid_points(shape_zyx, spacing_zyx, origin_xyz) -> jax.Array:
    """[nz, ny, nx, 3] world (x, y, z) positions of the voxel centres, mm."""
    nz, ny, nx = (int(s) for s in shape_zyx)
    sz, sy, sx = (jnp.asarray(spacing_zyx, jnp.float32)[k] for k in range(3))
    o = jnp.asarray(origin_xyz, jnp.float32)
    z, y, x = jnp.meshgrid(jnp.arange(nz) * sz, jnp.arange(ny) * sy, jnp.arange(nx) * sx, indexing="ij")
    return jnp.stack([x, y, z], -1) + o


def sample_volume(vol: jax.Array, points: jax.Array, spacing_zyx, origin_xyz, *,
                  cval: float = 0.0) -> jax.Array:
    """Trilinear values of ``vol`` at world points [..., 3]; ``cval`` beyond the grid (the value
    falls to ``cval`` over the last voxel, as scipy's ``mode="grid-constant"``)."""
    sp = jnp.asarray(spacing_zyx, jnp.float32)
    idx = (points - jnp.asarray(origin_xyz, jnp.float32)) / sp[::-1]
    return map_coordinates(vol, [idx[..., 2], idx[..., 1], idx[..., 0]], order=1, mode="constant",
                           cval=cval)


def warp_volume(vol: jax.Array, pose: jax.Array, centre, spacing_zyx, origin_xyz, *,
                out_shape=None, out_spacing_zyx=None, out_origin_xyz=None, cval: float = 0.0) -> jax.Array:
    """The volume moved by T (pose [6] about ``centre``): out(x) = vol(T⁻¹ x), differentiable in
    ``pose`` and ``vol``.

    Args:
      vol: [nz, ny, nx] volume.
      pose: [6] (ω, t), see :mod:`insideout_jax.registration.pose`.
      centre: [3] rotation centre c, mm.
      spacing_zyx, origin_xyz: the grid of ``vol``.
      out_shape, out_spacing_zyx, out_origin_xyz: the output grid (default: the input grid).

    Returns:
      the resampled volume on the output grid.
    """
    shape = vol.shape if out_shape is None else tuple(out_shape)
    osp = spacing_zyx if out_spacing_zyx is None else out_spacing_zyx
    oor = origin_xyz if out_origin_xyz is None else out_origin_xyz
    x = grid_points(shape, osp, oor)
    rot, b = pose_matrix(pose, centre)
    src = jnp.einsum("ji,...j->...i", rot, x - b)  # T⁻¹(x) = Rᵀ(x − b)
    return sample_volume(vol, src, spacing_zyx, origin_xyz, cval=cval)
