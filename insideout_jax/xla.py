"""XLA compiler options for the package's own compiled entry points.

On CPU the package asks XLA to prefer 512-bit vectors (AVX-512 where the processor has it) and
not to hand fusions to YNNPACK (see ``_CPU_OPTIONS`` for the measurements). Other backends get no
options. The training steps, ``render_xray``, ``render_slice`` and ``voxelize`` use
:func:`compiler_options`; code that wraps the package's pure functions in its own ``jax.jit`` can
pass ``compiler_options=insideout_jax.xla.compiler_options()`` to get the same code generation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax._src import core as jax_core  # trace_state_clean: no public equivalent

__all__ = ["HIGHEST", "compiler_options", "dot", "jit"]

HIGHEST = jax.lax.Precision.HIGHEST
"""The precision of the package's float32 matrix products. On a GPU a default-precision float32
product runs in TF32 (a 10-bit mantissa): detector coordinates of Gaussians came out 5e-4 relative
off there, the X-ray images 1e-3 off their float64 closed form (H200). ``tests/test_precision.py``
reads the traced renderers, transforms and fits and fails on any product not at this precision."""


# Measured on the 2-core CI machine (Sapphire Rapids), X-ray rasterizer 50k Gaussians fwd + bwd:
# - xla_cpu_prefer_vector_width=512: 16 float lanes per instruction in the per-pixel loops where
#   the processor has AVX-512 (LLVM ignores it elsewhere); 325 → 270 ms.
# - xla_cpu_experimental_ynn_fusion_type="" (no YNNPACK library fusions): XLA:CPU otherwise hands
#   reductions over short axes (the 3-vectors of every Gaussian) to YNNPACK at ~2.5 ms per [50k, 3]
#   reduction; the X-ray record setup for 50k Gaussians goes from 18 to 2 ms, the whole benchmark
#   from 250 to 203 ms, and the RGB rasterizer does not change.
_CPU_OPTIONS = {"xla_cpu_prefer_vector_width": 512, "xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict:
    """Options for ``jax.jit(..., compiler_options=...)`` on the default backend (initialises it).

    Options this jaxlib does not know are left out (each is tried once on a one-line function).
    The choice follows ``jax.default_backend()``, not the device a computation is placed on.
    Returns a new dict on every call.
    """
    return dict(_known_options())


@functools.cache
def _known_options() -> tuple:
    if jax.default_backend() != "cpu":
        return ()
    known = []
    for key, value in _CPU_OPTIONS.items():
        try:
            jax.jit(lambda x: x + 1, compiler_options={key: value}).lower(1.0).compile()
        except Exception:  # noqa: BLE001 - an unknown option: XLA's error type varies by version
            continue
        known.append((key, value))
    return tuple(known)


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

    wrapper.lower = lambda *args, **kwargs: top_level().lower(*args, **kwargs)
    return wrapper


def dot(a, b) -> jax.Array:
    """``jnp.dot`` at :data:`HIGHEST` precision (full float32, also on a GPU)."""
    return jnp.dot(a, b, precision=HIGHEST)
