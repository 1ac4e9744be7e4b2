"""Benchmark of the radiative (X-ray) rasterizer: forward and forward+backward wall time.

Scene (fixed, seeded): N Gaussians uniform in a ball of radius 60 mm around the rotation axis,
scales from the 3DGS/ACUI k-NN initialisation times a random anisotropy exp(U(−0.3, 0.3)) per axis,
random rotations, densities U(0.005, 0.02)/mm; cone beam DSO 1000 mm, DSD 1500 mm, S × S detector
of 256/S mm pixels (S = 256 by default: 1 mm; the ball spans ~70 % of the detector at every S);
one view; loss Σ (image − target)².

Besides the wall-clock medians, the process CPU-time medians and the 1-minute load average are
reported: on a shared machine, wall time above CPU time means other processes held the cores.
Forward + backward is also measured against a float32 matmul run after each repeat, and against
its compute floor (``ratio_to_matmul, matmul_gflops, floor_ms, ratio_to_floor``:
``benchmarks/reference_timing.py``), ratios that survive a change of machine.

``max_rel_err_vs_closed_form``: on 1024 random pixels plus the central detector row, the float64
closed-form line integral of every Gaussian (no culling) is compared with the renderer:
max |fast − exact| / max |exact| over those pixels.

Compiled with :func:`insideout_jax.xla.compiler_options` (``--no-compiler-options``: XLA's defaults).
``--backend`` picks the renderer's back end (``auto``: Pallas on GPU, XLA elsewhere); every JSON
line names the back end that ran (``backend``) and the device (``device``, ``device_name``).

Usage: python benchmarks/bench_xray_raster.py [--json] [--sizes 10000 50000] [--image-sizes 256]
       [--backend auto|xla|pallas|pallas_interpret] [--repeats 5] [--error-pixels 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource

import jax
import jax.numpy as jnp
import numpy as np
from reference_timing import FLOP_PER_PAIR_PIXEL, MatmulProbe, paired

from insideout_jax import xla
from insideout_jax.cameras import make_xray_geometry
from insideout_jax.render.xray import render_xray, resolve_xray_backend, xray_tile_stats
from insideout_jax.render.xray_reference import precision_matrices, reference_rays
from insideout_jax.splats import rad_splats_from_points


def make_scene(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    p = p / np.linalg.norm(p, axis=1, keepdims=True) * 60.0 * rng.uniform(0, 1, (n, 1)) ** (1 / 3)
    s = rad_splats_from_points(p, rng.uniform(0.005, 0.02, n))
    ls = s.log_scales + jnp.asarray(rng.uniform(-0.3, 0.3, (n, 3)), jnp.float32)
    return s.replace(log_scales=ls, quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32))


def make_geometry(size: int = 256):
    px = 256.0 / size  # the same field of view at every detector resolution
    return make_xray_geometry(mode="cone", n_detector=(size, size), d_detector=(px, px),
                              angles=[0.3], dso=1000.0, dsd=1500.0)


def closed_form_error(splats, geom, img, n_pix: int = 1024, seed: int = 1) -> float:
    """Max relative error vs the float64 closed form on sampled pixels (NumPy, no culling)."""
    nv, nu = geom.n_detector
    rng = np.random.default_rng(seed)
    flat = np.concatenate([rng.choice(nv * nu, min(n_pix, nv * nu), replace=False),
                           (nv // 2) * nu + np.arange(nu)])
    with jax.enable_x64(True):
        o, d = reference_rays(geom, np.float64(np.asarray(geom.angles)[0]))
        prec = np.asarray(precision_matrices(jnp.asarray(splats.log_scales, jnp.float64),
                                             jnp.asarray(splats.quats, jnp.float64)))
    o = np.asarray(o).reshape(-1, 3)[flat]
    d = np.asarray(d).reshape(-1, 3)[flat]
    mu = np.asarray(splats.means, np.float64)
    rho = np.exp(np.asarray(splats.log_densities, np.float64))
    exact = np.zeros(len(flat))
    for lo in range(0, len(mu), 512):  # chunks of Gaussians, all sampled rays at once
        sl = slice(lo, lo + 512)
        q = o[:, None, :] - mu[None, sl]
        pd = np.einsum("nab,rb->rna", prec[sl], d)
        a = np.einsum("ra,rna->rn", d, pd)
        b = np.einsum("rna,rna->rn", q, pd)
        c = np.einsum("rna,nab,rnb->rn", q, prec[sl], q)
        exact += (rho[sl] * np.linalg.norm(d, axis=-1)[:, None] * np.sqrt(2 * np.pi / a)
                  * np.exp(-0.5 * (c - b * b / a))).sum(1)
    fast = np.asarray(img, np.float64).reshape(-1)[flat]
    return float(np.abs(fast - exact).max() / np.abs(exact).max())


def bench(n: int, repeats: int, *, size: int = 256, cutoff_sigma: float = 5.0,
          tile_size: int = 16, chunk: int = 1024, compiler_options: bool = True,
          backend: str = "auto", error_pixels: int = 1024) -> dict:
    backend = resolve_xray_backend(backend)
    splats = make_scene(n)
    geom = make_geometry(size)
    opts = dict(cutoff_sigma=cutoff_sigma, tile_size=tile_size, chunk=chunk, backend=backend)
    target = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (1, size, size)), jnp.float32)
    copts = xla.compiler_options() if compiler_options else {}  # {} off CPU
    fwd = jax.jit(lambda s: render_xray(s, geom, **opts), compiler_options=copts)

    def loss(means, log_scales, quats, log_densities):
        s = splats.replace(means=means, log_scales=log_scales, quats=quats,
                           log_densities=log_densities)
        return jnp.sum((render_xray(s, geom, **opts) - target) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), compiler_options=copts)
    params = (splats.means, splats.log_scales, splats.quats, splats.log_densities)
    probe = MatmulProbe()
    f = paired(lambda: fwd(splats), repeats)  # forward: medians only
    fb = paired(lambda: grad(*params), repeats, probe)
    pairs = xray_tile_stats(splats, geom, cutoff_sigma=cutoff_sigma, tile_size=tile_size)["tile_pairs"]
    img = fwd(splats)
    # peak RSS of the process so far (before the float64 error check below)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fwd_ms, fwd_cpu, fwdbwd_ms, fwdbwd_cpu = f.ms_median, f.cpu_ms_median, fb.ms_median, fb.cpu_ms_median
    return dict(n_gaussians=n, height=size, width=size, fwd_ms_median=round(fwd_ms, 2),
                fwdbwd_ms_median=round(fwdbwd_ms, 2), tile_pairs=pairs,
                **fb.fields(pairs * tile_size ** 2 * FLOP_PER_PAIR_PIXEL),  # fwd+bwd against its floor
                peak_rss_mb=round(rss, 1),
                max_rel_err_vs_closed_form=(closed_form_error(splats, geom, img, error_pixels)
                                            if error_pixels > 0 else None),
                fwd_cpu_ms_median=round(fwd_cpu, 2), fwdbwd_cpu_ms_median=round(fwdbwd_cpu, 2),
                load_avg_1min=round(os.getloadavg()[0], 2), cutoff_sigma=cutoff_sigma,
                tile_size=tile_size, chunk=chunk, compiler_options=copts,
                device=jax.devices()[0].platform, benchmark="xray_raster", backend=backend,
                device_name=jax.devices()[0].device_kind, jax_version=jax.__version__)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line per N")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000],
                    help="numbers of Gaussians")
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[256],
                    help="detector sides S (S × S pixels of 256/S mm)")
    ap.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas",
                                                          "pallas_interpret"])
    ap.add_argument("--error-pixels", type=int, default=1024,
                    help="random pixels of the float64 closed-form check (0: skip it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cutoff-sigma", type=float, default=5.0)
    ap.add_argument("--tile-size", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--no-compiler-options", action="store_true",
                    help="compile without insideout_jax.xla.compiler_options() (XLA's defaults)")
    args = ap.parse_args()
    for size in args.image_sizes:
        for n in args.sizes:
            r = bench(n, args.repeats, size=size, cutoff_sigma=args.cutoff_sigma,
                      tile_size=args.tile_size, chunk=args.chunk,
                      compiler_options=not args.no_compiler_options, backend=args.backend,
                      error_pixels=args.error_pixels)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                err = r["max_rel_err_vs_closed_form"]
                print(f"N={n:>7} {size}² {r['backend']:>6}  fwd {r['fwd_ms_median']:8.1f} ms  "
                      f"fwd+bwd {r['fwdbwd_ms_median']:8.1f} ms  pairs {r['tile_pairs']:>8}  "
                      f"rss {r['peak_rss_mb']:7.1f} MB  err {err if err is None else f'{err:.2e}'}",
                      flush=True)


if __name__ == "__main__":
    main()
