"""Object-folder files: exact round trips and the error messages of malformed input."""

from __future__ import annotations

import json
import os

import chex
import cv2
import numpy as np
import pytest
import tifffile

from insideout_jax.cameras import look_at, make_pinhole, make_xray_geometry
from insideout_jax.io import (
    ObjectFolderError,
    make_colmap_model,
    make_similarity,
    make_volume,
    read_geometry,
    read_image,
    read_images,
    read_object,
    read_projections,
    read_transform,
    read_volume,
    write_geometry,
    write_images,
    write_json_atomic,
    write_object,
    write_projections,
    write_transform,
    write_volume,
)


def _cone(n_views=5):
    return make_xray_geometry(mode="cone", n_detector=(6, 8), d_detector=(0.7, 0.9),
                              angles=np.linspace(0, 2 * np.pi, n_views, endpoint=False) + 0.1,
                              dso=500.0, dsd=800.0, offset_detector=(0.25, -0.5),
                              offset_origin=(1.0, -2.0, 3.5))


def _assert_geometry_equal(a, b):
    assert a.mode == b.mode and a.n_detector == b.n_detector
    for f in ("dso", "dsd", "d_detector", "offset_detector", "offset_origin", "angles"):
        x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
        assert x.dtype == y.dtype and np.array_equal(x, y), f


def _geometry_dict():
    return {"mode": "cone", "DSO": 500.0, "DSD": 800.0, "n_detector": [6, 8],
            "d_detector": [0.7, 0.9], "offset_detector": [0.0, 0.0],
            "offset_origin": [0.0, 0.0, 0.0], "angles": [0.0, 1.0, 2.0], "units": "mm"}


def _raises(fn, *fragments):
    with pytest.raises(ObjectFolderError) as e:
        fn()
    for frag in fragments:
        assert frag in str(e.value), (frag, str(e.value))
    return e.value


# ---------------------------------------------------------------------------- geometry.json


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_geometry_round_trip_is_exact(tmp_path, mode):
    g = _cone() if mode == "cone" else make_xray_geometry(
        mode="parallel", n_detector=(3, 4), d_detector=(1.0, 1.5), angles=[0.3, 1.7])
    p = write_geometry(tmp_path / "geometry.json", g)
    d = json.loads(p.read_text())
    assert d["units"] == "mm" and d["mode"] == mode and d["n_detector"] == list(g.n_detector)
    _assert_geometry_equal(read_geometry(p), g)


def test_geometry_file_values_map_to_fields(tmp_path):
    d = _geometry_dict() | {"offset_detector": [0.5, -1.5], "offset_origin": [1.0, 2.0, 3.0]}
    (tmp_path / "g.json").write_text(json.dumps(d))
    g = read_geometry(tmp_path / "g.json")
    assert float(g.dso) == 500.0 and float(g.dsd) == 800.0 and g.n_detector == (6, 8)
    np.testing.assert_array_equal(np.asarray(g.offset_detector), [0.5, -1.5])
    np.testing.assert_array_equal(np.asarray(g.offset_origin), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(g.angles), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("edit, field, fragment", [
    (lambda d: d.pop("DSO"), "DSO", "missing key"),
    (lambda d: d.pop("units"), "units", "missing key"),
    (lambda d: d.update(units="m"), "units", "must be 'mm'"),
    (lambda d: d.update(n_detector=[6, 8, 2]), "n_detector", "list of 2"),
    (lambda d: d.update(n_detector=[6.5, 8]), "n_detector", "integers"),
    (lambda d: d.update(d_detector=[0.7, 0.0]), "d_detector", "positive"),
    (lambda d: d.update(DSO=-3.0), "DSO", "positive"),
    (lambda d: d.update(DSD=400.0), "DSD", "exceed DSO"),
    (lambda d: d.update(angles=[]), "angles", "at least one"),
    (lambda d: d.update(angles=[0.0, "a"]), "angles", "finite number"),
    (lambda d: d.update(mode="fan"), "mode", "'cone' or 'parallel'"),
    (lambda d: d.update(offset_origin=[0.0, 0.0]), "offset_origin", "list of 3"),
])
def test_geometry_rejects_malformed(tmp_path, edit, field, fragment):
    d = _geometry_dict()
    edit(d)
    p = tmp_path / "geometry.json"
    p.write_text(json.dumps(d))
    err = _raises(lambda: read_geometry(p), "geometry.json", f"'{field}'", fragment)
    assert err.field == field and err.path == str(p)


def test_geometry_rejects_nan_and_broken_json(tmp_path):
    p = tmp_path / "geometry.json"
    p.write_text(json.dumps(_geometry_dict()).replace("[0.0, 1.0, 2.0]", "[0.0, NaN, 2.0]"))
    _raises(lambda: read_geometry(p), "'angles'", "finite")
    p.write_text("{\"mode\": \"cone\",")
    _raises(lambda: read_geometry(p), "geometry.json", "not valid JSON")
    _raises(lambda: read_geometry(tmp_path / "absent.json"), "absent.json", "file not found")


# ---------------------------------------------------------------------------- projections.tif


@pytest.mark.parametrize("n_views", [3, 4, 5])  # 3 and 4 pages must not turn into RGB(A) samples
def test_projections_round_trip_bit_identical(tmp_path, n_views):
    g = _cone(n_views)
    p = np.random.default_rng(0).gamma(1.0, size=(n_views, 6, 8)).astype(np.float32)
    write_projections(tmp_path / "p.tif", p, g)
    q = read_projections(tmp_path / "p.tif", g)
    chex.assert_shape(q, (n_views, 6, 8))
    chex.assert_type(q, np.float32)
    assert np.array_equal(p.view(np.uint32), q.view(np.uint32))
    with tifffile.TiffFile(tmp_path / "p.tif") as t:  # one grey page per view, as ImageJ expects
        assert len(t.pages) == n_views and t.pages[0].shape == (6, 8)


def test_single_projection_keeps_its_view_axis(tmp_path):
    g = _cone(1)
    p = np.arange(48, dtype=np.float32).reshape(1, 6, 8) / 4
    write_projections(tmp_path / "p.tif", p, g)
    assert np.array_equal(read_projections(tmp_path / "p.tif", g), p)


def test_projections_that_look_like_raw_counts_and_angles_in_degrees_are_refused(tmp_path):
    g = _cone(5)
    counts = np.full((5, 6, 8), 40000.0, np.float32)  # a 16-bit detector's flat field
    tifffile.imwrite(tmp_path / "c.tif", counts, photometric="minisblack")
    _raises(lambda: read_projections(tmp_path / "c.tif", g), "c.tif", "'values'", "raw detector values")
    ok = np.zeros((5, 6, 8), np.float32)
    ok[:, 2:4, 3:5] = 29.0  # a very dense core, air around it
    tifffile.imwrite(tmp_path / "ok.tif", ok, photometric="minisblack")
    assert read_projections(tmp_path / "ok.tif", g).max() == 29.0
    write_geometry(tmp_path / "geometry.json", g)
    d = json.loads((tmp_path / "geometry.json").read_text())
    d["angles"] = list(np.linspace(0, 359, 5))
    (tmp_path / "geometry.json").write_text(json.dumps(d))
    _raises(lambda: read_geometry(tmp_path / "geometry.json"), "geometry.json", "'angles'", "degrees")
    d["angles"] = list(np.linspace(0, 4 * np.pi, 5))  # two turns (helical-like) stay allowed
    (tmp_path / "geometry.json").write_text(json.dumps(d))
    assert read_geometry(tmp_path / "geometry.json").n_views == 5


def test_projections_reject_malformed(tmp_path):
    g = _cone(5)
    good = np.zeros((5, 6, 8), np.float32)
    tifffile.imwrite(tmp_path / "n.tif", good[:4], photometric="minisblack")
    _raises(lambda: read_projections(tmp_path / "n.tif", g), "n.tif", "'shape'",
            "number of projections (4) ≠ number of angles in the geometry (5)")
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((5, 8, 6), np.float32), photometric="minisblack")
    _raises(lambda: read_projections(tmp_path / "s.tif", g), "'shape'", "≠ geometry n_detector")
    tifffile.imwrite(tmp_path / "i.tif", good.astype(np.uint16))
    _raises(lambda: read_projections(tmp_path / "i.tif", g), "'dtype'", "flat field as xray/flat.tif")
    bad = good.copy()
    bad[1, 2, 3] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", bad)
    _raises(lambda: read_projections(tmp_path / "f.tif", g), "'values'", "1 non-finite")
    (tmp_path / "x.tif").write_bytes(b"not a tiff at all")
    _raises(lambda: read_projections(tmp_path / "x.tif"), "x.tif", "not a readable TIFF")
    with pytest.raises(ValueError, match="does not match the geometry"):
        write_projections(tmp_path / "w.tif", good[:3], g)


# ---------------------------------------------------------------------------- volume


def _volume(shape=(4, 5, 6), quantity="attenuation"):
    data = np.random.default_rng(1).random(shape).astype(np.float32)
    return make_volume(data, (2.0, 0.5, 0.75), (-10.0, 3.25, 7.5), quantity=quantity)


@pytest.mark.parametrize("shape", [(4, 5, 6), (3, 5, 6), (1, 5, 6)])
def test_volume_round_trip_bit_identical_with_imagej_calibration(tmp_path, shape):
    v = _volume(shape)
    write_volume(tmp_path / "ct" / "volume.tif", v)
    w = read_volume(tmp_path / "ct" / "volume.tif")
    assert np.array_equal(v.data.view(np.uint32), w.data.view(np.uint32))
    assert (w.spacing_zyx, w.origin_xyz, w.quantity) == (v.spacing_zyx, v.origin_xyz, v.quantity)
    meta = json.loads((tmp_path / "ct" / "volume.json").read_text())
    assert meta == {"spacing_zyx": [2.0, 0.5, 0.75], "origin_xyz": [-10.0, 3.25, 7.5],
                    "units": "mm", "quantity": "attenuation"}
    with tifffile.TiffFile(tmp_path / "ct" / "volume.tif") as t:  # what Fiji/ImageJ would see
        assert t.imagej_metadata["spacing"] == 2.0 and t.imagej_metadata["unit"] == "mm"
        xr, yr = t.pages[0].tags["XResolution"].value, t.pages[0].tags["YResolution"].value
        assert xr[1] / xr[0] == pytest.approx(0.75) and yr[1] / yr[0] == pytest.approx(0.5)


def test_make_volume_centres_by_default():
    v = make_volume(np.zeros((3, 4, 5)), (2.0, 1.0, 0.5), quantity="HU")
    # voxel centres symmetric about 0 along each axis: origin = −(n−1)/2·d
    assert v.origin_xyz == (-1.0, -1.5, -2.0)


@pytest.mark.parametrize("edit, field, fragment", [
    (lambda d: d.update(spacing_zyx=[1.0, 0.0, 1.0]), "spacing_zyx", "positive"),
    (lambda d: d.update(spacing_zyx=[1.0, -2.0, 1.0]), "spacing_zyx", "positive"),
    (lambda d: d.update(spacing_zyx=[1.0, 1.0]), "spacing_zyx", "list of 3"),
    (lambda d: d.pop("quantity"), "quantity", "missing key"),
    (lambda d: d.update(quantity="intensity"), "quantity", "must be one of"),
    (lambda d: d.update(units="cm"), "units", "must be 'mm'"),
    (lambda d: d.pop("origin_xyz"), "origin_xyz", "missing key"),
])
def test_volume_json_rejects_malformed(tmp_path, edit, field, fragment):
    write_volume(tmp_path / "volume.tif", _volume())
    d = json.loads((tmp_path / "volume.json").read_text())
    edit(d)
    (tmp_path / "volume.json").write_text(json.dumps(d))
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "volume.json", f"'{field}'", fragment)


def test_volume_tiff_rejects_malformed(tmp_path):
    v = _volume()
    write_volume(tmp_path / "volume.tif", v)
    meta = (tmp_path / "volume.json").read_text()
    # calibration in the TIFF disagreeing with the JSON
    tifffile.imwrite(tmp_path / "volume.tif", v.data, imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "mm"})
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "volume.tif", "'spacing'", "disagrees")
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((2, 3, 4, 5), np.float32),
                     photometric="minisblack")
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "'shape'", "[nz, ny, nx]")
    tifffile.imwrite(tmp_path / "volume.tif", np.full((2, 3, 4), np.inf, np.float32),
                     photometric="minisblack")
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "'values'", "non-finite")
    (tmp_path / "volume.json").unlink()
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "volume.json", "file not found")
    (tmp_path / "volume.json").write_text(meta)
    (tmp_path / "volume.tif").unlink()
    _raises(lambda: read_volume(tmp_path / "volume.tif"), "volume.tif", "file not found")


# ---------------------------------------------------------------------------- images


def test_images_round_trip_and_float_scaling(tmp_path):
    rng = np.random.default_rng(2)
    imgs = {"b.png": rng.integers(0, 256, (7, 9, 3), dtype=np.uint8),
            "a.png": rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)}
    write_images(tmp_path, imgs)
    u8 = read_images(tmp_path, as_uint8=True)
    assert list(u8) == ["a.png", "b.png"]
    for k in imgs:
        assert u8[k].dtype == np.uint8 and np.array_equal(u8[k], imgs[k])
    f = read_images(tmp_path)
    for k in imgs:
        chex.assert_type(f[k], np.float32)
        np.testing.assert_array_equal(f[k], imgs[k].astype(np.float32) / np.float32(255))
    # RGB order on disk: OpenCV stores BGR, so channel 2 of the file is our red channel
    raw = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(raw[..., 2], imgs["a.png"][..., 0])


def test_grey_16bit_and_alpha_images(tmp_path):
    grey = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    g = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(g, np.repeat((grey / np.float32(65535)).astype(np.float32)[..., None], 3, -1))
    _raises(lambda: read_image(tmp_path / "g.png", as_uint8=True), "g.png", "'dtype'", "16-bit")
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 2] = 200  # red (BGRA on disk)
    rgba[..., 3] = [[255, 0], [51, 255]]
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    _raises(lambda: read_image(tmp_path / "a.png"), "a.png", "'alpha'", "background")
    out = read_image(tmp_path / "a.png", background=(0.0, 1.0, 0.0))
    a = rgba[..., 3:] / 255.0
    want = np.stack([200 / 255 * a[..., 0], 1 - a[..., 0], np.zeros((2, 2))], -1)
    np.testing.assert_allclose(out, want, atol=1e-6)
    rgba[..., 3] = 255  # fully opaque alpha is dropped exactly
    cv2.imwrite(str(tmp_path / "o.png"), rgba)
    assert np.array_equal(read_image(tmp_path / "o.png", as_uint8=True), rgba[..., 2::-1])


def test_cut_out_photos_are_their_own_masks(tmp_path):
    """Without rgb/masks, the photos' alpha channels are the object masks (alpha ≥ ½); a photo
    without transparency among cut-outs constrains nothing; rgb/masks, where present, wins."""
    from insideout_jax.io.images import read_alpha, read_masks

    img_dir = tmp_path / "rgb" / "images"
    img_dir.mkdir(parents=True)
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[..., 1] = 90
    bgra[..., 3] = [[0, 127, 128, 255]] * 3
    cv2.imwrite(str(img_dir / "a.png"), bgra)
    cv2.imwrite(str(img_dir / "b.png"), bgra[..., :3])  # no alpha
    assert read_alpha(img_dir / "b.png") is None
    np.testing.assert_allclose(read_alpha(img_dir / "a.png"), bgra[..., 3] / 255.0, atol=1e-7)
    m = read_masks(tmp_path, ["a.png", "b.png"])
    chex.assert_shape(m, (2, 3, 4))
    assert m.dtype == bool
    np.testing.assert_array_equal(m[0], [[False, False, True, True]] * 3)
    assert m[1].all()
    assert read_masks(tmp_path, ["b.png"]) is None  # no cut-out, no masks folder
    (tmp_path / "rgb" / "masks").mkdir()
    for n in ("a", "b"):
        cv2.imwrite(str(tmp_path / "rgb" / "masks" / f"{n}.png"), np.full((3, 4), 255, np.uint8))
    assert read_masks(tmp_path, ["a.png", "b.png"]).all()  # the user's masks, not the alpha
    bgra[..., 3] = 0
    cv2.imwrite(str(img_dir / "c.png"), bgra)
    _raises(lambda: read_alpha(img_dir / "c.png"), "c.png", "'alpha'", "fully transparent")


def test_exif_orientation_is_read_as_colmap_reads_it(tmp_path):
    """A phone's portrait photo stored landscape with an EXIF rotation: SfM (pycolmap) poses the
    stored pixel grid, so our reader must return that grid too (never the rotated view), or the
    cameras and the pixels disagree by 90°."""
    import pycolmap
    from PIL import Image

    yy, xx = np.mgrid[0:60, 0:80]
    stored = np.stack([xx * 3, yy * 4, 255 - xx * 3], -1).astype(np.uint8)  # no symmetry: a
    im = Image.fromarray(stored)  # rotated or transposed read cannot match
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "p.jpg", exif=exif, quality=100)
    ours = read_image(tmp_path / "p.jpg", as_uint8=True)
    colmap = pycolmap.Bitmap.read(str(tmp_path / "p.jpg"), True)
    assert ours.shape == (60, 80, 3) and (colmap.width, colmap.height) == (80, 60)
    np.testing.assert_allclose(ours.astype(float), stored.astype(float), atol=8)  # JPEG q100


def test_photos_of_mixed_sizes_are_resampled_with_their_cameras(tmp_path):
    """Two landscape photos and a portrait one (another camera): all are read at the common size
    (the most frequent, 64×48), the portrait one resampled with its camera resized, so a 3-D
    point's blob lands where the resized camera projects it; a folder of mixed sizes validates."""
    from insideout_jax.cameras import project_points, resize_camera
    from insideout_jax.io import read_colmap, write_colmap
    from insideout_jax.io.validate import common_size, read_registered_photos, validate_object

    pts = np.array([[3.0, -2.0, 1.0], [-4.0, 3.0, -1.5], [1.0, 4.0, 2.0]])
    cams, names = [], []
    for k, (w, h, f) in enumerate([(64, 48, 60.0), (64, 48, 60.0), (36, 60, 50.0)]):
        rot, t = look_at([40.0 * np.cos(k), 40.0 * np.sin(k), 10.0], [0.0, 0.0, 0.0])
        cams.append(make_pinhole(rot, t, f, f, w / 2 + 0.3, h / 2 - 0.2, w, h))
        names.append(f"v{k}.png")
    img_dir = tmp_path / "rgb" / "images"
    img_dir.mkdir(parents=True)
    yy, xx = np.mgrid[0:60, 0:64] + 0.5
    for name, cam in zip(names, cams, strict=True):
        uv, _ = project_points(cam, pts[:1].astype(np.float32))
        u, v = np.asarray(uv)[0]
        blob = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 3.0**2))[:cam.height, :cam.width]
        cv2.imwrite(str(img_dir / name), np.round(np.repeat(blob[..., None], 3, -1) * 255).astype(np.uint8))
    write_colmap(tmp_path / "rgb" / "sparse" / "0", make_colmap_model(names, cams, pts))
    validate_object(tmp_path)
    model = read_colmap(tmp_path / "rgb" / "sparse" / "0")
    assert common_size([(c.width, c.height) for c in model.cameras]) == (64, 48)
    photos, out_cams = read_registered_photos(tmp_path, model)
    chex.assert_shape(photos, (3, 48, 64, 3))
    k = model.image_names.index("v2.png")
    want = resize_camera(model.cameras[k], 64, 48)
    np.testing.assert_allclose([out_cams[k].fx, out_cams[k].fy, out_cams[k].cx, out_cams[k].cy],
                               [want.fx, want.fy, want.cx, want.cy], rtol=1e-6)
    np.testing.assert_allclose([want.fx, want.fy], [50.0 * 64 / 36, 50.0 * 48 / 60], rtol=1e-6)
    wgt = photos[k, ..., 0]
    got = [np.sum(wgt * (xx[:48, :64])) / wgt.sum(), np.sum(wgt * (yy[:48, :64])) / wgt.sum()]
    uv, _ = project_points(out_cams[k], pts[:1].astype(np.float32))
    np.testing.assert_allclose(got, np.asarray(uv)[0], atol=0.35)  # the blob's centroid


def test_images_reject_malformed(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _raises(lambda: read_images(tmp_path), "broken.png", "not a readable image")
    (tmp_path / "broken.png").unlink()
    _raises(lambda: read_images(tmp_path), "no .png/.jpg/.jpeg images")
    _raises(lambda: read_images(tmp_path / "nope"), "nope", "image folder not found")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        write_images(tmp_path, {"x.png": np.full((2, 2, 3), 1.5)})
    with pytest.raises(ValueError, match="plain file name"):
        write_images(tmp_path, {"x.bmp": np.zeros((2, 2, 3), np.uint8)})


# ---------------------------------------------------------------------------- transform.json / json


def _rotation(seed=3):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_transform_round_trip_and_meaning(tmp_path):
    t = make_similarity(_rotation(), [1.0, -2.0, 0.5], 2.5)
    write_transform(tmp_path / "transform.json", t)
    u = read_transform(tmp_path / "transform.json")
    assert np.array_equal(u.rotation, t.rotation) and np.array_equal(u.translation, t.translation)
    assert u.scale == t.scale
    p = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(u.apply(p), 2.5 * p @ t.rotation.T + [1.0, -2.0, 0.5])


@pytest.mark.parametrize("edit, field, fragment", [
    (lambda d: d.update(rotation=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), "rotation", "proper rotation"),
    (lambda d: d.update(rotation=[[-1, 0, 0], [0, 1, 0], [0, 0, 1]]), "rotation", "det = +1"),
    (lambda d: d.update(rotation=[[1, 0, 0], [0, 1, 0]]), "rotation", "3 rows"),
    (lambda d: d.update(scale=0.0), "scale", "positive"),
    (lambda d: d.pop("translation"), "translation", "missing key"),
])
def test_transform_rejects_malformed(tmp_path, edit, field, fragment):
    d = {"rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0], "scale": 1.0}
    edit(d)
    (tmp_path / "transform.json").write_text(json.dumps(d))
    _raises(lambda: read_transform(tmp_path / "transform.json"), "transform.json", f"'{field}'",
            fragment)


def test_write_json_atomic_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    with pytest.raises(ValueError):
        write_json_atomic(p, {"a": float("nan")})
    assert json.loads(p.read_text()) == {"a": 2}  # a failed write leaves the old file intact
    assert os.listdir(tmp_path / "sub") == ["x.json"]


# ---------------------------------------------------------------------------- whole folders


def _cameras(names):
    cams = []
    for k, _ in enumerate(names):
        ang = 2 * np.pi * k / len(names)
        rot, t = look_at([3 * np.cos(ang), 3 * np.sin(ang), 1.0], [0, 0, 0])
        cams.append(make_pinhole(rot, t, 50.0, 52.0, 16.0, 12.0, 32, 24))
    return cams


def test_object_folder_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    g = _cone(5)
    proj = rng.gamma(1.0, size=(5, 6, 8)).astype(np.float32)
    vol, truth = _volume(), _volume((3, 3, 3), "density")
    names = ["v0.png", "v1.png", "v2.png"]
    imgs = {n: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for n in names}
    model = make_colmap_model(names, _cameras(names), rng.normal(size=(10, 3)),
                              rng.integers(0, 256, (10, 3), dtype=np.uint8))
    tr = make_similarity(_rotation(5), [3.0, 2.0, 1.0], 0.25)
    root = write_object(tmp_path / "obj", geometry=g, projections=proj, volume=vol, images=imgs,
                        colmap=model, truth_volume=truth, truth_transform=tr)
    o = read_object(root, images_as_uint8=True)
    _assert_geometry_equal(o.geometry, g)
    assert np.array_equal(o.projections.view(np.uint32), proj.view(np.uint32))
    for a, b in ((o.volume, vol), (o.truth_volume, truth)):
        assert np.array_equal(a.data.view(np.uint32), b.data.view(np.uint32))
        assert (a.spacing_zyx, a.origin_xyz, a.quantity) == (b.spacing_zyx, b.origin_xyz, b.quantity)
    assert o.image_names == tuple(names)
    assert all(np.array_equal(o.images[n], imgs[n]) for n in names)
    assert o.colmap.image_names == tuple(names)
    assert np.array_equal(o.colmap.points_xyz, model.points_xyz)
    assert np.array_equal(o.colmap.points_rgb, model.points_rgb)
    for c, d in zip(o.colmap.cameras, model.cameras, strict=True):
        np.testing.assert_allclose(np.asarray(c.rotation), np.asarray(d.rotation), atol=1e-6)
        np.testing.assert_allclose(np.asarray(c.translation), np.asarray(d.translation), atol=1e-6)
        assert float(c.fx) == float(d.fx) and float(c.cy) == float(d.cy)
    assert np.array_equal(o.truth_transform.rotation, tr.rotation) and o.truth_transform.scale == 0.25


def test_object_folder_rejects_inconsistent_parts(tmp_path):
    root = tmp_path / "obj"
    _raises(lambda: read_object(root), "obj", "object folder not found")
    root.mkdir()
    _raises(lambda: read_object(root), "not an object folder")
    write_projections(root / "xray" / "projections.tif", np.zeros((5, 6, 8), np.float32))
    _raises(lambda: read_object(root), "geometry.json", "missing although")
    write_geometry(root / "xray" / "geometry.json", _cone(4))
    _raises(lambda: read_object(root), "projections.tif", "number of projections (5)")
    write_geometry(root / "xray" / "geometry.json", _cone(5))
    names = ["a.png", "b.png"]
    write_object(root, images={"a.png": np.zeros((24, 32, 3), np.uint8)},
                 colmap=make_colmap_model(names, _cameras(names)))
    _raises(lambda: read_object(root), "sparse/0", "'images'", "not in rgb/images", "b.png")
    with pytest.raises(ValueError, match="together"):
        write_object(root, geometry=_cone(5))
