"""Gaussian splat sets as pytrees: ``RGBSplats`` and ``RadSplats``.

Both have a fixed **capacity** C with an ``active`` mask, so densification works under ``jit`` with
static shapes. Parameters are stored unconstrained and named after their activation
(``log_scales`` → ``exp``, ``opacity_logits`` → ``sigmoid``, ``log_densities`` → ``exp``).
Covariances are derived, never stored: Σ = R S Sᵀ Rᵀ with R from the unit quaternion (w, x, y, z)
and S = diag(exp(log_scales)).

Glossary: C capacity, N active splats, K SH coefficients = (degree + 1)², F feature channels.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy.spatial import cKDTree

from insideout_jax import sh as sh_lib

__all__ = [
    "RGBSplats", "RadSplats", "quat_to_rotmat", "rotmat_to_quat", "quat_multiply", "covariance",
    "splat_covariances", "rgb_splats_from_points", "rad_splats_from_points", "select_active",
    "concatenate", "transform_splats", "knn_log_scales", "num_active", "pad_to_capacity",
    "cell_averaged",
]


def quat_to_rotmat(quats: jax.Array) -> jax.Array:
    """Rotation matrices from quaternions (w, x, y, z); the quaternion is normalised first.

    Args:
      quats: [..., 4] quaternions, any non-zero norm.

    Returns:
      [..., 3, 3] proper rotation matrices.
    """
    q = quats / jnp.linalg.norm(quats, axis=-1, keepdims=True)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def rotmat_to_quat(rot: jax.Array) -> jax.Array:
    """Unit quaternion (w, x, y, z), w ≥ 0, of a rotation matrix [..., 3, 3] (Shepperd's method)."""
    r = rot
    tr = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    cands = jnp.stack([
        jnp.stack([1 + tr, r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                   r[..., 1, 0] - r[..., 0, 1]], -1),
        jnp.stack([r[..., 2, 1] - r[..., 1, 2], 1 + 2 * r[..., 0, 0] - tr,
                   r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0]], -1),
        jnp.stack([r[..., 0, 2] - r[..., 2, 0], r[..., 0, 1] + r[..., 1, 0],
                   1 + 2 * r[..., 1, 1] - tr, r[..., 1, 2] + r[..., 2, 1]], -1),
        jnp.stack([r[..., 1, 0] - r[..., 0, 1], r[..., 0, 2] + r[..., 2, 0],
                   r[..., 1, 2] + r[..., 2, 1], 1 + 2 * r[..., 2, 2] - tr], -1),
    ], axis=-2)  # [..., 4, 4]; row i is 4·q·q_i, best conditioned where q_i is largest
    diag = jnp.stack([tr, r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]], -1)
    best = jnp.argmax(diag, axis=-1)
    q = jnp.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    return q * jnp.where(q[..., :1] < 0, -1.0, 1.0)


def quat_multiply(a: jax.Array, b: jax.Array) -> jax.Array:
    """Hamilton product a ⊗ b of quaternions (w, x, y, z); rotation by b, then by a."""
    aw, ax, ay, az = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bw, bx, by, bz = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return jnp.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], axis=-1)


def covariance(log_scales: jax.Array, quats: jax.Array) -> jax.Array:
    """Σ = R diag(exp(2·log_scales)) Rᵀ.

    Args:
      log_scales: [..., 3] log standard deviations along the Gaussian's axes (log mm).
      quats: [..., 4] rotations (w, x, y, z).

    Returns:
      [..., 3, 3] symmetric positive-definite covariances (mm²).
    """
    rot = quat_to_rotmat(quats)
    m = rot * jnp.exp(log_scales)[..., None, :]  # R S
    return m @ jnp.swapaxes(m, -1, -2)


def cell_averaged(splats: "RadSplats", spacing_xyz) -> "RadSplats":
    """Splats whose density at a voxel centre is (close to) the original's mean over the voxel.

    A CT voxel holds the mean attenuation of its cell, and so does a true volume made with
    partial-volume values; point samples of splats thinner than a voxel alias instead (a 0.5 mm
    thick splat of a 2 mm wall is sampled at its peak, ×4 the wall's value, or missed). Each
    Gaussian is convolved with the cell's box, approximated by the Gaussian of the same variance
    (h²/12 per axis): Σ' = Σ + diag(h²)/12, ρ' = ρ·√(det Σ / det Σ'), so every splat keeps its
    mass and its second moments are exactly those of the box-filtered splat.

    Args:
      splats: RadSplats.
      spacing_xyz: (hx, hy, hz) voxel sides, mm.

    Returns:
      RadSplats with new scales, rotations and densities (centres, activity unchanged).
    """
    h2 = jnp.asarray(spacing_xyz, jnp.float32) ** 2 / 12.0
    cov = covariance(splats.log_scales, splats.quats) + jnp.diag(h2)
    w, v = jnp.linalg.eigh(cov)
    v = v * jnp.where(jnp.linalg.det(v) < 0, -1.0, 1.0)[:, None, None]  # a proper rotation
    log_scales = 0.5 * jnp.log(jnp.maximum(w, 1e-20))
    gain = jnp.sum(splats.log_scales, -1) - jnp.sum(log_scales, -1)  # log √(det Σ / det Σ')
    return dataclasses.replace(splats, log_scales=log_scales, quats=rotmat_to_quat(v),
                               log_densities=splats.log_densities + gain)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RGBSplats:
    """3DGS splats with SH colour.

    Attributes:
      means: [C, 3] float32 centres (scene units; mm in the CT frame).
      log_scales: [C, 3] float32 log standard deviations.
      quats: [C, 4] float32 rotations (w, x, y, z), not necessarily normalised.
      opacity_logits: [C] float32; opacity = sigmoid(opacity_logits).
      sh: [C, K, 3] float32 SH colour coefficients, K = (degree + 1)².
      active: [C] bool; inactive slots are ignored by every renderer and loss.
    """

    means: jax.Array
    log_scales: jax.Array
    quats: jax.Array
    opacity_logits: jax.Array
    sh: jax.Array
    active: jax.Array

    @property
    def capacity(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return sh_lib.sh_degree_from_coeffs(self.sh.shape[-2])

    @property
    def opacities(self) -> jax.Array:
        return jax.nn.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> jax.Array:
        return jnp.exp(self.log_scales)

    def replace(self, **kw) -> RGBSplats:
        return dataclasses.replace(self, **kw)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RadSplats:
    """Radiative (X-ray) splats: a density field Σᵢ ρᵢ Gᵢ(x) with unnormalised Gaussians.

    Attributes:
      means: [C, 3] float32 centres, mm in the CT frame.
      log_scales: [C, 3] float32 log standard deviations (log mm).
      quats: [C, 4] float32 rotations (w, x, y, z).
      log_densities: [C] float32; peak density ρ = exp(log_densities), attenuation per mm.
      opacity_logits: [C] float32; an opacity, kept for alpha-composited views and importers of
        X-Gaussian-style files (the density renderers do not read it).
      features: [C, F] float32 radiative feature vector (X-Gaussian-style files); F may be 1.
      colors: [C, 3] float32 RGB in [0, 1], filled by visual alignment (zeros before).
      active: [C] bool.
    """

    means: jax.Array
    log_scales: jax.Array
    quats: jax.Array
    log_densities: jax.Array
    opacity_logits: jax.Array
    features: jax.Array
    colors: jax.Array
    active: jax.Array

    @property
    def capacity(self) -> int:
        return self.means.shape[-2]

    @property
    def densities(self) -> jax.Array:
        return jnp.exp(self.log_densities)

    @property
    def opacities(self) -> jax.Array:
        return jax.nn.sigmoid(self.opacity_logits)

    @property
    def scales(self) -> jax.Array:
        return jnp.exp(self.log_scales)

    def replace(self, **kw) -> RadSplats:
        return dataclasses.replace(self, **kw)


Splats = TypeVar("Splats", RGBSplats, RadSplats)


def splat_covariances(splats: RGBSplats | RadSplats) -> jax.Array:
    """[C, 3, 3] covariances of every slot (inactive slots included)."""
    return covariance(splats.log_scales, splats.quats)


def num_active(splats: RGBSplats | RadSplats) -> int:
    """Number of active slots (host-side integer)."""
    return int(np.asarray(splats.active).sum())


def _check_points(points: ArrayLike, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, 3] with N >= 1, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains non-finite values")
    return p


def _capacity(n: int, capacity: int | None) -> int:
    cap = n if capacity is None else int(capacity)
    if cap < n:
        raise ValueError(f"capacity ({cap}) must be >= number of points ({n})")
    return cap


def knn_log_scales(points: ArrayLike, *, k: int = 3, min_dist: float = 1e-7) -> np.ndarray:
    """Isotropic log-scales from the mean distance to the k nearest neighbours (3DGS init).

    Args:
      points: [N, 3] positions.
      k: neighbours averaged (3DGS uses the mean squared distance of 3).

    Returns:
      [N, 3] float32 log standard deviations, log(sqrt(mean d²)).
    """
    p = _check_points(points, "points")
    kk = min(k, len(p) - 1)
    if kk < 1:
        return np.zeros((len(p), 3), np.float32)
    d, _ = cKDTree(p).query(p, k=kk + 1)
    mean_sq = np.mean(np.square(d[:, 1:]), axis=1)
    ls = 0.5 * np.log(np.maximum(mean_sq, min_dist**2))
    return np.repeat(ls[:, None], 3, axis=1).astype(np.float32)


def _pad(x: np.ndarray, cap: int, fill=0.0) -> np.ndarray:
    out = np.full((cap,) + x.shape[1:], fill, dtype=x.dtype)
    out[: len(x)] = x
    return out


def rgb_splats_from_points(points: ArrayLike, colors: ArrayLike | None = None, *,
                           sh_degree: int = 3, capacity: int | None = None,
                           log_scales: ArrayLike | None = None,
                           opacity: float = 0.1) -> RGBSplats:
    """RGB splats centred on points (3DGS initialisation).

    Args:
      points: [N, 3] centres (e.g. SfM points).
      colors: [N, 3] RGB in [0, 1] for the DC term (default mid-grey).
      sh_degree: 0..3; higher-order coefficients start at zero.
      capacity: C ≥ N slots (default N); slots N..C-1 are inactive.
      log_scales: [N, 3] (default: :func:`knn_log_scales`).
      opacity: initial opacity in (0, 1).

    Returns:
      An :class:`RGBSplats` with identity rotations.
    """
    p = _check_points(points, "points")
    n = len(p)
    cap = _capacity(n, capacity)
    k = sh_lib.num_sh_coeffs(sh_degree)
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    c = np.full((n, 3), 0.5, np.float32) if colors is None else np.asarray(colors, np.float32)
    if c.shape != (n, 3):
        raise ValueError(f"colors must have shape [{n}, 3], got {c.shape}")
    ls = knn_log_scales(p) if log_scales is None else np.asarray(log_scales, np.float32)
    if ls.shape != (n, 3):
        raise ValueError(f"log_scales must have shape [{n}, 3], got {ls.shape}")
    shc = np.zeros((n, k, 3), np.float32)
    shc[:, 0] = (c - 0.5) / sh_lib.SH_C0
    quats = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    logit = float(np.log(opacity / (1 - opacity)))
    return RGBSplats(
        means=jnp.asarray(_pad(p, cap)),
        log_scales=jnp.asarray(_pad(ls, cap)),
        quats=jnp.asarray(_pad(quats, cap)),
        opacity_logits=jnp.asarray(_pad(np.full(n, logit, np.float32), cap, -10.0)),
        sh=jnp.asarray(_pad(shc, cap)),
        active=jnp.asarray(_pad(np.ones(n, bool), cap, False)),
    )


def rad_splats_from_points(points: ArrayLike, densities: ArrayLike | float = 0.01, *,
                           capacity: int | None = None, log_scales: ArrayLike | None = None,
                           opacity: float = 0.1, num_features: int = 1) -> RadSplats:
    """Radiative splats centred on points (e.g. ACUI samples).

    Args:
      points: [N, 3] centres, mm.
      densities: [N] or scalar peak densities ρ > 0 (1/mm).
      capacity: C ≥ N slots.
      log_scales: [N, 3] (default: :func:`knn_log_scales`).
      opacity: initial opacity (``opacity_logits``).
      num_features: F, length of the X-Gaussian feature vector (initialised to ρ).

    Returns:
      A :class:`RadSplats` with identity rotations and zero colours.
    """
    p = _check_points(points, "points")
    n = len(p)
    cap = _capacity(n, capacity)
    rho = np.broadcast_to(np.asarray(densities, np.float32), (n,)).copy()
    if not np.all(rho > 0):
        raise ValueError("densities must be > 0 (they are stored as log_densities)")
    ls = knn_log_scales(p) if log_scales is None else np.asarray(log_scales, np.float32)
    if ls.shape != (n, 3):
        raise ValueError(f"log_scales must have shape [{n}, 3], got {ls.shape}")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    quats = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    logit = float(np.log(opacity / (1 - opacity)))
    return RadSplats(
        means=jnp.asarray(_pad(p, cap)),
        log_scales=jnp.asarray(_pad(ls, cap)),
        quats=jnp.asarray(_pad(quats, cap)),
        log_densities=jnp.asarray(_pad(np.log(rho), cap, -30.0)),
        opacity_logits=jnp.asarray(_pad(np.full(n, logit, np.float32), cap, -10.0)),
        features=jnp.asarray(_pad(np.repeat(rho[:, None], num_features, 1), cap)),
        colors=jnp.zeros((cap, 3), jnp.float32),
        active=jnp.asarray(_pad(np.ones(n, bool), cap, False)),
    )


def select_active(splats: Splats) -> Splats:
    """Compact to the active slots (host side; capacity becomes N)."""
    idx = np.flatnonzero(np.asarray(splats.active))
    return jax.tree_util.tree_map(lambda x: x[idx], splats)


def pad_to_capacity(splats: Splats, capacity: int) -> Splats:
    """Grow the capacity to ``capacity`` with inactive slots (host side)."""
    c = splats.capacity
    if capacity < c:
        raise ValueError(f"capacity ({capacity}) must be >= current capacity ({c})")
    extra = capacity - c

    def grow(x):
        return jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], x.dtype)], axis=0)

    out = jax.tree_util.tree_map(grow, splats)
    quats = out.quats.at[c:, 0].set(1.0)
    return out.replace(quats=quats)


def concatenate(a: Splats, b: Splats) -> Splats:
    """Concatenate two sets of the same type (capacity C_a + C_b; masks kept).

    Raises:
      ValueError: if the types or the per-splat field shapes (SH degree, F) differ.
    """
    if type(a) is not type(b):
        raise ValueError(f"cannot concatenate {type(a).__name__} with {type(b).__name__}")
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    for x, y in zip(la, lb, strict=True):
        if x.shape[1:] != y.shape[1:]:
            raise ValueError(f"per-splat field shapes differ: {x.shape[1:]} vs {y.shape[1:]}")
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def transform_splats(splats: Splats, rotation: ArrayLike, translation: ArrayLike,
                     scale: ArrayLike = 1.0) -> Splats:
    """Apply the similarity p ↦ s·R·p + t to a splat set.

    Means map as points; covariances as Σ ↦ s² R Σ Rᵀ, realised by ``log_scales += log s`` and
    ``quats ↦ q_R ⊗ q``. SH coefficients of degree ≥ 1 of :class:`RGBSplats` are rotated so the
    view-dependent colour follows the object (colour seen from direction R·d after = colour seen
    from d before). Jit- and vmap-compatible.

    Args:
      splats: RGBSplats or RadSplats.
      rotation: [3, 3] proper rotation R (det +1).
      translation: [3] t.
      scale: scalar s > 0.
    """
    rot = jnp.asarray(rotation, splats.means.dtype)
    t = jnp.asarray(translation, splats.means.dtype)
    s = jnp.asarray(scale, splats.means.dtype)
    q_r = rotmat_to_quat(rot)
    qn = splats.quats / jnp.linalg.norm(splats.quats, axis=-1, keepdims=True)
    out = splats.replace(
        means=s * splats.means @ rot.T + t,
        log_scales=splats.log_scales + jnp.log(s),
        quats=quat_multiply(jnp.broadcast_to(q_r, qn.shape), qn),
    )
    if isinstance(splats, RGBSplats):
        out = out.replace(sh=sh_lib.rotate_sh(splats.sh, rot))
    return out
