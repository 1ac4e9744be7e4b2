"""The evaluation stage: Table 2 (cross-sections), Table 3 (Chamfer), occupancy (Fig. 6), internal
noise, the unified volume against the truth, and the notes that tell how to read them.

References (EVALUATION.md): cross-sections are scored against the CT the method was trained
on (its training and held-out positions); the unified volume and the internal noise against the
object's ``truth/`` (absent for real data: those fields stay null and a note says so).
"""

from __future__ import annotations

import numpy as np

from insideout_jax import evaluation as ev
from insideout_jax.pipeline import geometry as pg
from insideout_jax.pipeline.results import EvaluationResult, Truth

__all__ = ["CHAMFER_NOTE", "PIQE_NOTE", "alignment_scores", "evaluate"]

CHAMFER_NOTE = "Chamfer rises with internal rendering"
PIQE_NOTE = "PIQE of the CT reference slices themselves"


def _chamfer_rise_note(ch: dict, rgb_al, rgb_in, rad0, rad_in) -> str | None:
    """When internal rendering raises the Chamfer distance, which splat set moved it: the two
    mixed rows (only the RGB set, or only the radiative set, after internal rendering) and the
    directed distances."""
    hier, inner = (float(ch["chamfer_mm"][k]) for k in ("hierarchical", "internal"))
    if not inner > hier:
        return None
    mixed = ev.chamfer_block({"rgb_only": rgb_in, "rad_only": rgb_al},
                             {"rgb_only": rad0, "rad_only": rad_in}, protocol_points=rad0)
    d = ch["details"]
    return (
        f"{CHAMFER_NOTE} ({hier:.2f} → {inner:.2f} mm). With only the RGB "
        f"splats after internal rendering it is {float(mixed['chamfer_mm']['rgb_only']):.2f} mm, "
        f"with only the radiative ones {float(mixed['chamfer_mm']['rad_only']):.2f} mm. Directed "
        f"distances (RGB → radiative, radiative → RGB): {float(d['hierarchical']['a_to_b']):.2f} / "
        f"{float(d['hierarchical']['b_to_a']):.2f} mm before, {float(d['internal']['a_to_b']):.2f} /"
        f" {float(d['internal']['b_to_a']):.2f} mm after, between "
        f"{int(d['internal']['n_surface_a'])} RGB and {int(d['internal']['n_surface_b'])} radiative "
        "visible centres: both are of the order of the spacing of the radiative centres, so the "
        "row measures how the visible splat sets change, not a misalignment (the alignment errors "
        "against the true transform are in the ground-truth section).")


def _reference_piqe_note(refs, cross: dict) -> str | None:
    """PIQE of the CT reference slices themselves: it tells how to read the methods' PIQE (lower
    is better, but PIQE rewards texture: a noise-free phantom's piecewise-constant slices score
    near 100, the worst value)."""
    from insideout_jax.metrics.image import piqe_slice

    scores = [piqe_slice(r) for r in refs if float(np.ptp(r)) > 0]
    if not scores:
        return None
    return (f"{PIQE_NOTE} (held-out positions): {float(np.mean(scores)):.1f}, against "
            f"{cross['xgaussian']['heldout']['piqe']:.1f} for X-Gaussian and "
            f"{cross['insideout']['heldout']['piqe']:.1f} for InsideOut. PIQE is lower for images "
            "with texture or noise; when the reference itself scores near 100 (a noise-free, "
            "piecewise-constant volume), a rendering closer to it scores higher, so PIQE cannot "
            "rank fidelity on this object: read PSNR and SSIM.")


def alignment_scores(levels, truth_transform, centre) -> dict:
    """Errors of the fitted levels against the true RGB → CT similarity: the global level, the
    last local level and the fine level (rotation in degrees, relative scale, translation in mm
    of the point ``centre`` of the RGB frame)."""
    from insideout_jax.fitting.procrustes import Similarity, similarity_errors

    t = truth_transform
    truth = Similarity(np.asarray(t.rotation, np.float32), np.asarray(t.translation, np.float32),
                       np.float32(t.scale))
    picked = {"global": levels[0][1]}
    for kind in ("local", "fine"):
        match = [tr for name, tr in levels if name.startswith(kind)]
        if match:
            picked[kind] = match[-1]
    out = {}
    for kind, tr in picked.items():
        e = similarity_errors(tr, truth, center=np.asarray(centre, np.float32))
        out[kind] = {"rot_deg": float(e["rot_deg"]), "scale_rel": float(e["scale_rel"]),
                     "trans_mm": float(e["trans"])}
    return out


def evaluate(*, rgb0, rgb_aligned, rgb_internal, rad0, rad_internal, unified_density, grid,
             ct_volume, cfg, truth: Truth | None = None, fit_levels=None, projections=None,
             geometry=None) -> EvaluationResult:
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
    """
    from insideout_jax.render.slices import voxelize
    from insideout_jax.visual import as_radiative, unify

    truth = truth or Truth()
    unified = as_radiative(unify(rad_internal, rgb_internal, percentile=cfg.visual.clone_percentile))
    methods = {"3dgs": rgb_aligned, "xgaussian": rad0, "insideout": unified}
    ref_range = (float(np.min(ct_volume.data)), float(np.max(ct_volume.data)))
    cross = {name: {} for name in methods}
    notes, rows = [], {}
    for split, heldout in (("train", False), ("heldout", True)):
        slices, _, refs = pg.slice_set(ct_volume, cfg.internal, heldout=heldout,
                                       resolution=cfg.internal.eval_resolution)
        kinds = [s.kind for s in slices]
        for name, sp in methods.items():
            preds = ev.render_cross_sections(sp, slices)
            m = ev.slice_metrics(preds, refs, kinds, ref_range=ref_range)
            cross[name][split] = ev.to_json_ready(
                {k: m[k] for k in ("psnr", "ssim", "piqe", "psnr_affine", "ssim_padded", "axial",
                                   "coronal")})
            if heldout:
                pick = np.linspace(0, len(slices) - 1, min(4, len(slices))).round().astype(int)
                rows[name] = preds[pick]
                rows["_ref"] = refs[pick]
                rows["_labels"] = [f"{slices[i].kind} {slices[i].position:+.1f} mm" for i in pick]
        if heldout:
            notes.append(_reference_piqe_note(refs, cross))
    metrics = {"cross_sections": cross}

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
    vols = {"radiative": np.asarray(voxelize(rad0, grid)), "insideout": np.asarray(unified_density)}
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

    act = lambda sp: np.asarray(sp.means)[np.asarray(sp.active)]  # noqa: E731
    if truth.transform is not None and fit_levels:
        metrics["alignment"] = alignment_scores(fit_levels, truth.transform, act(rgb0).mean(0))
    else:
        notes.append("no true transform (truth/transform.json or truth/cameras.json): alignment"
                     " errors are null (real data)")
    volumes = None
    reference = truth.volume if truth.volume is not None else ct_volume
    if projections is not None and geometry is not None:
        from insideout_jax.pipeline.stages import volume_scores

        volumes, scores = volume_scores(projections, geometry, rad0, reference, cfg.xray.fdk_size)
        metrics["volume"].update(scores)
    figure_data = {
        "cross_sections": ({"CT reference": rows["_ref"], "3DGS": rows["3dgs"],
                            "X-Gaussian": rows["xgaussian"], "InsideOut": rows["insideout"]},
                           rows["_labels"]),
        "alignment": (act(rgb0), act(rgb_aligned), act(rad0)),
        "normals": {"radiative": meshes["radiative"], "InsideOut": meshes["insideout"]},
    }
    return EvaluationResult(metrics, tuple(n for n in notes if n), figure_data, meshes["insideout"],
                            volumes)
