"""Shared test fixtures: the location of the optional real data beside the project; GPU tests.

Tests marked ``gpu`` run only where ``jax.default_backend() == "gpu"``; elsewhere (CPU CI) they are
skipped with a message that says how to run them.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One persistent XLA compilation cache for the session and the commands the tests start, so that
# the same pipeline compiled in a subprocess (the runner) and in the test process (fuse) compiles
# once. Compiled code is the same either way; the cache is removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="insideout_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NO_GPU = "no GPU: run `pytest -m gpu` on a GPU machine (see README, GPU)"


# The suite runs on every core (pytest-xdist, ``-n auto`` in pyproject.toml): on a GPU machine,
# worker processes must not each reserve most of the GPU's memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_SHARED_RUNS = ("tiny_object", "tiny_run")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep the tests that use the session's tiny run on one worker (``--dist loadgroup``: the
    fixture is made once, not once per worker), and skip the tests marked ``gpu`` unless JAX's
    default back end is a GPU."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in _SHARED_RUNS):
            item.add_marker(pytest.mark.xdist_group("tiny_run"))
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import jax  # only when GPU tests were collected: JAX initialises its back ends here

    if jax.default_backend() == "gpu":
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test with a message where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real development data not found at {SHARED_DATA} (only on developer machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_object(tmp_path_factory) -> Path:
    """A valid small generated skull (8 projections of 16², a 16³ CT, 4 clean photos of 24 px,
    pinhole) with a COLMAP model of its true cameras, made once per session. Read-only: copy it
    to mutate it."""
    import dataclasses

    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.config import preset
    from insideout_jax.data.objects import make_builtin_object, read_true_cameras, read_true_surface

    cfg = dataclasses.replace(preset("tiny").skull, n_views=8, n_detector=16, volume_size=16,
                              n_rgb_views=4, rgb_size=24, photo_style="clean")
    obj = tmp_path_factory.mktemp("small") / "obj"
    make_builtin_object(obj, cfg, verbose=False)
    cams = read_true_cameras(obj / "truth" / "cameras.json")
    pts = read_true_surface(obj)[0][::50].astype(np.float64)
    names = sorted(cams)
    iio.write_colmap(obj / iio.COLMAP_DIR, iio.make_colmap_model(
        names, [cams[n] for n in names], pts, np.full((len(pts), 3), 128, np.uint8)))
    return obj


@pytest.fixture(scope="session")
def tiny_object(tmp_path_factory) -> Path:
    """The skull as the tiny preset makes it. No COLMAP model: the run's own SfM (pycolmap)
    registers the photos, so the tiny preset runs end to end on its own skull, SfM included."""
    from insideout_jax.config import preset
    from insideout_jax.data.objects import make_builtin_object

    obj = tmp_path_factory.mktemp("obj") / "tiny"
    make_builtin_object(obj, preset("tiny").skull, verbose=False)
    return obj


@pytest.fixture(scope="session")
def tiny_run(tiny_object, tmp_path_factory) -> Path:
    """The whole pipeline through the runner on the tiny object (every stage, from files), under
    an audit hook that logs which stage opens a file in truth/."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("run")
    env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu", TRUTH_LOG=str(out / "truth_log.json"))
    res = subprocess.run([sys.executable, str(REPO / "tests" / "audited_run.py"), "--object",
                          str(tiny_object), "--config", "tiny", "--out", str(out)],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return out
