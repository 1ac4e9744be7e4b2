"""Importers: R²-Gaussian folders, NAF / X-Gaussian pickles, DICOM series, raw and generic volumes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pydicom
import pytest
import scipy.io
import tifffile
from pydicom.uid import generate_uid

from insideout_jax.io import (
    ObjectFolderError,
    load_volume,
    make_volume,
    read_dicom_series,
    read_naf_pickle,
    read_r2gaussian,
    read_raw,
    write_volume,
)
from insideout_jax.io.dicom import ct_slice_dataset


def _err(fn, *fragments, cls=ObjectFolderError):
    with pytest.raises(cls) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


# ---------------------------------------------------------------------------- R²-Gaussian


def _r2_folder(tmp_path, n_train=4, n_test=2):
    rng = np.random.default_rng(0)
    scanner = {"mode": "cone", "filter": None, "DSD": 7.0, "DSO": 5.0, "nDetector": [6, 8],
               "sDetector": [1.2, 2.4], "nVoxel": [5, 4, 3], "sVoxel": [2.0, 2.0, 1.5],
               "offOrigin": [0.1, -0.2, 0.3], "offDetector": [0.05, -0.01], "accuracy": 0.5,
               "totalAngle": 360.0, "startAngle": 0.0, "noise": True}
    meta = {"scanner": scanner, "vol": "vol_gt.npy", "bbox": [[-1, -1, -1], [1, 1, 1]]}
    projs = {}
    for split, n in (("proj_train", n_train), ("proj_test", n_test)):
        (tmp_path / split).mkdir(parents=True, exist_ok=True)
        meta[split] = []
        projs[split] = rng.random((n, 6, 8)).astype(np.float32)
        for i in range(n):
            fp = f"{split}/{split}_{i:04d}.npy"
            np.save(tmp_path / fp, projs[split][i])
            meta[split].append({"file_path": fp, "angle": 2 * np.pi * i / n + 0.01 * len(split)})
    vol = rng.random((5, 4, 3)).astype(np.float32)  # [x, y, z]
    np.save(tmp_path / "vol_gt.npy", vol)
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    return meta, projs, vol


def test_r2gaussian_units_axes_and_offsets(tmp_path):
    meta, projs, vol = _r2_folder(tmp_path)
    scan = read_r2gaussian(tmp_path, length_unit_mm=1000.0)
    g = scan.geometry
    assert g.mode == "cone" and g.n_detector == (6, 8) and g.n_views == 4
    np.testing.assert_allclose([float(g.dso), float(g.dsd)], [5000.0, 7000.0])
    np.testing.assert_allclose(np.asarray(g.d_detector), [200.0, 300.0], rtol=1e-6)  # s/n (v, u)
    np.testing.assert_allclose(np.asarray(g.offset_detector), [-10.0, 50.0], rtol=1e-6)  # (u,v)→(v,u)
    np.testing.assert_allclose(np.asarray(g.offset_origin), [100.0, -200.0, 300.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g.angles), [m["angle"] for m in meta["proj_train"]],
                               rtol=1e-6)
    assert np.array_equal(scan.projections, projs["proj_train"])  # line integrals unchanged
    assert np.array_equal(scan.heldout_projections, projs["proj_test"])
    assert scan.heldout_geometry.n_views == 2
    v = scan.volume
    assert v.shape == (3, 4, 5) and v.quantity == "attenuation"
    np.testing.assert_allclose(v.data[2, 1, 4], vol[4, 1, 2] / 1000, rtol=1e-6)  # [x,y,z]→[z,y,x]
    np.testing.assert_allclose(v.data, np.transpose(vol, (2, 1, 0)) / 1000, rtol=1e-6)
    np.testing.assert_allclose(v.spacing_zyx, [500.0, 500.0, 400.0])
    np.testing.assert_allclose(v.origin_xyz, [-800.0, -750.0, -500.0])  # centred voxel grid


def test_r2gaussian_parallel_beam_needs_no_distances(tmp_path):
    meta, _, _ = _r2_folder(tmp_path)
    meta["scanner"].update(mode="parallel")
    meta["scanner"].pop("DSD")
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    g = read_r2gaussian(tmp_path / "meta_data.json", length_unit_mm=10.0, load_volume=False).geometry
    assert g.mode == "parallel" and float(g.dsd) == 0.0 and float(g.dso) == 50.0


@pytest.mark.parametrize("edit, where, fragment", [
    (lambda m: m["scanner"].pop("DSO"), "'scanner.DSO'", "missing key"),
    (lambda m: m["scanner"].update(nDetector=[6, 8, 1]), "'scanner.nDetector'", "2 finite"),
    (lambda m: m["scanner"].update(dDetector=[0.3, 0.3]), "'scanner.sDetector'", "nDetector·dDetector"),
    (lambda m: m["scanner"].update(DSD=4.0), "'scanner.DSD'", "exceed DSO"),
    (lambda m: m["scanner"].update(mode="helical"), "'scanner.mode'", "'cone' or 'parallel'"),
    (lambda m: m["scanner"].update(nVoxel=[4, 4, 3]), "'scanner.nVoxel'", "≠ volume shape"),
    (lambda m: m["proj_train"][1].pop("angle"), "'angle'", "missing key"),
    (lambda m: m["proj_train"][2].update(file_path="proj_train/nope.npy"), "nope.npy", "not found"),
    (lambda m: m.pop("proj_train"), "'proj_train'", "missing key"),
])
def test_r2gaussian_rejects_malformed(tmp_path, edit, where, fragment):
    meta, _, _ = _r2_folder(tmp_path)
    edit(meta)
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    _err(lambda: read_r2gaussian(tmp_path, length_unit_mm=1000.0), where, fragment)


def test_r2gaussian_rejects_bad_projection_files(tmp_path):
    _r2_folder(tmp_path)
    np.save(tmp_path / "proj_train" / "proj_train_0002.npy", np.zeros((8, 6), np.float32))
    _err(lambda: read_r2gaussian(tmp_path, length_unit_mm=1.0), "proj_train_0002.npy", "'shape'",
         "≠ scanner.nDetector")
    (tmp_path / "proj_train" / "proj_train_0002.npy").write_bytes(b"junk")
    _err(lambda: read_r2gaussian(tmp_path, length_unit_mm=1.0), "proj_train_0002.npy",
         "not a readable .npy")
    with pytest.raises(TypeError):  # the unit is never assumed
        read_r2gaussian(tmp_path)


# ---------------------------------------------------------------------------- NAF / X-Gaussian


def _naf(n_train=4, n_val=2, image=True):
    rng = np.random.default_rng(1)
    d = {"DSD": 1500.0, "DSO": 1000.0, "nDetector": [6, 8], "dDetector": [1.0, 1.5],
         "nVoxel": [5, 4, 3], "dVoxel": [1.0, 1.0, 2.0], "offOrigin": [1.0, 2.0, 3.0],
         "offDetector": [0.5, 0.25], "accuracy": 0.5, "mode": "cone", "filter": None,
         "totalAngle": 180.0, "startAngle": 0.0, "randomAngle": False, "numTrain": n_train,
         "numVal": n_val, "noise": 0,
         "train": {"projections": rng.random((n_train, 6, 8)),
                   "angles": np.linspace(0, np.pi, n_train, endpoint=False)},
         "val": {"projections": rng.random((n_val, 6, 8)), "angles": rng.random(n_val) * np.pi},
         "image": rng.random((5, 4, 3)).astype(np.float32) if image else None}
    return d


def _dump(tmp_path, d, name="scan.pickle"):
    with open(tmp_path / name, "wb") as f:
        pickle.dump(d, f)
    return tmp_path / name


def test_naf_pickle_geometry_mm_and_volume_per_mm(tmp_path):
    d = _naf()
    scan = read_naf_pickle(_dump(tmp_path, d))
    g = scan.geometry
    np.testing.assert_allclose([float(g.dso), float(g.dsd)], [1000.0, 1500.0])
    np.testing.assert_allclose(np.asarray(g.d_detector), [1.0, 1.5])
    np.testing.assert_allclose(np.asarray(g.offset_detector), [0.25, 0.5])
    np.testing.assert_allclose(np.asarray(g.offset_origin), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(g.angles), d["train"]["angles"], rtol=1e-6)
    assert np.array_equal(scan.projections, d["train"]["projections"].astype(np.float32))
    assert scan.heldout_projections.shape == (2, 6, 8)
    # NAF projects over metres: the per-mm attenuation is image / 1000
    np.testing.assert_allclose(scan.volume.data, np.transpose(d["image"], (2, 1, 0)) / 1000, rtol=1e-6)
    assert scan.volume.spacing_zyx == (2.0, 1.0, 1.0)
    mm = read_naf_pickle(tmp_path / "scan.pickle", projection_length_unit_mm=1.0)
    np.testing.assert_allclose(mm.volume.data, np.transpose(d["image"], (2, 1, 0)), rtol=1e-6)
    none = read_naf_pickle(_dump(tmp_path, _naf(image=False), "b.pickle"))
    assert none.volume is None


@pytest.mark.parametrize("edit, where, fragment", [
    (lambda d: d.update(numTrain=5), "'numTrain'", "≠ number of train angles"),
    (lambda d: d["train"].update(angles=np.zeros(3)), "'train.projections'",
     "number of projections (4) ≠ number of angles (3)"),
    (lambda d: d["train"].update(projections=np.zeros((4, 8, 6))), "'train.projections'",
     "≠ nDetector"),
    (lambda d: d.pop("train"), "'train'", "missing key"),
    (lambda d: d["train"].update(angles=np.array([0.0, np.nan, 1.0, 2.0])), "'train.angles'", "finite"),
    (lambda d: d.pop("offDetector"), "'offDetector'", "missing key"),
    (lambda d: d.update(dDetector=[1.0, -1.0]), "'dDetector'", "positive"),
    (lambda d: d.pop("dVoxel"), "'dVoxel'", "no spacing"),
])
def test_naf_pickle_rejects_malformed(tmp_path, edit, where, fragment):
    d = _naf()
    edit(d)
    _err(lambda: read_naf_pickle(_dump(tmp_path, d)), "scan.pickle", where, fragment)


def test_naf_pickle_rejects_non_pickles(tmp_path):
    (tmp_path / "x.pickle").write_bytes(b"not a pickle")
    _err(lambda: read_naf_pickle(tmp_path / "x.pickle"), "x.pickle", "not a readable pickle")
    _err(lambda: read_naf_pickle(_dump(tmp_path, [1, 2])), "must hold a dict")


# ---------------------------------------------------------------------------- DICOM


def _write_series(folder, hu, *, spacing=(2.5, 0.5, 0.75), first=(-10.0, 20.0, 30.0),
                  rot=None, slope=2.0, intercept=-1024.0, uid=None, order=None, skip=(),
                  edit=None, name_of=lambda k: f"slice_{k:03d}.dcm"):
    """Write hu [nz, ny, nx] as single-frame CT slices (pixel = (hu − intercept)/slope, int16)."""
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    rot = np.eye(3) if rot is None else rot
    r, c, n = rot[:, 0], rot[:, 1], rot[:, 2]
    order = range(len(hu)) if order is None else order
    for k in order:
        if k in skip:
            continue
        ds = ct_slice_dataset(np.round((hu[k] - intercept) / slope), pixel_spacing=spacing[1:],
                              position=np.asarray(first) + k * spacing[0] * n,
                              orientation=np.r_[r, c], slope=slope, intercept=intercept,
                              series_uid=uid)
        if edit is not None:
            edit(k, ds)
        ds.save_as(folder / name_of(k), enforce_file_format=True)


def _hu(shape=(4, 3, 5), seed=2):
    return (2.0 * np.random.default_rng(seed).integers(-500, 1500, shape) - 1024.0)


def test_dicom_series_sorted_hu_spacing_origin(tmp_path):
    hu = _hu()
    # file names in another order than the slice positions: sorting must follow the positions
    _write_series(tmp_path, hu, order=[2, 0, 3, 1], name_of=lambda k: f"im_{(3 * k) % 4}.dcm")
    s = read_dicom_series(tmp_path)
    assert np.array_equal(s.volume.data, hu.astype(np.float32)) and s.volume.quantity == "HU"
    assert s.volume.spacing_zyx == (2.5, 0.5, 0.75)
    assert s.volume.origin_xyz == (-10.0, 20.0, 30.0)
    assert np.array_equal(s.direction, np.eye(3))
    assert [p.name for p in s.files] == ["im_0.dcm", "im_3.dcm", "im_2.dcm", "im_1.dcm"]
    # the same file read back by pydicom itself: HU = stored · slope + intercept
    ds = pydicom.dcmread(s.files[1])
    assert np.array_equal(ds.pixel_array * 2.0 - 1024.0, s.volume.data[1])


def test_dicom_oblique_series_maps_back_to_patient_positions(tmp_path):
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    hu = _hu((3, 2, 4))
    first = np.array([5.0, -7.0, 11.0])
    _write_series(tmp_path, hu, rot=rot, first=first, spacing=(1.5, 0.5, 0.75))
    s = read_dicom_series(tmp_path)
    v = s.volume
    k, j, i = 2, 1, 3
    frame = np.asarray(v.origin_xyz) + [i * v.spacing_zyx[2], j * v.spacing_zyx[1], k * v.spacing_zyx[0]]
    want = first + i * 0.75 * rot[:, 0] + j * 0.5 * rot[:, 1] + k * 1.5 * rot[:, 2]
    np.testing.assert_allclose(s.direction @ frame, want, atol=1e-4)
    np.testing.assert_allclose(v.spacing_zyx[0], 1.5, rtol=1e-5)


def test_dicom_rejects_malformed(tmp_path):
    hu = _hu()
    _write_series(tmp_path / "a", hu, edit=lambda k, ds: k == 1 and delattr(ds, "RescaleSlope"))
    _err(lambda: read_dicom_series(tmp_path / "a"), "slice_001.dcm", "'RescaleSlope'", "missing DICOM tag")
    _write_series(tmp_path / "b", _hu((6, 3, 5)), skip=(3,))
    _err(lambda: read_dicom_series(tmp_path / "b"), "slice_004.dcm", "'ImagePositionPatient'",
         "uneven slice spacing", "step 5 mm from slice_002.dcm vs median 2.5 mm")
    _write_series(tmp_path / "c", hu, uid="1.2.3.4")
    _write_series(tmp_path / "c2", hu, uid="1.2.3.5")
    for p in (tmp_path / "c2").iterdir():
        p.rename(tmp_path / "c" / ("x" + p.name))
    _err(lambda: read_dicom_series(tmp_path / "c"), "'SeriesInstanceUID'", "2 series", "1.2.3.5")
    assert read_dicom_series(tmp_path / "c", series_uid="1.2.3.5").series_uid == "1.2.3.5"
    _write_series(tmp_path / "d", hu, edit=lambda k, ds: k == 3 and setattr(
        ds, "ImagePositionPatient", [-10.0, 20.0, 35.0]))
    _err(lambda: read_dicom_series(tmp_path / "d"), "'ImagePositionPatient'", "same slice position")
    _write_series(tmp_path / "e", hu, edit=lambda k, ds: k == 2 and setattr(ds, "PixelSpacing", [0.5, 0.7]))
    _err(lambda: read_dicom_series(tmp_path / "e"), "slice_002.dcm", "'PixelSpacing'", "differs")
    _write_series(tmp_path / "f", hu)
    (tmp_path / "f" / "notes.txt").write_text("not dicom")
    _err(lambda: read_dicom_series(tmp_path / "f"), "notes.txt", "not a readable DICOM file")
    _write_series(tmp_path / "g", hu[:1])
    _err(lambda: read_dicom_series(tmp_path / "g"), "at least 2 slices")


# ---------------------------------------------------------------------------- raw and load_volume


def test_read_raw_byteorder_and_size(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 300
    (tmp_path / "v.raw").write_bytes(b"HDR!" + a.astype(">u2").tobytes())
    b = read_raw(tmp_path / "v.raw", (2, 3, 4), "uint16", byteorder="big", offset=4)
    assert np.array_equal(b, a) and b.dtype == np.dtype("uint16")
    swapped = read_raw(tmp_path / "v.raw", (2, 3, 4), "uint16", byteorder="little", offset=4)
    assert np.array_equal(swapped, a.byteswap())
    _err(lambda: read_raw(tmp_path / "v.raw", (2, 3, 4), "uint16", byteorder="big"), "v.raw",
         "size 52 bytes ≠ 48 expected")
    with pytest.raises(ValueError, match="byteorder"):
        read_raw(tmp_path / "v.raw", (2, 3, 4), "uint16", byteorder="native")


def test_load_volume_npy_mat_tif_raw(tmp_path):
    a = np.random.default_rng(4).random((5, 4, 3)).astype(np.float32)  # [x, y, z]
    np.save(tmp_path / "v.npy", a)
    v = load_volume(tmp_path / "v.npy", spacing_zyx=(3.0, 2.0, 1.0), quantity="density", axes="xyz")
    assert np.array_equal(v.data, np.transpose(a, (2, 1, 0)))
    assert v.origin_xyz == (-2.0, -3.0, -3.0)  # centred: −(n−1)/2·d per axis
    _err(lambda: load_volume(tmp_path / "v.npy", quantity="HU"), "spacing_zyx is required", cls=ValueError)
    _err(lambda: load_volume(tmp_path / "v.npy", spacing_zyx=(1, 1, 1)), "quantity is required",
         cls=ValueError)
    _err(lambda: load_volume(tmp_path / "v.npy", spacing_zyx=(1, 1, 1), quantity="HU", axes="xxy"),
         "permutation", cls=ValueError)
    scipy.io.savemat(tmp_path / "one.mat", {"img": a, "label": np.zeros(3)})
    m = load_volume(tmp_path / "one.mat", spacing_zyx=(1, 1, 1), quantity="attenuation")
    assert np.array_equal(m.data, a)
    scipy.io.savemat(tmp_path / "two.mat", {"img": a, "seg": a > 0.5})
    _err(lambda: load_volume(tmp_path / "two.mat", spacing_zyx=(1, 1, 1), quantity="HU"),
         "two.mat", "'variable'", "2 3-D numeric variables")
    s = load_volume(tmp_path / "two.mat", spacing_zyx=(1, 1, 1), quantity="HU", variable="seg")
    assert np.array_equal(s.data, (a > 0.5).astype(np.float32))
    _err(lambda: load_volume(tmp_path / "two.mat", spacing_zyx=(1, 1, 1), quantity="HU",
                             variable="nope"), "'nope'", "no such variable")
    # TIFF with our JSON sidecar: everything from the files, conflicting arguments are errors
    w = make_volume(a, (2.0, 1.0, 0.5), (1.0, 2.0, 3.0), quantity="HU")
    write_volume(tmp_path / "ct.tif", w)
    t = load_volume(tmp_path / "ct.tif")
    assert np.array_equal(t.data, a) and t.origin_xyz == (1.0, 2.0, 3.0) and t.quantity == "HU"
    assert load_volume(tmp_path / "ct.tif", origin_xyz="center").origin_xyz == (-0.5, -1.5, -4.0)
    _err(lambda: load_volume(tmp_path / "ct.tif", quantity="density"), "conflicts", cls=ValueError)
    _err(lambda: load_volume(tmp_path / "ct.tif", spacing_zyx=(1, 1, 1)), "conflicts", cls=ValueError)
    # plain ImageJ TIFF: calibration in mm is used
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(2.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 3.0, "unit": "mm"})
    assert load_volume(tmp_path / "ij.tif", quantity="HU").spacing_zyx == (3.0, 0.25, 0.5)
    tifffile.imwrite(tmp_path / "plain.tif", a, photometric="minisblack")
    _err(lambda: load_volume(tmp_path / "plain.tif", quantity="HU"), "spacing_zyx is required",
         cls=ValueError)
    a.astype("<f4").tofile(tmp_path / "v.raw")
    r = load_volume(tmp_path / "v.raw", shape_zyx=(5, 4, 3), dtype="float32", byteorder="little",
                    spacing_zyx=(1, 1, 1), quantity="density")
    assert np.array_equal(r.data, a)
    _err(lambda: load_volume(tmp_path / "v.raw", spacing_zyx=(1, 1, 1), quantity="HU"),
         "shape_zyx, dtype and byteorder", cls=ValueError)
    (tmp_path / "v.nii").write_bytes(b"")
    _err(lambda: load_volume(tmp_path / "v.nii"), "v.nii", "unsupported volume format")


def test_load_volume_dicom_folder(tmp_path):
    hu = _hu()
    _write_series(tmp_path / "dcm", hu)
    v = load_volume(tmp_path / "dcm")
    assert v.quantity == "HU" and v.spacing_zyx == (2.5, 0.5, 0.75)
    assert np.array_equal(v.data, hu.astype(np.float32))
    _err(lambda: load_volume(tmp_path / "dcm", quantity="density"), "conflicts", cls=ValueError)
    _err(lambda: load_volume(tmp_path / "dcm", axes="xyz"), "recorded", cls=ValueError)


def test_real_volumes_load(shared_data):
    ct = shared_data / "ct" / "stanford_cthead" / "cthead_z113_y256_x256_uint16.npy"
    if not ct.exists():
        pytest.skip(f"{ct} not found")
    v = load_volume(ct, spacing_zyx=(2.0, 1.0, 1.0), quantity="density")
    assert v.shape == (113, 256, 256) and v.data.dtype == np.float32
    assert np.array_equal(v.data, np.load(ct).astype(np.float32))
    head = shared_data / "ct" / "tigre_head" / "head.mat"
    if head.exists():
        h = load_volume(head, spacing_zyx=(1.0, 1.0, 1.0), quantity="attenuation", axes="xyz")
        assert h.shape == (256, 256, 256) and 0.0 <= h.data.min() and h.data.max() <= 1.0
