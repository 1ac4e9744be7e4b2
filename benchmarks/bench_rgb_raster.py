"""Benchmark of the RGB tile rasterizer (issue 4, deliverable 5).

    python benchmarks/bench_rgb_raster.py --json [--sizes 10000 50000] [--image-sizes 256]
        [--backend auto|xla|pallas|pallas_interpret]

Prints one JSON object per line: N = 10 000 and 50 000 Gaussians (``--sizes``) at 256×256
(``--image-sizes``) with the keys ``n_gaussians, height, width, fwd_ms_median, fwdbwd_ms_median,
tile_pairs, max_pairs_per_tile, peak_rss_mb``, ``ratio_to_matmul, matmul_gflops, floor_ms,
ratio_to_floor`` (forward + backward against a float32 matmul run after each repeat and against its
compute floor: ``benchmarks/reference_timing.py``) and ``benchmark, backend`` (the back end that ran;
``auto`` is Pallas on GPU), ``device, device_name, jax_version``, then one line for a 64×64 crop
that adds ``dense_ms_median`` and
``max_abs_diff_vs_dense`` (against the dense every-pixel × every-Gaussian reference): the central
64×64 px of the first scene (10 000 Gaussians), rendered by a camera with a shifted principal point.

Scene: a camera at the origin looking down +z (f = 256 px, principal point at the centre). Gaussian
centres are uniform over the central half of the image (u, v ∈ [W/4, 3W/4]) at depths z ∈ [4, 8];
each is "2–5 px wide": its 2σ footprint is 2–5 px (σ ∈ [1, 2.5] px, axes varied by ±20 %, random
rotation); opacity uniform in [0.05, 0.95]; colour uniform in [0, 1] (SH DC term) plus small degree-3
SH terms. Timings: median of ``--repeats`` runs after one warm-up (compile) run; fwd+bwd is
``jax.grad`` of a weighted sum of colour, alpha and depth with respect to all splat parameters.
Peak RSS is the process's maximum resident set size (``resource.getrusage``), in MiB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource

import jax
import jax.numpy as jnp
import numpy as np
from reference_timing import FLOP_PER_PAIR_PIXEL, MatmulProbe, paired

from insideout_jax.cameras import make_pinhole
from insideout_jax.render import RasterConfig, render_rgb, render_rgb_dense
from insideout_jax.render.rgb import _resolve_backend, pair_capacity_bucket, resolve_tile_size
from insideout_jax.splats import RGBSplats


def make_scene(n: int, width: int, height: int, *, seed: int = 0, focal: float = 256.0):
    """The benchmark scene (see the module docstring): (splats, camera)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(width / 4, 3 * width / 4, n)
    v = rng.uniform(height / 4, 3 * height / 4, n)
    z = rng.uniform(4.0, 8.0, n)
    means = np.stack([(u - width / 2) * z / focal, (v - height / 2) * z / focal, z], axis=-1)
    sigma_px = rng.uniform(1.0, 2.5, n)
    scales = (sigma_px * z / focal)[:, None] * rng.uniform(0.8, 1.2, (n, 3))
    quats = rng.normal(size=(n, 4))
    opacity = rng.uniform(0.05, 0.95, n)
    sh = np.zeros((n, 16, 3))
    sh[:, 0] = (rng.uniform(0, 1, (n, 3)) - 0.5) / 0.28209479177387814
    sh[:, 1:] = rng.normal(0, 0.05, (n, 15, 3))
    splats = RGBSplats(
        means=jnp.asarray(means, jnp.float32), log_scales=jnp.asarray(np.log(scales), jnp.float32),
        quats=jnp.asarray(quats, jnp.float32),
        opacity_logits=jnp.asarray(np.log(opacity / (1 - opacity)), jnp.float32),
        sh=jnp.asarray(sh, jnp.float32), active=jnp.ones(n, bool))
    camera = make_pinhole(np.eye(3), np.zeros(3), focal, focal, width / 2, height / 2, width, height)
    return splats, camera


def _median_ms(fn, repeats: int) -> float:
    return paired(fn, repeats).ms_median


def _loss(render_fn, splats, weights):
    color, alpha, depth = render_fn(splats)
    wc, wa, wd = weights
    return jnp.sum(color * wc) + jnp.sum(alpha * wa) + jnp.sum(alpha * depth * wd)


def bench_one(n: int, size: int, repeats: int, config: RasterConfig, *, crop: int | None = None
              ) -> dict:
    splats, camera = make_scene(n, size, size)
    dense = crop is not None
    if dense:  # the central crop × crop pixels of the same view: shift the principal point
        off = (size - crop) / 2
        camera = camera.replace(cx=camera.cx - off, cy=camera.cy - off, width=crop, height=crop)
        size = crop
    rng = np.random.default_rng(1)
    weights = (jnp.asarray(rng.normal(size=(size, size, 3)), jnp.float32),
               jnp.asarray(rng.normal(size=(size, size)), jnp.float32),
               jnp.asarray(rng.normal(size=(size, size)), jnp.float32))

    # Exact mode with a right-sized pair buffer: count the pairs once, pick the capacity bucket.
    n_pairs = int(render_rgb(splats, camera, config=config).n_pairs)
    config = dataclasses.replace(config, pair_capacity=pair_capacity_bucket(n_pairs))

    def fast(s):
        out = render_rgb(s, camera, config=config)
        return out.color, out.alpha, out.depth

    fwd = jax.jit(lambda s: fast(s))
    fwdbwd = jax.jit(jax.grad(lambda s: _loss(fast, s, weights), allow_int=True))
    out = render_rgb(splats, camera, config=config)
    fb = paired(lambda: fwdbwd(splats), repeats, MatmulProbe())
    tile_px = resolve_tile_size(config) ** 2
    row = dict(n_gaussians=n, height=size, width=size,
               fwd_ms_median=round(_median_ms(lambda: fwd(splats), repeats), 2),
               fwdbwd_ms_median=round(fb.ms_median, 2),
               tile_pairs=int(out.n_pairs), max_pairs_per_tile=int(out.max_pairs_per_tile),
               **fb.fields(int(out.n_pairs) * tile_px * FLOP_PER_PAIR_PIXEL))  # fwd+bwd vs its floor
    if dense:
        ref = jax.jit(lambda s: render_rgb_dense(s, camera))
        row["dense_ms_median"] = round(_median_ms(lambda: ref(splats), max(1, repeats // 2)), 2)
        c_ref, a_ref, _ = ref(splats)
        row["max_abs_diff_vs_dense"] = float(max(jnp.abs(out.color - c_ref).max(),
                                                 jnp.abs(out.alpha - a_ref).max()))
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    dev = jax.devices()[0]
    row.update(benchmark="rgb_raster", backend=_resolve_backend(config), device=dev.platform,
               device_name=dev.device_kind, jax_version=jax.__version__)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000],
                        help="numbers of Gaussians")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[256],
                        help="image sides (square images)")
    parser.add_argument("--backend", default="auto",
                        choices=["auto", "xla", "pallas", "pallas_interpret"])
    parser.add_argument("--tile-size", type=int, default=None, help="default: RasterConfig's")
    parser.add_argument("--chunk-size", type=int, default=RasterConfig.chunk_size)
    parser.add_argument("--tiles-per-step", type=int, default=None)
    parser.add_argument("--no-crop", action="store_true", help="skip the 64×64 dense comparison")
    args = parser.parse_args()
    config = RasterConfig(tile_size=args.tile_size, chunk_size=args.chunk_size,
                          tiles_per_step=args.tiles_per_step, backend=args.backend)
    for size in args.image_sizes:
        for n in args.sizes:
            row = bench_one(n, size, args.repeats, config)
            print(json.dumps(row) if args.json else row, flush=True)
    if not args.no_crop:
        row = bench_one(args.sizes[0], 256, args.repeats, config, crop=64)
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
