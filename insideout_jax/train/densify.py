"""Adaptive density control (3DGS clone / split / prune, opacity reset) in fixed-capacity buffers.

Runs on the host between jitted training blocks (every few hundred iterations), so its index
bookkeeping is NumPy; the arrays it returns keep a static capacity, which grows only in large steps
(× ``grow_factor``) when the free slots run out, so the training step recompiles rarely. Once the
densification window is over, :func:`compact_train_state` drops the free slots (once: nothing is
pruned afterwards), so the last stretch of training does not pay for the slots it never uses.

For :class:`RadSplats` the operations **preserve mass** (∫ρG): a clone halves the density of both
copies; a split into two children with scales / φ multiplies each child's density by φ³ / 2.
Nothing is dropped silently: when even ``max_capacity`` cannot hold every candidate, the candidates
with the largest gradient are densified and the rest are counted in the returned ``skipped``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax.splats import RadSplats, RGBSplats, quat_to_rotmat
from insideout_jax.train.optim import merge_params, remap_optimizer_state, split_params

__all__ = ["DensifyConfig", "densify_and_prune", "reset_opacity", "densify_train_state",
           "densify_if_due", "initial_train_state", "compact_train_state", "densification_over",
           "slot_bucket"]


@dataclasses.dataclass(frozen=True)
class DensifyConfig:
    """Densification constants (3DGS defaults, Kerbl et al. 2023, ``arguments/__init__.py``).

    Attributes:
      grad_threshold: average positional-gradient norm above which a splat is densified (units of
        the statistic the trainer accumulates).
      grad_quantile: when > 0, a unit-free criterion as well: a splat is densified only if its
        statistic is also at or above this quantile of the statistics of the active splats seen
        since the last step (0.9: the top 10 %). With ``grad_threshold = 0`` this alone decides,
        whatever the object's density range or the loss's scale.
      percent_dense: splats with largest scale ≤ percent_dense · extent are cloned, else split.
      min_opacity: prune below this opacity (RGB) or below ``min_density`` (radiative).
      min_density: prune radiative splats whose peak density is below this (1/mm).
      min_density_fraction: also prune radiative splats below this fraction of the 99th
        percentile of the active densities (unit-free: ACUI leaves most splats in the air with
        densities ~1e-3 of the object's; they cost time and explain nothing).
      max_scale_fraction: prune splats larger than this fraction of the scene extent.
      split_factor: φ, scale divisor of split children (3DGS: 1.6).
      grow_factor: capacity multiplier when free slots run out.
      max_capacity: never grow beyond this many slots.
      compact: after the last densification, shrink the buffers to :func:`slot_bucket` of the
        active count (speed only: the active splats and their optimizer moments are kept, in order).
    """

    grad_threshold: float = 0.0002
    grad_quantile: float = 0.0
    percent_dense: float = 0.01
    min_opacity: float = 0.005
    min_density: float = 1e-5
    min_density_fraction: float = 0.0
    max_scale_fraction: float = 0.1
    split_factor: float = 1.6
    grow_factor: float = 1.5
    max_capacity: int = 2_000_000
    compact: bool = True

    def __post_init__(self):
        if not 0.0 <= self.grad_quantile < 1.0:
            raise ValueError(f"DensifyConfig.grad_quantile must be in [0, 1), got {self.grad_quantile}")


def _pad_rows(x: np.ndarray, cap: int, fill) -> np.ndarray:
    out = np.empty((cap,) + x.shape[1:], x.dtype)
    out[: len(x)] = x
    out[len(x):] = fill
    return out


def _fill_values(params: dict) -> dict:
    """Per-field values of an unused slot (never rendered: opacity / density far below any floor)."""
    fill = {k: 0.0 for k in params}
    fill["quats"] = np.array([1, 0, 0, 0], np.float32)
    fill["opacity_logits"] = -10.0
    if "log_densities" in params:
        fill["log_densities"] = -30.0
    return fill


def slot_bucket(n: int) -> int:
    """Smallest buffer size ≥ n on a ladder of 8 sizes per octave (≥ 64): at most 12.5 % (≥ 16
    slots) unused, and few distinct sizes, so few recompilations."""
    n = max(int(n), 64)
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def compact_train_state(state: dict, optimizer: optax.GradientTransformation) -> dict:
    """A trainer's state with its buffers shrunk to :func:`slot_bucket` (number active).

    The active slots move to the front in their order, with their parameters, optimizer moments
    and gradient statistics; the rest are unused slots. Returns ``state`` itself when that would
    not shrink it.
    """
    act = np.asarray(state["active"])
    idx = np.flatnonzero(act)
    cap = slot_bucket(len(idx))
    if cap >= len(act):
        return state
    fill = _fill_values(state["params"])
    params = {k: jnp.asarray(_pad_rows(np.asarray(v)[idx], cap, fill[k]))
              for k, v in state["params"].items()}
    src = _pad_rows(idx, cap, 0)
    unused = np.arange(cap) >= len(idx)
    keep = lambda x: jnp.asarray(_pad_rows(np.asarray(x, np.float32)[idx], cap, 0.0))  # noqa: E731
    return dict(state, params=params, active=jnp.asarray(~unused),
                opt_state=remap_optimizer_state(optimizer, state["opt_state"], jnp.asarray(src),
                                                jnp.asarray(unused)),
                grad_acc=keep(state["grad_acc"]), count=keep(state["count"]))


def densification_over(step: int, *, block: int, until: int, every: int) -> bool:
    """Whether no densification can follow the block that ended at ``step`` (the next block
    ends past ``until``, or the trainer never densifies): from then on the buffers can be
    compacted (:func:`compact_train_state`)."""
    return every <= 0 or step + block > until


def densify_and_prune(key: jax.Array, splats: RGBSplats | RadSplats, opt_state,
                      optimizer: optax.GradientTransformation, avg_grad: jax.Array, *,
                      scene_extent: float, cfg: DensifyConfig = DensifyConfig()):
    """One densification step.

    Args:
      key: PRNG key (split positions).
      splats: the current set (capacity C).
      opt_state: the optimizer state for ``split_params(splats)[0]``.
      optimizer: the transformation that made ``opt_state``.
      avg_grad: [C] average positional-gradient norm since the last step (0 for unseen).
      scene_extent: scene radius in scene units (3DGS: camera extent).
      cfg: constants.

    Returns:
      (splats, opt_state, info) with info = dict(cloned, split, pruned, skipped, capacity).
    """
    params, active = split_params(splats)
    p = {k: np.asarray(v) for k, v in params.items()}
    act = np.asarray(active).copy()
    cap = len(act)
    grad = np.asarray(avg_grad, np.float64)
    max_scale = np.exp(p["log_scales"]).max(axis=1)
    radiative = isinstance(splats, RadSplats)

    if radiative:
        dens = np.exp(p["log_densities"])
        floor = cfg.min_density
        if cfg.min_density_fraction > 0 and act.any():
            floor = max(floor, cfg.min_density_fraction * float(np.percentile(dens[act], 99)))
        weak = dens < floor
    else:
        weak = 1.0 / (1.0 + np.exp(-p["opacity_logits"])) < cfg.min_opacity
    prune = act & (weak | (max_scale > cfg.max_scale_fraction * scene_extent))
    act &= ~prune
    cand = act & (grad >= cfg.grad_threshold)
    if cfg.grad_quantile > 0:  # unit-free: also in the top fraction of the splats seen since the last step
        seen = act & (grad > 0)
        if seen.any():
            cand &= grad >= np.quantile(grad[seen], cfg.grad_quantile)
        cand &= seen
    small = max_scale <= cfg.percent_dense * scene_extent
    order = np.argsort(-grad[cand], kind="stable")
    cand_idx = np.flatnonzero(cand)[order]  # largest gradient first

    free = int((~act).sum())
    need = len(cand_idx)
    if need > free:
        new_cap = min(cfg.max_capacity, max(int(np.ceil(cap * cfg.grow_factor)), cap + need - free))
        new_cap = max(new_cap, cap)
    else:
        new_cap = cap
    room = free + (new_cap - cap)
    skipped = max(0, need - room)
    cand_idx = cand_idx[: need - skipped]

    fill = _fill_values(p)
    p = {k: _pad_rows(v, new_cap, fill[k]) for k, v in p.items()}
    act = _pad_rows(act, new_cap, False)
    src = np.arange(new_cap)
    src[cap:] = 0
    fresh = np.zeros(new_cap, bool)
    fresh[cap:] = True
    fresh[np.flatnonzero(prune)] = True

    targets = np.flatnonzero(~act)[: len(cand_idx)]
    is_clone = small[cand_idx]
    phi = cfg.split_factor
    sp_idx = cand_idx[~is_clone]
    rot = np.asarray(quat_to_rotmat(jnp.asarray(p["quats"][sp_idx]))) if len(sp_idx) else None
    z = np.asarray(jax.random.normal(key, (2, len(sp_idx), 3)))
    for k in p:  # copy parents into their new slots
        p[k][targets] = p[k][cand_idx]
    src[targets] = cand_idx
    fresh[targets] = True
    act[targets] = True
    if len(sp_idx):
        sp_t = targets[~is_clone]
        scales = np.exp(p["log_scales"][sp_idx])
        offs = np.einsum("nij,knj->kni", rot, scales[None] * z)
        mu = p["means"][sp_idx].copy()
        p["means"][sp_idx] = mu + offs[0]
        p["means"][sp_t] = mu + offs[1]
        for slot in (sp_idx, sp_t):
            p["log_scales"][slot] -= np.log(phi)
            if radiative:
                p["log_densities"][slot] += np.log(phi**3 / 2.0)
        fresh[sp_idx] = True
    if radiative and np.any(is_clone):
        for slot in (cand_idx[is_clone], targets[is_clone]):
            p["log_densities"][slot] -= np.log(2.0)

    new_params = {k: jnp.asarray(v) for k, v in p.items()}
    new_state = remap_optimizer_state(optimizer, opt_state, jnp.asarray(src), jnp.asarray(fresh))
    out = type(splats)(**new_params, active=jnp.asarray(act))
    info = dict(cloned=int(is_clone.sum()), split=int((~is_clone).sum()), pruned=int(prune.sum()),
                skipped=int(skipped), capacity=int(new_cap))
    return out, new_state, info


def reset_opacity(splats: RGBSplats | RadSplats, opt_state,
                  optimizer: optax.GradientTransformation, *, max_opacity: float = 0.01):
    """3DGS opacity reset: opacity ← min(opacity, max_opacity); its Adam moments restart."""
    cap_logit = float(np.log(max_opacity / (1.0 - max_opacity)))
    new = splats.replace(opacity_logits=jnp.minimum(splats.opacity_logits, cap_logit))
    def zero_opacity_moments(path, x):
        last = path[-1] if path else None
        is_field = isinstance(last, jax.tree_util.DictKey) and last.key == "opacity_logits"
        return jnp.zeros_like(x) if is_field else x

    return new, jax.tree_util.tree_map_with_path(zero_opacity_moments, opt_state)


def initial_train_state(splats, optimizer: optax.GradientTransformation) -> dict:
    """A densifying trainer's state dict: params, active, opt_state, grad_acc, count, step, and
    ``skipped``: the densification candidates left out at the capacity cap so far (checkpointed,
    shown in the progress bar, and returned in the training history)."""
    params, active = split_params(splats)
    c = splats.capacity
    return dict(params=params, active=active, opt_state=optimizer.init(params),
                grad_acc=jnp.zeros(c, jnp.float32), count=jnp.zeros(c, jnp.float32),
                skipped=jnp.zeros((), jnp.int32), step=0)


def densify_train_state(state: dict, like, key: jax.Array, optimizer: optax.GradientTransformation,
                        *, scene_extent: float, cfg: DensifyConfig, reset: bool = False) -> dict:
    """Densify a trainer's state dict (params, active, opt_state, grad_acc, count) between blocks.

    ``grad_acc / count`` is the averaged statistic; both restart at zero afterwards. With
    ``reset`` the 3DGS opacity reset follows. ``like`` is any splat set of the trained type.
    """
    sp = merge_params(like, state["params"], state["active"])
    avg = np.asarray(state["grad_acc"]) / np.maximum(np.asarray(state["count"]), 1.0)
    sp, opt_state, info = densify_and_prune(key, sp, state["opt_state"], optimizer, avg,
                                            scene_extent=scene_extent, cfg=cfg)
    if reset:
        sp, opt_state = reset_opacity(sp, opt_state, optimizer)
    params, active = split_params(sp)
    c = sp.capacity
    skipped = int(state.get("skipped", 0)) + int(info["skipped"])
    return dict(state, params=params, active=active, opt_state=opt_state,
                grad_acc=jnp.zeros(c, jnp.float32), count=jnp.zeros(c, jnp.float32),
                skipped=jnp.asarray(skipped, jnp.int32))


def densify_if_due(state: dict, like, key: jax.Array, optimizer: optax.GradientTransformation, *,
                   start: int, until: int, every: int, block: int, scene_extent: float,
                   cfg: DensifyConfig, reset_every: int | None = None) -> dict:
    """A trainer's ``after_block``: :func:`densify_train_state` when the block that just ended
    crossed a multiple of ``every`` inside [start, until] (``every`` ≤ 0: never).

    With ``reset_every`` the 3DGS opacity reset follows on the densification steps that also
    cross a multiple of it (after ``start``). The split positions use ``key`` folded with the step.
    With ``cfg.compact``, the first call after which no densification can follow (the next block
    ends past ``until``) also compacts the buffers (:func:`compact_train_state`).
    """
    step = int(state["step"])
    if every > 0 and start <= step <= until and step % every < block:
        reset = reset_every is not None and step % reset_every < block and step > start
        state = densify_train_state(state, like, jax.random.fold_in(key, 10_000_000 + step),
                                    optimizer, scene_extent=scene_extent, cfg=cfg, reset=reset)
    if cfg.compact and densification_over(step, block=block, until=until, every=every):
        state = compact_train_state(state, optimizer)
    return state
