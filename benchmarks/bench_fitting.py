"""Benchmark of stage 2 (hierarchical fitting): K-means against scikit-learn, and the whole fit.

    python benchmarks/bench_fitting.py --json            # one JSON object on stdout
    python benchmarks/bench_fitting.py --n 20000 --k 2000 --hier-n 10000   # smaller, quicker

K-means: N points, K clusters, a fixed number of Lloyd iterations from the *same* initial centres
(our k-means++ seeding, computed once and passed to scikit-learn as ``init``), ``tol = 0``;
both run in this process on the same data. ``kmeans_ms`` is our default (exact search chosen by
size), ``kmeans_brute_ms`` forces the chunked brute-force search; both are compiled ahead of
time and the compile time is reported apart (``*_compile_s``); ``kmeans_init_ms`` is our
k-means++ seeding, not part of the comparison. The data are area-uniform samples of the asymmetric
test surface of ``tests/test_fitting_shapes.py`` (mm scale).

Hierarchical fit: ``hierarchical_fit`` on RGB splats on the surface (a random similarity away)
against radiative splats filling the solid, ``--hier-n`` of each; ``hier_fit_s`` is one cold call
(compilation included, as in a pipeline run), with per-stage seconds and the alignment errors
against the true transform.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fitting_shapes import interior_samples, random_similarity, surface_samples  # noqa: E402

import insideout_jax.fitting.kmeans  # noqa: E402, F401  (registers the submodule)
from insideout_jax.fitting.hierarchical import hierarchical_fit  # noqa: E402
from insideout_jax.fitting.kmeans import kmeans_plusplus  # noqa: E402
from insideout_jax.fitting.procrustes import Similarity, similarity_errors  # noqa: E402
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points  # noqa: E402

MM = 50.0  # the unit test shape scaled to a ≈ 115 mm object
km_lib = sys.modules["insideout_jax.fitting.kmeans"]  # the module (the package exports the function)


def bench_kmeans(n: int, k: int, iters: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    x = surface_samples(n, rng) * MM
    xj = jnp.asarray(x)
    key = jax.random.key(seed)
    # Ahead-of-time compilation, so each timed call is one run of compiled code.
    t = time.perf_counter()
    seed_fn = kmeans_plusplus.lower(key, xj, k=k).compile()
    out = {"n": n, "k": k, "iters": iters, "kmeans_init_compile_s": time.perf_counter() - t}
    t = time.perf_counter()
    init = jax.block_until_ready(seed_fn(key, xj))
    out["kmeans_init_ms"] = (time.perf_counter() - t) * 1e3
    for name, method in (("kmeans", "auto"), ("kmeans_brute", "brute")):
        args = (xj, init, jnp.int32(iters), jnp.float32(0.0))
        t = time.perf_counter()
        fn = km_lib._lloyd.lower(*args, k=k, chunk=512, method=method).compile()
        out[f"{name}_compile_s"] = time.perf_counter() - t
        t = time.perf_counter()
        res = jax.block_until_ready(fn(*args))
        out[f"{name}_ms"] = (time.perf_counter() - t) * 1e3
        out[f"{name}_inertia"] = float(res.inertia)
        out[f"{name}_n_iter"] = int(res.n_iter)
    t = time.perf_counter()
    ref = KMeans(k, init=np.asarray(init), n_init=1, max_iter=iters, tol=0.0,
                 algorithm="lloyd").fit(x)
    out["sklearn_kmeans_ms"] = (time.perf_counter() - t) * 1e3
    out["sklearn_kmeans_inertia"] = float(ref.inertia_)
    out["sklearn_kmeans_n_iter"] = int(ref.n_iter_)
    out["kmeans_speedup_vs_sklearn"] = out["sklearn_kmeans_ms"] / out["kmeans_ms"]
    return out


def bench_hierarchical(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rot, t, s = random_similarity(rng)
    t = t * MM
    shell = surface_samples(n, rng) * MM
    rgb = rgb_splats_from_points(((shell - t) @ rot) / s, sh_degree=3)
    rad = rad_splats_from_points(interior_samples(n, rng) * MM, 0.02)
    t0 = time.perf_counter()
    res = hierarchical_fit(rgb, rad, seed=seed)
    jax.block_until_ready(res.splats)
    total = time.perf_counter() - t0
    truth = Similarity(jnp.asarray(rot, jnp.float32), jnp.asarray(t, jnp.float32),
                       jnp.asarray(s, jnp.float32))
    out = {"hier_n_rgb": n, "hier_n_rad": n, "hier_fit_s": total}
    for st in res.stages:
        e = similarity_errors(st.transform, truth, center=jnp.asarray(rgb.means.mean(0)))
        out[f"hier_{st.name}_s"] = st.seconds
        out[f"hier_{st.name}_accepted"] = st.accepted
        out[f"hier_{st.name}_rot_deg"] = float(e["rot_deg"])
        out[f"hier_{st.name}_scale_rel"] = float(e["scale_rel"])
        out[f"hier_{st.name}_trans_mm"] = float(e["trans"])
        out[f"hier_{st.name}_point_err_mm"] = float(np.mean(np.linalg.norm(st.means - shell, axis=1)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n", type=int, default=100_000, help="K-means points")
    ap.add_argument("--k", type=int, default=10_000, help="K-means clusters")
    ap.add_argument("--iters", type=int, default=10, help="Lloyd iterations")
    ap.add_argument("--hier-n", type=int, default=50_000, help="splats per set for the fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-hier", action="store_true")
    args = ap.parse_args(argv)
    out = {"benchmark": "fitting", "backend": jax.default_backend(),
           "devices": len(jax.devices())}
    out.update(bench_kmeans(args.n, args.k, args.iters, args.seed))
    if not args.skip_hier:
        out.update(bench_hierarchical(args.hier_n, args.seed))
    if args.json:
        print(json.dumps(out))
    else:
        for key, val in out.items():
            print(f"{key:32s} {val}")


if __name__ == "__main__":
    main()
