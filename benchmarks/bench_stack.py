"""Benchmark of the stack model (MedGS on 3D splats): training iterations per second and render time
per frame.

Scene (fixed, seeded, self-contained): a 256 × 256 × 48 stack (1 mm pixels, 2 mm frames) of a
textured head-like phantom (nested ellipsoids with noise texture), every 2nd frame kept; N splats
initialised by :func:`insideout_jax.stacks.init_stack_model`, one label head. One training
iteration = the full loss (frame, in-between render, band, mask head at the frame and in between),
its gradient and the Adam update, as in :func:`insideout_jax.stacks.train_stack`.

Each timed repeat is paired with a 1024 × 1024 × 1024 float32 matmul (2.15 GFLOP) in the same
process, and every line carries ``ratio_to_matmul`` = median over repeats of (time / matmul time),
a figure that a change of machine or a busy hypervisor moves far less than the times themselves,
and ``matmul_gflops`` (this CPU's rate at that moment).

Usage: python benchmarks/bench_stack.py [--json] [--sizes 20000 100000] [--repeats 5] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from reference_timing import MatmulProbe, paired

from insideout_jax.stacks import StackConfig, init_stack_model, render_frame, split_stack, stack_from_volume
from insideout_jax.stacks.model import _model, _params, stack_loss
from insideout_jax.stacks.train import _optimizer


def phantom_stack(size: int = 256, n_frames: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(n_frames) * 2.0, np.arange(size) * 1.0, np.arange(size) * 1.0,
                          indexing="ij")
    c = np.array([size / 2, size / 2, n_frames])
    r = np.sqrt(((x - c[0]) / (0.42 * size)) ** 2 + ((y - c[1]) / (0.36 * size)) ** 2 + ((z - c[2]) / 60) ** 2)
    vol = np.where(r < 1, 0.35, 0.0) + np.where((r > 0.85) & (r < 0.93), 0.5, 0.0)
    vol = vol * (1 + 0.1 * rng.standard_normal(vol.shape)) * (r < 1)
    labels = ((r > 0.85) & (r < 0.93))[None]
    return stack_from_volume(vol.astype(np.float32), (2.0, 1.0, 1.0), value_range=(0.0, 1.0), labels=labels,
                             label_names=("shell",))


def bench(n: int, repeats: int, size: int) -> list[dict]:
    stack = phantom_stack(size)
    kept, _ = split_stack(stack, 2)
    cfg = StackConfig(n_splats=n)
    model = init_stack_model(jax.random.key(0), kept, cfg)
    frames = jnp.asarray(kept.frames)
    labels = jnp.asarray(kept.labels, jnp.float32)
    z = jnp.asarray(kept.z, jnp.float32)
    dz, depth = kept.mean_dz, float(kept.z[-1] - kept.z[0])
    opt = _optimizer(cfg, float(np.hypot(*kept.extent_xy) / 2))
    params = _params(model)
    state = (params, opt.init(params))

    @jax.jit
    def step(st):
        p, o = st
        loss, g = jax.value_and_grad(lambda q: stack_loss(
            _model(model, q), kept, frames, labels, jnp.int32(5), jnp.int32(7), jnp.float32(0.4),
            jnp.asarray(True), jnp.asarray(True), cfg, z, dz, depth))(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o

    render = jax.jit(lambda m: render_frame(m, kept, 31.0, cutoff_sigma=cfg.cutoff_sigma))
    probe = MatmulProbe()
    common = dict(n_splats=n, height=size, width=size, cutoff_sigma=cfg.cutoff_sigma, label_heads=1,
                  load_avg_1min=round(os.getloadavg()[0], 2), device=jax.devices()[0].platform)
    st, rd = paired(lambda: step(state), repeats, probe), paired(lambda: render(model), repeats, probe)
    return [dict(what="train_iteration", ms_median=round(st.ms_median, 2),
                 iterations_per_s=round(1e3 / st.ms_median, 2), **st.fields(), **common),
            dict(what="render_frame", ms_median=round(rd.ms_median, 2), **rd.fields(), **common)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=256, help="frame size in pixels (square)")
    args = ap.parse_args()
    for n in args.sizes:
        for r in bench(n, args.repeats, args.size):
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"N={n:>7} {r['what']:>16}: {r['ms_median']:8.1f} ms  ({r['ratio_to_matmul']:.2f} × a "
                      f"1024³ matmul at {r['matmul_gflops']:.0f} GFLOP/s)", flush=True)


if __name__ == "__main__":
    main()
