"""Cut-away figures for the report: three orthogonal cuts through the object's centre and a
36-frame turntable, InsideOut beside the 3DGS-only model (the paper's point: 3DGS is full of noise
inside, the fused model has the CT's interior).

The 3DGS-only model is the stage-1 RGB splats in the CT frame; its "density" on the cut face is
its opacity field (every splat's opacity as its peak), the only interior quantity 3DGS has. Each
model's face uses its own window (5 %–100 % of its largest peak), so the two are compared by
structure, not by units.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import look_at, make_pinhole
from insideout_jax.cutaway import camera_centre, make_cut_plane, render_cutaway
from insideout_jax.visual import UnifiedModel

__all__ = ["opacity_model", "view_cameras", "plot_cutaways", "write_turntable"]


def opacity_model(splats) -> UnifiedModel:
    """A 3DGS splat set as a model whose density is its opacity (for the cut face)."""
    dens = jnp.log(jnp.clip(1.0 / (1.0 + jnp.exp(-splats.opacity_logits)), 1e-12, None))
    return UnifiedModel(splats, dens, jnp.zeros(splats.capacity, bool))


def _frame(model: UnifiedModel):
    act = np.asarray(model.splats.active)
    pts = np.asarray(model.splats.means, np.float64)[act]
    lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
    return (lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2)


def view_cameras(model: UnifiedModel, n: int, *, size: int, elevation_deg: float = 20.0,
                 fov_deg: float = 40.0) -> list:
    """n look-at cameras around the model's centre (z up), the object filling ~80 % of the frame."""
    centre, radius = _frame(model)
    dist = radius / np.sin(np.deg2rad(fov_deg) / 2) / 0.8
    f = 0.5 * size / np.tan(np.deg2rad(fov_deg) / 2)
    el = np.deg2rad(elevation_deg)
    cams = []
    for k in range(n):
        az = np.deg2rad(-60.0) + 2 * np.pi * k / n
        eye = centre + dist * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        rot, t = look_at(eye, centre)
        cams.append(make_pinhole(rot, t, f, f, size / 2, size / 2, size, size))
    return cams


def _toward(camera, centre, axis=None) -> np.ndarray:
    """Cut normal: ``axis`` (±, whichever faces the camera) or the horizontal direction to it."""
    eye = camera_centre(camera)
    d = eye - centre
    if axis is None:
        d[2] = 0.0
        return d / np.linalg.norm(d)
    n = np.eye(3)[axis]
    return n if d @ n > 0 else -n


def plot_cutaways(models: dict, path, *, size: int = 256) -> Path:
    """Rows = models (name → UnifiedModel), columns = cuts normal to x, y and z through the first
    model's centre, all from one 3/4 view; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(models.values()))
    centre, _ = _frame(first)
    cam = view_cameras(first, 1, size=size, elevation_deg=30.0)[0]
    fig, axes = plt.subplots(len(models), 3, figsize=(9, 3 * len(models)), squeeze=False)
    for r, (name, model) in enumerate(models.items()):
        for c, axis in enumerate((0, 1, 2)):
            img = render_cutaway(model, cam, make_cut_plane(centre, _toward(cam, centre, axis))).color
            ax = axes[r, c]
            ax.imshow(np.clip(np.asarray(img), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"cut normal to {'xyz'[axis]}")
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_turntable(models: dict, path, *, n_frames: int = 36, size: int = 192,
                    frame_seconds: float = 0.12) -> tuple[Path, Path]:
    """Animated GIF of ``n_frames`` views around the object, each cut by the vertical plane through
    its centre facing the camera, the models side by side; and its first frame as a PNG still.
    Returns (gif, png)."""
    from PIL import Image

    first = next(iter(models.values()))
    centre, _ = _frame(first)
    frames = []
    for cam in view_cameras(first, n_frames, size=size):
        cut = make_cut_plane(centre, _toward(cam, centre))
        tiles = [np.clip(np.asarray(render_cutaway(m, cam, cut).color), 0, 1) for m in models.values()]
        frames.append(Image.fromarray((np.concatenate(tiles, axis=1) * 255).round().astype(np.uint8)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(frame_seconds * 1000),
                   loop=0)
    still = path.with_suffix(".png")
    frames[0].save(still)
    return path, still
