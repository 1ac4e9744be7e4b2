"""The slice-stack command's figures and report (``experiments/stack.py``; MedGS interpolation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from insideout_jax.io.checkpoint import atomic_write_bytes
from insideout_jax.reporting.figures import _plt, save_figure

__all__ = ["METHODS", "stack_figures", "write_stack_report"]

METHODS = ("splats", "medgs_folded", "linear", "cubic", "nearest")


def stack_figures(out: Path, held, renders, scores, history, meshes) -> list[str]:
    """heldout.png (frames, renders, errors), psnr_per_frame.png, training.png and, with
    ``meshes`` ({"reference", "splats", "linear_masks"}: (vertices, faces)), surface.png: each
    surface coloured by its distance to the reference. Returns the file names written."""
    plt = _plt()

    made = []
    methods = [m for m in METHODS if m in renders]
    pick = np.unique(np.linspace(0, held.n_frames - 1, 3).round().astype(int))
    fig, ax = plt.subplots(2 * len(pick), len(methods) + 1, figsize=(2.6 * (len(methods) + 1), 5.2 * len(pick)))
    for r, i in enumerate(pick):
        ax[2 * r, 0].imshow(held.frames[i], cmap="gray", vmin=0, vmax=1)
        ax[2 * r, 0].set_title(f"held-out frame {held.index[i]} (truth)", fontsize=8)
        ax[2 * r + 1, 0].axis("off")
        for c, m in enumerate(methods, start=1):
            ax[2 * r, c].imshow(np.clip(renders[m][i], 0, 1), cmap="gray", vmin=0, vmax=1)
            ps = scores[m]["psnr_per_frame"][i]
            ax[2 * r, c].set_title(f"{m}: " + ("exact" if ps is None else f"{ps:.2f} dB"), fontsize=8)
            ax[2 * r + 1, c].imshow(np.abs(renders[m][i] - held.frames[i]), cmap="magma", vmin=0, vmax=0.25)
            ax[2 * r + 1, c].set_title(f"|{m} − truth| (0–0.25)", fontsize=8)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    save_figure(fig, out / "heldout.png", dpi=90)
    made.append("heldout.png")

    fig, a = plt.subplots(figsize=(7, 3.2))
    for m in methods:
        ps = [np.nan if v is None else v for v in scores[m]["psnr_per_frame"]]
        a.plot(held.index, ps, ".-", label=f"{m} ({scores[m]['psnr']:.2f} dB)", lw=1)
    a.set_xlabel("held-out frame index")
    a.set_ylabel("PSNR (dB) vs the held-out frame")
    a.legend(fontsize=8)
    save_figure(fig, out / "psnr_per_frame.png", dpi=100)
    made.append("psnr_per_frame.png")

    fig, a = plt.subplots(figsize=(6, 3.2))
    a.semilogy(history["step"], history["loss"])
    a.set_xlabel("iteration")
    a.set_ylabel("training loss (block mean)")
    save_figure(fig, out / "training.png", dpi=100)
    made.append("training.png")

    if meshes:
        from scipy.spatial import cKDTree

        from insideout_jax.stacks.surface import sample_surface

        ref = sample_surface(*meshes["reference"], 60_000, seed=3)
        tree = cKDTree(ref)
        keys = ["reference", "splats", "linear_masks"]
        fig, ax = plt.subplots(1, 3, figsize=(12, 4.2))
        for a, k in zip(ax, keys, strict=True):
            p = sample_surface(*meshes[k], 60_000, seed=4)
            d = tree.query(p)[0] if k != "reference" else np.zeros(len(p))
            o = np.argsort(p[:, 1])  # lateral view (x–z), nearer points drawn last
            sc = a.scatter(p[o, 0], p[o, 2], c=d[o], s=0.3, cmap="viridis", vmin=0, vmax=3)
            a.set_title(k if k == "reference" else f"{k}: distance to reference (mm)", fontsize=9)
            a.set_aspect("equal")
            a.invert_yaxis()
            a.set_xlabel("x (mm)")
        ax[0].set_ylabel("z (mm)")
        fig.colorbar(sc, ax=ax, shrink=0.8)
        save_figure(fig, out / "surface.png", dpi=100)
        made.append("surface.png")
    return made


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def write_stack_report(out: Path, m: dict, figs: list[str]) -> Path:
    """report.md of the stack command from its metrics.json dict."""
    inter = m["interpolation"]
    lines = [f"# Stack interpolation (MedGS on 3D splats): {m['input']['name']}", "",
             f"Regime: train on every {_ordinal(m['input']['keep_every'])} frame ({m['input']['kept_frames']} frames),"
             f" score on the {m['input']['held_frames']} frames between (never seen in training)."
             f" In-plane {m['input']['shape_hw'][0]}×{m['input']['shape_hw'][1]} px at"
             f" {m['input']['spacing_zyx'][1]:g}×{m['input']['spacing_zyx'][2]:g} mm, frame spacing"
             f" {m['input']['spacing_zyx'][0]:g} mm. Reference: the held-out frames of the stack itself;"
             f" PSNR over the stack's value range {m['input']['value_range']}.", ""]
    if m["input"]["noise"] > 0:
        lines += [f"Kept frames carry Gaussian noise σ = {m['input']['noise']:g} × range (seed"
                  f" {m['input']['seed']}); held-out targets are clean.", ""]
    lines += ["| method | PSNR (dB), all held-out frames | mean of per-frame PSNR | SSIM |", "|---|---|---|---|"]
    for k in METHODS:
        if k in inter:
            fm = inter[k]["psnr_frame_mean"]
            fm = "— (a frame is exact)" if fm is None else f"{fm:.2f}"
            ps = "exact" if inter[k]["psnr"] is None else f"{inter[k]['psnr']:.2f}"
            lines.append(f"| {k} | {ps} | {fm} | {inter[k]['ssim']:.4f} |")
    c = m["comparison"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f} dB"  # noqa: E731
    lines += ["", f"Splats − linear: {fmt(c['splats_minus_linear_db'])}; splats − cubic:"
              f" {fmt(c['splats_minus_cubic_db'])}; splats − MedGS folded: {fmt(c['splats_minus_medgs_folded_db'])}"
              " (computed from the table). 'splats' = 3D Gaussians on the exact slice renderer;"
              " 'medgs_folded' = MedGS's time-conditioned flat Gaussians, alpha-composited.", ""]
    if m.get("surface"):
        s = m["surface"]
        lines += [f"## Surface of '{s['label']}' (reference: marching cubes of the full-resolution mask)", "",
                  "| surface | alignment | CD | ASD | HD | HD95 (mm) |", "|---|---|---|---|---|---|"]
        for k in ("splats", "linear_masks"):
            for a in ("raw", "rescale_icp"):
                v = s[k][a]
                lines.append(f"| {k} | {a} | {v['cd']:.3f} | {v['asd']:.3f} | {v['hd']:.2f} | {v['hd95']:.3f} |")
        lines.append("")
    t = m["time_s"]
    lines += [f"Time: training {t['train']:.0f} s ({m['config']['iterations']} iterations,"
              f" {m['config']['n_splats']} splats), total {t['total']:.0f} s.", ""]
    lines += [f"![{f}]({f})" for f in figs]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
    return out / "report.md"
