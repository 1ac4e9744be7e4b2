"""The human-readable report: figures (matplotlib, Agg) and ``report.md`` from ``metrics.json``.

Figures (paper numbering): cross-section comparison (Fig. 4), RGB vs radiative centres before and
after alignment (Fig. 7), normal orientation histograms (Fig. 5), training curves. Each ``plot_*``
function takes arrays, writes one PNG atomically and returns its path; :func:`write_report` renders
the tables of docs/OUTPUTS.md's ``metrics.json`` next to the paper's numbers (EVALUATION.md §8),
checks whether the paper's trends hold and says so in words. A ``null`` value is shown as "—";
its reason is in the notes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from insideout_jax.io.checkpoint import atomic_write_bytes

__all__ = ["PAPER", "METHOD_LABELS", "load_histories", "plot_cross_sections", "plot_alignment",
           "plot_normal_histograms", "plot_training_curves", "cross_section_trend",
           "chamfer_trend", "write_report"]

METHOD_LABELS = {"3dgs": "3DGS", "xgaussian": "X-Gaussian",
                 "xgaussian_parity": "X-Gaussian (parity)", "insideout": "InsideOut",
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
    "training": "Training curves (loss per block).",
}


# ------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        _plt().close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_histories(stage_dir) -> dict:
    """Training histories ``<stage>_history.json`` of a run's stage folder.

    Returns:
      stage name → ``{"step": [...], "loss": [...], "seconds": [...]}`` (sorted by name).

    Raises:
      ValueError: naming the file, when a history lacks a key or its lists differ in length.
    """
    out = {}
    for f in sorted(Path(stage_dir).glob("*_history.json")):
        h = json.loads(f.read_text())
        if not isinstance(h, dict) or any(k not in h for k in ("step", "loss", "seconds")):
            raise ValueError(f"{f}: a history needs the keys 'step', 'loss' and 'seconds'")
        if not len(h["step"]) == len(h["loss"]) == len(h["seconds"]):
            raise ValueError(f"{f}: 'step', 'loss' and 'seconds' differ in length")
        out[f.name[: -len("_history.json")]] = h
    return out


def plot_cross_sections(columns: Mapping[str, np.ndarray], row_labels: Sequence[str],
                        path) -> Path:
    """Grid of slices: rows = slices, columns = CT reference and methods (paper Fig. 4).

    Args:
      columns: column title → ``[S, H, W]`` float slices (e.g. ``{"CT reference": refs,
        "3DGS": ..., "X-Gaussian": ..., "InsideOut": ...}``), all with the same S; each image is
        min–max normalised on its own (as the metrics are), shown with its first row at the bottom.
      row_labels: S labels (e.g. ``"axial z = 15.0 mm"``).
      path: PNG path.

    Returns:
      The path written.
    """
    if not columns:
        raise ValueError("columns must hold at least one column")
    stacks = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    n = len(row_labels)
    for k, v in stacks.items():
        if v.ndim != 3 or v.shape[0] != n:
            raise ValueError(f"columns[{k!r}] must be [S, H, W] with S = {n}, got {v.shape}")
    plt = _plt()
    fig, axes = plt.subplots(n, len(stacks), figsize=(2.4 * len(stacks), 2.4 * n), squeeze=False)
    for j, (title, stack) in enumerate(stacks.items()):
        for i in range(n):
            img = stack[i]
            lo, hi = float(img.min()), float(img.max())
            ax = axes[i, j]
            ax.imshow((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img), cmap="gray",
                      vmin=0.0, vmax=1.0, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
    return _save(fig, path)


def _subsample(p: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if p.shape[0] <= max_points:
        return p
    return p[np.random.default_rng(seed).choice(p.shape[0], max_points, replace=False)]


def plot_alignment(rgb_before, rgb_after, rad_points, path, *, max_points: int = 4000,
                   seed: int = 0) -> Path:
    """RGB vs radiative centres before and after alignment, 3 orthographic views (paper Fig. 7).

    Args:
      rgb_before: ``[N, 3]`` float RGB centres before alignment (e.g. the "none" ablation row).
      rgb_after: ``[N', 3]`` float RGB centres after alignment, CT frame, mm.
      rad_points: ``[M, 3]`` float radiative centres, CT frame, mm.
      path: PNG path.
      max_points: at most this many points of each cloud are drawn (a random subset; the panel
        titles give the counts).
      seed: seed of that subset.

    Returns:
      The path written.
    """
    clouds = {}
    for name, p in (("rgb_before", rgb_before), ("rgb_after", rgb_after), ("rad_points", rad_points)):
        a = np.asarray(p, np.float64)
        if a.ndim != 2 or a.shape[1] != 3 or a.shape[0] == 0:
            raise ValueError(f"{name} must be [N, 3] with N ≥ 1, got shape {a.shape}")
        clouds[name] = a
    plt = _plt()
    views = (("x", "y", 0, 1), ("x", "z", 0, 2), ("y", "z", 1, 2))
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), squeeze=False)
    rad = _subsample(clouds["rad_points"], max_points, seed)
    for i, key in enumerate(("rgb_before", "rgb_after")):
        rgb = _subsample(clouds[key], max_points, seed + 1)
        for j, (hx, vy, a, b) in enumerate(views):
            ax = axes[i, j]
            ax.scatter(rad[:, a], rad[:, b], s=3, c="tab:blue", alpha=0.5, linewidths=0,
                       label="radiative")
            ax.scatter(rgb[:, a], rgb[:, b], s=3, c="tab:orange", alpha=0.5, linewidths=0,
                       label="RGB")
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel(f"{hx} (mm)")
            ax.set_ylabel(f"{vy} (mm)")
            stage = "before" if i == 0 else "after"
            ax.set_title(f"{stage} alignment, {hx}{vy} (RGB {clouds[key].shape[0]}, "
                         f"radiative {clouds['rad_points'].shape[0]})", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=8, markerscale=4)
    fig.tight_layout()
    return _save(fig, path)


def plot_normal_histograms(meshes: Mapping[str, tuple], path, *, n_bins: int = 242) -> Path:
    """Area-weighted normal orientation histograms on a Mollweide map (paper Fig. 5).

    Each Fibonacci direction is a dot at its (longitude, latitude), coloured by its bin's area
    mass relative to the uniform share (1 = uniform); the title gives SO_mean.

    Args:
      meshes: method label → ``(vertices [V, 3] mm, faces [F, 3] int)``.
      path: PNG path.
      n_bins: number of Fibonacci directions (242 or 42).

    Returns:
      The path written.
    """
    from insideout_jax.metrics.mesh import (
        face_normals_areas,
        fibonacci_directions,
        normal_orientation_histogram,
    )

    if not meshes:
        raise ValueError("meshes must hold at least one mesh")
    dirs = fibonacci_directions(n_bins)
    lon = np.arctan2(dirs[:, 1], dirs[:, 0])
    lat = np.arcsin(np.clip(dirs[:, 2], -1.0, 1.0))
    plt = _plt()
    fig = plt.figure(figsize=(5.0 * len(meshes), 3.2))
    for k, (label, (verts, faces)) in enumerate(meshes.items()):
        normals, areas = face_normals_areas(verts, faces)
        rel = normal_orientation_histogram(normals, areas, dirs) * n_bins
        ax = fig.add_subplot(1, len(meshes), k + 1, projection="mollweide")
        sc = ax.scatter(lon, lat, c=rel, s=18, cmap="viridis", vmin=0.0,
                        vmax=max(2.0, float(rel.max())))
        ax.set_xticklabels([])
        ax.grid(True, alpha=0.3)
        ax.set_title(f"{label}: SO_mean {np.mean(rel > 1.0):.3f} ({n_bins} bins)", fontsize=9)
        fig.colorbar(sc, ax=ax, orientation="horizontal", fraction=0.05, pad=0.05,
                     label="mass / uniform share")
    return _save(fig, path)


def plot_training_curves(histories: Mapping[str, Mapping], path) -> Path:
    """Loss against iteration, one panel per stage (log scale where the loss is positive).

    Args:
      histories: stage name → ``{"step": [...], "loss": [...], "seconds": [...]}``.
      path: PNG path.

    Returns:
      The path written.
    """
    if not histories:
        raise ValueError("histories must hold at least one stage")
    plt = _plt()
    fig, axes = plt.subplots(1, len(histories), figsize=(4.0 * len(histories), 3.0),
                             squeeze=False)
    for ax, (stage, h) in zip(axes[0], histories.items(), strict=True):
        step = np.asarray(h["step"], np.float64)
        loss = np.asarray(h["loss"], np.float64)
        ax.plot(step, loss, lw=1.2)
        if loss.size and np.all(loss[np.isfinite(loss)] > 0):
            ax.set_yscale("log")
        secs = h["seconds"][-1] if len(h["seconds"]) else float("nan")
        ax.set_title(f"{stage} ({secs:.0f} s)", fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


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
    order = [m for m in ("3dgs", "xgaussian", "xgaussian_parity", "insideout") if m in cs]
    return order + [m for m in cs if m not in order]


def cross_section_trend(metrics: Mapping) -> list:
    """Sentences checking the paper's Table 2 trend InsideOut ≥ X-Gaussian ≥ 3DGS in PSNR."""
    out = []
    for split, name in (("train", "training slices"), ("heldout", "held-out slices")):
        vals = {m: _num(_get(metrics, "cross_sections", m, split, "psnr"))
                for m in ("insideout", "xgaussian", "3dgs")}
        missing = [METHOD_LABELS[m] for m, v in vals.items() if v is None]
        if missing:
            out.append(f"Cross-section PSNR trend on {name}: cannot be checked, no value for "
                       f"{', '.join(missing)}.")
            continue
        ins, xg, gs = vals["insideout"], vals["xgaussian"], vals["3dgs"]
        fails = []
        if ins < xg:
            fails.append(f"InsideOut {ins:.2f} dB < X-Gaussian {xg:.2f} dB")
        if xg < gs:
            fails.append(f"X-Gaussian {xg:.2f} dB < 3DGS {gs:.2f} dB")
        gain = f"InsideOut − X-Gaussian = {ins - xg:+.2f} dB (paper: +1.67 dB mean, +0.91 dB skull)"
        if fails:
            out.append(f"Cross-section PSNR trend InsideOut ≥ X-Gaussian ≥ 3DGS does **not** hold "
                       f"on {name}: {'; '.join(fails)}. {gain}. See the notes for why.")
        else:
            out.append(f"Cross-section PSNR trend InsideOut ≥ X-Gaussian ≥ 3DGS holds on {name} "
                       f"({ins:.2f} ≥ {xg:.2f} ≥ {gs:.2f} dB). {gain}.")
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
    rows = [[s, _fmt(e.get("rot_deg"), 3), _fmt(e.get("scale_rel"), 4), _fmt(e.get("trans_mm"), 3)]
            for s, e in (metrics.get("alignment") or {}).items()]
    lines += _table(["stage", "rotation (deg)", "relative scale", "translation (mm)"], rows)
    lines += ["### Held-out views", ""]
    labels = {"rgb": "RGB photos (3DGS)", "xray": "X-ray projections (radiative)",
              "unified_rgb": "RGB photos (unified model)"}
    hv = metrics.get("heldout_views") or {}
    rows = [[labels.get(k, k), _fmt(e.get("psnr")), _fmt(e.get("ssim"), 3)] for k, e in hv.items()]
    lines += _table(["views", "PSNR (dB)", "SSIM"], rows)
    a, b = _num(_get(hv, "unified_rgb", "psnr")), _num(_get(hv, "rgb", "psnr"))
    if a is not None and b is not None:
        verdict = "within" if b - a <= 1.0 else "**not** within"
        lines += [f"- The unified model's held-out RGB PSNR is {verdict} 1 dB of the RGB-only "
                  f"model ({a:.2f} vs {b:.2f} dB).", ""]
    lines += ["### Volumes", "", "Voxelized density against the true volume (3D PSNR with the "
              "reference maximum as range; SSIM averaged over the three axes).", ""]
    rows = [[METHOD_LABELS.get(m, m), _fmt(e.get("psnr3d")), _fmt(e.get("ssim3d"), 3)]
            for m, e in (metrics.get("volume") or {}).items()]
    lines += _table(["method", "PSNR 3D (dB)", "SSIM 3D"], rows)
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
