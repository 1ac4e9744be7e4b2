"""Image and volume quality metrics: PSNR variants, reported SSIM, 3D SSIM/PSNR and PIQE.

Host-side NumPy/SciPy code (float64 internally); the training forms of SSIM are in
:mod:`insideout_jax.losses`. Conventions (EVALUATION.md §1-§2, §7):

* images ``[H, W]`` or ``[H, W, C]`` float in [0, 1] (data range 1), volumes ``[Z, Y, X]``;
* SSIM: 11×11 Gaussian window σ = 1.5 (scipy's ``truncate=3.5`` gives the same 11 taps),
  C1 = (0.01·R)², C2 = (0.03·R)², population moments;
* PSNR = 10·log10(R² / MSE); an exact match gives ``inf``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from insideout_jax.losses import SSIM_SIGMA, SSIM_WINDOW, gaussian_window_1d

__all__ = [
    "PiqeResult",
    "piqe",
    "piqe_slice",
    "psnr",
    "psnr3d",
    "psnr_affine",
    "psnr_minmax",
    "ssim3d",
    "ssim_padded",
    "ssim_valid",
    "to_uint8_minmax",
]

_K1, _K2 = 0.01, 0.03


def _as_pair(pred, ref, name_pred="pred", name_ref="ref"):
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_pred} and {name_ref} must have the same shape, got {a.shape} and {b.shape}"
        )
    return a, b


def _minmax(x: np.ndarray) -> np.ndarray | None:
    """Min-max normalise to [0, 1]; ``None`` for a constant array."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if not hi > lo:
        return None
    return (x - lo) / (hi - lo)


# ----------------------------------------------------------------------------------------- PSNR


def psnr(pred, ref, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10·log10(R²/MSE)``, dB.

    Args:
      pred: any shape, float.
      ref: same shape.
      data_range: R, the peak value (1 for images in [0, 1]).

    Returns:
      PSNR in dB (``inf`` when the arrays are equal).
    """
    a, b = _as_pair(pred, ref)
    mse = float(np.mean((a - b) ** 2))
    with np.errstate(divide="ignore"):
        return float(10.0 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")


def psnr_minmax(pred, ref) -> float:
    """PSNR after min-max normalising prediction and reference independently to [0, 1] (§2).

    Decisions: a **constant reference** has no defined normalisation, so the slice is skipped:
    the function returns ``nan`` (pool per-slice values with ``np.nanmean``). A constant
    prediction normalises to all zeros (it is a valid, maximally uninformative prediction).

    Args:
      pred: ``[H, W]`` (any shape) float, any units (e.g. Gaussian density).
      ref: same shape, any units (e.g. CT attenuation).

    Returns:
      PSNR in dB, or ``nan`` for a constant reference.
    """
    a, b = _as_pair(pred, ref)
    bn = _minmax(b)
    if bn is None:
        return float("nan")
    an = _minmax(a)
    if an is None:
        an = np.zeros_like(a)
    return psnr(an, bn)


def psnr_affine(pred, ref, ref_range) -> float:
    """Affine-fit PSNR: reference scaled by a fixed range, prediction least-squares fitted (§2).

    ``r = (ref − lo)/(hi − lo)``; ``a, b = argmin ‖a·pred + b − r‖²``; PSNR of ``a·pred + b``
    against ``r`` with data range 1. A constant prediction gets ``a = 0, b = mean(r)``.

    Args:
      pred: any shape, float, any units.
      ref: same shape.
      ref_range: ``(lo, hi)`` with ``hi > lo``, fixed per volume, in the units of ``ref``.

    Returns:
      PSNR in dB.
    """
    a, b = _as_pair(pred, ref)
    lo, hi = (float(v) for v in ref_range)
    if not hi > lo:
        raise ValueError(f"ref_range must be (lo, hi) with hi > lo, got {ref_range}")
    r = (b - lo) / (hi - lo)
    pm, rm = a.mean(), r.mean()
    var_p = float(np.mean((a - pm) ** 2))
    slope = float(np.mean((a - pm) * (r - rm))) / var_p if var_p > 0 else 0.0
    fit = slope * (a - pm) + rm
    return psnr(fit, r)


def psnr3d(pred, ref, *, data_range: float | None = 1.0) -> float:
    """Volume PSNR over all voxels (R²-Gaussian style), dB.

    Args:
      pred: ``[Z, Y, X]`` float.
      ref: same shape (ground truth).
      data_range: peak value; ``None`` uses ``ref.max()`` (R²-Gaussian's ``pixel_max=None``).
    """
    a, b = _as_pair(pred, ref)
    if a.ndim != 3:
        raise ValueError(f"pred must be [Z, Y, X], got shape {a.shape}")
    peak = float(b.max()) if data_range is None else float(data_range)
    return psnr(a, b, data_range=peak)


# ----------------------------------------------------------------------------------------- SSIM


def _ssim_moments_map(x, y, axes, *, data_range, mode):
    """SSIM map of float64 ``x, y`` filtered along the two ``axes``.

    ``mode="padded"``: zero padding, same size. ``mode="valid"``: only pixels whose window lies
    inside the image (a border of ``SSIM_WINDOW // 2`` cropped along both axes).
    """
    taps = gaussian_window_1d(SSIM_WINDOW, SSIM_SIGMA)
    border = "constant" if mode == "padded" else "reflect"

    def blur(img):
        out = img
        for ax in axes:
            out = ndimage.correlate1d(out, taps, axis=ax, mode=border, cval=0.0)
        return out

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    if mode == "valid":
        r = SSIM_WINDOW // 2
        index = [slice(None)] * s.ndim
        for ax in axes:
            index[ax] = slice(r, s.shape[ax] - r)
        s = s[tuple(index)]
    return s


def _check_image_pair(pred, ref):
    a, b = _as_pair(pred, ref)
    if a.ndim not in (2, 3):
        raise ValueError(f"pred must be [H, W] or [H, W, C], got shape {a.shape}")
    return a, b


def ssim_valid(pred, ref, *, data_range: float = 1.0) -> float:
    """Reported SSIM: mean over the *valid* region (EVALUATION.md §2).

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0)`` (with ``channel_axis=-1`` for colour); own
    implementation in float64.

    Args:
      pred: ``[H, W]`` or ``[H, W, C]`` float in [0, 1]; H, W ≥ 11.
      ref: same shape.
      data_range: R (always 1 in this project).

    Returns:
      SSIM, a float in [−1, 1].
    """
    a, b = _check_image_pair(pred, ref)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"pred must be at least {SSIM_WINDOW}x{SSIM_WINDOW} for valid SSIM, got {a.shape}"
        )
    return float(_ssim_moments_map(a, b, (0, 1), data_range=data_range, mode="valid").mean())


def ssim_padded(pred, ref, *, data_range: float = 1.0) -> float:
    """3DGS-form SSIM (zero padding, mean over the full map) in float64 NumPy, for logging.

    Same quantity as :func:`insideout_jax.losses.ssim` (the training loss). Shapes as
    :func:`ssim_valid`.
    """
    a, b = _check_image_pair(pred, ref)
    return float(_ssim_moments_map(a, b, (0, 1), data_range=data_range, mode="padded").mean())


def ssim3d(pred, ref, *, data_range: float = 1.0, form: str = "padded", chunk: int = 32) -> float:
    """Volume SSIM in the R²-Gaussian style (EVALUATION.md §7).

    For each axis (z, y, x) the 2D SSIM of every slice perpendicular to it is computed and
    averaged over the slices whose **reference** maximum is > 0 (empty-air slices skipped, as
    R²-Gaussian's ``metric_vol``); the result is the mean of the three per-axis values.
    ``form="padded"`` (default) is the 3DGS zero-padded SSIM that R²-Gaussian uses;
    ``form="valid"`` the reported form of §2 (needs every side ≥ 11).

    Args:
      pred: ``[Z, Y, X]`` float, same scale as ``ref`` (data range ``data_range``).
      ref: same shape, ground truth.
      data_range: R.
      form: ``"padded"`` or ``"valid"``.
      chunk: slices processed at once (memory bound only).

    Returns:
      SSIM (``nan`` when no reference slice along some axis is non-empty).
    """
    a, b = _as_pair(pred, ref)
    if a.ndim != 3:
        raise ValueError(f"pred must be [Z, Y, X], got shape {a.shape}")
    if form not in ("padded", "valid"):
        raise ValueError(f"form must be 'padded' or 'valid', got {form!r}")
    if form == "valid" and min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"pred must have every side >= {SSIM_WINDOW} for form='valid', got {a.shape}"
        )
    per_axis = []
    for axis in range(3):
        sa, sb = np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)
        keep = np.nonzero(sb.reshape(sb.shape[0], -1).max(axis=1) > 0)[0]
        if keep.size == 0:
            return float("nan")
        vals = []
        for start in range(0, keep.size, chunk):
            idx = keep[start : start + chunk]
            smap = _ssim_moments_map(sa[idx], sb[idx], (1, 2), data_range=data_range, mode=form)
            vals.append(smap.reshape(idx.size, -1).mean(axis=1))
        per_axis.append(float(np.concatenate(vals).mean()))
    return float(np.mean(per_axis))


# ----------------------------------------------------------------------------------------- PIQE

_PIQE_BLOCK = 16
_PIQE_SEGMENT = 6
_PIQE_ACTIVITY = 0.1
_PIQE_EDGE_STD = 0.1
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


@dataclasses.dataclass(frozen=True)
class PiqeResult:
    """PIQE score and MATLAB-style spatial masks.

    Attributes:
      score: PIQE in [0, 100], lower is better (a uniform image scores 100).
      activity_mask: ``[H, W]`` bool, pixels of active (high spatial activity) 16×16 blocks.
      artifact_mask: ``[H, W]`` bool, pixels of active blocks with a noticeable edge artifact.
      noise_mask: ``[H, W]`` bool, pixels of active blocks judged noisy.
      n_active_blocks: number of active blocks (before cropping the masks to the input size).
    """

    score: float
    activity_mask: np.ndarray
    artifact_mask: np.ndarray
    noise_mask: np.ndarray
    n_active_blocks: int

    @property
    def active_block_pixels(self) -> int:
        return int(self.activity_mask.sum())

    @property
    def artifact_pixels(self) -> int:
        return int(self.artifact_mask.sum())

    @property
    def noise_pixels(self) -> int:
        return int(self.noise_mask.sum())


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves go away from zero."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _piqe_gray(image: np.ndarray) -> np.ndarray:
    """Pad, convert to gray and map to the [0, 255] integer grid (steps 1-3 of §1)."""
    if image.dtype == np.uint8:
        scale, maxval = 255.0, 255
    elif image.dtype == np.uint16:
        scale, maxval = 65535.0, 65535
    elif np.issubdtype(image.dtype, np.floating):
        scale, maxval = 1.0, None
    else:
        raise ValueError(f"image must be uint8, uint16 or float, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be [H, W] or [H, W, 3] (RGB), got shape {image.shape}")
    h, w = image.shape[:2]
    pad = [(0, (-h) % _PIQE_BLOCK), (0, (-w) % _PIQE_BLOCK)] + [(0, 0)] * (image.ndim - 2)
    image = np.pad(image, pad, mode="edge")
    if image.ndim == 3:
        gray = image.astype(np.float64) @ _RGB2GRAY
        if maxval is not None:  # rgb2gray keeps the integer class (rounded, saturated)
            gray = np.clip(_round_half_away(gray), 0, maxval)
    else:
        gray = image.astype(np.float64)
    return _round_half_away(255.0 * gray / scale)


def _mscn(x: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised image (7×7 Gaussian σ = 7/6, replicate borders)."""
    k = np.arange(-3, 4, dtype=np.float64)
    g = np.exp(-(k**2) / (2.0 * (7.0 / 6.0) ** 2))
    g /= g.sum()

    def blur(img):
        return ndimage.correlate1d(
            ndimage.correlate1d(img, g, axis=0, mode="nearest"), g, axis=1, mode="nearest"
        )

    mu = blur(x)
    sigma = np.sqrt(np.abs(blur(x * x) - mu * mu))
    return (x - mu) / (sigma + 1.0)


def piqe(image) -> PiqeResult:
    """PIQE (Venkatanath et al. 2015) with MATLAB ``piqe`` semantics (EVALUATION.md §1).

    Args:
      image: ``[H, W]`` gray or ``[H, W, 3]`` RGB (R, G, B order); uint8, uint16, or float assumed
        in [0, 1] (not clipped).

    Returns:
      :class:`PiqeResult` with the score and block masks cropped to ``[H, W]``.
    """
    img = np.asarray(image)
    h, w = img.shape[:2]
    x = _piqe_gray(img)
    mscn = _mscn(x)
    n = _PIQE_BLOCK
    nby, nbx = x.shape[0] // n, x.shape[1] // n
    blocks = mscn.reshape(nby, n, nbx, n).transpose(0, 2, 1, 3)  # [By, Bx, 16, 16]
    var = blocks.reshape(nby, nbx, -1).var(axis=-1, ddof=1)
    active = var > _PIQE_ACTIVITY

    # Noticeable artifact: some 6-pixel segment of an edge (top, right, bottom, left) is flat.
    edges = np.stack(
        [blocks[..., 0, :], blocks[..., :, n - 1], blocks[..., n - 1, :], blocks[..., :, 0]], axis=2
    )
    segments = np.lib.stride_tricks.sliding_window_view(
        edges, _PIQE_SEGMENT, axis=-1
    )  # [By, Bx, 4, 11, 6]
    impaired = (segments.std(axis=-1, ddof=1) < _PIQE_EDGE_STD).any(axis=(-1, -2))

    # Noise: centre columns 8, 9 (1-based) against the block without columns 8 and 10 (MATLAB
    # deletes column 8, then column 9 of the reduced block).
    center = np.concatenate([blocks[..., :, 7], blocks[..., :, 8]], axis=-1)
    surround = np.delete(blocks, [7, 9], axis=-1).reshape(nby, nbx, -1)
    sigma_b = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = center.std(axis=-1, ddof=1) / surround.std(axis=-1, ddof=1)
        rho = np.where(np.isnan(rho), 0.0, rho)
        beta = np.abs(sigma_b - rho) / np.maximum(sigma_b, rho)
        noisy = sigma_b > 2.0 * beta

    impaired &= active
    noisy &= active
    distortion = np.where(impaired, 1.0 - var, 0.0) + np.where(noisy, var, 0.0)
    n_active = int(active.sum())
    score = 100.0 * (float(distortion[active].sum()) + 1.0) / (n_active + 1.0)

    def to_pixels(mask):
        return np.kron(mask, np.ones((n, n), dtype=bool)).astype(bool)[:h, :w]

    return PiqeResult(
        score=score,
        activity_mask=to_pixels(active),
        artifact_mask=to_pixels(impaired),
        noise_mask=to_pixels(noisy),
        n_active_blocks=n_active,
    )


def to_uint8_minmax(slice_) -> np.ndarray:
    """Min-max normalise a slice to [0, 1] and quantise ``round(255·x)`` to uint8 (§1 decision).

    A constant slice maps to all zeros.

    Args:
      slice_: ``[H, W]`` float, any units.

    Returns:
      ``[H, W]`` uint8.
    """
    s = np.asarray(slice_, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"slice_ must be [H, W], got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("slice_ must be finite")
    u = _minmax(s)
    if u is None:
        u = np.zeros_like(s)
    return np.floor(255.0 * u + 0.5).astype(np.uint8)


def piqe_slice(slice_) -> float:
    """PIQE of a cross-section under the §1 decision: min-max → uint8 → :func:`piqe`.

    Resampling to 512×512 is the caller's job (the cross-section renderer). A constant slice scores
    100 (uniform image).

    Args:
      slice_: ``[H, W]`` float, any units.

    Returns:
      PIQE score, lower is better.
    """
    return piqe(to_uint8_minmax(slice_)).score
