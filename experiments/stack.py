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


from insideout_jax.io.checkpoint import atomic_write_bytes  # noqa: E402
from insideout_jax.io.ply import write_mesh_ply  # noqa: E402
from insideout_jax.reporting.stack import stack_figures, write_stack_report  # noqa: E402
from insideout_jax.stacks.inputs import config_overrides, load_input  # noqa: E402


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


def _save_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def run(args) -> Path:
    import dataclasses

    import jax

    from insideout_jax.stacks import StackConfig, init_stack_model, split_stack, stack_from_volume, train_stack
    from insideout_jax.stacks.evaluate import compare_methods, interpolation_scores, surface_scores
    from insideout_jax.stacks.frames import add_frame_noise, default_splat_count

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
    train = add_frame_noise(kept, args.noise, args.seed + 1000)
    n_splats = args.splats or default_splat_count(train)
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
    comp = compare_methods(inter, surf)
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
    figs = stack_figures(out, held, renders, scores, history, meshes)
    metrics["time_s"]["total"] = time.perf_counter() - t0
    _save_json(out / "metrics.json", metrics)
    write_stack_report(out, metrics, figs)
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
