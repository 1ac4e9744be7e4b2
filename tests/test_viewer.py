"""The viewer (issue #20): its state → splats / planes / slices as pure functions on the tiny run,
then the real thing: the viser server driven from Python and looked at by a headless Chromium
(Debian's chromium and chromium-driver; skipped with a message where they are not installed)."""

import io
import shutil
import socket
import time

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


def _browser():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver) to test the viewer in a browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
              "--enable-unsafe-swiftshader", "--window-size=900,700", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = chrome
    return webdriver.Chrome(service=Service(driver), options=opts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shot(driver, settle=2.0) -> np.ndarray:
    """The 3D view (the left 520 px, away from the control panel) once the frame stops changing."""
    from PIL import Image

    time.sleep(settle)
    prev, t0 = None, time.time()
    while True:
        img = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))[:, :520]
        if prev is not None and (np.abs(img.astype(int) - prev).mean() < 0.5 or time.time() - t0 > 20):
            return img
        prev = img.astype(int)
        time.sleep(0.7)


def _drawn(img) -> np.ndarray:
    """Pixels that are not the white background."""
    return np.abs(img.astype(int) - 255).sum(-1) > 30


def test_the_viewer_in_a_browser_draws_cuts_and_reveals_the_inside(data):
    from insideout_jax.viewer import Viewer

    driver = _browser()
    viewer = Viewer(data, port=_free_port())
    try:
        driver.get(f"http://127.0.0.1:{viewer.server.get_port()}")
        t0 = time.time()
        while not viewer.server.get_clients() and time.time() - t0 < 30:
            time.sleep(0.2)
        assert viewer.server.get_clients(), "the browser did not connect"
        viewer.preset.value = next(k for k in data.cameras if k.startswith("photo "))
        full = _shot(driver, settle=5.0)
        drawn = _drawn(full)
        assert drawn.mean() > 0.02, "the model is not drawn"
        # moving the clip plane across the object removes more of it, where the plane moves
        viewer.axis.value = "x"
        counts = []
        for pos in (0.9, 0.0, -0.7):
            viewer.position.value = pos
            counts.append(_drawn(_shot(driver)).mean())
        assert counts[0] > counts[2] and abs(counts[0] - counts[2]) > 0.1 * drawn.mean(), counts
        # with the RGB set and the clones off, the interior density (inferno colours) remains
        viewer.position.value = 0.0
        with_rgb = _shot(driver)
        viewer.show_rgb.value = False
        viewer.show_clones.value = False
        inside = _shot(driver)
        assert _drawn(inside).mean() > 0.01, "nothing left inside"
        assert np.abs(inside.astype(int) - with_rgb).sum(-1).mean() > 2.0
        paths = viewer.screenshot(size=(120, 160))
        assert paths and paths[0].is_file()
    finally:
        driver.quit()
        viewer.stop()
