"""The object, not the room: which RGB splats (or SfM points) belong to the photographed object.

Photos of an object show the table it stands on and the room behind it, and SfM and 3DGS
reconstruct those too. They must stay out of hierarchical fitting (the radiative model has no
table), of internal rendering and of the unified model. Two ways, decided here:

**With masks** (``rgb/masks/<photo stem>.png``, or a photo's alpha channel): a point is the
object's when it projects inside the mask in at least ``agree`` (90 %) of the views that see it —
the visual hull, tolerant to a few imperfect masks.

**Without masks** (the scene's geometry, measured in the SfM frame, no unit assumed):

1. *Where the cameras look*: the point nearest to all optical axes (least squares) is the object's
   centre c.
2. *Up*: the photographer walks around the object on rings above the table, so the camera centres
   spread least along the vertical: up is their covariance's smallest axis, pointing from c
   towards the cameras.
3. *The room*: points farther from the vertical axis through c than ``ring_fraction`` (½) of the
   cameras' median horizontal distance are backdrop (the backdrop stands behind the cameras).
4. *The table*: in the outer annulus (0.6–1 of that radius) only table points stand low; when
   at least 10 points are there and half of them lie within 2 % of the radius of their median
   height (a flat layer), the table's height is that median, its thickness 3 × their MAD (≥ 1 %
   of the radius), and every point not above it is removed. Otherwise (no table) nothing is.

The selection is scored against true silhouettes by :func:`selection_scores` (generated objects).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from insideout_jax.cameras import PinholeCamera

__all__ = ["ObjectSelection", "select_by_geometry", "select_by_masks", "visual_hull_membership",
           "selection_scores", "matte_photos"]


@dataclasses.dataclass(frozen=True)
class ObjectSelection:
    """Attributes:
      keep: [N] bool, the object's points.
      method: "masks" or "geometry".
      centre: [3] where the cameras look (geometry), or None.
      up: [3] unit vertical (geometry), or None.
      radius: the room's boundary about the vertical axis (geometry), SfM units, or None.
      table_height: the table's top along ``up`` from the centre (geometry; None: no table found).
    """

    keep: np.ndarray
    method: str
    centre: np.ndarray | None = None
    up: np.ndarray | None = None
    radius: float | None = None
    table_height: float | None = None

    def describe(self, among=None) -> str:
        """One line; ``among`` ([N] bool): count only those (e.g. the active splats)."""
        among = np.ones(self.keep.shape, bool) if among is None else np.asarray(among, bool)
        n, k = int(among.sum()), int((self.keep & among).sum())
        how = ("inside the masks (visual hull)" if self.method == "masks" else
               "inside the camera ring" + ("" if self.table_height is None else ", above the table"))
        return (f"object selection ({self.method}): {k} of {n} RGB splats kept, {how}"
                + ("; the later stages see the photos matted to them" if k < n else ""))


def _centres(cameras) -> np.ndarray:
    return np.stack([-np.asarray(c.rotation, np.float64).T @ np.asarray(c.translation, np.float64)
                     for c in cameras])


def _axes(cameras) -> np.ndarray:
    return np.stack([np.asarray(c.rotation, np.float64)[2] for c in cameras])  # camera +z in world


def select_by_geometry(points, cameras, *, ring_fraction: float = 0.5) -> ObjectSelection:
    """The object's points from the scene's geometry alone (module docstring, steps 1–4).

    Args:
      points: [N, 3] SfM-frame positions (splat centres or sparse points).
      cameras: the views' :class:`PinholeCamera` (world → camera).
      ring_fraction: the room's boundary as a fraction of the cameras' horizontal distance.
    """
    _check_cameras(cameras)
    p = np.asarray(points, np.float64)
    o, d = _centres(cameras), _axes(cameras)
    m = np.zeros((3, 3))
    b = np.zeros(3)
    for oi, di in zip(o, d, strict=True):  # Σ (I − d dᵀ)(c − o) = 0
        proj = np.eye(3) - np.outer(di, di)
        m += proj
        b += proj @ oi
    c = np.linalg.solve(m, b)
    w, v = np.linalg.eigh(np.cov((o - c).T))
    up = v[:, 0] * np.sign(v[:, 0] @ (o - c).mean(0) or 1.0)
    rel = p - c
    h = rel @ up
    r = np.linalg.norm(rel - np.outer(h, up), axis=1)
    cam_r = float(np.median(np.linalg.norm((o - c) - np.outer((o - c) @ up, up), axis=1)))
    radius = ring_fraction * cam_r
    keep = r <= radius
    annulus = keep & (r >= 0.6 * radius)
    table = None
    ha = h[annulus]
    if ha.size >= 10 and np.mean(np.abs(ha - np.median(ha)) < 0.02 * radius) >= 0.5:  # a flat layer
        table = float(np.median(ha))
        thick = max(3.0 * float(np.median(np.abs(ha - table))), 0.01 * radius)
        keep &= h > table + thick
        table = table + thick
    return ObjectSelection(keep, "geometry", c, up, radius, table)


def visual_hull_membership(points, cameras, masks, *, agree: float = 0.9, distortion=None,
                           dilate_px: int = 2) -> np.ndarray:
    """[N] bool: inside the masks in ≥ ``agree`` of the views whose frame holds the point.

    Args:
      masks: [V, H, W] bool silhouettes, one per camera (in the photos' frame), dilated by
        ``dilate_px`` pixels first: a surface point projects onto its silhouette's rim, give or take
        SfM's reprojection error (≈ 0.5 px).
      distortion: per view None or (k1, k2, p1, p2): the masks' lens (they are in the photos as
        taken; the point is projected through the pinhole camera, then the lens).
    """
    from insideout_jax.io.undistort import distort_points

    _check_cameras(cameras)
    import cv2

    p = np.asarray(points, np.float64)
    kernel = np.ones((2 * dilate_px + 1,) * 2, np.uint8)
    inside = np.zeros(len(p))
    seen = np.zeros(len(p))
    for k, (cam, mask) in enumerate(zip(cameras, masks, strict=True)):
        r, t = np.asarray(cam.rotation, np.float64), np.asarray(cam.translation, np.float64)
        x = p @ r.T + t
        front = x[:, 2] > 1e-9
        z = np.where(front, x[:, 2], 1.0)
        uv = np.stack([float(cam.fx) * x[:, 0] / z + float(cam.cx),
                       float(cam.fy) * x[:, 1] / z + float(cam.cy)], 1)
        uv = np.where(front[:, None] & np.isfinite(uv), np.clip(uv, -1e6, 1e6), -1.0)
        if distortion is not None and distortion[k] is not None:
            # the lens polynomial holds over the frame only: far outside it, the point is unseen
            near = np.all(np.abs(uv - [cam.cx, cam.cy]) <= 2.0 * np.array([cam.width, cam.height]), 1)
            uv = np.where(near[:, None], distort_points(np.where(near[:, None], uv, 0.0), cam,
                                                        distortion[k]), -1.0)
            uv = np.where(np.isfinite(uv), uv, -1.0)
        j, i = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        ok = front & (j >= 0) & (j < mask.shape[1]) & (i >= 0) & (i < mask.shape[0])
        seen += ok
        grown = cv2.dilate(np.asarray(mask, np.uint8), kernel) if dilate_px else np.asarray(mask)
        inside[ok] += grown[i[ok], j[ok]] > 0
    return (seen > 0) & (inside >= agree * np.maximum(seen, 1))


def select_by_masks(points, cameras, masks, *, agree: float = 0.9, distortion=None) -> ObjectSelection:
    """The object's points from the user's masks (module docstring)."""
    return ObjectSelection(visual_hull_membership(points, cameras, masks, agree=agree,
                                                  distortion=distortion), "masks")


def selection_scores(keep, truth) -> dict:
    """Precision and recall of a selection against the true membership ([N] bool each)."""
    keep, truth = np.asarray(keep, bool), np.asarray(truth, bool)
    tp = float(np.sum(keep & truth))
    return {"precision": tp / max(float(keep.sum()), 1.0), "recall": tp / max(float(truth.sum()), 1.0),
            "selected": int(keep.sum()), "true_object": int(truth.sum()), "total": int(keep.size)}


def _check_cameras(cameras) -> None:
    if not cameras or not all(isinstance(c, PinholeCamera) for c in cameras):
        raise ValueError("cameras must be a non-empty list of PinholeCamera")


def matte_photos(photos: np.ndarray, cameras, splats, keep, background, *, threshold: float = 0.5,
                 grow_px: int = 1) -> np.ndarray:
    """The photos with everything but the object replaced by the training ``background``.

    Once the table and the room are out of the model (:func:`select_by_geometry` /
    :func:`select_by_masks`), the later stages (internal rendering's photo term, the colour fit,
    the held-out scores) compare the object's splats with photos: their background pixels must
    not pull the object's colours. The object's region in each photo is where the kept splats'
    accumulated opacity (stage 1a's model, rendered by the 3DGS rasterizer with the photo's SfM
    camera) reaches ``threshold``, grown by ``grow_px`` pixels so its rim stays photo. When
    nothing was dropped the photos are returned as they are.

    Args:
      photos: [V, H, W, 3]; cameras: their SfM-frame cameras (the photos' size).
      splats: stage 1a's RGB splats (SfM frame); keep: [N] bool, the object's.
    """
    import cv2
    import jax.numpy as jnp

    from insideout_jax.render.rgb import render_rgb

    act = np.asarray(splats.active)
    keep = np.asarray(keep, bool) & act
    if keep.sum() == act.sum():
        return photos
    obj = splats.replace(active=jnp.asarray(keep))
    bg = np.asarray(background, np.float32)
    kernel = np.ones((2 * grow_px + 1,) * 2, np.uint8)
    out = np.array(photos, copy=True)
    for k, cam in enumerate(cameras):
        alpha = np.asarray(render_rgb(obj, cam).alpha)
        mask = cv2.dilate((alpha >= threshold).astype(np.uint8), kernel) > 0
        out[k][~mask] = bg
    return out
