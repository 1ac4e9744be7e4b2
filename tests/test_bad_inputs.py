"""The bad-input suite (issue #17): one case per mistake users really make, across
``experiments/run.py``, ``python -m insideout_jax.data`` and ``experiments/stack.py``.

Every case asserts the exit status (2), a message that names the culprit (file, field, option or
stage) and what to do, no traceback, and that nothing was written: no output folder, no object
folder, the user's files untouched. The commands run in-process (their ``main``), so the suite
costs seconds; the end-to-end subprocess cases live in test_robustness.py and test_runner.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from insideout_jax import io as iio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments import run as runner  # noqa: E402
from experiments import stack as stack_cli  # noqa: E402
from insideout_jax.data import __main__ as data_cli  # noqa: E402


@pytest.fixture
def pristine(small_object) -> Path:
    """The valid small object of conftest (each case copies it before mutating)."""
    return small_object


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def _call(main, argv, capsys) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Mutations of a copy of the pristine object (each returns nothing; edits files in place)
# ------------------------------------------------------------------------------------------------

def _geom(field, value):
    def edit(obj):
        p = obj / iio.GEOMETRY_FILE
        g = json.loads(p.read_text())
        if value is _DEL:
            del g[field]
        else:
            g[field] = value
        p.write_text(json.dumps(g))
    return edit


_DEL = object()


def _proj(fn):
    def edit(obj):
        p = obj / iio.PROJECTIONS_FILE
        tifffile.imwrite(p, fn(tifffile.imread(p)))
    return edit


def _vol(fn):
    def edit(obj):
        p = obj / iio.VOLUME_FILE
        tifffile.imwrite(p, fn(tifffile.imread(p)))
    return edit


def _vol_json(field, value):
    def edit(obj):
        p = obj / "ct" / "volume.json"
        d = json.loads(p.read_text())
        d[field] = value
        p.write_text(json.dumps(d))
    return edit


def _photo(name, data: bytes | None = None, array=None):
    def edit(obj):
        p = obj / iio.IMAGES_DIR / name
        if array is not None:
            import cv2

            cv2.imwrite(str(p), array)
        else:
            p.write_bytes(data)
    return edit


def _remove(*rels):
    def edit(obj):
        for rel in rels:
            p = obj / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return edit


def _write(rel, text):
    def edit(obj):
        (obj / rel).parent.mkdir(parents=True, exist_ok=True)
        (obj / rel).write_text(text)
    return edit


def _acquisition(fn):
    def edit(obj):
        p = obj / "xray" / "acquisition.json"
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
    return edit


def _drop_photos(keep):
    def edit(obj):
        model = iio.read_colmap(obj / iio.COLMAP_DIR)
        for n in model.image_names[keep:]:
            (obj / iio.IMAGES_DIR / n).unlink()
        shutil.rmtree(obj / iio.COLMAP_DIR)
    return edit


def _noop(obj):
    pass


# (id, mutation, extra runner arguments, message regex)
RUNNER_CASES = [
    ("geometry-not-json", _write(iio.GEOMETRY_FILE, "{mode: cone"), [], r"geometry\.json.*not valid JSON"),
    ("geometry-missing", _remove(iio.GEOMETRY_FILE), [], r"geometry\.json.*missing although"),
    ("geometry-no-DSO", _geom("DSO", _DEL), [], r"geometry\.json.*'DSO'"),
    ("geometry-negative-DSO", _geom("DSO", -1000.0), [], r"geometry\.json.*'DSO'.*positive"),
    ("geometry-DSD-below-DSO", _geom("DSD", 500.0), [], r"geometry\.json.*'DSD'.*exceed DSO"),
    ("geometry-bad-mode", _geom("mode", "fan"), [], r"geometry\.json.*'mode'.*'cone' or 'parallel'"),
    ("geometry-units-cm", _geom("units", "cm"), [], r"geometry\.json.*'units'.*'mm'"),
    ("geometry-angles-in-degrees", _geom("angles", [float(a) for a in range(0, 360, 45)]), [],
     r"geometry\.json.*'angles'.*reach 315.*degrees"),
    ("geometry-no-angles", _geom("angles", []), [], r"geometry\.json.*'angles'.*at least one"),
    ("geometry-angle-not-a-number", _geom("angles", ["a"] * 8), [], r"geometry\.json.*'angles'"),
    ("geometry-detector-size-text", _geom("n_detector", "16x16"), [], r"geometry\.json.*'n_detector'"),
    ("projections-missing", _remove(iio.PROJECTIONS_FILE), [], r"projections\.tif.*file not found"),
    ("projections-not-tiff", _write(iio.PROJECTIONS_FILE, "not a tiff"), [],
     r"projections\.tif.*not a readable TIFF"),
    ("projections-count-vs-angles", _proj(lambda p: p[:5]), [], r"projections\.tif.*'shape'.*number of projections"),
    ("projections-size-vs-detector", _proj(lambda p: p[:, :12]), [], r"projections\.tif.*'shape'.*projection size"),
    ("projections-2d", _proj(lambda p: p[0]), [], r"projections\.tif.*'shape'.*number of projections \(1\)"),
    ("projections-nan", _proj(lambda p: np.where(np.arange(p.size).reshape(p.shape) == 7, np.nan, p)
                              .astype(np.float32)), [], r"projections\.tif.*'values'.*1 non-finite"),
    ("projections-raw-counts", _proj(lambda p: (np.exp(-p) * 60000).astype(np.float32)), [],
     r"projections\.tif.*'values'.*line integrals"),
    ("projections-integer", _proj(lambda p: (p * 1000).astype(np.uint16)), [],
     r"projections\.tif.*'dtype'.*float line integrals"),
    ("projections-all-zero", _proj(np.zeros_like), [], r"projections\.tif.*'values'.*no positive line integral"),
    ("ct-nan", _vol(lambda v: np.where(np.arange(v.size).reshape(v.shape) == 3, np.nan, v).astype(np.float32)),
     [], r"ct/volume\.tif.*'values'.*non-finite"),
    ("ct-one-slice", _vol(lambda v: v[0]), [], r"ct/volume\.tif.*'shape'.*at least 2 along each axis"),
    ("ct-all-zero", _vol(np.zeros_like), [], r"ct/volume\.tif.*'values'.*every voxel is 0"),
    ("ct-units-inch", _vol_json("units", "inch"), [], r"ct/volume\.json.*'units'.*'mm'"),
    ("ct-unknown-quantity", _vol_json("quantity", "brightness"), [], r"ct/volume\.json.*'quantity'"),
    ("photo-not-an-image", _photo("view_001.png", b"\x89PNG broken"), [], r"view_001\.png.*not a readable image"),
    ("photo-empty-file", _photo("view_002.png", b""), [], r"view_002\.png.*not a readable image"),
    ("photo-fully-transparent", _photo("view_001.png", array=np.zeros((24, 24, 4), np.uint8)), [],
     r"view_001\.png.*'alpha'.*fully transparent"),
    ("photo-size-vs-camera", _photo("view_003.png", array=np.zeros((30, 30, 3), np.uint8)), [],
     r"view_003\.png.*'size'.*30×30 but its camera .* 24×24"),
    ("photo-missing-for-colmap", _remove(f"{iio.IMAGES_DIR}/view_002.png"), [],
     r"rgb/sparse/0.*'images'.*not in rgb/images.*view_002"),
    ("colmap-unreadable", _write(f"{iio.COLMAP_DIR}/cameras.bin", "garbage"), [], r"rgb/sparse/0.*cannot read"),
    ("too-few-photos", _drop_photos(2), [], r"rgb/images.*2 photo\(s\); at least 3"),
    ("stage-needs-photos", _remove(iio.IMAGES_DIR, iio.COLMAP_DIR), ["--stages", "data", "sfm", "rgb"],
     r"stage 'sfm' needs photos in rgb/images"),
    ("stage-needs-projections", _remove(iio.PROJECTIONS_FILE, iio.GEOMETRY_FILE, iio.VOLUME_FILE),
     ["--stages", "xray"], r"stage 'xray' needs X-ray projections"),
    ("stage-without-its-upstream", _noop, ["--stages", "fitting"],
     r"stage 'fitting' uses the results of stage 'rgb'.*--stages rgb fitting"),
    ("evaluation-alone", _noop, ["--stages", "evaluation"], r"stage 'evaluation' uses the results of stage 'visual'"),
    ("older-generator", _acquisition(lambda d: d.pop("generator")), [], r"generator version 1.*--overwrite"),
    ("runner-skull-of-another-preset", _acquisition(lambda d: d["generator"].update(made_by="runner")), [],
     r"made by the runner for another preset"),
]


@pytest.mark.parametrize("case, mutate, extra, message", RUNNER_CASES, ids=[c[0] for c in RUNNER_CASES])
def test_the_runner_refuses_bad_input_before_any_work(pristine, tmp_path, capsys, case, mutate, extra, message):
    obj = tmp_path / "obj"
    shutil.copytree(pristine, obj)
    mutate(obj)
    before = _digest(obj)
    out = tmp_path / "out"
    rc, err = _call(runner.main, ["--object", obj, "--config", "tiny", "--out", out, *extra], capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    import re

    assert re.search(message, err, re.S), err
    assert not out.exists(), "an output folder was written for a refused run"
    assert _digest(obj) == before, "the object folder was changed"


def test_the_pristine_object_passes_the_checks(pristine, tmp_path, capsys):
    """The cases above fail for their mutation alone: the object they start from passes every
    check a whole run makes (photos decoded), and the data stage runs on it."""
    from experiments import stages as st
    from insideout_jax.config import preset

    ctx = st.RunContext("obj", pristine, tmp_path / "o1", preset("tiny"))
    st.preflight(ctx, list(st.STAGE_ORDER))  # raises StageError on any problem
    sys_argv = ["--object", pristine, "--config", "tiny", "--out", tmp_path / "out", "--stages", "data"]
    rc, err = _call(runner.main, sys_argv, capsys)
    assert rc == 0, err
    rc, err = _call(runner.main, ["--object", tmp_path / "skull", "--stages", "data", "fitting", "--out",
                                  tmp_path / "o2"], capsys)
    assert rc == 2 and "stage 'fitting' uses the results of stage 'rgb'" in err  # checked before making it


COMMAND_CASES = [
    # the runner's command line and output folder
    ("runner-unknown-preset", runner.main, ["--object", "{obj}", "--config", "fast"], r"invalid choice: 'fast'"),
    ("runner-unknown-stage", runner.main, ["--object", "{obj}", "--stages", "colour"], r"invalid choice: 'colour'"),
    ("runner-missing-object", runner.main, ["--object", "{tmp}/nowhere", "--config", "tiny"],
     r"object folder .*nowhere does not exist.*from-ct"),
    ("runner-object-is-a-file", runner.main, ["--object", "{tmp}/file.txt", "--config", "tiny"],
     r"file\.txt is a file; --object takes an object folder"),
    ("runner-not-an-object-folder", runner.main, ["--object", "{tmp}/empty", "--config", "tiny"],
     r"empty.*not an object folder"),
    ("runner-out-is-a-file", runner.main, ["--object", "{obj}", "--config", "tiny", "--out", "{tmp}/file.txt"],
     r"--out .*file\.txt is a file"),
    ("runner-resume-and-overwrite", runner.main, ["--object", "{obj}", "--config", "tiny", "--resume",
                                                  "--overwrite"], r"--resume and --overwrite exclude each other"),
    # the data tool
    ("make-into-a-used-folder", data_cli.main, ["make", "skull", "--out", "{tmp}/used"],
     r"used exists and is not empty: pass --overwrite"),
    ("make-zero-views", data_cli.main, ["make", "skull", "--out", "{tmp}/new", "--views", "0"],
     r"--views must be at least 4, got 0"),
    ("make-two-photos", data_cli.main, ["make", "skull", "--out", "{tmp}/new", "--photos", "2"],
     r"--photos must be at least 3, got 2"),
    ("make-negative-detector", data_cli.main, ["make", "skull", "--out", "{tmp}/new", "--detector", "-5"],
     r"--detector must be at least 8, got -5"),
    ("make-negative-photons", data_cli.main, ["make", "skull", "--out", "{tmp}/new", "--photons", "-1"],
     r"--photons must be at least 0"),
    ("make-huge-volume", data_cli.main, ["make", "skull", "--out", "{tmp}/new", "--volume", "1024"],
     r"--volume must be 8 to 256 voxels per side, got 1024"),
    ("make-unknown-object", data_cli.main, ["make", "teapot", "--out", "{tmp}/new"], r"invalid choice: 'teapot'"),
    ("from-ct-missing-volume", data_cli.main, ["from-ct", "{tmp}/ct.npy", "--spacing", "1", "1", "1",
                                               "--out", "{tmp}/new"], r"ct\.npy: no such file"),
    ("from-ct-zero-spacing", data_cli.main, ["from-ct", "{tmp}/vol.npy", "--spacing", "0", "1", "1",
                                             "--out", "{tmp}/new"], r"--spacing must be three positive lengths"),
    ("from-ct-nan-volume", data_cli.main, ["from-ct", "{tmp}/nan.npy", "--spacing", "1", "1", "1",
                                           "--out", "{tmp}/new"], r"nan\.npy.*non-finite|nan\.npy.*not finite"),
    ("from-ct-empty-volume", data_cli.main, ["from-ct", "{tmp}/zeros.npy", "--spacing", "1", "1", "1",
                                             "--out", "{tmp}/new"], r"zeros\.npy.*volume is empty.*--quantity HU"),
    ("from-ct-2d-array", data_cli.main, ["from-ct", "{tmp}/flat.npy", "--spacing", "1", "1", "1",
                                         "--out", "{tmp}/new"], r"flat\.npy.*\[z, y, x\]|flat\.npy.*shape"),
    ("from-ct-iso-above-the-volume", data_cli.main, ["from-ct", "{tmp}/vol.npy", "--spacing", "1", "1", "1",
                                                     "--iso", "5", "--out", "{tmp}/new"],
     r"vol\.npy.*no voxel reaches the isosurface level 5.*lower --iso"),
    ("from-ct-zero-unit-attenuation", data_cli.main, ["from-ct", "{tmp}/vol.npy", "--spacing", "1", "1",
                                                      "1", "--unit-attenuation", "0", "--out", "{tmp}/new"],
     r"--unit-attenuation must be a positive attenuation per mm, got 0"),
    ("sfm-missing-folder", data_cli.main, ["sfm", "{tmp}/nowhere"], r"nowhere: no such object folder"),
    ("sfm-without-photos", data_cli.main, ["sfm", "{tmp}/empty"], r"empty"),
    # the slice-stack command (MedGS): frames and label masks
    ("stack-keep-every-1", stack_cli.main, ["--volume", "{tmp}/vol.npy", "--spacing", "1", "1", "1",
                                            "--keep-every", "1", "--out", "{tmp}/new"], r"keep_every must be >= 2"),
    ("stack-missing-frames", stack_cli.main, ["--frames", "{tmp}/noframes", "--spacing", "1", "1", "1",
                                              "--keep-every", "2", "--out", "{tmp}/new"],
     r"noframes does not exist"),
    ("stack-mask-count", stack_cli.main, ["--frames", "{tmp}/frames", "--labels", "{tmp}/masks3",
                                          "--spacing", "1", "1", "1", "--keep-every", "2", "--out", "{tmp}/new"],
     r"masks3 holds 3 frames, the stack 6"),
    ("stack-mask-size", stack_cli.main, ["--frames", "{tmp}/frames", "--labels", "{tmp}/masks_big",
                                         "--spacing", "1", "1", "1", "--keep-every", "2", "--out", "{tmp}/new"],
     r"masks_big.*(size|shape)"),
]


def _inputs(tmp: Path, obj: Path) -> None:
    """The files the command cases point at."""
    import cv2

    (tmp / "file.txt").write_text("not a folder")
    (tmp / "empty").mkdir()
    (tmp / "used").mkdir()
    (tmp / "used" / "mine.txt").write_text("user data")
    rng = np.random.default_rng(0)
    vol = np.zeros((12, 12, 12), np.float32)
    vol[3:9, 3:9, 3:9] = 0.02
    np.save(tmp / "vol.npy", vol)
    np.save(tmp / "nan.npy", np.where(vol > 0, np.nan, 0).astype(np.float32))
    np.save(tmp / "zeros.npy", np.zeros_like(vol))
    np.save(tmp / "flat.npy", vol[0])
    for name, n, size in (("frames", 6, 16), ("masks3", 3, 16), ("masks_big", 6, 20)):
        (tmp / name).mkdir()
        for k in range(n):
            img = (rng.random((size, size)) * 255).astype(np.uint8)
            cv2.imwrite(str(tmp / name / f"f{k:02d}.png"), img if name == "frames" else (img > 128) * 255)


@pytest.mark.parametrize("case, main, argv, message", COMMAND_CASES, ids=[c[0] for c in COMMAND_CASES])
def test_commands_refuse_bad_options_and_files(pristine, tmp_path, capsys, case, main, argv, message):
    import re

    _inputs(tmp_path, pristine)
    before = _digest(tmp_path)
    pristine_before = _digest(pristine)
    argv = [a.format(tmp=tmp_path, obj=pristine) for a in argv]
    if main is runner.main and "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    rc, err = _call(main, argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err
    assert re.search(message, err, re.S), err
    assert _digest(tmp_path) == before, "a refused command wrote or changed files"
    assert _digest(pristine) == pristine_before


def test_a_full_disk_or_a_forbidden_folder_names_the_path(pristine, tmp_path, capsys, monkeypatch):
    """ENOSPC / EACCES while writing: the message names the path and what to do, exit 2; a bug
    (another OSError) keeps its traceback. (Simulated: as root nothing is forbidden.)"""
    from experiments import stages as st

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(runner, "atomic_write_bytes", full)
    out = tmp_path / "out"
    rc, err = _call(runner.main, ["--object", pristine, "--config", "tiny", "--out", out, "--stages", "data"], capsys)
    assert rc == 2 and f"cannot access {out / 'config.json'}: the disk is full" in err and "Traceback" not in err

    def forbidden(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runner, "atomic_write_bytes", lambda p, d: None)
    monkeypatch.setattr(st, "atomic_write_bytes", forbidden)
    rc, err = _call(runner.main, ["--object", pristine, "--config", "tiny", "--out", tmp_path / "o2",
                                  "--stages", "data"], capsys)
    assert rc == 2 and "permission denied: use files and folders you may read and write" in err
    assert str(tmp_path / "o2" / "stages" / "data.started.json") in err

    def bug(path, data):
        raise OSError(errno.EBADF, "Bad file descriptor", str(path))

    monkeypatch.setattr(st, "atomic_write_bytes", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        runner.main(["--object", str(pristine), "--config", "tiny", "--out", str(tmp_path / "o3"),
                     "--stages", "data"])


def test_debug_shows_the_traceback_of_an_input_error(pristine, tmp_path, capsys):
    obj = tmp_path / "obj"
    shutil.copytree(pristine, obj)
    _geom("DSO", -1.0)(obj)
    rc, err = _call(runner.main, ["--object", obj, "--config", "tiny", "--out", tmp_path / "o", "--debug"], capsys)
    assert rc == 2 and "Traceback" in err and "ObjectFolderError" in err and "'DSO'" in err


def test_a_failed_make_keeps_the_old_object(tmp_path, capsys):
    """--overwrite replaces an object only once the new one is complete."""
    out = tmp_path / "obj"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    np.save(tmp_path / "zeros.npy", np.zeros((8, 8, 8), np.float32))
    rc, err = _call(data_cli.main, ["from-ct", tmp_path / "zeros.npy", "--spacing", "1", "1", "1",
                                    "--out", out, "--overwrite"], capsys)
    assert rc == 2 and "volume is empty" in err
    assert (out / "mine.txt").read_text() == "user data" and len(list(tmp_path.iterdir())) == 2


def test_the_data_tool_names_the_path_of_a_full_disk_and_leaves_no_half_object(tmp_path, capsys, monkeypatch):
    from insideout_jax.data import objects

    def full(out, cfg, **kw):
        (Path(out) / "xray").mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out) / "xray" / "projections.tif"))

    monkeypatch.setattr(objects, "make_builtin_object", full)
    rc, err = _call(data_cli.main, ["make", "skull", "--out", tmp_path / "obj"], capsys)
    assert rc == 2 and "cannot access" in err and "projections.tif: the disk is full" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []
