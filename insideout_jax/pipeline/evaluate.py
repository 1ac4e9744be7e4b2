"""The evaluation stage: Table 2 (cross-sections), Table 3 (Chamfer), occupancy (Fig. 6), internal
noise, the unified volume against the truth, and the notes that tell how to read them.

References (EVALUATION.md): cross-sections are scored against the CT the method was trained
on (its training and held-out positions; ``vs_ct``, also the top-level fields, as in the paper) and, for
generated objects, against the exact volume at the same positions (``vs_truth``); the volumes,
the alignment and the internal noise against the object's ``truth/`` (absent for real data:
those fields stay null and a note says so).
"""

from __future__ import annotations

import numpy as np

from insideout_jax import evaluation as ev
from insideout_jax.pipeline import geometry as pg
from insideout_jax.pipeline.results import EvaluationResult, Truth, XGaussianModel

__all__ = ["CHAMFER_NOTE", "PIQE_NOTE", "alignment_scores", "evaluate", "read_truth"]

CHAMFER_NOTE = "Chamfer rises with internal rendering"
PIQE_NOTE = "PIQE of the CT reference slices themselves"


def _spacing(points) -> float:
    """Median distance from each point to its nearest neighbour (mm)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    if len(pts) < 2:
        return float("nan")
    return float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))


def _chamfer_rise_note(ch: dict, rgb_al, rgb_in, rad0, rad_in) -> str | None:
    """When internal rendering raises the Chamfer distance, which splat set moved it (the two
    mixed rows: only the RGB set, or only the radiative set, after internal rendering) and whether
    the directed distances after it exceed twice the spacing of the radiative centres (the
    resolution of the radiative surface): every clause is computed from the numbers it cites."""
    hier, inner = (float(ch["chamfer_mm"][k]) for k in ("hierarchical", "internal"))
    if not inner > hier:
        return None
    mixed = ev.chamfer_block({"rgb_only": rgb_in, "rad_only": rgb_al},
                             {"rgb_only": rad0, "rad_only": rad_in}, protocol_points=rad0)
    rgb_only, rad_only = (float(mixed["chamfer_mm"][k]) for k in ("rgb_only", "rad_only"))
    d = ch["details"]
    after = (float(d["internal"]["a_to_b"]), float(d["internal"]["b_to_a"]))
    spacing = _spacing(rad0)
    by = ("mostly the RGB set" if rgb_only - hier > rad_only - hier else "mostly the radiative set")
    if rgb_only > hier and rad_only > hier and min(rgb_only, rad_only) - hier > 0.5 * (inner - hier):
        by = "both sets"
    if max(after) <= 2.0 * spacing:
        reading = (f"both directed distances after it are within twice the median spacing of the "
                   f"radiative centres ({spacing:.2f} mm), so the rise is at the resolution of the "
                   "radiative surface, not a misalignment")
    else:
        reading = (f"a directed distance after it exceeds twice the median spacing of the radiative "
                   f"centres ({spacing:.2f} mm): the visible surfaces moved apart by more than the "
                   "radiative surface's resolution")
    return (
        f"{CHAMFER_NOTE} ({hier:.2f} → {inner:.2f} mm), moved by {by}: with only the RGB splats "
        f"after internal rendering it is {rgb_only:.2f} mm, with only the radiative ones "
        f"{rad_only:.2f} mm. Directed distances (RGB → radiative, radiative → RGB):"
        f" {float(d['hierarchical']['a_to_b']):.2f} / {float(d['hierarchical']['b_to_a']):.2f} mm"
        f" before, {after[0]:.2f} / {after[1]:.2f} mm after, between"
        f" {int(d['internal']['n_surface_a'])} RGB and {int(d['internal']['n_surface_b'])} radiative"
        f" visible centres; {reading}.")


def _reference_piqe_note(refs, cross: dict) -> str | None:
    """PIQE of the CT reference slices themselves, and what it implies for reading the methods'
    PIQE (lower is better, but PIQE rewards texture and noise), decided from the scores."""
    from insideout_jax.metrics.image import piqe_slice

    scores = [piqe_slice(r) for r in refs if float(np.ptp(r)) > 0]
    if not scores:
        return None
    ref = float(np.mean(scores))
    rad, io = (float(cross[m]["heldout"]["piqe"]) for m in ("radiative", "insideout"))
    if ref >= max(rad, io):
        reading = ("the reference scores worse than both renderings, so here a lower PIQE does not "
                   "mean closer to the CT: read PSNR and SSIM")
    elif ref <= min(rad, io):
        reading = "the reference scores better than both renderings, as a textured CT should"
    else:
        reading = "the reference scores between the two renderings"
    return (f"{PIQE_NOTE} (held-out positions): {ref:.1f}, against {rad:.1f} for the radiative"
            f" stage-1 model and {io:.1f} for InsideOut; {reading}.")


def alignment_scores(levels, truth_transform, centre) -> dict:
    """Errors of the fitted levels against the true RGB → CT similarity: the global level, the
    last local level and the fine level (rotation in degrees, relative scale, translation in mm
    of the point ``centre`` of the RGB frame)."""
    t = truth_transform
    picked = {"global": levels[0][1]}
    for kind in ("local", "fine"):
        match = [tr for name, tr in levels if name.startswith(kind)]
        if match:
            picked[kind] = match[-1]
    return {kind: ev.alignment_errors(tr, t, center=centre) for kind, tr in picked.items()}


def read_truth(object_dir, say=print) -> Truth:
    """An object folder's ``truth/`` (the evaluation's alone): the true SfM → CT transform (from
    the true cameras and the COLMAP model, else ``truth/transform.json``), the true volume, outer
    surface and silhouettes; each None where the folder does not hold it (real data)."""
    import pathlib

    from insideout_jax import io as iio
    from insideout_jax.data.objects import (
        CAMERAS_FILE,
        SURFACE_FILE,
        read_true_silhouettes,
        read_true_surface,
        true_sfm_transform,
    )

    d = pathlib.Path(object_dir)
    transform = None
    if (d / CAMERAS_FILE).is_file() and (d / iio.COLMAP_DIR).exists():
        transform, fit = true_sfm_transform(d)
        say(f"[evaluation] true transform from the true cameras: {fit}")
    elif (d / iio.TRANSFORM_FILE).is_file():
        transform = iio.read_transform(d / iio.TRANSFORM_FILE)
    surface = read_true_surface(d) if (d / SURFACE_FILE).is_file() else None
    vol = iio.read_volume(d / iio.TRUTH_VOLUME_FILE) if (d / iio.TRUTH_VOLUME_FILE).is_file() else None
    obj_tr = None
    if transform is not None and surface is not None and (d / iio.COLMAP_DIR).exists():
        obj_tr = object_reference(iio.read_colmap(d / iio.COLMAP_DIR).points_xyz, surface, transform)
        say(f"[evaluation] {reference_summary(transform, obj_tr)}" if obj_tr is not None else
            "[evaluation] the reference is not checked against the object: fewer than 10 SfM"
            " points lie near the true surface")
    return Truth(transform, vol, surface, read_true_silhouettes(d), obj_tr)


def object_reference(sfm_points, surface, transform, *, gate: float = 0.02) -> dict | None:
    """The SfM → CT similarity of the object (:func:`insideout_jax.metrics.surface_similarity` of
    the SfM points onto the true surface, started from the camera-centre ``transform``), or None
    where fewer than 10 SfM points lie near the surface. Decision: pairs within ``gate`` × the
    surface's largest extent (2 %: the table and backdrop of a scene stay out), 80 % trimmed."""
    from insideout_jax.metrics import surface_similarity

    pts, nrm = (np.asarray(a, np.float64) for a in surface)
    try:
        return surface_similarity(sfm_points, pts, nrm, (transform.rotation, transform.translation,
                                                         transform.scale),
                                  gate=gate * float(np.ptp(pts, axis=0).max()))
    except ValueError:  # no SfM points, or fewer than 10 near the surface
        return None


def reference_summary(transform, obj_tr: dict) -> str:
    """One line: how far the camera-centre reference is from the object's own (``object_reference``)."""
    e = ev.alignment_errors(obj_tr, transform)
    return (f"the object-based reference ({obj_tr['points']} SfM points on the true surface,"
            f" median |distance| {obj_tr['residual_mm']:.2f} mm) differs from the camera-centre one"
            f" by {e['rot_deg']:.2f}°, {100 * (obj_tr['scale'] / float(transform.scale) - 1):+.2f} %"
            " in scale")


def selection_truth(selected, candidates, truth: Truth, cfg) -> dict:
    """Precision and recall of the object selection (fitting stage) against the true silhouettes:
    a splat (active, opacity ≥ the fitting's ``min_opacity``) is the object's when, moved into the
    CT frame by the true transform, it projects inside the true masks (through the true lens) in
    ≥ 90 % of the views that see it."""
    from insideout_jax.pipeline.selection import selection_scores, visual_hull_membership

    masks, cams, lens = truth.silhouettes
    tr = truth.transform
    cand = np.asarray(candidates.active) & (np.asarray(candidates.opacities) >= cfg.fitting.min_opacity)
    p = np.asarray(candidates.means, np.float64)[cand]
    p_ct = float(tr.scale) * p @ np.asarray(tr.rotation, np.float64).T + np.asarray(tr.translation)
    true = visual_hull_membership(p_ct, cams, masks, distortion=lens)
    s = selection_scores(np.asarray(selected.active)[cand], true)
    return {"precision": s["precision"], "recall": s["recall"]}


def evaluate(*, rgb0, rgb_aligned, rgb_internal, rad0, rad_internal, unified_density, grid,
             ct_volume, cfg, truth: Truth | None = None, fit_levels=None, projections=None,
             geometry=None, xgaussian: XGaussianModel | None = None) -> EvaluationResult:
    """Score the methods and collect what the figures show. The only stage that sees ``truth``.

    Args:
      rgb0, rgb_aligned, rgb_internal: the RGB splats from stage 1a (SfM frame), after fitting
        and after internal rendering (CT frame).
      rad0, rad_internal: the radiative splats from stage 1b and after internal rendering.
      unified_density: [n, n, n] the unified model's density on ``grid`` (visual stage).
      ct_volume: the CT the cross-sections are cut from (the reference of Table 2).
      cfg: :class:`insideout_jax.config.PipelineConfig`.
      truth: the object's truth (transform, volume, surface) or None.
      fit_levels: [(name, Similarity)] of the fitting stage's levels (``FitResult.stages``), for
        the alignment errors against ``truth.transform``.
      projections, geometry: the *training* projections, for FDK in the volume comparison
        (``volume.fdk`` / ``volume.radiative``, against the truth, else against the CT).
      xgaussian: the X-Gaussian baseline (stage 1b); its cross-sections are cut from its density
        view (:func:`insideout_jax.render.xgaussian.density_view`). None: no X-Gaussian row.
    """
    from insideout_jax.render.xgaussian import density_view
    from insideout_jax.visual import as_radiative, unify

    truth = truth or Truth()
    unified = as_radiative(unify(rad_internal, rgb_internal, percentile=cfg.visual.clone_percentile))
    methods = {"3dgs": rgb_aligned, "radiative": rad0, "insideout": unified}
    notes, rows = [], {}
    if xgaussian is not None:
        methods["xgaussian"] = density_view(xgaussian.splats, xgaussian.scale)
    else:
        notes.append("no X-Gaussian baseline was trained (config or a parallel beam): its rows are null")
    ref_range = (float(np.min(ct_volume.data)), float(np.max(ct_volume.data)))
    cross = {name: {} for name in methods}
    for split, heldout in (("train", False), ("heldout", True)):
        slices, _, refs = pg.slice_set(ct_volume, cfg.internal, heldout=heldout,
                                       resolution=cfg.internal.eval_resolution)
        kinds = [s.kind for s in slices]
        refs_true = None if truth.volume is None else pg.volume_slices(truth.volume, slices)
        for name, sp in methods.items():
            preds = ev.render_cross_sections(sp, slices)
            m = ev.slice_metrics(preds, refs, kinds, ref_range=ref_range)
            cross[name][split] = ev.to_json_ready(
                {k: m[k] for k in ("psnr", "ssim", "piqe", "psnr_affine", "ssim_padded", "axial",
                                   "coronal")})
            cross[name][split]["vs_ct"] = {k: cross[name][split][k] for k in ("psnr", "ssim", "piqe")}
            if refs_true is not None:  # the same renders against the exact volume
                t = ev.slice_metrics(preds, refs_true, kinds, ref_range=(
                    float(np.min(truth.volume.data)), float(np.max(truth.volume.data))))
                cross[name][split]["vs_truth"] = ev.to_json_ready({k: t[k] for k in ("psnr", "ssim")})
            if heldout:
                pick = np.linspace(0, len(slices) - 1, min(4, len(slices))).round().astype(int)
                rows[name] = preds[pick]
                rows["_ref"] = refs[pick]
                rows["_labels"] = [f"{slices[i].kind} {slices[i].position:+.1f} mm" for i in pick]
        if heldout:
            notes.append(_reference_piqe_note(refs, cross))
    metrics = {"cross_sections": cross}

    if truth.silhouettes is not None and truth.transform is not None:
        metrics["object_selection"] = selection_truth(rgb_aligned, rgb0, truth, cfg)
    cand = np.asarray(rgb0.active) & (np.asarray(rgb0.opacities) >= cfg.fitting.min_opacity)
    selection_fig = (np.asarray(rgb0.means)[cand], np.asarray(rgb_aligned.active)[cand],
                     metrics.get("object_selection"))
    rgb0 = rgb0.replace(active=rgb0.active & rgb_aligned.active)  # the object's (table dropped)
    obj_pts = lambda sp: pg.object_points(sp, min_opacity=cfg.fitting.min_opacity)  # noqa: E731
    p_rgb0, p_rgb_al, p_rgb_in, p_rad0, p_rad_in = map(
        obj_pts, (rgb0, rgb_aligned, rgb_internal, rad0, rad_internal))
    ch = ev.chamfer_block({"none": p_rgb0, "hierarchical": p_rgb_al, "internal": p_rgb_in},
                          {"none": p_rad0, "hierarchical": p_rad0, "internal": p_rad_in})
    metrics["chamfer_mm"] = ev.to_json_ready(ch["chamfer_mm"])
    notes.append(_chamfer_rise_note(ch, p_rgb_al, p_rgb_in, p_rad0, p_rad_in))

    if truth.surface is not None:
        pts, nrm = truth.surface
        metrics["internal_noise"] = ev.to_json_ready(
            {"before": ev.internal_noise(rgb_aligned, pts, nrm),
             "after": ev.internal_noise(rgb_internal, pts, nrm)})
    else:
        notes.append("no true surface: internal noise is null")

    sp_v, org = float(grid.spacing_zyx[0]), np.asarray(grid.origin_xyz)
    vols = {"radiative": pg.cell_volume(rad0, grid), "insideout": np.asarray(unified_density)}
    meshes = {}
    metrics["occupancy"] = {}
    for name, v in vols.items():
        metrics["occupancy"][name] = ev.to_json_ready(
            {k: val for k, val in ev.occupancy_block(v, (sp_v,) * 3, org).items() if k in ("42", "242")})
        verts, faces, _ = ev.density_mesh(v, (sp_v,) * 3, org)
        meshes[name] = (verts, faces)
    metrics["volume"] = {}
    if truth.volume is not None:
        ref = pg.resample_to(np.asarray(truth.volume.data), truth.volume, grid)
        metrics["volume"]["insideout"] = ev.to_json_ready(ev.volume_metrics(vols["insideout"], ref))
        ct_ref = pg.resample_to(np.asarray(ct_volume.data), ct_volume, grid)
        metrics["volume"]["insideout"]["vs_ct"] = ev.to_json_ready(ev.volume_metrics(vols["insideout"], ct_ref))

    act = lambda sp: np.asarray(sp.means)[np.asarray(sp.active)]  # noqa: E731
    if truth.transform is not None and fit_levels:
        centre = act(rgb0).mean(0)
        metrics["alignment"] = alignment_scores(fit_levels, truth.transform, centre)
        if truth.object_transform is not None:
            obj_tr = truth.object_transform
            metrics["alignment_object"] = alignment_scores(fit_levels, obj_tr, centre)
            metrics["alignment_reference"] = {
                **ev.alignment_errors(obj_tr, truth.transform, center=centre),
                "sfm_points": obj_tr["points"], "sfm_residual_mm": obj_tr["residual_mm"]}
            notes.append(f"alignment reference: {reference_summary(truth.transform, obj_tr)};"
                         " `alignment` is scored against the camera-centre reference,"
                         " `alignment_object` against the object-based one")
    else:
        notes.append("no true transform (truth/transform.json or truth/cameras.json): alignment"
                     " errors are null (real data)")
    volumes = None
    reference = truth.volume if truth.volume is not None else ct_volume
    if projections is not None and geometry is not None:
        from insideout_jax.pipeline.stages import volume_scores

        volumes, scores = volume_scores(projections, geometry, rad0, reference, cfg.xray.fdk_size,
                                        ct_volume=ct_volume)
        metrics["volume"].update(scores)
    figure_data = {
        "cross_sections": ({"CT reference": rows["_ref"], "3DGS": rows["3dgs"],
                            **({"X-Gaussian": rows["xgaussian"]} if "xgaussian" in rows else {}),
                            "radiative (stage 1)": rows["radiative"], "InsideOut": rows["insideout"]},
                           rows["_labels"]),
        "alignment": (act(rgb0), act(rgb_aligned), act(rad0)),
        "normals": {"radiative": meshes["radiative"], "InsideOut": meshes["insideout"]},
        "selection": selection_fig,
    }
    return EvaluationResult(metrics, tuple(n for n in notes if n), figure_data, meshes["insideout"],
                            volumes)
