"""``experiments/run.py`` under an audit hook (used by tests/test_runner.py): every file opened
under an object's ``truth/`` is logged with the stage that opened it, into ``$TRUTH_LOG``."""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments import run  # noqa: E402
from experiments import stages as st  # noqa: E402

LOG, CURRENT = [], {"stage": None}


def _hook(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if f"{os.sep}truth{os.sep}" in path:
            LOG.append([CURRENT["stage"], path])


def _run_stage(name, ctx, _orig=st.run_stage):
    CURRENT["stage"] = name
    try:
        return _orig(name, ctx)
    finally:
        CURRENT["stage"] = None


if __name__ == "__main__":
    sys.addaudithook(_hook)
    st.run_stage = _run_stage
    try:
        rc = run.main(sys.argv[1:])
    finally:
        Path(os.environ["TRUTH_LOG"]).write_text(json.dumps(LOG))
    sys.exit(rc)
