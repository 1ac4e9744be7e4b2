#!/usr/bin/env python
"""MedGS on a slice stack: fit splats to every K-th frame, render the frames between, compare.

    python experiments/stack.py --volume ../shared/data/ct/stanford_cthead/cthead_z113_y256_x256_uint16.npy \
        --spacing 2 1 1 --label-thresholds 1400 600 --keep-every 2

Inputs: ``--volume`` (npy, tif(+json), mat, raw; ``--axes xyz`` for arrays stored [x, y, z]),
``--dicom DIR`` (spacing from the files) or ``--frames DIR`` (PNG/TIFF frames in name order).
Labels: ``--labels PATH`` (a volume or a folder of mask frames) or ``--label-thresholds BONE BODY``
(bone and body of a head CT by thresholds and connected components,
:func:`insideout_jax.stacks.head_labels`). The first label's surface is evaluated.

Outputs in ``--out`` (default ``outputs/stack/<name>_k<K>[_noise<σ>]``): ``metrics.json``,
``report.md``, figures (``heldout.png``, ``psnr_per_frame.png``, ``surface.png``, ``training.png``),
the surface meshes (``surface_*.ply``) and the model checkpoint (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from insideout_jax.io.checkpoint import atomic_write_bytes  # noqa: E402
from insideout_jax.io.importers import load_volume  # noqa: E402
from insideout_jax.io.ply import write_mesh_ply  # noqa: E402

METHODS = ("splats", "medgs_folded", "linear", "cubic", "nearest")


def parse_args(argv=None) -> argparse.Namespace:
    from insideout_jax.stacks import StackConfig

    d = StackConfig()
    p = argparse.ArgumentParser(description="MedGS: Gaussian splats fitted to every K-th frame of a slice "
                                            "stack, evaluated on the frames between.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--volume", help="volume file (.npy, .tif/.tiff, .mat, .raw/.bin)")
    src.add_argument("--dicom", help="folder of one DICOM series (spacing read from the files)")
    src.add_argument("--frames", help="folder of image frames, in file-name order")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("DZ", "DY", "DX"),
                   help="voxel spacing in mm, for files that do not record it")
    p.add_argument("--axes", default="zyx", help="axis order of the stored array, e.g. xyz (default zyx)")
    p.add_argument("--axis-flip", default="", help="axes to reverse after reordering, e.g. z")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--labels", help="label volume file or folder of mask frames (nonzero = inside)")
    lab.add_argument("--label-thresholds", nargs=2, type=float, metavar=("BONE", "BODY"),
                     help="bone and body masks of a head CT from these raw-value thresholds")
    p.add_argument("--keep-every", type=int, required=True, help="train on every K-th frame (K >= 2)")
    p.add_argument("--downsample", type=int, default=1, help="in-plane block averaging factor (default 1)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="Gaussian noise added to the kept frames, as a fraction of the value range")
    p.add_argument("--splats", type=int, default=None,
                   help="number of Gaussians (default: one per 8 voxels of the kept frames above 10 %% of "
                        "the value range)")
    p.add_argument("--iterations", type=int, default=d.iterations, help=f"iterations ({d.iterations})")
    p.add_argument("--folded", action="store_true",
                   help="also train MedGS's own route (time-conditioned flat Gaussians, alpha compositing)")
    p.add_argument("--folded-degree", type=int, default=2, help="drift polynomial degree of --folded (2)")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="override StackConfig fields, e.g. --set lambda_seg=4 cutoff_sigma=5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return p.parse_args(argv)


def config_overrides(items) -> dict:
    """{field: value} from FIELD=VALUE strings, typed like StackConfig's defaults."""
    import dataclasses

    from insideout_jax.stacks import StackConfig

    fields = {f.name: f for f in dataclasses.fields(StackConfig)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields or name in ("n_splats", "iterations", "seed"):
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{sorted(set(fields) - {'n_splats', 'iterations', 'seed'})} "
                             "(--splats, --iterations and --seed set the others)")
        kind = type(getattr(StackConfig(), name))
        try:
            out[name] = kind(value)
        except ValueError:
            raise ValueError(f"--set {item!r}: {name} takes a {kind.__name__}") from None
    return out


def load_input(args):
    """(raw [Z, Y, X] float32, spacing_zyx, name, labels [L, Z, Y, X] or None, label names)."""
    from insideout_jax.stacks import head_labels, read_frame_folder, read_label_folder

    if args.frames:
        if args.spacing is None:
            raise ValueError("--frames needs --spacing DZ DY DX (image files carry no spacing)")
        st = read_frame_folder(args.frames, spacing_zyx=args.spacing)
        lo, hi = st.value_range
        raw, spacing, name = st.frames * (hi - lo) + lo, tuple(args.spacing), Path(args.frames).name
    else:
        path = args.volume or args.dicom
        recorded = args.dicom or Path(path).with_suffix(".json").is_file()  # the file says what it holds
        vol = load_volume(path, spacing_zyx=args.spacing, axes=args.axes, quantity=None if recorded else "density")
        raw, spacing, name = vol.data, vol.spacing_zyx, Path(path).stem
    for ax in args.axis_flip:
        if ax not in "zyx":
            raise ValueError(f"--axis-flip takes letters of zyx, got {args.axis_flip!r}")
        raw = np.flip(raw, "zyx".index(ax))
    labels, names = None, ()
    if args.labels:
        lp = Path(args.labels)
        if lp.is_dir():
            labels = read_label_folder(lp, raw.shape[0])[None]
        else:
            lv = load_volume(lp, spacing_zyx=spacing, axes=args.axes, quantity="density").data
            for ax in args.axis_flip:
                lv = np.flip(lv, "zyx".index(ax))
            labels = (lv != 0)[None]
        names = (lp.stem,)
        if labels.shape[1:] != raw.shape:
            raise ValueError(f"--labels {lp}: shape {labels.shape[1:]} differs from the stack's {raw.shape}")
    f = int(args.downsample)
    if f < 1:
        raise ValueError(f"--downsample must be >= 1, got {f}")
    if f > 1:
        z, y, x = raw.shape
        y, x = y // f * f, x // f * f
        raw = raw[:, :y, :x].reshape(z, y // f, f, x // f, f).mean((2, 4))
        if labels is not None:
            labels = labels[:, :, :y, :x].reshape(len(labels), z, y // f, f, x // f, f).mean((3, 5)) >= 0.5
        spacing = (spacing[0], spacing[1] * f, spacing[2] * f)
        name = f"{name}_ds{f}"
    if args.label_thresholds:
        labels, names = head_labels(raw, bone=args.label_thresholds[0], body=args.label_thresholds[1])
    return np.ascontiguousarray(raw, np.float32), tuple(float(s) for s in spacing), name, labels, names


def _save_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def figures(out: Path, held, renders, scores, history, meshes) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    fig.savefig(out / "heldout.png", dpi=90)
    plt.close(fig)
    made.append("heldout.png")

    fig, a = plt.subplots(figsize=(7, 3.2))
    for m in methods:
        ps = [np.nan if v is None else v for v in scores[m]["psnr_per_frame"]]
        a.plot(held.index, ps, ".-", label=f"{m} ({scores[m]['psnr']:.2f} dB)", lw=1)
    a.set_xlabel("held-out frame index")
    a.set_ylabel("PSNR (dB) vs the held-out frame")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "psnr_per_frame.png", dpi=100)
    plt.close(fig)
    made.append("psnr_per_frame.png")

    fig, a = plt.subplots(figsize=(6, 3.2))
    a.semilogy(history["step"], history["loss"])
    a.set_xlabel("iteration")
    a.set_ylabel("training loss (block mean)")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=100)
    plt.close(fig)
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
        fig.savefig(out / "surface.png", dpi=100)
        plt.close(fig)
        made.append("surface.png")
    return made


def _ordinal(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def report(out: Path, m: dict, figs: list[str]) -> None:
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


def run(args) -> Path:
    import dataclasses

    import jax

    from insideout_jax.stacks import StackConfig, init_stack_model, split_stack, stack_from_volume, train_stack
    from insideout_jax.stacks.evaluate import interpolation_scores, surface_scores

    t0 = time.perf_counter()
    raw, spacing, name, labels, names = load_input(args)
    full = stack_from_volume(raw, spacing, labels=labels, label_names=names)
    kept, held = split_stack(full, args.keep_every)
    suffix = f"_noise{args.noise:g}" if args.noise > 0 else ""
    out = Path(args.out) if args.out else REPO / "outputs" / "stack" / f"{name}_k{args.keep_every}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.npz"
    for c in (ckpt, out / "folded.npz", out / "metrics.json"):
        if c.exists() and not args.resume:
            raise ValueError(f"{c} exists from an earlier run: pass --resume to continue it, or another --out")
    train = kept
    if args.noise > 0:
        rng = np.random.default_rng(args.seed + 1000)
        train = dataclasses.replace(kept, frames=(kept.frames + rng.normal(0, args.noise, kept.frames.shape)
                                                  ).astype(np.float32))
    n_splats = args.splats or max(4, int(np.count_nonzero(train.frames > 0.1) / 8))
    cfg = StackConfig(n_splats=n_splats, iterations=args.iterations, seed=args.seed, **config_overrides(args.set))
    print(f"stack: {name} {raw.shape} spacing {spacing} mm; training on {kept.n_frames} frames, "
          f"{held.n_frames} held out; labels {list(names) or 'none'}; output {out}")
    model = init_stack_model(jax.random.key(cfg.seed), train, cfg)
    t1 = time.perf_counter()
    model, history = train_stack(jax.random.key(cfg.seed + 1), model, train, cfg, checkpoint_path=ckpt)
    t2 = time.perf_counter()
    print("evaluating held-out frames …")
    # baselines interpolate the same (possibly noisy) frames the splats were trained on
    scores, renders = interpolation_scores(model, train, held, cutoff_sigma=cfg.cutoff_sigma)
    t_folded = None
    if args.folded:
        from insideout_jax.stacks.evaluate import frame_scores
        from insideout_jax.stacks.folded import init_folded_model, render_folded_frames, train_folded

        tf = time.perf_counter()
        fm = init_folded_model(jax.random.key(cfg.seed), train, cfg, degree=args.folded_degree)
        fm, _ = train_folded(jax.random.key(cfg.seed + 1), fm, train, cfg, checkpoint_path=out / "folded.npz")
        renders["medgs_folded"] = render_folded_frames(fm, train, held.z)
        scores["medgs_folded"] = frame_scores(renders["medgs_folded"], held.frames)
        t_folded = time.perf_counter() - tf
    surf, meshes = None, None
    if labels is not None:
        print(f"surfaces of '{names[0]}' …")
        metrics, meshes = surface_scores(model, full, kept, 0, cutoff_sigma=cfg.cutoff_sigma)
        surf = dict(metrics, label=names[0])
        for k, (v, f) in meshes.items():
            write_mesh_ply(out / f"surface_{k}.ply", v, f)
    t3 = time.perf_counter()
    inter = {k: {f: v[f] for f in ("psnr", "psnr_frame_mean", "ssim", "psnr_per_frame")}
             for k, v in scores.items()}
    def diff(a, b):
        return None if a not in inter or b not in inter or None in (inter[a]["psnr"], inter[b]["psnr"]) \
            else inter[a]["psnr"] - inter[b]["psnr"]

    comp = {"splats_minus_linear_db": diff("splats", "linear"), "splats_minus_cubic_db": diff("splats", "cubic"),
            "splats_minus_medgs_folded_db": diff("splats", "medgs_folded")}
    comp["splats_beat_linear"] = comp["splats_minus_linear_db"] is not None and comp["splats_minus_linear_db"] > 0
    comp["splats_beat_cubic"] = comp["splats_minus_cubic_db"] is not None and comp["splats_minus_cubic_db"] > 0
    if surf:
        comp["surface_splats_le_linear_masks"] = {
            k: surf["splats"]["raw"][k] <= surf["linear_masks"]["raw"][k] for k in ("cd", "hd95")}
    metrics = {
        "input": {"name": name, "shape_zyx": list(raw.shape), "shape_hw": list(full.shape_hw),
                  "spacing_zyx": list(spacing), "value_range": list(full.value_range),
                  "keep_every": args.keep_every, "kept_frames": kept.n_frames, "held_frames": held.n_frames,
                  "noise": args.noise, "seed": args.seed, "labels": list(names)},
        "config": dataclasses.asdict(cfg),
        "interpolation": inter, "comparison": comp, "surface": surf,
        "time_s": {"init": t1 - t0, "train": t2 - t1, "evaluate": t3 - t2, "train_medgs_folded": t_folded,
                   "total": time.perf_counter() - t0},
    }
    figs = figures(out, held, renders, scores, history, meshes)
    metrics["time_s"]["total"] = time.perf_counter() - t0
    _save_json(out / "metrics.json", metrics)
    report(out, metrics, figs)
    print("held-out PSNR: " + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in inter.items())
          + f" dB\nreport: {out / 'report.md'}")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
