#!/usr/bin/env python
"""Every GPU check and benchmark in one call, within a time budget (for short GPU sessions).

    python benchmarks/gpu_check.py                          # all steps, full sweep, 480 s budget
    python benchmarks/gpu_check.py --sweep short            # a shorter benchmark sweep
    python benchmarks/gpu_check.py --steps paper --budget-s 560 --paper-resume   # pipeline only
    python benchmarks/gpu_check.py --sweep tiny --dry-run   # CPU: the Python parts at tiny sizes

Steps, in this order (``--steps`` picks some):

1. ``env``: Python, jax / jaxlib versions, devices, ``nvidia-smi`` → ``env.json``.
2. ``install``: ``pip install -e ".[test]"`` where the dependencies do not import; then, if JAX
   sees no GPU, ``pip install "jax[cuda12]==<installed jax version>"`` (then ``cuda13``). Each may
   fail on a machine without a package index: logged, and the steps after it still run, with
   ``PYTHONPATH`` set to this checkout (``summary.json`` then says ``blocked``).
3. ``tests``: ``pytest -m gpu tests/test_gpu.py`` (the file holds every test marked ``gpu``; naming
   it keeps a missing optional test dependency elsewhere from stopping the collection) →
   ``pytest_gpu.log``, ``pytest_gpu.xml``.
4. ``bench``: the RGB and X-ray rasterizers, forward and forward+backward, XLA vs Pallas, one
   subprocess per (renderer, N, S, back end), most informative configurations first →
   ``bench.jsonl`` (the benchmarks' JSON lines: ``backend``, ``device_name``, timings; or an
   ``error`` / ``timeout`` line).
5. ``gsplat``: ``pip install gsplat`` where it is missing, then ``bench_gsplat_anchor.py`` on the
   same scenes → ``gsplat.jsonl`` (a ``skipped`` line where torch / gsplat are unavailable).
6. ``paper``: ``experiments/run.py --object skull --config paper`` with the rest of the budget;
   the skull object in ``--work-dir``, outputs in ``$OUT/paper`` (``--paper-resume`` continues a
   run whose outputs were put back there); stage times from the log → ``summary.json``.

Everything goes under ``--out`` (default ``$OUT``): ``summary.json`` (rewritten after every step:
command, return code, seconds, status, and the step's findings), one ``<step>.log`` per step.
Each step's subprocess gets a timeout from what is left of ``--budget-s``; the total stays
within it. ``--dry-run``: no GPU needed, nothing installed, Pallas benchmarks run interpreted
where JAX has no GPU, the pipeline runs ``--paper-config tiny --paper-stages data``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SWEEPS = {  # (N, S) pairs in the order they run: the diagonal first, then the rest by cost
    "tiny": [(200, 32)],
    "short": [(50_000, 256), (200_000, 512)],
    "large": [(1_000_000, 1024)],
    "full": [(50_000, 256), (200_000, 512), (1_000_000, 1024), (50_000, 512), (50_000, 1024),
             (200_000, 256), (200_000, 1024), (1_000_000, 256), (1_000_000, 512)],
}
STEPS = ("env", "install", "tests", "bench", "gsplat", "paper")
_STAGE_DONE = re.compile(r"^\[(\w+)\] done in ([0-9.]+) s", re.M)


class Runner:
    """Runs steps as subprocesses within a budget and keeps ``summary.json`` up to date."""

    def __init__(self, out: Path, budget_s: float, env: dict, dry_run: bool):
        self.out, self.env, self.dry_run = out, env, dry_run
        self.deadline = time.monotonic() + budget_s
        self.summary = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "budget_s": budget_s, "dry_run": dry_run, "steps": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2))

    def run(self, name: str, cmd: list[str], *, cap_s: float, log: str | None = None,
            reserve_s: float = 0.0) -> dict:
        """Run ``cmd`` with a timeout of min(cap_s, time left − reserve_s); log its output."""
        timeout = min(cap_s, self.left() - reserve_s)
        rec = {"cmd": " ".join(cmd), "timeout_s": round(timeout, 1)}
        log_path = self.out / (log or f"{name}.log")
        if timeout < 5:
            rec.update(status="not run (budget)", returncode=None, seconds=0.0)
            self.summary["steps"].setdefault(name, []).append(rec)
            self.save()
            return {**rec, "stdout": ""}
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True,
                               timeout=timeout)
            stdout, stderr, rc = p.stdout, p.stderr, p.returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            rc, status = None, "timeout"
        rec.update(status=status, returncode=rc, seconds=round(time.monotonic() - t0, 1))
        with open(log_path, "a") as f:
            f.write(f"$ {rec['cmd']}\n{stdout}\n--- stderr ---\n{stderr}\n--- {status} "
                    f"rc={rc} {rec['seconds']} s ---\n\n")
        self.summary["steps"].setdefault(name, []).append(rec)
        self.save()
        return {**rec, "stdout": stdout}


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _gpu_visible(r: Runner) -> bool:
    res = r.run("probe", _py("-c", "import jax; print('BACKEND', jax.default_backend())"),
                cap_s=60)
    return "BACKEND gpu" in res["stdout"]


def step_env(r: Runner) -> None:
    code = ("import json, platform, jax, jaxlib; d = jax.devices(); print(json.dumps(dict("
            "python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__, "
            "backend=jax.default_backend(), devices=[x.device_kind for x in d])))")
    res = r.run("env", _py("-c", code), cap_s=60)
    info = {}
    for line in res["stdout"].splitlines():
        if line.startswith("{"):
            info = json.loads(line)
    if shutil.which("nvidia-smi"):
        smi = r.run("env", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader"], cap_s=30)
        info["nvidia_smi"] = smi["stdout"].strip()
    (r.out / "env.json").write_text(json.dumps(info, indent=2))
    r.summary["env"] = info
    r.save()


_DEPS = "insideout_jax, optax, flax, chex, scipy, cv2, tifffile, pycolmap, skimage, pytest, hypothesis"
_PIP = ("-m", "pip", "install", "--retries", "1", "--timeout", "20")


def step_install(r: Runner) -> None:
    """Install what is missing: the package's dependencies, then a CUDA build of JAX."""
    cmds = [_py(*_PIP, "-e", ".[test]")] + [
        _py(*_PIP, f"jax[{cuda}]==<jax version>") for cuda in ("cuda12", "cuda13")]
    if r.dry_run:
        r.summary["install"] = {"would_run_where_missing": [" ".join(c) for c in cmds]}
        r.save()
        return
    deps = r.run("install", _py("-c", f"import {_DEPS}"), cap_s=120)
    if deps["status"] != "ok":
        r.run("install", cmds[0], cap_s=150)
    if not _gpu_visible(r):
        import importlib.metadata as md

        ver = md.version("jax")
        for cuda in ("cuda12", "cuda13"):
            r.run("install", _py(*_PIP, f"jax[{cuda}]=={ver}"), cap_s=150)
            if _gpu_visible(r):
                break
    r.summary["install"] = {"deps_were_importable": deps["status"] == "ok",
                            "gpu_visible": _gpu_visible(r)}
    r.save()


def step_tests(r: Runner, reserve_s: float) -> None:
    res = r.run("tests", _py("-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
                             f"--junitxml={r.out / 'pytest_gpu.xml'}", "tests/test_gpu.py"),
                cap_s=240, log="pytest_gpu.log", reserve_s=reserve_s)
    tail = [ln for ln in res["stdout"].splitlines() if re.search(r"passed|failed|skipped|error",
                                                                  ln)]
    r.summary["tests"] = {"status": res["status"], "result": tail[-1] if tail else None}
    r.save()


def _bench_cmd(renderer: str, n: int, s: int, backend: str, tiny: bool) -> list[str]:
    repeats = "1" if tiny else "3"
    if renderer == "rgb":
        return _py("benchmarks/bench_rgb_raster.py", "--json", "--sizes", str(n), "--image-sizes",
                   str(s), "--backend", backend, "--repeats", repeats, "--no-crop")
    # the float64 closed-form check is NumPy on the host: skipped at 1M Gaussians (minutes)
    err_pixels = "64" if tiny else "256" if n <= 200_000 else "0"
    return _py("benchmarks/bench_xray_raster.py", "--json", "--sizes", str(n), "--image-sizes",
               str(s), "--backend", backend, "--repeats", repeats, "--error-pixels", err_pixels)


def step_bench(r: Runner, sweep: str, pallas: str, reserve_s: float,
               renderers: tuple = ("xray", "rgb")) -> None:
    out = r.out / "bench.jsonl"
    rows = 0
    for n, s in SWEEPS[sweep]:
        for renderer in renderers:
            for backend in ("xla", pallas):
                res = r.run("bench", _bench_cmd(renderer, n, s, backend, sweep == "tiny"),
                            cap_s=120, reserve_s=reserve_s)
                lines = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")]
                if res["status"] != "ok" or not lines:
                    lines = [json.dumps(dict(benchmark=f"{renderer}_raster", n_gaussians=n,
                                             height=s, width=s, backend=backend,
                                             error=res["status"], returncode=res["returncode"]))]
                with open(out, "a") as f:
                    f.write("\n".join(lines) + "\n")
                rows += len(lines)
    r.summary["bench"] = {"file": str(out), "rows": rows}
    r.save()


def step_gsplat(r: Runner, sweep: str, reserve_s: float) -> None:
    probe = r.run("gsplat", _py("-c", "import torch, gsplat"), cap_s=60, reserve_s=reserve_s)
    if probe["status"] != "ok" and not r.dry_run:
        r.run("gsplat", _py(*_PIP, "gsplat"), cap_s=120, reserve_s=reserve_s)
    n, s = SWEEPS[sweep][0]
    res = r.run("gsplat", _py("benchmarks/bench_gsplat_anchor.py", "--json", "--sizes", str(n),
                              "--image-sizes", str(s), "--repeats", "1" if sweep == "tiny" else "5"),
                cap_s=180, reserve_s=reserve_s)
    lines = [ln for ln in res["stdout"].splitlines() if ln.startswith("{")]
    if not lines:
        lines = [json.dumps({"benchmark": "gsplat_anchor", "error": res["status"]})]
    with open(r.out / "gsplat.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")
    r.summary["gsplat"] = [json.loads(ln) for ln in lines]
    r.save()


def step_paper(r: Runner, config: str, stages: list[str] | None, work_dir: Path,
               resume: bool) -> None:
    out = r.out / "paper"
    cmd = _py("experiments/run.py", "--object", str(work_dir / "skull"), "--config", config,
              "--out", str(out))
    if stages:
        cmd += ["--stages", *stages]
    if resume:
        cmd.append("--resume")
    res = r.run("paper", cmd, cap_s=float("inf"), log="paper.log")
    times = {m.group(1): float(m.group(2)) for m in _STAGE_DONE.finditer(res["stdout"])}
    metrics = out / "metrics.json"
    if metrics.exists():
        secs = json.loads(metrics.read_text()).get("stage_seconds", {})
        times.update({k: v for k, v in secs.items() if v is not None})
    r.summary["paper"] = {"config": config, "status": res["status"], "stage_seconds": times}
    r.save()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default $OUT)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget, seconds")
    ap.add_argument("--sweep", default="full", choices=sorted(SWEEPS))
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    ap.add_argument("--renderers", nargs="+", default=["xray", "rgb"], choices=["xray", "rgb"],
                    help="rasterizers the bench step runs")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU check of the script: no installs, interpreted Pallas without a GPU")
    ap.add_argument("--paper-config", default=None, help="default: paper (tiny with --dry-run)")
    ap.add_argument("--paper-stages", nargs="+", default=None,
                    help="default: all (data with --dry-run)")
    ap.add_argument("--paper-resume", action="store_true")
    ap.add_argument("--work-dir", default="/tmp/insideout_gpu_check",
                    help="scratch folder for the generated skull object")
    ap.add_argument("--paper-reserve-s", type=float, default=60.0,
                    help="seconds kept for the pipeline while the benchmarks run")
    args = ap.parse_args(argv)
    if not args.out:
        ap.error("--out is required where $OUT is not set")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    r = Runner(out, args.budget_s, env, args.dry_run)
    steps = set(args.steps)
    reserve = args.paper_reserve_s if "paper" in steps else 0.0
    if "env" in steps:
        step_env(r)
    if "install" in steps:
        step_install(r)
    gpu = _gpu_visible(r)
    r.summary["gpu_visible"] = gpu
    if not gpu and not args.dry_run:
        r.summary["blocked"] = ("JAX sees no GPU (see install.log and env.json): the GPU tests, "
                                "benchmarks and the paper pipeline were not run")
        steps -= {"tests", "bench", "gsplat", "paper"}
    if "tests" in steps:
        step_tests(r, reserve)
    if "bench" in steps:
        step_bench(r, args.sweep, "pallas" if gpu else "pallas_interpret", reserve,
                   tuple(args.renderers))
    if "gsplat" in steps:
        step_gsplat(r, args.sweep, reserve)
    if "paper" in steps:
        config = args.paper_config or ("tiny" if args.dry_run else "paper")
        stages = args.paper_stages or (["data"] if args.dry_run else None)
        step_paper(r, config, stages, Path(args.work_dir), args.paper_resume)
    r.summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r.save()
    print(json.dumps(r.summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
