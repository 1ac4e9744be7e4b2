"""``report.md`` from ``metrics.json``: the tables of docs/OUTPUTS.md next to the paper's numbers
(EVALUATION.md §8), whether the paper's trends hold (computed, then said in words), the figures.
A ``null`` value is shown as "—"; its reason is in the notes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from insideout_jax.io.checkpoint import atomic_write_bytes

__all__ = ["METHOD_LABELS", "PAPER", "chamfer_trend", "cross_section_trend", "write_report"]

METHOD_LABELS = {"3dgs": "3DGS", "xgaussian": "X-Gaussian", "insideout": "InsideOut",
                 "fdk": "FDK", "radiative": "radiative (stage 1)"}

# EVALUATION.md §8: the paper's numbers (different data: trends, not absolute values)
PAPER = {
    "cross_sections_mean": {"3dgs": (45.01, 15.62, 0.580), "xgaussian": (26.65, 17.28, 0.604),
                            "insideout": (24.35, 18.95, 0.622)},  # PIQE, PSNR, SSIM
    "cross_sections_skull": {"3dgs": (51.71, 16.24, 0.61), "xgaussian": (23.71, 19.42, 0.64),
                             "insideout": (20.01, 20.33, 0.65)},
    "chamfer_skull": {"none": 722.45, "hierarchical": 9.53, "internal": 7.95},
    "occupancy_mean": {"R²-Gaussian": (0.431, 0.468), "GS2Mesh": (0.437, 0.476),
                       "InsideOut": (0.443, 0.471)},  # 42 / 242 bins
}
_ROWS = ("none", "hierarchical", "internal")
_ROW_LABELS = {"none": "no module", "hierarchical": "+ hierarchical alignment",
               "internal": "+ internal rendering"}
_FIG_CAPTIONS = {
    "cross_sections": "Cross-sections (paper Fig. 4): CT reference and each method's density, "
                      "each image min–max normalised.",
    "alignment": "RGB (orange) vs radiative (blue) splat centres before and after alignment, "
                 "three orthographic projections (paper Fig. 7).",
    "normals": "Normal orientation histograms of the density meshes (paper Fig. 5).",
    "selection": "The object selection before fitting: stage 1a's splat centres (SfM frame) kept as "
                 "the object (orange) or dropped as table and room (grey).",
    "training": "Training curves (loss per block).",
    "cutaways": "Cut-aways through the object's centre, normal to x, y and z: InsideOut (cut face: "
                "its density, 1/mm) above the 3DGS-only model (cut face: its opacity field). Each "
                "face's window is 5 %–100 % of that model's largest peak.",
    "turntable": "Turntable (36 views): each view cut by the vertical plane through the centre that "
                 "faces the camera; InsideOut left, 3DGS-only right (first frame: turntable.png).",
}


# -------------------------------------------------------------------------------------- tables


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(v, digits: int = 2) -> str:
    x = _num(v)
    return "—" if x is None else f"{x:.{digits}f}"


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _table(header: Sequence[str], rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if any("—" in cell for r in rows for cell in r):
        lines += ["", "— : not computed (the reason is in the notes)."]
    return lines + [""]


def _methods(metrics: Mapping) -> list:
    cs = metrics.get("cross_sections") or {}
    order = [m for m in ("3dgs", "xgaussian", "radiative", "insideout") if m in cs]
    return order + [m for m in cs if m not in order]


_CHAIN = ("insideout", "radiative", "xgaussian", "3dgs")  # the expected order, best first
_REFERENCES = (("CT", ()), ("truth", ("vs_truth",)))  # (name, key path under a split's scores)


def _chain_check(vals: dict, what: str, digits: int) -> str:
    """One sentence: does ``vals`` (method → value, None where missing) fall along :data:`_CHAIN`?"""
    present = [m for m in _CHAIN if vals.get(m) is not None]
    missing = [METHOD_LABELS[m] for m in _CHAIN if vals.get(m) is None]
    absent = f" ({', '.join(missing)}: no value)" if missing else ""
    if len(present) < 2:
        return f"{what}: cannot be checked{absent}."
    fails = [f"{METHOD_LABELS[a]} {vals[a]:.{digits}f} < {METHOD_LABELS[b]} {vals[b]:.{digits}f}"
             for a, b in zip(present, present[1:], strict=False) if vals[a] < vals[b]]
    chain = " ≥ ".join(METHOD_LABELS[m] for m in present)
    if fails:
        return f"{what}: {chain} does **not** hold: {'; '.join(fails)}{absent}."
    return (f"{what}: {chain} holds ({' ≥ '.join(f'{vals[m]:.{digits}f}' for m in present)})"
            f"{absent}.")


def cross_section_trend(metrics: Mapping) -> list:
    """Sentences checking the expected order InsideOut ≥ radiative (stage 1) ≥ X-Gaussian ≥ 3DGS
    (the paper's Table 2 trend, with our radiative stage-1 model in it) in PSNR and SSIM, on the
    training and held-out slices, against the CT and, where scored, against the truth."""
    out = []
    for split, name in (("train", "training slices"), ("heldout", "held-out slices")):
        for ref, keys in _REFERENCES:
            for k, digits in (("psnr", 2), ("ssim", 3)):
                vals = {m: _num(_get(metrics, "cross_sections", m, split, *keys, k)) for m in _CHAIN}
                if ref == "truth" and all(v is None for v in vals.values()):
                    continue
                out.append(_chain_check(vals, f"{k.upper()} on {name} vs the {ref}", digits))
        ins, xg = (_num(_get(metrics, "cross_sections", m, split, "psnr")) for m in ("insideout", "xgaussian"))
        if ins is not None and xg is not None:
            out.append(f"On {name}, InsideOut − X-Gaussian = {ins - xg:+.2f} dB PSNR vs the CT "
                       "(paper: +1.67 dB mean, +0.91 dB skull).")
    for ref, keys in _REFERENCES:
        gain = {split: [_num(_get(metrics, "cross_sections", m, split, *keys, "psnr"))
                        for m in ("insideout", "radiative")] for split in ("train", "heldout")}
        if any(v is None for g in gain.values() for v in g):
            continue
        d_tr, d_ho = (g[0] - g[1] for g in (gain["train"], gain["heldout"]))
        if d_tr >= 0 > d_ho:
            out.append(f"Internal rendering against the radiative model (PSNR vs the {ref}): {d_tr:+.2f} dB on"
                       f" the training slices, {d_ho:+.2f} dB on the held-out ones: it gains on the planes"
                       " it trains on and loses between them.")
    return out


def chamfer_trend(metrics: Mapping) -> str:
    """Sentence checking the paper's Table 3 trend: Chamfer falling none → hierarchical → internal."""
    vals = {r: _num(_get(metrics, "chamfer_mm", r)) for r in _ROWS}
    missing = [_ROW_LABELS[r] for r, v in vals.items() if v is None]
    if missing:
        return f"Chamfer trend (falling across the ablation): cannot be checked, no value for " \
               f"{', '.join(missing)}."
    a, b, c = (vals[r] for r in _ROWS)
    fails = []
    if not b < a:
        fails.append(f"hierarchical alignment {b:.3f} mm ≥ no module {a:.3f} mm")
    if not c < b:
        fails.append(f"internal rendering {c:.3f} mm ≥ hierarchical alignment {b:.3f} mm")
    if fails:
        return (f"Chamfer trend (falling across the ablation) does **not** hold: {'; '.join(fails)}."
                " See the notes for why.")
    return f"Chamfer trend (falling across the ablation) holds: {a:.3f} → {b:.3f} → {c:.3f} mm."


def _section_cross(metrics: Mapping) -> list:
    lines = ["## Cross-sections (paper Table 2)", "",
             "Reference: the CT (as in the paper). "
             "PSNR and SSIM after min–max normalising prediction and CT reference per slice; PIQE "
             "of the prediction (lower is better); mean over axial and coronal slices. Training "
             "slices every 15 mm, held-out slices offset by 7.5 mm.", ""]
    header = ["method", "train PIQE↓", "train PSNR↑", "train SSIM↑", "held-out PIQE↓",
              "held-out PSNR↑", "held-out SSIM↑", "paper skull PIQE / PSNR / SSIM",
              "paper mean PIQE / PSNR / SSIM"]
    rows, extra = [], []
    for m in _methods(metrics):
        cells = [METHOD_LABELS.get(m, m)]
        for split in ("train", "heldout"):
            e = _get(metrics, "cross_sections", m, split) or {}
            cells += [_fmt(e.get("piqe")), _fmt(e.get("psnr")), _fmt(e.get("ssim"), 3)]
        for key in ("cross_sections_skull", "cross_sections_mean"):
            p = PAPER[key].get(m)
            cells.append(f"{p[0]:.2f} / {p[1]:.2f} / {p[2]:.3f}" if p else "")
        rows.append(cells)
        for split in ("train", "heldout"):
            e = _get(metrics, "cross_sections", m, split) or {}
            if any(k in e for k in ("axial", "coronal", "psnr_affine", "ssim_padded")):
                extra.append([METHOD_LABELS.get(m, m), split,
                              _fmt(_get(e, "axial", "psnr")), _fmt(_get(e, "coronal", "psnr")),
                              _fmt(e.get("psnr_affine")), _fmt(e.get("ssim_padded"), 3),
                              _fmt(e.get("n_slices"), 0)])
    lines += _table(header, rows)
    lines += [f"- {s}" for s in cross_section_trend(metrics)] + [""]
    truth_rows = [[METHOD_LABELS.get(m, m)] + [
        _fmt(_get(metrics, "cross_sections", m, split, "vs_truth", k), 2 if k == "psnr" else 3)
        for split in ("train", "heldout") for k in ("psnr", "ssim")] for m in _methods(metrics)
        if _get(metrics, "cross_sections", m, "heldout", "vs_truth")]
    if truth_rows:
        lines += ["The same renders against the exact volume (generated objects: `truth/`), where the "
                  "table above scores them against the CT they were trained on:", ""]
        lines += _table(["method", "train PSNR vs truth↑", "train SSIM vs truth↑",
                         "held-out PSNR vs truth↑", "held-out SSIM vs truth↑"], truth_rows) + [""]
    if extra:
        lines += ["Details: axial / coronal PSNR, affine-fit PSNR, 3DGS-form (padded) SSIM.", ""]
        lines += _table(["method", "split", "axial PSNR", "coronal PSNR", "affine PSNR",
                         "padded SSIM", "slices"], extra)
    return lines


def _section_chamfer(metrics: Mapping) -> list:
    lines = ["## Chamfer distance ablation (paper Table 3)", "",
             "RGB vs radiative splat centres in the CT frame after hidden point removal from 42 "
             "cameras (EVALUATION.md §4); mm, lower is better.", ""]
    rows = [[_ROW_LABELS[r], _fmt(_get(metrics, "chamfer_mm", r), 3),
             f"{PAPER['chamfer_skull'][r]:.2f}"] for r in _ROWS]
    lines += _table(["setting", "Chamfer (mm)", "paper skull"], rows)
    return lines + [f"- {chamfer_trend(metrics)}", ""]


def _section_occupancy(metrics: Mapping) -> list:
    occ = metrics.get("occupancy") or {}
    lines = ["## Spherical occupancy (paper Fig. 6)", "",
             "Face normals of the marching-cubes mesh of the continuous density, assigned to 42 or "
             "242 Fibonacci directions; *any* = bins with a face, *mean* = bins above the uniform "
             "share (EVALUATION.md §5).", ""]
    rows = [[METHOD_LABELS.get(m, m), _fmt(_get(e, "42", "any"), 3), _fmt(_get(e, "42", "mean"), 3),
             _fmt(_get(e, "242", "any"), 3), _fmt(_get(e, "242", "mean"), 3)]
            for m, e in occ.items()]
    rows += [[f"paper: {name}", "", f"{a:.3f}", "", f"{b:.3f}"]
             for name, (a, b) in PAPER["occupancy_mean"].items()]
    return lines + _table(["method", "42 any", "42 mean", "242 any", "242 mean"], rows)


def _section_truth(metrics: Mapping) -> list:
    lines = ["## Ground-truth metrics (not computable in the paper)", "", "### Alignment errors", "",
             "Estimated RGB → CT similarity against the true one after each fitting stage.", ""]
    refs = (("camera centres", metrics.get("alignment") or {}),
            ("SfM points on the true surface", metrics.get("alignment_object") or {}))
    rows = [[s, ref, _fmt(e.get("rot_deg"), 3), _fmt(e.get("scale_rel"), 4), _fmt(e.get("trans_mm"), 3)]
            for ref, al in refs for s, e in al.items()]
    lines += _table(["stage", "reference", "rotation (deg)", "relative scale", "translation (mm)"], rows)
    agree = metrics.get("alignment_reference")
    if agree:
        lines += [f"The two references (the similarity of the SfM camera centres to the true ones;"
                  f" the one that puts {agree['sfm_points']} SfM points on the true surface, median"
                  f" |distance| {agree['sfm_residual_mm']:.2f} mm) differ by {agree['rot_deg']:.2f}°,"
                  f" {100 * agree['scale_rel']:.2f} % in scale and {agree['trans_mm']:.2f} mm: SfM is"
                  " a similarity of the truth only to that precision.", ""]
    sel = metrics.get("object_selection") or {}
    if any(v is not None for v in sel.values()):
        lines += ["### Object selection", "", "RGB splats kept as the object before fitting (the "
                  "rest: table and room); precision and recall against the true silhouettes.", ""]
        lines += _table(["method", "kept", "of", "precision", "recall"],
                        [[str(sel.get("method") or "—"), _fmt(sel.get("kept"), 0), _fmt(sel.get("total"), 0),
                          _fmt(sel.get("precision"), 3), _fmt(sel.get("recall"), 3)]])
    lines += ["### Held-out views", ""]
    labels = {"rgb": "RGB photos (3DGS)", "xray": "X-ray projections (radiative)",
              "unified_rgb": "RGB photos (unified model)",
              "rgb_object": "RGB photos (RGB-only model, object splats, CT frame)"}
    hv = metrics.get("heldout_views") or {}
    rows = [[labels.get(k, k), _fmt(e.get("psnr")), _fmt(e.get("ssim"), 3)] for k, e in hv.items()]
    lines += _table(["views", "PSNR (dB)", "SSIM"], rows)
    # the like-for-like reference: the RGB-only model on the unified model's own held-out photos
    # (matted to the object where the selection dropped the room); else stage 1a's score
    ref = "rgb_object" if _num(_get(hv, "rgb_object", "psnr")) is not None else "rgb"
    a, b = _num(_get(hv, "unified_rgb", "psnr")), _num(_get(hv, ref, "psnr"))
    if a is not None and b is not None:
        verdict = "within" if b - a <= 1.0 else "**not** within"
        lines += [f"- The unified model's held-out RGB PSNR is {verdict} 1 dB of the RGB-only "
                  f"model ({a:.2f} vs {b:.2f} dB, {labels[ref]}).", ""]
    lines += ["### Volumes", "", "Voxelized density against the true volume (the CT where there is "
              "none), and against the CT (3D PSNR with the reference maximum as range; SSIM averaged"
              " over the three axes).", ""]
    rows = [[METHOD_LABELS.get(m, m), _fmt(e.get("psnr3d")), _fmt(e.get("ssim3d"), 3),
             _fmt(_get(e, "vs_ct", "psnr3d")), _fmt(_get(e, "vs_ct", "ssim3d"), 3)]
            for m, e in (metrics.get("volume") or {}).items()]
    lines += _table(["method", "PSNR 3D (dB)", "SSIM 3D", "PSNR 3D vs CT (dB)", "SSIM 3D vs CT"], rows)
    noise = metrics.get("internal_noise") or {}
    lines += ["### Internal noise", "", "Fraction of RGB splats (opacity ≥ 0.05) more than 3 mm "
              "inside the true outer surface.", ""]
    lines += _table(["before internal rendering", "after"],
                    [[_fmt(noise.get("before"), 4), _fmt(noise.get("after"), 4)]])
    nb, na = _num(noise.get("before")), _num(noise.get("after"))
    if nb is not None and na is not None and nb > 0:
        drop = 1.0 - na / nb
        verdict = "meets" if drop >= 0.5 else "does **not** meet"
        change = f"drops by {100 * drop:.1f}%" if drop >= 0 else f"rises by {-100 * drop:.1f}%"
        lines += [f"- Internal rendering: internal noise {change} ({nb:.4f} → {na:.4f}); this "
                  f"{verdict} the target of a ≥ 50% drop.", ""]
    return lines


def _section_sparse(out_dir: Path) -> list:
    """The sparse-view comparisons ``experiments/sparse_views.py`` left in the output folder."""
    rows = []
    for p in sorted(Path(out_dir).glob("sparse_views_*.json")):
        try:
            r = json.loads(p.read_text())
            rows.append([str(r["n_views"]), _fmt(r["fdk"]["psnr3d"]), _fmt(r["fdk"]["ssim3d"], 3),
                         _fmt(r["radiative"]["psnr3d"]), _fmt(r["radiative"]["ssim3d"], 3),
                         f"{r['radiative_minus_fdk_db']:+.2f}"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            rows.append([p.name, f"unreadable: {e}", "", "", "", ""])
    if not rows:
        return []
    return ["### Sparse views: radiative splats vs FDK", "",
            "Both from the same N projections over 360° (`experiments/sparse_views.py`), against "
            "the true volume.", ""] + _table(
        ["views", "FDK PSNR 3D (dB)", "FDK SSIM 3D", "radiative PSNR 3D (dB)", "radiative SSIM 3D",
         "radiative − FDK (dB)"], rows)


def _caps(c: dict) -> list:
    """One line per cap that coarsened a result (nothing when none bit or none was measured)."""
    out = []
    if c.get("xray_culled_at_source"):
        out.append(f"- {c['xray_culled_at_source']} radiative splats left out of some training view"
                   " (they reach the X-ray source plane)")
    out += [f"- fitting level {k}: {v} surface targets over the per-cluster cap left out"
            for k, v in (c.get("fitting_targets_dropped") or {}).items() if v]
    out += [f"- fitting level {k}: displacement grid {v:.2f}× coarser than σ/2 (cell cap)"
            for k, v in (c.get("fitting_grid_coarsening") or {}).items() if v and v > 1.0]
    return ["", "Caps that coarsened a result:", ""] + out + [""] if out else []


def _section_acquisition(metrics: Mapping) -> list:
    acq = metrics.get("acquisition")
    if not isinstance(acq, Mapping) or not acq:
        return []
    lines = ["## Acquisition", "", "As the object folder records it (`xray/acquisition.json`): the noise "
             "simulated, the conversion to attenuation and the CT reconstruction the pipeline reads.", ""]
    for k, v in acq.items():
        if isinstance(v, Mapping):
            v = ", ".join(f"{a.replace('_', ' ')} {b}" for a, b in v.items())
        lines.append(f"- {k.replace('_', ' ')}: {v}")
    return lines + [""]


def write_report(metrics: Mapping, figures: Mapping[str, object], out_dir) -> Path:
    """Write ``report.md``: wall times, Tables 2-3, occupancy, ground truth, trends, figures, notes.

    Args:
      metrics: the ``metrics.json`` dict (docs/OUTPUTS.md); any value may be ``None``/NaN and any
        block may be missing.
      figures: figure key → PNG path (keys ``"cross_sections"``, ``"alignment"``, ``"normals"``,
        ``"training"`` get captions; others are shown under their key); missing files are skipped.
      out_dir: folder of ``report.md`` (figure links are relative to it).

    Returns:
      The path of ``report.md``.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict (metrics.json), got {type(metrics).__name__}")
    out_dir = Path(out_dir)
    lines = [f"# InsideOut report — {metrics.get('object', '?')} "
             f"(config `{metrics.get('config', '?')}`)", "",
             "Paper numbers (EVALUATION.md §8) come from different data: compare trends, not "
             "absolute values.", "", "## Stage wall times", ""]
    secs = metrics.get("stage_seconds") or {}
    rows = [[s, _fmt(v, 1)] for s, v in secs.items()]
    known = [_num(v) for v in secs.values() if _num(v) is not None]
    rows.append(["**total**", f"{sum(known):.1f}" if known else "—"])
    lines += _table(["stage", "seconds"], rows)
    skipped = {k: v for k, v in (metrics.get("densify_skipped") or {}).items() if v is not None}
    if skipped:
        lines += ["", "Densification candidates left out at the capacity cap: "
                  + ", ".join(f"{k} {v}" for k, v in skipped.items())
                  + (" (none)" if not any(skipped.values()) else " (raise the cap to keep them)"), ""]
    lines += _caps(metrics.get("coarsened") or {})
    lines += _section_acquisition(metrics)
    lines += _section_cross(metrics) + _section_chamfer(metrics) + _section_occupancy(metrics)
    lines += _section_truth(metrics) + _section_sparse(out_dir)
    lines += ["## Paper trends", ""]
    lines += [f"- {s}" for s in cross_section_trend(metrics) + [chamfer_trend(metrics)]]
    lines += ["", "## Figures", ""]
    for key, p in (figures or {}).items():
        p = Path(p)
        if p.is_file():
            rel = os.path.relpath(p.resolve(), out_dir.resolve())
            lines += [f"![{key}]({rel})", "", _FIG_CAPTIONS.get(key, key), ""]
    lines += ["## Notes", ""]
    notes = metrics.get("notes") or []
    lines += [f"- {n}" for n in notes] if notes else ["- (none)"]
    path = out_dir / "report.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
