"""The viewer (issue #20): its state → splats / planes / slices as pure functions on the tiny run,
then the real thing: the viser server driven from Python and looked at by a headless Chromium
(Debian's chromium and chromium-driver; skipped with a message where they are not installed)."""

import shutil

import numpy as np
import pytest

from insideout_jax.viewer import ViewState, cut_from_state, load_run, slice_pair, visible_splats


@pytest.fixture(scope="module")
def data(tiny_run, tiny_object):
    return load_run(tiny_run, tiny_object)


def test_the_run_loads_with_its_ct_and_camera_presets(data):
    assert data.ct is not None and data.rgb is not None
    photos = [k for k in data.cameras if k.startswith("photo ")]
    xrays = [k for k in data.cameras if k.startswith("X-ray view")]
    assert len(photos) >= 40 and len(xrays) == 8


def test_the_state_selects_the_splats(data):
    full = visible_splats(data, ViewState())
    n = len(full["centers"])
    assert full["covariances"].shape == (n, 3, 3) and full["opacities"].shape == (n, 1)
    assert np.all((full["opacities"] > 0) & (full["opacities"] <= 1))
    assert np.all((full["rgbs"] >= 0) & (full["rgbs"] <= 1))
    rad_only = visible_splats(data, ViewState(show_rgb=False, show_clones=False))
    no_rgb = visible_splats(data, ViewState(show_rgb=False))
    assert len(rad_only["centers"]) < len(no_rgb["centers"]) < n
    # a clip plane at x = centre keeps exactly the splats on its negative side
    s = ViewState(axis="x", position=0.0)
    cut = cut_from_state(data.model, s)
    np.testing.assert_allclose(cut.normal, [1, 0, 0])
    clipped = visible_splats(data, s)
    assert np.all(clipped["centers"][:, 0] <= cut.point[0] + 1e-4)
    assert 0.2 * n < len(clipped["centers"]) < 0.8 * n
    # tilts turn the normal by the given angles; the window changes the radiative opacities
    tilted = cut_from_state(data.model, ViewState(axis="z", tilt_a=30.0))
    assert np.degrees(np.arccos(tilted.normal @ [0, 0, 1])) == pytest.approx(30.0)
    narrow = visible_splats(data, ViewState(show_rgb=False, show_clones=False, window=(0.5, 1.0)))
    assert len(narrow["centers"]) < len(rad_only["centers"])


def test_the_slices_at_the_plane_show_the_ct_and_the_model(data):
    cut = cut_from_state(data.model, ViewState(axis="z"))
    ct_img, model_img, plane, r = slice_pair(data, cut, size=64)
    assert r.shape == (64, 64) and r[:6, :6].max() == 0 and r[24:40, 24:40].max() > 0.5  # air is clear
    assert ct_img.shape == model_img.shape == (64, 64, 3) and ct_img.dtype == np.uint8
    # both show the object in the middle of the plane and nothing at its corners
    for img in (ct_img, model_img):
        grey = img.astype(float).mean(-1)
        assert grey[24:40, 24:40].mean() > grey[:6, :6].mean() + 20


def test_the_viewer_in_a_browser_draws_cuts_and_reveals_the_inside(tiny_run, tiny_object, tmp_path):
    """Run in its own process (tests/viewer_browser_check.py): the viewer's server threads and the
    browser never share this process's JAX state, and a hang ends at the timeout."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if not ((shutil.which("chromium") or shutil.which("chromium-browser")) and shutil.which("chromedriver")):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver) to test the viewer in a browser")
    out = tmp_path / "result.json"
    script = Path(__file__).with_name("viewer_browser_check.py")
    res = subprocess.run([sys.executable, str(script), str(tiny_run), str(tiny_object), str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["connected"], "the browser did not connect"
    assert r["drawn_full"] > 0.02, "the model is not drawn"
    # moving the clip plane across the object removes a good part of what it drew (measured: 47 %
    # in CI, 93 % here: the tiny run's model differs between machines, so the criterion is relative
    # to what the first position draws, not to the whole model with its faint RGB halo)
    c = r["drawn_by_position"]
    assert c[0] - c[2] > 0.25 * c[0], c
    # with the RGB set and the clones off, the interior density remains and the image changes, far
    # more than the same view drawn twice does (measured: 1.8 % of the view against 0)
    assert r["drawn_inside"] > 0.01, r
    assert r["changed_when_rgb_off"] > max(0.005, 5 * r["changed_without_toggle"]), r
    # a camera preset puts the browser's camera at that camera's centre, and the default view back
    assert r["preset_offset"] < 1e-3 and r["default_view_offset"] < 1e-3, r
    assert r["screenshots"] and all(Path(p).is_file() for p in r["screenshots"])
