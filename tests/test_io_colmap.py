"""COLMAP models via pycolmap: round trip, agreement with pycolmap's own projection, rejections."""

from __future__ import annotations

import numpy as np
import pycolmap
import pytest

from insideout_jax.cameras import look_at, make_pinhole, project_points
from insideout_jax.io import ObjectFolderError, make_colmap_model, read_colmap, write_colmap


def _model(n=4, n_points=20, seed=0):
    rng = np.random.default_rng(seed)
    names, cams = [], []
    for k in range(n):
        ang = 2 * np.pi * k / n
        rot, t = look_at([4 * np.cos(ang), 4 * np.sin(ang), 1.5], [0.1, -0.2, 0.0])
        names.append(f"img_{(7 * k) % n:03d}.png")  # not in sorted order
        cams.append(make_pinhole(rot, t, 60.0 + k, 58.0, 31.5, 23.0, 64, 48))
    return make_colmap_model(names, cams, rng.normal(size=(n_points, 3)),
                             rng.integers(0, 256, (n_points, 3), dtype=np.uint8))


def _rec(model_dir, model_name, params, width=64, height=48, pose=True):
    """A one-image model written by pycolmap itself."""
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, model_name, 50.0, width, height)
    cam.params = params
    rec.add_camera_with_trivial_rig(cam)
    img = pycolmap.Image(name="a.png", camera_id=1, image_id=1)
    if pose:
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(
            pycolmap.Rotation3d(np.eye(3)), np.array([0.0, 0.0, 5.0])))
    else:
        rec.add_image_with_trivial_frame(img)
    model_dir.mkdir(parents=True, exist_ok=True)
    rec.write(model_dir)
    return model_dir


def test_round_trip(tmp_path):
    m = _model()
    write_colmap(tmp_path / "sparse" / "0", m)
    r = read_colmap(tmp_path / "sparse" / "0")
    assert r.image_names == tuple(sorted(r.image_names)) == m.image_names
    assert np.array_equal(r.points_xyz, m.points_xyz) and np.array_equal(r.points_rgb, m.points_rgb)
    assert r.points_xyz.dtype == np.float64 and r.points_rgb.dtype == np.uint8
    assert r.unregistered == ()
    for a, b in zip(r.cameras, m.cameras, strict=True):
        for f in ("fx", "fy", "cx", "cy"):
            assert float(getattr(a, f)) == float(getattr(b, f))
        assert (a.width, a.height) == (b.width, b.height)
        np.testing.assert_allclose(np.asarray(a.rotation), np.asarray(b.rotation), atol=1e-6)
        np.testing.assert_allclose(np.asarray(a.translation), np.asarray(b.translation), atol=1e-6)


def test_cameras_project_like_pycolmap(tmp_path):
    """Independent truth: pycolmap's own world → pixel mapping of the written model."""
    m = _model(n=3)
    write_colmap(tmp_path, m)
    rec = pycolmap.Reconstruction(tmp_path)
    ours = read_colmap(tmp_path)
    pts = np.random.default_rng(1).uniform(-0.5, 0.5, size=(6, 3))
    for image in rec.images.values():
        cam = ours.cameras[ours.image_names.index(image.name)]
        uv, _ = project_points(cam, pts.astype(np.float32))
        ref = np.array([image.project_point(p) for p in pts])
        np.testing.assert_allclose(np.asarray(uv), ref, atol=2e-3)


def test_simple_pinhole_and_text_models(tmp_path):
    _rec(tmp_path / "bin", "SIMPLE_PINHOLE", [70.0, 30.0, 20.0])
    c = read_colmap(tmp_path / "bin").cameras[0]
    assert float(c.fx) == float(c.fy) == 70.0 and float(c.cx) == 30.0
    rec = pycolmap.Reconstruction(tmp_path / "bin")
    (tmp_path / "txt").mkdir()
    rec.write_text(tmp_path / "txt")
    t = read_colmap(tmp_path / "txt")
    assert t.image_names == ("a.png",) and float(t.cameras[0].fx) == 70.0
    np.testing.assert_allclose(np.asarray(t.cameras[0].translation), [0, 0, 5])


def _err(fn, *fragments):
    with pytest.raises(ObjectFolderError) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


@pytest.mark.parametrize("model, params, dist", [
    ("SIMPLE_RADIAL", [50.0, 32.0, 24.0, -0.2], [-0.2, 0, 0, 0]),
    ("RADIAL", [50.0, 32.0, 24.0, -0.2, 0.05], [-0.2, 0.05, 0, 0]),
    ("OPENCV", [50.0, 52.0, 31.0, 25.0, 0.1, -0.03, 0.004, -0.002], [0.1, -0.03, 0.004, -0.002])])
def test_distorted_models_are_read_with_their_lens(tmp_path, model, params, dist):
    """The pinhole part and (k1, k2, p1, p2); pycolmap's own projection (with its lens) is ours
    followed by the closed-form distortion."""
    from insideout_jax.io.undistort import distort_points, undistort_points

    _rec(tmp_path, model, params)
    m = read_colmap(tmp_path)
    assert m.distorted and np.allclose(m.distortion[0], dist)
    cam = m.cameras[0]
    pts = np.random.default_rng(2).uniform(-1.5, 1.5, size=(20, 3))
    uv, _ = project_points(cam, pts.astype(np.float32))
    image = pycolmap.Reconstruction(tmp_path).images[1]
    ref = np.array([image.project_point(p) for p in pts])
    got = distort_points(np.asarray(uv, np.float64), cam, m.distortion[0])
    np.testing.assert_allclose(got, ref, atol=2e-3)
    np.testing.assert_allclose(undistort_points(ref, cam, m.distortion[0]), uv, atol=2e-3)


def test_unknown_camera_models_are_rejected(tmp_path):
    _rec(tmp_path, "FULL_OPENCV", [50.0, 50.0, 32.0, 24.0] + [0.01] * 8)
    _err(lambda: read_colmap(tmp_path), "cameras.bin", "camera 1", "FULL_OPENCV", "not supported")
    _rec(tmp_path, "PINHOLE", [50.0, 50.0, 32.0, 24.0])
    assert read_colmap(tmp_path).distortion == ()


def test_malformed_models_are_rejected(tmp_path):
    _err(lambda: read_colmap(tmp_path / "none"), "none", "model folder not found")
    d = _rec(tmp_path / "m", "PINHOLE", [50.0, 50.0, 32.0, 24.0])
    (d / "points3D.bin").unlink()
    _err(lambda: read_colmap(d), "points3D.bin", "missing")
    d = _rec(tmp_path / "c", "PINHOLE", [50.0, 50.0, 32.0, 24.0])
    (d / "cameras.bin").write_bytes(b"not a COLMAP camera file")
    _err(lambda: read_colmap(d), "'<file>'", "pycolmap cannot read")
    # a truncated file parses as zeros in pycolmap; the zero focal length is still caught
    d = _rec(tmp_path / "t", "PINHOLE", [50.0, 50.0, 32.0, 24.0])
    (d / "cameras.bin").write_bytes((d / "cameras.bin").read_bytes()[:10])
    _err(lambda: read_colmap(d), "cameras.bin", "camera 1", "fx must be a positive")
    d = _rec(tmp_path / "u", "PINHOLE", [50.0, 50.0, 32.0, 24.0], pose=False)
    _err(lambda: read_colmap(d), "images.bin", "'images'", "no registered image")
    d = _rec(tmp_path / "f", "PINHOLE", [-50.0, 50.0, 32.0, 24.0])
    _err(lambda: read_colmap(d), "camera 1", "fx must be a positive")


def test_make_colmap_model_validates():
    cams = _model(n=2).cameras
    with pytest.raises(ValueError, match="same"):
        make_colmap_model(["a.png"], cams)
    with pytest.raises(ValueError, match="distinct"):
        make_colmap_model(["a.png", "a.png"], cams)
    with pytest.raises(ValueError, match="points_rgb"):
        make_colmap_model(["a.png", "b.png"], cams, np.zeros((3, 3)), np.zeros((3, 3)))
