"""The runner's edge around :mod:`insideout_jax.pipeline`: object folders in, stage results out.

Every stage ``stage(ctx) -> None`` reads its inputs (the object folder, earlier stages' saved
results), calls the pipeline stage, writes what it returns (:mod:`insideout_jax.pipeline.store`)
and merges its metrics into ``metrics.json`` (contract: docs/OUTPUTS.md). Nothing here computes a
result: a Python user gets the same numbers from :func:`insideout_jax.pipeline.fuse`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from insideout_jax import io as iio
from insideout_jax import pipeline as pl
from insideout_jax.config import PipelineConfig
from insideout_jax.data.objects import BUILTIN_OBJECTS
from insideout_jax.data.scanner import ACQUISITION_FILE
from insideout_jax.io.checkpoint import atomic_write_bytes
from insideout_jax.io.validate import read_registered_photos, registered_cameras
from insideout_jax.pipeline import geometry as pg
from insideout_jax.pipeline import store
from insideout_jax.train.loop import NonFiniteLossError
from insideout_jax.train.rgb import holdout_split

STAGE_ORDER = pl.STAGE_ORDER


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on (message says what to fix)."""


def _user_errors() -> tuple:
    """Exceptions that mean a user's input or request is at fault (their messages name the file
    or the setting); anything else is a bug and keeps its traceback."""
    from insideout_jax.data.sfm import SfMError
    from insideout_jax.render.tiles import PairCountOverflow

    return (iio.ObjectFolderError, pl.PipelineInputError, store.MissingStageOutput,
            NonFiniteLossError, SfMError, PairCountOverflow)


def run_json(path: Path) -> dict:
    """A JSON file of the output folder (metrics, stage markers); StageError if it is damaged."""
    try:
        return iio.read_json(path)
    except iio.ObjectFolderError as e:
        raise StageError(f"{e}: the output folder is damaged; remove the file (its stage runs"
                         " again) or start afresh with --overwrite") from e


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
            self.metrics = run_json(mpath)
        else:
            self.metrics = pl.empty_metrics(self.object_name, self.cfg.name)

    @property
    def stage_dir(self) -> Path:
        d = self.out_dir / "stages"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def note(self, text: str) -> None:
        if text not in self.metrics["notes"]:
            self.metrics["notes"].append(text)

    def done_marker(self, stage: str) -> Path:
        return self.stage_dir / f"{stage}.done.json"

    def write_metrics(self) -> Path:
        """metrics.json, atomically; a value that is NaN or infinite is written as null and the
        notes say which and why (JSON has neither)."""
        self.metrics, replaced = pl.finite_metrics(self.metrics)
        if replaced:
            self.note(pl.non_finite_note(replaced))
        path = self.out_dir / "metrics.json"
        atomic_write_bytes(path, json.dumps(self.metrics, indent=2, allow_nan=False).encode())
        return path

    def record(self, result) -> None:
        """Save a stage result and merge its metrics and notes."""
        store.save_result(self.stage_dir, self.out_dir, result)
        pl.merge_metrics(self.metrics, result.metrics)
        for n in getattr(result, "notes", ()):
            self.note(n)

    def write_report(self) -> Path:
        """report.md with every table; figures from this run or on disk."""
        from insideout_jax import reporting as rp

        figs = dict(self.figures)
        for name in ("cross_sections", "alignment", "normals", "training", "cutaways", "turntable.gif"):
            p = self.out_dir / "figures" / (name if "." in name else f"{name}.png")
            name = name.split(".")[0]
            if name not in figs and p.is_file():
                figs[name] = p
        return rp.write_report(self.metrics, figs, self.out_dir)

    @functools.cached_property
    def obj(self):
        """The object folder without ``truth/`` (which only :func:`truth` reads, for evaluation)."""
        obj, notes = pl.object_inputs(iio.read_object(self.object_dir, load_images=False,
                                                      load_truth=False),
                                      self.cfg.skull.n_views, self.cfg.skull.n_detector)
        for n in notes:  # counts converted, projections synthesized: said
            print(f"[data] {n}")
            self.note(n)
        return obj

    @functools.cached_property
    def ct(self):
        """The CT the internal stage learns from: ``ct/volume``, else the FDK reconstruction of
        the training projections, made once per run (never ``truth/``: it is for the evaluation
        alone)."""
        if self.obj.volume is None and self.obj.geometry is None:
            raise StageError(f"{self.object_dir}: neither a CT volume ({iio.VOLUME_FILE}) nor X-ray"
                             f" projections ({iio.PROJECTIONS_FILE}) to reconstruct one from")
        try:
            vol, notes = pl.ct_for_training(self.obj.volume, self.obj.projections,
                                            self.obj.geometry, self.cfg.xray)
        except ValueError as e:  # units that cannot be calibrated: the volume's fault
            raise StageError(f"{self.object_dir / iio.VOLUME_FILE}: {e}") from None
        for n in notes:
            print(f"[data] {n}")
            self.note(n)
        return vol

    def training_views(self):
        """(training projections, their geometry), or (None, None) without projections."""
        if self.obj.geometry is None:
            return None, None
        return pg.split_views(self.obj.projections, self.obj.geometry, self.cfg.xray.train.holdout_every)[0]

    def splats(self, name: str):
        try:
            return store.load_splats(self.stage_dir, name)
        except store.MissingStageOutput as e:
            raise StageError(str(e)) from e


def stage_data(ctx: RunContext) -> None:
    """Make sure the object folder exists and is valid (generate a built-in object if absent)."""
    from insideout_jax.data import objects as data_objects

    if not ctx.object_dir.exists():
        if ctx.object_name not in BUILTIN_OBJECTS:
            raise _missing_object(ctx)
        print(f"[data] generating the built-in {ctx.object_name} into {ctx.object_dir}")
        data_objects.make_builtin_object(ctx.object_dir, ctx.cfg.skull, name=ctx.object_name, made_by="runner")
    try:
        data_objects.check_generator(ctx.object_dir, ctx.cfg.skull)
        print(f"[data] {data_objects.describe_object(ctx.object_dir)}")
    except ValueError as e:
        raise StageError(str(e)) from e
    acq = ctx.object_dir / ACQUISITION_FILE  # what was simulated or converted, for the report
    if acq.is_file():
        ctx.metrics["acquisition"] = {k: v for k, v in run_json(acq).items() if k != "generator"}


def stage_sfm(ctx: RunContext) -> None:
    """Run SfM unless the object already has a COLMAP model (rgb/sparse/0)."""
    from insideout_jax.data import objects as data_objects
    from insideout_jax.data.sfm import SfMError

    try:
        print(f"[sfm] {data_objects.ensure_sfm(ctx.object_dir, ctx.cfg.sfm)}")
    except (SfMError, ValueError) as e:
        raise StageError(str(e)) from e


def load_photos(ctx: RunContext):
    """(images [V, H, W, 3] float32 at the stage's size, cameras, COLMAP model)."""
    model = iio.read_colmap(ctx.object_dir / iio.COLMAP_DIR)
    imgs, cams = read_registered_photos(ctx.object_dir, model, ctx.cfg.rgb.train.background)  # sizes, lenses
    imgs, cams = pg.downscale_photos(imgs, cams, ctx.cfg.rgb.downscale)
    return imgs, cams, model


def photos_in_ct_frame(ctx: RunContext):
    """((training photos, cameras), (held-out photos, cameras)), cameras moved into the CT frame
    by the fitted similarity; the photos are read once."""
    imgs, cams, _ = load_photos(ctx)  # the room (if any) matted out: the object's splats only
    imgs = pl.matte_photos(imgs, cams, ctx.splats("rgb_splats"), ctx.splats("rgb_aligned").active,
                           ctx.cfg.rgb.train.background)
    transform = store.load_transform(ctx.stage_dir)
    return tuple((imgs[idx], pg.cameras_in_ct_frame([cams[i] for i in idx], transform))
                 for idx in holdout_split(len(imgs), ctx.cfg.rgb.train.holdout_every))


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def stage_rgb(ctx: RunContext) -> None:
    """Stage 1a: 3DGS from the SfM points; held-out photo metrics; splats saved as PLY."""
    imgs, cams, model = load_photos(ctx)
    print(f"[rgb] {len(imgs)} photos of {imgs.shape[2]}×{imgs.shape[1]} (every"
          f" {ctx.cfg.rgb.train.holdout_every}th held out), {len(model.points_xyz)} SfM points,"
          f" {ctx.cfg.rgb.train.iterations} iterations")
    res = pl.train_rgb_stage(imgs, cams, model.points_xyz, model.points_rgb, ctx.cfg.rgb,
                             checkpoint_path=ctx.stage_dir / CHECKPOINTS["rgb"][0], progress=True)
    ctx.record(res)
    print(f"[rgb] held-out photos: {_fmt(res.metrics['heldout_views']['rgb'])};"
          f" {int(np.asarray(res.splats.active).sum())} splats")


def stage_xray(ctx: RunContext) -> None:
    """Stage 1b: radiative splats from the projections; FDK baseline; held-out and volume metrics."""
    obj = ctx.obj
    if obj.geometry is None:
        raise StageError(f"{ctx.object_dir}: no X-ray projections ({iio.PROJECTIONS_FILE})")
    print(f"[xray] {obj.geometry.n_views} projections (every"
          f" {ctx.cfg.xray.train.holdout_every}th held out), {ctx.cfg.xray.train.iterations} iterations")
    ck = [ctx.stage_dir / f for f in CHECKPOINTS["xray"]]
    res = pl.train_xray_stage(obj.projections, obj.geometry, ctx.cfg.xray, checkpoint_path=ck[0],
                              xgaussian_checkpoint_path=ck[1], progress=True)
    ctx.record(res)
    print("[xray] held-out projections: " + "; ".join(f"{k} {_fmt(v)}" for k, v in
                                                      res.metrics["heldout_views"].items()))


def stage_fitting(ctx: RunContext) -> None:
    """Stage 2: hierarchical fitting of the RGB splats onto the radiative splats (CT frame)."""
    model = iio.read_colmap(ctx.object_dir / iio.COLMAP_DIR)  # the photos' cameras and lens
    cams = registered_cameras(model)  # at the photos' common size, with the masks
    res = pl.fit_stage(ctx.splats("rgb_splats"), ctx.splats("xray_splats"), ctx.cfg.fitting, cameras=cams,
                       masks=iio.read_masks(ctx.object_dir, model.image_names, (cams[0].width, cams[0].height)),
                       distortion=model.distortion or None)
    ctx.record(res)
    for st in res.stages:
        print(f"[fitting] {st.name}: residual {st.residual:.3f} mm"
              f" ({'kept' if st.accepted else 'rejected by the gate'}), {st.seconds:.1f} s")


def stage_internal(ctx: RunContext) -> None:
    """Stage 3: both splat sets trained on the CT cross-sections (X-ray reference loss)."""
    cfg = ctx.cfg.internal
    proj, geom = ctx.training_views()
    photos, cams = photos_in_ct_frame(ctx)[0] if cfg.rgb.photo_weight > 0 else (None, None)
    print(f"[internal] slices every {cfg.slice_spacing} mm at {cfg.resolution}²")
    res = pl.internal_stage(
        ctx.splats("xray_splats"), ctx.splats("rgb_aligned"), ctx.ct, cfg, projections=proj,
        geometry=geom, photos=photos, cameras=cams, background=ctx.cfg.rgb.train.background,
        checkpoint_paths=tuple(ctx.stage_dir / f for f in CHECKPOINTS["internal"]),
        progress=True)
    ctx.record(res)
    print(f"[internal] {res.n_slices} training slices")


def stage_visual(ctx: RunContext) -> None:
    """Stage 4: colour transfer + detail cloning → unified model (PLY, volume TIFF)."""
    (photos, cams), (ho_photos, ho_cams) = photos_in_ct_frame(ctx)
    res = pl.visual_stage(ctx.splats("xray_internal"), ctx.splats("rgb_internal"), ctx.ct,
                          ctx.cfg.visual, photos=photos, cameras=cams, heldout_photos=ho_photos,
                          heldout_cameras=ho_cams, background=ctx.cfg.rgb.train.background,
                          rgb_only=ctx.splats("rgb_aligned"), progress=True)
    ctx.record(res)
    rad = np.asarray(res.model.radiative)
    print(f"[visual] unified model: {int(rad.sum())} radiative + {int((~rad).sum())} cloned RGB"
          f" splats; held-out photos (CT frame): {_fmt(res.metrics['heldout_views']['unified_rgb'])}")


def stage_evaluation(ctx: RunContext) -> None:
    """Tables 2 and 3, occupancy, internal noise, the unified volume vs truth; figures."""
    from insideout_jax import reporting as rp

    grid, density = store.load_grid(ctx.stage_dir)
    proj, geom = ctx.training_views()
    res = pl.evaluate(rgb0=ctx.splats("rgb_splats"), rgb_aligned=ctx.splats("rgb_aligned"),
                      rgb_internal=ctx.splats("rgb_internal"), rad0=ctx.splats("xray_splats"),
                      rad_internal=ctx.splats("xray_internal"), unified_density=density, grid=grid,
                      ct_volume=ctx.ct, cfg=ctx.cfg, truth=pl.read_truth(ctx.object_dir),
                      fit_levels=store.load_fit_levels(ctx.stage_dir), projections=proj, geometry=geom,
                      xgaussian=store.load_xgaussian(ctx.stage_dir))
    ctx.record(res)
    m = res.metrics
    print("[evaluation] cross-sections (held-out, vs CT): " + ", ".join(
        f"{k} {v['heldout']['psnr']:.2f} dB" for k, v in m["cross_sections"].items()))
    print(f"[evaluation] Chamfer (HPR) mm: {m['chamfer_mm']}")
    for kind, e in m.get("alignment", {}).items():
        print(f"[evaluation] alignment, {kind} level vs the true transform: {_fmt(e)}")
    print("".join(f"[evaluation] volume {name}: {_fmt(v)}\n" for name, v in m.get("volume", {}).items()), end="")
    figs, fd = ctx.out_dir / "figures", res.figure_data
    ctx.figures = {
        "cross_sections": rp.plot_cross_sections(*fd["cross_sections"], figs / "cross_sections.png"),
        "alignment": rp.plot_alignment(*fd["alignment"], figs / "alignment.png"),
        "selection": rp.plot_selection(*fd["selection"][:2], figs / "selection.png", scores=fd["selection"][2]),
        "normals": rp.plot_normal_histograms(fd["normals"], figs / "normals.png"),
        "training": rp.plot_training_curves(rp.load_histories(ctx.stage_dir), figs / "training.png"),
    }
    from insideout_jax.reporting.cutaways import opacity_model, plot_cutaways, write_turntable

    models = {"InsideOut": store.load_unified(ctx.stage_dir), "3DGS": opacity_model(ctx.splats("rgb_aligned"))}
    print("[evaluation] cut-away figures and turntable")
    ctx.figures["cutaways"] = plot_cutaways(models, figs / "cutaways.png")
    ctx.figures["turntable"] = write_turntable(models, figs / "turntable.gif")[0]


STAGES: dict[str, Callable[[RunContext], None]] = {
    "data": stage_data, "sfm": stage_sfm, "rgb": stage_rgb, "xray": stage_xray, "fitting": stage_fitting,
    "internal": stage_internal, "visual": stage_visual, "evaluation": stage_evaluation}


# What each stage reads from the object folder, and which stages' results it uses: a stage's
# fingerprint covers the config, those files (path, size, modification time) and its upstream
# stages' fingerprints, so a change anywhere re-runs exactly the stages it reaches.
STAGE_INPUTS = {"data": (), "sfm": ("rgb/images",), "rgb": ("rgb/images", "rgb/sparse"),
                "xray": ("xray",), "fitting": (), "internal": ("ct", "xray"), "visual": ("ct",),
                "evaluation": ("ct", "xray", "truth")}
STAGE_UPSTREAM = {"data": (), "sfm": ("data",), "rgb": ("sfm",), "xray": ("data",),
                  "fitting": ("rgb", "xray"), "internal": ("fitting", "xray"),
                  "visual": ("internal", "rgb"), "evaluation": ("visual", "fitting", "xray", "rgb")}


def _missing_object(ctx: RunContext) -> StageError:
    return StageError(f"object folder {ctx.object_dir} does not exist. Give a path to an object"
                      " folder, or make one with `python -m insideout_jax.data from-ct VOLUME"
                      " --spacing DZ DY DX --out DIR`" + (f" (or run stage 'data' to make the {ctx.object_name})."
                                                          if ctx.object_name in BUILTIN_OBJECTS else "."))


def preflight(ctx: RunContext, wanted: list) -> None:
    """Check, before any work and before anything is written, the object folder
    (:func:`insideout_jax.pipeline.preflight.check_object`) and that every stage the wanted ones
    use runs now or finished before in this output folder. Raises StageError saying what to do."""
    from insideout_jax.pipeline.preflight import check_object

    d, colmap = ctx.object_dir, None
    if not d.exists() and not (ctx.object_name in BUILTIN_OBJECTS and "data" in wanted):
        raise _missing_object(ctx)  # (the data stage makes the built-in objects)
    if d.exists() and not d.is_dir():
        raise StageError(f"{d} is a file; --object takes an object folder (rgb/, xray/, ct/)")
    try:
        colmap = check_object(d, ctx.cfg, wanted).colmap if d.exists() else None
    except ValueError as e:  # ObjectFolderError, PipelineInputError
        raise StageError(str(e)) from e
    for stage in wanted:
        for up in STAGE_UPSTREAM[stage]:
            if up == "data" or up in wanted or (up == "sfm" and colmap is not None):
                continue  # data: checked here; sfm: the object's own COLMAP model
            if not (ctx.resume and (ctx.out_dir / "stages" / f"{up}.done.json").is_file()):
                raise StageError(
                    f"stage '{stage}' uses the results of stage '{up}', which does not run now and"
                    f" has not finished in {ctx.out_dir}: add it (--stages {up} {stage} …), or"
                    " --resume an output folder where it finished")


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# The config sections each stage reads (ctx.obj: skull; ctx.ct, training views: xray; photos: rgb;
# the evaluation: all), with the preset's name; fields that change the speed only are in none.
STAGE_CONFIG = {"data": ("skull",), "sfm": ("sfm",), "rgb": ("rgb",), "xray": ("skull", "xray"),
                "fitting": ("fitting",), "internal": ("skull", "xray", "rgb", "internal"),
                "visual": ("skull", "xray", "rgb", "visual"), "evaluation": None}
SPEED_ONLY = frozenset({"compact"})  # DensifyConfig.compact: the same splats in smaller buffers


def _config_digest(cfg: PipelineConfig, name: str) -> str:
    strip = lambda d: {k: strip(v) for k, v in d.items() if k not in SPEED_ONLY} if isinstance(d, dict) else d  # noqa: E731
    secs = STAGE_CONFIG[name]
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if secs is None or k in ("name", *secs)}
    return _digest(json.dumps(strip(d), sort_keys=True))


def fingerprint(ctx: RunContext, name: str) -> dict:
    """{"config", "inputs", "upstream"} digests of a stage (files are listed, never opened)."""
    rows = []
    for rel in STAGE_INPUTS[name]:
        p = ctx.object_dir / rel
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] * p.is_file()
        for f in files:
            st = f.stat()
            rows.append(f"{f.relative_to(ctx.object_dir)}|{st.st_size}|{st.st_mtime_ns}")
    ups = []
    for up in STAGE_UPSTREAM[name]:
        m = ctx.done_marker(up)
        done = run_json(m) if m.is_file() else {}  # its run's id: a re-run upstream reaches here
        ups.append(f"{done.get('fingerprint', {}).get('all', '')}|{done.get('run', '')}")
    fp = {"config": _config_digest(ctx.cfg, name), "inputs": _digest(*rows), "upstream": _digest(*ups)}
    return dict(fp, all=_digest(*fp.values()))


CHECKPOINTS = {"rgb": ("rgb_train.npz",), "xray": ("xray_train.npz", "xgaussian_train.npz"),
               "internal": ("internal_rad.npz", "internal_rgb.npz")}
_WHY = {"config": "the config changed", "inputs": "its input files changed",
        "upstream": "a stage it uses was re-run"}


def run_stage(name: str, ctx: RunContext) -> bool:
    """Run one stage, or under --resume skip it when it finished before with the same
    fingerprint (config, input files, upstream stages); otherwise say why it runs again. Returns
    True if run.

    Training checkpoints (:data:`CHECKPOINTS`) are continued only under --resume and only when they
    were started with the same fingerprint; otherwise they are removed first, or a finished
    checkpoint of an earlier run would be returned as is. The notes the stage wrote last time
    (kept in its done marker) are replaced by this run's.
    """
    marker, started = ctx.done_marker(name), ctx.stage_dir / f"{name}.started.json"
    fp = fingerprint(ctx, name)
    old = run_json(marker) if marker.is_file() else {}
    if ctx.resume and old.get("fingerprint", {}).get("all") == fp["all"]:
        print(f"[{name}] already done (resume)")
        return False
    if ctx.resume and old:
        why = [_WHY[k] for k in _WHY if old.get("fingerprint", {}).get(k) != fp[k]]
        print(f"[{name}] runs again: {', '.join(why) or 'the earlier run has no fingerprint'}")
    same_start = started.is_file() and run_json(started).get("all") == fp["all"]
    if not (ctx.resume and same_start):
        for f in CHECKPOINTS.get(name, ()):
            (ctx.stage_dir / f).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    atomic_write_bytes(started, json.dumps(fp).encode())
    stale = set(old.get("notes", []))
    ctx.metrics["notes"] = [n for n in ctx.metrics["notes"] if n not in stale]
    before = list(ctx.metrics["notes"])
    t0 = time.perf_counter()
    try:
        STAGES[name](ctx)
    except _user_errors() as e:
        raise StageError(f"stage '{name}': {e}") from e
    seconds = time.perf_counter() - t0
    ctx.metrics["stage_seconds"][name] = seconds
    added = [n for n in ctx.metrics["notes"] if n not in before]
    atomic_write_bytes(marker, json.dumps({"seconds": seconds, "notes": added, "fingerprint": fp,
                                           "run": time.time_ns()}).encode())
    ctx.write_metrics()
    return True
