"""The shared outer training loop: jitted blocks of iterations, host work between blocks,
atomic checkpoints, a progress bar, and a clear stop on a non-finite loss.

A trainer supplies
- ``run_block(state, n) -> (state, losses [n])``: n iterations inside one jitted ``lax.scan``;
- ``after_block(state) -> state``: host-side work (densification, schedules), may change capacity;
- ``template(capacity) -> state``: a state of the right structure (any values), to restore a
  checkpoint into.

The state is a dict pytree with at least ``step`` (host int) and ``params`` ({field: [C, ...]}).
After every block the whole state is saved atomically (``save_checkpoint``), so a run killed at any
moment loses at most one block; :func:`run_training` resumes from the checkpoint when it exists.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from insideout_jax.io.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint

__all__ = ["NonFiniteLossError", "keep_snapshots", "load_snapshot", "run_training"]

_SNAPSHOTS: list = []  # (folder, fractions, {label: runs so far}) of the active keep_snapshots


@contextlib.contextmanager
def keep_snapshots(folder: str | Path, fractions=(0.0, 0.5, 1.0)):
    """Within this block every :func:`run_training` also keeps its splats (``params`` and
    ``active``) at the first block that reaches each fraction of its iterations (0: the end of
    the first block), as ``folder/<label>.step<N>.npz`` with meta ``desc, step, n_iters``;
    read them with :func:`load_snapshot`. A later run with the same label in the same block
    writes ``<label>.run<k>.step<N>.npz`` (k = 2, 3, …), never over an earlier run's files.
    For benchmarks and inspection of training states."""
    fr = tuple(float(f) for f in fractions)
    if not fr or min(fr) < 0 or max(fr) > 1:
        raise ValueError(f"snapshot fractions must lie in [0, 1], got {fractions}")
    entry = (Path(folder), fr, {})
    entry[0].mkdir(parents=True, exist_ok=True)
    _SNAPSHOTS.append(entry)
    try:
        yield entry[0]
    finally:
        _SNAPSHOTS.remove(entry)


def _label(desc: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", desc).strip("_").lower() or "train"


def _snapshot_names(desc: str) -> list:
    """One file stem per active :func:`keep_snapshots` block for a run starting now."""
    stems = []
    for _, _, runs in _SNAPSHOTS:
        label = _label(desc)
        runs[label] = runs.get(label, 0) + 1
        stems.append(label if runs[label] == 1 else f"{label}.run{runs[label]}")
    return stems


def _save_snapshots(state: dict, before: int, n_iters: int, desc: str, stems: list) -> None:
    step = int(state["step"])
    for (folder, fractions, _), stem in zip(_SNAPSHOTS, stems, strict=True):
        if any(before < min(max(1, math.ceil(f * n_iters)), n_iters) <= step for f in fractions):
            meta = {"desc": desc, "step": step, "n_iters": n_iters}
            save_checkpoint(folder / f"{stem}.step{step:06d}.npz",
                            {"params": state["params"], "active": state["active"]}, meta)


def load_snapshot(path: str | Path) -> tuple[dict, np.ndarray, dict]:
    """(params {field: array}, active, meta) of a :func:`keep_snapshots` file."""
    path = Path(path)
    with np.load(path) as z:
        params = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("params/")}
        if "active" not in z.files or not params:
            raise ValueError(f"{path}: not a training snapshot (no 'params/*' and 'active' entries)")
        active = z["active"]
    return params, active, checkpoint_meta(path)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept (message says stage and step)."""


def _capacity(state: dict) -> int:
    return int(np.shape(state["params"]["means"])[0])


def run_training(state: dict, *, n_iters: int, block: int,
                 run_block: Callable, after_block: Callable, template: Callable,
                 checkpoint_path: str | Path | None = None, desc: str = "train",
                 progress: bool | Callable = True,
                 log_every_block: Callable | None = None) -> tuple[dict, dict]:
    """Run ``n_iters`` iterations in blocks; resume from ``checkpoint_path`` if it exists.

    ``progress``: True for a progress bar, False for none, or a callable
    ``progress(desc, step, n_iters, loss)`` called after every block instead of the bar.

    Returns:
      (state, history) with history = dict(step=[...], loss=[...], seconds=[...]) per block (mean
      loss of the block), including blocks of an earlier, interrupted run when resumed, and
      ``densify_skipped`` (densification candidates left out at the capacity cap) for trainers
      whose state counts them.
    """
    history = {"step": [], "loss": [], "seconds": []}
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.is_file():
        meta = checkpoint_meta(ckpt)
        like = {k: v for k, v in template(int(meta["capacity"])).items() if k != "step"}
        loaded, meta = load_checkpoint(ckpt, like)
        state = jax.tree_util.tree_map(jax.numpy.asarray, loaded) | {"step": int(meta["step"])}
        history = meta.get("history", history)
    t_start = time.perf_counter() - (history["seconds"][-1] if history["seconds"] else 0.0)
    stems = _snapshot_names(desc) if _SNAPSHOTS else []
    report = progress if callable(progress) else None
    bar = tqdm(total=n_iters, initial=int(state["step"]), desc=desc,
               disable=report is not None or not progress,
               unit="it", dynamic_ncols=True)
    try:
        while int(state["step"]) < n_iters:
            n = min(block, n_iters - int(state["step"]))
            new_state, losses = run_block(state, n)
            losses = np.asarray(losses)
            if not np.all(np.isfinite(losses)):
                bad = int(state["step"]) + int(np.argmin(np.isfinite(losses)))
                where = f" (last good checkpoint: {ckpt})" if ckpt is not None else ""
                raise NonFiniteLossError(f"{desc}: non-finite loss at iteration {bad}{where}")
            before, new_state["step"] = int(state["step"]), int(state["step"]) + n
            state = after_block(new_state)
            history["step"].append(int(state["step"]))
            history["loss"].append(float(losses.mean()))
            history["seconds"].append(time.perf_counter() - t_start)
            if ckpt is not None:
                meta = {"step": int(state["step"]), "capacity": _capacity(state), "history": history}
                save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "step"}, meta)
            if stems:
                _save_snapshots(state, before, n_iters, desc, stems)
            if "skipped" in state:  # densification candidates left out at the capacity cap
                history["densify_skipped"] = int(state["skipped"])
            bar.update(n)
            post = {"loss": f"{history['loss'][-1]:.4f}", "n": _capacity(state)}
            if history.get("densify_skipped"):
                post["skipped"] = history["densify_skipped"]
            bar.set_postfix(**post)
            if report is not None:
                report(desc, int(state["step"]), n_iters, history["loss"][-1])
            if log_every_block is not None:
                log_every_block(state, history)
    finally:
        bar.close()
    if not math.isfinite(history["loss"][-1] if history["loss"] else 0.0):
        raise NonFiniteLossError(f"{desc}: non-finite loss")
    return state, history
