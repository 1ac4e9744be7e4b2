"""insideout_jax.pipeline's decisions about the data, its metrics contract and progress callback,
each against a closed form or a library reference. (The whole pipeline in memory against the
runner: tests/test_runner.py::test_fuse_in_memory_matches_the_runner.)"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from insideout_jax import io as iio
from insideout_jax.cameras import camera_center, make_xray_geometry, ring_cameras, xray_project
from insideout_jax.config import preset
from insideout_jax.pipeline import empty_metrics, merge_metrics, seeded_config
from insideout_jax.pipeline import geometry as pg
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points, transform_splats
from insideout_jax.train.loop import run_training


def _box_volume():
    d = np.zeros((20, 30, 40), np.float32)
    d[5:12, 8:20, 10:31] = 1.0  # z 5..11, y 8..19, x 10..30
    return iio.make_volume(d, (2.0, 1.0, 0.5), (-10.0, 3.0, 7.0), quantity="attenuation")


def test_object_bbox_and_grid_of_a_box():
    vol = _box_volume()
    lo, hi = pg.object_bbox(vol)
    org = np.array([-10.0, 3.0, 7.0])
    np.testing.assert_allclose(lo, org + [10 * 0.5, 8 * 1.0, 5 * 2.0])
    np.testing.assert_allclose(hi, org + [30 * 0.5, 19 * 1.0, 11 * 2.0])
    grid = pg.object_grid(vol, 16)
    side = 1.1 * np.max(hi - lo)
    chex.assert_shape(jnp.zeros(grid.shape_zyx), (16, 16, 16))
    np.testing.assert_allclose(np.asarray(grid.spacing_zyx), side / 16, rtol=1e-6)
    centre = np.asarray(grid.origin_xyz) + 7.5 * side / 16
    np.testing.assert_allclose(centre, 0.5 * (lo + hi), rtol=1e-5, atol=1e-5)
    with pytest.raises(pg.PipelineInputError, match="empty"):
        pg.object_bbox(iio.make_volume(np.zeros((4, 4, 4), np.float32), (1, 1, 1),
                                       quantity="attenuation"))


def test_comparison_grid_spans_the_volume_and_resampling_is_exact_on_its_own_grid():
    vol = _box_volume()
    sp, org = pg.comparison_grid(vol, 10)
    ext = np.array([20 * 2.0, 30 * 1.0, 40 * 0.5])
    np.testing.assert_allclose(sp, ext / 10)
    # the first cell's lower corner is the volume's first voxel's lower corner
    np.testing.assert_allclose(org - 0.5 * sp[::-1], np.asarray(vol.origin_xyz) - 0.5 * np.array([0.5, 1.0, 2.0]))
    rng = np.random.default_rng(0)
    # axes with fewer voxels than cells: linear interpolation, exact on a linear ramp at the n
    # cell centres of each axis
    z, y, x = np.meshgrid(*[np.arange(k, dtype=np.float32) for k in (6, 5, 4)], indexing="ij")
    c = [(np.arange(6) + 0.5) * k / 6 - 0.5 for k in (6, 5, 4)]
    c = [np.clip(ci, 0, k - 1) for ci, k in zip(c, (6, 5, 4), strict=True)]  # ends held
    want = c[0][:, None, None] + 2 * c[1][None, :, None] + 3 * c[2][None, None, :]
    np.testing.assert_allclose(pg.resample_block(z + 2 * y + 3 * x, 6), want, atol=1e-4)
    assert np.isclose(ndimage.map_coordinates(z + 2 * y + 3 * x, [[c[0][1]], [c[1][2]], [c[2][3]]], order=1)[0],
                      want[1, 2, 3], atol=1e-4)
    # axes with more: the mean of the voxels each cell covers (by overlap)
    fine = rng.random((12, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(pg.resample_block(fine, 6), fine.reshape(6, 2, 6, 2, 6, 2).mean((1, 3, 5)),
                               atol=1e-6)
    odd = rng.random((13, 17, 9)).astype(np.float32)
    assert np.isclose(pg.resample_block(odd, 8).mean(), odd.mean(), rtol=1e-5)  # mass kept
    cube = rng.random((6, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(pg.resample_block(cube, 6), cube, atol=1e-6)
    v = iio.make_volume(cube, (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), quantity="attenuation")
    from insideout_jax.render.slices import make_voxel_grid

    same = make_voxel_grid((6, 6, 6), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0))
    np.testing.assert_allclose(pg.resample_to(cube, v, same), cube, atol=1e-6)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_fov_grid_is_seen_by_every_view(mode):
    kw = dict(dso=500.0, dsd=1000.0) if mode == "cone" else {}
    geom = make_xray_geometry(mode=mode, n_detector=(64, 80), d_detector=(1.0, 1.0),
                              angles=np.linspace(0, 2 * np.pi, 12, endpoint=False), **kw)
    grid = pg.fov_grid(geom, 8)
    n, sp = 8, float(grid.spacing_zyx[0])
    mag = 2.0 if mode == "cone" else 1.0
    assert n * sp == pytest.approx(64 / mag / np.sqrt(2), rel=1e-6)
    c = np.array(np.meshgrid(*[[0, n - 1]] * 3, indexing="ij")).reshape(3, -1).T
    corners = np.asarray(grid.origin_xyz) + c[:, ::-1] * sp
    for a in np.asarray(geom.angles):
        uv, _ = xray_project(geom, jnp.float32(a), jnp.asarray(corners, jnp.float32))
        uv = np.asarray(uv)
        assert np.all((uv[:, 0] > 0) & (uv[:, 0] < 79) & (uv[:, 1] > 0) & (uv[:, 1] < 63))


def test_object_points_drop_floaters_and_faint_radiative_splats():
    pts = np.arange(30, dtype=np.float32).reshape(10, 3)
    rgb = rgb_splats_from_points(pts, capacity=12)
    rgb = rgb.replace(opacity_logits=jnp.where(jnp.arange(12) < 5, 3.0, -6.0))
    got = pg.object_points(rgb, min_opacity=0.05)
    np.testing.assert_array_equal(got, pts[:5])
    dens = np.r_[np.full(6, 1.0), np.full(4, 1e-3)]
    rad = rad_splats_from_points(pts, dens.astype(np.float32), capacity=12)
    np.testing.assert_array_equal(pg.object_points(rad, density_fraction=0.05), pts[:6])


def test_apply_to_all_moves_unfitted_splats_by_the_similarity():
    from insideout_jax.fitting.hierarchical import HierarchicalFitResult
    from insideout_jax.fitting.procrustes import Similarity

    rng = np.random.default_rng(1)
    rgb = rgb_splats_from_points(rng.normal(size=(8, 3)).astype(np.float32), sh_degree=1)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", [0.3, -0.2, 1.0]).as_matrix().astype(np.float32)
    tr = Similarity(jnp.asarray(rot), jnp.asarray([1.0, 2.0, 3.0], jnp.float32), jnp.float32(2.0))
    fitted = rgb.replace(means=rgb.means + 100.0, active=jnp.arange(8) < 3)
    res = pg.apply_to_all(HierarchicalFitResult(fitted, tr, (), np.zeros((0, 3))), rgb)
    moved = transform_splats(rgb, tr.rotation, tr.translation, tr.scale)
    np.testing.assert_allclose(res.splats.means[:3], fitted.means[:3])
    np.testing.assert_allclose(res.splats.means[3:], moved.means[3:], rtol=1e-6)
    np.testing.assert_allclose(res.splats.sh[3:], moved.sh[3:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.splats.means[3:], (2.0 * np.asarray(rgb.means[3:]) @ rot.T) + [1, 2, 3],
                               rtol=1e-5, atol=1e-5)


def test_photos_downscale_by_area_and_cameras_follow_the_similarity():
    cams = ring_cameras(3, size=32, distance=100.0)
    imgs = np.random.default_rng(2).random((3, 32, 32, 3)).astype(np.float32)
    small, cams2 = pg.downscale_photos(imgs, cams, 2)
    chex.assert_shape(small, (3, 16, 16, 3))
    np.testing.assert_allclose(small[0], imgs[0].reshape(16, 2, 16, 2, 3).mean((1, 3)), atol=1e-6)
    assert cams2[0].width == 16
    rot = np.eye(3, dtype=np.float32)[[1, 2, 0]]
    from insideout_jax.fitting.procrustes import Similarity

    moved = pg.cameras_in_ct_frame(cams, Similarity(rot, np.array([5.0, 0.0, -1.0]), 0.5))
    for a, b in zip(cams, moved, strict=True):
        np.testing.assert_allclose(np.asarray(camera_center(b)),
                                   0.5 * rot @ np.asarray(camera_center(a)) + [5.0, 0.0, -1.0],
                                   rtol=1e-5, atol=1e-4)


def test_merge_metrics_writes_leaves_and_keeps_the_rest():
    m = empty_metrics("obj", "tiny")
    merge_metrics(m, {"heldout_views": {"rgb": {"psnr": 30.0, "ssim": 0.9}},
                      "volume": {"fdk": {"psnr3d": 20.0, "ssim3d": 0.5}}})
    assert m["heldout_views"]["rgb"] == {"psnr": 30.0, "ssim": 0.9}
    assert m["heldout_views"]["xray"] == {"psnr": None, "ssim": None}
    assert m["volume"]["radiative"] == {"psnr3d": None, "ssim3d": None}
    assert m["volume"]["fdk"]["psnr3d"] == 20.0


def test_seeded_config_draws_each_stage_seed_from_the_key():
    cfg = preset("tiny")
    a, b = seeded_config(cfg, jax.random.key(0)), seeded_config(cfg, jax.random.key(0))
    c = seeded_config(cfg, jax.random.key(1))
    seeds = lambda k: (k.rgb.train.seed, k.xray.train.seed, k.fitting.seed, k.internal.rad.seed,  # noqa: E731
                       k.internal.rgb.seed)
    assert seeds(a) == seeds(b) and seeds(a) != seeds(c) and len(set(seeds(a))) == 5
    assert a.rgb.train.iterations == cfg.rgb.train.iterations


def test_training_progress_goes_to_a_callback():
    calls = []
    state = {"step": 0, "params": {"means": np.zeros((2, 3))}}
    run_training(state, n_iters=7, block=3, run_block=lambda s, n: (dict(s), np.full(n, 0.5)),
                 after_block=lambda s: s, template=None, desc="t",
                 progress=lambda *a: calls.append(a))
    assert calls == [("t", 3, 7, 0.5), ("t", 6, 7, 0.5), ("t", 7, 7, 0.5)]


def test_stack_inplane_downsampling_averages_blocks():
    from insideout_jax.stacks.frames import downsample_inplane

    raw = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    labels = (raw > 30)[None]
    out, lab, sp = downsample_inplane(raw, labels, (3.0, 0.5, 0.25), 2)
    chex.assert_shape(out, (2, 2, 3))
    np.testing.assert_allclose(out[1, 1, 2], raw[1, 2:4, 4:6].mean())
    assert sp == (3.0, 1.0, 0.5)
    np.testing.assert_array_equal(lab[0], labels[0, :, :4, :6].reshape(2, 2, 2, 3, 2).mean((2, 4)) >= 0.5)


def _sphere(n: int, r: float) -> np.ndarray:
    """n Fibonacci points on a sphere of radius r (mm)."""
    k = np.arange(n) + 0.5
    z = 1 - 2 * k / n
    phi = np.pi * (1 + 5**0.5) * k
    rho = np.sqrt(1 - z**2)
    return (r * np.stack([rho * np.cos(phi), rho * np.sin(phi), z], 1)).astype(np.float32)


def test_the_chamfer_note_is_computed_from_its_numbers():
    from insideout_jax import evaluation as ev
    from insideout_jax.pipeline.evaluate import _chamfer_rise_note, _spacing

    rad = _sphere(4000, 50.0)
    assert _spacing(rad) == pytest.approx(np.sqrt(4 * np.pi * 50.0**2 / 4000), rel=0.15)
    for scale, far in ((1.2, True), (1.004, False)):  # the RGB shell grows by 10 mm / 0.2 mm
        rgb_in = rad * scale
        ch = ev.chamfer_block({"none": rad, "hierarchical": rad, "internal": rgb_in}, rad)
        note = _chamfer_rise_note(ch, rad, rgb_in, rad, rad)
        assert "moved by mostly the RGB set" in note
        assert ("exceeds twice the median spacing" in note) == far
        assert ("not a misalignment" in note) == (not far)
    ch = ev.chamfer_block({"none": rad, "hierarchical": rad * 1.1, "internal": rad}, rad)
    assert _chamfer_rise_note(ch, rad * 1.1, rad, rad, rad) is None  # no rise, no note


def test_the_piqe_note_reads_the_scores_it_cites():
    from insideout_jax.metrics.image import piqe_slice
    from insideout_jax.pipeline.evaluate import _reference_piqe_note

    rng = np.random.default_rng(0)
    refs = np.stack([np.kron(rng.random((8, 8)), np.ones((16, 16))) for _ in range(2)]).astype(np.float32)
    ref = float(np.mean([piqe_slice(r) for r in refs]))
    cross = lambda a, b: {"radiative": {"heldout": {"piqe": a}}, "insideout": {"heldout": {"piqe": b}}}  # noqa: E731
    assert "worse than both" in _reference_piqe_note(refs, cross(ref - 5, ref - 1))
    assert "better than both" in _reference_piqe_note(refs, cross(ref + 5, ref + 1))
    assert "between" in _reference_piqe_note(refs, cross(ref - 5, ref + 1))
    assert f"{ref:.1f}" in _reference_piqe_note(refs, cross(ref - 5, ref + 1))
