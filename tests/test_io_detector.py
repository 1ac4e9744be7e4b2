"""Raw detector counts → line integrals (closed form), and the checks on values no attenuation gives."""

from __future__ import annotations

import json

import chex
import numpy as np
import pytest
import tifffile

from insideout_jax.cameras import make_xray_geometry
from insideout_jax.io import ObjectFolderError, counts_to_line_integrals, read_object, write_object

V, NV, NU = 4, 6, 8


def _geometry():
    return make_xray_geometry(mode="cone", n_detector=(NV, NU), d_detector=(1.0, 1.0),
                              angles=np.linspace(0, 2 * np.pi, V, endpoint=False),
                              dso=500.0, dsd=800.0)


def _line_integrals(rng):
    p = rng.uniform(0.0, 4.0, (V, NV, NU))
    p[:, 0, :] = 0.0  # a row of air in every view
    return p


def _raises(fn, *fragments):
    with pytest.raises(ObjectFolderError) as e:
        fn()
    for frag in fragments:
        assert frag in str(e.value), (frag, str(e.value))


def test_flat_and_dark_fields_give_beer_lambert_exactly():
    rng = np.random.default_rng(0)
    p = _line_integrals(rng)
    flats = rng.uniform(30000, 50000, (3, NV, NU))  # three flat exposures, averaged
    dark = rng.uniform(90, 110, (NV, NU))
    counts = dark + (flats.mean(0) - dark) * np.exp(-p)
    q, conv = counts_to_line_integrals(counts, flat=flats, dark=dark)
    chex.assert_shape(q, (V, NV, NU))
    chex.assert_type(q, np.float32)
    np.testing.assert_allclose(q, p, atol=2e-6)
    assert conv.source == "flat field" and conv.n_flats == 3 and conv.n_clipped == 0
    np.testing.assert_allclose(conv.dark_median, np.median(dark))
    # uint16 counts: the rounding error of the closed form, |Δp| ≤ 0.5 / (I − D)
    c16 = np.round(counts).astype(np.uint16)
    q16, conv16 = counts_to_line_integrals(c16, flat=flats, dark=dark)
    assert conv16.counts_dtype == "uint16"
    bound = 0.5 / (counts - dark) + 1e-6
    assert np.all(np.abs(q16 - p) <= bound)


def test_one_flat_per_view_and_starved_pixels():
    rng = np.random.default_rng(1)
    p = _line_integrals(rng)
    flats = rng.uniform(1000, 2000, (V, NV, NU))  # the source drifts: one flat per view
    counts = flats * np.exp(-p)
    counts[2, 3, 4] = 0.0  # starved: no photon left
    q, conv = counts_to_line_integrals(counts, flat=flats)
    assert conv.n_flats == -1 and conv.n_clipped == 1 and "one per view" in conv.describe()
    np.testing.assert_allclose(q[2, 3, 4], -np.log(0.5 / flats[2, 3, 4]), rtol=1e-6)
    q[2, 3, 4] = p[2, 3, 4]
    np.testing.assert_allclose(q, p, atol=2e-6)


def test_an_object_folder_with_counts_is_converted_on_reading(tmp_path):
    rng = np.random.default_rng(2)
    p = _line_integrals(rng).astype(np.float32)
    root = write_object(tmp_path / "obj", geometry=_geometry(), projections=p)
    i0, dark = 40000.0, 100.0
    counts = np.round(dark + (i0 - dark) * np.exp(-p.astype(np.float64))).astype(np.uint16)
    tifffile.imwrite(root / "xray/projections.tif", counts, photometric="minisblack")
    _raises(lambda: read_object(root), "projections.tif", "'dtype'", "uint16", "xray/flat.tif",
            "xray/detector.json")
    (root / "xray/detector.json").write_text(json.dumps({"i0": i0, "dark": dark}))
    obj = read_object(root)
    assert obj.xray_conversion.source == "i0" and "I0 from xray/detector.json" in obj.xray_conversion.describe()
    np.testing.assert_allclose(obj.projections, p, atol=0.5 / (i0 * np.exp(-4.0)) + 1e-6)
    # the same with a flat-field TIFF instead (both at once is ambiguous)
    tifffile.imwrite(root / "xray/flat.tif", np.full((NV, NU), i0, np.float32))
    _raises(lambda: read_object(root), "detector.json", "keep one")
    (root / "xray/detector.json").unlink()
    tifffile.imwrite(root / "xray/dark.tif", np.full((NV, NU), dark, np.float32))
    np.testing.assert_allclose(read_object(root).projections, obj.projections, atol=1e-6)
    (root / "xray/flat.tif").unlink()
    _raises(lambda: read_object(root), "dark.tif", "without a flat field")


def test_values_no_attenuation_gives_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    p = _line_integrals(rng)
    counts = 40000.0 * np.exp(-p)
    _raises(lambda: counts_to_line_integrals(counts), "exactly one of a flat field")
    _raises(lambda: counts_to_line_integrals(counts, flat=np.ones((NV, NU)), dark=np.full((NV, NU), 2.0)),
            "'flat'", "not above the dark field")
    _raises(lambda: counts_to_line_integrals(counts, flat=np.ones((NV + 1, NU))), "'shape'", "[nv, nu]")
    root = write_object(tmp_path / "obj", geometry=_geometry(), projections=p.astype(np.float32))
    proj = root / "xray/projections.tif"
    # a wrong i0 (the detector's 8-bit range instead of its 16-bit one): far more light than I0
    tifffile.imwrite(proj, np.round(counts).astype(np.uint16), photometric="minisblack")
    (root / "xray/detector.json").write_text(json.dumps({"i0": 255}))
    _raises(lambda: read_object(root), "projections.tif", "'values'", "more light than")
    (root / "xray/detector.json").write_text(json.dumps({"i0": 40000, "dark": 50000}))
    _raises(lambda: read_object(root), "detector.json", "'dark'", "[0, i0)")
    (root / "xray/detector.json").unlink()
    # −ln I without I0: every value offset by ln(40000) ≈ 10.6
    tifffile.imwrite(proj, (p + np.log(40000.0)).astype(np.float32), photometric="minisblack")
    _raises(lambda: read_object(root), "projections.tif", "background", "not near 0")
    # the sign flipped: ln(I/I0)
    tifffile.imwrite(proj, (-p).astype(np.float32), photometric="minisblack")
    _raises(lambda: read_object(root), "projections.tif", "more light than")
