"""Registration metrics (RadGS-Reg §3.2 and SEED_SYSTEMS §1.4): mTRE over target points, success
rate (mTRE < 2 mm), and the capture range from 5 mm bins of the initial error."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from insideout_jax.registration.pose import apply_pose

__all__ = ["mtre", "success_rate", "capture_range"]


def mtre(estimate, truth, centre, points) -> np.ndarray:
    """Mean target registration error, mm: mean over points p of ‖T̂(p) − T(p)‖.

    Args:
      estimate, truth: [6] or [B, 6] poses about ``centre``.
      points: [N, 3] target points (e.g. bone-mask voxels), mm.

    Returns:
      [] or [B] float64.
    """
    e = np.asarray(estimate, np.float64)
    t = np.asarray(truth, np.float64)
    p = jnp.asarray(points, jnp.float32)
    a = np.asarray(apply_pose(jnp.asarray(e, jnp.float32), jnp.asarray(centre, jnp.float32), p), np.float64)
    b = np.asarray(apply_pose(jnp.asarray(t, jnp.float32), jnp.asarray(centre, jnp.float32), p), np.float64)
    return np.linalg.norm(a - b, axis=-1).mean(-1)


def success_rate(errors, threshold_mm: float = 2.0) -> float:
    """Fraction of cases with mTRE < ``threshold_mm``."""
    e = np.asarray(errors, np.float64)
    return float(np.mean(e < threshold_mm)) if e.size else float("nan")


def capture_range(initial, final, *, bin_mm: float = 5.0, threshold_mm: float = 2.0,
                  min_rate: float = 0.9) -> dict:
    """Per-bin success of cases binned by initial mTRE, and the capture range.

    CR is the upper edge of the last bin such that it and every bin below it that holds cases
    has a success rate ≥ ``min_rate`` (0 when the first occupied bin fails). When every occupied
    bin passes, CR is only a lower bound (the cases did not start further off): ``censored``.

    Returns:
      dict(bins=[{lo, hi, n, success_rate}], capture_range_mm=float, censored=bool).
    """
    ini, fin = np.asarray(initial, np.float64), np.asarray(final, np.float64)
    if ini.shape != fin.shape:
        raise ValueError(f"initial and final errors differ in shape: {ini.shape} vs {fin.shape}")
    n_bins = int(np.floor(ini.max() / bin_mm)) + 1 if ini.size else 0
    bins, cr, ok = [], 0.0, True
    for k in range(n_bins):
        lo, hi = k * bin_mm, (k + 1) * bin_mm
        sel = (ini >= lo) & (ini < hi)
        rate = success_rate(fin[sel], threshold_mm) if sel.any() else None
        bins.append(dict(lo=lo, hi=hi, n=int(sel.sum()), success_rate=rate))
        if rate is not None:
            ok = ok and rate >= min_rate
            if ok:
                cr = hi
    return dict(bins=bins, capture_range_mm=cr, censored=bool(ok and n_bins > 0))
