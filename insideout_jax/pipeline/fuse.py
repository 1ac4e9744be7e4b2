"""``fuse``: photos + projections → the unified InsideOut model, every stage in memory."""

from __future__ import annotations

import dataclasses

import numpy as np

from insideout_jax.config import PipelineConfig
from insideout_jax.pipeline import geometry as pg
from insideout_jax.pipeline.evaluate import evaluate
from insideout_jax.pipeline.results import (
    FusedResult,
    Truth,
    empty_metrics,
    finite_metrics,
    merge_metrics,
    non_finite_note,
)
from insideout_jax.pipeline.selection import matte_photos
from insideout_jax.pipeline.stages import (
    Progress,
    ct_for_training,
    fit_stage,
    internal_stage,
    train_rgb_stage,
    train_xray_stage,
    visual_stage,
)
from insideout_jax.train.rgb import holdout_split

__all__ = ["fuse", "seeded_config"]


def seeded_config(cfg: PipelineConfig, key) -> PipelineConfig:
    """``cfg`` with every trained stage's seed drawn from the JAX PRNG ``key``."""
    import jax

    seeds = [int(s) for s in np.asarray(jax.random.randint(key, (5,), 0, 2**31 - 1))]
    r = dataclasses.replace
    xg = cfg.xray.xgaussian  # the radiative model's seed (same ACUI draw when both start from ACUI)
    xg = xg if xg is None else r(xg, train=r(xg.train, seed=seeds[1]))
    return r(cfg,
             rgb=r(cfg.rgb, train=r(cfg.rgb.train, seed=seeds[0])),
             xray=r(cfg.xray, train=r(cfg.xray.train, seed=seeds[1]), xgaussian=xg),
             fitting=r(cfg.fitting, seed=seeds[2]),
             internal=r(cfg.internal, rad=r(cfg.internal.rad, seed=seeds[3]),
                        rgb=r(cfg.internal.rgb, seed=seeds[4])))


def fuse(photos: np.ndarray, cameras, projections: np.ndarray, geometry, *, points,
         point_colors=None, ct_volume=None, masks=None, distortion=None,
         cfg: PipelineConfig = PipelineConfig(), key=None,
         truth: Truth | None = None, object_name: str = "object",
         progress: Progress = None) -> FusedResult:
    """Run the InsideOut pipeline on arrays: RGB 3DGS, X-Gaussian, hierarchical fitting,
    internal rendering, visual unification, evaluation.

    Args:
      photos: [V, H, W, 3] float32 photos in [0, 1] at full size (``cfg.rgb.downscale`` applies),
        free of lens distortion (a distorted COLMAP model's photos: read them with
        :func:`insideout_jax.io.validate.read_registered_photos`).
      cameras: V :class:`~insideout_jax.cameras.PinholeCamera` (the SfM frame).
      projections: [P, nv, nu] line integrals; geometry: their :class:`XrayGeometry`.
      points, point_colors: [N, 3] SfM points (initial RGB centres) and colours in [0, 255].
      ct_volume: the CT the internal stage learns from (:class:`~insideout_jax.io.CTVolume`), in
        attenuation per mm or calibrated to it against the projections; default: FDK of the
        training projections (:func:`.stages.ct_for_training`).
      masks: [V, H, W] bool object silhouettes in the photos (optional): they select the RGB
        splats that are the object; without them the scene's geometry does (:mod:`.selection`).
      distortion: per photo None or (k1, k2, p1, p2): the lens the masks were taken through.
      cfg: the preset (:func:`insideout_jax.config.preset`).
      key: a JAX PRNG key; when given it draws every stage's seed, else the configs' seeds.
      truth: the object's truth, for the evaluation only.
      progress: ``progress(desc, step, total, loss)`` after every training block, or True for
        progress bars.

    Returns:
      :class:`FusedResult` with every stage's result and the merged ``metrics`` (the same
      fields and values as the runner's ``metrics.json``, without ``stage_seconds``).
    """
    if key is not None:
        cfg = seeded_config(cfg, key)
    truth = truth or Truth()
    if point_colors is None:
        point_colors = np.full(np.shape(points), 128.0, np.float32)
    full_cameras = list(cameras)  # the masks' size
    photos, cameras = pg.downscale_photos(photos, cameras, cfg.rgb.downscale)
    metrics = empty_metrics(object_name, cfg.name)
    rgb = train_rgb_stage(photos, cameras, points, point_colors, cfg.rgb, progress=progress)
    xray = train_xray_stage(projections, geometry, cfg.xray, progress=progress)
    fit = fit_stage(rgb.splats, xray.splats, cfg.fitting, cameras=full_cameras, masks=masks,
                    distortion=distortion)
    ct_volume, notes = ct_for_training(ct_volume, projections, geometry, cfg.xray)
    metrics["notes"].extend(notes)
    p_tr, g_tr = pg.split_views(projections, geometry, cfg.xray.train.holdout_every)[0]
    tr, ho = holdout_split(len(photos), cfg.rgb.train.holdout_every)
    photos = matte_photos(photos, cameras, rgb.splats, fit.splats.active, cfg.rgb.train.background)
    cams_ct = pg.cameras_in_ct_frame(cameras, fit.transform)
    bg = cfg.rgb.train.background
    internal = internal_stage(xray.splats, fit.splats, ct_volume, cfg.internal,
                              projections=p_tr, geometry=g_tr,
                              photos=photos[tr], cameras=[cams_ct[i] for i in tr],
                              background=bg, progress=progress)
    visual = visual_stage(internal.rad, internal.rgb, ct_volume, cfg.visual, photos=photos[tr],
                          cameras=[cams_ct[i] for i in tr], heldout_photos=photos[ho],
                          heldout_cameras=[cams_ct[i] for i in ho], background=bg,
                          rgb_only=fit.splats, progress=progress)
    evaluation = evaluate(rgb0=rgb.splats, rgb_aligned=fit.splats, rgb_internal=internal.rgb,
                          rad0=xray.splats, rad_internal=internal.rad, xgaussian=xray.xgaussian,
                          unified_density=visual.density, grid=visual.grid, ct_volume=ct_volume,
                          cfg=cfg, truth=truth, fit_levels=[(st.name, st.transform) for st in fit.stages],
                          projections=p_tr, geometry=g_tr)
    for result in (rgb, xray, fit, internal, visual, evaluation):  # the runner's order
        merge_metrics(metrics, result.metrics)
        metrics["notes"].extend(n for n in getattr(result, "notes", ()) if n not in metrics["notes"])
    metrics, replaced = finite_metrics(metrics)
    if replaced:
        metrics["notes"].append(non_finite_note(replaced))
    return FusedResult(rgb, xray, fit, internal, visual, evaluation, metrics)
