"""Figures and markdown reports from arrays and metrics dicts (what the commands write)."""

from insideout_jax.reporting.figures import (
    load_histories,
    plot_alignment,
    plot_cross_sections,
    plot_normal_histograms,
    plot_selection,
    plot_training_curves,
    save_figure,
)
from insideout_jax.reporting.markdown import METHOD_LABELS, PAPER, chamfer_trend, cross_section_trend, write_report

__all__ = ["METHOD_LABELS", "PAPER", "chamfer_trend", "cross_section_trend", "load_histories",
           "plot_alignment", "plot_cross_sections", "plot_normal_histograms", "plot_selection",
           "plot_training_curves", "save_figure", "write_report"]
