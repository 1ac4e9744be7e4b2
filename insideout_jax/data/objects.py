"""Object folders with ground truth: the built-in skull, objects from CT volumes, SfM, previews.

Host-side orchestration of the pure functions in :mod:`phantom`, :mod:`raycast`, :mod:`ctobject`
and :mod:`sfm`, writing through :mod:`insideout_jax.io`. Besides the layout of
:mod:`insideout_jax.io.objects`, generated objects hold:

```
truth/volume.tif + volume.json    exact density on the CT grid
truth/surface.npz                 points [M, 3] and unit outward normals [M, 3] of the outer surface (mm)
truth/cameras.json                the true photo cameras {name: {rotation, translation, fx, fy, cx, cy, width, height}}
truth/transform.json              SfM frame → CT frame similarity (written after SfM)
preview/*.png                     a few photos, radiographs and slices to look at
```
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import cv2
import numpy as np

from insideout_jax import io as iio
from insideout_jax.cameras import PinholeCamera, camera_center, make_pinhole
from insideout_jax.data import scanner

__all__ = ["make_builtin_object", "BUILTIN_OBJECTS", "make_ct_object", "check_generator",
           "describe_object", "ensure_sfm", "read_true_silhouettes", "true_sfm_transform",
           "write_previews", "read_true_cameras", "write_true_cameras", "read_true_surface",
           "CAMERAS_FILE", "SURFACE_FILE", "PREVIEW_DIR"]

CAMERAS_FILE = "truth/cameras.json"
SURFACE_FILE = "truth/surface.npz"
PREVIEW_DIR = "preview"


def write_true_cameras(path: Path, names, cameras) -> None:
    """Write {name: camera} as JSON (world → camera, COLMAP convention, CT frame in mm)."""
    out = {}
    for name, cam in zip(names, cameras, strict=True):
        out[name] = dict(rotation=np.asarray(cam.rotation, float).tolist(),
                         translation=np.asarray(cam.translation, float).tolist(),
                         fx=float(cam.fx), fy=float(cam.fy), cx=float(cam.cx), cy=float(cam.cy),
                         width=int(cam.width), height=int(cam.height))
    iio.write_json_atomic(path, out)


def read_true_cameras(path: Path) -> dict:
    """{name: PinholeCamera} from ``truth/cameras.json``."""
    raw = iio.read_json(path)
    cams = {}
    for name, c in raw.items():
        try:
            cams[name] = make_pinhole(c["rotation"], c["translation"], c["fx"], c["fy"], c["cx"],
                                      c["cy"], c["width"], c["height"])
        except KeyError as e:
            raise iio.ObjectFolderError(path, f"{name}.{e.args[0]}", "missing key") from None
        except ValueError as e:
            raise iio.ObjectFolderError(path, name, str(e)) from None
    return cams


def read_true_surface(obj_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(points [M, 3], normals [M, 3]) of the true outer surface, mm."""
    path = Path(obj_dir) / SURFACE_FILE
    if not path.is_file():
        raise iio.ObjectFolderError(path, "<file>", "no true surface (only generated objects have one)")
    with np.load(path) as z:
        return z["points"], z["normals"]


def _u8(img: np.ndarray) -> np.ndarray:
    x = np.asarray(img, np.float64)
    lo, hi = float(x.min()), float(x.max())
    return np.zeros(x.shape, np.uint8) if hi <= lo else np.round(255 * (x - lo) / (hi - lo)).astype(np.uint8)


def write_previews(obj_dir: Path, *, n_photos: int = 4, n_radiographs: int = 4) -> list:
    """PNG previews under ``preview/``: a few photos, radiographs, and the CT mid-slices."""
    obj_dir = Path(obj_dir)
    prev = obj_dir / PREVIEW_DIR
    prev.mkdir(parents=True, exist_ok=True)
    obj = iio.read_object(obj_dir, load_images=False)
    written = []
    names = list(obj.image_names)
    for name in names[:: max(1, len(names) // n_photos)][:n_photos]:
        img = iio.read_image(obj_dir / iio.IMAGES_DIR / name, as_uint8=True)
        p = prev / f"photo_{Path(name).stem}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        written.append(p)
    if obj.projections is not None:
        v = len(obj.projections)
        for k in range(0, v, max(1, v // n_radiographs))[:n_radiographs]:
            p = prev / f"radiograph_{k:03d}.png"
            # radiographs shown as film: dense = bright; row index grows with +z, so flip to show z up
            cv2.imwrite(str(p), _u8(obj.projections[k])[::-1])
            written.append(p)
    vol = obj.truth_volume or obj.volume
    if vol is not None:
        d = np.asarray(vol.data)
        for tag, img in (("axial", d[d.shape[0] // 2]), ("coronal", d[:, d.shape[1] // 2][::-1]),
                         ("sagittal", d[:, :, d.shape[2] // 2][::-1])):
            p = prev / f"ct_{tag}.png"
            cv2.imwrite(str(p), _u8(img))
            written.append(p)
    return written


def _scanner_ct(proj, geom, truth, source: str, size: int, say):
    """(``ct/`` volume, its record): the FDK reconstruction over the true volume's extent, or the
    truth itself for ``source="exact"`` (ablations)."""
    if source == "exact":
        return truth, {"reconstruction": "none: ct/ is the exact volume (ablation)"}
    if source != "fdk":
        raise ValueError(f"ct_source must be 'fdk' or 'exact', got {source!r}")
    sp = np.asarray(truth.spacing_zyx)[::-1]
    lo = np.asarray(truth.origin_xyz) - 0.5 * sp
    hi = lo + np.array(truth.data.shape[::-1]) * sp
    vol, record = scanner.scanner_ct(proj, geom, lo, hi, max_voxels=int(1.5 * size))
    say(f"  CT: FDK of the noisy projections on {tuple(vol.data.shape)} voxels of {vol.spacing_zyx[0]:.2f} mm")
    return vol, record


BUILTIN_OBJECTS = ("skull", "matryoshka")
"""The objects the project generates itself (:func:`make_builtin_object`)."""


def _builtin_phantom(name: str):
    from insideout_jax.data.matryoshka import matryoshka_phantom
    from insideout_jax.data.phantom import skull_phantom

    if name not in BUILTIN_OBJECTS:
        raise ValueError(f"unknown built-in object {name!r}; choose one of {BUILTIN_OBJECTS}")
    return {"skull": skull_phantom, "matryoshka": matryoshka_phantom}[name]()


def make_builtin_object(out_dir: str | Path, cfg=None, *, name: str = "skull", made_by: str = "python",
                        verbose: bool = True) -> dict:
    """Generate a built-in procedural object (:data:`BUILTIN_OBJECTS`: the skull, or the
    matryoshka of :mod:`insideout_jax.data.matryoshka`) as an object folder, with its exact truth
    (no download, deterministic). Both use the same scanner, CT grid and photo rings.

    Args:
      out_dir: target folder (created; existing files of the layout are replaced).
      cfg: :class:`insideout_jax.config.SkullConfig` (default: the ``cpu`` preset's).
      made_by: who asked ("runner" when ``experiments/run.py`` generated it for a preset: a later
        run with another preset refuses it), recorded in ``xray/acquisition.json``.

    Returns:
      {part: seconds} timings of the generation.
    """
    from insideout_jax.config import SkullConfig
    from insideout_jax.data import phantom as ph
    from insideout_jax.data import raycast

    cfg = cfg or SkullConfig()
    out = Path(out_dir)
    times = {}
    say = print if verbose else (lambda *a, **k: None)

    t = time.perf_counter()
    phantom = _builtin_phantom(name)
    geom = ph.default_skull_geometry(n_views=cfg.n_views, n_det=cfg.n_detector)
    say(f"  projections: {cfg.n_views} views of {cfg.n_detector}² (closed-form chords)")
    proj, acquisition = scanner.detector_noise(ph.project_phantom(phantom, geom), photons=cfg.photons,
                                               read_noise=cfg.read_noise, seed=0)
    times["projections"] = time.perf_counter() - t

    t = time.perf_counter()
    shape, spacing, origin = ph.default_skull_grid(cfg.volume_size)
    say(f"  volume: {shape} voxels of {spacing[0]:.2f} mm, {cfg.supersample}³ sub-samples")
    vol = ph.phantom_volume(phantom, shape, spacing, origin, supersample=cfg.supersample)
    times["volume"] = time.perf_counter() - t

    t = time.perf_counter()
    pts, normals = ph.phantom_surface_points(phantom, 20000)
    if cfg.photo_style == "realistic":
        images, names, cams = _realistic_photos(phantom, cfg, out, float(np.min(np.asarray(pts)[:, 2])), say)
    else:
        cams = ph.default_skull_cameras(n=cfg.n_rgb_views, size=cfg.rgb_size)
        say(f"  photos: {len(cams)} renders of {cfg.rgb_size}² (analytic ray caster)")
        images = raycast.render_phantom_rgb(phantom, cams)
        names = [f"view_{k:03d}.png" for k in range(len(cams))]
    times["photos"] = time.perf_counter() - t

    t = time.perf_counter()
    truth = iio.make_volume(vol, spacing, origin, quantity="attenuation")
    ct, acquisition["ct"] = _scanner_ct(proj, geom, truth, cfg.ct_source, cfg.volume_size, say)
    acquisition["generator"] = {"name": name, "version": scanner.GENERATOR_VERSION,
                                "made_by": made_by, "config": dataclasses.asdict(cfg)}
    iio.write_object(out, geometry=geom, projections=np.asarray(proj, np.float32), volume=ct,
                     images=None if images is None else dict(zip(names, images, strict=True)),
                     truth_volume=truth)
    iio.write_json_atomic(out / scanner.ACQUISITION_FILE, acquisition)
    np.savez(out / SURFACE_FILE, points=np.asarray(pts, np.float32),
             normals=np.asarray(normals, np.float32))
    write_true_cameras(out / CAMERAS_FILE, names, cams)
    write_previews(out)
    times["write"] = time.perf_counter() - t
    say("  " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return times


def make_ct_object(volume: np.ndarray, spacing_zyx, out_dir: str | Path, *, origin_xyz=None,
                   iso: float | None = None, quantity: str = "attenuation", n_views: int = 180,
                   n_det: int = 256, n_rgb_views: int = 60, rgb_size: int = 512,
                   keep_largest: bool = False, photons: float = 1e5, read_noise: float = 10.0,
                   ct_source: str = "fdk", verbose: bool = True) -> dict:
    """Object folder from a CT volume: ray-marched cone-beam projections through a simulated
    scanner (:mod:`insideout_jax.data.scanner`), its FDK reconstruction as ``ct/``, the volume
    itself as ``truth/``, and isosurface photos (of the volume without its voxel steps).

    Args:
      volume: [z, y, x] CT values (attenuation per mm, or HU when ``quantity == "HU"``).
      spacing_zyx: voxel spacing, mm.
      origin_xyz: centre of voxel [0, 0, 0] (default: the volume is centred on the origin).
      iso: isosurface level in the volume's units for the photos (default: skin from Otsu).
      quantity: "attenuation" or "HU" (HU are converted to attenuation for projections).
      keep_largest: keep only the largest connected region above the skin level (drops a
        scanner table or head rest, e.g. in the Stanford head); the volume is changed accordingly.
      photons, read_noise, ct_source: the simulated scanner (as :class:`SkullConfig`'s).

    Returns:
      {part: seconds}.
    """
    from insideout_jax.data import ctobject, sfm

    say = print if verbose else (lambda *a, **k: None)
    out = Path(out_dir)
    vol = np.asarray(volume, np.float32)
    spacing = np.asarray(spacing_zyx, np.float64)
    if origin_xyz is None:
        origin_xyz = -0.5 * (np.array(vol.shape[::-1]) - 1) * spacing[::-1]
    times = {}
    t = time.perf_counter()
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"the volume must be [z, y, x] with ≥ 2 voxels per axis, got shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"{int(np.sum(~np.isfinite(vol)))} voxels are not finite (NaN or inf)")
    att = ctobject.hu_to_attenuation(vol) if quantity == "HU" else vol
    if not np.any(att > 0):
        raise ValueError("no voxel has a positive attenuation: the volume is empty (values in HU?"
                         " pass --quantity HU; stored with an offset? pass --offset)")
    level = ctobject.default_iso_level(att) if iso is None else (
        float(ctobject.hu_to_attenuation(np.float32(iso))) if quantity == "HU" else float(iso))
    if not level < float(att.max()):
        raise ValueError(f"no voxel reaches the isosurface level {level:.4g} /mm of the photos (the"
                         f" volume reaches {float(att.max()):.4g} /mm): give a lower --iso")
    from insideout_jax.data.calibration import check_not_fov_cylinder

    check_not_fov_cylinder(att, np.zeros(att.shape, bool), level)
    if keep_largest:
        skin = level
        mask = ctobject.largest_component_mask(att, skin)
        say(f"  kept the largest region above {skin:.4g} /mm: {100 * (1 - mask.mean()):.1f}% of voxels"
            " set to zero")
        att = np.where(mask, att, 0.0).astype(np.float32)
    geom = ctobject.default_ct_geometry(att.shape, spacing, origin_xyz, n_views=n_views, n_det=n_det)
    say(f"  projections: {n_views} views of {n_det}² (ray marching)")
    proj, acquisition = scanner.detector_noise(
        ctobject.ct_volume_projections(att, spacing, origin_xyz, geom), photons=photons,
        read_noise=read_noise, seed=0, max_starved=scanner.MAX_STARVED)
    if quantity == "HU":
        acquisition["hu_to_attenuation"] = (f"mu = {ctobject.MU_WATER} /mm * (1 + HU/1000),"
                                             " clipped at 0 (water = 0.02 /mm)")
    times["projections"] = time.perf_counter() - t
    t = time.perf_counter()
    cams = ctobject.default_ct_cameras(att.shape, spacing, origin_xyz, n=n_rgb_views, size=rgb_size)
    say(f"  photos: {len(cams)} renders of the isosurface at {level:.4g} /mm")
    images = ctobject.render_isosurface_rgb(ctobject.without_steps(att), spacing, origin_xyz, level, cams)
    names = [f"view_{k:03d}.png" for k in range(len(cams))]
    times["photos"] = time.perf_counter() - t
    t = time.perf_counter()
    truth = iio.make_volume(att, spacing, origin_xyz, quantity="attenuation")
    ct, acquisition["ct"] = _scanner_ct(proj, geom, truth, ct_source, max(att.shape), say)
    acquisition["generator"] = {"name": "from-ct", "version": scanner.GENERATOR_VERSION}
    iio.write_object(out, geometry=geom, projections=np.asarray(proj, np.float32), volume=ct,
                     images=None if images is None else dict(zip(names, images, strict=True)),
                     truth_volume=truth)
    iio.write_json_atomic(out / scanner.ACQUISITION_FILE, acquisition)
    write_true_cameras(out / CAMERAS_FILE, names, cams)
    iio.write_json_atomic(out / sfm.SFM_OPTIONS_FILE, {"camera_model": "SIMPLE_PINHOLE"})  # no lens
    np.savez(out / SURFACE_FILE, **dict(zip(("points", "normals"), ctobject.outer_isosurface(
        att, spacing, origin_xyz, level), strict=True)))  # the photos' surface: internal noise
    write_previews(out)
    times["write"] = time.perf_counter() - t
    return times


LENS_FILE = "truth/lens.json"
MASKS_DIR = "truth/masks"


def _realistic_photos(phantom, cfg, out: Path, table_z: float, say):
    """Photos as a phone takes them (:mod:`insideout_jax.data.scene`) written as JPEGs into
    ``rgb/images``; the lens into ``truth/lens.json`` and the object silhouettes into
    ``truth/masks`` (for scoring). Returns (None, names, pinhole cameras)."""
    from insideout_jax.data import scene
    from insideout_jax.io.checkpoint import atomic_write_bytes

    setup = scene.PhotoSetup(width=cfg.rgb_size, height=cfg.rgb_size * 3 // 4)
    cams = scene.photo_cameras(cfg.n_rgb_views, setup)
    say(f"  photos: {len(cams)} realistic photos of {setup.width}×{setup.height} (table, backdrop,"
        f" lens k1 {setup.k1}, k2 {setup.k2}, sensor noise, JPEG {setup.jpeg_quality})")
    jpegs, masks = scene.take_photos(phantom, cams, setup, table_z)
    names = [f"view_{k:03d}.jpg" for k in range(len(cams))]
    (out / iio.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    for name, jpeg, mask in zip(names, jpegs, masks, strict=True):
        atomic_write_bytes(out / iio.IMAGES_DIR / name, jpeg)
        ok, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
        atomic_write_bytes(out / MASKS_DIR / name.replace(".jpg", ".png"), png.tobytes())
    iio.write_json_atomic(out / LENS_FILE, {"model": "OPENCV", "k1_k2_p1_p2": list(setup.distortion),
                                            "setup": dataclasses.asdict(setup)})
    return None, names, cams


def read_true_silhouettes(obj_dir: str | Path):
    """(masks [V, H, W] bool, true cameras (CT frame), per-view lens) from ``truth/masks``,
    ``truth/cameras.json`` and ``truth/lens.json``; None for objects without masks. For the
    evaluation only."""
    obj_dir = Path(obj_dir)
    if not (obj_dir / MASKS_DIR).is_dir() or not (obj_dir / CAMERAS_FILE).is_file():
        return None
    cams = read_true_cameras(obj_dir / CAMERAS_FILE)
    names = sorted(cams)
    masks = np.stack([cv2.imread(str(obj_dir / MASKS_DIR / (Path(n).stem + ".png")),
                                 cv2.IMREAD_GRAYSCALE) > 127 for n in names])
    lens = None
    if (obj_dir / LENS_FILE).is_file():
        k = tuple(iio.read_json(obj_dir / LENS_FILE)["k1_k2_p1_p2"])
        lens = [k] * len(names)
    return masks, [cams[n] for n in names], lens


def check_generator(obj_dir: str | Path, skull_cfg=None) -> None:
    """Raise ValueError (saying what to do) when a generated object folder was made by another
    generator version, or made by the runner for another preset than ``skull_cfg``. Folders
    without ``truth/`` (real data) are not generated and pass."""
    import json

    obj_dir = Path(obj_dir)
    if not (obj_dir / "truth").is_dir():
        return
    acq = obj_dir / scanner.ACQUISITION_FILE
    gen = json.loads(acq.read_text()).get("generator", {}) if acq.is_file() else {}
    if gen.get("version") != scanner.GENERATOR_VERSION:
        raise ValueError(
            f"{obj_dir} was made by generator version {gen.get('version', 1)}; this one is version"
            f" {scanner.GENERATOR_VERSION} (noisy projections, ct/ = their FDK reconstruction)."
            f" Make it again: python -m insideout_jax.data make skull --out {obj_dir} --overwrite"
            " (or from-ct … --overwrite), or remove the folder and let the runner make the skull")
    if skull_cfg is not None and gen.get("made_by") == "runner" and \
            gen.get("config") != json.loads(json.dumps(dataclasses.asdict(skull_cfg))):
        raise ValueError(f"{obj_dir} was made by the runner for another preset; remove the folder to"
                         " let this run make it again, or run with the preset that made it (its"
                         f" settings are in {acq})")


def describe_object(obj_dir: str | Path) -> str:
    """One line saying what an object folder holds (validates every file it reads; ``truth/`` is
    only looked for, not read: it is for the evaluation alone)."""
    obj = iio.read_object(obj_dir, load_images=False, load_truth=False)
    parts = [f"{len(obj.image_names)} photos"]
    if obj.geometry is not None:
        nv, nu = obj.geometry.n_detector
        parts.append(f"{obj.geometry.n_views} {obj.geometry.mode}-beam projections {nv}×{nu}")
    if obj.volume is not None:
        parts.append(f"CT volume {tuple(obj.volume.data.shape)}")
    if obj.colmap is not None:
        parts.append(f"COLMAP model ({len(obj.colmap.image_names)} images)")
    if (Path(obj_dir) / "truth").is_dir():
        parts.append("ground truth (for the evaluation only)")
    return ", ".join(parts)


def _camera_centres(cams) -> np.ndarray:
    return np.stack([np.asarray(camera_center(c), np.float64) for c in cams])


def ensure_sfm(obj_dir: str | Path, cfg=None, *, with_truth: bool = False, verbose: bool = True) -> str:
    """Run SfM into ``rgb/sparse/0`` unless a model is there, with the camera model the folder
    declares (:func:`~insideout_jax.data.sfm.declared_camera_model`), else ``cfg.camera_model``.

    With ``with_truth`` (the data tool, never a pipeline stage), a generated object also gets
    ``truth/transform.json`` (:func:`true_sfm_transform`) and the summary says how well the
    aligned SfM centres match the true ones. ``cfg.use_known_intrinsics`` reads the generator's
    intrinsics from ``truth/`` (off in every preset: for diagnosing SfM only).

    Returns:
      A one-line summary.
    """
    from insideout_jax.config import SfMConfig
    from insideout_jax.data.sfm import declared_camera_model, run_sfm

    cfg = cfg or SfMConfig()
    obj_dir = Path(obj_dir)
    model_dir = obj_dir / iio.COLMAP_DIR
    msg = ""
    if not model_dir.exists():
        if not (obj_dir / iio.IMAGES_DIR).is_dir():
            raise ValueError(f"{obj_dir / iio.IMAGES_DIR}: no photos, so no SfM")
        known = None
        cams_path = obj_dir / CAMERAS_FILE
        if cfg.use_known_intrinsics and cams_path.exists():
            c0 = next(iter(read_true_cameras(cams_path).values()))
            known = (float(c0.fx), float(c0.fy), float(c0.cx), float(c0.cy))
        model_name = declared_camera_model(obj_dir) or cfg.camera_model  # rgb/sfm.json first
        res = run_sfm(obj_dir / iio.IMAGES_DIR, obj_dir / "rgb" / "sparse", camera_model=model_name,
                      known_intrinsics=known, min_registered_fraction=cfg.min_registered_fraction,
                      max_num_features=cfg.max_num_features)
        msg = (f"{model_name}: registered {res.n_registered}/{res.n_images} images, {res.n_points}"
               f" points, reprojection error {res.mean_reprojection_error:.2f} px")
    model = iio.read_colmap(model_dir)
    msg = msg or f"existing model: {len(model.image_names)} images, {len(model.points_xyz)} points"
    if with_truth and (obj_dir / CAMERAS_FILE).exists():
        transform, fit = true_sfm_transform(obj_dir)
        iio.write_transform(obj_dir / iio.TRANSFORM_FILE, transform)
        msg += f"; {fit}"
    if verbose:
        print(f"  {msg}")
    return msg


def true_sfm_transform(obj_dir: str | Path):
    """(SfM → CT similarity, summary) of a generated object: the least-squares similarity from its
    COLMAP model's camera centres to the true ones (``truth/cameras.json``). For evaluations only.
    """
    from insideout_jax.data.sfm import align_camera_centres

    obj_dir = Path(obj_dir)
    model = iio.read_colmap(obj_dir / iio.COLMAP_DIR)
    truth = read_true_cameras(obj_dir / CAMERAS_FILE)
    names = [n for n in model.image_names if n in truth]
    src = _camera_centres([model.cameras[model.image_names.index(n)] for n in names])
    dst = _camera_centres([truth[n] for n in names])
    rot, t, s = align_camera_centres(src, dst)
    err = np.linalg.norm(s * src @ rot.T + t - dst, axis=1)
    size = float(np.ptp(read_true_surface(obj_dir)[0], axis=0).max()) if (
        obj_dir / SURFACE_FILE).exists() else float(np.ptp(dst, axis=0).max())
    return iio.make_similarity(rot, t, s), (
        f"aligned camera centres: mean error {err.mean():.3f} mm, max {err.max():.3f} mm"
        f" = {100 * err.max() / size:.3f}% of the object size ({size:.0f} mm)")


def camera_list(cams: dict) -> list[PinholeCamera]:
    """Cameras of a {name: camera} dict, sorted by name."""
    return [cams[k] for k in sorted(cams)]
