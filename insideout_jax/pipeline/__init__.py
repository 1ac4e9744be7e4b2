"""The InsideOut pipeline as a library: each stage a function of arrays and a frozen config that
returns a typed result, and :func:`fuse`, which runs them in order in memory.

    from insideout_jax.pipeline import fuse
    result = fuse(photos, cameras, projections, geometry, points=sfm_xyz, cfg=preset("cpu"))
    result.model, result.metrics

``experiments/run.py`` is the same pipeline with files, checkpoints, progress bars and a report.
"""

from insideout_jax.pipeline.evaluate import evaluate, read_truth
from insideout_jax.pipeline.fuse import fuse, seeded_config
from insideout_jax.pipeline.geometry import PipelineInputError
from insideout_jax.pipeline.results import (
    STAGE_ORDER,
    EvaluationResult,
    FitResult,
    FusedResult,
    InternalResult,
    RGBResult,
    Truth,
    VisualResult,
    XGaussianModel,
    XrayResult,
    empty_metrics,
    finite_metrics,
    merge_metrics,
    non_finite_note,
)
from insideout_jax.pipeline.selection import matte_photos
from insideout_jax.pipeline.stages import (
    ct_for_training,
    fit_stage,
    internal_stage,
    object_inputs,
    reconstruct_ct,
    train_rgb_stage,
    train_xray_stage,
    visual_stage,
)

__all__ = ["STAGE_ORDER", "EvaluationResult", "FitResult", "FusedResult", "InternalResult",
           "PipelineInputError", "RGBResult", "Truth", "VisualResult", "XGaussianModel", "XrayResult",
           "empty_metrics", "evaluate", "read_truth", "finite_metrics", "fit_stage", "fuse", "internal_stage",
           "merge_metrics", "non_finite_note", "reconstruct_ct", "ct_for_training", "object_inputs",
           "seeded_config", "matte_photos", "train_rgb_stage", "train_xray_stage", "visual_stage"]
