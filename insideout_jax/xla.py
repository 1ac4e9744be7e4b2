"""XLA compiler options for the package's own compiled entry points.

On CPU the package asks XLA to prefer 512-bit vectors (``xla_cpu_prefer_vector_width``): on
processors with AVX-512 the per-pixel loops of the rasterizers then run 16 lanes per instruction
instead of 8 (X-ray rasterizer, 50k Gaussians, forward + backward on the 2-core CI machine:
325 → 270 ms); LLVM ignores the preference on processors without AVX-512. Other backends get no
options. Functions of the package that compile a training step or a renderer use
:func:`compiler_options`; code that wraps the package's pure functions in its own ``jax.jit`` can
pass ``compiler_options=insideout_jax.xla.compiler_options()`` to get the same code generation.
"""

from __future__ import annotations

import functools

import jax
from jax._src import core as jax_core  # trace_state_clean: no public equivalent

__all__ = ["compiler_options", "jit"]


def compiler_options() -> dict:
    """Options for ``jax.jit(..., compiler_options=...)`` on the default backend (initialises it)."""
    if jax.default_backend() == "cpu":
        return {"xla_cpu_prefer_vector_width": 512}
    return {}


def _tracing() -> bool:
    """True inside a JAX transformation (jit, grad, vmap, ...), where jits nest."""
    return not jax_core.trace_state_clean()


def jit(fn=None, **jit_kwargs):
    """``jax.jit`` with :func:`compiler_options`, decided at the first call (not at import time).

    Usable as ``jit(fn, static_argnames=...)`` or as a decorator ``@jit(static_argnames=...)``.
    Called inside another transformation (a user's own ``jax.jit``, ``jax.grad``) it is a plain
    ``jax.jit``: JAX takes compiler options from the outermost jit only.
    """
    if fn is None:
        return functools.partial(jit, **jit_kwargs)
    nested = jax.jit(fn, **jit_kwargs)

    @functools.cache
    def top_level():
        return jax.jit(fn, compiler_options=compiler_options(), **jit_kwargs)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return (nested if _tracing() else top_level())(*args, **kwargs)

    return wrapper
