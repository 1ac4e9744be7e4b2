"""A scanner's volume in its own units: padding, the field-of-view cylinder, and the least-squares
calibration against projections of the closed-form skull (an independent truth: the phantom's
exact line integrals, not the projector the fit uses)."""

from __future__ import annotations

import numpy as np
import pytest

from insideout_jax.config import preset
from insideout_jax.data import phantom as ph
from insideout_jax.data.calibration import calibrate_volume, check_not_fov_cylinder, padding_mask
from insideout_jax.io import make_volume
from insideout_jax.pipeline import ct_for_training

H = 2.0  # mm


@pytest.fixture(scope="module")
def skull_scan():
    """(attenuation volume, outside-the-reconstruction-circle mask, origin, exact projections, geometry)."""
    skull = ph.skull_phantom()
    n_xyz = np.ceil(np.array([184.0, 224.0, 240.0]) / H).astype(int) + 1
    origin = tuple(-0.5 * (n_xyz - 1) * H)
    shape = tuple(int(v) for v in n_xyz[::-1])
    mu = np.asarray(ph.phantom_volume(skull, shape, (H, H, H), origin, supersample=2), np.float64)
    nz, ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    outside = np.hypot((yy - (ny - 1) / 2) / (ny / 2), (xx - (nx - 1) / 2) / (nx / 2)) > 1
    geom = ph.default_skull_geometry(n_views=24, n_det=96)
    return mu, np.broadcast_to(outside, shape), origin, np.asarray(ph.project_phantom(skull, geom)), geom


@pytest.mark.parametrize("units", ["HU", "vendor"])
def test_calibration_recovers_a_known_scale_and_offset(skull_scan, units):
    mu, outside, origin, proj, geom = skull_scan
    if units == "HU":  # μ = 0.02 (1 + HU/1000), padding −3024 outside the reconstruction circle
        v, quantity, scale, air = (mu / 0.02 - 1) * 1000, "HU", 0.02 / 1000, -1000.0
        v[outside] = -3024.0
    else:  # vendor units: 3700 per 1/mm above 250, a constant 0 ring outside the circle
        v, quantity, scale, air = mu * 3700 + 250, "density", 1 / 3700, 250.0
        v[outside] = 0.0
    vol, cal = calibrate_volume(make_volume(v, (H, H, H), origin, quantity=quantity), proj, geom)
    print(cal.describe())
    assert cal.n_padding == int(outside.sum())
    np.testing.assert_allclose(cal.scale, scale, rtol=0.01)
    np.testing.assert_allclose(cal.air_value, air, rtol=0.01)
    assert cal.residual < 0.05 and vol.quantity == "attenuation"
    assert np.all(vol.data[outside] == 0)
    inside = mu > 0.01
    rel = np.abs(vol.data - mu)[inside].sum() / mu[inside].sum()
    assert rel < 0.01


def test_a_volume_not_registered_with_the_projections_is_refused(skull_scan):
    mu, _, origin, proj, geom = skull_scan
    flipped = make_volume(mu[::-1] * 1000, (H, H, H), origin, quantity="density")  # upside down
    with pytest.raises(ValueError, match=r"does not match the projections.*residual of \d+ %.*--flip-z"):
        calibrate_volume(flipped, proj, geom)


def test_padding_and_the_field_of_view_cylinder(skull_scan):
    mu, outside, *_ = skull_scan
    rng = np.random.default_rng(0)
    noisy = mu + rng.normal(0, 1e-3, mu.shape)  # an FDK-like volume: no padding
    assert not padding_mask(noisy, "attenuation").any()
    clipped = np.maximum(mu * 1000 - 5, 0.0)  # air clipped at one constant, inside the circle too
    assert not padding_mask(clipped, "density").any()
    hu = (mu / 0.02 - 1) * 1000
    hu[outside] = -2000.0
    assert np.array_equal(padding_mask(hu, "HU"), np.broadcast_to(outside, mu.shape))
    check_not_fov_cylinder(hu, padding_mask(hu, "HU"), level=-500.0)  # the skull: fine
    # a padding that is not one constant value goes unrecognised: the "object" is the whole disc
    hu_raw = hu + 0.0
    hu_raw[outside] = -2000.0 + rng.normal(0, 5, int(outside.sum()))
    pad = padding_mask(hu_raw, "density")
    assert not pad.any()
    with pytest.raises(ValueError, match="field of view.*--padding"):
        check_not_fov_cylinder(hu_raw, pad, level=-1500.0, where="scan.npy")


def test_the_pipeline_learns_from_the_calibrated_volume(skull_scan):
    mu, outside, origin, proj, geom = skull_scan
    cfg = preset("tiny").xray
    att = make_volume(mu, (H, H, H), origin, quantity="attenuation")
    same, notes = ct_for_training(att, proj, geom, cfg)
    assert same is att and notes == []
    hu = make_volume((mu / 0.02 - 1) * 1000, (H, H, H), origin, quantity="HU")
    vol, notes = ct_for_training(hu, proj, geom, cfg)
    assert vol.quantity == "attenuation" and "calibrated to the projections" in notes[0]
    inside = mu > 0.01
    assert np.abs(vol.data - mu)[inside].sum() / mu[inside].sum() < 0.01
    with pytest.raises(ValueError, match="in HU, and without X-ray projections"):
        ct_for_training(hu, None, None, cfg)


def test_volume_and_photos_get_projections_synthesized_from_the_volume(skull_scan, tmp_path):
    from insideout_jax.data.ctobject import ct_volume_projections
    from insideout_jax.io import read_object, write_object
    from insideout_jax.pipeline import object_inputs

    mu, outside, origin, *_ = skull_scan
    hu = (mu / 0.02 - 1) * 1000
    hu[outside] = -3024.0
    obj = read_object(write_object(tmp_path / "o", volume=make_volume(hu, (H, H, H), origin,
                                                                      quantity="HU")))
    assert obj.geometry is None
    got, notes = object_inputs(obj, 6, 32)
    assert got.geometry.n_views == 6 and got.projections.shape == (6, 32, 32)
    assert got.volume.quantity == "attenuation" and "synthesized from the CT volume" in notes[0]
    np.testing.assert_allclose(got.volume.data, mu, atol=1e-6)  # HU → μ; padding → air
    want = ct_volume_projections(mu.astype(np.float32), (H, H, H), origin, got.geometry)
    np.testing.assert_allclose(got.projections, want, rtol=1e-5, atol=1e-5)
    with_proj = read_object(write_object(tmp_path / "p", geometry=got.geometry, projections=want))
    assert object_inputs(with_proj, 6, 32) == (with_proj, [])  # measured projections: untouched
