"""The pair-count bound of the tile engines (int32 slots and offsets).

Slots and offsets are int32 (XLA's fast integer width on every device). A pair total at or above
:data:`PAIR_LIMIT` would wrap, so both tile engines (:mod:`insideout_jax.render.tiles` and the
additive engine of :mod:`insideout_jax.render.additive`) check the total exactly first
(:func:`pairs_overflow`) and, when it reaches the bound, do no work and return NaN – never a
plausible image built from wrapped counts. The public renderers turn that into
:class:`PairCountOverflow`, whose message says how to split the work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["PAIR_LIMIT", "PairCountOverflow", "pairs_overflow", "raise_on_overflow"]

PAIR_LIMIT = 2**31 - 2**28
"""Pair totals at or above this are refused: int32 holds 2³¹ − 1, and the 2²⁸ margin keeps the
engines' window arithmetic (a window's first slot plus its capacity) inside int32."""


class PairCountOverflow(ValueError):
    """A render would need more (tile, Gaussian) pairs than int32 counts hold; the message says
    how many and how to split the work."""


def pairs_overflow(counts: jax.Array) -> jax.Array:
    """[] bool: the total of the per-Gaussian pair ``counts`` (each in [0, 2³¹)) reaches
    :data:`PAIR_LIMIT`. Exact: their int32 running sum is non-decreasing unless it wraps, and its
    first wrap is a step down (a true sum in [2³¹, 2³²) wraps to a negative number)."""
    if counts.shape[0] == 0:
        return jnp.asarray(False)
    incl = jnp.cumsum(counts.astype(jnp.int32))
    wrapped = (incl[0] < 0) | jnp.any(incl[1:] < incl[:-1])
    return wrapped | (incl[-1] >= PAIR_LIMIT)


def raise_on_overflow(overflow, what: str, advice: str) -> None:
    """Raise :class:`PairCountOverflow` when a concrete ``overflow`` flag is set (under a trace the
    flag is abstract and the result itself is NaN)."""
    if isinstance(overflow, jax.core.Tracer) or not bool(overflow):
        return
    raise PairCountOverflow(
        f"{what} needs more than {PAIR_LIMIT:.3g} (tile, Gaussian) pairs, beyond what the int32"
        f" pair counts of the tile engine hold; nothing was rendered. {advice}")
