"""Training of the stack models: the shared loop, fixed-count relocation, and the 3D-splat trainer.

The loss is :func:`insideout_jax.stacks.model.frames_loss` (MedGS's, module docstring of
:mod:`insideout_jax.stacks.model`); :func:`fit_frames` runs it in jitted ``lax.scan`` blocks with
atomic checkpoints (:func:`insideout_jax.train.loop.run_training`), for this module's
:func:`train_stack` and for :func:`insideout_jax.stacks.folded.train_folded`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from insideout_jax.splats import quat_to_rotmat
from insideout_jax.stacks.frames import FrameStack
from insideout_jax.stacks.model import StackConfig, StackModel, _model, _params, stack_loss
from insideout_jax.train.loop import run_training
from insideout_jax.train.optim import remap_optimizer_state

__all__ = ["fit_frames", "relocate_splats", "train_stack"]


def _optimizer(cfg: StackConfig, extent: float, names: tuple = ("log_scales", "quats", "log_densities", "seg")
               ) -> optax.GradientTransformation:
    """Adam per field: ``means`` at lr_means × extent decaying 100×; the others by name."""
    means = optax.exponential_decay(cfg.lr_means * extent, cfg.iterations, 0.01)

    def rate(r):
        return r if cfg.lr_decay == 1.0 else optax.exponential_decay(r, cfg.iterations, cfg.lr_decay)

    by_name = {"log_scales": cfg.lr_scales, "quats": cfg.lr_quats, "log_densities": cfg.lr_density,
               "seg": cfg.lr_seg}
    rates = {"means": means} | {n: rate(by_name.get(n, cfg.lr_quats)) for n in names}
    return optax.multi_transform({k: optax.adam(v, eps=1e-15) for k, v in rates.items()},
                                 {k: k for k in rates})


def fit_frames(key: jax.Array, params: dict, loss_fn: Callable, kept: FrameStack, cfg: StackConfig,
               optimizer: optax.GradientTransformation, *, checkpoint_path: str | Path | None = None,
               progress: bool = True, desc: str = "stack", relocate: Callable | None = None) -> tuple[dict, dict]:
    """The shared training loop of the stack models.

    Args:
      key: PRNG key of frame and position sampling.
      params: {field: [C, ...]} trainable arrays.
      loss_fn: ``loss_fn(params, i, j, alpha, ibfr_on, band_on) -> scalar`` for kept frame i and the
        pair (j, j + 1) (:func:`frames_loss` bound to a model).
      kept: the training frames; cfg: ``iterations``, ``block``, ``ibfr_start``, ``band_until``.
      optimizer: over ``params``.
      checkpoint_path: resumable checkpoint (atomic, one per block).
      relocate: ``relocate(key, params, opt_state, avg_grad) -> (params, opt_state, n_moved)``,
        called between blocks on cfg's relocation schedule with the mean positional-gradient norm
        [C] since the last call (None: never).

    Returns:
      (params, history) with history = dict(step, loss, seconds) per block, and ``relocated``,
      the number of splats moved at each relocation.
    """
    n_f = kept.n_frames
    relocated = []
    ibfr_step = int(cfg.ibfr_start * cfg.iterations)
    band_step = int(cfg.band_until * cfg.iterations)

    def one(carry, xs):
        p, opt_state, acc = carry
        i, j, alpha, step = xs
        loss, g = jax.value_and_grad(loss_fn)(p, i, j, alpha, step >= ibfr_step, step < band_step)
        upd, opt_state = optimizer.update(g, opt_state, p)
        acc = acc + jnp.linalg.norm(g["means"], axis=-1)
        return (optax.apply_updates(p, upd), opt_state, acc), loss

    @jax.jit
    def block_fn(p, opt_state, acc, i, j, alpha, steps):
        return jax.lax.scan(one, (p, opt_state, acc), (i, j, alpha, steps))

    def run_block(state, n):
        s0 = int(state["step"])
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, s0), 3)
        i = jax.random.randint(k1, (n,), 0, n_f)
        j = jax.random.randint(k2, (n,), 0, n_f - 1)
        alpha = jax.random.uniform(k3, (n,), minval=0.2, maxval=0.8)
        (p, opt_state, acc), losses = block_fn(state["params"], state["opt_state"], state["grad_acc"], i, j,
                                               alpha, jnp.arange(s0, s0 + n))
        return dict(state, params=p, opt_state=opt_state, grad_acc=acc, count=state["count"] + n), losses

    every, until = int(cfg.relocate_every), int(cfg.relocate_until * cfg.iterations)

    def after_block(state):
        step = int(state["step"])
        if relocate is None or every <= 0 or step > until or step % every >= cfg.block:
            return state
        avg = state["grad_acc"] / jnp.maximum(state["count"], 1)
        p, opt_state, moved = relocate(jax.random.fold_in(key, 10_000_000 + step), state["params"],
                                       state["opt_state"], avg)
        relocated.append(int(moved))
        return dict(state, params=p, opt_state=opt_state, grad_acc=jnp.zeros_like(state["grad_acc"]),
                    count=jnp.zeros((), jnp.float32))

    def fresh_state(p):
        c = p["means"].shape[0]
        return {"step": 0, "params": p, "opt_state": optimizer.init(p), "grad_acc": jnp.zeros(c, jnp.float32),
                "count": jnp.zeros((), jnp.float32)}

    def template(capacity):
        return fresh_state(jax.tree_util.tree_map(lambda x: jnp.zeros((capacity,) + x.shape[1:], x.dtype), params))

    state, history = run_training(fresh_state(params), n_iters=cfg.iterations, block=cfg.block,
                                  run_block=run_block, after_block=after_block, template=template,
                                  checkpoint_path=checkpoint_path, desc=desc, progress=progress)
    history["relocated"] = relocated
    return state["params"], history


def relocate_splats(key: jax.Array, params: dict, opt_state, avg_grad: jax.Array, *,
                    optimizer: optax.GradientTransformation, fraction: float, split_factor: float = 1.6):
    """Densification at a fixed count: the K = ⌊fraction·C⌋ splats of least mass (ρ·σ₁σ₂σ₃, the
    integral of the image field up to (2π)^{3/2}) are removed and their slots hold the second halves
    of the K splats with the largest mean positional gradient, split as 3DGS splits (two children at
    positions drawn from the parent, scales / φ) with every amplitude × φ³/2 so that each field's
    mass is preserved (as :mod:`insideout_jax.train.densify` does for radiative splats). Moved and
    split slots restart their Adam moments.

    Args:
      params: {"means", "log_scales", "quats", "log_densities", "seg"} of a :class:`StackModel`.
      opt_state, optimizer: the optimizer state of ``params`` and its transformation.
      avg_grad: [C] mean positional-gradient norm.

    Returns:
      (params, opt_state, K).
    """
    p = {k: np.array(v) for k, v in params.items()}
    c = len(p["means"])
    k = int(fraction * c)
    if k < 1:
        return params, opt_state, 0
    mass = p["log_densities"] + p["log_scales"].sum(1)
    dead = np.argsort(mass, kind="stable")[:k]
    alive = np.setdiff1d(np.arange(c), dead)
    g = np.asarray(avg_grad)[alive]
    src = alive[np.argsort(-g, kind="stable")[:k]]
    rot = np.asarray(quat_to_rotmat(jnp.asarray(p["quats"][src] / np.linalg.norm(p["quats"][src], axis=1,
                                                                                 keepdims=True))))
    z = np.asarray(jax.random.normal(key, (2, k, 3)))
    offs = np.einsum("nij,knj->kni", rot, np.exp(p["log_scales"][src])[None] * z)
    mu = p["means"][src].copy()
    for f in p:
        p[f][dead] = p[f][src]
    p["means"][src], p["means"][dead] = mu + offs[0], mu + offs[1]
    gain = np.log(split_factor ** 3 / 2.0)
    for slot in (src, dead):
        p["log_scales"][slot] -= np.log(split_factor)
        p["log_densities"][slot] += gain
        p["seg"][slot] += gain
    remap = np.arange(c)
    remap[dead] = src
    fresh = np.zeros(c, bool)
    fresh[dead] = fresh[src] = True
    opt_state = remap_optimizer_state(optimizer, opt_state, jnp.asarray(remap), jnp.asarray(fresh))
    return {f: jnp.asarray(v) for f, v in p.items()}, opt_state, k


def _check_training(kept: FrameStack, n_lab: int) -> tuple[jax.Array, jax.Array, jax.Array, float, float]:
    if kept.n_frames < 2:
        raise ValueError(f"training needs at least two kept frames, got {kept.n_frames}")
    if n_lab and (kept.labels is None or kept.labels.shape[0] != n_lab):
        raise ValueError(f"the model has {n_lab} mask heads but the kept frames carry "
                         f"{0 if kept.labels is None else kept.labels.shape[0]} label masks")
    frames = jnp.asarray(kept.frames)
    labels = jnp.asarray(kept.labels[:n_lab], jnp.float32) if n_lab else jnp.zeros((0,) + frames.shape)
    return frames, labels, jnp.asarray(kept.z, jnp.float32), kept.mean_dz, float(kept.z[-1] - kept.z[0])


def train_stack(key: jax.Array, model: StackModel, kept: FrameStack, cfg: StackConfig = StackConfig(), *,
                checkpoint_path: str | Path | None = None, progress: bool = True) -> tuple[StackModel, dict]:
    """Fit a stack model to the kept frames (and their labels).

    Args:
      key: PRNG key of frame and position sampling.
      model: initial model (:func:`init_stack_model`).
      kept: training frames; their labels train the segmentation head when present.
      cfg: constants.
      checkpoint_path: resumable checkpoint (atomic, one per block).
      progress: show a progress bar.

    Returns:
      (model, history) with history = dict(step, loss, seconds) per block.
    """
    frames, labels, z, dz, depth = _check_training(kept, model.n_labels)
    if model.mask_link != cfg.mask_link:
        raise ValueError(f"the model's mask_link {model.mask_link!r} is not cfg.mask_link {cfg.mask_link!r}: "
                         "initialise the model with the configuration it is trained with")

    def loss_fn(p, i, j, alpha, ibfr_on, band_on):
        return stack_loss(_model(model, p), kept, frames, labels, i, j, alpha, ibfr_on, band_on, cfg, z, dz,
                          depth)

    opt = _optimizer(cfg, float(np.hypot(*kept.extent_xy) / 2))

    def relocate(k, p, opt_state, avg):
        return relocate_splats(k, p, opt_state, avg, optimizer=opt, fraction=cfg.relocate_fraction)

    params, history = fit_frames(key, _params(model), loss_fn, kept, cfg, opt, checkpoint_path=checkpoint_path,
                                 progress=progress, relocate=relocate)
    return _model(model, params), history
