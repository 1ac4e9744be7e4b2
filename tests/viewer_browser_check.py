"""The viewer in a real headless Chromium, in a process of its own (used by test_viewer.py):

    python tests/viewer_browser_check.py RUN_DIR OBJECT_DIR RESULT_JSON

Starts :class:`insideout_jax.viewer.Viewer` on a run, opens it in Debian's chromium through
selenium (SwiftShader WebGL), drives it from Python (the GUI handles), checks that a camera preset
moves the browser's camera, and measures screenshots of the 3D view from the default view: the
drawn (non-white) fraction for the whole model, for the clip plane at three positions along x,
with the RGB set on and off. Writes the numbers as JSON.
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
        viewer.preset.value = name
        viewer.apply_preset(name)
        time.sleep(1.0)
        client = next(iter(viewer.server.get_clients().values()))
        r["preset_offset"] = float(np.linalg.norm(np.asarray(client.camera.position)
                                                  - camera_centre(data.cameras[name])))
        # the measurements below from the default view, which frames the whole model whatever the
        # run's fit (a photo preset sits where the fit put the camera: the tiny run's fit may be off)
        viewer._place(client.camera)
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
        viewer.show_rgb.value = False
        viewer.show_clones.value = False
        viewer.refresh()
        inside = _shot(driver)
        r["drawn_inside"] = _drawn(inside)
        # the fraction of the view whose colour changes visibly (the RGB shell is faint where cut)
        r["changed_when_rgb_off"] = float((np.abs(inside.astype(int) - with_rgb).sum(-1) > 15).mean())
        r["screenshots"] = [str(p) for p in viewer.screenshot(size=(120, 160))]
    finally:
        driver.quit()
        viewer.stop()
    with open(result_path, "w") as f:
        json.dump(r, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
