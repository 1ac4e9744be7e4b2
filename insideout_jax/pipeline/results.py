"""The pipeline's typed results and the ``metrics.json`` contract (docs/OUTPUTS.md).

Every stage returns a frozen dataclass holding its arrays and a ``metrics`` fragment: a nested
dict with the same keys as ``metrics.json``, holding only what that stage measured. The runner
merges the fragments into the file; :func:`insideout_jax.pipeline.fuse` merges them in memory
(:func:`merge_metrics`), so both give the same numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np

__all__ = ["CROSS_SECTION_METHODS", "STAGE_ORDER", "EvaluationResult", "FitResult", "FusedResult",
           "InternalResult", "RGBResult", "Truth", "VisualResult", "XGaussianModel", "XrayResult",
           "empty_metrics", "json_number",
           "finite_metrics", "merge_metrics", "non_finite_note"]

STAGE_ORDER = ("data", "sfm", "rgb", "xray", "fitting", "internal", "visual", "evaluation")
CROSS_SECTION_METHODS = ("3dgs", "xgaussian", "radiative", "insideout")
"""Table 2's rows: stage-1 RGB splats (3DGS), the X-Gaussian baseline, the stage-1 radiative
splats and the unified model."""


def empty_metrics(obj: str, cfg: str) -> dict:
    """The skeleton of ``metrics.json``: every field present, ``null`` until measured."""
    view = {"psnr": None, "ssim": None}
    section = {"psnr": None, "ssim": None, "piqe": None}
    occ = {"42": {"any": None, "mean": None}, "242": {"any": None, "mean": None}}
    return {
        "object": obj, "config": cfg, "notes": [],
        "stage_seconds": {s: None for s in STAGE_ORDER},
        "heldout_views": {"rgb": dict(view), "xray": dict(view), "xgaussian": dict(view),
                          "unified_rgb": dict(view), "rgb_object": dict(view)},
        "cross_sections": {m: {"train": dict(section), "heldout": dict(section)}
                           for m in CROSS_SECTION_METHODS},
        "chamfer_mm": {"none": None, "hierarchical": None, "internal": None},
        "fitting_global": {"candidates": None, "rival_residual_ratio": None, "rival_angle_deg": None,
                           "ambiguous": None},
        "alignment": {s: {"rot_deg": None, "scale_rel": None, "trans_mm": None}
                      for s in ("global", "local", "fine")},
        "volume": {m: {"psnr3d": None, "ssim3d": None} for m in ("fdk", "radiative", "insideout")},
        "occupancy": {m: copy.deepcopy(occ) for m in ("radiative", "insideout")},
        "internal_noise": {"before": None, "after": None},
        "densify_skipped": {s: None for s in ("rgb", "xray", "xgaussian", "internal_rad", "internal_rgb")},
        "coarsened": {"xray_culled_at_source": None, "fitting_targets_dropped": None,
                      "fitting_grid_coarsening": None},
        "object_selection": {"method": None, "kept": None, "total": None, "precision": None,
                             "recall": None},
    }


def merge_metrics(metrics: dict, fragment: dict) -> dict:
    """Write ``fragment``'s leaves into ``metrics`` (in place; nested dicts merge, other values
    replace). Returns ``metrics``."""
    for k, v in fragment.items():
        if isinstance(v, dict) and isinstance(metrics.get(k), dict) and v:
            merge_metrics(metrics[k], v)
        else:
            metrics[k] = copy.deepcopy(v)
    return metrics


def finite_metrics(metrics: dict) -> tuple[dict, list]:
    """(a copy of ``metrics`` with every NaN / ±inf replaced by None, the paths replaced): JSON
    has no NaN, and a value that could not be computed is ``null`` with a reason in the notes."""
    replaced = []

    def clean(v, path):
        if isinstance(v, dict):
            return {k: clean(x, f"{path}.{k}" if path else str(k)) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, float) and not math.isfinite(v):
            replaced.append(f"{path} ({v})")
            return None
        return v

    return clean(metrics, ""), replaced


def non_finite_note(replaced: list) -> str:
    """The note that names the fields :func:`finite_metrics` replaced."""
    return f"not computable (NaN or infinite, written as null): {', '.join(replaced)}"


def json_number(x) -> float | None:
    """A float for JSON: ``None`` for NaN / ±inf (which are not JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class Truth:
    """What an object's ``truth/`` holds, for the evaluation only (never for training).

    Attributes:
      transform: the true RGB → CT similarity (rotation, translation, scale), or None.
      volume: the true volume (:class:`insideout_jax.io.CTVolume`), or None.
      surface: (points [N, 3], outward normals [N, 3]) on the true outer surface, or None.
      silhouettes: (masks [V, H, W] bool, cameras (CT frame), per-view lens or None) of the
        object in its photos, or None: scores the object selection.
      object_transform: a check of ``transform``: the similarity that puts the SfM model's own
        points on the true surface (:func:`insideout_jax.metrics.surface_similarity` dict), or
        None. The two differ where SfM is not a similarity of the truth (e.g. a lens estimated
        on photos that have none).
    """

    transform: Any = None
    volume: Any = None
    surface: tuple | None = None
    silhouettes: tuple | None = None
    object_transform: dict | None = None


@dataclasses.dataclass(frozen=True)
class RGBResult:
    """Stage 1a: 3DGS splats from the photos (SfM frame) and their held-out photo scores."""

    splats: Any
    history: dict
    metrics: dict


@dataclasses.dataclass(frozen=True)
class XGaussianModel:
    """The X-Gaussian baseline: its splats (RGBSplats, SH degree 0) and the intensity scale its
    renders are multiplied by (:mod:`insideout_jax.render.xgaussian`)."""

    splats: Any
    scale: float
    history: dict | None = None


@dataclasses.dataclass(frozen=True)
class XrayResult:
    """Stage 1b: radiative splats from the training projections and their held-out scores, and
    the X-Gaussian baseline trained on the same projections (None when not trained)."""

    splats: Any
    history: dict
    metrics: dict
    notes: tuple = ()
    xgaussian: XGaussianModel | None = None


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Stage 2: the RGB splats in the CT frame, the global similarity, one report per level."""

    splats: Any
    transform: Any
    stages: tuple
    metrics: dict
    notes: tuple = ()


@dataclasses.dataclass(frozen=True)
class InternalResult:
    """Stage 3: both splat sets after internal rendering on the CT cross-sections."""

    rad: Any
    rgb: Any
    histories: dict
    n_slices: int
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class VisualResult:
    """Stage 4: the unified model, its density on ``grid`` and its held-out photo scores."""

    model: Any
    grid: Any
    density: np.ndarray
    history: dict | None
    metrics: dict


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Cross-sections, Chamfer, occupancy, internal noise, alignment and volume scores
    (``metrics``), report notes, the arrays the figures show (``figure_data``), the unified
    model's density mesh (vertices, faces) and the FDK / radiative volumes on the comparison grid
    (``volumes``, None without a reference volume)."""

    metrics: dict
    notes: tuple
    figure_data: dict
    mesh: tuple
    volumes: dict | None = None


@dataclasses.dataclass(frozen=True)
class FusedResult:
    """Every stage's result of :func:`insideout_jax.pipeline.fuse`, and the merged metrics."""

    rgb: RGBResult
    xray: XrayResult
    fit: FitResult
    internal: InternalResult
    visual: VisualResult
    evaluation: EvaluationResult
    metrics: dict

    @property
    def model(self):
        """The unified InsideOut model (:class:`insideout_jax.visual.UnifiedModel`)."""
        return self.visual.model
