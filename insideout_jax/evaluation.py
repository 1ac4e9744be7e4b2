"""The blocks of ``metrics.json`` (docs/OUTPUTS.md), each computed from arrays or splats.

Host-side functions on top of :mod:`insideout_jax.metrics` (the tested primitives) and the slice
renderer; the runner (``experiments/``) calls them and writes the results. Protocols and decisions
are those of EVALUATION.md; the decisions this module adds are stated where they are made:

* :func:`cross_section_metrics` (Table 2, §6): the density field of the splats on the §6 planes
  against the CT volume sampled on the same pixel centres. PSNR and SSIM after min-max normalising
  prediction and reference independently (§2), PIQE of the prediction (§1). *Decision*: a slice
  whose reference is constant is skipped for **all** three metrics, so they pool the same slices.
* :func:`chamfer_block` (Table 3, §4): HPR + Chamfer with the protocol centre and radius fixed per
  object from the radiative centres, the same for every ablation row.
* :func:`occupancy_block` (Fig. 6, §5): marching cubes on the continuous voxelized density.
  *Decision*: iso level = Otsu's threshold of the volume's voxels, which on an object surrounded
  by air separates air from the object (the outer surface; checked on the skull phantom smoothed by
  a 1.5-voxel Gaussian: 0.0125 /mm, between air 0 and soft tissue 0.020). Half the 99th percentile
  (the other obvious choice) lands on bone there (0.024 /mm) and is offered as ``"half_p99"``.
* :func:`internal_noise` (issue 7): depth of a splat centre below the true outer surface, measured
  along the outward normal of the nearest true surface sample (below).
* :func:`alignment_errors` (§7): rotation, relative scale and translation errors of an estimated
  RGB → CT similarity (reuses :func:`insideout_jax.fitting.procrustes.similarity_errors`).
* :func:`volume_metrics` (§7): 3D PSNR / SSIM with the reference maximum as data range.

Values that cannot be computed are ``nan`` here; :func:`to_json_ready` turns them into ``None``
(JSON ``null``) for ``metrics.json``, where the caller adds the reason to ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from insideout_jax.metrics.geometry import chamfer_hpr, protocol_center_radius
from insideout_jax.metrics.image import (
    piqe_slice,
    psnr3d,
    psnr_affine,
    psnr_minmax,
    ssim3d,
    ssim_padded,
    ssim_valid,
)
from insideout_jax.metrics.occupancy import (  # noqa: F401
    density_mesh,
    depth_below_surface,
    internal_noise,
    iso_level,
    occupancy_block,
    occupancy_from_mesh,
)

__all__ = [
    "render_cross_sections",
    "reference_cross_sections",
    "slice_metrics",
    "cross_section_metrics",
    "chamfer_block",
    "iso_level",
    "density_mesh",
    "occupancy_from_mesh",
    "occupancy_block",
    "depth_below_surface",
    "internal_noise",
    "alignment_errors",
    "volume_metrics",
    "to_json_ready",
]

_KINDS = ("axial", "coronal")


def _density_splats(splats):
    """RadSplats / RGBSplats as given; a UnifiedModel through its density view."""
    from insideout_jax.splats import RadSplats, RGBSplats
    from insideout_jax.visual import UnifiedModel, as_radiative

    if isinstance(splats, UnifiedModel):
        return as_radiative(splats)
    if isinstance(splats, (RadSplats, RGBSplats)):
        return splats
    raise ValueError(
        f"splats must be RadSplats, RGBSplats or UnifiedModel, got {type(splats).__name__}"
    )


def _check_slices(slices) -> list:
    from insideout_jax.internal.pseudo_gt import AxisSlice

    slices = list(slices)
    if not slices or not all(isinstance(s, AxisSlice) for s in slices):
        raise ValueError("slices must be a non-empty sequence of AxisSlice (internal.pseudo_gt)")
    return slices


def render_cross_sections(splats, slices: Sequence, *, cutoff_sigma: float = 6.0) -> np.ndarray:
    """Density field of a splat set on each slice (EVALUATION.md §6, exact plane restriction).

    Args:
      splats: RadSplats (density, 1/mm), RGBSplats (opacity as density) or
        :class:`insideout_jax.visual.UnifiedModel` (its density view), in the CT frame.
      slices: S :class:`insideout_jax.internal.pseudo_gt.AxisSlice` of one resolution R.
      cutoff_sigma: Mahalanobis cut of the renderer (6: metrics within 1e-5 of the exact field).

    Returns:
      ``[S, R, R]`` float32 density, rows/columns as :mod:`insideout_jax.internal.pseudo_gt`.
    """
    from insideout_jax.internal.pseudo_gt import to_plane
    from insideout_jax.render.slices import render_slice

    sp = _density_splats(splats)
    slices = _check_slices(slices)
    return np.stack([np.asarray(render_slice(sp, to_plane(s), cutoff_sigma=cutoff_sigma))
                     for s in slices]).astype(np.float32)


def reference_cross_sections(volume, spacing_zyx, origin_xyz, slices: Sequence) -> np.ndarray:
    """CT volume sampled (trilinear, zero outside) on each slice's pixel centres.

    Args:
      volume: ``[Z, Y, X]`` float, CT units (e.g. attenuation 1/mm).
      spacing_zyx: ``(dz, dy, dx)`` mm.
      origin_xyz: ``(x, y, z)`` mm, centre of voxel ``[0, 0, 0]``.
      slices: S AxisSlice of one resolution R.

    Returns:
      ``[S, R, R]`` float32 in the volume's units.
    """
    from insideout_jax.internal.pseudo_gt import sample_volume_on_slice

    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume must be [Z, Y, X], got shape {vol.shape}")
    slices = _check_slices(slices)
    return np.stack([sample_volume_on_slice(vol, spacing_zyx, origin_xyz, s) for s in slices])


def _minmax01(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _pool(rows: list, keys: Sequence[str]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in keys}
    out["n_slices"] = float(len(rows))
    return out


def slice_metrics(preds, refs, kinds: Sequence[str], *, ref_range=None) -> dict:
    """Table 2 metrics of predicted slices against reference slices, pooled over slices.

    Per slice: PSNR and SSIM (reported "valid" form, and the 3DGS padded form as ``ssim_padded``)
    after min-max normalising each image to [0, 1]; PIQE of the prediction (min-max → uint8);
    the affine-fit PSNR (reference scaled by ``ref_range``, prediction fitted). Slices with a
    constant reference are skipped for all metrics (counted in ``n_skipped``).

    Args:
      preds: ``[S, H, W]`` float predicted density (any units); H, W ≥ 11.
      refs: ``[S, H, W]`` float reference (CT units).
      kinds: S strings, ``"axial"`` or ``"coronal"``.
      ref_range: ``(lo, hi)`` fixed range of the reference volume for ``psnr_affine``; default
        the min and max over ``refs``.

    Returns:
      ``{"psnr": dB, "ssim", "piqe", "psnr_affine": dB, "ssim_padded", "n_slices", "n_skipped",
      "axial": {same keys and n_slices}, "coronal": {...}, "per_slice": [{"index" (into the S
      slices), "kind", "psnr", ...}]}``;
      means are ``nan`` when no slice is left.
    """
    p = np.asarray(preds, np.float64)
    r = np.asarray(refs, np.float64)
    if p.ndim != 3 or p.shape != r.shape:
        raise ValueError(f"preds and refs must both be [S, H, W], got {p.shape} and {r.shape}")
    if min(p.shape[1:]) < 11:
        raise ValueError(f"slices must be at least 11×11 (SSIM window), got {p.shape[1:]}")
    kinds = [str(k) for k in kinds]
    if len(kinds) != p.shape[0] or not set(kinds) <= set(_KINDS):
        raise ValueError(f"kinds must be {p.shape[0]} strings among {_KINDS}, got {kinds}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        raise ValueError("preds and refs must be finite")
    if ref_range is None:
        ref_range = (float(r.min()), float(r.max()))
    keys = ("psnr", "ssim", "piqe", "psnr_affine", "ssim_padded")
    rows, skipped = [], 0
    for i, (pi, ri, kind) in enumerate(zip(p, r, kinds, strict=True)):
        if not ri.max() > ri.min():
            skipped += 1
            continue
        pn, rn = _minmax01(pi), _minmax01(ri)
        rows.append({"index": i, "kind": kind, "psnr": psnr_minmax(pi, ri), "ssim": ssim_valid(pn, rn),
                     "piqe": piqe_slice(pi), "psnr_affine": psnr_affine(pi, ri, ref_range),
                     "ssim_padded": ssim_padded(pn, rn)})
    out = _pool(rows, keys)
    out["n_skipped"] = float(skipped)
    for kind in _KINDS:
        out[kind] = _pool([x for x in rows if x["kind"] == kind], keys)
    out["per_slice"] = rows
    return out


def cross_section_metrics(splats, slices: Sequence, ct_volume, spacing_zyx, origin_xyz, *,
                          ref_range=None, cutoff_sigma: float = 6.0) -> dict:
    """One ``cross_sections[method][split]`` entry of metrics.json (paper Table 2).

    Renders the splats' density on every slice, samples the CT volume on the same pixel centres and
    pools :func:`slice_metrics`. Use the training slices (``make_slices(..., heldout=False)``) and
    the held-out ones (``heldout=True``, offset 7.5 mm) for the two splits.

    Args:
      splats: RadSplats, RGBSplats (opacity as density) or UnifiedModel, CT frame.
      slices: AxisSlice sequence (one resolution, 512 by default in the protocol).
      ct_volume: ``[Z, Y, X]`` float CT volume.
      spacing_zyx: ``(dz, dy, dx)`` mm.
      origin_xyz: ``(x, y, z)`` mm, centre of voxel ``[0, 0, 0]``.
      ref_range: ``(lo, hi)`` for the affine-fit PSNR; default the CT volume's min and max.
      cutoff_sigma: renderer cut (see :func:`render_cross_sections`).

    Returns:
      The :func:`slice_metrics` dict (``psnr``, ``ssim``, ``piqe`` are the Table 2 numbers); each
      ``per_slice`` row also gets the slice's ``position`` (mm along its normal axis).
    """
    vol = np.asarray(ct_volume, np.float32)
    refs = reference_cross_sections(vol, spacing_zyx, origin_xyz, slices)
    preds = render_cross_sections(splats, slices, cutoff_sigma=cutoff_sigma)
    if ref_range is None:
        ref_range = (float(vol.min()), float(vol.max()))
    slices = list(slices)
    out = slice_metrics(preds, refs, [s.kind for s in slices], ref_range=ref_range)
    for row in out["per_slice"]:
        row["position"] = float(slices[row["index"]].position)
    return out


def chamfer_block(rgb_points_by_row: Mapping[str, object], rad_points, *, protocol_points=None,
                  n_views: int = 42) -> dict:
    """Chamfer distances of the ablation rows (paper Table 3, EVALUATION.md §4).

    Each row compares the RGB splat centres of one ablation setting (``"none"``,
    ``"hierarchical"``, ``"internal"``), mapped into the CT frame by that setting's alignment,
    with the radiative centres, after hidden point removal from the 42 protocol cameras.

    Args:
      rgb_points_by_row: row name → ``[N, 3]`` float RGB centres, CT frame, mm.
      rad_points: ``[M, 3]`` float radiative centres, mm, the same for every row; or a mapping
        row name → ``[M_row, 3]`` (e.g. the radiative set changes with internal rendering).
      protocol_points: ``[P, 3]`` float centres that fix the protocol centre c and radius r for all
        rows; default ``rad_points`` (its first row when it is a mapping).
      n_views: protocol camera count (42 = level-1 icosphere).

    Returns:
      ``{"chamfer_mm": {row: mm}, "details": {row: chamfer_hpr dict (directed and squared
      variants, surface point counts)}, "center": [3] mm, "radius": mm}``.
    """
    if not isinstance(rgb_points_by_row, Mapping) or not rgb_points_by_row:
        raise ValueError("rgb_points_by_row must be a non-empty mapping row name → [N, 3] points")
    if isinstance(rad_points, Mapping):
        missing = [k for k in rgb_points_by_row if k not in rad_points]
        if missing:
            raise ValueError(f"rad_points has no entry for rows {missing}")
        rad_by_row = dict(rad_points)
        first = rad_points[next(iter(rad_points))]
    else:
        rad_by_row = {k: rad_points for k in rgb_points_by_row}
        first = rad_points
    center, radius = protocol_center_radius(first if protocol_points is None else protocol_points)
    details = {row: chamfer_hpr(pts, rad_by_row[row], center=center, r=radius, n_views=n_views)
               for row, pts in rgb_points_by_row.items()}
    return {"chamfer_mm": {row: d["chamfer"] for row, d in details.items()}, "details": details,
            "center": [float(v) for v in center], "radius": float(radius)}


def _similarity(x, name: str):
    """A Similarity from a Similarity (the fitting's, or ``truth/transform.json``'s as read by
    :func:`insideout_jax.io.read_transform`), a (R, t, s) tuple or a transform.json dict."""
    import jax.numpy as jnp

    from insideout_jax.fitting.procrustes import Similarity
    from insideout_jax.io import Similarity as FileSimilarity

    if isinstance(x, (Similarity, FileSimilarity)):
        r, t, s = x.rotation, x.translation, x.scale
    elif isinstance(x, Mapping):
        try:
            r, t, s = x["rotation"], x["translation"], x["scale"]
        except KeyError as e:
            raise ValueError(f"{name} lacks key {e.args[0]!r}") from None
    elif isinstance(x, (tuple, list)) and len(x) == 3:
        r, t, s = x
    else:
        raise ValueError(f"{name} must be a Similarity, (R, t, s) or a transform dict")
    r, t, s = (np.asarray(v, np.float64) for v in (r, t, s))
    if r.shape != (3, 3) or t.shape != (3,) or s.shape != () or not s > 0:
        raise ValueError(f"{name} must have R [3, 3], t [3] and scalar s > 0, got {r.shape}, "
                         f"{t.shape}, {s}")
    if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
        raise ValueError(f"{name} rotation must be a proper rotation matrix")
    return Similarity(jnp.asarray(r, jnp.float32), jnp.asarray(t, jnp.float32),
                      jnp.asarray(s, jnp.float32))


def alignment_errors(estimate, truth, *, center=None) -> dict:
    """Errors of an estimated RGB → CT similarity against the true one (one ``alignment`` entry).

    Args:
      estimate: :class:`insideout_jax.fitting.procrustes.Similarity`, ``(R [3, 3], t [3], s)`` or
        a ``{"rotation", "translation", "scale"}`` dict; maps p ↦ s·R·p + t (SfM → CT, mm).
      truth: the same for the true map (``truth/transform.json``).
      center: ``[3]`` SfM-frame point where the translation error is measured (recommended: the
        object's centre, e.g. the mean of the RGB splat centres before alignment); default the
        SfM origin, i.e. ‖t_est − t_true‖.

    Returns:
      ``{"rot_deg": angle of R_est R_trueᵀ (degrees), "scale_rel": |s_est/s_true − 1|,
      "trans_mm": ‖estimate(c) − truth(c)‖ (mm)}``.
    """
    import jax.numpy as jnp

    from insideout_jax.fitting.procrustes import similarity_errors

    est, tru = _similarity(estimate, "estimate"), _similarity(truth, "truth")
    c = None
    if center is not None:
        c = np.asarray(center, np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise ValueError(f"center must be 3 finite numbers, got {center}")
        c = jnp.asarray(c, jnp.float32)
    err = similarity_errors(est, tru, center=c)
    return {"rot_deg": float(err["rot_deg"]), "scale_rel": float(err["scale_rel"]),
            "trans_mm": float(err["trans"])}


def volume_metrics(vol, ref, *, data_range: float | None = None) -> dict:
    """3D PSNR / SSIM of a volume against the true one (one ``volume[method]`` entry, §7).

    Both volumes stay in their units (density 1/mm); the data range is the reference maximum
    (R²-Gaussian style), and SSIM is taken on both volumes divided by it.

    Args:
      vol: ``[Z, Y, X]`` float predicted density.
      ref: same shape, ground truth.
      data_range: override of the data range (default ``ref.max()``, must be > 0).

    Returns:
      ``{"psnr3d": dB, "ssim3d": x}``.
    """
    a = np.asarray(vol, np.float64)
    b = np.asarray(ref, np.float64)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"vol and ref must both be [Z, Y, X], got {a.shape} and {b.shape}")
    rng = float(b.max()) if data_range is None else float(data_range)
    if not rng > 0:
        raise ValueError(f"data_range must be > 0 (the reference maximum by default), got {rng}")
    return {"psnr3d": psnr3d(a, b, data_range=rng), "ssim3d": ssim3d(a / rng, b / rng)}


def to_json_ready(obj):
    """Nested dicts/lists with NumPy/JAX scalars as floats and non-finite values as ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_ready(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, str) or obj is None:
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    arr = np.asarray(obj)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.number):
        v = float(arr)
        return v if math.isfinite(v) else None
    if arr.ndim > 0:
        return to_json_ready(arr.tolist())
    return obj
