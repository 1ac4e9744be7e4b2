"""The biplanar experiment's parts: posed DRRs against resampled volumes, the triangulated centroid
against a known blob, the structure crop, and a one-case run of the whole experiment (resumed)."""

import dataclasses
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


def _small_crop():
    """(config, 32³ crop of the blob volume) at the learned networks' test sizes."""
    vol, sp, org = _blob_volume()
    cfg = BiplanarConfig(crop_mm=64.0, field_mm=96.0, n_detector=64, max_trans_mm=8.0, max_rot_deg=8.0)
    return cfg, structure_crop(vol, sp, org, cfg=cfg, centre=(0.0, 0.0, 0.0))


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

    cfg, crop = _small_crop()
    assert crop.data.shape == (32, 32, 32)
    # RecM and RegM alone (the joint step is their sum; compiling it too would double the test's time)
    lcfg = LearnedConfig(image=32, anchors_side=5, rec_steps=5, reg_steps=5, joint_steps=0, batch=1, lr=3e-3,
                         checkpoint_every=4, reg_passes=2, rounds=2)
    x = jax.numpy.zeros((2, 32, 32, 1))
    params = init_params(jax.random.key(0), lcfg, 32)
    fact, eff = RecNet(n_anchors_side=5).apply(params["rec"], x, x, jax.random.key(1), jnp.zeros((2, 2, 125, 2)))
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
    assert len(out["rounds"]) == st.lcfg.rounds == lcfg.rounds == 2
    np.testing.assert_array_equal(out["rounds"][-1], out["pose"])


def test_pixel_aligned_features_sample_where_the_anchors_project():
    """The anchors' network-image coordinates equal their full-detector projections (the points
    moved by the start translation, which the samples' views are shifted by) rescaled to the
    network's pixels, and the sampler equals scipy's bilinear interpolation."""

    from insideout_jax.biplanar.learned import LearnedConfig, _anchor_uv, case_sample, statics
    from insideout_jax.biplanar.nets import anchor_grid, sample_features
    from insideout_jax.xray_geometry import xray_project

    cfg, crop = _small_crop()
    lcfg = LearnedConfig(image=32, anchors_side=4)
    case = make_case(crop, cfg, 3, 0)
    _, poses, _, t_s = case_sample(case, crop, cfg, lcfg)
    uv = np.asarray(_anchor_uv(statics(crop, cfg, lcfg, 1.0), jnp.asarray(poses)[None]))[0]
    pts = crop.centre + crop.half_size * anchor_grid(4).astype(np.float64) + t_s
    for v in range(2):
        full = np.asarray(xray_project(case.geometry, case.geometry.poses[v], jnp.asarray(pts, jnp.float32))[0])
        np.testing.assert_allclose(uv[v], (full + 0.5) / 2 - 0.5, atol=2e-3)
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    pix = rng.uniform(-2, 33, (1, 50, 2)).astype(np.float32)  # image pixels (stride 4): some off the map
    got = np.asarray(sample_features(jnp.asarray(fmap), jnp.asarray(pix), 4))[0]
    rows, cols = (pix[0, :, 1] - 3) / 4, (pix[0, :, 0] - 3) / 4
    for c in range(3):
        ref = ndi.map_coordinates(fmap[0, ..., c].astype(np.float64), [rows, cols], order=1, mode="constant", cval=0.0)
        inside = (rows >= 0) & (rows <= 7) & (cols >= 0) & (cols <= 7)
        np.testing.assert_allclose(got[inside, c], ref[inside], atol=1e-5)
    # the centre convention: stride-2 "SAME" 3×3 convolutions with only the centre tap pick input
    # pixel 2k + 1, twice 4k + 3; sampling their output there gives the input back
    import flax.linen as nn

    img = jnp.asarray(rng.normal(size=(1, 32, 32, 1)).astype(np.float32))
    tap = {"params": {"kernel": jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0), "bias": jnp.zeros(1)}}
    conv = nn.Conv(1, (3, 3), strides=2)
    twice = conv.apply(tap, conv.apply(tap, img))
    k = np.arange(8)
    at = jnp.asarray(np.stack(np.meshgrid(4 * k + 3, 4 * k + 3, indexing="xy"), -1).reshape(1, -1, 2), jnp.float32)
    np.testing.assert_allclose(np.asarray(sample_features(twice, at, 4))[0, :, 0],
                               np.asarray(img[0, 4 * k + 3][:, 4 * k + 3, 0]).reshape(-1), atol=1e-6)


def test_untrained_head_fills_the_crop_with_its_mean_attenuation():
    """Raw head outputs 0 voxelize to the crop's mean attenuation (mass K·ρ·(2π)^{3/2}σ³ over the
    cube), the start that keeps softplus away from its flat end."""
    from insideout_jax.biplanar.learned import LearnedConfig, statics
    from insideout_jax.biplanar.nets import anchor_grid, head_to_splats
    from insideout_jax.render.slices import make_voxel_grid, voxelize

    vol, sp, org = _blob_volume()
    cfg = BiplanarConfig(crop_mm=64.0, field_mm=96.0, n_detector=64)
    crop = structure_crop(vol, sp, org, cfg=cfg, centre=(0.0, 0.0, 0.0))
    lcfg = LearnedConfig(anchors_side=9)
    st = statics(crop, cfg, lcfg, 1.0)
    out = jnp.concatenate([jnp.asarray(anchor_grid(9)), jnp.zeros((9**3, 11))], -1)
    s = head_to_splats(out, st.centre, st.half, st.density_unit)
    field = np.asarray(voxelize(s, make_voxel_grid((32,) * 3, st.spacing, st.origin), backend="xla"))
    # the mass in the cube: the grid's outer Gaussians (1.6 σ from the faces) lose part of theirs
    assert 0.85 * crop.data.mean() < field.mean() < 1.0 * crop.data.mean()


def test_report_states_how_the_learned_networks_were_trained(tmp_path):
    from insideout_jax.biplanar.report import _learned_note

    assert _learned_note(tmp_path, {"render_and_compare": {}}) == []
    cfg = "LearnedConfig(rec_steps=2000, pixel_aligned=True, lambda_volume=5.0, seed=1000)"
    (tmp_path / "training.json").write_text(json.dumps(dict(training_seconds=600.0, steps={"rec": 2000, "reg": 5},
                                                             config=cfg)))
    text = " ".join(_learned_note(tmp_path, {"radgs_learned": {}}))
    assert "10.0 min of steps (rec 2000, reg 5)" in text
    assert "adds 5 × the L1 distance" in text and "pixel-aligned" in text and "rounds" not in text
    two = cfg.replace("seed=", "rounds=2, refine_rot_deg=6.0, refine_trans_mm=4.0, seed=")
    (tmp_path / "training.json").write_text(json.dumps(dict(training_seconds=600.0, steps={"rec": 1}, config=two)))
    text = " ".join(_learned_note(tmp_path, {"radgs_learned": {}}))
    assert "runs in 2 rounds" in text and "U(±6°) × U(±4 mm)" in text
    (tmp_path / "training.json").write_text(json.dumps(dict(training_seconds=60.0, steps={"rec": 1}, config=cfg.replace(
        "lambda_volume=5.0", "lambda_volume=0.0").replace("True", "False"))))
    text = " ".join(_learned_note(tmp_path, {"radgs_learned": {}}))
    assert "L1 distance" not in text and "pixel-aligned" not in text


def test_a_training_configuration_is_read_back_from_its_repr():
    from insideout_jax.biplanar.learned import LearnedConfig, trained_config

    lcfg = LearnedConfig(rounds=2, lambda_volume=0.5, pixel_aligned=False)
    assert trained_config(repr(lcfg)) == dataclasses.asdict(lcfg)
    old = trained_config(repr(lcfg).replace("rounds=2, ", ""))  # an older training states no rounds
    assert "rounds" not in old and old["lambda_volume"] == 0.5 and old["pixel_aligned"] is False
    for text in ("", "not a repr (", "Other(rounds=2)", "{'rounds': 2}"):
        assert trained_config(text) == {}
    # never evaluated: literals only
    assert trained_config("LearnedConfig(rounds=os.system('x'), seed=3)") == {"seed": 3}


def test_each_training_stage_starts_a_fresh_adam_state(tmp_path):
    """Adam's first step is lr · sign(gradient) when its state is fresh; RegM's first step after
    RecM's stage must be that (a state carried over would correct one step's moments as if from
    many: 0.1 / √0.001 ≈ 3.2 × lr)."""
    import jax
    import optax

    from insideout_jax.biplanar.learned import LearnedConfig, init_params, load_learned, make_samples, train_learned
    from insideout_jax.io.checkpoint import save_checkpoint

    cfg, crop = _small_crop()
    lcfg = LearnedConfig(image=32, anchors_side=4, rec_steps=3, reg_steps=1, joint_steps=0, batch=1, lr=1e-3)
    samples = make_samples(crop, cfg, lcfg, 2, seed=5, progress=False)
    before = init_params(jax.random.key(lcfg.seed), lcfg, 32)["reg"]
    after_all = train_learned(crop, samples, cfg, lcfg, tmp_path / "w.npz", progress=False)
    after = after_all["reg"]
    steps = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel() for a, b in
                            zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before), strict=True)])
    assert 0.99e-3 < steps.max() < 1.01e-3
    # the checkpoint is not resumed under another configuration
    with pytest.raises(ValueError, match="another training configuration"):
        train_learned(crop, samples, cfg, dataclasses.replace(lcfg, rec_steps=4), tmp_path / "w.npz", progress=False)
    # inference runs as many rounds as the weights were trained for (older weights: one)
    tree = {"params": after_all, "opt": optax.adam(lcfg.lr).init(after_all)}
    for config, rounds in ((repr(dataclasses.replace(lcfg, rounds=2)), 2), (repr(lcfg), 1),
                           (repr(lcfg).replace("rounds=1, ", ""), 1)):
        save_checkpoint(tmp_path / "c.npz", tree, dict(step=4, config=config, x_scale=1.0))
        assert load_learned(tmp_path / "c.npz", crop, cfg, dataclasses.replace(lcfg, rounds=3))[1].lcfg.rounds == rounds
    # finished means the steps of the checkpoint's own training, not of the caller's configuration
    save_checkpoint(tmp_path / "c.npz", tree, dict(step=4, config=repr(dataclasses.replace(lcfg, rec_steps=9)),
                                                   x_scale=1.0))
    with pytest.raises(ValueError, match="stopped at step 4 of 10"):
        load_learned(tmp_path / "c.npz", crop, cfg, lcfg)
    from insideout_jax.biplanar.__main__ import main

    for flag in ("--rounds", "--samples", "--rec-steps"):
        with pytest.raises(SystemExit) as e:
            main(["train", "--object", "skull", flag, "0"])
        assert e.value.code == 2


def test_refinement_frames_see_the_same_structure_through_moved_views():
    """A refinement sample is its pair's X-rays in the C-arm frame moved by (T_res ∘ δ)⁻¹: the DRRs
    of its posed CT through its moved views equal the pair's own (its posed CT through its views),
    and differ from them through the unmoved views."""
    from insideout_jax.biplanar.learned import LearnedConfig, make_samples, refinement_samples

    cfg, crop = _small_crop()
    lcfg = LearnedConfig(image=32, refine_rot_deg=6.0, refine_trans_mm=4.0)
    samples = make_samples(crop, cfg, lcfg, 3, seed=5, progress=False)
    ref = refinement_samples(samples, crop, lcfg)
    np.testing.assert_array_equal(ref.xrays, samples.xrays)
    g = make_case(crop, cfg, 5, 0).geometry

    def drr(vol, poses):
        return ct_volume_projections(vol, crop.spacing_zyx, crop.origin_xyz, g.replace(poses=jnp.asarray(poses)))

    for i in range(3):
        want = drr(samples.v_posed[i], samples.poses[i])
        err = np.linalg.norm(drr(ref.v_posed[i], ref.poses[i]) - want) / np.linalg.norm(want)
        unmoved = np.linalg.norm(drr(ref.v_posed[i], samples.poses[i]) - want) / np.linalg.norm(want)
        assert err < 0.03 and unmoved > 5 * err, (i, err, unmoved)
        # the structure is off the CT's pose by δ⁻¹: within U(±6°)³ × U(±4 mm)³
        assert 0.0 < np.rad2deg(np.linalg.norm(ref.pose_res[i, :3])) <= 6.0 * np.sqrt(3) + 1e-3
        assert 0.0 < np.linalg.norm(ref.pose_res[i, 3:]) <= 4.0 * np.sqrt(3) + 1e-3


def test_a_run_without_the_learned_method_keeps_its_records():
    from insideout_jax.biplanar.experiment import fresh_records

    recs = [dict(method="radgs_learned", case=0, weights=1.0), dict(method="fdk_then_3d", case=0),
            dict(method="radgs_learned", case=1, weights=2.0)]
    assert fresh_records(recs, ["fdk_then_3d"], None) == recs
    assert fresh_records(recs, ["fdk_then_3d", "radgs_learned"], 2.0) == recs[1:]
    assert fresh_records(recs, ["radgs_learned"], 3.0) == [recs[1]]
