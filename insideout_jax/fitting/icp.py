"""Trimmed point-to-point ICP (Besl & McKay 1992) in JAX, single and vmapped over clusters.

Each iteration finds, for every valid source point mapped by the current estimate, its nearest
valid target point (exact: chunked brute force), keeps the fraction ``trim`` with the smallest
distances (trimmed ICP, Chetverikov et al. 2002: partial overlap and outliers), and solves the
weighted Procrustes problem from the *original* source points to their matches, so the estimate is
always the whole source → target similarity. Options:

* ``with_scale``: similarity (Umeyama) or rigid;
* ``symmetric``: also match every target point to its nearest mapped source point (both sets
  trimmed separately). With two surfaces this stops the scale from collapsing onto a patch of the
  target, the failure of one-sided ICP with free scale;
* ``prior_weight`` λ: every valid source point is also paired with its position under ``init``
  with weight λ (relative to the data pairs), which pulls an ill-posed fit (a flat or tiny
  cluster) toward the starting transform instead of letting it slide.

:func:`icp_batched` runs clusters padded to a fixed size, with masks, through ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from insideout_jax.fitting.neighbors import (
    build_grid,
    grid_nearest,
    nearest_neighbor,
    pairwise_sqdist,
)
from insideout_jax.fitting.procrustes import Similarity, identity_similarity, procrustes

__all__ = ["ICPResult", "icp", "icp_batched", "trimmed_inliers"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ICPResult:
    """Result of :func:`icp` (leading batch axis [B] for :func:`icp_batched`).

    Attributes:
      transform: the source → target :class:`Similarity`.
      rmse: [] float32 RMS source → target nearest distance over the trimmed inliers, at the end
        (target units).
      rmse_init: [] float32 the same at the initial transform.
      n_iter: [] int32 iterations run.
    """

    transform: Similarity
    rmse: jax.Array
    rmse_init: jax.Array
    n_iter: jax.Array


def trimmed_inliers(sqdist: jax.Array, valid: jax.Array, trim: jax.Array | float) -> jax.Array:
    """[M] bool: the ⌈trim·n_valid⌉ valid entries with the smallest distances.

    Args:
      sqdist: [M] float32 squared distances.
      valid: [M] bool mask.
      trim: kept fraction in (0, 1].
    """
    d = jnp.where(valid, sqdist, jnp.inf)
    n_valid = jnp.sum(valid)
    keep = jnp.clip(jnp.ceil(trim * n_valid).astype(jnp.int32), 1, d.shape[0])
    thr = jnp.sort(d)[keep - 1]
    return valid & (d <= thr)


def _nn(q, p, p_mask, brute_small):
    if brute_small:  # small padded clusters under vmap: one [M, P] block
        d = jnp.where(p_mask[None, :], pairwise_sqdist(q, p), jnp.inf)
        idx = jnp.argmin(d, axis=1)
        return idx, jnp.take_along_axis(d, idx[:, None], axis=1)[:, 0]
    return nearest_neighbor(q, p, p_mask)


def _icp_core(src, dst, src_mask, dst_mask, init, iters, trim, prior_weight, tol, dst_normals,
              *, with_scale, symmetric, brute_small):
    src = src.astype(jnp.float32)
    dst = dst.astype(jnp.float32)
    w_src = src_mask.astype(jnp.float32)
    n_src = jnp.maximum(jnp.sum(w_src), 1.0)
    anchors = init.apply(src)
    # Extent of the target, to make the stopping tolerance unit-free.
    wd = dst_mask.astype(jnp.float32)
    mu_d = (wd @ dst) / jnp.maximum(jnp.sum(wd), 1.0)
    extent = jnp.sqrt(jnp.sum(wd * jnp.sum((dst - mu_d) ** 2, -1)) / jnp.maximum(jnp.sum(wd), 1.0))
    extent = jnp.maximum(extent, 1e-12)

    # The target does not move: bin it once (grid search) when brute force would be costly.
    dst_grid = None
    if not brute_small and src.shape[0] * dst.shape[0] > 4_000_000:
        dst_grid = build_grid(dst, dst_mask)

    def residual(tr):
        if dst_grid is None:
            idx, d2 = _nn(tr.apply(src), dst, dst_mask, brute_small)
        else:
            idx, d2 = grid_nearest(dst_grid, tr.apply(src))
        inl = trimmed_inliers(d2, src_mask, trim)
        rmse = jnp.sqrt(jnp.sum(jnp.where(inl, d2, 0.0)) / jnp.maximum(jnp.sum(inl), 1))
        return idx, inl, rmse

    def step_point(tr):
        """Point-to-point update: Procrustes from the source to its (trimmed) matches."""
        moved = tr.apply(src)
        idx, inl, _ = residual(tr)
        s_pts, d_pts, w = [src], [dst[idx]], [inl.astype(jnp.float32)]
        if symmetric:
            jdx, e2 = _nn(dst, moved, src_mask, brute_small)
            inl_d = trimmed_inliers(e2, dst_mask, trim)
            # Balance the two directions so each carries the weight of its own inliers' count.
            s_pts.append(src[jdx])
            d_pts.append(dst)
            w.append(inl_d.astype(jnp.float32) * jnp.sum(inl) / jnp.maximum(jnp.sum(inl_d), 1))
        if prior_weight is not None:
            s_pts.append(src)
            d_pts.append(anchors)
            w.append(w_src * prior_weight * jnp.sum(inl) / n_src)
        return procrustes(jnp.concatenate(s_pts), jnp.concatenate(d_pts), jnp.concatenate(w),
                          with_scale=with_scale)

    def step_plane(tr):
        """Point-to-plane Gauss-Newton update (Chen & Medioni): a small similarity
        m ↦ e^δ·exp([ω]ₓ)·m + τ applied to the moved points m, solved from the linearised
        residuals nᵀ(m + δ·m + ω × m + τ − q) in coordinates centred on the target."""
        moved = tr.apply(src) - mu_d
        idx, inl, _ = residual(tr)
        q = dst[idx] - mu_d
        n = dst_normals[idx]
        w = inl.astype(jnp.float32)
        cols = [jnp.cross(moved, n), n]
        if with_scale:
            cols.append(jnp.sum(n * moved, -1, keepdims=True))
        jac = jnp.concatenate(cols, axis=-1) / extent  # unit-free columns
        r = jnp.sum(n * (moved - q), -1) / extent
        ata = (jac * w[:, None]).T @ jac
        atb = (jac * w[:, None]).T @ r
        if prior_weight is not None:
            # The prior on the full offsets m − a from the anchors, three rows per point:
            # ∂(m + ω×m + τ + δ·m − a)_c / ∂(ω, τ, δ) = (m × e_c, e_c, m_c).
            ex = jnp.eye(3, dtype=jnp.float32)
            rows = []
            for c in range(3):
                rc = [jnp.cross(moved, jnp.broadcast_to(ex[c], moved.shape)),
                      jnp.broadcast_to(ex[c], moved.shape)]
                if with_scale:
                    rc.append(moved[:, c:c + 1])
                rows.append(jnp.concatenate(rc, -1) / extent)
            jpr = jnp.concatenate(rows, 0)
            rpr = jnp.concatenate([(moved - (anchors - mu_d))[:, c] for c in range(3)], 0) / extent
            wpr = jnp.tile(w_src, 3) * prior_weight * jnp.sum(inl) / n_src
            ata = ata + (jpr * wpr[:, None]).T @ jpr
            atb = atb + (jpr * wpr[:, None]).T @ rpr
        k = ata.shape[0]
        ata = ata + 1e-6 * jnp.eye(k) * (1.0 + jnp.trace(ata) / k)
        x = -jnp.linalg.solve(ata, atb)
        omega, tau = x[:3], x[3:6] * extent
        delta = x[6] if with_scale else 0.0
        th = jnp.linalg.norm(omega)
        kx = jnp.array([[0.0, -omega[2], omega[1]], [omega[2], 0.0, -omega[0]],
                        [-omega[1], omega[0], 0.0]])
        sinc = jnp.where(th > 1e-8, jnp.sin(th) / jnp.where(th > 1e-8, th, 1.0), 1.0)
        cosc = jnp.where(th > 1e-8, (1 - jnp.cos(th)) / jnp.where(th > 1e-8, th * th, 1.0), 0.5)
        rot = jnp.eye(3) + sinc * kx + cosc * kx @ kx
        upd = Similarity(rot, tau - jnp.exp(delta) * rot @ mu_d + mu_d, jnp.exp(delta))
        return upd.compose(tr)

    step = step_point if dst_normals is None else step_plane

    def change(a, b):
        dr = jnp.sqrt(jnp.sum((a.rotation - b.rotation) ** 2))
        ds = jnp.abs(a.scale / b.scale - 1.0)
        dt = jnp.linalg.norm(a.translation - b.translation) / extent
        return dr + ds + dt

    def cond(st):
        _, it, done = st
        return (it < iters) & ~done

    def body(st):
        tr, it, _ = st
        new = step(tr)
        return new, it + 1, change(new, tr) < tol

    tr, it, _ = jax.lax.while_loop(cond, body, (init, jnp.int32(0), jnp.bool_(False)))
    _, _, rmse = residual(tr)
    _, _, rmse0 = residual(init)
    return ICPResult(tr, rmse, rmse0, it)


@partial(jax.jit, static_argnames=("with_scale", "symmetric"))
def _icp_jit(src, dst, src_mask, dst_mask, init, iters, trim, prior_weight, tol, dst_normals, *,
             with_scale, symmetric):
    return _icp_core(src, dst, src_mask, dst_mask, init, iters, trim, prior_weight, tol,
                     dst_normals, with_scale=with_scale, symmetric=symmetric, brute_small=False)


@partial(jax.jit, static_argnames=("with_scale", "symmetric"))
def _icp_vmap(src, dst, src_mask, dst_mask, init, iters, trim, prior_weight, tol, dst_normals, *,
              with_scale, symmetric):
    core = partial(_icp_core, with_scale=with_scale, symmetric=symmetric, brute_small=True)
    axes = (0, 0, 0, 0, 0, None, None, None, None, None if dst_normals is None else 0)
    return jax.vmap(core, in_axes=axes)(src, dst, src_mask, dst_mask, init, iters, trim,
                                        prior_weight, tol, dst_normals)


def _prior(prior_weight):
    """None when there is no prior: the prior's terms are then not traced at all."""
    return None if prior_weight == 0 else jnp.float32(prior_weight)


def _check_opts(iters, trim, prior_weight, tol):
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    if not 0.0 < trim <= 1.0:
        raise ValueError(f"trim must be in (0, 1], got {trim}")
    if not prior_weight >= 0.0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def _as_points(x, name, batched=False):
    a = jnp.asarray(x, jnp.float32)
    want = 3 if batched else 2
    if a.ndim != want or a.shape[-1] != 3 or a.shape[-2] == 0:
        shape = "[B, M, 3]" if batched else "[M, 3]"
        raise ValueError(f"{name} must have shape {shape} with M >= 1, got {a.shape}")
    return a


def _as_mask(m, shape, name):
    if m is None:
        return jnp.ones(shape, bool)
    m = jnp.asarray(m, bool)
    if m.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {m.shape}")
    return m


def icp(src: ArrayLike, dst: ArrayLike, *, src_mask: ArrayLike | None = None,
        dst_mask: ArrayLike | None = None, init: Similarity | None = None, iters: int = 50,
        trim: float = 0.9, with_scale: bool = False, symmetric: bool = False,
        prior_weight: float = 0.0, tol: float = 1e-6, dst_normals: ArrayLike | None = None
        ) -> ICPResult:
    """Trimmed ICP from ``src`` to ``dst`` (see the module docstring).

    Args:
      src: [M, 3] float source points (e.g. RGB splat centres).
      dst: [P, 3] float target points (e.g. the radiative set's surface samples, mm).
      src_mask: [M] bool valid source points (default all).
      dst_mask: [P] bool valid target points (default all).
      init: starting source → target similarity (default identity).
      iters: maximum iterations.
      trim: fraction of valid points kept as inliers each iteration, in (0, 1].
      with_scale: estimate a similarity (True) or a rigid motion (False).
      symmetric: also use target → source matches.
      prior_weight: λ ≥ 0, pull toward ``init`` (0 = none).
      tol: stop when ‖ΔR‖_F + |Δs/s| + ‖Δt‖/extent(dst) < tol.
      dst_normals: [P, 3] float unit normals of the target (sign irrelevant); when given the
        update is point-to-plane (``symmetric`` is then ignored).

    Returns:
      An :class:`ICPResult`.
    """
    s = _as_points(src, "src")
    d = _as_points(dst, "dst")
    _check_opts(iters, trim, prior_weight, tol)
    sm = _as_mask(src_mask, s.shape[:1], "src_mask")
    dm = _as_mask(dst_mask, d.shape[:1], "dst_mask")
    init = identity_similarity() if init is None else init
    nrm = None if dst_normals is None else _as_points(dst_normals, "dst_normals")
    if nrm is not None and nrm.shape != d.shape:
        raise ValueError(f"dst_normals must have the shape of dst {d.shape}, got {nrm.shape}")
    return _icp_jit(s, d, sm, dm, init, jnp.int32(iters), jnp.float32(trim),
                    _prior(prior_weight), jnp.float32(tol), nrm, with_scale=with_scale,
                    symmetric=symmetric and nrm is None)


def icp_batched(src: ArrayLike, dst: ArrayLike, src_mask: ArrayLike, dst_mask: ArrayLike, *,
                init: Similarity | None = None, iters: int = 20, trim: float = 0.9,
                with_scale: bool = False, symmetric: bool = False, prior_weight: float = 0.0,
                tol: float = 1e-6, dst_normals: ArrayLike | None = None) -> ICPResult:
    """:func:`icp` on B independent pairs padded to fixed sizes, vmapped (one compiled program).

    Args:
      src: [B, M, 3] float source clusters, padded; ``src_mask`` marks the real points.
      dst: [B, P, 3] float target sets, padded; ``dst_mask`` marks the real points.
      src_mask: [B, M] bool.
      dst_mask: [B, P] bool.
      init: batched starting similarities (rotation [B, 3, 3], translation [B, 3], scale [B]);
        default identity for all.
      iters, trim, with_scale, symmetric, prior_weight, tol: as in :func:`icp`.
      dst_normals: [B, P, 3] optional target normals (point-to-plane).

    Returns:
      An :class:`ICPResult` with a leading [B] axis on every field. A pair whose masks hold no
      point returns the identity (or ``init``).
    """
    s = _as_points(src, "src", batched=True)
    d = _as_points(dst, "dst", batched=True)
    if s.shape[0] != d.shape[0]:
        raise ValueError(f"src and dst must have the same batch size, got {s.shape[0]} and {d.shape[0]}")
    _check_opts(iters, trim, prior_weight, tol)
    sm = _as_mask(src_mask, s.shape[:2], "src_mask")
    dm = _as_mask(dst_mask, d.shape[:2], "dst_mask")
    b = s.shape[0]
    if init is None:
        init = Similarity(jnp.broadcast_to(jnp.eye(3), (b, 3, 3)), jnp.zeros((b, 3)), jnp.ones(b))
    nrm = None if dst_normals is None else _as_points(dst_normals, "dst_normals", batched=True)
    if nrm is not None and nrm.shape != d.shape:
        raise ValueError(f"dst_normals must have the shape of dst {d.shape}, got {nrm.shape}")
    return _icp_vmap(s, d, sm, dm, init, jnp.int32(iters), jnp.float32(trim),
                     _prior(prior_weight), jnp.float32(tol), nrm, with_scale=with_scale,
                     symmetric=symmetric and nrm is None)
