"""Frame stacks: 2D frames (CT/MRI slices, ultrasound frames) embedded in 3D as parallel planes.

A stack is F frames ``[F, H, W]`` on the planes z = z₀ + k·dz (k = 0 … F−1), each frame's pixel
(row r, column c) at (x₀ + c·dx, y₀ + r·dy) — exactly the ``[z, y, x]`` volume convention of the
package, so a volume *is* a stack and a stack a volume. Values are normalised to [0, 1] by the
stack's value range (``value_range``: the raw values that map to 0 and 1), so PSNR with data range
1 is PSNR over the stack's range. Label stacks ``[L, F, H, W]`` hold L binary masks (e.g. bone,
body) on the same frames.

Host-side NumPy (loading, splitting and the interpolation baselines); the splat model and its
training are in :mod:`insideout_jax.stacks.model`.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

__all__ = ["FrameStack", "add_frame_noise", "default_splat_count", "downsample_inplane",
           "make_stack", "stack_from_volume", "read_frame_folder", "read_label_folder",
           "split_stack", "interpolate_stack", "head_labels"]


@dataclasses.dataclass(frozen=True)
class FrameStack:
    """Frames on parallel planes, with optional label masks.

    Attributes:
      frames: [F, H, W] float32 in [0, 1] (normalised by ``value_range``).
      z: [F] float64 plane positions, mm, strictly increasing (need not be uniform after a split).
      spacing_yx: (dy, dx) in-plane pixel spacing, mm.
      origin_xy: (x₀, y₀) position of pixel [0, 0] of every frame, mm.
      value_range: (lo, hi) raw values that map to 0 and 1.
      labels: [L, F, H, W] bool masks or None.
      label_names: L names.
      index: [F] int original frame index of each frame (for held-out bookkeeping).
    """

    frames: np.ndarray
    z: np.ndarray
    spacing_yx: tuple
    origin_xy: tuple
    value_range: tuple = (0.0, 1.0)
    labels: np.ndarray | None = None
    label_names: tuple = ()
    index: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def shape_hw(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    @property
    def extent_xy(self) -> tuple[float, float]:
        """(width, height) of a frame, mm (pixel edges to pixel edges)."""
        h, w = self.shape_hw
        return w * float(self.spacing_yx[1]), h * float(self.spacing_yx[0])

    @property
    def center_xy(self) -> tuple[float, float]:
        """Centre of a frame's pixel rectangle, mm."""
        h, w = self.shape_hw
        return (float(self.origin_xy[0]) + (w - 1) / 2 * float(self.spacing_yx[1]),
                float(self.origin_xy[1]) + (h - 1) / 2 * float(self.spacing_yx[0]))

    @property
    def mean_dz(self) -> float:
        """Mean frame spacing, mm (of this, possibly split, stack)."""
        return float(np.mean(np.diff(self.z))) if self.n_frames > 1 else 1.0

    def voxel_points(self, k: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[M, 3] world xyz (mm) of pixels (rows, cols) of frames k."""
        x = float(self.origin_xy[0]) + cols * float(self.spacing_yx[1])
        y = float(self.origin_xy[1]) + rows * float(self.spacing_yx[0])
        return np.stack([x, y, self.z[k]], axis=-1)


def make_stack(frames, z, spacing_yx, origin_xy=(0.0, 0.0), *, value_range=None, labels=None,
               label_names=(), index=None) -> FrameStack:
    """Validated :class:`FrameStack` from raw frames (normalised here by ``value_range``).

    Args:
      frames: [F, H, W] real array (raw values).
      z: [F] strictly increasing plane positions, mm.
      spacing_yx: (dy, dx) > 0, mm.
      origin_xy: (x₀, y₀) mm.
      value_range: (lo, hi) with hi > lo; default the frames' min and max.
      labels: [L, F, H, W] (or [F, H, W] for one) masks, nonzero = inside.
      label_names: L names (default "label0", …).
      index: [F] original frame indices (default 0 … F−1).

    Raises:
      ValueError: naming the argument, for wrong shapes, non-finite values, a constant stack,
        non-increasing z or non-positive spacing.
    """
    a = np.asarray(frames)
    if a.ndim != 3 or min(a.shape) < 1:
        raise ValueError(f"frames must be [F, H, W], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"frames must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("frames contain NaN or infinite values")
    zz = np.asarray(z, np.float64).reshape(-1)
    if zz.shape != (a.shape[0],) or not np.all(np.isfinite(zz)):
        raise ValueError(f"z must be {a.shape[0]} finite positions (one per frame), got shape {zz.shape}")
    if a.shape[0] > 1 and not np.all(np.diff(zz) > 0):
        raise ValueError("z must be strictly increasing")
    sp = tuple(float(s) for s in np.asarray(spacing_yx, np.float64).reshape(-1))
    if len(sp) != 2 or min(sp) <= 0 or not all(np.isfinite(sp)):
        raise ValueError(f"spacing_yx must be two positive numbers (dy, dx) in mm, got {spacing_yx}")
    org = tuple(float(s) for s in np.asarray(origin_xy, np.float64).reshape(-1))
    if len(org) != 2:
        raise ValueError(f"origin_xy must be two numbers (x0, y0) in mm, got {origin_xy}")
    lo, hi = (float(a.min()), float(a.max())) if value_range is None else map(float, value_range)
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got ({lo}, {hi})"
                         + (" (the frames are constant)" if value_range is None else ""))
    lab, names = None, ()
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim == 3:
            lab = lab[None]
        if lab.shape[1:] != a.shape:
            raise ValueError(f"labels must be [L, {a.shape[0]}, {a.shape[1]}, {a.shape[2]}] like the "
                             f"frames, got shape {np.asarray(labels).shape}")
        lab = lab != 0
        names = tuple(label_names) or tuple(f"label{i}" for i in range(lab.shape[0]))
        if len(names) != lab.shape[0]:
            raise ValueError(f"label_names must name the {lab.shape[0]} label masks, got {names}")
    idx = np.arange(a.shape[0]) if index is None else np.asarray(index, np.int64).reshape(-1)
    if idx.shape != (a.shape[0],):
        raise ValueError(f"index must have one entry per frame, got shape {idx.shape}")
    return FrameStack(((a - lo) / (hi - lo)).astype(np.float32), zz, sp, org, (lo, hi), lab, names,
                      idx)


def stack_from_volume(data, spacing_zyx, origin_xyz=(0.0, 0.0, 0.0), *, value_range=None,
                      labels=None, label_names=()) -> FrameStack:
    """The axial frames of a ``[z, y, x]`` volume (the package's volume convention)."""
    a = np.asarray(data)
    if a.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {a.shape}")
    sz, sy, sx = (float(s) for s in spacing_zyx)
    z = float(origin_xyz[2]) + sz * np.arange(a.shape[0])
    return make_stack(a, z, (sy, sx), (origin_xyz[0], origin_xyz[1]), value_range=value_range,
                      labels=labels, label_names=label_names)


def _read_frames(folder, what: str) -> np.ndarray:
    import cv2

    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise ValueError(f"{what} folder {folder} holds no image frames (png, tif, jpg, bmp)")
    frames = []
    for p in files:
        im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise ValueError(f"{p}: not a readable image")
        if im.ndim == 3:  # colour frames: luminance
            im = cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2GRAY)
        if frames and im.shape != frames[0].shape:
            raise ValueError(f"{p}: frame size {im.shape} differs from {files[0].name}'s "
                             f"{frames[0].shape}; every frame of a stack must have one size")
        frames.append(im)
    return np.stack(frames)


def read_frame_folder(folder, *, spacing_zyx, value_range=None) -> FrameStack:
    """A folder of image frames, in file-name order (PNG/TIFF/JPEG; 8 or 16 bit; colour → grey).

    Args:
      spacing_zyx: (frame spacing, dy, dx) mm (image files carry no spacing).
      value_range: raw range mapped to [0, 1]; default the full range of the frames' dtype
        (0–255 for 8 bit, 0–65535 for 16 bit).
    """
    a = _read_frames(folder, "frames")
    if value_range is None and np.issubdtype(a.dtype, np.integer):
        value_range = (0.0, float(np.iinfo(a.dtype).max))
    return stack_from_volume(a, spacing_zyx, value_range=value_range)


def read_label_folder(folder, n_frames: int) -> np.ndarray:
    """[F, H, W] bool masks from a folder of label frames (nonzero = inside)."""
    a = _read_frames(folder, "labels")
    if a.shape[0] != n_frames:
        raise ValueError(f"labels folder {folder} holds {a.shape[0]} frames, the stack {n_frames}")
    return a != 0


def split_stack(stack: FrameStack, keep_every: int) -> tuple[FrameStack, FrameStack]:
    """(kept, held): every ``keep_every``-th frame from the first, and the frames strictly between
    the first and the last kept one (frames past the last kept frame would be extrapolation and are
    in neither set)."""
    k = int(keep_every)
    if k < 2:
        raise ValueError(f"keep_every must be >= 2 (a held-out frame between kept ones), got {keep_every}")
    kept = np.arange(0, stack.n_frames, k)
    if len(kept) < 2:
        raise ValueError(f"keep_every={k} leaves fewer than two kept frames of {stack.n_frames}")
    held = np.setdiff1d(np.arange(kept[0], kept[-1] + 1), kept)

    def take(i):
        return dataclasses.replace(
            stack, frames=stack.frames[i], z=stack.z[i], index=stack.index[i],
            labels=None if stack.labels is None else stack.labels[:, i])

    return take(kept), take(held)


def interpolate_stack(kept: FrameStack, z, *, method: str, values: np.ndarray | None = None
                      ) -> np.ndarray:
    """Interpolation along the stack axis (the baselines): frames of ``kept`` at positions ``z``.

    Args:
      kept: the known frames.
      z: [M] positions inside [kept.z[0], kept.z[-1]], mm.
      method: "nearest", "linear" or "cubic" (not-a-knot cubic spline, scipy).
      values: [F, ...] values to interpolate instead of the frames (e.g. label masks as float).

    Returns:
      [M, ...] float32.
    """
    from scipy.interpolate import CubicSpline

    v = kept.frames if values is None else np.asarray(values, np.float32)
    zq = np.asarray(z, np.float64).reshape(-1)
    zk = kept.z
    if np.any(zq < zk[0] - 1e-9) or np.any(zq > zk[-1] + 1e-9):
        raise ValueError("z must lie inside the kept frames' range (no extrapolation)")
    if method == "nearest":
        i = np.abs(zq[:, None] - zk[None, :]).argmin(1)
        return v[i].astype(np.float32)
    if method == "linear":
        hi = np.clip(np.searchsorted(zk, zq, side="right"), 1, len(zk) - 1)
        lo = hi - 1
        w = ((zq - zk[lo]) / (zk[hi] - zk[lo])).reshape((-1,) + (1,) * (v.ndim - 1))
        return ((1 - w) * v[lo] + w * v[hi]).astype(np.float32)
    if method == "cubic":
        if len(zk) < 4:
            raise ValueError("cubic interpolation needs at least 4 kept frames")
        return CubicSpline(zk, v, axis=0)(zq).astype(np.float32)
    raise ValueError(f"method must be 'nearest', 'linear' or 'cubic', got {method!r}")


def head_labels(raw: np.ndarray, *, bone: float, body: float) -> tuple[np.ndarray, tuple]:
    """Bone and body masks of a head CT by thresholds and connected components.

    Body: voxels above ``body``, the largest 3D connected component (drops the head rest and
    other objects not touching the head), holes filled slice by slice (air in sinuses, mouth and
    ears counts as body). Bone: voxels above ``bone`` inside the body, components of fewer than
    0.1 % of the bone voxels removed (isolated noise and streak specks).

    Args:
      raw: [Z, Y, X] raw CT values.
      bone, body: thresholds in the raw units (Stanford head, HU + 1000: bone 1400, body 600).

    Returns:
      ([2, Z, Y, X] bool masks (bone, body), ("bone", "body")).
    """
    from scipy import ndimage

    a = np.asarray(raw, np.float32)
    lab, n = ndimage.label(a > body)
    if n == 0:
        raise ValueError(f"no voxel is above the body threshold {body}")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body_m = lab == int(sizes.argmax())
    body_m = np.stack([ndimage.binary_fill_holes(s) for s in body_m])
    bone_m = (a > bone) & body_m
    lab, n = ndimage.label(bone_m)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= max(1, int(1e-3 * bone_m.sum()))
        keep[0] = False
        bone_m = keep[lab]
    return np.stack([bone_m, body_m]), ("bone", "body")


def add_frame_noise(stack: FrameStack, sigma: float, seed: int) -> FrameStack:
    """The stack with Gaussian noise of σ = ``sigma`` (in the normalised [0, 1] range) added to
    every frame (``numpy`` generator seeded ``seed``); σ = 0 returns it unchanged."""
    if sigma <= 0:
        return stack
    rng = np.random.default_rng(seed)
    noisy = stack.frames + rng.normal(0.0, sigma, stack.frames.shape)
    return dataclasses.replace(stack, frames=noisy.astype(np.float32))


def default_splat_count(stack: FrameStack, *, per_voxels: int = 8, level: float = 0.1) -> int:
    """Splats for a stack: one per ``per_voxels`` voxels above ``level`` of the value range (the
    object, not the air around it), at least 4."""
    return max(4, int(np.count_nonzero(stack.frames > level) / per_voxels))


def downsample_inplane(raw: np.ndarray, labels, spacing_zyx, factor: int):
    """Average ``factor`` × ``factor`` pixel blocks of every frame (the frame spacing is kept).

    Args:
      raw: [Z, Y, X] volume; rows and columns beyond a multiple of ``factor`` are dropped.
      labels: [L, Z, Y, X] bool masks or None (a block is inside when ≥ half its pixels are).
      spacing_zyx: (dz, dy, dx) mm.

    Returns:
      (raw, labels, spacing) of the coarser stack.
    """
    f = int(factor)
    z, y, x = raw.shape
    y, x = y // f * f, x // f * f
    out = raw[:, :y, :x].reshape(z, y // f, f, x // f, f).mean((2, 4))
    if labels is not None:
        labels = labels[:, :, :y, :x].reshape(len(labels), z, y // f, f, x // f, f).mean((3, 5)) >= 0.5
    return out, labels, (spacing_zyx[0], spacing_zyx[1] * f, spacing_zyx[2] * f)

