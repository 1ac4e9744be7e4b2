"""Optimizers for splat sets: optax Adam with per-field learning rates (labels = field names).

The trainable parameters of a splat set are its float fields; the boolean ``active`` mask is
carried beside them (``split_params`` / ``merge_params``) and never differentiated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from insideout_jax.splats import RadSplats, RGBSplats

__all__ = ["split_params", "merge_params", "make_optimizer", "remap_optimizer_state",
           "mask_gradients"]


def split_params(splats: RGBSplats | RadSplats) -> tuple[dict, jax.Array]:
    """(trainable fields as a dict {name: array}, active mask)."""
    params = {f.name: getattr(splats, f.name) for f in dataclasses.fields(splats)
              if f.name != "active"}
    return params, splats.active


def merge_params(like: RGBSplats | RadSplats, params: dict, active: jax.Array):
    """Rebuild a splat set of ``like``'s type from a params dict and an active mask."""
    return type(like)(**params, active=active)


def make_optimizer(rates: dict, *, frozen: tuple = ()) -> optax.GradientTransformation:
    """Adam with one learning rate (float or optax schedule) per field.

    Args:
      rates: {field name: learning rate, schedule, or a complete optax transformation}. The
        params dict must have exactly the fields named here and in ``frozen``.
      frozen: field names that are never updated (e.g. colour during internal rendering); they
        override ``rates``.

    Returns:
      An optax transformation over the params dict of :func:`split_params`. Adam's ε = 1e-15 as
      in 3DGS.
    """
    trained = {name: rate for name, rate in rates.items() if name not in frozen}
    transforms = {name: rate if isinstance(rate, optax.GradientTransformation)
                  else optax.adam(rate, eps=1e-15) for name, rate in trained.items()}
    labels = {name: name for name in trained}
    if frozen:
        transforms["__frozen__"] = optax.set_to_zero()
        labels.update({name: "__frozen__" for name in frozen})
    return optax.multi_transform(transforms, labels)


def mask_gradients(grads: dict, active: jax.Array) -> dict:
    """Zero the gradients of inactive slots (their parameters then never move)."""
    def mask(g):
        shape = (-1,) + (1,) * (g.ndim - 1)
        return jnp.where(active.reshape(shape), g, 0.0)

    return jax.tree_util.tree_map(mask, grads)


def remap_optimizer_state(optimizer: optax.GradientTransformation, state, src: jax.Array,
                          fresh: jax.Array):
    """Reorder / grow the per-splat optimizer moments after densification.

    Args:
      optimizer: the transformation that made ``state``.
      state: its state for the old params.
      src: [C_new] int32 old slot of each new slot (any valid index where ``fresh``).
      fresh: [C_new] bool; slots whose moments restart at zero (new, split or reset splats).

    Returns:
      The state for the new params (step counts are kept).
    """
    def remap(x):
        y = x[src]
        shape = (-1,) + (1,) * (y.ndim - 1)
        return jnp.where(fresh.reshape(shape), jnp.zeros_like(y), y)

    return optax.tree_map_params(optimizer, remap, state, transform_non_params=lambda x: x)
