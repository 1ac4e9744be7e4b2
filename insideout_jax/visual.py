"""Stage 4, visual alignment: colour transfer and detail cloning → the unified model (paper §4.3).

- **Colour transfer**: every radiative splat takes the view-independent colour (DC term) of its
  nearest RGB splat (exact 1-NN, chunked and jitted: :func:`insideout_jax.fitting.neighbors
  .nearest_neighbor`).
- **Detail cloning**: RGB splats whose largest covariance eigenvalue (largest scale²) is ≤ the
  p-th percentile (p = 95) of the RGB set join the model, keeping their full SH colour and opacity.

The unified model (:class:`UnifiedModel`) is one splat set that renders as RGB (colour + opacity:
:attr:`UnifiedModel.splats`, for the RGB rasterizer) and as density (:func:`as_radiative`, for
projections, slices and volumes). Decisions (the paper is silent):

- *Opacity of a radiative splat* in RGB renders: α = 1 − exp(−ρ·√(2π)·s̄), the opacity of a ray
  through its centre (same as the internal-rendering zero-one term).
- *Density of a cloned RGB splat*: that of its nearest radiative splat (density transfer, the
  mirror image of colour transfer), so cross-sections and volumes keep CT units.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax import sh as sh_lib
from insideout_jax.fitting.neighbors import nearest_neighbor
from insideout_jax.internal.train import radiative_opacity_logits
from insideout_jax.splats import RadSplats, RGBSplats, select_active

__all__ = ["UnifiedModel", "colour_transfer", "detail_clone_mask", "unify", "as_radiative",
           "write_unified_ply"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class UnifiedModel:
    """The InsideOut model: one splat set with colour, opacity and density.

    Attributes:
      splats: [C] RGB view (means, scales, rotations, opacity logits, SH colour).
      log_densities: [C] float32 log peak density (1/mm).
      radiative: [C] bool, True for splats that came from the radiative set.
    """

    splats: RGBSplats
    log_densities: jax.Array
    radiative: jax.Array


def colour_transfer(rad: RadSplats, rgb: RGBSplats) -> jax.Array:
    """[C_rad, 3] colour in [0, 1] of each radiative splat: the DC colour of its nearest active RGB splat."""
    idx, _ = nearest_neighbor(rad.means, rgb.means, rgb.active)
    dc = sh_lib.sh0_to_rgb(rgb.sh[:, 0, :])
    return jnp.clip(dc[idx], 0.0, 1.0)


def detail_clone_mask(rgb: RGBSplats, *, percentile: float = 95.0) -> np.ndarray:
    """[C] bool: active RGB splats whose largest covariance eigenvalue ≤ the percentile of the set."""
    act = np.asarray(rgb.active)
    lam = np.exp(2.0 * np.asarray(rgb.log_scales, np.float64)).max(axis=1)  # eigenvalues = scale²
    if not act.any():
        return act.copy()
    thr = np.percentile(lam[act], percentile)
    return act & (lam <= thr)


def unify(rad: RadSplats, rgb: RGBSplats, *, percentile: float = 95.0) -> UnifiedModel:
    """Colour transfer + detail cloning (both sets in the CT frame, after fitting).

    Returns:
      The :class:`UnifiedModel` of the active radiative splats followed by the cloned RGB splats.
    """
    rad_a = select_active(rad)
    rgb_a = select_active(rgb)
    if rad_a.capacity == 0 or rgb_a.capacity == 0:
        raise ValueError("both splat sets need at least one active splat")
    colours = colour_transfer(rad_a, rgb_a)
    keep = detail_clone_mask(rgb_a, percentile=percentile)
    clones = jax.tree_util.tree_map(lambda x: x[np.flatnonzero(keep)], rgb_a)
    k = rgb_a.sh.shape[1]
    sh_rad = jnp.zeros((rad_a.capacity, k, 3), jnp.float32).at[:, 0].set(sh_lib.rgb_to_sh0(colours))
    nn, _ = nearest_neighbor(clones.means, rad_a.means)
    splats = RGBSplats(
        means=jnp.concatenate([rad_a.means, clones.means]),
        log_scales=jnp.concatenate([rad_a.log_scales, clones.log_scales]),
        quats=jnp.concatenate([rad_a.quats, clones.quats]),
        opacity_logits=jnp.concatenate([radiative_opacity_logits(rad_a), clones.opacity_logits]),
        sh=jnp.concatenate([sh_rad, clones.sh]),
        active=jnp.ones(rad_a.capacity + clones.capacity, bool))
    dens = jnp.concatenate([rad_a.log_densities, rad_a.log_densities[nn]])
    radiative = jnp.concatenate([jnp.ones(rad_a.capacity, bool), jnp.zeros(clones.capacity, bool)])
    return UnifiedModel(splats, dens, radiative)


def as_radiative(model: UnifiedModel) -> RadSplats:
    """The density view of the unified model (for projections, slices, volumes)."""
    s = model.splats
    return RadSplats(means=s.means, log_scales=s.log_scales, quats=s.quats,
                     log_densities=model.log_densities, opacity_logits=s.opacity_logits,
                     features=jnp.exp(model.log_densities)[:, None],
                     colors=jnp.clip(sh_lib.sh0_to_rgb(s.sh[:, 0, :]), 0.0, 1.0), active=s.active)


def write_unified_ply(path: str | Path, model: UnifiedModel) -> Path:
    """3DGS PLY (Inria fields, full SH) of the unified model plus ``density`` and ``radiative``."""
    from plyfile import PlyData, PlyElement

    from insideout_jax.io.ply import write_ply

    path = Path(path)
    write_ply(path, model.splats)
    v = PlyData.read(str(path))["vertex"].data
    act = np.asarray(model.splats.active)
    dens = np.exp(np.asarray(model.log_densities, np.float64))[act].astype(np.float32)
    rad = np.asarray(model.radiative)[act].astype(np.float32)
    out = np.empty(len(v), dtype=v.dtype.descr + [("density", "<f4"), ("radiative", "<f4")])
    for name in v.dtype.names:
        out[name] = v[name]
    out["density"], out["radiative"] = dens, rad
    PlyData([PlyElement.describe(out, "vertex")], byte_order="<").write(str(path))
    return path
