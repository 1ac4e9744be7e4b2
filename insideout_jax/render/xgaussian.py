"""X-Gaussian (Cai et al., ECCV 2024): X-ray projections as alpha-composited splats.

X-Gaussian is 3DGS with the view-dependent colour replaced by one view-independent intensity per
Gaussian, trained on the projections. A flat-panel cone-beam view *is* a pinhole camera (the
source is the centre of projection, the detector the image plane), so the model is rendered here
by the project's tile-sorted RGB rasterizer (:func:`insideout_jax.render.rgb.render_rgb`, SH
degree 0, black background) from the cameras of :func:`xray_pinhole`, and its first channel is
the projection. It is not a line integral: what it learns is an image model of the projections,
which is why it is a baseline and not the pipeline's radiative model
(:mod:`insideout_jax.render.xray`).

**Cone beam → pinhole** (exact; conventions of :func:`insideout_jax.cameras.xray_project`). For
view θ with frame (e_r, e_u, e_v) and object offset o, the camera axes are x = e_u, y = −e_v,
z = −e_r (right-handed: e_u × (−e_v) = −e_r), so camera depth is DSO − (p + o)·e_r, the distance
from the source along the central ray. Then u = f_u·x/z + c_u reproduces the detector column j + ½
(pixel centres at half-integers in the pinhole convention) with f_u = DSD/du and
c_u = nu/2 − ou/du, and v = f_v·y/z + c_v reproduces the *flipped* row nv − 1 − i + ½ with
f_v = DSD/dv and c_v = nv/2 + ov/dv: a pinhole image is a projection upside down
(:func:`to_pinhole_images` / :func:`from_pinhole_images`). Parallel beams have no pinhole.

**Intensity scale.** Projections are divided by one scale s (the training projections' maximum)
so the targets lie in [0, 1] as X-Gaussian's do; renders are multiplied back.

**Density view** (decision, for cross-sections and volumes, which X-Gaussian does not define):
a Gaussian of peak density ρ and scale σ adds ρ·√(2π)·σ to the line integral through its centre,
while an unoccluded composited Gaussian adds o·c·s there; equating the two with σ the geometric
mean of the Gaussian's three scales gives ρ = o·c·s / (√(2π)·σ̄), in the CT's units (1/mm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from insideout_jax.cameras import PinholeCamera, XrayGeometry, view_frame
from insideout_jax.render.rgb import RasterConfig, render_rgb
from insideout_jax.render.xray import resolve_view_angles
from insideout_jax.sh import sh0_to_rgb
from insideout_jax.splats import RadSplats, RGBSplats

__all__ = ["xray_pinhole", "xray_pinholes", "to_pinhole_images", "from_pinhole_images",
           "render_xgaussian", "intensity", "density_view"]


def xray_pinhole(geometry: XrayGeometry, angle) -> PinholeCamera:
    """The pinhole camera of one cone-beam view (an angle in radians or a [5, 3] pose); see the
    module docstring.

    Raises:
      ValueError: for a parallel-beam geometry (no centre of projection).
    """
    if geometry.mode != "cone":
        raise ValueError("X-Gaussian renders cone-beam views as pinhole cameras; a parallel-beam"
                         " geometry has no centre of projection")
    nv, nu = geometry.n_detector
    e_r, e_u, e_v, iso, ov, ou = view_frame(geometry, jnp.asarray(angle, jnp.float32))
    rot = jnp.stack([e_u, -e_v, -e_r])
    trans = -rot @ iso + jnp.array([0.0, 0.0, 1.0]) * geometry.dso
    dv, du = geometry.d_detector[0], geometry.d_detector[1]
    return PinholeCamera(rotation=rot, translation=trans, fx=geometry.dsd / du, fy=geometry.dsd / dv,
                         cx=nu / 2.0 - ou / du, cy=nv / 2.0 + ov / dv, width=int(nu), height=int(nv))


def xray_pinholes(geometry: XrayGeometry, views=None) -> list[PinholeCamera]:
    """The pinhole cameras of the selected views (None: all; int indices, float angles or poses)."""
    return [xray_pinhole(geometry, a) for a in np.asarray(resolve_view_angles(geometry, views))]


def to_pinhole_images(projections, scale: float) -> np.ndarray:
    """[V, nv, nu] projections → [V, nv, nu, 3] float32 training images (rows flipped, / scale)."""
    p = np.asarray(projections, np.float32)[:, ::-1] / np.float32(scale)
    return np.ascontiguousarray(np.repeat(p[..., None], 3, axis=-1))


def from_pinhole_images(images, scale: float):
    """[V, nv, nu, C] pinhole renders → [V, nv, nu] projections (first channel, rows flipped, × scale)."""
    return images[:, ::-1, :, 0] * scale


def intensity(splats: RGBSplats) -> jax.Array:
    """[C] the view-independent intensity of each Gaussian: its SH DC colour, red channel, ≥ 0."""
    return jnp.maximum(sh0_to_rgb(splats.sh[:, 0, 0]), 0.0)


def render_xgaussian(splats: RGBSplats, geometry: XrayGeometry, views=None, *, scale: float = 1.0,
                     raster: RasterConfig = RasterConfig()) -> jax.Array:
    """X-Gaussian projections [V, nv, nu] (alpha-composited, × ``scale``) of the selected views.

    Args:
      splats: the X-Gaussian model (:class:`RGBSplats`; only the DC colour is used).
      geometry: a cone-beam :class:`XrayGeometry`.
      views: None (all), [V] int view indices or [V] float angles in radians.
      scale: the intensity scale the model was trained with (:func:`to_pinhole_images`).
    """
    if not isinstance(splats, RGBSplats):
        raise ValueError(f"an X-Gaussian model is RGBSplats, got {type(splats).__name__}")
    bg = jnp.zeros(3, jnp.float32)
    imgs = [render_rgb(splats, cam, background=bg, sh_degree=0, config=raster).color
            for cam in xray_pinholes(geometry, views)]
    return from_pinhole_images(jnp.stack(imgs), scale)


def density_view(splats: RGBSplats, scale: float) -> RadSplats:
    """The model as a density field (module docstring): ρ = o·c·s / (√(2π)·σ̄), geometry kept."""
    opacity = jax.nn.sigmoid(splats.opacity_logits)
    sigma = jnp.exp(jnp.mean(splats.log_scales, axis=-1))
    rho = opacity * intensity(splats) * scale / (jnp.sqrt(2.0 * jnp.pi) * sigma)
    c = splats.means.shape[0]
    return RadSplats(means=splats.means, log_scales=splats.log_scales, quats=splats.quats,
                     log_densities=jnp.log(jnp.maximum(rho, 1e-30)),
                     opacity_logits=splats.opacity_logits, features=rho[:, None],
                     colors=jnp.zeros((c, 3), jnp.float32), active=splats.active & (rho > 0))
