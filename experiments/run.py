#!/usr/bin/env python
"""The InsideOut pipeline on one object: ``python experiments/run.py --object skull``.

Stages (paper Fig. 2): data → sfm → rgb → xray → fitting → internal → visual → evaluation. Each
stage saves its output atomically under ``outputs/<object>/stages/``; ``--resume`` skips the
stages that finished with the same config and inputs. Contract: docs/OUTPUTS.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from experiments import stages as stages_lib  # noqa: E402
from insideout_jax.config import config_to_json, preset  # noqa: E402
from insideout_jax.io.checkpoint import atomic_write_bytes  # noqa: E402
from insideout_jax.io.errors import os_error_message  # noqa: E402

STAGES = stages_lib.STAGE_ORDER


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="InsideOut: fuse RGB photos and X-ray CT of one object into one Gaussian-splat"
                    " model, and evaluate it.")
    p.add_argument("--object", required=True,
                   help="object name (a folder under data/; the built-in 'skull' and 'matryoshka' are"
                        " generated when absent) or a"
                        " path to an object folder")
    p.add_argument("--config", default="cpu", choices=["cpu", "paper", "tiny"],
                   help="preset: 'cpu' (minutes on 2 cores), 'paper' (the paper's settings, GPU),"
                        " or 'tiny' (seconds; for tests, numbers not meaningful)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES),
                   metavar="STAGE", help=f"stages to run (default: all): {' '.join(STAGES)}")
    p.add_argument("--out", default=None, help="output folder (default: outputs/<object>)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the saved output of every stage that finished before")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in the output folder")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of errors in the input too (bugs always show theirs)")
    return p.parse_args(argv)


def check_output_folder(out: Path, args) -> str | None:
    """An error message when ``out`` holds an earlier run's results and the user did not say
    what to do with them (nothing is overwritten silently); None when the run may go on.
    With --overwrite the earlier results are removed first."""
    import shutil

    earlier = sorted(p.name for p in (out / "stages").glob("*.done.json")) if (out / "stages").is_dir() else []
    if (out / "metrics.json").is_file():
        earlier.append("metrics.json")
    if not earlier or args.resume:
        return None
    if args.overwrite:
        shutil.rmtree(out / "stages", ignore_errors=True)
        for name in ("metrics.json", "report.md", "config.json"):
            (out / name).unlink(missing_ok=True)
        return None
    return (f"output folder {out} holds the results of an earlier run ({', '.join(earlier[:4])}"
            f"{', …' if len(earlier) > 4 else ''}): pass --resume to continue it, --overwrite to"
            " replace it, or --out to write elsewhere")


def resolve_object(name: str) -> tuple[str, Path]:
    """(object name, object folder) from a name under data/ or a path."""
    path = Path(name)
    if path.exists() or "/" in name or name.startswith("."):
        return path.resolve().name, path.resolve()
    return name, REPO / "data" / name


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _fail(message: str, exc: BaseException | None, debug: bool) -> int:
    if debug and exc is not None:
        traceback.print_exception(exc)
    print(f"\nerror: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        return _main(args)
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise  # not the machine's: a bug, with its traceback
        return _fail(f"{message}. Finished stages are kept; continue with --resume.", e, args.debug)
    finally:
        signal.signal(signal.SIGTERM, previous[0])  # for callers of main() in-process
        signal.signal(signal.SIGINT, previous[1])


def _main(args) -> int:
    cfg = preset(args.config)
    obj_name, obj_dir = resolve_object(args.object)
    out = Path(args.out) if args.out else REPO / "outputs" / obj_name
    if args.resume and args.overwrite:
        return _fail("--resume and --overwrite exclude each other", None, False)
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} is a file; give a folder", None, False)
    wanted = [s for s in STAGES if s in args.stages]
    try:  # everything the run needs, before any work and before anything is written
        ctx = stages_lib.RunContext(object_name=obj_name, object_dir=obj_dir, out_dir=out, cfg=cfg,
                                    resume=args.resume)
        stages_lib.preflight(ctx, wanted)
    except stages_lib.StageError as e:
        return _fail(str(e), e, args.debug)
    problem = check_output_folder(out, args)
    if problem:
        return _fail(problem, None, False)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.json", config_to_json(cfg).encode())
    print(f"insideout: object '{obj_name}' ({obj_dir}), config '{cfg.name}', output {out}")
    signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's stop: as Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)  # also where a parent shell left SIGINT ignored
    for name in wanted:
        t0 = time.perf_counter()
        try:
            ran = stages_lib.run_stage(name, ctx)
        except stages_lib.StageError as e:
            ctx.write_metrics()
            return _fail(f"in stage '{name}': {e}", e, args.debug)
        except KeyboardInterrupt:
            # every file is written atomically and training checkpoints after every block: what
            # is on disk is consistent, and --resume continues from the last checkpoint
            print(f"\ninterrupted in stage '{name}': finished stages and the last training"
                  f" checkpoint are kept in {out / 'stages'}; continue with the same command and"
                  " --resume", file=sys.stderr)
            return 130
        dt = time.perf_counter() - t0
        if ran:
            print(f"[{name}] done in {dt:.1f} s")
    report = ctx.write_report()
    ctx.write_metrics()
    print(f"\nreport: {report}\nmetrics: {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
