"""The runner's stages: I/O, progress, timing and the metrics/report skeleton.

Every stage is a function ``stage(ctx) -> None`` that reads its inputs from the object folder or
earlier stages' saved outputs and writes its own output atomically; ``ctx.metrics`` collects the
numbers of ``metrics.json`` (contract: docs/OUTPUTS.md). A stage that this version does not have
yet leaves its fields ``null`` and says so in ``notes``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from insideout_jax.config import PipelineConfig
from insideout_jax.io.checkpoint import atomic_write_bytes

STAGE_ORDER = ("data", "sfm", "rgb", "xray", "fitting", "internal", "visual", "evaluation")


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on (message says what to fix)."""


def _empty_metrics(obj: str, cfg: str) -> dict:
    view = {"psnr": None, "ssim": None}
    section = {"psnr": None, "ssim": None, "piqe": None}
    occ = {"42": {"any": None, "mean": None}, "242": {"any": None, "mean": None}}
    return {
        "object": obj, "config": cfg, "notes": [],
        "stage_seconds": {s: None for s in STAGE_ORDER},
        "heldout_views": {"rgb": dict(view), "xray": dict(view), "unified_rgb": dict(view)},
        "cross_sections": {m: {"train": dict(section), "heldout": dict(section)}
                           for m in ("3dgs", "xgaussian", "insideout")},
        "chamfer_mm": {"none": None, "hierarchical": None, "internal": None},
        "alignment": {s: {"rot_deg": None, "scale_rel": None, "trans_mm": None}
                      for s in ("global", "local", "fine")},
        "volume": {m: {"psnr3d": None, "ssim3d": None} for m in ("fdk", "radiative", "insideout")},
        "occupancy": {m: json.loads(json.dumps(occ)) for m in ("radiative", "insideout")},
        "internal_noise": {"before": None, "after": None},
    }


@dataclasses.dataclass
class RunContext:
    """Everything a stage needs: where things are, the config, and the metrics being filled."""

    object_name: str
    object_dir: Path
    out_dir: Path
    cfg: PipelineConfig
    resume: bool = False
    metrics: dict = dataclasses.field(default=None)

    def __post_init__(self):
        mpath = self.out_dir / "metrics.json"
        if self.resume and mpath.is_file():
            self.metrics = json.loads(mpath.read_text())
        else:
            self.metrics = _empty_metrics(self.object_name, self.cfg.name)

    @property
    def stage_dir(self) -> Path:
        d = self.out_dir / "stages"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def note(self, text: str) -> None:
        if text not in self.metrics["notes"]:
            self.metrics["notes"].append(text)

    def done_marker(self, stage: str) -> Path:
        return self.stage_dir / f"{stage}.done.json"

    def write_metrics(self) -> Path:
        path = self.out_dir / "metrics.json"
        atomic_write_bytes(path, json.dumps(self.metrics, indent=2).encode())
        return path

    def write_report(self) -> Path:
        m = self.metrics
        lines = [f"# InsideOut report — {m['object']} (config `{m['config']}`)", "",
                 "## Stage wall times", "", "| stage | seconds |", "|---|---|"]
        for s in STAGE_ORDER:
            v = m["stage_seconds"].get(s)
            lines.append(f"| {s} | {'—' if v is None else f'{v:.1f}'} |")
        lines += ["", "## Notes", ""] + [f"- {n}" for n in m["notes"]] + [""]
        path = self.out_dir / "report.md"
        atomic_write_bytes(path, "\n".join(lines).encode())
        return path


def stage_data(ctx: RunContext) -> None:
    """Make sure the object folder exists and is valid (generate the built-in skull if absent)."""
    from insideout_jax.data import objects as data_objects

    if not ctx.object_dir.exists():
        if ctx.object_name != "skull":
            raise StageError(f"object folder {ctx.object_dir} does not exist. Give a path to an"
                             " object folder, or make one with `python -m insideout_jax.data"
                             " from-ct VOLUME --spacing DZ DY DX --out DIR`.")
        print(f"[data] generating the built-in skull into {ctx.object_dir}")
        data_objects.make_skull_object(ctx.object_dir, ctx.cfg.skull)
    try:
        summary = data_objects.describe_object(ctx.object_dir)
    except ValueError as e:
        raise StageError(str(e)) from e
    print(f"[data] {summary}")


def stage_sfm(ctx: RunContext) -> None:
    """Run SfM unless the object already has a COLMAP model (rgb/sparse/0)."""
    from insideout_jax.data import objects as data_objects
    from insideout_jax.data.sfm import SfMError

    try:
        info = data_objects.ensure_sfm(ctx.object_dir, ctx.cfg.sfm)
    except (SfMError, ValueError) as e:
        raise StageError(str(e)) from e
    print(f"[sfm] {info}")


_NOT_YET = "stage '{}' is not implemented in this version; its metrics are null"


def _not_yet(name: str) -> Callable[[RunContext], None]:
    def stage(ctx: RunContext) -> None:
        ctx.note(_NOT_YET.format(name))
        print(f"[{name}] not implemented in this version (skipped)")

    return stage


STAGES: dict[str, Callable[[RunContext], None]] = {
    "data": stage_data,
    "sfm": stage_sfm,
    **{s: _not_yet(s) for s in ("rgb", "xray", "fitting", "internal", "visual", "evaluation")},
}


def run_stage(name: str, ctx: RunContext) -> bool:
    """Run one stage (or skip it under --resume when it finished before). Returns True if run."""
    marker = ctx.done_marker(name)
    if ctx.resume and marker.is_file():
        print(f"[{name}] already done (resume)")
        return False
    t0 = time.perf_counter()
    STAGES[name](ctx)
    seconds = time.perf_counter() - t0
    if not any(n == _NOT_YET.format(name) for n in ctx.metrics["notes"]):
        ctx.metrics["stage_seconds"][name] = seconds
        atomic_write_bytes(marker, json.dumps({"seconds": seconds}).encode())
    ctx.write_metrics()
    return True
