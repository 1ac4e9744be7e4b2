"""Train RadGS-Reg's networks for one CT (patient-specific, stage P3); resumable.

    python -m insideout_jax.biplanar train --ct VOLUME --spacing DZ DY DX --quantity HU --offset 1000 --flip-z
    python -m insideout_jax.biplanar train --object skull [--samples 400] [--rounds 2] [--rec-steps 2000]

Writes ``outputs/biplanar/<name>/``: ``samples.npz`` (the DRR pairs, from another seed stream than
the experiment's cases) and ``learned.npz`` (the weights, checkpointed; a rerun resumes), which
``experiments/biplanar.py`` loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    import numpy as np

    from insideout_jax.biplanar.cases import BiplanarConfig, structure_crop
    from insideout_jax.biplanar.ctinput import add_ct_arguments, attenuation_from_args
    from insideout_jax.biplanar.learned import LearnedConfig, Samples, make_samples, train_learned
    from insideout_jax.io.checkpoint import atomic_write_bytes, checkpoint_meta
    from insideout_jax.io.errors import ObjectFolderError
    from insideout_jax.io.jsonfile import write_json_atomic

    p = argparse.ArgumentParser(prog="python -m insideout_jax.biplanar", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train RecM and RegM on DRR pairs of the CT")
    add_ct_arguments(t)
    t.add_argument("--samples", type=int, default=LearnedConfig.n_train)
    t.add_argument("--rounds", type=int, default=LearnedConfig.rounds,
                   help="RecM → RegM rounds at inference; > 1 also trains on refinement frames (LearnedConfig)")
    t.add_argument("--rec-steps", type=int, default=LearnedConfig.rec_steps,
                   help="RecM's training steps (its own stage, before RegM's and the joint one)")
    a = p.parse_args(argv)
    for name, least in (("rounds", 1), ("samples", 1), ("rec_steps", 1)):
        if getattr(a, name) < least:
            p.error(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(a, name)}")
    repo = Path.cwd()
    try:
        name, vol, sp, org, out = attenuation_from_args(a, repo)
        cfg = BiplanarConfig()
        lcfg = dataclasses.replace(LearnedConfig(), n_train=a.samples, rounds=a.rounds, rec_steps=a.rec_steps)
        crop = structure_crop(vol, sp, org, cfg=cfg, centre=a.centre)
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = out / "samples.npz"
        if path.is_file() and len(np.load(path)["xrays"]) == lcfg.n_train:
            with np.load(path) as z:
                samples = Samples(*(z[f.name] for f in dataclasses.fields(Samples)))
        else:
            samples = make_samples(crop, cfg, lcfg, lcfg.n_train, seed=lcfg.seed)
            import io

            buf = io.BytesIO()
            np.savez(buf, **{f.name: getattr(samples, f.name) for f in dataclasses.fields(Samples)})
            atomic_write_bytes(path, buf.getvalue())
        t_samples = time.perf_counter() - t0
        train_learned(crop, samples, cfg, lcfg, out / "learned.npz")
        meta = checkpoint_meta(out / "learned.npz")
        hist = meta["history"]
        per_stage = {st: [h for h in hist if h[0] == st] for st in ("rec", "reg", "joint")}
        timing = dict(samples_seconds_this_run=t_samples, training_seconds=meta["seconds"],
                      steps={k: len(v) for k, v in per_stage.items()},
                      final_loss={k: (v[-1][2] if v else None) for k, v in per_stage.items()},
                      config=meta["config"])
        write_json_atomic(out / "training.json", timing)
        print(f"training: {meta['seconds'] / 60:.1f} min in steps; DRR pairs {t_samples:.0f} s this run")
    except (ObjectFolderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"weights: {out / 'learned.npz'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
