"""Anchor: gsplat's ``rasterization()`` on the scene of ``bench_rgb_raster.py``, in the same run.

    python benchmarks/bench_gsplat_anchor.py --json [--sizes 50000] [--image-sizes 256] [--repeats 5]

For every (N, S): the same splats and camera as ``bench_rgb_raster.make_scene`` (3DGS conventions
in both libraries: world → camera, pixel centres at +0.5, SH degree 3 with the +0.5 offset and
the clamp at 0, quaternions wxyz, near plane 0.2, eps2d 0.3), rendered by gsplat (PyTorch, CUDA)
and by this package's ``render_rgb`` (JAX, ``--backend``). One JSON line per (N, S) with gsplat's
forward and forward+backward medians (``fwd_ms_median``, ``fwdbwd_ms_median``, the loss of
``bench_rgb_raster``: weighted sums of colour and alpha) and ``max_abs_diff_vs_insideout`` (colour
and alpha, after both renders; information, not a test: gsplat culls at 3σ, this package at the
exact 1/255 opacity level).

Where torch with CUDA or gsplat is missing, prints one line ``{"benchmark": "gsplat_anchor",
"skipped": "<why>"}`` and exits 0. Set ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX and
PyTorch share the GPU (``gpu_check.py`` does).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_rgb_raster import make_scene

from insideout_jax.render import RasterConfig, render_rgb
from insideout_jax.render.rgb import _resolve_backend


def _skip(reason: str) -> None:
    print(json.dumps({"benchmark": "gsplat_anchor", "skipped": reason}), flush=True)


def _torch_median_ms(torch, fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def bench_one(torch, gsplat, n: int, size: int, repeats: int, backend: str) -> dict:
    splats, cam = make_scene(n, size, size)
    dev = torch.device("cuda")
    t = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=dev)  # noqa: E731
    means, quats = t(splats.means), t(splats.quats)
    scales = t(np.exp(np.asarray(splats.log_scales)))
    opac = t(jax.nn.sigmoid(splats.opacity_logits))
    sh = t(splats.sh)
    viewmat = torch.eye(4, device=dev)[None]
    viewmat[0, :3, :3] = t(cam.rotation)
    viewmat[0, :3, 3] = t(cam.translation)
    k = t([[float(cam.fx), 0.0, float(cam.cx)], [0.0, float(cam.fy), float(cam.cy)],
           [0.0, 0.0, 1.0]])[None]
    rng = np.random.default_rng(1)
    wc, wa = rng.normal(size=(size, size, 3)), rng.normal(size=(size, size))
    wc_t, wa_t = t(wc), t(wa)

    def render(*params):
        colors, alphas, _ = gsplat.rasterization(*params, viewmat, k, size, size, sh_degree=3,
                                                 near_plane=0.2, eps2d=0.3, packed=False)
        return colors[0], alphas[0, ..., 0]

    params = [means, quats, scales, opac, sh]
    with torch.no_grad():
        fwd_ms = _torch_median_ms(torch, lambda: render(*params), repeats)
        color_g, alpha_g = render(*params)
    leaves = [p.clone().requires_grad_(True) for p in params]

    def fwdbwd():
        c, a = render(*leaves)
        loss = (c * wc_t).sum() + (a * wa_t).sum()
        loss.backward()

    fwdbwd_ms = _torch_median_ms(torch, fwdbwd, repeats)
    ours = render_rgb(splats, cam, config=RasterConfig(backend=backend))
    diff = max(float(np.abs(color_g.cpu().numpy() - np.asarray(ours.color)).max()),
               float(np.abs(alpha_g.cpu().numpy() - np.asarray(ours.alpha)).max()))
    return dict(benchmark="gsplat_anchor", n_gaussians=n, height=size, width=size,
                fwd_ms_median=round(fwd_ms, 2), fwdbwd_ms_median=round(fwdbwd_ms, 2),
                max_abs_diff_vs_insideout=diff, insideout_backend=_resolve_backend(
                    RasterConfig(backend=backend)),
                gsplat_version=getattr(gsplat, "__version__", "?"), torch_version=torch.__version__,
                device_name=torch.cuda.get_device_name(0), jax_device=jax.devices()[0].device_kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object per line (always on)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000], help="numbers of Gaussians")
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas"])
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        return _skip(f"torch not importable: {e}")
    if not torch.cuda.is_available():
        return _skip("torch has no CUDA device")
    try:
        import gsplat
    except ImportError as e:
        return _skip(f"gsplat not importable: {e}")
    jnp.zeros(1).block_until_ready()  # initialise JAX before torch allocates
    for size in args.image_sizes:
        for n in args.sizes:
            try:
                row = bench_one(torch, gsplat, n, size, args.repeats, args.backend)
            except Exception as e:  # noqa: BLE001 - report any failure of the optional anchor
                row = dict(benchmark="gsplat_anchor", n_gaussians=n, height=size, width=size,
                           error=f"{type(e).__name__}: {e}"[:2000])
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
