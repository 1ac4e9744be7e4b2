"""Figures of the InsideOut report (matplotlib, Agg), each from arrays to one PNG written atomically.

Paper numbering: cross-section comparison (Fig. 4), RGB vs radiative centres before and after
alignment (Fig. 7), normal orientation histograms (Fig. 5), training curves.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_histories", "plot_alignment", "plot_cross_sections", "plot_normal_histograms",
           "plot_selection", "plot_training_curves", "save_figure"]

# ------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, dpi: int = 100) -> Path:
    """Save a figure atomically as PNG and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_selection(points, kept, path, *, scores=None, max_points: int = 6000, seed: int = 0) -> Path:
    """The object selection: stage 1a's splat centres (SfM frame) kept as the object (orange) or
    dropped as table and room (grey), three orthographic views.

    Args:
      points: [N, 3] the candidate centres (active, opacity ≥ the fitting's minimum).
      kept: [N] bool, the selection.
      path: PNG path.
      scores: optional ``{"precision", "recall"}`` against the true silhouettes (in the title).
      max_points: at most this many points of each group are drawn (the titles give the counts).

    Returns:
      The path written.
    """
    p = np.asarray(points, np.float64)
    kept = np.asarray(kept, bool)
    if p.ndim != 2 or p.shape[1] != 3 or kept.shape != (p.shape[0],):
        raise ValueError(f"points must be [N, 3] and kept [N], got {p.shape} and {kept.shape}")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.5), squeeze=False)
    groups = (("dropped", _subsample(p[~kept], max_points, seed), "0.6"),
              ("object", _subsample(p[kept], max_points, seed + 1), "tab:orange"))
    for j, (hx, vy, a, b) in enumerate((("x", "y", 0, 1), ("x", "z", 0, 2), ("y", "z", 1, 2))):
        ax = axes[0, j]
        for label, q, colour in groups:
            ax.scatter(q[:, a], q[:, b], s=2, c=colour, alpha=0.5, linewidths=0, label=label)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"{hx} (SfM units)")
        ax.set_ylabel(f"{vy} (SfM units)")
    title = f"object selection: {int(kept.sum())} of {len(kept)} splats kept"
    if scores and all(scores.get(k) is not None for k in ("precision", "recall")):
        title += (f"; vs the true silhouettes precision {scores['precision']:.3f},"
                  f" recall {scores['recall']:.3f}")
    fig.suptitle(title, fontsize=10)
    axes[0, 0].legend(loc="upper right", fontsize=8, markerscale=4)
    fig.tight_layout()
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)
