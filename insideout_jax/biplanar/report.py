"""``report.md`` and ``biplanar.png`` of the biplanar registration experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from insideout_jax.biplanar.cases import BiplanarConfig, field_grid
from insideout_jax.biplanar.learned import trained_config
from insideout_jax.biplanar.methods import registered_ct
from insideout_jax.io.checkpoint import atomic_write_bytes

__all__ = ["write_biplanar_report", "METHOD_LABELS"]

METHOD_LABELS = {
    "render_and_compare": "render-and-compare (2D/3D, DiffPose-style)",
    "radgs_per_case": "RadGS-Reg per case (two-view radiative recon + 3D/3D)",
    "fdk_then_3d": "FDK of the two views + 3D/3D",
    "radgs_learned": "RadGS-Reg learned (feed-forward: RecM, then RegM iterated)",
}


def _ms(d, scale=1.0, digits=2) -> str:
    if d is None or d.get("mean") is None:
        return "–"
    return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"


def _cr(r: dict) -> str:
    if r.get("capture_range_censored"):
        return f"≥ {r['capture_range_mm']:.0f}"
    return f"0–{r['capture_range_mm']:.0f}" if r["capture_range_mm"] > 0 else "0 (first bin < 90 %)"


def _initial(metrics: dict) -> str:
    r = next(iter(metrics["methods"].values()), None)
    if r is None:
        return "no cases"
    return (f"identity mTRE {_ms(r['initial_mtre_mm'], digits=1)} mm, start mTRE {_ms(r['start_mtre_mm'], digits=1)}"
            " mm")


def _comparison(methods: dict) -> list:
    lines = []
    if "render_and_compare" not in methods:
        return lines
    base = methods["render_and_compare"]
    for m in ("radgs_per_case", "radgs_learned", "fdk_then_3d"):
        if m not in methods:
            continue
        r = methods[m]
        def verdict(a, b):
            return "beats" if a > b else ("ties with" if a == b else "does not beat")

        sr = verdict(r["success_rate"], base["success_rate"])
        cr = verdict(r["capture_range_mm"], base["capture_range_mm"])
        lines.append(f"- {METHOD_LABELS[m]} {sr} render-and-compare on success rate "
                     f"({100 * r['success_rate']:.1f} % vs {100 * base['success_rate']:.1f} %) and {cr} it on "
                     f"capture range ({r['capture_range_mm']:.0f} vs {base['capture_range_mm']:.0f} mm).")
    return lines


def _learned_note(out: Path, methods: dict) -> list:
    """What the learned method was trained on and for how long (``training.json`` of the training
    command)."""
    if "radgs_learned" not in methods:
        return []
    import json

    line = ("- RadGS-Reg learned is trained on DRR pairs of this CT under poses from another seed stream than the"
            " cases above (P3); no test case is seen in training, and RT excludes the one-time compilation.")
    path = out / "training.json"
    if path.is_file():
        t = json.loads(path.read_text())
        steps = ", ".join(f"{k} {v}" for k, v in t["steps"].items())
        line += f" Training: {t['training_seconds'] / 60:.1f} min of steps ({steps}) on this machine."
        c = trained_config(t.get("config", ""))
        if c.get("lambda_volume", 0) > 0:
            line += (f" RecM's loss adds {c['lambda_volume']:g} × the L1 distance of its voxelized field to each"
                     " training pair's posed CT (3-D supervision, as the released code's Chamfer term to a fitted"
                     " model; not in the paper's Eq. 2).")
        if c.get("pixel_aligned"):
            line += " Its Gaussian head reads pixel-aligned features at each anchor's projections (not in the paper)."
        if c.get("rounds", 1) > 1:
            line += (f" RecM → RegM runs in {c['rounds']} rounds, each later one on the same X-rays with the views"
                     " moved by the inverse of the estimate so far; for it the networks also train on a copy of every"
                     f" pair in such a frame, off the true pose by U(±{c.get('refine_rot_deg', float('nan')):g}°) ×"
                     f" U(±{c.get('refine_trans_mm', float('nan')):g} mm) (not in the paper).")
    return ["", line]


def _window(img, margin: int) -> tuple:
    """Slices around the pixels above 5 % of the image's maximum, with a margin (the whole image
    when nothing is above)."""
    ys, xs = np.nonzero(img > 0.05 * img.max()) if img.max() > 0 else ((), ())
    if len(ys) == 0:
        return (slice(None), slice(None))
    return (slice(max(ys.min() - margin, 0), ys.max() + margin + 1),
            slice(max(xs.min() - margin, 0), xs.max() + margin + 1))


def _figure(path: Path, crop, case, results, cfg: BiplanarConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape, _, _ = field_grid(cfg, crop.centre)
    truth = registered_ct(crop, case.pose, cfg)
    k = int(np.argmax(truth.sum((1, 2))))  # the axial slice with the most of the structure
    panels = [("X-ray 1 (AP)", case.projections[0], None), ("X-ray 2 (lateral)", case.projections[1], None)]
    for m, res in results:
        img = res["volume"][k] if res.get("volume") is not None else truth[k]
        what = "reconstruction" if res.get("volume") is not None else "CT at the true pose"
        panels.append((f"{METHOD_LABELS[m].split(' (')[0]}\n{what}; contour: CT at its pose", img,
                       registered_ct(crop, res["pose"], cfg)[k]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8))
    for ax, (title, img, contour) in zip(np.atleast_1d(axes), panels, strict=True):
        ref = truth[k] if contour is not None else img
        win = _window(ref, 6 if contour is not None else 8)
        img = img[win]
        contour = None if contour is None else contour[win]
        ax.imshow(img, cmap="gray", origin="lower")
        if contour is not None:
            ax.contour(contour, levels=[crop.bone_level], colors="tab:orange", linewidths=0.8)
            ax.contour(truth[k][win], levels=[crop.bone_level], colors="tab:cyan", linewidths=0.6, linestyles="--")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"case 0 (start mTRE {case.start_mtre:.1f} mm); orange: registered CT, cyan dashed: "
                 "true pose; axial slice of the C-arm field", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_biplanar_report(out: Path, metrics: dict, crop, case, results, cfg: BiplanarConfig) -> Path:
    """Write ``report.md`` (and ``biplanar.png``) from the metrics of :func:`run_biplanar`."""
    out = Path(out)
    _figure(out / "biplanar.png", crop, case, results, cfg)
    ms = metrics["methods"]
    lines = [f"# Biplanar X-rays → registered CT: {metrics['object']}", "",
             "## Regime", "",
             f"Patient-specific (RadGS-Reg stage P3 only): the intra-operative X-rays are simulated DRRs of the same"
             f" CT that is registered, of the cropped structure only ({cfg.crop_mm:.0f} mm cube at"
             f" {cfg.crop_voxel_mm:g} mm, centred at {np.round(crop.centre, 1).tolist()} mm, {len(crop.targets)}"
             f" bone voxels as mTRE targets), with Poisson noise ({cfg.photons:.0e} photons) and read noise"
             f" ({cfg.read_noise:g} counts). Head anatomy instead of the paper's spine. {metrics['n_cases']} cases"
             f" from seed {metrics['seed']}: poses U[−{cfg.max_rot_deg:g}°, {cfg.max_rot_deg:g}°] (Euler ZYX) ×"
             f" U[−{cfg.max_trans_mm:g}, {cfg.max_trans_mm:g}] mm per axis about the crop centre; AP and lateral"
             f" C-arm views perturbed by U(±{cfg.perturb_deg:g}°) in azimuth and tilt; DSD {cfg.dsd:g} mm,"
             f" DSO {cfg.dso:g} mm, {cfg.n_detector}² pixels of {cfg.pixel_mm:.2f} mm (paper: 976²).",
             "Every method starts from the same start pose, computed from the X-rays alone: the translation that"
             " takes the CT's attenuation centroid to the centroid triangulated from the two X-rays, with 7"
             " rotation starts (identity, ±15° about each axis). The capture range bins cases by the mTRE of that"
             " start (identity rotation); the identity pose itself is further off"
             f" ({_initial(metrics)}). Reconstructions are scored against the CT crop (reference: CT) in the"
             " pose-corrected frame, both min–max normalised.", "",
             "## Results", "",
             "| method | recon PSNR dB (vs CT) | recon SSIM % (vs CT) | mTRE mm | CR mm | SR % | RT s |",
             "|---|---|---|---|---|---|---|"]
    for m, r in ms.items():
        lines.append(f"| {METHOD_LABELS[m]} | {_ms(r.get('recon_psnr_db'))} | {_ms(r.get('recon_ssim'), 100, 1)} |"
                     f" {_ms(r['mtre_mm'])} | {_cr(r)} | {100 * r['success_rate']:.1f} |"
                     f" {_ms(r['seconds'], 1, 1 if r['seconds']['mean'] >= 1 else 3)} |")
    lines += ["", "Success: mTRE < 2 mm. CR: the upper edge of the last 5 mm bin of start mTRE up to which every"
              " occupied bin has SR ≥ 90 % (≥: every occupied bin passed, so the cases bound it from below)."
              " RT: wall time per case on this machine (2 CPU cores), pre-operative"
              " model excluded (fitted once per CT).", ""]
    lines += _comparison(ms)
    rounds = [f"{METHOD_LABELS[m].split(' (')[0]} " + " → ".join(
        f"{r['mtre_mm']['mean']:.2f} mm / {100 * r['success_rate']:.0f} %" for r in ms[m]["rounds"])
        for m in ms if ms[m].get("rounds")]
    if rounds:
        lines += ["", "Mean mTRE / SR after each round: " + "; ".join(rounds) + "."]
    lines += _learned_note(out, ms)
    names = list(ms)
    lines += ["", "### Success rate per bin of start mTRE", "",
              "| start mTRE mm | cases | " + " | ".join(METHOD_LABELS[m].split(" (")[0] for m in names) + " |",
              "|---|---|" + "---|" * len(names)]
    n_bins = max(len(ms[m]["bins"]) for m in names) if names else 0
    for b in range(n_bins):
        row = [ms[m]["bins"][b] if b < len(ms[m]["bins"]) else None for m in names]
        first = next(x for x in row if x is not None)
        cells = ["–" if (x is None or x["success_rate"] is None) else f"{100 * x['success_rate']:.0f} %" for x in row]
        lines.append(f"| {first['lo']:.0f}–{first['hi']:.0f} | {first['n']} | " + " | ".join(cells) + " |")
    lines += ["", "![case 0](biplanar.png)", ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
