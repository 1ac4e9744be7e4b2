"""benchmarks/gpu_check.py, the one-call GPU script, run on CPU at tiny sizes (``--dry-run``).

Checks that its Python parts run end to end and write what a GPU session reads back: the summary,
the benchmark JSON lines (back end, device name, accuracy against the float64 closed form), the
gsplat anchor line and the pipeline's stage times.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_at_tiny_sizes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--sweep",
           "tiny", "--renderers", "xray", "--steps", "env", "install", "bench", "gsplat", "paper",
           "--out", str(out), "--work-dir", str(tmp_path / "work"), "--budget-s", "400"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["env"]["jax"]
    assert "would_run_where_missing" in summary["install"]  # nothing is installed in a dry run
    for step in ("bench", "paper"):
        assert all(rec["status"] == "ok" for rec in summary["steps"][step]), step
    assert summary["steps"]["gsplat"][-1]["status"] == "ok"  # the anchor script (after the probe)
    rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    expected = "pallas" if summary["gpu_visible"] else "pallas_interpret"
    assert [r["backend"] for r in rows] == ["xla", expected]
    for r in rows:
        assert r["benchmark"] == "xray_raster" and r["device_name"]
        assert (r["n_gaussians"], r["height"], r["width"]) == (200, 32, 32)
        assert r["fwd_ms_median"] > 0 and r["fwdbwd_ms_median"] > 0
        assert r["max_rel_err_vs_closed_form"] < 1e-4  # both back ends are right, not just fast
    anchor = json.loads((out / "gsplat.jsonl").read_text().splitlines()[0])
    assert anchor["benchmark"] == "gsplat_anchor" and ("skipped" in anchor or "fwd_ms_median" in anchor)
    assert summary["paper"]["stage_seconds"]["data"] > 0
