"""The metrics.json blocks of insideout_jax.evaluation against analytic cases and direct references."""

import json

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from insideout_jax import evaluation as ev
from insideout_jax.fitting.procrustes import Similarity
from insideout_jax.internal.pseudo_gt import make_slices, slice_pixel_centres
from insideout_jax.metrics.image import piqe_slice
from insideout_jax.metrics.mesh import fibonacci_directions
from insideout_jax.splats import covariance, rad_splats_from_points, rgb_splats_from_points

RES = 32
LO, HI = np.full(3, -20.0), np.full(3, 20.0)


def _blobs():
    """Six anisotropic, rotated Gaussians inside the ±20 mm box (RadSplats, density 1/mm)."""
    rng = np.random.default_rng(0)
    means = rng.uniform(-10, 10, size=(6, 3))
    log_scales = np.log(rng.uniform(2.5, 5.0, size=(6, 3)))
    dens = rng.uniform(0.02, 0.06, size=6)
    sp = rad_splats_from_points(means, dens, log_scales=log_scales, capacity=8)
    quats = Rotation.random(6, random_state=1).as_quat()[:, [3, 0, 1, 2]]  # wxyz
    q = np.tile(np.array([1.0, 0, 0, 0], np.float32), (8, 1))
    q[:6] = quats
    return sp.replace(quats=jnp.asarray(q, jnp.float32))


def _field(splats, pts):
    """Dense float64 Σ ρ exp(−½ dᵀΣ⁻¹d) at points [..., 3] (independent of the renderer)."""
    act = np.asarray(splats.active)
    mu = np.asarray(splats.means, np.float64)[act]
    cov = np.asarray(covariance(splats.log_scales, splats.quats), np.float64)[act]
    rho = np.exp(np.asarray(splats.log_densities, np.float64))[act]
    d = pts.reshape(-1, 1, 3) - mu
    m2 = np.einsum("pni,nij,pnj->pn", d, np.linalg.inv(cov), d)
    return (rho * np.exp(-0.5 * m2)).sum(-1).reshape(pts.shape[:-1])


def _ct(splats, spacing=1.0):
    """The splats' exact field sampled on a voxel grid covering the box (the 'CT volume')."""
    n = int(round((HI[0] - LO[0]) / spacing)) + 1
    ax = LO[0] + spacing * np.arange(n)
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    vol = _field(splats, np.stack([xx, yy, zz], -1))
    return vol.astype(np.float32), (spacing,) * 3, tuple(LO)


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.fixture(scope="module")
def ct(blobs):
    return _ct(blobs)


def test_render_cross_sections_matches_dense_field(blobs):
    slices = make_slices(LO, HI, resolution=RES) + make_slices(LO, HI, resolution=RES, heldout=True)
    assert [s.kind for s in slices].count("axial") == 5  # z = −15, 0, 15 and ±7.5
    preds = ev.render_cross_sections(blobs, slices)
    chex.assert_shape(preds, (len(slices), RES, RES))
    assert preds.dtype == np.float32
    truth = np.stack([_field(blobs, slice_pixel_centres(s)) for s in slices])
    np.testing.assert_allclose(preds, truth, atol=2e-6 * truth.max(), rtol=1e-4)


def test_cross_section_metrics_perfect_and_shifted(blobs, ct):
    vol, sp, org = ct
    slices = make_slices(LO, HI, resolution=RES, heldout=True)
    good = ev.cross_section_metrics(blobs, slices, vol, sp, org)
    # reference = trilinear interpolation of the same field at 1 mm: only interpolation error
    assert good["psnr"] > 38.0 and good["ssim"] > 0.99
    assert good["n_slices"] == 4 and good["n_skipped"] == 0
    assert good["axial"]["n_slices"] == 2 and good["coronal"]["n_slices"] == 2
    assert [(r["kind"], r["position"]) for r in good["per_slice"]] == [
        (s.kind, s.position) for s in slices]
    np.testing.assert_allclose(good["psnr"], np.mean([good["axial"]["psnr"],
                                                      good["coronal"]["psnr"]]), rtol=1e-12)
    shifted = blobs.replace(means=blobs.means + jnp.asarray([4.0, -3.0, 2.0]))
    bad = ev.cross_section_metrics(shifted, slices, vol, sp, org)
    assert bad["psnr"] < good["psnr"] - 10.0
    assert bad["ssim"] < good["ssim"] - 0.1
    assert bad["psnr_affine"] < good["psnr_affine"] - 10.0
    json.dumps(ev.to_json_ready(good), allow_nan=False)


def test_slice_metrics_against_skimage_and_skips_constant_reference():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:RES, 0:RES]
    ref = np.exp(-((xx - 14.0) ** 2 + (yy - 17.0) ** 2) / 60.0) * 0.05  # CT units
    pred = 3.0 * ref + 0.01 * rng.normal(size=ref.shape)  # other units, noisy
    refs = np.stack([ref, np.zeros_like(ref), ref.T])
    preds = np.stack([pred, pred, pred.T])
    out = ev.slice_metrics(preds, refs, ["axial", "axial", "coronal"])
    assert out["n_skipped"] == 1 and out["n_slices"] == 2
    mm = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    psnr = peak_signal_noise_ratio(mm(ref), mm(pred), data_range=1.0)
    ssim = structural_similarity(mm(pred), mm(ref), gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=1.0)
    np.testing.assert_allclose(out["axial"]["psnr"], psnr, rtol=1e-10)
    np.testing.assert_allclose(out["axial"]["ssim"], ssim, atol=1e-6)
    np.testing.assert_allclose(out["piqe"], piqe_slice(pred), rtol=1e-12)  # transpose: same blocks
    # affine PSNR: reference scaled by the range over refs, prediction least-squares fitted
    r01 = (ref - refs.min()) / (refs.max() - refs.min())
    a, b = np.polyfit(pred.ravel(), r01.ravel(), 1)
    expected = 10 * np.log10(1.0 / np.mean((a * pred + b - r01) ** 2))
    np.testing.assert_allclose(out["psnr_affine"], expected, rtol=1e-9)
    with pytest.raises(ValueError, match="kinds"):
        ev.slice_metrics(preds, refs, ["axial", "sagittal", "axial"])
    with pytest.raises(ValueError, match="preds and refs"):
        ev.slice_metrics(preds[:2], refs, ["axial"] * 3)


def test_all_slices_constant_gives_nan_then_null():
    z = np.zeros((1, 16, 16))
    out = ev.slice_metrics(z + 1.0, z, ["axial"])
    assert np.isnan(out["psnr"]) and out["n_skipped"] == 1
    assert ev.to_json_ready(out)["psnr"] is None


def _sphere_points(n, radius, center=(0.0, 0.0, 0.0)):
    d = fibonacci_directions(n)
    return np.asarray(center) + radius * d, d


def test_chamfer_block_protocol_and_monotone_rows():
    c = np.array([5.0, -3.0, 10.0])
    rad, _ = _sphere_points(1500, 40.0, c)
    eps = 0.01
    inner, _ = _sphere_points(300, 20.0, c)
    rows = {"none": c + (rad - c) * (1 + 4 * eps), "hierarchical": c + (rad - c) * (1 + eps),
            "internal": np.vstack([rad, inner])}
    out = ev.chamfer_block(rows, rad)
    np.testing.assert_allclose(out["center"], 0.5 * (rad.min(0) + rad.max(0)))
    np.testing.assert_allclose(out["radius"], np.linalg.norm(rad - out["center"], axis=1).max())
    cd = out["chamfer_mm"]
    # radial scaling by (1+ε): every point's nearest neighbour is its own pre-image, both ways
    np.testing.assert_allclose(cd["hierarchical"], 2 * eps * 40.0, rtol=1e-6)
    np.testing.assert_allclose(cd["none"], 2 * 4 * eps * 40.0, rtol=1e-6)
    # interior points are hidden by HPR: identical surfaces, zero distance
    assert cd["internal"] == 0.0
    assert out["details"]["internal"]["n_surface_a"] == 1500.0
    assert cd["none"] > cd["hierarchical"] > cd["internal"]
    # the protocol centre and radius come from protocol_points when given
    out2 = ev.chamfer_block({"none": rows["none"]}, rad, protocol_points=rad + 1.0)
    np.testing.assert_allclose(out2["center"], np.asarray(out["center"]) + 1.0)
    with pytest.raises(ValueError, match="rad_points"):
        ev.chamfer_block(rows, {"none": rad})


def _smooth_ball(n=40, radius=12.0):
    ax = np.arange(n) - (n - 1) / 2
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    return (1.0 / (1.0 + np.exp((r - radius) / 1.0))).astype(np.float32)


def test_occupancy_sphere_and_box():
    ball = _smooth_ball()
    occ = ev.occupancy_block(ball, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert occ["42"]["any"] == 1.0 and occ["242"]["any"] == 1.0  # closed smooth shell
    assert 0.3 < occ["42"]["mean"] < 0.7 and 0.3 < occ["242"]["mean"] < 0.7
    assert 0.0 < occ["level"] < 1.0
    # axis-aligned box: normals in 6 directions (plus rounded edges of small area)
    box = np.zeros((40, 40, 40), np.float32)
    box[8:32, 6:34, 10:30] = 1.0
    from scipy import ndimage

    box = ndimage.gaussian_filter(box, 0.6)
    occ = ev.occupancy_block(box, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), level=0.5)
    assert occ["42"]["mean"] == pytest.approx(6 / 42)
    assert occ["icosphere_42"]["mean"] == pytest.approx(6 / 42)
    assert occ["level"] == 0.5


def test_iso_level_choices_and_errors():
    vol = np.zeros((10, 10, 10))
    vol[3:7, 3:7, 3:7] = 0.02
    vol[4:6, 4:6, 4:6] = 0.05
    assert 0.0 < ev.iso_level(vol) < 0.02  # Otsu separates air from the object
    np.testing.assert_allclose(ev.iso_level(vol, level="half_p99"), 0.5 * np.percentile(vol, 99))
    with pytest.raises(ValueError, match="level"):
        ev.iso_level(vol, level="median")
    with pytest.raises(ValueError, match="level"):
        ev.iso_level(vol, level=1.0)
    with pytest.raises(ValueError, match="constant"):
        ev.iso_level(np.ones((4, 4, 4)))


def test_depth_below_surface_sphere():
    surf, normals = _sphere_points(4000, 50.0)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(200, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    radii = rng.uniform(30.0, 55.0, 200)
    depth = ev.depth_below_surface(d * radii[:, None], surf, normals)
    # sample spacing h ≈ 2.8 mm; near the surface the error is ≲ h²/(8ρ)·(1 + depth/ρ)
    near = radii > 45.0
    np.testing.assert_allclose(depth[near], 50.0 - radii[near], atol=0.1)
    assert np.all(depth[radii < 47.0] > 3.0 - 0.1)


def test_internal_noise_known_depths():
    surf, normals = _sphere_points(6000, 50.0)
    dirs = fibonacci_directions(60)
    depths = np.repeat([-5.0, 0.0, 1.0, 2.0, 4.0, 10.0, 30.0, 45.0, 2.9, 3.5], 6)
    pts = dirs * (50.0 - depths)[:, None]
    opac = np.where(np.arange(60) % 3 == 0, 0.01, 0.5)  # every third splat is nearly transparent
    sp = rgb_splats_from_points(pts, capacity=64)
    logits = np.full(64, 5.0, np.float32)
    logits[:60] = np.log(opac / (1 - opac))
    sp = sp.replace(opacity_logits=jnp.asarray(logits), means=sp.means.at[60:].set(0.0))
    visible = opac >= 0.05
    expected = np.mean(depths[visible] > 3.0)
    assert ev.internal_noise(sp, surf, normals) == pytest.approx(expected)
    # the 4 inactive slots sit at the centre (depth 50, opacity high) but are not counted
    assert ev.internal_noise(sp, surf, normals, depth_mm=0.5) == pytest.approx(
        np.mean(depths[visible] > 0.5))
    none = sp.replace(opacity_logits=jnp.full(64, -10.0))
    assert np.isnan(ev.internal_noise(none, surf, normals))
    with pytest.raises(ValueError, match="rgb_splats"):
        ev.internal_noise(_blobs(), surf, normals)


def test_alignment_errors_known_perturbation():
    rng = np.random.default_rng(7)
    r_true = Rotation.random(random_state=2).as_matrix()
    t_true, s_true = rng.normal(size=3) * 50, 3.7
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    delta = Rotation.from_rotvec(np.radians(4.0) * axis).as_matrix()
    r_est, s_est = delta @ r_true, s_true * 1.02
    c = np.array([1.0, -2.0, 0.5])  # SfM-frame centre
    shift = np.array([0.3, -0.4, 1.2])
    t_est = s_true * r_true @ c + t_true + shift - s_est * r_est @ c  # estimate(c) = truth(c) + shift
    truth = {"rotation": r_true.tolist(), "translation": t_true.tolist(), "scale": s_true}
    for est in ((r_est, t_est, s_est),
                Similarity(jnp.asarray(r_est, jnp.float32), jnp.asarray(t_est, jnp.float32),
                           jnp.asarray(s_est, jnp.float32))):
        err = ev.alignment_errors(est, truth, center=c)
        assert err["rot_deg"] == pytest.approx(4.0, abs=2e-3)
        assert err["scale_rel"] == pytest.approx(0.02, abs=1e-6)
        assert err["trans_mm"] == pytest.approx(np.linalg.norm(shift), abs=5e-4)
    # the true map as truth/transform.json is read (io.Similarity) scores the same
    from insideout_jax.io import make_similarity

    file_truth = make_similarity(r_true, t_true, s_true)
    assert ev.alignment_errors(est, file_truth, center=c) == ev.alignment_errors(est, truth, center=c)
    err0 = ev.alignment_errors((r_est, t_est, s_est), truth)
    assert err0["trans_mm"] == pytest.approx(np.linalg.norm(t_est - t_true), rel=1e-5)
    with pytest.raises(ValueError, match="estimate"):
        ev.alignment_errors((np.diag([1.0, 1.0, -1.0]), t_est, 1.0), truth)
    with pytest.raises(ValueError, match="truth"):
        ev.alignment_errors((r_est, t_est, s_est), {"rotation": r_true})


def test_volume_metrics_closed_form():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.0, 0.05, size=(12, 13, 14))
    ref[0] = 0.0
    out = ev.volume_metrics(ref + 0.001, ref)
    np.testing.assert_allclose(out["psnr3d"], 20 * np.log10(ref.max() / 0.001), rtol=1e-10)
    same = ev.volume_metrics(ref, ref)
    assert same["ssim3d"] == pytest.approx(1.0) and same["psnr3d"] == np.inf
    assert ev.to_json_ready(same)["psnr3d"] is None
    assert ev.volume_metrics(ref * 0.5, ref)["ssim3d"] < 0.95
    with pytest.raises(ValueError, match="data_range"):
        ev.volume_metrics(ref, np.zeros_like(ref))


def test_to_json_ready():
    x = {"a": np.float32(1.5), "b": [np.nan, np.int64(3), True], "c": np.arange(2.0), 4: None}
    assert ev.to_json_ready(x) == {"a": 1.5, "b": [None, 3, True], "c": [0.0, 1.0], "4": None}
