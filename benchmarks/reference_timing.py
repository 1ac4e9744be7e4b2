"""Timings that a change of machine cannot fool (shared by the benchmarks).

Absolute times on shared machines drift by 2× from hour to hour, so each timed run is paired with a
float32 matrix product (1024³, full float32 precision also on a GPU) timed right after it in the
same process. A line then carries, besides the median time:

* ``ratio_to_matmul``: median over repeats of (run time / matmul time);
* ``matmul_gflops``: the matmul's rate, median over repeats (this machine, at that moment);
* ``floor_ms`` and ``ratio_to_floor`` where the work has a compute floor: a rasterizer must evaluate
  every (pixel, Gaussian) pair of its tiles, about :data:`FLOP_PER_PAIR_PIXEL` flop each for the
  forward and backward passes, so floor = pairs × tile pixels × 80 / matmul rate, and
  ``ratio_to_floor`` is the median over repeats of run time / floor at that repeat's rate.

Scripts import it as ``reference_timing`` (the ``benchmarks/`` folder is first on their path).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FLOP_PER_PAIR_PIXEL", "MatmulProbe", "Paired", "paired"]

FLOP_PER_PAIR_PIXEL = 80
"""Flop per (pixel, Gaussian) pair, forward + backward (exponent, conic, blend and their adjoints)."""


class MatmulProbe:
    """A jitted n × n × n float32 matrix product and its flop count."""

    def __init__(self, n: int = 1024):
        self.a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, n)), jnp.float32)
        self.mm = jax.jit(lambda m: jnp.matmul(m, m, precision=jax.lax.Precision.HIGHEST))
        self.flop = 2.0 * n ** 3
        jax.block_until_ready(self.mm(self.a))

    def seconds(self) -> float:
        t = time.perf_counter()
        jax.block_until_ready(self.mm(self.a))
        return time.perf_counter() - t


@dataclasses.dataclass(frozen=True)
class Paired:
    """Per-repeat seconds of the timed function and of the matmul run right after it."""

    seconds: tuple
    matmul_seconds: tuple
    matmul_flop: float
    cpu_seconds: tuple = ()  # process CPU time of each run (all threads)

    @property
    def ms_median(self) -> float:
        return float(np.median(self.seconds) * 1e3)

    @property
    def cpu_ms_median(self) -> float:
        return float(np.median(self.cpu_seconds) * 1e3)

    def fields(self, flop: float | None = None) -> dict:
        """``ratio_to_matmul``, ``matmul_gflops`` and, given the work's floor in flop,
        ``floor_ms`` and ``ratio_to_floor`` (module doc)."""
        if not self.matmul_seconds:
            raise ValueError("timed without a MatmulProbe: no reference to compare with")
        t, m = np.asarray(self.seconds), np.asarray(self.matmul_seconds)
        rate = self.matmul_flop / m  # flop/s at each repeat
        out = dict(ratio_to_matmul=round(float(np.median(t / m)), 3),
                   matmul_gflops=round(float(np.median(rate)) / 1e9, 1))
        if flop is not None and flop > 0:
            out.update(floor_ms=round(float(flop / np.median(rate) * 1e3), 3),
                       ratio_to_floor=round(float(np.median(t * rate / flop)), 3))
        return out


def paired(fn, repeats: int, probe: MatmulProbe | None = None) -> Paired:
    """``fn()`` timed ``repeats`` times after one warm-up (compile) call, each run followed by the
    probe's matmul (none without a probe: a plain median, no reference fields)."""
    jax.block_until_ready(fn())
    ts, ms, cpu = [], [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if probe is not None:
            ms.append(probe.seconds())
    return Paired(tuple(ts), tuple(ms), probe.flop if probe is not None else 0.0, tuple(cpu))
