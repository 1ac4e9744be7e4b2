"""The biplanar registration experiment: cases → methods → metrics, resumable case by case.

``run_biplanar`` writes into ``out``: ``preop_splats.npz/.ply`` (the pre-operative model, reused on
a rerun), ``cases.json`` (one record per finished case, rewritten atomically after each, so an
interrupted run resumes at the next case; case 0 is always recomputed, for the figure),
``metrics.json``, ``report.md`` and ``biplanar.png``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from insideout_jax.biplanar import methods as mt
from insideout_jax.biplanar.cases import BiplanarConfig, StructureCrop, make_case, structure_crop
from insideout_jax.io.jsonfile import write_json_atomic
from insideout_jax.pipeline.store import load_splats, save_splats
from insideout_jax.registration.metrics import capture_range, mtre, success_rate

__all__ = ["run_biplanar", "summarise", "fresh_records"]


def _case_record(case, crop, name, res, cfg) -> dict:
    if res.get("volume_crop") is not None:  # the learned reconstruction: crop grid, shifted by t_s
        shifted = np.asarray(case.pose, np.float64).copy()
        shifted[3:] -= case.start[3:]
        grid = (crop.data.shape, crop.spacing_zyx, crop.origin_xyz)
        res = dict(res, scores=mt.reconstruction_scores(res["volume_crop"], crop, shifted, cfg, grid))
    rec = dict(method=name, case=case.index, initial_mtre=case.initial_mtre, start_mtre=case.start_mtre,
               mtre=float(mtre(res["pose"], case.pose, crop.centre, crop.targets)),
               seconds=float(res["seconds"]), pose=np.asarray(res["pose"]).tolist())
    if res.get("volume") is not None:
        rec.update({f"recon_{k}": v for k, v in mt.reconstruction_scores(res["volume"], crop, case.pose, cfg).items()})
    if res.get("scores") is not None:
        rec.update({f"recon_{k}": v for k, v in res["scores"].items()})
    if res.get("rounds"):
        rec["mtre_rounds"] = [float(mtre(p, case.pose, crop.centre, crop.targets)) for p in res["rounds"]]
    return rec


def fresh_records(records: list, methods, stamp) -> list:
    """The saved records a run keeps: all, except the learned method's made with other weights
    (``stamp``: the weights' modification time) when this run scores the learned method; a run
    without it keeps its records as they are."""
    if "radgs_learned" not in methods:
        return list(records)
    return [r for r in records if r["method"] != "radgs_learned" or r.get("weights") == stamp]


def _mean_std(x) -> dict:
    a = np.asarray(x, np.float64)
    return dict(mean=float(a.mean()), std=float(a.std())) if a.size else dict(mean=None, std=None)


def summarise(records: list, methods) -> dict:
    """Per method: mTRE, SR, CR (with the per-bin table), RT, reconstruction PSNR/SSIM and, for
    methods that work in rounds, mTRE and SR after each round."""
    out = {}
    for m in methods:
        rs = sorted((r for r in records if r["method"] == m), key=lambda r: r["case"])
        if not rs:
            continue
        ini, fin = [r["start_mtre"] for r in rs], [r["mtre"] for r in rs]
        cr = capture_range(ini, fin)
        out[m] = dict(n_cases=len(rs), mtre_mm=_mean_std(fin), success_rate=success_rate(fin),
                      initial_mtre_mm=_mean_std([r["initial_mtre"] for r in rs]), start_mtre_mm=_mean_std(ini),
                      capture_range_mm=cr["capture_range_mm"], capture_range_censored=cr["censored"],
                      bins=cr["bins"],
                      seconds=_mean_std([r["seconds"] for r in rs]))
        per_round = [r.get("mtre_rounds") or [] for r in rs]
        if len({len(x) for x in per_round}) == 1 and len(per_round[0]) > 1:  # every case, every round
            out[m]["rounds"] = [dict(mtre_mm=_mean_std(col), success_rate=success_rate(col))
                                for col in zip(*per_round, strict=True)]
        if "recon_psnr" in rs[0]:
            out[m]["recon_psnr_db"] = _mean_std([r["recon_psnr"] for r in rs])
            out[m]["recon_ssim"] = _mean_std([r["recon_ssim"] for r in rs])
    return out


def _preop(crop: StructureCrop, cfg, mcfg, out: Path, say):
    path = out / "preop_splats.npz"
    if path.is_file():
        say(f"[biplanar] pre-operative model: reusing {path}")
        return load_splats(out, "preop_splats")
    say(f"[biplanar] fitting the pre-operative splat model to {mcfg.preop_views} DRRs of the CT crop")
    splats = mt.preop_model(crop, cfg, mcfg)
    save_splats(out, "preop_splats", splats)
    return splats


def run_biplanar(volume, spacing_zyx, origin_xyz, out, *, name: str, n_cases: int = 30, seed: int = 0,
                 methods=None, cfg: BiplanarConfig = BiplanarConfig(),
                 mcfg: mt.MethodConfig = mt.MethodConfig(), lcfg=None, centre=None, progress: bool = True,
                 say=print) -> dict:
    """Run (or resume) the experiment on an attenuation volume; returns the metrics dict.

    ``methods``: None runs the three per-case methods, and the learned one when ``out/learned.npz``
    holds finished training (``python -m insideout_jax.biplanar train``); ``lcfg`` is its
    :class:`~insideout_jax.biplanar.learned.LearnedConfig` (default: the default one).

    Raises:
      ValueError: for an unknown method, a crop without bone, or a requested learned method
        without trained networks.
    """
    from insideout_jax.biplanar.learned import LearnedConfig, load_learned, predict

    lcfg = LearnedConfig() if lcfg is None else lcfg
    if methods is None:
        methods = [m for m in mt.METHODS if m != "radgs_learned"]
        if (Path(out) / "learned.npz").is_file():
            methods.append("radgs_learned")
        else:
            say(f"[biplanar] radgs_learned: no trained networks in {out}; train them with"
                " `python -m insideout_jax.biplanar train` (same CT options) to add it")
    from tqdm.auto import tqdm

    from insideout_jax.biplanar.report import write_biplanar_report

    if int(n_cases) < 1:
        raise ValueError(f"--cases must be at least 1, got {n_cases}")
    bad = [m for m in methods if m not in mt.METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}: choose from {list(mt.METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    crop = structure_crop(volume, spacing_zyx, origin_xyz, cfg=cfg, centre=centre)
    say(f"[biplanar] {name}: structure crop {crop.data.shape} at {np.round(crop.centre, 1).tolist()} mm,"
        f" {len(crop.targets)} bone targets (level {crop.bone_level:.4g} /mm), radius {crop.radius:.1f} mm")
    preop = _preop(crop, cfg, mcfg, out, say)
    learned = load_learned(out / "learned.npz", crop, cfg, lcfg) if "radgs_learned" in methods else None
    if learned is not None:  # compile once: the learned method's RT is measured after warm-up
        predict(learned[0], make_case(crop, cfg, seed, 0), crop, cfg, lcfg, learned[1])
    rec_path = out / "cases.json"
    settings = dict(name=name, seed=int(seed), config=dataclasses.asdict(cfg), centre=crop.centre.tolist(),
                    methods_config=repr(mcfg), record_format=2)
    stamp = (out / "learned.npz").stat().st_mtime if (out / "learned.npz").is_file() else None
    records = []
    if rec_path.is_file():
        saved = json.loads(rec_path.read_text())
        if saved.get("settings") == settings:
            records = saved["records"]
        else:
            say(f"[biplanar] {rec_path} was made with other settings: starting afresh")
    records = fresh_records(records, methods, stamp)
    done = {(r["method"], r["case"]) for r in records}
    cases_fig = []
    for k in tqdm(range(int(n_cases)), desc="biplanar cases", disable=not progress):
        case = make_case(crop, cfg, seed, k)
        for m in methods:
            if (m, k) in done and not (k == 0):
                continue
            if m == "render_and_compare":
                res = mt.render_and_compare(case, crop, preop, mcfg)
            elif m == "radgs_per_case":
                res = mt.radgs_per_case(case, crop, preop, cfg, mcfg)
            elif m == "radgs_learned":
                res = predict(learned[0], case, crop, cfg, lcfg, learned[1])
            else:
                res = mt.fdk_then_3d(case, crop, cfg, mcfg)
            if k == 0:
                cases_fig.append((m, res))
            if (m, k) not in done:
                records.append(_case_record(case, crop, m, res, cfg) | ({"weights": stamp} if m == "radgs_learned"
                                                                          else {}))
                done.add((m, k))
                write_json_atomic(rec_path, dict(settings=settings, records=records))
        if k == 0:
            first = case
    metrics = dict(object=name, n_cases=int(n_cases), seed=int(seed), settings=settings,
                   crop=dict(shape=list(crop.data.shape), voxel_mm=cfg.crop_voxel_mm, centre_mm=crop.centre.tolist(),
                             n_targets=len(crop.targets), radius_mm=crop.radius),
                   methods=summarise([r for r in records if r["case"] < int(n_cases)], methods))
    write_json_atomic(out / "metrics.json", metrics)
    write_biplanar_report(out, metrics, crop, first, cases_fig, cfg)
    return metrics
