"""Slice and frame stacks as Gaussian splats (MedGS on the package's exact slice renderer).

- :mod:`.frames`: frame stacks (from volumes, DICOM, TIFF, image folders), splits, the
  interpolation baselines, head labels.
- :mod:`.model`: the splat model of a stack and its losses; :mod:`.train`: its training.
- :mod:`.folded`: MedGS's own route (time-conditioned flat Gaussians), for comparison.
- :mod:`.surface`: surfaces from mask fields and the surface metrics (CD, ASD, HD, HD95).
"""

from insideout_jax.stacks.frames import (
    FrameStack,
    head_labels,
    interpolate_stack,
    make_stack,
    read_frame_folder,
    read_label_folder,
    split_stack,
    stack_from_volume,
)
from insideout_jax.stacks.model import (
    StackConfig,
    StackModel,
    band_penalty,
    frame_plane,
    ibfr_target,
    init_stack_model,
    label_volume,
    render_frame,
    render_frames,
    render_labels,
    sigma_z,
    stack_loss,
)
from insideout_jax.stacks.train import fit_frames, relocate_splats, train_stack

__all__ = [
    "FrameStack", "head_labels", "interpolate_stack", "make_stack", "read_frame_folder",
    "read_label_folder", "split_stack", "stack_from_volume",
    "StackConfig", "StackModel", "band_penalty", "frame_plane", "ibfr_target", "init_stack_model",
    "label_volume", "render_frame", "render_frames", "render_labels", "sigma_z", "stack_loss",
    "fit_frames", "relocate_splats", "train_stack",
]
