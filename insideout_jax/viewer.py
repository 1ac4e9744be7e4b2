"""Interactive viewer of a run's fused model in the browser (viser): cut it open and look inside.

    python experiments/view.py outputs/skull [--object data/skull] [--port 8080]

What it shows: the unified model's radiative splats (coloured and made opaque by a density
transfer function), its cloned RGB splats and the RGB set after internal rendering, each with a
toggle; a clip plane (axis, position, two tilts) that removes everything on the side its normal
points to and shows the model's density on the plane as a textured face; the CT's slice beside
the model's slice on that plane (same window); camera presets (the photo cameras in the CT frame,
the X-ray source positions); and a screenshot button (PNG under ``<run>/figures/``).

The selection and the images are pure functions of the viewer's state (:func:`visible_splats`,
:func:`cut_from_state`, :func:`slice_pair`), tested without a browser; :class:`Viewer` wires them
to the GUI.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np

from insideout_jax.cutaway import CutPlane, camera_centre, colormap_rgb, make_cut_plane

__all__ = ["ViewerData", "ViewState", "load_run", "visible_splats", "cut_from_state", "slice_pair",
           "Viewer", "main"]


@dataclasses.dataclass(frozen=True)
class ViewerData:
    """What the viewer shows: the unified model, the RGB set (or None), the CT (or None), named
    camera presets (PinholeCamera, CT frame) and the run folder (screenshots go there)."""

    model: object
    rgb: object | None
    ct: object | None
    cameras: dict
    run_dir: Path


@dataclasses.dataclass
class ViewState:
    """The GUI's state: clip axis ("x", "y", "z" or "off"), position in [−1, 1] of the model's
    half-extent along it, tilts (degrees) of the normal about the two other axes; set toggles;
    the density window (fractions of the largest peak) and the radiative set's opacity."""

    axis: str = "off"
    position: float = 0.0
    tilt_a: float = 0.0
    tilt_b: float = 0.0
    show_rgb: bool = True
    show_radiative: bool = True
    show_clones: bool = True
    window: tuple = (0.05, 1.0)
    opacity: float = 0.8


DEFAULT_FOV = float(np.radians(75.0))
"""The default view's vertical field of view (viser's own opening value), radians."""


def load_run(run_dir, object_dir=None) -> ViewerData:
    """The viewer's data from a run folder (``stages/`` as the runner wrote it) and, when given
    and present, the object folder (CT and cameras; never ``truth/``)."""
    from insideout_jax import io as iio
    from insideout_jax.pipeline import geometry as pg
    from insideout_jax.pipeline import store

    run_dir = Path(run_dir)
    stages = run_dir / "stages"
    model = store.load_unified(stages)
    rgb = store.load_splats(stages, "rgb_internal") if (stages / "rgb_internal.npz").is_file() else None
    ct, cams = None, {}
    if object_dir is not None and Path(object_dir).is_dir():
        obj = iio.read_object(object_dir, load_images=False, load_truth=False)
        ct = obj.volume
        if obj.colmap is not None and (stages / "fitting.json").is_file():
            moved = pg.cameras_in_ct_frame(obj.colmap.cameras, store.load_transform(stages))
            cams.update({f"photo {n}": c for n, c in zip(obj.colmap.image_names, moved, strict=True)})
        if obj.geometry is not None:
            cams.update(_xray_cameras(obj.geometry))
    return ViewerData(model, rgb, ct, cams, run_dir)


def _xray_cameras(geometry, n: int = 8) -> dict:
    """Pinhole cameras at n X-ray source positions (cone beam; parallel beam: at DSO or 1 m)
    looking at the rotation axis, with the detector's field of view."""
    from insideout_jax.cameras import look_at, make_pinhole, view_frame, xray_source

    out = {}
    dso, dsd = float(geometry.dso), float(geometry.dsd)
    dist = dso if geometry.mode == "cone" and dso > 0 else 1000.0
    nv, nu = geometry.n_detector
    dv, du = (float(x) for x in np.asarray(geometry.d_detector))
    angles, views = np.asarray(geometry.angles, np.float64), np.asarray(geometry.views, np.float32)
    for k in np.linspace(0, len(angles), n, endpoint=False).astype(int):
        a = angles[k]
        e_r, _, _, iso, _, _ = (np.asarray(x, np.float64) for x in view_frame(geometry, views[k]))
        eye = (np.asarray(xray_source(geometry, views[k]), np.float64) if geometry.mode == "cone"
               else iso + dist * e_r)
        rot, t = look_at(eye, iso)
        scale = (dsd if geometry.mode == "cone" else dist) / np.array([du, dv])
        out[f"X-ray view {k} ({np.rad2deg(a):.0f}°)"] = make_pinhole(rot, t, scale[0], scale[1], nu / 2, nv / 2,
                                                                     nu, nv)
    return out


def _clip_range(camera, reach: float) -> None:
    """Near and far planes for a scene in millimetres: viser's defaults (0.01 to 1000 units) cut
    away a model seen from a metre or more, and the default view stands 3 extents off."""
    far = 10.0 * max(reach, 1.0)
    camera.far = far
    camera.near = far * 1e-5
    if hasattr(camera, "max_orbit_distance"):
        camera.max_orbit_distance = far


def _extent(model) -> tuple[np.ndarray, np.ndarray]:
    act = np.asarray(model.splats.active)
    pts = np.asarray(model.splats.means, np.float64)[act]
    lo, hi = pts.min(0), pts.max(0)
    return (lo + hi) / 2, (hi - lo) / 2


def cut_from_state(model, state: ViewState) -> CutPlane | None:
    """The clip plane of a state (None when clipping is off)."""
    if state.axis == "off":
        return None
    k = "xyz".index(state.axis)
    centre, half = _extent(model)
    a, b = np.deg2rad(state.tilt_a), np.deg2rad(state.tilt_b)
    i, j = [m for m in range(3) if m != k]
    n = np.zeros(3)
    n[k], n[i], n[j] = np.cos(a) * np.cos(b), np.sin(a), np.cos(a) * np.sin(b)
    point = centre.copy()
    point[k] += state.position * half[k]
    return make_cut_plane(point, n)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def visible_splats(data: ViewerData, state: ViewState) -> dict:
    """{"centers" [N, 3], "covariances" [N, 3, 3], "rgbs" [N, 3], "opacities" [N, 1]} of what the
    state shows. Radiative splats take their colour and opacity from the density transfer
    function (r = clip((ρ/ρmax − lo) / (hi − lo)), colour = inferno(r), opacity = opacity·r); the
    clones and the RGB set keep their own. Splats on the clipped side are left out."""
    from insideout_jax import sh as sh_lib
    from insideout_jax.splats import covariance

    m = data.model
    act = np.asarray(m.splats.active)
    rad = np.asarray(m.radiative) & act
    parts = []
    if state.show_radiative and rad.any():
        rho = np.exp(np.asarray(m.log_densities, np.float64))
        top = rho[rad].max()
        lo, hi = state.window
        r = np.clip((rho[rad] / top - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
        rgb = colormap_rgb(r)
        parts.append((m.splats, rad, rgb, state.opacity * r))
    for show, splats, mask in ((state.show_clones, m.splats, act & ~np.asarray(m.radiative)),
                               (state.show_rgb, data.rgb, None)):
        if not show or splats is None:
            continue
        mask = np.asarray(splats.active) if mask is None else mask
        rgb = np.clip(np.asarray(sh_lib.sh0_to_rgb(splats.sh[:, 0, :]))[mask], 0, 1)
        parts.append((splats, mask, rgb, _sigmoid(np.asarray(splats.opacity_logits, np.float64))[mask]))
    cut = cut_from_state(m, state)
    out = {k: [] for k in ("centers", "covariances", "rgbs", "opacities")}
    for splats, mask, rgb, opa in parts:
        c = np.asarray(splats.means, np.float64)[mask]
        keep = np.ones(len(c), bool) if cut is None else (c - cut.point) @ cut.normal <= 0
        keep &= opa > 1e-3
        out["centers"].append(c[keep])
        out["covariances"].append(np.asarray(covariance(splats.log_scales, splats.quats), np.float64)[mask][keep])
        out["rgbs"].append(rgb[keep])
        out["opacities"].append(np.asarray(opa)[keep, None])
    empty = {"centers": (0, 3), "covariances": (0, 3, 3), "rgbs": (0, 3), "opacities": (0, 1)}
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(empty[k], np.float32)
            for k, v in out.items()}


def _plane_on_cut(model, cut: CutPlane, size: int):
    """A square SlicePlane on the cut plane covering the model (its bounding sphere)."""
    from insideout_jax.cutaway import _basis
    from insideout_jax.render.slices import make_slice_plane

    centre, half = _extent(model)
    e1, e2 = _basis(cut.normal)
    o = centre - ((centre - cut.point) @ cut.normal) * cut.normal
    r = 2.2 * float(np.linalg.norm(half))
    return make_slice_plane(o, e1, e2, (r, r), (size, size))


def slice_pair(data: ViewerData, cut: CutPlane, *, size: int = 192, window=(0.05, 1.0)):
    """(CT slice, model slice) on the cut plane as [size, size, 3] uint8 images, each through the
    window as fractions of its own volume's largest value (the model's largest peak density, the
    CT's maximum attenuation; HU converted), so colours do not change as the plane moves; the CT
    side is None without a CT. Also returns the plane grid and the model's r ∈ [0, 1] (the face's
    opacity: air is clear)."""
    from scipy import ndimage

    from insideout_jax.data.ctobject import hu_to_attenuation
    from insideout_jax.render.slices import render_slice, slice_pixel_centers
    from insideout_jax.visual import as_radiative

    plane = _plane_on_cut(data.model, cut, size)
    model_img = np.asarray(render_slice(as_radiative(data.model), plane), np.float64)
    act = np.asarray(data.model.splats.active)
    top_model = float(np.exp(np.asarray(data.model.log_densities, np.float64))[act].max())
    def ramp(img, top):
        return np.clip((img / max(top, 1e-12) - window[0]) / max(window[1] - window[0], 1e-6), 0, 1)

    def colour(img, top):
        r = ramp(img, top)
        return (colormap_rgb(r) * 255).astype(np.uint8)

    ct_img = None
    if data.ct is not None:
        vol = np.asarray(data.ct.data, np.float64)
        if data.ct.quantity == "HU":
            vol = np.asarray(hu_to_attenuation(vol), np.float64)
        pts = np.asarray(slice_pixel_centers(plane), np.float64)
        idx = (pts - np.asarray(data.ct.origin_xyz)) / np.asarray(data.ct.spacing_zyx)[::-1]
        vals = ndimage.map_coordinates(vol, [idx[..., 2], idx[..., 1], idx[..., 0]], order=1,
                                       mode="constant", cval=0.0)
        ct_img = colour(vals, float(vol.max()))
    return ct_img, colour(model_img, top_model), plane, ramp(model_img, top_model)


def _wxyz(rot: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rot).as_quat()
    return np.array([w, x, y, z])


class Viewer:
    """The viser server and its GUI (module docstring). ``state`` mirrors the GUI."""

    def __init__(self, data: ViewerData, *, host: str = "127.0.0.1", port: int = 8080):
        import viser

        self.data, self.state, self._face = data, ViewState(), None
        self._lock = threading.Lock()  # GUI callbacks arrive on viser's threads: one refresh at a time
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.gui.configure_theme(control_width="medium", show_logo=False, show_share_button=False)
        self.server.scene.set_up_direction("+z")
        gui = self.server.gui
        with gui.add_folder("Clip plane"):
            self.axis = gui.add_dropdown("axis", ["off", "x", "y", "z"], initial_value="off")
            self.position = gui.add_slider("position", -1.0, 1.0, 0.01, 0.0)
            self.tilt_a = gui.add_slider("tilt 1 (°)", -60.0, 60.0, 1.0, 0.0)
            self.tilt_b = gui.add_slider("tilt 2 (°)", -60.0, 60.0, 1.0, 0.0)
        with gui.add_folder("Sets"):
            self.show_rgb = gui.add_checkbox("RGB set", True)
            self.show_radiative = gui.add_checkbox("radiative set", True)
            self.show_clones = gui.add_checkbox("cloned RGB splats", True)
        with gui.add_folder("Density transfer function"):
            self.window = gui.add_multi_slider("window (× max)", 0.0, 1.0, 0.01, (0.05, 1.0))
            self.opacity = gui.add_slider("opacity", 0.0, 1.0, 0.01, 0.8)
        names = ["(free)"] + list(data.cameras)
        self.preset = gui.add_dropdown("camera", names, initial_value=names[0])
        self.shot = gui.add_button("screenshot")
        self.slices = gui.add_image(np.zeros((8, 16, 3), np.uint8), label="CT | model at the plane")
        for h in (self.axis, self.position, self.tilt_a, self.tilt_b, self.show_rgb, self.show_radiative,
                  self.show_clones, self.window, self.opacity):
            h.on_update(lambda _: self.refresh())
        self.preset.on_update(lambda _: self.apply_preset(self.preset.value))
        self.shot.on_click(lambda _: self.screenshot())
        self._place(self.server.initial_camera)
        self.refresh()

    def _read_state(self) -> ViewState:
        return ViewState(self.axis.value, float(self.position.value), float(self.tilt_a.value),
                         float(self.tilt_b.value), bool(self.show_rgb.value), bool(self.show_radiative.value),
                         bool(self.show_clones.value), tuple(self.window.value), float(self.opacity.value))

    def refresh(self) -> None:
        """Re-send the splats, the cut face and the slice images for the GUI's state."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        self.state = s = self._read_state()
        sp = visible_splats(self.data, s)
        self.server.scene.add_gaussian_splats("/model", **sp)
        cut = cut_from_state(self.data.model, s)
        if cut is None:
            if self._face is not None:
                self._face.remove()
                self._face = None
            self.slices.image = np.zeros((8, 16, 3), np.uint8)
            return
        ct_img, model_img, plane, r = slice_pair(self.data, cut, window=s.window)
        face = np.concatenate([model_img, (255 * np.clip(s.opacity * r * 4, 0, 1)).astype(np.uint8)[..., None]], -1)
        ext = np.asarray(plane.extent, np.float64)
        rot = np.stack([np.asarray(plane.e1), np.asarray(plane.e2), cut.normal], 1)
        self._face = self.server.scene.add_image("/face", face[::-1], float(ext[0]), float(ext[1]), format="png",
                                    wxyz=_wxyz(rot), position=np.asarray(plane.origin, np.float64))
        gap = np.full((model_img.shape[0], 4, 3), 255, np.uint8)
        self.slices.image = np.concatenate([ct_img if ct_img is not None else np.zeros_like(model_img), gap,
                                            model_img], 1)

    def _place(self, camera) -> None:
        """The default view: the whole model framed, from above and in front. Given
        ``server.initial_camera`` it is where every new browser starts; given a client's camera it
        moves that view back there."""
        centre, half = _extent(self.data.model)
        _clip_range(camera, float(np.linalg.norm(half)))
        camera.up_direction = (0.0, 0.0, 1.0)
        # far enough that the model's bounding sphere fills the field of view with 10 % to spare
        way = np.array([0.8, -0.5, 0.45]) / np.linalg.norm([0.8, -0.5, 0.45])
        camera.position = centre + 1.1 * float(np.linalg.norm(half)) / np.sin(DEFAULT_FOV / 2) * way
        camera.look_at = centre
        camera.fov = DEFAULT_FOV  # a photo preset narrows it; back to the opening view's

    def apply_preset(self, name: str) -> None:
        """Move every client's camera to a preset (a PinholeCamera of ``data.cameras``)."""
        cam = self.data.cameras.get(name)
        if cam is None:
            return
        r = np.asarray(cam.rotation, np.float64)
        eye = camera_centre(cam)
        centre, half = _extent(self.data.model)
        for client in self.server.get_clients().values():
            _clip_range(client.camera, float(np.linalg.norm(half)) + float(np.linalg.norm(centre - eye)))
            client.camera.up_direction = tuple(-r[1])  # image y is down
            client.camera.position = eye
            client.camera.look_at = eye + r[2] * float(np.linalg.norm(centre - eye))
            client.camera.fov = float(2 * np.arctan(cam.height / 2 / float(cam.fy)))

    def screenshot(self, size=(720, 960)) -> list:
        """A PNG per connected client under ``<run>/figures/viewer_<n>.png``; returns the paths."""
        from PIL import Image

        out = []
        figs = self.data.run_dir / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        for client in self.server.get_clients().values():
            img = client.get_render(height=size[0], width=size[1], transport_format="png")
            path = figs / f"viewer_{len(list(figs.glob('viewer_*.png')))}.png"
            Image.fromarray(np.asarray(img)).save(path)
            out.append(path)
        return out

    def stop(self) -> None:
        self.server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python experiments/view.py",
                                description="Look inside a run's fused model in the browser.")
    p.add_argument("run", help="the run's output folder (outputs/<object>)")
    p.add_argument("--object", default=None,
                   help="its object folder, for the CT slice and camera presets (default: data/<object>)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    run = Path(args.run)
    if not (run / "stages" / "unified_splats.npz").is_file():
        print(f"error: {run} holds no unified model (stages/unified_splats.npz): run the pipeline"
              " through its visual stage first", file=sys.stderr)
        return 2
    obj = args.object
    if obj is not None and not Path(obj).is_dir():
        print(f"error: --object {obj} is not an object folder", file=sys.stderr)
        return 2
    if obj is None:
        import json

        mpath = run / "metrics.json"
        name = json.loads(mpath.read_text()).get("object") if mpath.is_file() else None
        obj = Path("data") / name if name else None
    data = load_run(run, obj)
    viewer = Viewer(data, host=args.host, port=args.port)
    print(f"viewer: http://{args.host}:{args.port}  ({len(data.cameras)} camera presets"
          f"{'' if data.ct is not None else '; no CT: give --object for the CT slice'}); Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nviewer stopped")
    finally:
        viewer.stop()
    return 0
