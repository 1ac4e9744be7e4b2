"""Photos as taken: a phone lens distorts the realistic photos of the skull (table, backdrop), SfM
(pycolmap, SIMPLE_RADIAL) estimates it with the poses, and our undistortion maps every observation
back onto the pinhole camera."""

from __future__ import annotations

import numpy as np
import pycolmap

from insideout_jax.cameras import project_points
from insideout_jax.data import phantom as ph
from insideout_jax.data import scene
from insideout_jax.data.sfm import run_sfm
from insideout_jax.io import read_colmap
from insideout_jax.io.undistort import undistort_points

K_TRUE = -0.10  # a phone lens's barrel distortion (the realistic photos' k1), k2 = 0 here


def test_distort_sfm_undistort_round_trip(tmp_path):
    setup = scene.PhotoSetup(width=256, height=192, k1=K_TRUE, k2=0.0, jpeg_quality=95)
    cams = scene.photo_cameras(60, setup)
    skull = ph.skull_phantom()
    table_z = float(np.min(np.asarray(ph.phantom_surface_points(skull, 2000)[0])[:, 2]))
    jpegs, _ = scene.take_photos(skull, cams, setup, table_z)
    (tmp_path / "images").mkdir()
    for i, jpeg in enumerate(jpegs):
        (tmp_path / "images" / f"v{i:03d}.jpg").write_bytes(jpeg)
    res = run_sfm(tmp_path / "images", tmp_path / "sparse", camera_model="SIMPLE_RADIAL",
                  num_threads=1)  # deterministic
    assert res.registered_fraction >= 0.9
    model = read_colmap(tmp_path / "sparse" / "0")
    k_est, f_est = model.distortion[0][0], float(model.cameras[0].fx)
    print(f"k {k_est:.4f} (true {K_TRUE}), f {f_est:.2f} px (true {float(cams[0].fx):.2f})")
    # the table and the backdrop fill the frame, so the lens is determined to the corners (on the
    # skull alone on black, k was weakly constrained: −0.21 … −0.32 for −0.3, f up to 3 % off)
    np.testing.assert_allclose(k_est, K_TRUE, rtol=0.25)
    np.testing.assert_allclose(f_est, float(cams[0].fx), rtol=0.02)
    # every observation, undistorted by our closed form, against its 3-D point's pinhole projection
    rec = pycolmap.Reconstruction(tmp_path / "sparse" / "0")
    errors = []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        k = model.image_names.index(image.name)
        obs = [(p.xy, rec.points3D[p.point3D_id].xyz) for p in image.points2D if p.has_point3D()]
        uv, _ = project_points(model.cameras[k], np.array([o[1] for o in obs], np.float32))
        seen = undistort_points(np.array([o[0] for o in obs]), model.cameras[k], model.distortion[k])
        errors.append(np.linalg.norm(seen - np.asarray(uv), axis=1))
    err = float(np.concatenate(errors).mean())
    print(f"mean reprojection error through our undistortion: {err:.3f} px")
    assert err <= 0.5


def test_a_folder_declares_its_camera_model(tmp_path, monkeypatch):
    """``rgb/sfm.json`` picks SfM's camera model (photos without a lens); a bad file is an error
    naming the file and the field; without it the preset's model is used."""
    import json

    import pytest

    from insideout_jax.config import SfMConfig
    from insideout_jax.data import sfm
    from insideout_jax.data.objects import ensure_sfm

    assert sfm.declared_camera_model(tmp_path) is None
    (tmp_path / "rgb" / "images").mkdir(parents=True)
    opts = tmp_path / sfm.SFM_OPTIONS_FILE
    opts.write_text(json.dumps({"camera_model": "SIMPLE_PINHOLE"}))
    assert sfm.declared_camera_model(tmp_path) == "SIMPLE_PINHOLE"
    for bad, what in (('{"camera_model": "FISHEYE"}', "camera_model"), ('{"model": "PINHOLE"}',
                      "camera_model"), ("[1, 2]", "camera_model"), ("{not json", "JSON")):
        opts.write_text(bad)
        with pytest.raises(ValueError, match=what) as e:
            sfm.declared_camera_model(tmp_path)
        assert "sfm.json" in str(e.value)
    # ensure_sfm hands the declared model to SfM, else the preset's
    seen = []

    def fake_run_sfm(*a, camera_model, **k):
        seen.append(camera_model)
        raise sfm.SfMError("stop here")

    monkeypatch.setattr(sfm, "run_sfm", fake_run_sfm)
    opts.write_text(json.dumps({"camera_model": "PINHOLE"}))
    for _ in range(2):
        with pytest.raises(sfm.SfMError, match="stop here"):
            ensure_sfm(tmp_path, SfMConfig(camera_model="OPENCV"), verbose=False)
        opts.unlink(missing_ok=True)
    assert seen == ["PINHOLE", "OPENCV"]
