"""The X-Gaussian baseline (Cai et al., ECCV 2024): 3DGS trained on the X-ray projections.

What makes it X-Gaussian and not the pipeline's radiative model (:mod:`insideout_jax.train.xray`):
the splats are alpha-composited front to back from the source (the RGB tile rasterizer, through
the exact cone-beam pinholes of :mod:`insideout_jax.render.xgaussian`), each with one
view-independent intensity (SH degree 0) instead of a density integrated along the ray. The rest is
X-Gaussian's recipe: ACUI initialisation (centres uniform in the scanned cuboid,
:func:`~insideout_jax.train.xray.acui_points`; with the radiative model's seed and an ACUI start,
both draw the same centres), 3DGS's per-parameter Adam rates, densification and opacity reset, and the loss
(1 − λs)·L1 + λs·(1 − SSIM), λs = 0.2, on projections scaled to [0, 1].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from insideout_jax.cameras import XrayGeometry
from insideout_jax.render.xgaussian import render_xgaussian, to_pinhole_images, xray_pinholes
from insideout_jax.splats import RGBSplats
from insideout_jax.train.rgb import RGBTrainConfig, train_rgb
from insideout_jax.train.xray import acui_points, checked_projections, scan_cuboid, score_projections

__all__ = ["XGaussianConfig", "train_xgaussian", "evaluate_xgaussian"]


@dataclasses.dataclass(frozen=True)
class XGaussianConfig:
    """X-Gaussian training constants.

    Attributes:
      train: the 3DGS constants (X-Gaussian keeps 3DGS's; the paper trains 5k iterations);
        ``sh_degree`` must be 0 (a view-independent intensity).
      n_init: ACUI points.
    """

    train: RGBTrainConfig = RGBTrainConfig(iterations=5000, sh_degree=0, densify_until=4000,
                                           position_lr_steps=5000)
    n_init: int = 20_000


def train_xgaussian(projections: np.ndarray, geometry: XrayGeometry,
                    cfg: XGaussianConfig = XGaussianConfig(), *, checkpoint_path: str | Path | None = None,
                    progress=True) -> tuple[RGBSplats, dict, float]:
    """Train the X-Gaussian model on (training) projections.

    Args:
      projections: [V, nv, nu] float32 line integrals, in the order of the geometry's views.
      geometry: their cone-beam geometry.
      checkpoint_path: ``.npz`` saved after every block; an existing one is resumed.

    Returns:
      (splats, history, scale): the model, the per-block loss history and the intensity scale
      (the training projections' maximum) that renders are multiplied by.

    Raises:
      ValueError: for a parallel-beam geometry, ``sh_degree`` ≠ 0, projections of the wrong shape,
        non-finite or all ≤ 0.
    """
    if cfg.train.sh_degree != 0:
        raise ValueError(f"X-Gaussian's intensity is view-independent: sh_degree must be 0, got"
                         f" {cfg.train.sh_degree}")
    proj, scale = checked_projections(projections, geometry)
    cameras = xray_pinholes(geometry)
    images = to_pinhole_images(proj, scale)
    lo, hi = scan_cuboid(geometry)
    pts = acui_points(jax.random.fold_in(jax.random.key(cfg.train.seed), 1), lo, hi, cfg.n_init)
    grey = np.full((len(pts), 3), float(images.mean()), np.float32)
    splats, history = train_rgb(images, cameras, pts, grey, cfg.train, checkpoint_path=checkpoint_path,
                                progress=progress, desc="X-Gaussian")
    return splats, history, scale


def evaluate_xgaussian(splats: RGBSplats, scale: float, projections: np.ndarray,
                       geometry: XrayGeometry) -> dict:
    """Held-out projection metrics of the model, scored as the radiative model's are
    (:func:`~insideout_jax.train.xray.score_projections`)."""
    return score_projections(
        lambda i: render_xgaussian(splats, geometry, np.array([i]), scale=scale)[0], projections,
        np.arange(geometry.n_views))
