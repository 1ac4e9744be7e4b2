"""Object selection against a scene with closed-form membership: a sphere on a table disc before a
backdrop cylinder, seen from camera rings, in an arbitrary SfM frame (rotation, scale, shift)."""

from __future__ import annotations

import numpy as np
import pytest

from insideout_jax.cameras import look_at, make_pinhole, transform_camera
from insideout_jax.pipeline.selection import select_by_geometry, select_by_masks, selection_scores

R_OBJ, Z_TABLE, R_ROOM, DIST = 100.0, -100.0, 900.0, 500.0


def _scene(rng, n=6000):
    """(points [N, 3], is_object [N]): sphere surface, table disc, backdrop cylinder."""
    a = rng.normal(size=(n // 3, 3))
    obj = a / np.linalg.norm(a, axis=1, keepdims=True) * R_OBJ
    r, t = R_ROOM * np.sqrt(rng.uniform(0, 1, n // 3)), rng.uniform(0, 2 * np.pi, n // 3)
    table = np.stack([r * np.cos(t), r * np.sin(t), np.full(n // 3, Z_TABLE)], 1)
    table = table[np.linalg.norm(table[:, :2], axis=1) > 0.5 * R_OBJ]  # under the sphere: hidden
    t = rng.uniform(0, 2 * np.pi, n // 3)
    wall = np.stack([R_ROOM * np.cos(t), R_ROOM * np.sin(t), rng.uniform(Z_TABLE, 600, n // 3)], 1)
    pts = np.concatenate([obj, table, wall])
    return pts, np.arange(len(pts)) < len(obj)


def _cameras(size=(160, 120)):
    cams = []
    for el in (10.0, 35.0):
        for az in np.linspace(0, 2 * np.pi, 12, endpoint=False) + np.deg2rad(el):
            e = np.deg2rad(el)
            eye = DIST * np.array([np.cos(e) * np.cos(az), np.cos(e) * np.sin(az), np.sin(e)])
            rot, t = look_at(eye, np.zeros(3))
            cams.append(make_pinhole(rot, t, 150.0, 150.0, size[0] / 2, size[1] / 2, *size))
    return cams


def _sfm_frame(rng, pts, cams):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot, s, t = q * np.sign(np.linalg.det(q)), 0.013, rng.normal(size=3)
    return pts @ rot.T * s + t, [transform_camera(c, rot, t, s) for c in cams]


def _sphere_masks(cams):
    """Exact silhouettes: the pixel's ray meets the sphere."""
    out = []
    for c in cams:
        jj, ii = np.meshgrid(np.arange(c.width) + 0.5, np.arange(c.height) + 0.5)
        d = np.stack([(jj - float(c.cx)) / float(c.fx), (ii - float(c.cy)) / float(c.fy),
                      np.ones_like(jj)], -1) @ np.asarray(c.rotation, np.float64)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        o = -np.asarray(c.rotation, np.float64).T @ np.asarray(c.translation, np.float64)
        b = d @ o
        out.append(b * b - (o @ o - R_OBJ ** 2) >= 0)
    return np.stack(out)


@pytest.mark.parametrize("seed", [0, 1])
def test_geometry_keeps_the_object_and_drops_table_and_backdrop(seed):
    rng = np.random.default_rng(seed)
    pts, truth = _scene(rng)
    pts, cams = _sfm_frame(rng, pts, _cameras())
    sel = select_by_geometry(pts, cams)
    s = selection_scores(sel.keep, truth)
    print(sel.describe(), s)
    assert s["precision"] >= 0.98 and s["recall"] >= 0.95
    assert sel.table_height is not None


def test_masks_keep_the_visual_hull():
    rng = np.random.default_rng(2)
    pts, truth = _scene(rng)
    cams = _cameras()
    masks = _sphere_masks(cams)
    pts_s, cams_s = _sfm_frame(rng, pts, cams)  # the masks do not care about the frame
    s = selection_scores(select_by_masks(pts_s, cams_s, masks).keep, truth)
    print(s)
    assert s["precision"] >= 0.99 and s["recall"] >= 0.99


def test_no_table_removes_nothing_inside_the_ring():
    rng = np.random.default_rng(3)
    pts, truth = _scene(rng)
    keep = truth | (np.linalg.norm(pts[:, :2], axis=1) > 800)  # the sphere and the wall only
    sel = select_by_geometry(pts[keep], _cameras())
    assert sel.table_height is None
    assert np.array_equal(sel.keep, truth[keep])


def test_the_evaluation_scores_a_selection_against_true_silhouettes():
    """selection_truth maps the SfM-frame splats into the CT frame by the true transform and scores
    the kept ones against the true masks: a perfect selection scores 1, keeping all less."""
    import jax.numpy as jnp

    from insideout_jax.config import preset
    from insideout_jax.io import make_similarity
    from insideout_jax.pipeline import Truth
    from insideout_jax.pipeline.evaluate import selection_truth
    from insideout_jax.splats import rgb_splats_from_points

    rng = np.random.default_rng(4)
    pts, is_obj = _scene(rng, n=3000)
    cams = _cameras()
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    s, t = 0.02, rng.normal(size=3)
    sfm = pts @ rot.T * s + t  # SfM = s R ct + t, so ct = Rᵀ (sfm − t) / s
    truth = Truth(transform=make_similarity(rot.T, -rot.T @ t / s, 1 / s),
                  silhouettes=(_sphere_masks(cams), cams, None))
    cand = rgb_splats_from_points(sfm, opacity=0.5)
    cfg = preset("tiny")
    perfect = selection_truth(cand.replace(active=jnp.asarray(is_obj)), cand, truth, cfg)
    # a visual hull also holds the few table points hidden under the sphere from every view
    assert perfect["precision"] == 1.0 and perfect["recall"] >= 0.99
    everything = selection_truth(cand, cand, truth, cfg)
    assert everything["recall"] == 1.0 and everything["precision"] < 0.4


def test_photos_are_matted_to_the_kept_splats():
    """Pixels the kept splats cover stay photo; the dropped splat's pixels become background."""
    import jax.numpy as jnp

    from insideout_jax.pipeline import matte_photos
    from insideout_jax.splats import rgb_splats_from_points

    cam = make_pinhole(*look_at(np.array([0.0, -100.0, 0.0]), np.zeros(3)), 80.0, 80.0, 32.0, 24.0, 64, 48)
    sp = rgb_splats_from_points(np.array([[-15.0, 0, 0], [15.0, 0, 0]]), opacity=0.99,
                                log_scales=np.full((2, 3), np.log(4.0)))
    photos = np.random.default_rng(5).uniform(0.2, 1.0, (1, 48, 64, 3)).astype(np.float32)
    same = matte_photos(photos, [cam], sp, np.array([True, True]), (0.0, 0.0, 0.0))
    assert same is photos  # nothing dropped: untouched
    out = matte_photos(photos, [cam], sp, jnp.asarray([True, False]), (0.0, 0.0, 0.0))
    from insideout_jax.cameras import project_points
    (u0, v0), (u1, v1) = np.asarray(project_points(cam, jnp.asarray(sp.means))[0]).astype(int)
    assert np.array_equal(out[0, v0, u0], photos[0, v0, u0])  # the kept splat's centre
    assert np.all(out[0, v1, u1] == 0) and np.all(out[0, :, -2:] == 0)  # the dropped one, the edge
