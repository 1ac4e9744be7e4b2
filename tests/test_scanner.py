"""The simulated scanner: detector noise against its closed-form statistics, the reconstruction
grid, and generated objects whose CT is a reconstruction, not the truth."""

import json

import numpy as np
import pytest

from insideout_jax import io as iio
from insideout_jax.cameras import make_xray_geometry
from insideout_jax.config import preset
from insideout_jax.data import scanner
from insideout_jax.data.objects import make_builtin_object


def test_detector_noise_has_the_poisson_plus_read_noise_statistics():
    p = np.full((200, 100), 1.5, np.float32)
    i0, sig = 2e4, 8.0
    noisy, rec = scanner.detector_noise(p, photons=i0, read_noise=sig, seed=5)
    counts = i0 * np.exp(-noisy.astype(np.float64))  # no pixel is starved at this level
    lam = i0 * np.exp(-1.5)
    assert rec["starved_pixels"] == 0
    assert counts.mean() == pytest.approx(lam, rel=3e-3)  # E[N] = λ
    assert counts.var() == pytest.approx(lam + sig**2, rel=0.03)  # Var[N] = λ + σ²
    exact, rec0 = scanner.detector_noise(p, photons=0, read_noise=sig, seed=5)
    np.testing.assert_array_equal(exact, p)
    assert rec0["model"] == "noise-free line integrals"
    starved, rec = scanner.detector_noise(np.full((10,), 30.0), photons=100, read_noise=0, seed=0)
    assert rec["starved_pixels"] == 10 and np.allclose(starved, np.log(100))  # clipped at 1 count
    with pytest.raises(ValueError, match="photons"):
        scanner.detector_noise(p, photons=-1, read_noise=0, seed=0)


def test_scanner_grid_uses_the_detector_pixel_at_the_axis():
    geom = make_xray_geometry(mode="cone", n_detector=(64, 64), d_detector=(1.5, 1.5),
                              angles=np.zeros(3), dso=400.0, dsd=600.0)
    shape, sp, org = scanner.scanner_grid(geom, (-50, -40, -30), (50, 40, 30), max_voxels=1000)
    assert sp == (1.0, 1.0, 1.0) and shape == (60, 80, 100)
    np.testing.assert_allclose(org, (-49.5, -39.5, -29.5))
    shape, sp, _ = scanner.scanner_grid(geom, (-50, -40, -30), (50, 40, 30), max_voxels=50)
    assert sp[0] == pytest.approx(2.0) and shape == (30, 40, 50)


def test_a_generated_objects_ct_is_a_noisy_reconstruction_not_the_truth(tmp_path):
    make_builtin_object(tmp_path / "o", preset("tiny").skull, verbose=False)
    obj = iio.read_object(tmp_path / "o", load_images=False)
    ct, truth = obj.volume, obj.truth_volume
    assert ct.data.shape != truth.data.shape or not np.array_equal(ct.data, truth.data)
    acq = json.loads((tmp_path / "o" / scanner.ACQUISITION_FILE).read_text())
    assert acq["photons_per_pixel"] == 1e5 and acq["ct"]["reconstruction"].startswith("FDK")
    assert list(ct.data.shape) == acq["ct"]["shape_zyx"]
    # the reconstruction sees the same object: its mean attenuation inside the truth's extent
    # is that of the truth within 20 %, and it is correlated with the truth voxel by voxel
    from insideout_jax.pipeline.geometry import resample_to
    from insideout_jax.render.slices import make_voxel_grid

    grid = make_voxel_grid(truth.data.shape, truth.spacing_zyx, truth.origin_xyz)
    on_truth = resample_to(ct.data, ct, grid)
    assert on_truth.mean() == pytest.approx(float(truth.data.mean()), rel=0.2)
    assert np.corrcoef(on_truth.ravel(), truth.data.ravel())[0, 1] > 0.8
