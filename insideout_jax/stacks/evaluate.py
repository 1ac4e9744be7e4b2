"""Held-out evaluation of a stack model against the interpolation baselines, and its surfaces.

Every figure here is scored against the **held-out frames of the stack itself** (the acquisition's
own slices, never seen in training) or, for surfaces, against the mesh of the **full-resolution
label mask** on the same z range.

- Interpolation: PSNR (data range 1 = the stack's value range; of the mean squared error over all
  held-out frames, and per frame) and SSIM (valid-window,
  :func:`insideout_jax.metrics.image.ssim_valid`, mean over frames) of the held-out frames, for
  the splat model and for nearest, linear and cubic interpolation of the kept frames along the
  stack axis.
- Surfaces: the mask head voxelized on the full-resolution frame grid → marching cubes at 0.5,
  against marching cubes of the linearly interpolated kept masks on the same grid (the baseline),
  both scored against marching cubes of the full-resolution mask (:func:`surface_metrics`).
"""

from __future__ import annotations

import numpy as np

from insideout_jax.metrics.image import ssim_valid
from insideout_jax.stacks.frames import FrameStack, interpolate_stack
from insideout_jax.stacks.model import StackModel, label_volume, render_frames
from insideout_jax.stacks.surface import mask_surface, surface_metrics

__all__ = ["BASELINES", "compare_methods", "frame_scores", "interpolation_scores", "surface_scores"]

BASELINES = ("nearest", "linear", "cubic")


def frame_scores(pred, ref) -> dict:
    """Scores of frames [M, H, W] against references (range [0, 1]).

    Returns:
      {"psnr": PSNR of the mean squared error over all M frames (the held-out set as one volume;
      finite unless every frame is exact), "psnr_frame_mean": mean of the per-frame PSNRs (None
      when a frame is reproduced exactly, its PSNR being infinite), "ssim": mean SSIM,
      "psnr_per_frame": [M] (None for an exact frame), "ssim_per_frame": [M]}.
    """
    p = np.asarray(pred, np.float32)
    r = np.asarray(ref, np.float32)
    if p.shape != r.shape or p.ndim != 3:
        raise ValueError(f"pred and ref must both be [M, H, W], got {p.shape} and {r.shape}")
    mse = np.mean(np.square(p.astype(np.float64) - r), axis=(1, 2))
    ps = [float(10 * np.log10(1.0 / e)) if e > 0 else None for e in mse]
    ss = [ssim_valid(a, b, data_range=1.0) for a, b in zip(p, r, strict=True)]
    pooled = float(10 * np.log10(1.0 / mse.mean())) if mse.mean() > 0 else None
    return {"psnr": pooled, "psnr_frame_mean": None if None in ps else float(np.mean(ps)),
            "ssim": float(np.mean(ss)), "psnr_per_frame": ps, "ssim_per_frame": ss}


def interpolation_scores(model: StackModel, kept: FrameStack, held: FrameStack, *,
                         cutoff_sigma: float = 4.0) -> tuple[dict, dict]:
    """Scores of the splats and the baselines on the held-out frames.

    Returns:
      (scores {method: frame_scores}, renders {method: [M, H, W]}) with methods "splats",
      "nearest", "linear", "cubic" (cubic only with ≥ 4 kept frames).
    """
    renders = {"splats": np.clip(render_frames(model, kept, held.z, cutoff_sigma=cutoff_sigma), 0.0, None)}
    for m in BASELINES:
        if m == "cubic" and kept.n_frames < 4:
            continue
        renders[m] = interpolate_stack(kept, held.z, method=m)
    return {m: frame_scores(r, held.frames) for m, r in renders.items()}, renders


def surface_scores(model: StackModel, full: FrameStack, kept: FrameStack, label: int, *,
                   cutoff_sigma: float = 4.0, n_points: int = 50_000, seed: int = 0) -> tuple[dict, dict]:
    """Surface metrics of mask ``label``: the splat mask head and linearly interpolated masks vs the
    full-resolution mask, on the frames from the first to the last kept one.

    Returns:
      (metrics {"splats": surface_metrics, "linear_masks": …}, meshes {"reference", "splats",
      "linear_masks": (vertices, faces)}).
    """
    if full.labels is None or kept.labels is None:
        raise ValueError("surface scores need label masks on the full and the kept stack")
    sel = (full.z >= kept.z[0] - 1e-9) & (full.z <= kept.z[-1] + 1e-9)
    z = full.z[sel]
    dz = float(np.mean(np.diff(full.z)))
    spacing = (dz, float(full.spacing_yx[0]), float(full.spacing_yx[1]))
    origin = (float(full.origin_xy[0]), float(full.origin_xy[1]), float(z[0]))
    ref = mask_surface(full.labels[label][sel].astype(np.float32), spacing, origin)
    vol, sp, org = label_volume(model, full, label, dz, float(z[0]), float(z[-1]), cutoff_sigma=cutoff_sigma)
    meshes = {"reference": ref, "splats": mask_surface(vol, sp, org)}
    lin = interpolate_stack(kept, z, method="linear", values=kept.labels[label].astype(np.float32))
    meshes["linear_masks"] = mask_surface(lin, spacing, origin)
    metrics = {k: surface_metrics(meshes[k], ref, n_points=n_points, seed=seed)
               for k in ("splats", "linear_masks")}
    return metrics, meshes


def compare_methods(inter: dict, surf: dict | None = None) -> dict:
    """The report's comparisons, computed from the scores: PSNR differences of the splats against
    linear / cubic interpolation and the folded MedGS model (None where a method is missing or a
    frame is exact), whether the splats beat them, and whether the splats' surface is no farther
    from the reference than the linear masks' (Chamfer and HD95, raw alignment)."""
    def diff(a, b):
        if a not in inter or b not in inter or None in (inter[a]["psnr"], inter[b]["psnr"]):
            return None
        return inter[a]["psnr"] - inter[b]["psnr"]

    comp = {f"splats_minus_{b}_db": diff("splats", b) for b in ("linear", "cubic", "medgs_folded")}
    for b in ("linear", "cubic"):
        d = comp[f"splats_minus_{b}_db"]
        comp[f"splats_beat_{b}"] = d is not None and d > 0
    if surf:
        comp["surface_splats_le_linear_masks"] = {
            k: surf["splats"]["raw"][k] <= surf["linear_masks"]["raw"][k] for k in ("cd", "hd95")}
    return comp

