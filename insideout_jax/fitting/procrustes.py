"""Similarity transforms and weighted Procrustes (Umeyama 1991).

A similarity maps points as ``p ↦ s·R·p + t`` with R a proper rotation (det +1), s > 0 and t a
translation, the same convention as :func:`insideout_jax.splats.transform_splats` and
``truth/transform.json``. Everything here is jit- and vmap-compatible; batches of transforms are
plain leading axes (``rotation: [..., 3, 3]``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from insideout_jax import xla

__all__ = [
    "Similarity",
    "identity_similarity",
    "procrustes",
    "similarity_errors",
    "rotation_angle",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Similarity:
    """The map p ↦ s·R·p + t.

    Attributes:
      rotation: [..., 3, 3] float32 proper rotation R.
      translation: [..., 3] float32 t (units of the target frame, e.g. mm).
      scale: [...] float32 s > 0 (target units per source unit).
    """

    rotation: jax.Array
    translation: jax.Array
    scale: jax.Array

    def apply(self, points: jax.Array) -> jax.Array:
        """[..., M, 3] source points → [..., M, 3] target points."""
        rt = jnp.swapaxes(self.rotation, -1, -2)
        return (self.scale[..., None, None] * jnp.matmul(points, rt, precision=xla.HIGHEST)
                + self.translation[..., None, :])

    def compose(self, first: Similarity) -> Similarity:
        """``self ∘ first``: apply ``first`` then ``self``."""
        rot = jnp.matmul(self.rotation, first.rotation, precision=xla.HIGHEST)
        moved = jnp.einsum("...ij,...j->...i", self.rotation, first.translation, precision=xla.HIGHEST)
        t = self.scale[..., None] * moved + self.translation
        return Similarity(rot, t, self.scale * first.scale)

    def inverse(self) -> Similarity:
        """The inverse map p ↦ (1/s)·Rᵀ·(p − t)."""
        rt = jnp.swapaxes(self.rotation, -1, -2)
        inv_s = 1.0 / self.scale
        t = jnp.einsum("...ij,...j->...i", rt, self.translation, precision=xla.HIGHEST)
        return Similarity(rt, -inv_s[..., None] * t, inv_s)

    def as_dict(self) -> dict:
        """JSON-friendly ``{"rotation", "translation", "scale"}`` (``truth/transform.json`` schema)."""
        return {"rotation": jnp.asarray(self.rotation).tolist(),
                "translation": jnp.asarray(self.translation).tolist(),
                "scale": float(self.scale)}


def identity_similarity(dtype=jnp.float32) -> Similarity:
    """The identity map (R = I, t = 0, s = 1)."""
    return Similarity(jnp.eye(3, dtype=dtype), jnp.zeros(3, dtype), jnp.ones((), dtype))


def procrustes(src: ArrayLike, dst: ArrayLike, weights: ArrayLike | None = None, *,
               with_scale: bool = True) -> Similarity:
    """Weighted least-squares similarity from ``src`` to ``dst`` (Umeyama), never a reflection.

    Minimises Σᵢ wᵢ‖s·R·srcᵢ + t − dstᵢ‖² over proper rotations R, s > 0 (or s = 1 when
    ``with_scale`` is False) and t. With the weighted centroids μ_s, μ_d, the cross-covariance
    M = Σ wᵢ (dstᵢ − μ_d)(srcᵢ − μ_s)ᵀ / Σ w = U D Vᵀ and E = diag(1, 1, sign det(U Vᵀ)):
    R = U E Vᵀ, s = tr(D E) / σ²_s, t = μ_d − s R μ_s. Degenerate inputs (zero total weight or all
    source points coincident) give R = I, s = 1 and the centroid shift. Jit- and vmap-compatible
    (batch over leading axes with ``jax.vmap``); inputs are not validated (no value checks in jit).

    Args:
      src: [M, 3] float source points.
      dst: [M, 3] float corresponding target points.
      weights: [M] float ≥ 0 (default all ones); zero weight = padding / outlier.
      with_scale: estimate s (True) or fix s = 1 (rigid).

    Returns:
      A :class:`Similarity` with scalar scale.
    """
    src = jnp.asarray(src)
    dst = jnp.asarray(dst, src.dtype)
    w = jnp.ones(src.shape[:-1], src.dtype) if weights is None else jnp.asarray(weights, src.dtype)
    wsum = jnp.sum(w)
    ok = wsum > 0
    wn = w / jnp.where(ok, wsum, 1.0)
    mu_s = jnp.matmul(wn, src, precision=xla.HIGHEST)
    mu_d = jnp.matmul(wn, dst, precision=xla.HIGHEST)
    xs = src - mu_s
    xd = dst - mu_d
    cov = jnp.matmul((xd * wn[:, None]).T, xs, precision=xla.HIGHEST)  # [3, 3] = Σ w (d − μd)(s − μs)ᵀ / Σ w
    var_s = jnp.sum(wn * jnp.sum(xs * xs, axis=-1))
    u, d, vt = jnp.linalg.svd(cov)
    sign = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
    sign = jnp.where(sign == 0, 1.0, sign).astype(src.dtype)
    e = jnp.array([1.0, 1.0, 0.0], src.dtype) + jnp.array([0.0, 0.0, 1.0], src.dtype) * sign
    rot = jnp.matmul(u * e, vt, precision=xla.HIGHEST)
    degenerate = jnp.logical_or(~ok, var_s <= 1e-30)
    rot = jnp.where(degenerate, jnp.eye(3, dtype=src.dtype), rot)
    if with_scale:
        s = jnp.sum(d * e) / jnp.where(degenerate, 1.0, var_s)
        s = jnp.where(degenerate | (s <= 0), 1.0, s)
    else:
        s = jnp.ones((), src.dtype)
    t = mu_d - s * jnp.matmul(rot, mu_s, precision=xla.HIGHEST)
    return Similarity(rot, t, s)


def rotation_angle(rotation: jax.Array) -> jax.Array:
    """Angle in [0, π] (radians) of rotation matrices [..., 3, 3].

    atan2(sin θ, cos θ) with sin θ from the skew part and cos θ from the trace: accurate for small
    angles too (arccos of the trace loses ~√eps there).
    """
    r = rotation
    cos = (jnp.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = jnp.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                      r[..., 1, 0] - r[..., 0, 1]], axis=-1)
    return jnp.arctan2(jnp.linalg.norm(skew, axis=-1) / 2.0, cos)


def similarity_errors(estimate: Similarity, truth: Similarity, *, center: ArrayLike | None = None
                      ) -> dict[str, jax.Array]:
    """Errors of an estimated map against the true one (EVALUATION.md §7, ``alignment``).

    Args:
      estimate: estimated source → target similarity.
      truth: true source → target similarity.
      center: [3] optional source-frame point (e.g. the object's centroid) at which the translation
        error is measured; default the source origin (i.e. ``‖t_est − t_true‖``).

    Returns:
      ``rot_deg``: angle of R_est R_trueᵀ in degrees; ``scale_rel``: |s_est/s_true − 1|;
      ``trans``: ‖estimate(c) − truth(c)‖ in target units (mm).
    """
    rel = estimate.rotation @ jnp.swapaxes(truth.rotation, -1, -2)
    rot_deg = jnp.degrees(rotation_angle(rel))
    scale_rel = jnp.abs(estimate.scale / truth.scale - 1.0)
    c = jnp.zeros(3, estimate.translation.dtype) if center is None else jnp.asarray(center)
    pe = estimate.apply(c[None])[..., 0, :]
    pt = truth.apply(c[None])[..., 0, :]
    return {"rot_deg": rot_deg, "scale_rel": scale_rel,
            "trans": jnp.linalg.norm(pe - pt, axis=-1)}
