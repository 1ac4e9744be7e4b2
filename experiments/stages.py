"""The runner's stages: I/O, progress, timing and the metrics/report skeleton.

Every stage is a function ``stage(ctx) -> None`` that reads its inputs from the object folder or
earlier stages' saved outputs and writes its own output atomically; ``ctx.metrics`` collects the
numbers of ``metrics.json`` (contract: docs/OUTPUTS.md). A stage that this version does not have
yet leaves its fields ``null`` and says so in ``notes``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from insideout_jax.config import PipelineConfig
from insideout_jax.io.checkpoint import atomic_write_bytes

STAGE_ORDER = ("data", "sfm", "rgb", "xray", "fitting", "internal", "visual", "evaluation")


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on (message says what to fix)."""


def _empty_metrics(obj: str, cfg: str) -> dict:
    view = {"psnr": None, "ssim": None}
    section = {"psnr": None, "ssim": None, "piqe": None}
    occ = {"42": {"any": None, "mean": None}, "242": {"any": None, "mean": None}}
    return {
        "object": obj, "config": cfg, "notes": [],
        "stage_seconds": {s: None for s in STAGE_ORDER},
        "heldout_views": {"rgb": dict(view), "xray": dict(view), "unified_rgb": dict(view)},
        "cross_sections": {m: {"train": dict(section), "heldout": dict(section)}
                           for m in ("3dgs", "xgaussian", "insideout")},
        "chamfer_mm": {"none": None, "hierarchical": None, "internal": None},
        "alignment": {s: {"rot_deg": None, "scale_rel": None, "trans_mm": None}
                      for s in ("global", "local", "fine")},
        "volume": {m: {"psnr3d": None, "ssim3d": None} for m in ("fdk", "radiative", "insideout")},
        "occupancy": {m: json.loads(json.dumps(occ)) for m in ("radiative", "insideout")},
        "internal_noise": {"before": None, "after": None},
    }


@dataclasses.dataclass
class RunContext:
    """Everything a stage needs: where things are, the config, and the metrics being filled."""

    object_name: str
    object_dir: Path
    out_dir: Path
    cfg: PipelineConfig
    resume: bool = False
    metrics: dict = dataclasses.field(default=None)
    figures: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        mpath = self.out_dir / "metrics.json"
        if self.resume and mpath.is_file():
            self.metrics = json.loads(mpath.read_text())
        else:
            self.metrics = _empty_metrics(self.object_name, self.cfg.name)

    @property
    def stage_dir(self) -> Path:
        d = self.out_dir / "stages"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def note(self, text: str) -> None:
        if text not in self.metrics["notes"]:
            self.metrics["notes"].append(text)

    def drop_notes(self, prefix: str) -> None:
        """Remove the notes that start with ``prefix`` (a re-run stage rewrites its own notes)."""
        self.metrics["notes"] = [n for n in self.metrics["notes"] if not n.startswith(prefix)]

    def done_marker(self, stage: str) -> Path:
        return self.stage_dir / f"{stage}.done.json"

    def write_metrics(self) -> Path:
        path = self.out_dir / "metrics.json"
        atomic_write_bytes(path, json.dumps(self.metrics, indent=2).encode())
        return path

    def save_history(self, stage: str, history: dict) -> None:
        """Training curve of a stage (per-block loss) for the report's figures."""
        atomic_write_bytes(self.stage_dir / f"{stage}_history.json", json.dumps(history).encode())

    def write_report(self) -> Path:
        """report.md with every table (experiments/report.py); figures from this run or on disk."""
        from experiments import report as rp

        figs = dict(self.figures)
        for name in ("cross_sections", "alignment", "normals", "training"):
            p = self.out_dir / "figures" / f"{name}.png"
            if name not in figs and p.is_file():
                figs[name] = p
        return rp.write_report(self.metrics, figs, self.out_dir)


def stage_data(ctx: RunContext) -> None:
    """Make sure the object folder exists and is valid (generate the built-in skull if absent)."""
    from insideout_jax.data import objects as data_objects

    if not ctx.object_dir.exists():
        if ctx.object_name != "skull":
            raise StageError(f"object folder {ctx.object_dir} does not exist. Give a path to an"
                             " object folder, or make one with `python -m insideout_jax.data"
                             " from-ct VOLUME --spacing DZ DY DX --out DIR`.")
        print(f"[data] generating the built-in skull into {ctx.object_dir}")
        data_objects.make_skull_object(ctx.object_dir, ctx.cfg.skull)
    try:
        summary = data_objects.describe_object(ctx.object_dir)
    except ValueError as e:
        raise StageError(str(e)) from e
    print(f"[data] {summary}")


def stage_sfm(ctx: RunContext) -> None:
    """Run SfM unless the object already has a COLMAP model (rgb/sparse/0)."""
    from insideout_jax.data import objects as data_objects
    from insideout_jax.data.sfm import SfMError

    try:
        info = data_objects.ensure_sfm(ctx.object_dir, ctx.cfg.sfm)
    except (SfMError, ValueError) as e:
        raise StageError(str(e)) from e
    print(f"[sfm] {info}")


def _load_photos(ctx: RunContext):
    """(names, images [V, H, W, 3] float32, cameras) of the registered photos, resized for the stage."""
    import cv2
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.cameras import scale_camera

    model = iio.read_colmap(ctx.object_dir / iio.COLMAP_DIR)
    ds = ctx.cfg.rgb.downscale
    imgs, cams = [], []
    for name, cam in zip(model.image_names, model.cameras, strict=True):
        img = iio.read_image(ctx.object_dir / iio.IMAGES_DIR / name)
        if ds != 1:
            cam = scale_camera(cam, 1.0 / ds)
            img = cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        imgs.append(np.asarray(img, np.float32))
        cams.append(cam)
    return list(model.image_names), np.stack(imgs), cams, model


def stage_rgb(ctx: RunContext) -> None:
    """Stage 1a: 3DGS from the SfM points; held-out photo metrics; splats saved as PLY."""
    import numpy as np

    from insideout_jax.io.ply import write_ply
    from insideout_jax.train.loop import NonFiniteLossError
    from insideout_jax.train.rgb import evaluate_rgb, holdout_split, train_rgb

    names, imgs, cams, model = _load_photos(ctx)
    cfg = ctx.cfg.rgb.train
    tr, ho = holdout_split(len(names), cfg.holdout_every)
    print(f"[rgb] {len(tr)} training / {len(ho)} held-out photos of {imgs.shape[2]}×{imgs.shape[1]},"
          f" {len(model.points_xyz)} SfM points, {cfg.iterations} iterations")
    try:
        splats, hist = train_rgb(imgs[tr], [cams[i] for i in tr], model.points_xyz,
                                 model.points_rgb / 255.0, cfg,
                                 checkpoint_path=ctx.stage_dir / "rgb_train.npz")
    except NonFiniteLossError as e:
        raise StageError(f"stage 'rgb': {e}") from e
    write_ply(ctx.stage_dir / "rgb_splats.ply", splats)
    ev = evaluate_rgb(splats, imgs[ho], [cams[i] for i in ho], background=cfg.background)
    ctx.metrics["heldout_views"]["rgb"] = {"psnr": ev["psnr"], "ssim": ev["ssim"]}
    ctx.save_history("rgb", hist)
    print(f"[rgb] held-out PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f} on {ev['n_views']} views;"
          f" {int(np.asarray(splats.active).sum())} splats")


def stage_xray(ctx: RunContext) -> None:
    """Stage 1b: radiative splats from the projections; FDK baseline; held-out and volume metrics."""
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.fdk import fdk
    from insideout_jax.io.ply import write_ply
    from insideout_jax.metrics.image import psnr3d, ssim3d
    from insideout_jax.render.slices import make_voxel_grid, voxelize
    from insideout_jax.train.loop import NonFiniteLossError
    from insideout_jax.train.rgb import holdout_split
    from insideout_jax.train.xray import evaluate_xray, train_xray

    obj = iio.read_object(ctx.object_dir, load_images=False)
    if obj.geometry is None:
        raise StageError(f"{ctx.object_dir}: no X-ray projections ({iio.PROJECTIONS_FILE})")
    geom, proj = obj.geometry, obj.projections
    cfg = ctx.cfg.xray.train
    tr, ho = holdout_split(geom.n_views, cfg.holdout_every)
    g_tr, g_ho = geom.replace(angles=geom.angles[tr]), geom.replace(angles=geom.angles[ho])
    print(f"[xray] {len(tr)} training / {len(ho)} held-out projections, {cfg.iterations} iterations")
    try:
        splats, hist = train_xray(proj[tr], g_tr, cfg, checkpoint_path=ctx.stage_dir / "xray_train.npz")
    except NonFiniteLossError as e:
        raise StageError(f"stage 'xray': {e}") from e
    write_ply(ctx.stage_dir / "xray_splats.ply", splats)
    ctx.save_history("xray", hist)
    ev = evaluate_xray(splats, proj[ho], g_ho, backend=cfg.backend)
    ctx.metrics["heldout_views"]["xray"] = {"psnr": ev["psnr"], "ssim": ev["ssim"]}
    print(f"[xray] held-out projection PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f}")
    truth = obj.truth_volume or obj.volume
    n = ctx.cfg.xray.fdk_size
    if truth is not None:
        sp, org = comparison_grid(truth, n)
        ref = _resample_block(np.asarray(truth.data), n)
        vol_fdk = np.asarray(fdk(proj[tr], g_tr, (n, n, n), sp, org))
        vol_rad = np.asarray(voxelize(splats, make_voxel_grid((n, n, n), sp, org)))
        rng = float(ref.max())
        for name, vol in (("fdk", vol_fdk), ("radiative", vol_rad)):
            ctx.metrics["volume"][name] = {
                "psnr3d": float(psnr3d(vol, ref, data_range=rng)),
                "ssim3d": float(ssim3d(vol / rng, ref / rng))}
        np.save(ctx.stage_dir / "volume_fdk.npy", vol_fdk)
        np.save(ctx.stage_dir / "volume_radiative.npy", vol_rad)
        print(f"[xray] volume PSNR/SSIM vs truth: FDK {ctx.metrics['volume']['fdk']}, radiative"
              f" {ctx.metrics['volume']['radiative']}")
    else:
        ctx.note("no CT volume in the object folder: volume metrics are null")


def comparison_grid(truth, n: int):
    """(spacing_zyx, origin_xyz) of the volume-comparison grid: the truth volume's extent at n³
    voxels (its reference is the block average :func:`_resample_block`)."""
    import numpy as np

    ext = np.array(np.shape(truth.data)) * np.asarray(truth.spacing_zyx)
    sp = ext / n
    org = np.asarray(truth.origin_xyz) - 0.5 * np.asarray(truth.spacing_zyx)[::-1] + 0.5 * sp[::-1]
    return sp, org


def _ct_volume(ctx: RunContext):
    """The CT volume used as pseudo ground truth (ct/volume, else truth/volume)."""
    from insideout_jax import io as iio

    obj = iio.read_object(ctx.object_dir, load_images=False)
    vol = obj.volume or obj.truth_volume
    if vol is None:
        raise StageError(f"{ctx.object_dir}: internal rendering needs a CT volume ({iio.VOLUME_FILE});"
                         " reconstruct one with FDK from the projections first")
    return obj, vol


def object_bbox(vol, *, fraction: float = 0.05):
    """(lo, hi) xyz mm of the voxels above ``fraction`` × the volume's maximum."""
    import numpy as np

    d = np.asarray(vol.data)
    idx = np.argwhere(d > fraction * d.max())
    sp = np.asarray(vol.spacing_zyx)
    lo_zyx, hi_zyx = idx.min(0) * sp, idx.max(0) * sp
    org = np.asarray(vol.origin_xyz)
    return org + lo_zyx[::-1], org + hi_zyx[::-1]


def object_grid(vol, n: int):
    """Cubic n³ voxel grid over the object's bounding box (+10 %), for the unified volume."""
    import numpy as np

    from insideout_jax.render.slices import make_voxel_grid

    lo, hi = object_bbox(vol)
    sp = float(np.max(hi - lo)) * 1.1 / n
    return make_voxel_grid((n, n, n), (sp,) * 3, 0.5 * (lo + hi) - 0.5 * (n - 1) * sp)


def _load_splats(ctx: RunContext, name: str):
    from insideout_jax.io.ply import read_ply

    path = ctx.stage_dir / f"{name}.ply"
    if not path.is_file():
        raise StageError(f"{path} is missing: run the stage that makes it first")
    return read_ply(path)


def _num(x):
    """A float for JSON (None for NaN / inf)."""
    import math

    x = float(x)
    return x if math.isfinite(x) else None


def radiative_solid_points(rad, n: int):
    """The radiative set as a solid: voxel centres where its density exceeds the skin level.

    Decision: stage-1 radiative splats are few and large inside the object and many and faint in
    the air around it (ACUI fills the scanned cuboid); fitting the RGB shell to their *centres*
    misjudged the scale by 46 % on the skull. The voxelized density field, thresholded at Otsu's
    level (air vs tissue), is the solid the RGB shell wraps, whatever the splat sizes.
    """
    import numpy as np

    from insideout_jax.evaluation import iso_level
    from insideout_jax.render.slices import make_voxel_grid, voxel_centers, voxelize

    m = np.asarray(rad.means)[np.asarray(rad.active)]
    lo, hi = m.min(0), m.max(0)
    sp = float(np.max(hi - lo)) / n
    org = lo + 0.5 * sp
    shape = tuple(int(np.ceil((hi[a] - lo[a]) / sp)) for a in (2, 1, 0))
    grid = make_voxel_grid(shape, (sp,) * 3, org)
    dens = np.asarray(voxelize(rad, grid, cutoff_sigma=4.0))
    pts = np.asarray(voxel_centers(grid))[dens > iso_level(dens)]
    if len(pts) < 100:
        raise StageError("the radiative density has no clear object (fewer than 100 voxels above"
                         " its skin level): check the X-ray stage")
    return pts.astype(np.float32)


def _apply_to_all(res, rgb):
    """Move every RGB splat with the fitted global similarity (faint splats were not fitted)."""
    import dataclasses as dc

    import numpy as np

    from insideout_jax.splats import transform_splats

    tr = res.transform
    moved = transform_splats(rgb, tr.rotation, tr.translation, tr.scale)
    fitted = np.asarray(res.splats.active)
    means = np.where(fitted[:, None], np.asarray(res.splats.means), np.asarray(moved.means))
    quats = np.where(fitted[:, None], np.asarray(res.splats.quats), np.asarray(moved.quats))
    ls = np.where(fitted[:, None], np.asarray(res.splats.log_scales), np.asarray(moved.log_scales))
    sh = np.where(fitted[:, None, None], np.asarray(res.splats.sh), np.asarray(moved.sh))
    return dc.replace(res, splats=moved.replace(means=means, quats=quats, log_scales=ls, sh=sh))


def stage_fitting(ctx: RunContext) -> None:
    """Stage 2: hierarchical fitting of the RGB splats onto the radiative splats (CT frame)."""
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.fitting.hierarchical import hierarchical_fit
    from insideout_jax.fitting.procrustes import Similarity, similarity_errors
    from insideout_jax.io.ply import write_ply

    rgb, rad = _load_splats(ctx, "rgb_splats"), _load_splats(ctx, "xray_splats")
    cfg = ctx.cfg.fitting
    solid = radiative_solid_points(rad, cfg.grid_size)
    fit_rgb = rgb.replace(active=rgb.active & (rgb.opacities >= cfg.min_opacity))
    print(f"[fitting] {int(np.asarray(fit_rgb.active).sum())} RGB centres (opacity ≥ {cfg.min_opacity})"
          f" onto {len(solid)} voxels of the radiative density above its skin level")
    res = hierarchical_fit(fit_rgb, solid, schedule=cfg.schedule, seed=cfg.seed)
    res = _apply_to_all(res, rgb)  # faint splats left out of the fit move with the global map
    write_ply(ctx.stage_dir / "rgb_aligned.ply", res.splats)
    tr = res.transform
    iio.write_json_atomic(ctx.stage_dir / "fitting.json", {
        "transform": {"rotation": np.asarray(tr.rotation).tolist(),
                      "translation": np.asarray(tr.translation).tolist(), "scale": float(tr.scale)},
        "stages": [{"name": st.name, "accepted": st.accepted, "residual": _num(st.residual),
                    "residual_before": _num(st.residual_before), "clusters": st.clusters,
                    "displacement_mean": _num(st.displacement_mean), "seconds": st.seconds,
                    "distortion": {k: _num(v) for k, v in st.distortion.items()},
                    "transform": {"rotation": np.asarray(st.transform.rotation).tolist(),
                                  "translation": np.asarray(st.transform.translation).tolist(),
                                  "scale": float(st.transform.scale)}} for st in res.stages]})
    for st in res.stages:
        state = "kept" if st.accepted else "rejected by the gate"
        print(f"[fitting] {st.name}: residual {st.residual:.3f} mm ({state}), {st.seconds:.1f} s")
    truth_path = ctx.object_dir / iio.TRANSFORM_FILE
    if not truth_path.is_file():
        ctx.note("no truth/transform.json: alignment errors are null (real data)")
        return
    t = iio.read_transform(truth_path)
    truth = Similarity(np.asarray(t.rotation, np.float32), np.asarray(t.translation, np.float32),
                       np.float32(t.scale))
    centre = np.asarray(rgb.means)[np.asarray(rgb.active)].mean(0)
    by_kind = {"global": res.stages[0]}
    locals_ = [st for st in res.stages if st.name.startswith("local")]
    if locals_:
        by_kind["local"] = locals_[-1]
    fine = [st for st in res.stages if st.name == "fine"]
    if fine:
        by_kind["fine"] = fine[-1]
    for kind, st in by_kind.items():
        e = similarity_errors(st.transform, truth, center=centre)
        ctx.metrics["alignment"][kind] = {"rot_deg": float(e["rot_deg"]),
                                          "scale_rel": float(e["scale_rel"]),
                                          "trans_mm": float(e["trans"])}
        print(f"[fitting] {kind}: rotation error {float(e['rot_deg']):.3f}°, scale error"
              f" {100 * float(e['scale_rel']):.3f} %, translation error {float(e['trans']):.3f} mm")


def slice_set(ctx: RunContext, vol, *, heldout: bool, resolution: int | None = None):
    """(AxisSlice list, planes, CT reference slices [S, R, R]) over the object's bounding box, at
    ``resolution`` pixels per side (default: the training resolution)."""
    import numpy as np

    from insideout_jax.internal.pseudo_gt import make_slices, sample_volume_on_slice, to_plane

    lo, hi = object_bbox(vol)
    cfg = ctx.cfg.internal
    slices = make_slices(lo, hi, spacing=cfg.slice_spacing,
                         resolution=cfg.resolution if resolution is None else resolution,
                         heldout=heldout)
    refs = np.stack([sample_volume_on_slice(vol.data, vol.spacing_zyx, vol.origin_xyz, s)
                     for s in slices])
    return slices, [to_plane(s) for s in slices], refs


def stage_internal(ctx: RunContext) -> None:
    """Stage 3: both splat sets trained on the 15 mm CT cross-sections (X-ray reference loss)."""
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.internal.pseudo_gt import outer_contour_target
    from insideout_jax.internal.train import train_internal
    from insideout_jax.io.ply import write_ply
    from insideout_jax.train.loop import NonFiniteLossError
    from insideout_jax.train.rgb import holdout_split

    obj, vol = _ct_volume(ctx)
    slices, planes, refs = slice_set(ctx, vol, heldout=False)
    cfg = ctx.cfg.internal
    print(f"[internal] {len(slices)} training slices of {cfg.resolution}² every {cfg.slice_spacing} mm")
    rad, rgb = _load_splats(ctx, "xray_splats"), _load_splats(ctx, "rgb_aligned")
    geom, proj = obj.geometry, obj.projections
    tr, _ = holdout_split(geom.n_views, ctx.cfg.xray.train.holdout_every) if geom else (None, None)
    try:
        rad2, h_rad = train_internal(
            rad, planes, refs, cfg.rad,
            projections=None if geom is None else proj[tr],
            geometry=None if geom is None else geom.replace(angles=geom.angles[tr]),
            checkpoint_path=ctx.stage_dir / "internal_rad.npz")
        contours = np.stack([outer_contour_target(r) for r in refs])
        photos, cams = photos_in_ct_frame(ctx, heldout=False) if cfg.rgb.photo_weight > 0 else (None, None)
        rgb2, h_rgb = train_internal(rgb, planes, contours, cfg.rgb, photos=photos, cameras=cams,
                                     background=ctx.cfg.rgb.train.background,
                                     checkpoint_path=ctx.stage_dir / "internal_rgb.npz")
    except NonFiniteLossError as e:
        raise StageError(f"stage 'internal': {e}") from e
    write_ply(ctx.stage_dir / "xray_internal.ply", rad2)
    write_ply(ctx.stage_dir / "rgb_internal.ply", rgb2)
    ctx.save_history("internal_rad", h_rad)
    ctx.save_history("internal_rgb", h_rgb)
    iio.write_json_atomic(ctx.stage_dir / "internal.json", {"n_slices": len(slices)})


def photos_in_ct_frame(ctx: RunContext, *, heldout: bool):
    """(images [V, H, W, 3], cameras moved into the CT frame by the fitted similarity) of the
    training or held-out photos."""
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.cameras import transform_camera
    from insideout_jax.train.rgb import holdout_split

    fit = iio.read_json(ctx.stage_dir / "fitting.json")["transform"]
    names, imgs, cams, _ = _load_photos(ctx)
    tr, ho = holdout_split(len(names), ctx.cfg.rgb.train.holdout_every)
    idx = ho if heldout else tr
    return imgs[idx], [transform_camera(cams[i], np.asarray(fit["rotation"]),
                                        np.asarray(fit["translation"]), fit["scale"]) for i in idx]


def stage_visual(ctx: RunContext) -> None:
    """Stage 4: colour transfer + detail cloning → unified model (PLY, volume TIFF)."""
    import numpy as np

    from insideout_jax import io as iio
    from insideout_jax.render.slices import voxelize
    from insideout_jax.train.rgb import evaluate_rgb
    from insideout_jax.visual import as_radiative, refine_colours, unify, write_unified_ply

    rad, rgb = _load_splats(ctx, "xray_internal"), _load_splats(ctx, "rgb_internal")
    vcfg, bg = ctx.cfg.visual, ctx.cfg.rgb.train.background
    model = unify(rad, rgb, percentile=vcfg.clone_percentile)
    if vcfg.colour_iterations > 0:
        photos, cams = photos_in_ct_frame(ctx, heldout=False)
        model, hist = refine_colours(model, photos, cams, iterations=vcfg.colour_iterations,
                                     lr=vcfg.colour_lr, background=bg)
        ctx.save_history("colour", hist)
    write_unified_ply(ctx.out_dir / "unified.ply", model)
    _, vol = _ct_volume(ctx)
    grid = object_grid(vol, ctx.cfg.visual.volume_size)
    dens = np.asarray(voxelize(as_radiative(model), grid))
    iio.write_volume(ctx.out_dir / "volume.tif",
                     iio.make_volume(dens, np.asarray(grid.spacing_zyx), np.asarray(grid.origin_xyz),
                                     quantity="attenuation"))
    np.save(ctx.stage_dir / "volume_unified.npy", dens)
    print(f"[visual] unified model: {int(np.asarray(model.radiative).sum())} radiative +"
          f" {int((~np.asarray(model.radiative)).sum())} cloned RGB splats")
    # the unified model seen from the held-out photos (cameras moved into the CT frame)
    imgs, cams_ct = photos_in_ct_frame(ctx, heldout=True)
    ev = evaluate_rgb(model.splats, imgs, cams_ct, background=bg)
    ctx.metrics["heldout_views"]["unified_rgb"] = {"psnr": ev["psnr"], "ssim": ev["ssim"]}
    print(f"[visual] unified model on held-out photos: PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f}")


def object_points(splats, *, min_opacity: float = 0.05, density_fraction: float = 0.05):
    """Centres of the splats that belong to the object, for the Chamfer protocol (decision).

    RGB: opacity ≥ ``min_opacity`` (drops floaters). Radiative: peak density ≥ ``density_fraction``
    × the 99th percentile of the set's densities — ACUI leaves thousands of faint splats in the air
    of the scanned cuboid, whose hull is the cuboid, not the object (on the skull they raised the
    Chamfer distance after alignment from 19 mm to 80 mm).
    """
    import numpy as np

    from insideout_jax.splats import RadSplats

    act = np.asarray(splats.active)
    if isinstance(splats, RadSplats):
        d = np.exp(np.asarray(splats.log_densities, np.float64))
        keep = act & (d >= density_fraction * np.percentile(d[act], 99))
    else:
        keep = act & (np.asarray(splats.opacities) >= min_opacity)
    return np.asarray(splats.means)[keep]


_CHAMFER_NOTE = "Chamfer rises with internal rendering"
_PIQE_NOTE = "PIQE of the CT reference slices themselves"


def _explain_chamfer_rise(ctx: RunContext, ch: dict, rgb_al, rgb_in, rad0, rad_in) -> None:
    """When internal rendering raises the Chamfer distance, say which splat set moved it: the
    two mixed rows (only the RGB set, or only the radiative set, after internal rendering) and
    the directed distances, in a note of the report."""
    from insideout_jax import evaluation as ev

    ctx.drop_notes(_CHAMFER_NOTE)
    hier, inner = (float(ch["chamfer_mm"][k]) for k in ("hierarchical", "internal"))
    if not inner > hier:
        return
    mixed = ev.chamfer_block({"rgb_only": rgb_in, "rad_only": rgb_al},
                             {"rgb_only": rad0, "rad_only": rad_in}, protocol_points=rad0)
    d = ch["details"]
    ctx.note(
        f"{_CHAMFER_NOTE} ({hier:.2f} → {inner:.2f} mm). With only the RGB "
        f"splats after internal rendering it is {float(mixed['chamfer_mm']['rgb_only']):.2f} mm, "
        f"with only the radiative ones {float(mixed['chamfer_mm']['rad_only']):.2f} mm. Directed "
        f"distances (RGB → radiative, radiative → RGB): {float(d['hierarchical']['a_to_b']):.2f} / "
        f"{float(d['hierarchical']['b_to_a']):.2f} mm before, {float(d['internal']['a_to_b']):.2f} /"
        f" {float(d['internal']['b_to_a']):.2f} mm after, between "
        f"{int(d['internal']['n_surface_a'])} RGB and {int(d['internal']['n_surface_b'])} radiative "
        "visible centres: both are of the order of the spacing of the radiative centres, so the "
        "row measures how the visible splat sets change, not a misalignment (the alignment errors "
        "against the true transform are in the ground-truth section).")


def _note_reference_piqe(ctx: RunContext, refs) -> None:
    """PIQE of the CT reference slices themselves, in a report note: it tells how to read the
    methods' PIQE (lower is better, but PIQE rewards texture: a noise-free phantom's
    piecewise-constant slices score near 100, the worst value)."""
    import numpy as np

    from insideout_jax.metrics.image import piqe_slice

    ctx.drop_notes(_PIQE_NOTE)
    scores = [piqe_slice(r) for r in refs if float(np.ptp(r)) > 0]
    if not scores:
        return
    ref = float(np.mean(scores))
    cs = ctx.metrics["cross_sections"]
    ctx.note(f"{_PIQE_NOTE} (held-out positions): {ref:.1f}, against "
             f"{cs['xgaussian']['heldout']['piqe']:.1f} for X-Gaussian and "
             f"{cs['insideout']['heldout']['piqe']:.1f} for InsideOut. PIQE is lower for images with "
             "texture or noise; when the reference itself scores near 100 (a noise-free, "
             "piecewise-constant volume), a rendering closer to it scores higher, so PIQE cannot "
             "rank fidelity on this object: read PSNR and SSIM.")


def stage_evaluation(ctx: RunContext) -> None:
    """Table 2 (cross-sections), Table 3 (Chamfer), occupancy (Fig. 6), internal noise, volumes,
    figures (Figs. 4, 5, 7, training curves) and the mesh."""
    import numpy as np

    from experiments import report as rp
    from insideout_jax import evaluation as ev
    from insideout_jax.data.objects import SURFACE_FILE, read_true_surface
    from insideout_jax.render.slices import voxelize
    from insideout_jax.visual import as_radiative, unify

    obj, vol = _ct_volume(ctx)
    rgb0, rgb_al, rgb_in = (_load_splats(ctx, n) for n in ("rgb_splats", "rgb_aligned", "rgb_internal"))
    rad0, rad_in = _load_splats(ctx, "xray_splats"), _load_splats(ctx, "xray_internal")
    unified = as_radiative(unify(rad_in, rgb_in, percentile=ctx.cfg.visual.clone_percentile))
    methods = {"3dgs": rgb_al, "xgaussian": rad0, "insideout": unified}
    ref_range = (float(np.min(vol.data)), float(np.max(vol.data)))
    fig_rows = {}
    for split, heldout in (("train", False), ("heldout", True)):
        slices, _, refs = slice_set(ctx, vol, heldout=heldout,
                                    resolution=ctx.cfg.internal.eval_resolution)
        kinds = [s.kind for s in slices]
        for name, sp in methods.items():
            preds = ev.render_cross_sections(sp, slices)
            m = ev.slice_metrics(preds, refs, kinds, ref_range=ref_range)
            ctx.metrics["cross_sections"][name][split] = ev.to_json_ready(
                {k: m[k] for k in ("psnr", "ssim", "piqe", "psnr_affine", "ssim_padded", "axial",
                                   "coronal")})
            if heldout:
                pick = np.linspace(0, len(slices) - 1, min(4, len(slices))).round().astype(int)
                fig_rows[name] = preds[pick]
                fig_rows["_ref"], fig_rows["_labels"] = refs[pick], [
                    f"{slices[i].kind} {slices[i].position:+.1f} mm" for i in pick]
        print(f"[evaluation] cross-sections ({split}): " + ", ".join(
            f"{k} {ctx.metrics['cross_sections'][k][split]['psnr']:.2f} dB" for k in methods))
        if heldout:
            _note_reference_piqe(ctx, refs)

    act = lambda sp: np.asarray(sp.means)[np.asarray(sp.active)]  # noqa: E731
    obj_pts = lambda sp: object_points(sp, min_opacity=ctx.cfg.fitting.min_opacity)  # noqa: E731
    p_rgb0, p_rgb_al, p_rgb_in, p_rad0, p_rad_in = map(obj_pts, (rgb0, rgb_al, rgb_in, rad0, rad_in))
    ch = ev.chamfer_block({"none": p_rgb0, "hierarchical": p_rgb_al, "internal": p_rgb_in},
                          {"none": p_rad0, "hierarchical": p_rad0, "internal": p_rad_in})
    ctx.metrics["chamfer_mm"] = ev.to_json_ready(ch["chamfer_mm"])
    print(f"[evaluation] Chamfer (HPR) mm: {ctx.metrics['chamfer_mm']}")
    _explain_chamfer_rise(ctx, ch, p_rgb_al, p_rgb_in, p_rad0, p_rad_in)

    if (ctx.object_dir / SURFACE_FILE).is_file():
        pts, nrm = read_true_surface(ctx.object_dir)
        ctx.metrics["internal_noise"] = ev.to_json_ready(
            {"before": ev.internal_noise(rgb_al, pts, nrm), "after": ev.internal_noise(rgb_in, pts, nrm)})
        print(f"[evaluation] internal noise: {ctx.metrics['internal_noise']}")
    else:
        ctx.note("no true surface: internal noise is null")

    grid = object_grid(vol, ctx.cfg.visual.volume_size)
    sp_v, org = float(grid.spacing_zyx[0]), np.asarray(grid.origin_xyz)
    # the unified model's volume was voxelized on this grid by the visual stage
    vols = {"radiative": np.asarray(voxelize(rad0, grid)),
            "insideout": np.load(ctx.stage_dir / "volume_unified.npy")}
    meshes = {}
    for name, v in vols.items():
        ctx.metrics["occupancy"][name] = ev.to_json_ready(
            {k: val for k, val in ev.occupancy_block(v, (sp_v,) * 3, org).items() if k in ("42", "242")})
        verts, faces, _ = ev.density_mesh(v, (sp_v,) * 3, org)
        meshes[name] = (verts, faces)
    from insideout_jax.io.ply import write_mesh_ply

    write_mesh_ply(ctx.out_dir / "mesh.ply", *meshes["insideout"])
    truth = obj.truth_volume
    if truth is not None:
        ref = _resample_to(np.asarray(truth.data), truth, grid)
        ctx.metrics["volume"]["insideout"] = ev.to_json_ready(ev.volume_metrics(vols["insideout"], ref))
    figs = ctx.out_dir / "figures"
    figures = {
        "cross_sections": rp.plot_cross_sections(
            {"CT reference": fig_rows["_ref"], "3DGS": fig_rows["3dgs"],
             "X-Gaussian": fig_rows["xgaussian"], "InsideOut": fig_rows["insideout"]},
            fig_rows["_labels"], figs / "cross_sections.png"),
        "alignment": rp.plot_alignment(act(rgb0), act(rgb_al), act(rad0), figs / "alignment.png"),
        "normals": rp.plot_normal_histograms({"radiative": meshes["radiative"],
                                              "InsideOut": meshes["insideout"]}, figs / "normals.png"),
        "training": rp.plot_training_curves(rp.load_histories(ctx.stage_dir), figs / "training.png"),
    }
    ctx.figures = figures


def _resample_to(data, vol, grid):
    """Sample a volume [z, y, x] (its spacing / origin) at the voxel centres of ``grid`` (trilinear)."""
    import numpy as np
    from scipy import ndimage

    n = grid.shape_zyx
    sp_g, org_g = np.asarray(grid.spacing_zyx), np.asarray(grid.origin_xyz)
    sp, org = np.asarray(vol.spacing_zyx), np.asarray(vol.origin_xyz)
    axes = [(org_g[2 - a] + np.arange(n[a]) * sp_g[a] - org[2 - a]) / sp[a] for a in range(3)]
    idx = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(np.asarray(data, np.float32), idx, order=1, mode="constant")


def _resample_block(vol, n: int):
    """Resample [z, y, x] to n³ by linear interpolation at the n³ cell centres of the same extent."""
    import numpy as np
    from scipy import ndimage

    coords = [(np.arange(n) + 0.5) * s / n - 0.5 for s in vol.shape]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(np.asarray(vol, np.float32), grid, order=1, mode="nearest")


STAGES: dict[str, Callable[[RunContext], None]] = {
    "data": stage_data,
    "sfm": stage_sfm,
    "rgb": stage_rgb,
    "xray": stage_xray,
    "fitting": stage_fitting,
    "internal": stage_internal,
    "visual": stage_visual,
    "evaluation": stage_evaluation,
}


def run_stage(name: str, ctx: RunContext) -> bool:
    """Run one stage (or skip it under --resume when it finished before). Returns True if run.

    Without --resume the stage starts from scratch: its training checkpoints (``<stage>_*.npz`` in
    the stage folder: rgb_train, xray_train, internal_rad, internal_rgb) are removed first, or a
    finished checkpoint of an earlier run would be returned as is, whatever the config.
    """
    marker = ctx.done_marker(name)
    if ctx.resume and marker.is_file():
        print(f"[{name}] already done (resume)")
        return False
    if not ctx.resume:
        for f in ctx.stage_dir.glob(f"{name}_*.npz"):
            f.unlink()
    t0 = time.perf_counter()
    STAGES[name](ctx)
    seconds = time.perf_counter() - t0
    ctx.metrics["stage_seconds"][name] = seconds
    atomic_write_bytes(marker, json.dumps({"seconds": seconds}).encode())
    ctx.write_metrics()
    return True
