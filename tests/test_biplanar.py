"""The biplanar experiment's parts: posed DRRs against resampled volumes, the triangulated centroid
against a known blob, the structure crop, and a one-case run of the whole experiment (resumed)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from insideout_jax.biplanar.cases import (
    BiplanarConfig,
    Case,
    field_grid,
    make_case,
    move_views,
    structure_crop,
    triangulate_centroid,
)
from insideout_jax.cameras import carm_geometry
from insideout_jax.data.ctobject import ct_volume_projections
from insideout_jax.registration.pose import invert_pose
from insideout_jax.registration.warp import warp_volume


def _blob_volume(n=40, sp=2.0):
    z, y, x = np.indices((n, n, n), dtype=np.float64)
    c = (n - 1) / 2
    vol = 0.02 * (((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) < 14**2)  # soft tissue ball
    vol += 0.05 * (((x - c - 6) ** 2 / 16 + (y - c + 3) ** 2 / 9 + (z - c - 2) ** 2 / 36) < 1)  # bone
    vol += 0.05 * (((x - c + 5) ** 2 + (y - c - 5) ** 2 + (z - c + 4) ** 2) < 9)
    return vol.astype(np.float32), (sp, sp, sp), tuple(-sp * c * np.ones(3))


def test_drr_in_moved_views_equals_drr_of_the_moved_volume():
    vol, sp, org = _blob_volume()
    vol = ndi.gaussian_filter(vol, 1.0)  # smooth, so that resampling the volume costs little
    pose = np.array([0.15, -0.1, 0.2, 6.0, -4.0, 3.0])
    centre = np.array([2.0, -1.0, 1.0])
    g = carm_geometry([97.0, -8.0], [6.0, -11.0], pixel_mm=1.6, n_detector=(64, 64), isocentre=centre)
    moved = np.asarray(warp_volume(jnp.asarray(vol), jnp.asarray(pose, jnp.float32), centre, sp, org))
    ref = ct_volume_projections(moved, sp, org, g)
    inv = np.asarray(invert_pose(jnp.asarray(pose, jnp.float32)), np.float64)
    got = ct_volume_projections(vol, sp, org, move_views(g, inv, centre))
    assert ref.max() > 1.0
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.02


def test_triangulated_centroid_finds_a_blob():
    n, sp = 40, 2.0
    z, y, x = np.indices((n, n, n), dtype=np.float64) * sp - sp * (n - 1) / 2
    centre = np.array([7.0, -5.0, 4.0])
    vol = (0.05 * np.exp(-0.5 * ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / 36)).astype(
        np.float32)
    org = (-sp * (n - 1) / 2,) * 3
    g = carm_geometry([93.0, 6.0], [-9.0, 12.0], pixel_mm=1.6, n_detector=(80, 80), isocentre=(1.0, 0.0, -1.0))
    proj = ct_volume_projections(vol, (sp, sp, sp), org, g)
    case = Case(0, np.zeros(6), g, proj, 0.0, np.zeros(6), 0.0)
    assert np.linalg.norm(triangulate_centroid(case) - centre) < 0.5


def test_structure_crop_and_case():
    vol, sp, org = _blob_volume()
    cfg = BiplanarConfig(crop_mm=48.0, field_mm=120.0, n_detector=48, max_trans_mm=10.0)
    crop = structure_crop(vol, sp, org, cfg=cfg)
    assert crop.data.shape == (24, 24, 24)
    assert np.linalg.norm(crop.centre) < 12  # the box with the most bone sits near the bones
    assert len(crop.targets) > 50 and crop.bone_level > 0.02
    assert crop.data[0, 0, 0] == 0  # outside the segmented structure
    case = make_case(crop, cfg, seed=3, index=1)
    assert case.projections.shape == (2, 48, 48)
    assert case.initial_mtre > case.start_mtre  # the triangulated start is closer than identity
    again = make_case(crop, cfg, seed=3, index=1)
    np.testing.assert_array_equal(again.projections, case.projections)
    shape, fsp, forg = field_grid(cfg, crop.centre)
    assert shape == (30, 30, 30) and fsp == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError, match="positive"):
        structure_crop(np.zeros((8, 8, 8)), sp, org, cfg=cfg)


def test_the_experiment_runs_one_case_and_resumes(tmp_path):
    from insideout_jax.biplanar.experiment import run_biplanar
    from insideout_jax.biplanar.methods import MethodConfig
    from insideout_jax.registration.optimize import ProjectionRegConfig, VolumeRegConfig
    from insideout_jax.train.xray import XrayTrainConfig

    vol, sp, org = _blob_volume()
    cfg = BiplanarConfig(crop_mm=48.0, field_mm=96.0, field_voxel_mm=4.0, n_detector=40, max_trans_mm=8.0,
                         max_rot_deg=8.0)
    mcfg = MethodConfig(preop_views=24,
                        preop=XrayTrainConfig(iterations=60, block=30, n_init=800, init="fdk", init_grid=32,
                                              densify_from=10**9, capacity_factor=1.0, backend="xla"),
                        recon=XrayTrainConfig(iterations=20, block=10, views_per_step=2, lambda_tv=0.05,
                                              tv_size=8, tv_spacing=4.0, densify_from=10**9, capacity_factor=1.0,
                                              backend="xla"),
                        volume_reg=VolumeRegConfig(levels=(1,), steps=(15,), lr_mm=(0.5,)),
                        projection_reg=ProjectionRegConfig(steps=15), rounds=1)
    m = run_biplanar(vol, sp, org, tmp_path, name="blobs", n_cases=1, cfg=cfg, mcfg=mcfg, progress=False,
                     say=lambda s: None)
    assert set(m["methods"]) == {"render_and_compare", "radgs_per_case", "fdk_then_3d"}
    for r in m["methods"].values():
        assert r["n_cases"] == 1 and np.isfinite(r["mtre_mm"]["mean"])
    assert np.isfinite(m["methods"]["radgs_per_case"]["recon_psnr_db"]["mean"])
    report = (tmp_path / "report.md").read_text()
    assert "Patient-specific" in report and "| render-and-compare" in report
    assert (tmp_path / "biplanar.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "cases.json").read_text())
    assert len(saved["records"]) == 3
    # a rerun keeps the records (one method suffices: case 0 is always recomputed, for the figure)
    m2 = run_biplanar(vol, sp, org, tmp_path, name="blobs", n_cases=1, cfg=cfg, mcfg=mcfg, progress=False,
                      say=lambda s: None, methods=["fdk_then_3d"])
    assert m2["methods"]["fdk_then_3d"]["mtre_mm"] == m["methods"]["fdk_then_3d"]["mtre_mm"]
    assert len(json.loads((tmp_path / "cases.json").read_text())["records"]) == 3


def test_networks_shapes_and_a_few_training_steps_lower_the_loss(tmp_path):
    import chex
    import jax

    from insideout_jax.biplanar.learned import (
        LearnedConfig,
        init_params,
        load_learned,
        make_samples,
        predict,
        train_learned,
    )
    from insideout_jax.biplanar.nets import RecNet, RegNet

    vol, sp, org = _blob_volume()
    cfg = BiplanarConfig(crop_mm=64.0, field_mm=96.0, n_detector=64, max_trans_mm=8.0, max_rot_deg=8.0)
    crop = structure_crop(vol, sp, org, cfg=cfg, centre=(0.0, 0.0, 0.0))
    assert crop.data.shape == (32, 32, 32)
    # RecM and RegM alone (the joint step is their sum; compiling it too would double the test's time)
    lcfg = LearnedConfig(image=32, anchors_side=5, rec_steps=5, reg_steps=5, joint_steps=0, batch=1, lr=3e-3,
                         checkpoint_every=4, reg_passes=2)
    x = jax.numpy.zeros((2, 32, 32, 1))
    params = init_params(jax.random.key(0), lcfg, 32)
    fact, eff = RecNet(n_anchors_side=5).apply(params["rec"], x, x, jax.random.key(1))
    chex.assert_shape([fact, eff], (2, 125, 14))
    chex.assert_shape(RegNet().apply(params["reg"], jax.numpy.zeros((2, 32, 32, 32)),
                                     jax.numpy.zeros((2, 32, 32, 32))), (2, 6))
    samples = make_samples(crop, cfg, lcfg, 4, seed=5, progress=False)
    chex.assert_shape([samples.xrays, samples.poses, samples.v_posed], [(4, 2, 32, 32), (4, 2, 5, 3), (4, 32, 32, 32)])
    ck = tmp_path / "learned.npz"
    trained = train_learned(crop, samples, cfg, lcfg, ck, progress=False)
    from insideout_jax.io.checkpoint import checkpoint_meta

    hist = checkpoint_meta(ck)["history"]
    assert len(hist) == 10
    rec = [h[2] for h in hist if h[0] == "rec"]
    reg = [h[2] for h in hist if h[0] == "reg"]
    assert rec[-1] < rec[0] and reg[-1] < reg[0]
    params, st = load_learned(ck, crop, cfg, lcfg)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    out = predict(params, make_case(crop, cfg, 99, 0), crop, cfg, lcfg, st)
    chex.assert_shape(out["pose"], (6,))
    assert np.all(np.isfinite(out["pose"]))
