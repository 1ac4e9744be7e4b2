"""Benchmark of RadGS-Reg's learned training and inference (patient-specific, stage P3).

Per training stage (RecM, RegM, joint) the median seconds of one step (loss, gradient, Adam update,
batch of the configuration) after warm-up; the seconds per DRR pair of the training data; the
projected training time of the configured schedule (pairs + steps, compilation excluded); and the
median seconds of one prediction (RecM → voxelize → RegM passes) after warm-up.

The CT is the Stanford head from ``../shared/data/ct/`` when it is there (the experiment's
options), otherwise a synthetic head-like volume (ellipsoid shell and two dense blocks), so the
script runs anywhere. Each timed repeat is paired with a 1024³ float32 matmul in the same process:
``ratio_to_matmul`` (median of time / matmul time) moves far less with the machine than the
seconds do.

Usage: python benchmarks/bench_biplanar.py [--json] [--repeats 5] [--set FIELD=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from reference_timing import MatmulProbe, paired

from insideout_jax.biplanar import learned as lr
from insideout_jax.biplanar.cases import BiplanarConfig, make_case, structure_crop

STANFORD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct" / "stanford_cthead" / \
    "cthead_z113_y256_x256_uint16.npy"


def load_ct():
    """(name, attenuation [z, y, x] 1/mm, spacing_zyx, origin_xyz)."""
    if STANFORD.is_file():
        from insideout_jax.biplanar.ctinput import load_attenuation

        return load_attenuation(str(STANFORD), None, repo=Path.cwd(), spacing=(2, 1, 1), quantity="HU",
                                offset=1000, flip_z=True)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 96),) * 3, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + (z / 0.9) ** 2)
    vol = np.where(r < 0.9, 0.02, 0.0) + np.where((r > 0.8) & (r < 0.9), 0.03, 0.0)
    vol += np.where((np.abs(x - 0.3) < 0.15) & (np.abs(y) < 0.2) & (np.abs(z + 0.2) < 0.1), 0.04, 0.0)
    vol += np.where((np.abs(x + 0.2) < 0.1) & (np.abs(y - 0.3) < 0.1) & (np.abs(z) < 0.3), 0.04, 0.0)
    return "synthetic", vol.astype(np.float32), (2.0, 2.0, 2.0), (-95.0, -95.0, -95.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="LearnedConfig overrides")
    a = p.parse_args()
    over = dict(kv.split("=", 1) for kv in a.set)

    def typed(k, v):
        kind = type(getattr(lr.LearnedConfig, k))
        return v.lower() in ("1", "true", "yes") if kind is bool else kind(v)

    lcfg = dataclasses.replace(lr.LearnedConfig(), **{k: typed(k, v) for k, v in over.items()})
    name, vol, sp, org = load_ct()
    cfg = BiplanarConfig()
    crop = structure_crop(vol, sp, org, cfg=cfg)
    probe = MatmulProbe()
    lines = []

    n_pairs = 2 * lcfg.batch
    lr.make_samples(crop, cfg, lcfg, 1, seed=lcfg.seed + 1, progress=False)  # warm-up (compilation)
    t0 = time.perf_counter()
    samples = lr.make_samples(crop, cfg, lcfg, n_pairs, seed=lcfg.seed, progress=False)
    pair_s = (time.perf_counter() - t0) / n_pairs
    lines.append(dict(bench="biplanar_drr_pair", object=name, seconds=pair_s))

    st = lr.statics(crop, cfg, lcfg, float(np.percentile(samples.xrays, 99.5)) or 1.0)
    ct = jnp.asarray(crop.data)
    opt = optax.adam(lcfg.lr)
    params = lr.init_params(jax.random.key(0), lcfg, crop.data.shape[0])
    opt_state = opt.init(params)
    batch = tuple(jnp.asarray(x[:lcfg.batch]) for x in (samples.xrays, samples.poses, samples.v_posed,
                                                         samples.pose_res))
    projected = pair_s * lcfg.n_train
    for stage, n_steps in (("rec", lcfg.rec_steps), ("reg", lcfg.reg_steps), ("joint", lcfg.joint_steps)):
        def step(params, opt_state, stage=stage):
            loss, g = jax.value_and_grad(lambda q: lr._losses(stage, st, q, batch, jax.random.key(1), ct))(params)
            up, new = opt.update(g, opt_state, params)
            return optax.apply_updates(params, up), new, loss

        f = jax.jit(step)
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, opt_state))
        compile_s = time.perf_counter() - t0
        pr = paired(lambda f=f: f(params, opt_state), a.repeats, probe)
        sec, ratio = pr.ms_median / 1e3, pr.fields()["ratio_to_matmul"]
        projected += sec * n_steps
        lines.append(dict(bench="biplanar_train_step", stage=stage, object=name, batch=lcfg.batch,
                          anchors=lcfg.anchors_side ** 3, image=lcfg.image, steps=n_steps, seconds=sec,
                          ratio_to_matmul=ratio, first_call_seconds=compile_s))
    lines.append(dict(bench="biplanar_train_projected", object=name, minutes=projected / 60,
                      budget_minutes=30.0, n_train=lcfg.n_train))

    case = make_case(crop, cfg, 0, 0)
    pr = paired(lambda: lr.predict(params, case, crop, cfg, lcfg, st)["pose"], a.repeats, probe)
    sec, ratio = pr.ms_median / 1e3, pr.fields()["ratio_to_matmul"]
    lines.append(dict(bench="biplanar_predict", object=name, reg_passes=lcfg.reg_passes, seconds=sec,
                      ratio_to_matmul=ratio))
    for line in lines:
        print(json.dumps(line) if a.json else "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in line.items()))


if __name__ == "__main__":
    main()
