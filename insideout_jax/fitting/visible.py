"""How far the RGB splat centres lie behind the surface the RGB model shows (host side + renders).

3DGS splat centres are not on the surface a model renders: the splats that make a surface
opaque overlap in depth, and their centres lie behind the first one's visible front. Measured on
the four objects of the cpu preset's runs (median point-to-plane distance of the fitted RGB
centres, opacity ≥ 0.05, to the true outer surface, under the object-based reference map of
EVALUATION.md §7): skull 0.93 mm, matryoshka 1.06, Stanford head 0.74, TIGRE head 0.73 — about
half a training pixel (1.9 mm at the photos' half size and 520 mm). Matching those centres to the
radiative surface therefore shrinks the RGB set against the CT by the depth over the object's
radius: about 1 % of scale, the size of the whole alignment budget.

The depth is measured on the RGB model alone, without the CT: the model's own silhouettes in the
photos' cameras (alpha ≥ ½, its largest component) carve its visual hull, and a centre's depth
below the hull is the smallest, over the views, of its image distance to the silhouette's edge
times its camera depth over the focal length. The median over the centres is the model's depth
(decision: the median, as concavities, where the hull stands outside the surface, are a minority
of a surface). The fitting stage moves the radiative target surface inward by it.

Known bias (measured, not corrected): the measured depth exceeds the true one, 1.59 against
0.93 mm (skull), 1.42 against 1.06 (matryoshka), 1.32 against 0.85 (Stanford), 1.33 against 0.79
(TIGRE); the true surface itself lies about that far below the model's hull (median 0.5 mm on the
skull), so the hull is loose by the silhouettes' excess, not by concavities. Part of it was in
the data: photos of a volume with flattened tissue showed the envelope of its voxel steps
(:func:`insideout_jax.data.ctobject.without_steps`); rendering them without the steps took the
excess from 0.70 to 0.54 mm on the TIGRE head and from 0.58 to 0.47 on the Stanford head. The
rest is not explained: on the TIGRE head the model's alpha-½ contour lies on the photos' own
edges (+0.06 px, median over 18,500 contour points). Rendered at the photos' half size (the
training size) the silhouettes are larger still (depths 1.9–2.1 mm).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from insideout_jax.cameras import project_points
from insideout_jax.render.rgb import render_rgb
from insideout_jax.splats import RGBSplats

__all__ = ["hull_depths", "visible_depth"]


def _silhouette(alpha: np.ndarray, level: float) -> np.ndarray:
    """The largest connected component of alpha ≥ level (False everywhere when none)."""
    mask = alpha >= level
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    return lab == 1 + int(np.argmax(ndimage.sum(mask, lab, range(1, n + 1))))


def hull_depths(points: np.ndarray, silhouettes, cameras) -> np.ndarray:
    """[N] depth of each point below the visual hull of ``silhouettes`` (units of the points).

    Args:
      points: [N, 3] float, the cameras' frame.
      silhouettes: [V] boolean [H, W] masks, one per camera (pixel (i, j) centred at (j + ½, i + ½)).
      cameras: [V] :class:`~insideout_jax.cameras.PinholeCamera` of the masks' size.

    Returns:
      [N] float64: min over the views that see the point (in front of the camera, inside the
      frame) of (image distance from its projection to the nearest pixel outside the silhouette,
      less half a pixel, at least 0) × its camera depth / fx; +inf where no view sees it.
    """
    p = np.asarray(points, np.float64)
    depth = np.full(len(p), np.inf)
    if len(silhouettes) != len(cameras):
        raise ValueError(f"{len(silhouettes)} silhouettes for {len(cameras)} cameras")
    for sil, cam in zip(silhouettes, cameras, strict=True):
        sil = np.asarray(sil, bool)
        if sil.shape != (cam.height, cam.width):
            raise ValueError(f"silhouette {sil.shape} does not match its camera ({cam.height},"
                             f" {cam.width})")
        edt = ndimage.distance_transform_edt(sil)
        uv, z = (np.asarray(a, np.float64) for a in project_points(cam, jnp.asarray(p)))
        # a view says nothing about a point behind it or outside its frame (its silhouette is
        # unknown there), as in the object selection's visual hull
        seen = (z > 0) & np.all(np.isfinite(uv), axis=1) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (
            uv[:, 0] <= cam.width) & (uv[:, 1] <= cam.height)
        uv = np.where(seen[:, None], uv, 0.5)
        d = ndimage.map_coordinates(edt, (uv[:, ::-1] - 0.5).T, order=1, mode="nearest")
        d = np.maximum(d - 0.5, 0.0) * np.where(seen, z, 0.0) / float(cam.fx)
        depth = np.where(seen, np.minimum(depth, d), depth)
    return depth


def visible_depth(rgb: RGBSplats, cameras, *, min_opacity: float = 0.0,
                  alpha_level: float = 0.5) -> float:
    """Median depth of the active RGB centres (opacity ≥ ``min_opacity``) below the visual hull
    of the model's own silhouettes in ``cameras`` (module doc); units of the RGB frame.

    Raises:
      ValueError: without cameras, active splats or a view that sees the model.
    """
    if not len(cameras):
        raise ValueError("visible_depth needs the photos' cameras")
    keep = np.asarray(rgb.active) & (np.asarray(rgb.opacities) >= min_opacity)
    if not keep.any():
        raise ValueError("no active RGB splat reaches the opacity threshold")
    sils = [_silhouette(np.asarray(render_rgb(rgb, cam).alpha), alpha_level) for cam in cameras]
    d = hull_depths(np.asarray(rgb.means, np.float64)[keep], sils, cameras)
    d = d[np.isfinite(d)]
    if not len(d):
        raise ValueError("no camera sees the RGB model")
    return float(np.median(d))
