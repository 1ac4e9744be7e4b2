"""Frame stacks as splats (MedGS): frames, losses, training on an analytic field, surfaces, command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from insideout_jax.splats import RadSplats, splat_covariances
from insideout_jax.stacks import (
    StackConfig,
    StackModel,
    band_penalty,
    frame_plane,
    head_labels,
    ibfr_target,
    init_stack_model,
    interpolate_stack,
    make_stack,
    read_frame_folder,
    render_frame,
    render_frames,
    sigma_z,
    split_stack,
    stack_from_volume,
    stack_loss,
    train_stack,
)
from insideout_jax.stacks.surface import (
    mask_surface,
    rescale_icp,
    sample_surface,
    surface_distances,
    surface_metrics,
)

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _rotmat(axis, angle):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _quat(rot):
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rot).as_quat()
    return np.array([w, x, y, z])


# Three anisotropic, rotated Gaussians (means mm, scales mm, rotation axis/angle, peak)
TRUE = [((14.0, 15.0, 9.0), (3.0, 2.0, 4.0), ((1, 1, 0), 0.5), 0.6),
        ((19.0, 12.0, 11.5), (2.0, 3.5, 3.0), ((0, 1, 1), -0.7), 0.4),
        ((11.0, 20.0, 13.0), (2.5, 2.5, 5.0), ((1, 0, 1), 0.3), 0.5)]


def _true_splats(perturb=0.0, seed=0):
    rng = np.random.default_rng(seed)
    means = np.array([t[0] for t in TRUE]) + perturb * rng.normal(size=(3, 3))
    ls = np.log(np.array([t[1] for t in TRUE])) + 0.1 * perturb * rng.normal(size=(3, 3))
    quats = np.array([_quat(_rotmat(*t[2])) for t in TRUE])
    dens = np.log(np.array([t[3] for t in TRUE])) + 0.2 * perturb * rng.normal(size=3)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return RadSplats(f32(means), f32(ls), f32(quats), f32(dens), jnp.zeros(3), jnp.zeros((3, 1)),
                     jnp.zeros((3, 3)), jnp.ones(3, bool))


def _field(points):
    """float64 sum of the TRUE Gaussians at points [..., 3]."""
    val = np.zeros(points.shape[:-1])
    for mean, scales, (axis, ang), peak in TRUE:
        r = _rotmat(axis, ang)
        cov = r @ np.diag(np.square(scales)) @ r.T
        d = points - np.asarray(mean)
        val += peak * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d))
    return val


def _analytic_stack(nz=25, n=32, dz=1.0):
    z = np.arange(nz) * dz
    y, x = np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    vol = _field(np.stack([xx, yy, zz], -1))
    return stack_from_volume(vol, (dz, 1.0, 1.0), (0.0, 0.0, 0.0), value_range=(0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# frames


def test_stack_geometry_and_split():
    st = _analytic_stack(nz=11)
    chex.assert_shape(st.frames, (11, 32, 32))
    assert st.center_xy == (15.5, 15.5) and st.extent_xy == (32.0, 32.0)
    kept, held = split_stack(st, 3)
    np.testing.assert_array_equal(kept.index, [0, 3, 6, 9])
    np.testing.assert_array_equal(held.index, [1, 2, 4, 5, 7, 8])  # frame 10 is past the last kept one
    np.testing.assert_array_equal(kept.z, [0.0, 3.0, 6.0, 9.0])
    with pytest.raises(ValueError, match="keep_every"):
        split_stack(st, 1)


def test_frame_plane_renders_the_field_exactly():
    """The renderer on a frame plane equals the float64 field at the pixel centres (x0 + c·dx)."""
    st = _analytic_stack(nz=25)
    model = StackModel(_true_splats(), jnp.zeros((3, 0)))
    out = render_frames(model, st, [4.0, 10.5, 17.25], cutoff_sigma=6.0)
    y, x = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    for k, z in enumerate([4.0, 10.5, 17.25]):
        ref = _field(np.stack([x, y, np.full_like(x, z)], -1))
        np.testing.assert_allclose(out[k], ref, atol=2e-5 * ref.max())
    chex.assert_shape(frame_plane(st, 3.0).origin, (3,))


def test_make_stack_validation():
    with pytest.raises(ValueError, match="frames must be"):
        make_stack(np.zeros((4, 4)), [0], (1, 1))
    with pytest.raises(ValueError, match="strictly increasing"):
        make_stack(np.random.rand(3, 4, 4), [0, 2, 1], (1, 1))
    with pytest.raises(ValueError, match="constant"):
        make_stack(np.ones((3, 4, 4)), [0, 1, 2], (1, 1))
    with pytest.raises(ValueError, match="NaN"):
        make_stack(np.full((3, 4, 4), np.nan), [0, 1, 2], (1, 1))
    with pytest.raises(ValueError, match="spacing_yx"):
        make_stack(np.random.rand(3, 4, 4), [0, 1, 2], (0, 1))
    with pytest.raises(ValueError, match="labels must be"):
        make_stack(np.random.rand(3, 4, 4), [0, 1, 2], (1, 1), labels=np.zeros((3, 4, 5)))


def test_interpolation_baselines_against_references():
    rng = np.random.default_rng(0)
    vol = rng.random((9, 5, 6))
    st = stack_from_volume(vol, (2.0, 1.0, 1.0), value_range=(0, 1))
    kept, held = split_stack(st, 2)
    lin = interpolate_stack(kept, held.z, method="linear")
    ref = np.stack([[[np.interp(z, kept.z, kept.frames[:, i, j]) for j in range(6)] for i in range(5)]
                    for z in held.z])
    np.testing.assert_allclose(lin, ref, atol=1e-6)
    cub = interpolate_stack(kept, held.z, method="cubic")
    np.testing.assert_allclose(cub, CubicSpline(kept.z, kept.frames, axis=0)(held.z), atol=1e-5)
    near = interpolate_stack(kept, [0.9, 2.1, 13.0], method="nearest")
    np.testing.assert_array_equal(near, kept.frames[[0, 1, 3]])
    with pytest.raises(ValueError, match="extrapolation"):
        interpolate_stack(kept, [17.0], method="linear")


def test_read_frame_folder(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 65535, (4, 6, 7), dtype=np.uint16)
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:04d}.png"), f)
    st = read_frame_folder(tmp_path, spacing_zyx=(3.0, 0.5, 0.5))
    np.testing.assert_allclose(st.frames, frames / 65535.0, atol=1e-6)
    np.testing.assert_allclose(st.z, [0, 3, 6, 9])
    cv2.imwrite(str(tmp_path / "0004.png"), np.zeros((5, 5), np.uint16))
    with pytest.raises(ValueError, match="0004.png.*differs"):
        read_frame_folder(tmp_path, spacing_zyx=(3.0, 0.5, 0.5))


def test_head_labels_keeps_the_head_and_drops_the_rest():
    z, y, x = np.meshgrid(np.arange(20), np.arange(40), np.arange(40), indexing="ij")
    r = np.sqrt((x - 18) ** 2 + (y - 18) ** 2 + (z - 10) ** 2)
    raw = np.where(r < 12, 1000.0, 0.0)                # body
    raw[(r > 9) & (r < 11)] = 2000.0                    # skull shell
    raw[(r < 3)] = 0.0                                  # an air cavity inside (counted as body)
    raw[:, 36:39, 5:35] = 1000.0                        # a "head rest" not touching the head
    raw[10, 30, 2] = 2500.0                             # an isolated bright speck
    (bone, body), names = head_labels(raw, bone=1400, body=600)
    assert names == ("bone", "body")
    np.testing.assert_array_equal(bone, (r > 9) & (r < 11))
    assert not body[:, 36:39].any()
    assert body[10, 18, 18]  # the cavity is filled
    np.testing.assert_array_equal(body[r < 11.5], True)


# ---------------------------------------------------------------------------------------------
# losses


def test_ibfr_target_is_the_blend():
    a, b = jnp.full((2, 2), 1.0), jnp.full((2, 2), 3.0)
    np.testing.assert_allclose(ibfr_target(a, b, 0.25), 1.5)
    np.testing.assert_allclose(ibfr_target(a, b, 0.0), a)


def test_band_penalty_closed_form_and_gradient():
    s = jnp.asarray([0.5, 1.0, 2.0, 5.0, 7.0])
    # below 1: 0.5 → 0.5; above 5: 7 → 2; mean over the 5 splats each
    np.testing.assert_allclose(band_penalty(s, 1.0, 5.0), (0.5 + 2.0) / 5, rtol=1e-6)
    g = jax.grad(lambda v: band_penalty(v, 1.0, 5.0))(s)
    np.testing.assert_allclose(g, [-0.2, 0.0, 0.0, 0.0, 0.2], atol=1e-7)
    assert float(band_penalty(jnp.asarray([1.5, 3.0]), 1.0, 5.0)) == 0.0


def test_sigma_z_matches_the_covariance():
    sp = _true_splats()
    np.testing.assert_allclose(sigma_z(sp), np.sqrt(np.asarray(splat_covariances(sp))[:, 2, 2]), rtol=1e-5)


@pytest.mark.parametrize("link", ["saturating", "linear"])
def test_stack_loss_terms(link):
    """Each switch adds exactly its term: IBFR = L1(render at z_j + α·Δ, blend), band, seg; a mask
    head's value is its summed field f through the link (1 − exp(−f), or f)."""
    from insideout_jax.render.slices import render_slice

    def mask(f):
        return -np.expm1(-np.asarray(f, np.float64)) if link == "saturating" else np.asarray(f)

    st = _analytic_stack(nz=9, dz=2.0)
    kept, _ = split_stack(st, 2)
    masks = (kept.frames > 0.3)[None]
    kept = dataclasses.replace(kept, labels=masks, label_names=("m",))
    sp = _true_splats(perturb=1.0)
    model = StackModel(sp, jnp.log(jnp.full((3, 1), 0.7)), link)
    cfg = StackConfig(cutoff_sigma=5.0, lambda_ssim=0.0, mask_link=link)
    frames, labels = jnp.asarray(kept.frames), jnp.asarray(kept.labels, jnp.float32)
    z = jnp.asarray(kept.z, jnp.float32)
    depth = float(kept.z[-1] - kept.z[0])

    def loss(ibfr, band, m=model):
        return float(stack_loss(m, kept, frames, labels, jnp.int32(2), jnp.int32(1), jnp.float32(0.3),
                                jnp.asarray(ibfr), jnp.asarray(band), cfg, z, 4.0, depth))

    base = loss(False, False)
    zm = kept.z[1] + 0.3 * 4.0
    mid = np.asarray(render_slice(sp, frame_plane(kept, zm), cutoff_sigma=5.0))
    blend = 0.7 * kept.frames[1] + 0.3 * kept.frames[2]
    mid_seg = mask(render_slice(model.head(0), frame_plane(kept, zm), cutoff_sigma=5.0))
    blend_seg = 0.7 * masks[0, 1] + 0.3 * masks[0, 2]
    expect = cfg.lambda_ibfr * (np.mean(np.abs(mid - blend)) + cfg.lambda_seg * np.mean(np.abs(mid_seg - blend_seg)))
    np.testing.assert_allclose(loss(True, False) - base, expect, rtol=1e-4)
    cfg_img_only = dataclasses.replace(cfg, seg_ibfr=False)
    only = float(stack_loss(model, kept, frames, labels, jnp.int32(2), jnp.int32(1), jnp.float32(0.3),
                            jnp.asarray(True), jnp.asarray(False), cfg_img_only, z, 4.0, depth))
    np.testing.assert_allclose(only - base, cfg.lambda_ibfr * np.mean(np.abs(mid - blend)), rtol=1e-4)
    band = float(band_penalty(sigma_z(sp) / 4.0, 1.0, depth / 4.0))
    assert band > 0
    np.testing.assert_allclose(loss(False, True) - base, 0.25 * band, rtol=1e-4, atol=1e-7)
    no_seg = StackModel(sp, jnp.zeros((3, 0)), link)
    seg = mask(render_slice(model.head(0), frame_plane(kept, kept.z[2]), cutoff_sigma=5.0))
    assert 0.2 < seg.max() < 1.0  # the test reaches the link's non-linear part
    np.testing.assert_allclose(render_frame(model, kept, kept.z[2], label=0, cutoff_sigma=5.0), seg, atol=1e-6)
    expect = 2.0 * 2.0 * np.mean(np.abs(seg - masks[0, 2]))
    nolab = float(stack_loss(no_seg, kept, frames, jnp.zeros((0,) + frames.shape), jnp.int32(2), jnp.int32(1),
                             jnp.float32(0.3), jnp.asarray(False), jnp.asarray(False), cfg, z, 4.0, depth))
    np.testing.assert_allclose(base - nolab, expect, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# training


def test_fit_of_an_analytic_field_renders_held_out_frames_to_1e_3():
    """Frames of a sum of 3 known Gaussians, every 2nd frame kept; a perturbed model of the same
    three Gaussians trained on the kept frames renders the held-out frames to ≤ 1e-3 relative."""
    st = _analytic_stack(nz=25)
    kept, held = split_stack(st, 2)
    cfg = StackConfig(n_splats=3, iterations=600, block=100, lambda_ssim=0.0, lambda_ibfr=0.0,
                      lambda_band=0.0, lr_means=2e-3, lr_scales=5e-3, lr_quats=2e-3, lr_density=5e-3,
                      lr_decay=0.005, cutoff_sigma=6.0)
    model = StackModel(_true_splats(perturb=0.6, seed=3), jnp.zeros((3, 0)))
    before = render_frames(model, kept, held.z, cutoff_sigma=6.0)
    model, hist = train_stack(jax.random.key(0), model, kept, cfg, progress=False)
    after = render_frames(model, kept, held.z, cutoff_sigma=6.0)
    scale = np.abs(held.frames).max()
    assert np.abs(before - held.frames).max() / scale > 0.05  # the start is clearly off
    assert np.abs(after - held.frames).max() / scale <= 1e-3
    assert hist["loss"][-1] < hist["loss"][0]


def test_init_and_short_training_lower_the_loss():
    st = _analytic_stack(nz=13)
    kept, _ = split_stack(st, 2)
    kept = dataclasses.replace(kept, labels=(kept.frames > 0.2)[None], label_names=("m",))
    cfg = StackConfig(n_splats=300, iterations=60, block=20)
    model = init_stack_model(jax.random.key(0), kept, cfg)
    chex.assert_shape(model.splats.means, (300, 3))
    chex.assert_shape(model.seg, (300, 1))
    chex.assert_type(model.seg, jnp.float32)
    assert np.all(np.asarray(sigma_z(model.splats)) >= 0.999 * kept.mean_dz)
    model2, hist = train_stack(jax.random.key(1), model, kept, cfg, progress=False)
    assert len(hist["loss"]) == 3  # (the loss grows where IBFR switches on: compare the fit instead)

    def err(m):
        return np.mean(np.abs(render_frames(m, kept, kept.z) - kept.frames))

    assert err(model2) < 0.8 * err(model)
    with pytest.raises(ValueError, match="n_splats"):
        init_stack_model(jax.random.key(0), kept, StackConfig(n_splats=10**7))


# ---------------------------------------------------------------------------------------------
# surfaces


def _sphere_points(r, n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return r * v / np.linalg.norm(v, axis=1, keepdims=True)


def test_surface_distances_concentric_spheres():
    """Spheres of radius 10 and 11: every nearest distance is 1 mm (up to the sampling gap)."""
    d = surface_distances(_sphere_points(10.0, 80_000, 1), _sphere_points(11.0, 80_000, 2))
    d2 = surface_distances(_sphere_points(11.0, 80_000, 3), _sphere_points(10.0, 80_000, 4))
    for v in (d, d2):
        assert abs(v["cd"] - 1.0) < 0.03 and abs(v["asd"] - 1.0) < 0.03
        assert abs(v["hd95"] - 1.0) < 0.08 and abs(v["hd"] - 1.0) < 0.12


def _cube_mesh(half):
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], float)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def test_surface_metrics_nested_cubes():
    """Cubes of half-size 5 and 6: inner → outer is 1 mm everywhere; outer → inner reaches √3 mm at
    the corners, so HD = √3 and the mean lies between 1 and √3."""
    inner, outer = _cube_mesh(5.0), _cube_mesh(6.0)
    p = np.vstack([sample_surface(*inner, 20_000, seed=0), inner[0]])  # corners included exactly
    q = sample_surface(*outer, 200_000, seed=1)
    from scipy.spatial import cKDTree

    assert np.all(np.abs(cKDTree(q).query(p)[0] - 1.0) < 0.05)
    qc = np.vstack([q, outer[0]])  # include the corners exactly
    d = surface_distances(p, qc)
    assert abs(d["hd"] - np.sqrt(3.0)) < 0.02
    assert 1.0 < d["cd"] < np.sqrt(3.0)
    m = surface_metrics(inner, inner, n_points=50_000)
    assert m["raw"]["cd"] < 0.08 and m["rescale_icp"]["cd"] < 0.08  # sampling gap only


def test_mask_surface_of_a_ball_and_rescale_icp():
    n = 48
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float),) * 3, indexing="ij")
    ball = ((x - 23.5) ** 2 + (y - 23.5) ** 2 + (z - 23.5) ** 2 < 15.0 ** 2).astype(np.float32)
    v, f = mask_surface(ball, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), smooth_mm=1.0)
    r = np.linalg.norm(v - 23.5, axis=1)
    assert abs(np.median(r) - 15.0) < 0.3
    p = sample_surface(v, f, 5000, seed=0)
    ref = _sphere_points(15.0, 50_000, 7) + 23.5
    assert surface_distances(p, ref)["cd"] < 0.3
    with pytest.raises(ValueError, match="never crosses"):
        mask_surface(np.zeros((4, 4, 4)), (1, 1, 1), (0, 0, 0))


def test_rescale_icp_undoes_a_similarity():
    """A box (sides 10, 15, 20) rotated by 0.1 rad, scaled 1.2× and shifted: the raw metrics see the
    error, MedGS's rescale + ICP removes it (to the sampling gap)."""
    v, f = _cube_mesh(5.0)
    v = v * np.array([1.0, 1.5, 2.0])
    p = sample_surface(v, f, 20_000, seed=0)
    rot = _rotmat((1, 2, 3), 0.1)
    moved = (p * 1.2) @ rot.T + np.array([3.0, -2.0, 1.0])
    assert surface_distances(moved, p)["cd"] > 2.0
    assert surface_distances(rescale_icp(moved, p), p)["cd"] < 0.05


# ---------------------------------------------------------------------------------------------
# command


def test_stack_command_end_to_end(tmp_path):
    """A small volume stored [x, y, z] (``--axes xyz``) with head-like labels runs end to end."""
    z, y, x = np.meshgrid(np.arange(17), np.arange(24), np.arange(24), indexing="ij")
    r = np.sqrt((x - 11.5) ** 2 + (y - 11.5) ** 2 + ((z - 8) * 1.5) ** 2)
    vol = np.where(r < 10, 1000.0, 0.0) + np.where((r > 6) & (r < 8.5), 1000.0, 0.0) + 3 * x
    np.save(tmp_path / "vol.npy", np.transpose(vol, (2, 1, 0)).astype(np.float32))  # stored [x, y, z]
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "experiments" / "stack.py"), "--volume", str(tmp_path / "vol.npy"),
           "--axes", "xyz", "--spacing", "2", "1", "1", "--label-thresholds", "1500", "600",
           "--keep-every", "2", "--splats", "800", "--iterations", "40", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["input"]["shape_zyx"] == [17, 24, 24]  # transposed back from [x, y, z]
    assert m["input"]["kept_frames"] == 9 and m["input"]["held_frames"] == 8
    assert set(m["interpolation"]) == {"splats", "nearest", "linear", "cubic"}
    assert set(m["surface"]["splats"]) == {"raw", "rescale_icp"}
    for f in ("report.md", "heldout.png", "surface.png", "surface_splats.ply", "training.png"):
        assert (out / f).is_file(), f
    assert "| linear |" in (out / "report.md").read_text()
    # a second run into the same folder refuses instead of mixing runs
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "--resume" in res.stderr
    # a missing spacing is a message, not a traceback
    res = subprocess.run(cmd[:5] + ["--keep-every", "2"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "spacing" in res.stderr and "Traceback" not in res.stderr


# ---------------------------------------------------------------------------------------------
# the faithful (folded) route


def test_folded_gaussians_follow_medgs_formulas():
    from insideout_jax.stacks.folded import FoldedModel, folded_splats

    rng = np.random.default_rng(0)
    n, d = 5, 3
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    m = FoldedModel(f32(rng.normal(size=(n, 2)) * 10), f32(rng.normal(size=(n, 2)) * 0.3), f32(rng.normal(size=n)),
                    f32(rng.normal(size=n)), f32(rng.normal(size=n)), f32(rng.normal(size=n)),
                    f32(np.log(rng.uniform(0.05, 0.3, n))), f32(rng.normal(size=(n, d, 2))), 10.0, 40.0)
    z = 27.0
    sp = folded_splats(m, z)
    t = (z - 10.0) / 40.0
    cen = 1 / (1 + np.exp(-np.asarray(m.centre_logits, np.float64)))
    dt = cen - t
    mu = np.asarray(m.means2d, np.float64) + sum(np.asarray(m.drift, np.float64)[:, i - 1] * dt[:, None] ** i
                                                 for i in range(1, d + 1))
    delta = np.exp(-dt ** 2 / (2 * np.exp(2 * np.asarray(m.log_sigmas, np.float64))))
    np.testing.assert_allclose(sp.means[:, :2], mu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.exp(sp.log_scales[:, :2]), np.exp(np.asarray(m.log_scales2d))[:, :] * delta[:, None],
                               rtol=1e-4)
    np.testing.assert_array_equal(sp.active, delta > 0.1)
    np.testing.assert_allclose(sp.opacity_logits, m.opacity_logits)


def test_folded_frame_camera_maps_pixels_to_the_frame_grid():
    """A small flat Gaussian at the world position of pixel (r, c) renders its peak at pixel (r, c)."""
    from insideout_jax.stacks.folded import FoldedModel, render_folded

    st = make_stack(np.random.rand(3, 20, 24), [0.0, 2.0, 4.0], (1.5, 2.0), (-7.0, 3.0))
    r, c = 13, 5
    x, y = -7.0 + c * 2.0, 3.0 + r * 1.5
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    m = FoldedModel(f32([[x, y]]), f32(np.log([[1.0, 0.8]])), f32([0.0]), f32([4.0]), f32([(0.8 - 0.5) / 0.2820948]),
                    f32([0.0]), f32([0.0]), jnp.zeros((1, 2, 2)), 0.0, 4.0)
    img = np.asarray(render_folded(m, st, 2.0))
    assert np.unravel_index(img.argmax(), img.shape) == (r, c)
    assert abs(img.max() - 0.8 * 0.98) < 0.03  # colour × α (opacity 0.98 at the peak)


def test_folded_training_lowers_the_loss():
    from insideout_jax.stacks.folded import init_folded_model, train_folded

    st = _analytic_stack(nz=9)
    kept, _ = split_stack(st, 2)
    cfg = StackConfig(n_splats=200, iterations=30, block=15)
    m = init_folded_model(jax.random.key(0), kept, cfg, degree=2)
    chex.assert_shape(m.drift, (200, 2, 2))
    m2, hist = train_folded(jax.random.key(1), m, kept, cfg, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]


def test_relocate_splats_preserves_mass_and_count():
    """The least-mass splats move to split the largest-gradient ones; each field's total mass
    (Σ ρ·σ₁σ₂σ₃) is unchanged except for the removed splats' own mass."""
    from insideout_jax.stacks.model import _params
    from insideout_jax.stacks.train import _optimizer, relocate_splats

    st = _analytic_stack(nz=9)
    kept, _ = split_stack(st, 2)
    kept = dataclasses.replace(kept, labels=(kept.frames > 0.2)[None], label_names=("m",))
    model = init_stack_model(jax.random.key(0), kept, StackConfig(n_splats=200))
    p = _params(model)
    opt = _optimizer(StackConfig(), 20.0)
    state = opt.init(p)
    state = opt.update(jax.tree_util.tree_map(jnp.ones_like, p), state, p)[1]  # non-zero moments
    grad = jnp.asarray(np.random.default_rng(0).random(200), jnp.float32)
    q, state2, k = relocate_splats(jax.random.key(1), p, state, grad, optimizer=opt, fraction=0.1)
    assert k == 20
    chex.assert_trees_all_equal_shapes(p, q)

    def mass(params, amp):
        return np.exp(np.asarray(params[amp]).reshape(200, -1) + np.asarray(params["log_scales"]).sum(1)[:, None])

    m0 = mass(p, "log_densities")[:, 0]
    dead = np.argsort(np.asarray(p["log_densities"]) + np.asarray(p["log_scales"]).sum(1), kind="stable")[:20]
    np.testing.assert_allclose(mass(q, "log_densities").sum(), m0.sum() - m0[dead].sum(), rtol=1e-4)
    s0 = mass(p, "seg")[:, 0]
    np.testing.assert_allclose(mass(q, "seg").sum(), s0.sum() - s0[dead].sum(), rtol=1e-4)
    src = np.argsort(-np.where(np.isin(np.arange(200), dead), -1, np.asarray(grad)), kind="stable")[:20]
    np.testing.assert_allclose(np.asarray(q["log_scales"])[src], np.asarray(p["log_scales"])[src] - np.log(1.6),
                               rtol=1e-5, atol=1e-6)
    # moved and split slots restart their Adam moments; the others keep them
    def mu_means(st):  # Adam's first moment of the means
        return np.asarray(st.inner_states["means"].inner_state[0].mu["means"])

    mu = mu_means(state2)
    assert np.all(mu[dead] == 0) and np.all(mu[src] == 0)
    keep = np.setdiff1d(np.arange(200), np.concatenate([dead, src]))
    assert np.all(mu_means(state)[keep] != 0)
    np.testing.assert_array_equal(mu[keep], mu_means(state)[keep])
