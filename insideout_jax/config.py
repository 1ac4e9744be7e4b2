"""Stage configurations: frozen dataclasses of plain scalars, with ``cpu`` and ``paper`` presets.

Defaults are the paper's constants where it gives them (cited next to the field); the ``cpu``
preset shrinks resolutions and iteration counts so the whole skull pipeline runs in minutes on a
2-core machine. Configs are hashable (usable as static jit arguments) and saved as JSON by the
runner.
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["SkullConfig", "SfMConfig", "PipelineConfig", "preset", "config_to_json",
           "PRESETS"]


@dataclasses.dataclass(frozen=True)
class SkullConfig:
    """The built-in procedural skull object.

    Attributes:
      n_views: X-ray projections over 360°.
      n_detector: detector pixels per side (nv = nu).
      volume_size: voxels per side of the true CT volume (≤ 256).
      supersample: sub-samples per voxel axis for the exact volume.
      n_rgb_views: photo renders (several elevation rings).
      rgb_size: photo width = height, pixels.
      projection_noise: add Poisson + Gaussian read noise to projections.
    """

    n_views: int = 180
    n_detector: int = 256
    volume_size: int = 128
    supersample: int = 2
    n_rgb_views: int = 60
    rgb_size: int = 512
    projection_noise: bool = False


@dataclasses.dataclass(frozen=True)
class SfMConfig:
    """Structure from motion (pycolmap, CPU).

    Attributes:
      camera_model: "SIMPLE_PINHOLE" or "PINHOLE".
      min_registered_fraction: below this SfM is an error (issue: 70 %).
      max_num_features: SIFT features per image.
      use_known_intrinsics: give the generator's intrinsics to SfM (generated objects only).
    """

    camera_model: str = "SIMPLE_PINHOLE"
    min_registered_fraction: float = 0.7
    max_num_features: int = 8192
    use_known_intrinsics: bool = False


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """All stage configurations of one run."""

    name: str = "cpu"
    skull: SkullConfig = SkullConfig()
    sfm: SfMConfig = SfMConfig()


PRESETS = {
    "cpu": PipelineConfig(name="cpu"),
    "paper": PipelineConfig(name="paper", skull=SkullConfig(volume_size=256, n_rgb_views=120)),
}


def preset(name: str) -> PipelineConfig:
    """The named preset ("cpu" or "paper")."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def config_to_json(cfg: PipelineConfig) -> str:
    """The configuration as indented JSON (saved next to a run's outputs)."""
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)
