"""Nothing silent (issue #17, first cases): no command overwrites an earlier run's results or an
object folder unless told to, and metrics.json never holds NaN or Infinity."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from insideout_jax.config import preset
from insideout_jax.pipeline import finite_metrics

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")


def _cmd(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, cwd=REPO)


def _used_output(tmp_path) -> Path:
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "rgb.done.json").write_text('{"seconds": 1.0}')
    (out / "metrics.json").write_text('{"earlier": "run"}')
    return out


def test_the_runner_refuses_an_earlier_runs_output_folder(small_object, tmp_path):
    out = _used_output(tmp_path)
    res = _cmd("experiments/run.py", "--object", str(small_object), "--config", "tiny", "--out", str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert str(out) in res.stderr and "--resume" in res.stderr and "--overwrite" in res.stderr
    assert (out / "metrics.json").read_text() == '{"earlier": "run"}'
    assert (out / "stages" / "rgb.done.json").is_file()


def test_overwrite_replaces_the_earlier_results_only_when_the_run_can_start(small_object, tmp_path):
    out = _used_output(tmp_path)
    res = _cmd("experiments/run.py", "--object", str(tmp_path / "nowhere"), "--config", "tiny",
               "--out", str(out), "--overwrite")
    assert res.returncode == 2 and "does not exist" in res.stderr  # refused before anything is removed
    assert (out / "metrics.json").read_text() == '{"earlier": "run"}'
    res = _cmd("experiments/run.py", "--object", str(small_object), "--config", "tiny",
               "--out", str(out), "--overwrite", "--stages", "data")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "stages" / "rgb.done.json").exists()
    assert "earlier" not in (out / "metrics.json").read_text()


def test_making_an_object_never_replaces_a_folder_silently(tmp_path):
    out = tmp_path / "obj"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    small = ["--views", "4", "--detector", "16", "--volume", "16", "--photos", "3", "--photo-size", "24"]
    res = _cmd("-m", "insideout_jax.data", "make", "skull", "--out", str(out), *small)
    assert res.returncode == 2 and "--overwrite" in res.stderr and str(out) in res.stderr
    assert (out / "mine.txt").read_text() == "user data" and len(list(out.iterdir())) == 1
    res = _cmd("-m", "insideout_jax.data", "make", "skull", "--out", str(out), *small, "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (out / "mine.txt").exists() and (out / "xray" / "acquisition.json").is_file()


def test_non_finite_metrics_become_null_with_a_reason(tmp_path):
    m = {"a": {"b": float("nan"), "c": 1.0}, "d": [float("inf"), 2.0], "notes": []}
    clean, replaced = finite_metrics(m)
    assert clean == {"a": {"b": None, "c": 1.0}, "d": [None, 2.0], "notes": []}
    assert replaced == ["a.b (nan)", "d[0] (inf)"] and math.isnan(m["a"]["b"])  # input untouched
    sys.path.insert(0, str(REPO))
    from experiments import stages as st

    ctx = st.RunContext("x", tmp_path, tmp_path / "out", preset("tiny"))
    ctx.metrics["volume"]["fdk"]["psnr3d"] = float("-inf")
    text = ctx.write_metrics().read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert data["volume"]["fdk"]["psnr3d"] is None
    assert any("volume.fdk.psnr3d (-inf)" in n for n in data["notes"])


def test_a_photo_of_another_size_than_its_camera_is_named_not_resized(tmp_path):
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.cameras import ring_cameras

    sys.path.insert(0, str(REPO))
    from experiments import stages as st

    obj = tmp_path / "obj"
    cams = ring_cameras(3, size=32, distance=100.0)
    names = [f"v{k}.png" for k in range(3)]
    imgs = {n: np.full((32, 32, 3), 100, np.uint8) for n in names}
    imgs["v1.png"] = np.full((40, 40, 3), 100, np.uint8)
    iio.write_images(obj / iio.IMAGES_DIR, imgs)
    pts = np.random.default_rng(0).normal(size=(20, 3))
    iio.write_colmap(obj / iio.COLMAP_DIR, iio.make_colmap_model(names, cams, pts, np.full((20, 3), 128, np.uint8)))
    ctx = st.RunContext("obj", obj, tmp_path / "out", preset("tiny"))
    with pytest.raises(st.StageError, match=r"v1\.png: field 'size': the photo is 40×40 but its camera .* is 32×32"):
        st.run_stage("rgb", ctx)
    assert not ctx.done_marker("rgb").exists()


def _recording_stages(monkeypatch, st, ran):
    for name in st.STAGE_ORDER:
        monkeypatch.setitem(st.STAGES, name, lambda ctx, n=name: ran.append(n))


def _run_all(st, obj, out, cfg, resume):
    ctx = st.RunContext("obj", obj, out, cfg, resume=resume)
    for name in st.STAGE_ORDER:
        st.run_stage(name, ctx)
    return ctx


def test_resume_reruns_exactly_what_a_change_reaches(tmp_path, monkeypatch, capsys):
    """--resume after changing the config, regenerating the object, or editing one input file."""
    import dataclasses

    sys.path.insert(0, str(REPO))
    from experiments import stages as st

    obj, out = tmp_path / "obj", tmp_path / "out"
    for rel in ("rgb/images/a.png", "rgb/sparse/0/cameras.txt", "xray/projections.tif", "ct/volume.tif",
                "truth/volume.tif"):
        (obj / rel).parent.mkdir(parents=True, exist_ok=True)
        (obj / rel).write_bytes(b"0")
    ran = []
    _recording_stages(monkeypatch, st, ran)
    cfg = preset("tiny")
    _run_all(st, obj, out, cfg, resume=False)
    assert ran == list(st.STAGE_ORDER)
    ran.clear()
    _run_all(st, obj, out, cfg, resume=True)
    assert ran == []  # nothing changed: nothing runs
    # one input file edited: the X-ray stage and everything that uses it
    (obj / "xray" / "projections.tif").write_bytes(b"01")
    _run_all(st, obj, out, cfg, resume=True)
    assert ran == ["xray", "fitting", "internal", "visual", "evaluation"]
    assert "[xray] runs again: its input files changed" in capsys.readouterr().out
    ran.clear()
    (obj / "rgb" / "images" / "a.png").write_bytes(b"01")
    _run_all(st, obj, out, cfg, resume=True)
    assert ran == ["sfm", "rgb", "fitting", "internal", "visual", "evaluation"]
    ran.clear()
    # a speed-only field (DensifyConfig.compact): nothing
    rgb = dataclasses.replace(cfg.rgb, train=dataclasses.replace(
        cfg.rgb.train, densify=dataclasses.replace(cfg.rgb.train.densify, compact=False)))
    _run_all(st, obj, out, dataclasses.replace(cfg, rgb=rgb), resume=True)
    assert ran == []
    # a fitting constant: the fitting stage and those after it, not the stage-1 trainings
    _run_all(st, obj, out, dataclasses.replace(cfg, fitting=dataclasses.replace(cfg.fitting, grid_size=64)),
             resume=True)
    assert ran == ["fitting", "internal", "visual", "evaluation"]
    assert "[fitting] runs again: the config changed" in capsys.readouterr().out
    ran.clear()
    # a stage run again for another reason (its marker removed, new code): every stage after it
    (out / "stages" / "fitting.done.json").unlink()
    _run_all(st, obj, out, cfg, resume=True)
    assert ran == ["fitting", "internal", "visual", "evaluation"]
    ran.clear()
    # another config (preset): every stage
    _run_all(st, obj, out, dataclasses.replace(cfg, name="other"), resume=True)
    assert ran == list(st.STAGE_ORDER)
    assert "[data] runs again: the config changed" in capsys.readouterr().out
    ran.clear()
    # the object regenerated (every file rewritten)
    for f in sorted(p for p in obj.rglob("*") if p.is_file()):
        f.write_bytes(b"new" + f.read_bytes())
    _run_all(st, obj, out, dataclasses.replace(cfg, name="other"), resume=True)
    assert ran == ["sfm", "rgb", "xray", "fitting", "internal", "visual", "evaluation"]


def test_a_checkpoint_started_under_another_config_is_not_continued(tmp_path, monkeypatch):
    import dataclasses

    sys.path.insert(0, str(REPO))
    from experiments import stages as st

    seen = []
    monkeypatch.setitem(st.STAGES, "rgb", lambda ctx: seen.append((ctx.stage_dir / "rgb_train.npz").exists()))
    ctx = st.RunContext("x", tmp_path, tmp_path / "out", preset("tiny"), resume=True)
    st.run_stage("rgb", ctx)  # starts (writes rgb.started.json) ...
    (ctx.stage_dir / "rgb_train.npz").write_bytes(b"partial")
    ctx.done_marker("rgb").unlink()  # ... and is killed before it finishes
    st.run_stage("rgb", ctx)  # resumed with the same config: the checkpoint is continued
    ctx2 = st.RunContext("x", tmp_path, tmp_path / "out", dataclasses.replace(preset("tiny"), name="b"),
                         resume=True)
    ctx2.done_marker("rgb").unlink()
    st.run_stage("rgb", ctx2)  # resumed under another config: the checkpoint is dropped first
    assert seen == [False, True, False]


def test_densification_counts_the_candidates_left_out_at_the_capacity_cap():
    """8 splats, every one a clone candidate, a cap of 12 slots: 4 are cloned, 4 are counted as
    skipped, and the count survives into the training history (and so metrics.json)."""
    import jax
    import numpy as np
    import optax

    from insideout_jax.splats import rgb_splats_from_points
    from insideout_jax.train.densify import DensifyConfig, densify_train_state, initial_train_state
    from insideout_jax.train.loop import run_training

    pts = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    sp = rgb_splats_from_points(pts, capacity=8)
    sp = sp.replace(log_scales=np.full((8, 3), -8.0, np.float32))  # small: cloned, not split
    opt = optax.adam(1e-3)
    state = initial_train_state(sp, opt)
    state["grad_acc"], state["count"] = np.ones(8, np.float32), np.ones(8, np.float32)
    cfg = DensifyConfig(grad_threshold=1e-6, max_capacity=12, min_opacity=0.0, max_scale_fraction=10.0)
    out = densify_train_state(state, sp, jax.random.key(0), opt, scene_extent=10.0, cfg=cfg)
    assert int(np.asarray(out["active"]).sum()) == 12 and int(out["skipped"]) == 4
    out["step"] = 0
    _, hist = run_training(out, n_iters=2, block=1, run_block=lambda s, n: (dict(s), np.zeros(n)),
                           after_block=lambda s: s, template=None, progress=False)
    assert hist["densify_skipped"] == 4


def test_an_object_from_another_generator_or_preset_is_refused_with_what_to_do(tmp_path):
    import dataclasses

    from insideout_jax.data.objects import make_builtin_object
    from insideout_jax.data.scanner import ACQUISITION_FILE

    small = dataclasses.replace(preset("tiny").skull, n_views=4, n_detector=16, volume_size=16,
                                n_rgb_views=3, rgb_size=24)
    obj = tmp_path / "skull"
    make_builtin_object(obj, small, made_by="runner", verbose=False)
    acq = json.loads((obj / ACQUISITION_FILE).read_text())
    assert acq["generator"]["made_by"] == "runner" and acq["generator"]["config"]["n_views"] == 4
    res = _cmd("experiments/run.py", "--object", str(obj), "--config", "tiny", "--out", str(tmp_path / "o1"),
               "--stages", "data")
    assert res.returncode == 2 and "made by the runner for another preset" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    del acq["generator"]  # as an object made before the scanner existed
    (obj / ACQUISITION_FILE).write_text(json.dumps(acq))
    res = _cmd("experiments/run.py", "--object", str(obj), "--config", "tiny", "--out", str(tmp_path / "o2"),
               "--stages", "data")
    assert res.returncode == 2 and "generator version 1" in res.stderr and "--overwrite" in res.stderr
    acq["generator"] = {"name": "skull", "version": 2, "made_by": "python", "config": {}}
    (obj / ACQUISITION_FILE).write_text(json.dumps(acq))  # made by hand with the data tool: trusted
    res = _cmd("experiments/run.py", "--object", str(obj), "--config", "tiny", "--out", str(tmp_path / "o3"),
               "--stages", "data")
    assert res.returncode == 0, res.stderr[-2000:]
