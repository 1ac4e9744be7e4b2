#!/usr/bin/env python
"""Biplanar X-rays → registered CT (RadGS-Reg): render-and-compare vs RadGS-Reg (per case, learned) vs FDK.

    python experiments/biplanar.py --ct ../shared/data/ct/stanford_cthead/cthead_z113_y256_x256_uint16.npy \
        --spacing 2 1 1 --quantity HU --offset 1000 --flip-z --cases 30
    python experiments/biplanar.py --object skull --cases 30

Writes ``outputs/biplanar/<name>/``: report.md, metrics.json, cases.json (resumed on a rerun),
biplanar.png and the pre-operative splat model. The learned method runs when its networks have
been trained (``python -m insideout_jax.biplanar train`` with the same CT options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from insideout_jax.biplanar.ctinput import add_ct_arguments, attenuation_from_args
    from insideout_jax.biplanar.experiment import run_biplanar
    from insideout_jax.biplanar.methods import METHODS
    from insideout_jax.io.errors import ObjectFolderError

    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    add_ct_arguments(p)
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", nargs="+", choices=METHODS, default=None, help="default: all that can run")
    a = p.parse_args(argv)
    try:
        name, vol, sp, org, out = attenuation_from_args(a, REPO)
        m = run_biplanar(vol, sp, org, out, name=name, n_cases=a.cases, seed=a.seed, methods=a.method,
                         centre=a.centre)
    except (ObjectFolderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, r in m["methods"].items():
        print(f"{k}: mTRE {r['mtre_mm']['mean']:.2f} mm, SR {100 * r['success_rate']:.1f} %, "
              f"CR {r['capture_range_mm']:.0f} mm, RT {r['seconds']['mean']:.2f} s")
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
