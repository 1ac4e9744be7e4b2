"""Tests for insideout_jax.metrics.image: closed forms, scikit-image references, PIQE golden."""

import math

import numpy as np
import pytest
import skimage.data
from skimage.metrics import structural_similarity

from insideout_jax import losses
from insideout_jax.metrics import image as im

# Golden values for MATLAB piqe semantics (EVALUATION.md §1;
# shared/golden/piqe_matlab_semantics.json), copied as literals:
# (score, active block pixels, artifact pixels, noise pixels). Tolerance 1e-6.
PIQE_GOLDEN = {
    "camera": (40.1374018066, 203264, 52992, 75008),
    "astronaut": (33.7593866023, 224000, 88576, 14848),
    "coins": (22.2227657362, 116352, 20560, 23552),
    "chelsea": (35.3896901611, 101248, 32896, 20160),
    "shepp": (86.4050123564, 12800, 12800, 768),
    "camera_half": (41.2454287601, 174080, 55552, 55040),
    "camera_f32": (40.1374018066, 203264, 52992, 75008),
    "camera_u16": (40.1374018066, 203264, 52992, 75008),
    "text": (14.0808643513, 77056, 11520, 6208),
    "ct_float_max0.4": (88.3721590577, 7744, 7744, 768),
}
PIQE_TOL = 1e-6


def _piqe_input(name):
    cam = skimage.data.camera()
    recipes = {
        "camera": lambda: cam,
        "astronaut": skimage.data.astronaut,
        "coins": skimage.data.coins,
        "chelsea": skimage.data.chelsea,
        "shepp": skimage.data.shepp_logan_phantom,
        "camera_half": lambda: (cam // 2).astype(np.uint8),
        "camera_f32": lambda: (cam / 255.0).astype(np.float32),
        "camera_u16": lambda: cam.astype(np.uint16) * 257,
        "text": skimage.data.text,
        "ct_float_max0.4": lambda: (
            0.4 * skimage.data.shepp_logan_phantom()[50:300, 30:363]
        ).astype(np.float64),
    }
    return recipes[name]()


@pytest.mark.parametrize("name", sorted(PIQE_GOLDEN))
def test_piqe_golden(name):
    img = _piqe_input(name)
    score, active, artifact, noise = PIQE_GOLDEN[name]
    res = im.piqe(img)
    assert abs(res.score - score) <= PIQE_TOL
    assert res.active_block_pixels == active
    assert res.artifact_pixels == artifact
    assert res.noise_pixels == noise
    assert res.activity_mask.shape == img.shape[:2]
    assert res.activity_mask.dtype == bool
    # Artifact and noise blocks are active blocks.
    assert not np.any(res.artifact_mask & ~res.activity_mask)
    assert not np.any(res.noise_mask & ~res.activity_mask)


def test_piqe_uniform_and_errors():
    assert im.piqe(np.full((40, 50), 77, np.uint8)).score == 100.0
    assert im.piqe(np.full((32, 32, 3), 0.3)).n_active_blocks == 0
    with pytest.raises(ValueError, match="dtype"):
        im.piqe(np.zeros((16, 16), np.int32))
    with pytest.raises(ValueError, match="image"):
        im.piqe(np.zeros((16, 16, 4), np.uint8))


def test_piqe_slice_decision():
    cam = skimage.data.camera()
    # min-max + uint8 quantisation makes PIQE independent of affine intensity changes.
    raw = 0.37 * cam.astype(np.float64) - 12.0
    np.testing.assert_allclose(im.piqe_slice(raw), im.piqe(im.to_uint8_minmax(raw)).score)
    np.testing.assert_allclose(im.piqe_slice(raw), im.piqe_slice(5.0 * raw + 3.0), atol=1e-12)
    # camera spans 0..255 so the normalised slice is the original image.
    np.testing.assert_array_equal(im.to_uint8_minmax(raw), cam)
    np.testing.assert_allclose(im.piqe_slice(raw), PIQE_GOLDEN["camera"][0], atol=PIQE_TOL)
    assert im.piqe_slice(np.full((32, 32), 4.2)) == 100.0
    with pytest.raises(ValueError, match="slice_"):
        im.piqe_slice(np.zeros((4, 4, 4)))


def test_psnr_closed_forms():
    rng = np.random.default_rng(0)
    ref = rng.uniform(size=(20, 30))
    assert math.isclose(im.psnr(ref + 0.1, ref), 20.0, rel_tol=1e-9)  # MSE 0.01
    assert math.isclose(
        im.psnr(ref + 0.1, ref, data_range=2.0), 20.0 + 20 * math.log10(2), rel_tol=1e-9
    )
    assert im.psnr(ref, ref) == math.inf
    with pytest.raises(ValueError, match="same shape"):
        im.psnr(ref, ref[:-1])


def test_psnr_minmax():
    rng = np.random.default_rng(1)
    ref = rng.uniform(size=(16, 16))
    pred = ref + rng.normal(0, 0.05, size=ref.shape)
    pn = (pred - pred.min()) / (pred.max() - pred.min())
    rn = (ref - ref.min()) / (ref.max() - ref.min())
    expected = 10 * math.log10(1 / np.mean((pn - rn) ** 2))
    assert math.isclose(im.psnr_minmax(pred, ref), expected, rel_tol=1e-12)
    # Invariant to positive affine maps of either input (different units).
    assert math.isclose(im.psnr_minmax(3 * pred + 5, 0.01 * ref - 1), expected, rel_tol=1e-9)
    assert math.isnan(im.psnr_minmax(pred, np.full_like(ref, 2.0)))  # constant reference: skipped
    const = im.psnr_minmax(np.full_like(ref, 7.0), ref)  # constant prediction -> zeros
    assert math.isclose(const, 10 * math.log10(1 / np.mean(rn**2)), rel_tol=1e-12)


def test_psnr_affine():
    rng = np.random.default_rng(2)
    ref = rng.uniform(100, 300, size=(12, 14))
    assert (
        im.psnr_affine(-0.5 * ref + 8, ref, (100, 300)) > 250.0
    )  # any exact affine map fits (to rounding)
    pred = 0.01 * ref + rng.normal(0, 0.2, size=ref.shape)
    r = (ref - 50.0) / 350.0  # ref_range (50, 400)
    design = np.stack([pred.ravel(), np.ones(pred.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, r.ravel(), rcond=None)
    mse = np.mean((design @ coef - r.ravel()) ** 2)
    assert math.isclose(
        im.psnr_affine(pred, ref, (50.0, 400.0)), 10 * math.log10(1 / mse), rel_tol=1e-9
    )
    with pytest.raises(ValueError, match="ref_range"):
        im.psnr_affine(pred, ref, (1.0, 1.0))


@pytest.mark.parametrize("rgb", [False, True])
def test_ssim_valid_matches_skimage(rgb):
    rng = np.random.default_rng(3)
    ref = (
        (skimage.data.astronaut()[100:196, 150:230] / 255.0)
        if rgb
        else skimage.data.camera()[200:290, 100:200] / 255.0
    )
    pred = np.clip(ref + rng.normal(0, 0.08, size=ref.shape), 0, 1)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    if rgb:
        kw["channel_axis"] = -1
    expected = structural_similarity(pred, ref, **kw)
    assert abs(im.ssim_valid(pred, ref) - expected) < 1e-12
    p32, r32 = pred.astype(np.float32), ref.astype(np.float32)
    assert abs(im.ssim_valid(p32, r32) - structural_similarity(p32, r32, **kw)) < 1e-5
    with pytest.raises(ValueError, match="at least"):
        im.ssim_valid(pred[:10], ref[:10])


def test_ssim_padded_equals_training_form():
    rng = np.random.default_rng(4)
    ref = rng.uniform(size=(30, 26, 3))
    pred = np.clip(ref + rng.normal(0, 0.1, size=ref.shape), 0, 1)
    np.testing.assert_allclose(im.ssim_padded(pred, ref), float(losses.ssim(pred, ref)), atol=2e-6)
    # The two forms differ (borders), the valid form does not see zero padding.
    assert abs(im.ssim_padded(pred, ref) - im.ssim_valid(pred, ref)) > 1e-4


def test_ssim3d_and_psnr3d():
    rng = np.random.default_rng(5)
    ref = rng.uniform(size=(14, 12, 13))
    ref[0] = 0.0  # an empty axial slice: skipped along axis 0
    pred = np.clip(ref + rng.normal(0, 0.1, size=ref.shape), 0, 1)

    def per_axis(axis, fn):
        a, b = np.moveaxis(pred, axis, 0), np.moveaxis(ref, axis, 0)
        return np.mean([fn(a[i], b[i]) for i in range(a.shape[0]) if b[i].max() > 0])

    for form, fn in (("padded", im.ssim_padded), ("valid", im.ssim_valid)):
        expected = np.mean([per_axis(k, fn) for k in range(3)])
        assert math.isclose(im.ssim3d(pred, ref, form=form, chunk=5), expected, rel_tol=1e-12)
    assert math.isclose(im.ssim3d(ref, ref), 1.0, rel_tol=1e-12)
    assert math.isnan(im.ssim3d(pred, np.zeros_like(ref)))
    assert math.isclose(im.psnr3d(ref + 0.01, ref), 40.0, rel_tol=1e-9)
    assert math.isclose(
        im.psnr3d(ref + 0.01, 2 * ref, data_range=None) - im.psnr3d(ref + 0.01, 2 * ref),
        20 * math.log10(2 * ref.max()),
        rel_tol=1e-9,
    )
    with pytest.raises(ValueError, match="form"):
        im.ssim3d(pred, ref, form="other")
