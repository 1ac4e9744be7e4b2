"""Photos as taken: a lens distorts the skull's renders, SfM (pycolmap, SIMPLE_RADIAL) estimates
it with the poses, and our undistortion maps every observation back onto the pinhole camera."""

from __future__ import annotations

import cv2
import numpy as np
import pycolmap

from insideout_jax.cameras import project_points
from insideout_jax.data import phantom as ph
from insideout_jax.data.raycast import render_phantom_rgb
from insideout_jax.data.sfm import run_sfm
from insideout_jax.data.skull_setup import default_skull_cameras
from insideout_jax.io import read_colmap
from insideout_jax.io.undistort import distort_image, undistort_points

K_TRUE = -0.3  # strong barrel distortion: well determined by SfM at 256² (−0.15 was not)


def test_distort_sfm_undistort_round_trip(tmp_path):
    cams = default_skull_cameras(60, size=256)
    renders = render_phantom_rgb(ph.skull_phantom(), cams)
    (tmp_path / "images").mkdir()
    for i, (img, cam) in enumerate(zip(renders, cams, strict=True)):
        photo = distort_image(img, cam, (K_TRUE, 0.0, 0.0, 0.0))
        cv2.imwrite(str(tmp_path / "images" / f"v{i:03d}.png"),
                    (np.clip(photo, 0, 1) * 255 + 0.5).astype(np.uint8)[..., ::-1])
    res = run_sfm(tmp_path / "images", tmp_path / "sparse", camera_model="SIMPLE_RADIAL",
                  num_threads=1)  # deterministic
    assert res.registered_fraction >= 0.9
    model = read_colmap(tmp_path / "sparse" / "0")
    k_est, f_est = model.distortion[0][0], float(model.cameras[0].fx)
    print(f"k {k_est:.4f} (true {K_TRUE}), f {f_est:.2f} px (true {float(cams[0].fx):.2f})")
    # k is weakly constrained where the skull leaves the corners empty: with k = −0.15 threaded runs
    # gave −0.144 … −0.167 and once +0.04; at −0.3 on one thread: −0.324, f within 0.1 %
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
