"""Realistic photos: the object through the lens where its closed-form silhouette says, with the
clean render's colours there; the table and backdrop around it; a generated object with them."""

from __future__ import annotations

import cv2
import jax.numpy as jnp
import numpy as np

from insideout_jax.data import phantom as ph
from insideout_jax.data import raycast
from insideout_jax.data.scene import PhotoSetup, photo_cameras, take_photos
from insideout_jax.io.undistort import undistort_points


def _rays_through(cam, uv):
    """Rays of the pinhole camera through pixel positions uv [N, 2] (COLMAP convention)."""
    r, t = np.asarray(cam.rotation, np.float64), np.asarray(cam.translation, np.float64)
    d_cam = np.stack([(uv[:, 0] - float(cam.cx)) / float(cam.fx),
                      (uv[:, 1] - float(cam.cy)) / float(cam.fy), np.ones(len(uv))], 1)
    d = d_cam @ r
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(-r.T @ t, d.shape)
    return jnp.asarray(o, jnp.float32), jnp.asarray(d, jnp.float32)


def test_photos_show_the_object_through_the_lens():
    skull = ph.skull_phantom()
    setup = PhotoSetup(width=128, height=96, k1=-0.12, k2=0.03)
    cams = photo_cameras(3, setup)
    table_z = float(np.asarray(ph.phantom_surface_points(skull, 5000)[0])[:, 2].min())
    jpegs, masks = take_photos(skull, cams, setup, table_z)
    assert masks.shape == (3, 96, 128)
    for jpeg, mask, cam in zip(jpegs, masks, cams, strict=True):
        photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1] / 255.0
        assert photo.shape == (96, 128, 3)
        jj, ii = np.meshgrid(np.arange(128) + 0.5, np.arange(96) + 0.5)
        uv = undistort_points(np.stack([jj.ravel(), ii.ravel()], 1), cam, setup.distortion)
        hit, pts, nrm = (np.asarray(a) for a in raycast.outer_surface_hits(skull, *_rays_through(cam, uv)))
        assert np.mean(hit == mask.ravel()) > 0.99  # the silhouette is the lens-mapped closed form
        inner = hit & mask.ravel()
        want = raycast.shade_points(pts[inner], nrm[inner])
        diff = np.abs(photo.reshape(-1, 3)[inner] - want).mean()
        assert diff < 0.06, diff  # noise, JPEG and the bilinear lens resampling
        assert 0.05 < mask.mean() < 0.6  # the object, and a world around it
        assert photo.reshape(-1, 3)[~mask.ravel()].mean() > 0.2  # not black: table and backdrop


def test_make_skull_with_realistic_photos(tmp_path):
    from insideout_jax.data import __main__ as cli
    from insideout_jax.io import read_json, read_object

    out = tmp_path / "skull"
    rc = cli.main(["make", "skull", "--out", str(out), "--photo-style", "realistic", "--photos", "4",
                   "--photo-size", "64", "--views", "8", "--detector", "16", "--volume", "16"])
    assert rc == 0
    obj = read_object(out, load_images=True)
    assert obj.image_names == tuple(f"view_{k:03d}.jpg" for k in range(4))
    assert all(img.shape == (48, 64, 3) for img in obj.images.values())
    lens = read_json(out / "truth" / "lens.json")
    assert lens["model"] == "OPENCV" and lens["k1_k2_p1_p2"][:2] == [-0.10, 0.02]
    assert len(list((out / "truth" / "masks").glob("view_*.png"))) == 4
