"""The viewer in a real headless Chromium, in a process of its own (used by test_viewer.py):

    python tests/viewer_browser_check.py RUN_DIR OBJECT_DIR RESULT_JSON

Starts :class:`insideout_jax.viewer.Viewer` on a run, opens it in Debian's chromium through
selenium (SwiftShader WebGL), drives it from Python (the GUI handles), checks that a camera preset
moves the browser's camera, and measures screenshots of the 3D view from the default view: the
drawn (non-white) fraction for the whole model, for the clip plane at three positions along x,
with the RGB set on and off (against a control: the same view drawn twice). Writes the numbers as JSON.
"""

import io
import json
import shutil
import socket
import sys
import time

import numpy as np
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from insideout_jax.cutaway import camera_centre
from insideout_jax.viewer import Viewer, load_run


def _browser():
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
              "--enable-unsafe-swiftshader", "--window-size=1400,900", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def _shot(driver, settle=2.0) -> np.ndarray:
    """The 3D view (the left 1040 px, away from the control panel) once the frame stops changing."""
    time.sleep(settle)
    prev, t0 = None, time.time()
    while True:
        img = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))[:, :1040]
        if prev is not None and (np.abs(img.astype(int) - prev).mean() < 0.5 or time.time() - t0 > 20):
            return img
        prev = img.astype(int)
        time.sleep(0.7)


def _reported_offset(client, eye, timeout=10.0) -> float:
    """Distance (mm) from ``eye`` of the camera position the browser reports after a move: the
    browser may first report intermediate states (one per property set), so wait up to ``timeout``
    for a report at ``eye``; inf when the browser reports nothing."""
    sent, t0, offset = client.camera.update_timestamp, time.time(), float("inf")
    eye = np.array(eye, np.float64)
    while time.time() - t0 < timeout:
        if client.camera.update_timestamp > sent:
            sent = client.camera.update_timestamp
            offset = float(np.linalg.norm(np.asarray(client.camera.position) - eye))
            if offset < 1e-3:
                break
        time.sleep(0.05)
    return offset


def _changed(a, b) -> float:
    """Fraction of the view whose colour differs by more than 6 levels (summed over R, G, B): the
    tiny run's RGB shell is faint, so its pixels change by a few levels only."""
    return float((np.abs(a.astype(int) - b.astype(int)).sum(-1) > 6).mean())


def _drawn(img) -> float:
    """Fraction of pixels that are not the white background."""
    return float((np.abs(img.astype(int) - 255).sum(-1) > 30).mean())


def main(run_dir, object_dir, result_path) -> int:
    data = load_run(run_dir, object_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    viewer = Viewer(data, port=port)
    driver = _browser()
    r = {}
    try:
        driver.get(f"http://127.0.0.1:{port}")
        t0 = time.time()
        while not viewer.server.get_clients() and time.time() - t0 < 60:
            time.sleep(0.2)
        r["connected"] = bool(viewer.server.get_clients())
        # a camera preset moves the browser's camera to that camera's centre
        name = next(k for k in data.cameras if k.startswith("photo "))
        client = next(iter(viewer.server.get_clients().values()))
        # the browser reports its opening camera once after connecting; a preset applied before that
        # report is overwritten by it (the race a loaded CI machine hit), so wait for it first
        t0 = time.time()
        while client.camera.update_timestamp == 0.0 and time.time() - t0 < 30:
            time.sleep(0.2)
        viewer.preset.value = name
        viewer.apply_preset(name)
        # measured from the browser's own report of its camera after the move (within 10 s)
        r["preset_offset"] = _reported_offset(client, camera_centre(data.cameras[name]))
        # the measurements below from the default view, which frames the whole model whatever the
        # run's fit (a photo preset sits where the fit put the camera: the tiny run's fit may be off)
        viewer._place(client.camera)
        r["default_view_offset"] = _reported_offset(client, np.asarray(client.camera.position))
        r["drawn_full"] = _drawn(_shot(driver, settle=5.0))
        viewer.axis.value = "x"
        r["drawn_by_position"] = []
        for pos in (0.9, 0.0, -0.7):
            viewer.position.value = pos
            viewer.refresh()
            r["drawn_by_position"].append(_drawn(_shot(driver)))
        viewer.position.value = 0.0
        viewer.refresh()
        with_rgb = _shot(driver)
        r["changed_without_toggle"] = _changed(_shot(driver), with_rgb)  # the control: re-drawn alone
        viewer.show_rgb.value = False
        viewer.show_clones.value = False
        viewer.refresh()
        inside = _shot(driver)
        r["drawn_inside"] = _drawn(inside)
        for tag, img in (("rgb_on", with_rgb), ("rgb_off", inside)):  # for a reader of a failure
            Image.fromarray(img).save(f"{result_path}.{tag}.png")
        r["changed_when_rgb_off"] = _changed(inside, with_rgb)
        r["screenshots"] = [str(p) for p in viewer.screenshot(size=(120, 160))]
    finally:
        driver.quit()
        viewer.stop()
    with open(result_path, "w") as f:
        json.dump(r, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
