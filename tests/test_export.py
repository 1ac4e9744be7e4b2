"""The "as acquired" export of a generated object reads back through the import path: counts →
the same line integrals, DICOM HU → the same CT once calibrated, JPEG photos, truth for scoring."""

from __future__ import annotations

import numpy as np

from insideout_jax.config import preset
from insideout_jax.data import __main__ as cli
from insideout_jax.io import read_object
from insideout_jax.pipeline import ct_for_training


def test_export_reads_back_through_the_import_path(tmp_path):
    src, out = tmp_path / "skull", tmp_path / "as_acquired"
    assert cli.main(["make", "skull", "--out", str(src), "--photos", "4", "--photo-size", "64",
                     "--views", "12", "--detector", "24", "--volume", "24"]) == 0
    assert cli.main(["export", str(src), "--out", str(out)]) == 0
    a, b = read_object(src, load_truth=False), read_object(out, load_truth=False)
    assert b.image_names == tuple(n.replace(".png", ".jpg") for n in a.image_names)
    assert b.xray_conversion is not None and b.xray_conversion.n_flats == 4
    # counts quantised to 1 count of ≈ 60 000, flat fields with Poisson noise averaged over 4
    np.testing.assert_allclose(b.projections, a.projections, atol=0.01)
    assert b.volume.quantity == "HU" and b.volume.shape == a.volume.shape
    vol, notes = ct_for_training(b.volume, b.projections, b.geometry, preset("tiny").xray)
    print(notes[0])
    ref = np.maximum(np.asarray(a.volume.data), 0.0)  # μ is not negative (the FDK noise is)
    _, ny, nx = ref.shape
    yy, xx = np.mgrid[:ny, :nx]
    inside = np.hypot((yy - (ny - 1) / 2) / (ny / 2), (xx - (nx - 1) / 2) / (nx / 2)) <= 1.0
    err = np.abs(vol.data - ref)[:, inside].mean() / np.abs(ref)[:, inside].mean()
    # the calibration recovers μ = 0.02 (1 + HU/1000) from the projections, up to what a 24³ FDK
    # of 12 noisy views explains of them (measured: scale 2.08e-5 /mm per HU, residual 9.7 %)
    scale = float(notes[0].split("μ = ")[1].split("/mm")[0])
    assert abs(scale / 2e-5 - 1) < 0.06, scale
    assert err < 0.07, err
    assert np.all(vol.data[:, ~inside] == 0)  # the padding is air
    assert (out / "truth" / "cameras.json").is_file() and not (out / "truth" / "transform.json").exists()
