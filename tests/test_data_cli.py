"""`python -m insideout_jax.data`: volumes read as their files say (DICOM spacing, --axes, raw),
padding recognised, the field-of-view cylinder refused, and the R²-Gaussian / NAF import commands."""

from __future__ import annotations

import json

import numpy as np
from test_io_importers import _dump, _naf, _r2_folder, _write_series

from insideout_jax.data import __main__ as cli
from insideout_jax.io import read_dicom_series, read_object


def _load(argv):
    args = cli._parser().parse_args(["from-ct", *argv, "--out", "unused"])
    assert cli._check_args(args) is None
    return cli._load_ct(args)


def test_from_ct_reads_what_the_files_say(tmp_path):
    rng = np.random.default_rng(0)
    hu = 2.0 * rng.integers(-500, 1500, (4, 3, 5)) - 1024.0
    _write_series(tmp_path / "dcm", hu, spacing=(2.5, 0.5, 0.75))
    v = _load([str(tmp_path / "dcm")])  # no --spacing, no --quantity: the files say both
    assert v.spacing_zyx == (2.5, 0.5, 0.75) and v.quantity == "HU"
    assert np.array_equal(v.data, hu.astype(np.float32))
    # an array stored [x, y, z]: --axes xyz transposes it to [z, y, x]
    a = rng.random((5, 3, 4)).astype(np.float32)  # x, y, z
    np.save(tmp_path / "xyz.npy", a)
    v = _load([str(tmp_path / "xyz.npy"), "--axes", "xyz", "--spacing", "3", "2", "1"])
    assert v.shape == (4, 3, 5) and v.quantity == "attenuation"
    assert v.data[3, 1, 4] == a[4, 1, 3]
    # a raw big-endian uint16 file with a header
    r = rng.integers(0, 4000, (4, 3, 5)).astype(">u2")
    (tmp_path / "v.raw").write_bytes(b"H" * 16 + r.tobytes())
    v = _load([str(tmp_path / "v.raw"), "--shape", "4", "3", "5", "--dtype", "uint16",
               "--byteorder", "big", "--header-bytes", "16", "--spacing", "1", "1", "1"])
    assert np.array_equal(v.data, r.astype(np.float32))


def test_dicom_padding_value_is_air(tmp_path):
    hu = np.full((3, 4, 4), 40.0)
    hu[:, 0, 0] = -3024.0  # outside the reconstruction circle

    def pad(k, ds):
        ds.PixelPaddingValue = int(round((-3024.0 + 1024.0) / 2.0))  # stored units

    _write_series(tmp_path, hu, edit=pad)
    s = read_dicom_series(tmp_path)
    assert s.n_padding == 3 and np.all(s.volume.data[:, 0, 0] == -1000.0)
    assert np.all(s.volume.data[:, 1:, :] == 40.0)


def _run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_from_ct_refuses_the_field_of_view_cylinder(tmp_path, capsys):
    n = 24
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot(yy - (n - 1) / 2, xx - (n - 1) / 2) / (n / 2)
    vol = np.where(r <= 1, 0.0, -0.05)[None].repeat(n, 0)  # air inside the circle …
    vol[:, 9:15, 9:15] = 0.02  # … and an object in it
    rng = np.random.default_rng(1)
    noisy = vol + np.where(r > 1, rng.normal(0, 1e-3, vol.shape), 0.0)  # an unrecognisable ring
    np.save(tmp_path / "ring.npy", noisy.astype(np.float32))
    out = tmp_path / "obj"
    rc, text = _run(["from-ct", str(tmp_path / "ring.npy"), "--spacing", "1", "1", "1", "--out",
                     str(out)], capsys)
    assert rc == 2 and "field of view" in text and "--padding" in text and "ring.npy" in text
    assert not out.exists()


def test_import_commands_write_object_folders(tmp_path, capsys):
    meta, projs, vol = _r2_folder(tmp_path / "r2")
    rc, text = _run(["import", "r2gaussian", str(tmp_path / "r2"), "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "--length-unit-mm is required" in text
    rc, text = _run(["import", "r2gaussian", str(tmp_path / "r2"), "--out", str(tmp_path / "a"),
                     "--length-unit-mm", "1000"], capsys)
    assert rc == 0, text
    obj = read_object(tmp_path / "a")
    angles = [m["angle"] for m in meta["proj_train"] + meta["proj_test"]]
    order = np.argsort(angles, kind="stable")
    np.testing.assert_allclose(np.asarray(obj.geometry.angles), np.asarray(angles)[order], rtol=1e-6)
    want = np.concatenate([projs["proj_train"], projs["proj_test"]])[order]
    assert np.array_equal(obj.projections, want)
    np.testing.assert_allclose(obj.truth_volume.data, np.transpose(vol, (2, 1, 0)) / 1000, rtol=1e-6)
    assert obj.volume is None  # the data set's volume is its ground truth, not the CT input
    d = _naf()
    rc, text = _run(["import", "naf", str(_dump(tmp_path, d)), "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, text
    obj = read_object(tmp_path / "b")
    assert obj.geometry.n_views == 6 and np.all(np.diff(np.asarray(obj.geometry.angles)) >= 0)
    np.testing.assert_allclose(float(obj.geometry.dso), 1000.0)


def test_import_volume_adds_the_scanners_volume_to_an_object_folder(tmp_path, capsys):
    from insideout_jax.io import write_object

    rng = np.random.default_rng(4)
    hu = 2.0 * rng.integers(-200, 1200, (3, 4, 4)) - 1024.0  # ≥ −1424 HU
    hu[:, 0, 0] = -3024.0
    _write_series(tmp_path / "dcm", hu)
    root = write_object(tmp_path / "obj", images={f"v{k}.png": np.full((8, 8, 3), 0.5, np.float32)
                                                  for k in range(3)})
    argv = ["import", "volume", str(tmp_path / "dcm"), "--out", str(root)]
    rc, text = _run(argv, capsys)
    assert rc == 0, text
    obj = read_object(root)
    assert len(obj.image_names) == 3  # the photos stay
    assert obj.volume.quantity == "HU" and obj.volume.spacing_zyx == (2.5, 0.5, 0.75)
    want = hu.astype(np.float32)
    want[:, 0, 0] = -1000.0  # padding (HU ≤ −1500) is air
    assert np.array_equal(obj.volume.data, want)
    rc, text = _run(argv, capsys)
    assert rc == 2 and "exists: pass --overwrite" in text
    assert _run(argv + ["--overwrite"], capsys)[0] == 0


def test_from_ct_scales_a_normalised_volume_and_refuses_a_starved_detector(tmp_path, capsys):
    vol = np.zeros((16, 16, 16), np.float32)
    vol[4:12, 4:12, 4:12] = 0.5  # normalised units: 8 voxels × 4 mm × 0.5 /mm = 16 > ln(1e5)
    np.save(tmp_path / "norm.npy", vol)
    small = ["--spacing", "4", "4", "4", "--views", "8", "--detector", "32", "--photos", "3",
             "--photo-size", "32"]
    rc, text = _run(["from-ct", str(tmp_path / "norm.npy"), *small, "--out", str(tmp_path / "a")],
                    capsys)
    assert rc == 2 and "norm.npy" in text and "receive no photon" in text
    assert "--unit-attenuation" in text and not (tmp_path / "a").exists()
    rc, text = _run(["from-ct", str(tmp_path / "norm.npy"), *small, "--unit-attenuation", "0.04",
                     "--out", str(tmp_path / "b")], capsys)
    assert rc == 0, text
    obj = read_object(tmp_path / "b")
    np.testing.assert_allclose(obj.truth_volume.data, vol * np.float32(0.04))  # 0.02 /mm inside
    assert "0.04" in json.loads((tmp_path / "b" / "xray" / "acquisition.json").read_text())["volume_units"]
    assert 0.0 < float(obj.projections.max()) < 0.02 * 32 * np.sqrt(3)  # the longest chord's integral
    # its photos are renders without a lens, and the folder says so for SfM
    from insideout_jax.data.sfm import declared_camera_model

    assert declared_camera_model(tmp_path / "b") == "SIMPLE_PINHOLE"
