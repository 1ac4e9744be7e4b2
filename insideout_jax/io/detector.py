"""X-ray data as a detector gives it: raw counts with flat (and dark) fields → line integrals.

A flat-panel records counts ``I`` per pixel. With the dark field ``D`` (no beam) and the flat field
``F`` (beam, no object) the line integral of the attenuation along the pixel's ray is

    p = −ln((I − D) / (F − D))                                   (Beer–Lambert)

An object folder may hold its projections either as line integrals (float, ``xray/projections.tif``
alone) or as counts, converted on reading with what the folder says about the detector:

```
xray/projections.tif    counts: any integer type, or float with one of the two files below
xray/flat.tif           flat field(s): [nv, nu], or [K, nv, nu] averaged, or one per view [V, nv, nu]
xray/dark.tif           optional dark field(s), same shapes as the flat field (default 0)
xray/detector.json      instead of a flat field: {"i0": unattenuated counts, "dark": counts}
```

Counts at or below the dark level (a starved pixel) are clipped to half a count above it before the
logarithm, and the conversion says how many. Line integrals, converted or given, are then checked
for values no attenuation gives (:func:`check_line_integrals`).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import PathLike, _number, read_json

__all__ = ["FLAT_FILE", "DARK_FILE", "DETECTOR_FILE", "MAX_LINE_INTEGRAL", "MIN_LINE_INTEGRAL",
           "MAX_BACKGROUND", "CountsConversion", "counts_to_line_integrals", "check_line_integrals",
           "read_detector_fields"]

FLAT_FILE = "xray/flat.tif"
DARK_FILE = "xray/dark.tif"
DETECTOR_FILE = "xray/detector.json"

MAX_LINE_INTEGRAL = 30.0
"""e^−30 ≈ 1e−13 transmission: beyond any detector's dynamic range."""
MIN_LINE_INTEGRAL = -1.0
"""A line integral below −1 is e ≈ 2.7 times more light than the flat field: not noise, a wrong
flat field, I0 or sign."""
MAX_BACKGROUND = 3.0
"""In every view some rays pass beside the object (air, p ≈ 0). When even the least attenuated
pixels of the typical view exceed 3 (5 % transmission) the values are offset, not attenuated."""
_BACKGROUND_QUANTILE = 0.005


@dataclasses.dataclass(frozen=True)
class CountsConversion:
    """What was done to turn counts into line integrals (for the log and the report).

    Attributes:
      source: "flat field" (``xray/flat.tif``) or "i0" (``xray/detector.json``).
      counts_dtype: the stored type of the counts.
      flat_median: median unattenuated counts above the dark level.
      dark_median: median dark counts.
      n_flats: flat fields averaged (1 for "i0"); −1 when there is one per view.
      n_clipped: pixels at or below the dark level, clipped to half a count above it.
      n_pixels: pixels converted.
    """

    source: str
    counts_dtype: str
    flat_median: float
    dark_median: float
    n_flats: int
    n_clipped: int
    n_pixels: int

    def describe(self) -> str:
        per = "one per view" if self.n_flats < 0 else f"{self.n_flats} averaged"
        src = (f"flat field ({per})" if self.source == "flat field" else "I0 from xray/detector.json")
        return (f"X-ray projections converted from raw counts ({self.counts_dtype}) to line integrals"
                f" p = −ln((I − D)/(F − D)): {src}, median F − D = {self.flat_median:.6g} counts,"
                f" median D = {self.dark_median:.6g}; {self.n_clipped} of {self.n_pixels} pixels at"
                " or below the dark level clipped to D + 0.5")


def _field_stack(a: np.ndarray, n_views: int, det_shape, path, what: str) -> tuple[np.ndarray, int]:
    """A flat or dark field → (array broadcastable to [V, nv, nu], count; −1 = one per view)."""
    a = np.asarray(a, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or tuple(a.shape[1:]) != tuple(det_shape):
        raise ObjectFolderError(path, "shape", f"the {what} field is {a.shape}; it must be [nv, nu]"
                                f" = {tuple(det_shape)}, several [K, nv, nu] to average, or one per"
                                f" view [{n_views}, nv, nu]")
    if not np.all(np.isfinite(a)):
        raise ObjectFolderError(path, "values", f"the {what} field holds non-finite values")
    if a.shape[0] == n_views and n_views > 1:
        return a, -1
    return a.mean(axis=0, keepdims=True), a.shape[0]


def counts_to_line_integrals(counts, *, flat=None, dark=None, i0: float | None = None,
                             path: PathLike = "projections") -> tuple[np.ndarray, CountsConversion]:
    """Detector counts → line integrals ``p = −ln((I − D)/(F − D))``.

    Args:
      counts: [V, nv, nu] counts (any real type).
      flat: flat field(s) F: [nv, nu], [K, nv, nu] (averaged) or [V, nv, nu] (one per view).
      dark: dark field(s) D, same shapes (default 0).
      i0: instead of ``flat``: the unattenuated counts, one number (dark ``D`` then a number too).
      path: the file named in errors.

    Returns:
      ([V, nv, nu] float32 line integrals, :class:`CountsConversion`).

    Raises:
      ObjectFolderError: neither or both of ``flat`` and ``i0``; shapes that do not match; a flat
        field not above the dark field; negative or non-finite counts.
    """
    c = np.asarray(counts)
    if c.ndim == 2:
        c = c[None]
    if c.ndim != 3:
        raise ObjectFolderError(path, "shape", f"counts must be [V, nv, nu], got shape {c.shape}")
    if (flat is None) == (i0 is None):
        raise ObjectFolderError(path, "<file>", "raw counts need exactly one of a flat field"
                                f" ({FLAT_FILE}) or the unattenuated count i0 ({DETECTOR_FILE})")
    cf = c.astype(np.float64)
    if not np.all(np.isfinite(cf)) or cf.min() < 0:
        raise ObjectFolderError(path, "values", "counts must be finite and ≥ 0")
    v, det = c.shape[0], c.shape[1:]
    if flat is not None:
        f, n_flats = _field_stack(flat, v, det, path, "flat")
        d = _field_stack(dark, v, det, path, "dark")[0] if dark is not None else np.zeros((1, *det))
        source = "flat field"
    else:
        f, n_flats = np.full((1, *det), float(i0)), 1
        d = np.full((1, *det), 0.0 if dark is None else float(np.asarray(dark)))
        source = "i0"
    gain = f - d
    if not np.all(gain > 0):
        raise ObjectFolderError(path, "flat", f"the flat field is not above the dark field at"
                                f" {int(np.sum(gain <= 0))} pixels (min F − D = {gain.min():g}):"
                                " flat and dark fields swapped, or a dead detector region?")
    signal = cf - d
    clipped = signal <= 0
    p = -np.log(np.where(clipped, 0.5, signal) / gain)
    conv = CountsConversion(source, str(c.dtype), float(np.median(gain)), float(np.median(d)),
                            n_flats, int(clipped.sum()), int(c.size))
    return p.astype(np.float32), conv


def check_line_integrals(p: np.ndarray, path: PathLike) -> None:
    """Raise :class:`ObjectFolderError` for values no attenuation gives.

    Rules: every value finite; none above :data:`MAX_LINE_INTEGRAL` (raw detector values);
    none below :data:`MIN_LINE_INTEGRAL` (a wrong flat field, I0 or sign); and the background —
    the 0.5 % quantile of each view, median over views — at most :data:`MAX_BACKGROUND`
    (offset values, e.g. −ln I without I0).
    """
    if not np.all(np.isfinite(p)):
        raise ObjectFolderError(path, "values", f"{int(np.sum(~np.isfinite(p)))} non-finite values")
    if not p.size:
        return
    hi, lo = float(p.max()), float(p.min())
    if hi > MAX_LINE_INTEGRAL:
        raise ObjectFolderError(path, "values", f"reach {hi:g}: line integrals −ln(I/I0) above"
                                f" {MAX_LINE_INTEGRAL:g} (transmission < e^−{MAX_LINE_INTEGRAL:g})"
                                " do not occur; these look like raw detector values. Store counts"
                                f" as integers with a flat field ({FLAT_FILE}) or i0 ({DETECTOR_FILE}),"
                                " or convert them with p = −ln(I / I0)")
    if lo < MIN_LINE_INTEGRAL:
        raise ObjectFolderError(path, "values", f"go down to {lo:g}: a line integral below"
                                f" {MIN_LINE_INTEGRAL:g} is more light than the unattenuated beam;"
                                " check the flat field / i0 (and the sign: p = −ln(I/I0) ≥ 0)")
    background = float(np.median(np.quantile(p.reshape(p.shape[0], -1), _BACKGROUND_QUANTILE, axis=1)))
    if background > MAX_BACKGROUND:
        raise ObjectFolderError(path, "values", f"the background (least attenuated pixels of a"
                                f" view) is at {background:.3g}, not near 0: the values look offset"
                                " (e.g. −ln I without the flat field). Give line integrals"
                                " −ln(I/I0), or counts with a flat field or i0")


def read_detector_fields(root: pathlib.Path, read_tiff) -> dict:
    """The keyword arguments of :func:`counts_to_line_integrals` an object folder gives (empty when
    it gives none): ``flat``/``dark`` from TIFFs, or ``i0``/``dark`` from ``xray/detector.json``."""
    flat_p, dark_p, det_p = root / FLAT_FILE, root / DARK_FILE, root / DETECTOR_FILE
    if flat_p.exists() and det_p.exists():
        raise ObjectFolderError(det_p, "<file>", f"both {FLAT_FILE} and {DETECTOR_FILE} give the"
                                " unattenuated counts; keep one")
    if flat_p.exists():
        return {"flat": read_tiff(flat_p), "dark": read_tiff(dark_p) if dark_p.exists() else None}
    if dark_p.exists():
        raise ObjectFolderError(dark_p, "<file>", f"a dark field without a flat field ({FLAT_FILE})")
    if det_p.exists():
        d = read_json(det_p)
        if "i0" not in d:
            raise ObjectFolderError(det_p, "i0", "missing: the unattenuated counts per pixel")
        out = {"i0": _number(d["i0"], det_p, "i0", positive=True)}
        if d.get("dark") is not None:
            out["dark"] = _number(d["dark"], det_p, "dark")
            if out["dark"] < 0 or out["dark"] >= out["i0"]:
                raise ObjectFolderError(det_p, "dark", f"must be in [0, i0), got {out['dark']:g}")
        return out
    return {}
