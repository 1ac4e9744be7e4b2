"""The InsideOut stages (paper Fig. 2) as functions of arrays and frozen configs.

No file I/O and no printing: each stage returns a typed result (:mod:`.results`); training
progress goes to the optional ``progress`` callable (``progress(desc, step, total, loss)``, or True
for a progress bar); ``checkpoint_path`` (optional) makes a long training resumable. The runner
(``experiments/run.py``) reads the object folder, calls these and writes what they return.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from insideout_jax.config import (
    FittingStageConfig,
    InternalStageConfig,
    RGBStageConfig,
    VisualStageConfig,
    XrayStageConfig,
)
from insideout_jax.pipeline import geometry as pg
from insideout_jax.pipeline.results import (
    FitResult,
    InternalResult,
    RGBResult,
    VisualResult,
    XGaussianModel,
    XrayResult,
)
from insideout_jax.train.rgb import holdout_split

__all__ = ["ct_for_training", "object_inputs", "fit_stage", "internal_stage", "reconstruct_ct",
           "sparse_view_comparison", "train_rgb_stage", "train_xray_stage", "visual_stage", "volume_scores"]

Progress = Callable | bool | None


def _skipped(histories: dict) -> dict:
    """The metrics fragment of densification candidates left out at the capacity cap."""
    return {"densify_skipped": {k: int(h.get("densify_skipped", 0)) for k, h in histories.items()}}


def _bar(progress: Progress):
    """The training loop's ``progress`` argument: a callable as is, else a bar or none."""
    return progress if callable(progress) else bool(progress)


def train_rgb_stage(images: np.ndarray, cameras, points_xyz: np.ndarray, points_rgb: np.ndarray,
                    cfg: RGBStageConfig, *, checkpoint_path=None,
                    progress: Progress = None) -> RGBResult:
    """Stage 1a: 3DGS from the SfM points on the training photos; held-out photo PSNR / SSIM.

    Args:
      images: [V, H, W, 3] float32 photos in [0, 1], all of them (every ``holdout_every``-th is
        held out here), already at the stage's resolution (:func:`.geometry.downscale_photos`).
      cameras: V cameras of the photos (SfM frame).
      points_xyz, points_rgb: [N, 3] SfM points and their colours in [0, 255].
    """
    from insideout_jax.train.rgb import evaluate_rgb, train_rgb

    tcfg = cfg.train
    tr, ho = holdout_split(len(images), tcfg.holdout_every)
    splats, hist = train_rgb(images[tr], [cameras[i] for i in tr], points_xyz,
                             np.asarray(points_rgb, np.float32) / 255.0, tcfg,
                             checkpoint_path=checkpoint_path, progress=_bar(progress))
    ev = evaluate_rgb(splats, images[ho], [cameras[i] for i in ho], background=tcfg.background)
    return RGBResult(splats, hist, {"heldout_views": {"rgb": {"psnr": ev["psnr"], "ssim": ev["ssim"]}},
                                    **_skipped({"rgb": hist})})


def train_xray_stage(projections: np.ndarray, geometry, cfg: XrayStageConfig, *,
                     checkpoint_path=None, xgaussian_checkpoint_path=None,
                     progress: Progress = None) -> XrayResult:
    """Stage 1b: radiative splats on the training projections (every ``holdout_every``-th is held
    out) and their held-out projection scores; then, when ``cfg.xgaussian`` is set and the beam is
    a cone, the X-Gaussian baseline on the same views. (The volumes are scored by the evaluation.)"""
    from insideout_jax.render.xray import xray_tile_stats
    from insideout_jax.train.xray import evaluate_xray, train_xray

    tcfg = cfg.train
    (p_tr, g_tr), (p_ho, g_ho) = pg.split_views(projections, geometry, tcfg.holdout_every)
    splats, hist = train_xray(p_tr, g_tr, tcfg, checkpoint_path=checkpoint_path, progress=_bar(progress))
    ev = evaluate_xray(splats, p_ho, g_ho, backend=tcfg.backend)
    culled = xray_tile_stats(splats, g_tr)["n_culled_at_source"]
    notes = [f"{culled} radiative splats reach the X-ray source plane in some training view; the"
             " cone-beam renderer leaves them out of those views"] if culled else []
    metrics = {"heldout_views": {"xray": {"psnr": ev["psnr"], "ssim": ev["ssim"]}},
               **_skipped({"xray": hist}), "coarsened": {"xray_culled_at_source": culled}}
    xg = None
    if cfg.xgaussian is not None and geometry.mode == "cone":
        from insideout_jax.train.xgaussian import evaluate_xgaussian, train_xgaussian

        xs, xhist, scale = train_xgaussian(p_tr, g_tr, cfg.xgaussian,
                                           checkpoint_path=xgaussian_checkpoint_path,
                                           progress=_bar(progress))
        xg = XGaussianModel(xs, scale, xhist)
        xev = evaluate_xgaussian(xs, scale, p_ho, g_ho)
        metrics["heldout_views"]["xgaussian"] = {"psnr": xev["psnr"], "ssim": xev["ssim"]}
        metrics["densify_skipped"].update(_skipped({"xgaussian": xhist})["densify_skipped"])
    elif cfg.xgaussian is not None:
        notes.append("X-Gaussian renders cone-beam views as pinhole cameras; this scan is a parallel"
                     " beam, so the X-Gaussian baseline is not trained (no row in the tables)")
    return XrayResult(splats, hist, metrics, tuple(notes), xg)


def volume_scores(projections, geometry, splats, reference_volume, n: int, *, ct_volume=None):
    """FDK of ``projections`` and the cell means of ``splats`` on the comparison grid (the reference's
    extent at n³), each scored against the reference resampled there: 3D PSNR over the
    reference's maximum and 3D SSIM; with ``ct_volume``, also against the CT sampled on the same
    grid (``vs_ct``, over the CT's maximum). Returns ({"fdk", "radiative"}: volumes, their scores)."""
    from insideout_jax.evaluation import volume_metrics
    from insideout_jax.fdk import fdk
    from insideout_jax.render.slices import make_voxel_grid

    sp, org = pg.comparison_grid(reference_volume, n)
    grid = make_voxel_grid((n, n, n), sp, org)
    volumes = {"fdk": np.asarray(fdk(projections, geometry, (n, n, n), sp, org)),
               "radiative": pg.cell_volume(splats, grid)}
    def score(v, ref):
        return {k: float(x) for k, x in volume_metrics(v, ref).items()}

    ref = pg.resample_block(np.asarray(reference_volume.data), n)
    scores = {name: score(v, ref) for name, v in volumes.items()}
    if ct_volume is not None:
        ct = pg.resample_to(ct_volume.data, ct_volume, grid)
        for name, v in volumes.items():
            scores[name]["vs_ct"] = score(v, ct)
    return volumes, scores


def sparse_view_comparison(projections, geometry, n_views: int, cfg: XrayStageConfig,
                           reference_volume, *, progress: Progress = None) -> dict:
    """Radiative splats against FDK from ``n_views`` projections equally spaced over the scan:
    both from the same projections, both scored by :func:`volume_scores` (EVALUATION.md §7).

    Raises:
      PipelineInputError: ``n_views`` outside [2, the scan's views].
    """
    import time

    from insideout_jax.train.xray import train_xray

    if not 2 <= n_views <= geometry.n_views:
        raise pg.PipelineInputError(f"--views must be in [2, {geometry.n_views}], got {n_views}")
    idx = np.unique(np.round(np.linspace(0, geometry.n_views, n_views, endpoint=False)).astype(int))
    g, p = geometry.select(idx), projections[idx]
    t0 = time.perf_counter()
    splats, _ = train_xray(p, g, cfg.train, progress=_bar(progress))
    t_train = time.perf_counter() - t0
    _, scores = volume_scores(p, g, splats, reference_volume, cfg.fdk_size)
    scores["radiative"].update(seconds=t_train, n_splats=int(np.asarray(splats.active).sum()))
    return {"n_views": int(len(idx)), "n_views_full": int(geometry.n_views), "grid": cfg.fdk_size,
            **scores, "radiative_minus_fdk_db": scores["radiative"]["psnr3d"] - scores["fdk"]["psnr3d"]}


def reconstruct_ct(projections: np.ndarray, geometry, cfg: XrayStageConfig):
    """The CT volume of an object that has none: FDK of the training projections (the held-out
    ones stay held out) on the field-of-view grid at ``cfg.fdk_size``³, negatives clipped."""
    from insideout_jax.fdk import fdk
    from insideout_jax.io import make_volume

    p_tr, g_tr = pg.split_views(projections, geometry, cfg.train.holdout_every)[0]
    grid = pg.fov_grid(geometry, cfg.fdk_size)
    vol = np.asarray(fdk(p_tr, g_tr, grid.shape_zyx, np.asarray(grid.spacing_zyx), np.asarray(grid.origin_xyz)))
    return make_volume(np.maximum(vol, 0.0), np.asarray(grid.spacing_zyx),
                       np.asarray(grid.origin_xyz), quantity="attenuation")


def object_inputs(obj, n_views: int, n_detector: int):
    """(the object folder as the stages use it, notes on what was done to it).

    Raw detector counts were converted on reading (said). A folder with a CT volume and no
    projections ("volume + photos") gets projections synthesized from the volume by the project's
    own projector (:func:`insideout_jax.data.ctobject.ct_volume_projections`, noise-free, cone
    beam over 360° at ``n_views`` × ``n_detector``²), and the radiative stage trains on them; a
    volume in HU is first converted to attenuation (μ = 0.02/mm · (1 + HU/1000), padding to air).

    Raises:
      ValueError: a volume in units other than attenuation or HU without projections (nothing
        to calibrate it against).
    """
    import dataclasses

    from insideout_jax.data import ctobject
    from insideout_jax.io import make_volume

    notes = [obj.xray_conversion.describe()] if obj.xray_conversion is not None else []
    vol = obj.volume
    if obj.geometry is not None or vol is None:
        return obj, notes
    if vol.quantity not in ("attenuation", "HU"):
        raise ValueError(f"the CT volume is in {vol.quantity} and there are no X-ray projections to"
                         " calibrate it against: give it in HU or attenuation per mm")
    data = np.asarray(vol.data, np.float32)
    if vol.quantity == "HU":
        data = ctobject.hu_to_attenuation(data)  # air and padding (≤ −1000 HU) → 0
        vol = make_volume(data, vol.spacing_zyx, vol.origin_xyz, quantity="attenuation")
    geom = ctobject.default_ct_geometry(data.shape, vol.spacing_zyx, vol.origin_xyz,
                                        n_views=n_views, n_det=n_detector)
    proj = ctobject.ct_volume_projections(data, vol.spacing_zyx, vol.origin_xyz, geom)
    notes.append(f"no X-ray projections: the radiative stage trains on {n_views} projections"
                 f" ({n_detector}² px, cone beam, noise-free) synthesized from the CT volume by the"
                 " project's ray-marching projector" + (
                     "; the volume's HU were converted with μ = 0.02/mm · (1 + HU/1000)"
                     if obj.volume.quantity == "HU" else ""))
    return dataclasses.replace(obj, geometry=geom, projections=proj, volume=vol), notes


def ct_for_training(ct_volume, projections, geometry, cfg: XrayStageConfig):
    """(the CT the internal stage learns from, notes): ``ct_volume`` when it is attenuation per mm;
    a volume in other units (HU, vendor units) calibrated to the training projections
    (:func:`insideout_jax.data.calibration.calibrate_volume`: padding to air, scale and offset by
    least squares, registration checked by the residual); without a volume, the FDK of the training
    projections (:func:`reconstruct_ct`).

    Raises:
      ValueError: a volume in other units without projections to calibrate it against, or one
        that does not match the projections.
    """
    if ct_volume is None:
        return reconstruct_ct(projections, geometry, cfg), [
            "no CT volume given: the internal stage learns from the FDK reconstruction of the"
            " training projections"]
    if ct_volume.quantity == "attenuation":
        return ct_volume, []
    if projections is None:
        raise ValueError(f"the CT volume is in {ct_volume.quantity}, and without X-ray projections"
                         " there is nothing to calibrate it to attenuation per mm against: convert"
                         " it (python -m insideout_jax.data from-ct … --quantity HU) or add xray/")
    from insideout_jax.data.calibration import calibrate_volume

    p_tr, g_tr = pg.split_views(projections, geometry, cfg.train.holdout_every)[0]
    vol, cal = calibrate_volume(ct_volume, p_tr, g_tr)
    return vol, [cal.describe()]


def fit_stage(rgb, rad, cfg: FittingStageConfig, *, cameras=None, masks=None,
              distortion=None) -> FitResult:
    """Stage 2: hierarchical fitting of the RGB splats onto the radiative solid (CT frame).

    With the photos' ``cameras`` (SfM frame, full size), the splats that are not the object (table,
    backdrop: :mod:`.selection`, by the user's ``masks`` [V, H, W] when given, else by the scene's
    geometry) are dropped from the model first. Only RGB splats of opacity ≥ ``cfg.min_opacity``
    are fitted; the others move with the global similarity. (The levels are scored against a true
    transform by the evaluation.)
    """
    from insideout_jax.fitting.hierarchical import hierarchical_fit
    from insideout_jax.pipeline import selection

    sel_notes, sel_metrics = (), {}
    if cameras is not None:
        means = np.asarray(rgb.means)
        sel = (selection.select_by_masks(means, cameras, masks, distortion=distortion)
               if masks is not None else selection.select_by_geometry(means, cameras))
        act = np.asarray(rgb.active)
        kept = act & sel.keep
        rgb = rgb.replace(active=kept)
        sel_notes = (sel.describe(act),)
        sel_metrics = {"object_selection": {"method": sel.method, "kept": int(kept.sum()),
                                            "total": int(act.sum())}}
    solid = pg.radiative_solid_points(rad, cfg.grid_size)
    fit_rgb = rgb.replace(active=rgb.active & (rgb.opacities >= cfg.min_opacity))
    depth = 0.0
    if cameras is not None and cfg.visible_depth:
        from insideout_jax.fitting.visible import visible_depth

        depth = visible_depth(rgb, cameras, min_opacity=cfg.min_opacity)
    res = pg.apply_to_all(hierarchical_fit(fit_rgb, solid, schedule=cfg.schedule, seed=cfg.seed,
                                            surface_kw=dict(fine=cfg.surface_fine),
                                            rgb_depth=depth), rgb)
    dropped = {st.name: st.targets_dropped for st in res.stages if st.clusters}
    coarse = {st.name: round(st.grid_coarsening, 3) for st in res.stages if st.name != "global"}
    notes = tuple(f"fitting level {k}: {v} surface targets beyond the per-cluster cap were left out"
                  " of its ICP" for k, v in dropped.items() if v)
    notes += tuple(f"fitting level {k}: the displacement field's grid was {v:.2f}× coarser than σ/2"
                   " (cell cap per axis)" for k, v in coarse.items() if v > 1.0)
    glob = res.global_result
    rival = glob.rival() if glob is not None else None
    metrics = {"coarsened": {"fitting_targets_dropped": dropped, "fitting_grid_coarsening": coarse},
               "fitting_global": {"candidates": None if glob is None else len(glob.candidate_residuals),
                                  "rival_residual_ratio": None if rival is None else rival[0],
                                  "rival_angle_deg": None if rival is None else rival[1],
                                  "ambiguous": None if glob is None else bool(glob.ambiguous),
                                  "rgb_visible_depth_mm": depth * float(res.transform.scale)},
               **sel_metrics}
    if glob is not None and glob.ambiguous:
        notes += (f"the global fit was close: a pose {rival[1]:.0f}° from the chosen one fits the"
                  f" radiative surface within {100 * (rival[0] - 1):.1f}% of its residual (a"
                  " near-symmetric object); the better one was kept — check figures/alignment.png",)
    return FitResult(res.splats, res.transform, tuple(res.stages), metrics, sel_notes + notes)


def internal_stage(rad, rgb, ct_volume, cfg: InternalStageConfig, *, projections=None,
                   geometry=None, photos=None, cameras=None, background=(0.0, 0.0, 0.0),
                   checkpoint_paths=(None, None), progress: Progress = None) -> InternalResult:
    """Stage 3: the radiative set trained on the CT cross-sections (``cfg.slice_spacing`` apart),
    the RGB set on their outer contours.

    Args:
      rad, rgb: radiative splats and RGB splats in the CT frame (after fitting).
      ct_volume: the CT (:class:`insideout_jax.io.CTVolume`) the slices are cut from.
      projections, geometry: the *training* projections, for the kept projection loss.
      photos, cameras: the *training* photos and their cameras in the CT frame (used when
        ``cfg.rgb.photo_weight > 0``).
      checkpoint_paths: (radiative, RGB) resumable checkpoints.
    """
    from insideout_jax.internal.pseudo_gt import outer_contour_target
    from insideout_jax.internal.train import train_internal

    slices, planes, refs = pg.slice_set(ct_volume, cfg, heldout=False)
    prog = _bar(progress)
    rad2, h_rad = train_internal(rad, planes, refs, cfg.rad, projections=projections,
                                 geometry=geometry, checkpoint_path=checkpoint_paths[0],
                                 progress=prog)
    contours = np.stack([outer_contour_target(r) for r in refs])
    use_photos = cfg.rgb.photo_weight > 0
    rgb2, h_rgb = train_internal(rgb, planes, contours, cfg.rgb,
                                 photos=photos if use_photos else None,
                                 cameras=cameras if use_photos else None, background=background,
                                 checkpoint_path=checkpoint_paths[1], progress=prog)
    hists = {"internal_rad": h_rad, "internal_rgb": h_rgb}
    return InternalResult(rad2, rgb2, hists, len(slices), _skipped(hists))


def visual_stage(rad, rgb, ct_volume, cfg: VisualStageConfig, *, photos, cameras,
                 heldout_photos, heldout_cameras, background=(0.0, 0.0, 0.0), rgb_only=None,
                 progress: Progress = None) -> VisualResult:
    """Stage 4: colour transfer + detail cloning → the unified model; its colours fitted to the
    training photos (``cfg.colour_iterations``); its density as cell means on the object grid; its
    held-out photo scores (cameras in the CT frame).

    ``rgb_only``: the RGB-only splats in the CT frame (after fitting; the object's only). When
    given, they are scored on the same held-out photos (``heldout_views.rgb_object``), the like-for-
    like reference of the unified model where the photos were matted to the object."""
    from insideout_jax.train.rgb import evaluate_rgb
    from insideout_jax.visual import as_radiative, refine_colours, unify

    model = unify(rad, rgb, percentile=cfg.clone_percentile)
    hist = None
    if cfg.colour_iterations > 0:
        model, hist = refine_colours(model, photos, cameras, iterations=cfg.colour_iterations,
                                     lr=cfg.colour_lr, background=background,
                                     progress=_bar(progress))
    grid = pg.object_grid(ct_volume, cfg.volume_size)
    dens = pg.cell_volume(as_radiative(model), grid)
    scored = {"unified_rgb": model.splats, **({"rgb_object": rgb_only} if rgb_only is not None else {})}
    views = {}
    for key, sp in scored.items():
        ev = evaluate_rgb(sp, heldout_photos, heldout_cameras, background=background)
        views[key] = {"psnr": ev["psnr"], "ssim": ev["ssim"]}
    return VisualResult(model, grid, dens, hist, {"heldout_views": views})
