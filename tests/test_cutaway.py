"""Cut-away renders (issue #20) against a dense float64 reference written independently here: the
RGB part by the dense 3DGS reference, the cut face by the density field summed over every splat
at the face grid's pixel centres, the texture map by solving each pixel ray against the plane and
scipy's bilinear interpolation, the colour map by numpy's interp on matplotlib's table."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from insideout_jax.cameras import ring_cameras
from insideout_jax.cutaway import colormap_table, face_grid, kept_model, make_cut_plane, render_cutaway
from insideout_jax.render.reference import render_rgb_dense
from insideout_jax.render.slices import slice_pixel_centers
from insideout_jax.render.xray_reference import density_field_reference
from insideout_jax.splats import RadSplats, rgb_splats_from_points
from insideout_jax.visual import UnifiedModel, as_radiative

SIZE = 40


def _model(n=60, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-12, 12, (n, 3))
    sp = rgb_splats_from_points(pts, rng.uniform(0.1, 0.9, (n, 3)), capacity=n)
    sp = sp.replace(log_scales=jnp.asarray(np.log(rng.uniform(1.5, 4.0, (n, 3))), jnp.float32),
                    quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
                    opacity_logits=jnp.asarray(rng.uniform(-1, 2, n), jnp.float32))
    return UnifiedModel(sp, jnp.asarray(np.log(rng.uniform(0.01, 0.05, n)), jnp.float32),
                        jnp.asarray(rng.random(n) < 0.7))


def _f64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64) if x.dtype != bool else x, tree)


def _reference(model, cam, cut, window, opacity, bg):
    plane = face_grid(model, cam, cut)
    h, w = plane.resolution
    with jax.enable_x64(True):
        kept = kept_model(model, cut)
        color, alpha, _ = render_rgb_dense(_f64(kept.splats), _f64(cam), background=jnp.asarray(bg, jnp.float64))
        rad = as_radiative(model)
        rad64 = RadSplats(**{f: _f64(getattr(rad, f)) for f in rad.__dataclass_fields__})
        grid = np.asarray(density_field_reference(rad64, jnp.asarray(slice_pixel_centers(plane), jnp.float64)))
    color, alpha = np.asarray(color), np.asarray(alpha)
    r_mat = np.asarray(cam.rotation, np.float64)
    c = -r_mat.T @ np.asarray(cam.translation, np.float64)
    o, e1, e2 = (np.asarray(getattr(plane, k), np.float64) for k in ("origin", "e1", "e2"))
    px = np.asarray(plane.extent, np.float64) / [w, h]
    rho = np.zeros((cam.height, cam.width))
    for i in range(cam.height):
        for j in range(cam.width):
            d = r_mat.T @ [(j + 0.5 - float(cam.cx)) / float(cam.fx), (i + 0.5 - float(cam.cy)) / float(cam.fy), 1]
            t, a, b = np.linalg.solve(np.stack([d, -e1, -e2], 1), o - c)  # c + t d = o + a e1 + b e2
            if t > 0:
                rc = [[b / px[1] + h / 2 - 0.5], [a / px[0] + w / 2 - 0.5]]
                rho[i, j] = ndimage.map_coordinates(grid, rc, order=1, mode="constant", cval=0.0)[0]
    r = np.clip((rho - window[0]) / (window[1] - window[0]), 0, 1)
    table = colormap_table("inferno")
    x = np.linspace(0, 1, len(table))
    face = np.stack([np.interp(r, x, table[:, k]) for k in range(3)], -1)
    a = (opacity * r)[..., None]
    if (c - cut.point) @ cut.normal > 0:  # the camera is on the removed side: the face in front
        return a * face + (1 - a) * color, rho
    t_ = (1 - alpha)[..., None]
    return color - t_ * bg + t_ * (a * face + (1 - a) * np.asarray(bg)), rho


@pytest.mark.parametrize("towards_camera", [True, False])
def test_cutaway_matches_the_dense_float64_reference(towards_camera):
    model = _model()
    cam = ring_cameras(1, size=SIZE, distance=90.0, elevations_deg=(20.0,))[0]
    c = -np.asarray(cam.rotation, np.float64).T @ np.asarray(cam.translation, np.float64)
    normal = c / np.linalg.norm(c) + np.array([0.2, -0.1, 0.3])
    cut = make_cut_plane((1.0, -0.5, 0.5), normal if towards_camera else -normal)
    window, opacity, bg = (0.005, 0.06), 0.9, (1.0, 1.0, 1.0)
    out = render_cutaway(model, cam, cut, window=window, face_opacity=opacity, background=bg)
    chex.assert_shape(out.color, (SIZE, SIZE, 3))
    ref, rho = _reference(model, cam, cut, window, opacity, bg)
    assert np.abs(np.asarray(out.face_density) - rho).max() <= 1e-4 * rho.max()
    assert np.abs(np.asarray(out.color) - ref).max() <= 1e-4
    # the scene is not trivial: the face covers part of the image and is partly opaque
    assert 0.1 < np.mean(np.asarray(out.face_alpha) > 0.05) < 0.95
    # splats on the cut side are gone: the image differs from the uncut render
    kept = np.asarray(kept_model(model, cut).splats.active)
    assert 0 < kept.sum() < len(kept)


def test_cutaway_is_differentiable_in_the_densities():
    model = _model(n=30, seed=1)
    cam = ring_cameras(1, size=24, distance=90.0, elevations_deg=(20.0,))[0]
    c = -np.asarray(cam.rotation, np.float64).T @ np.asarray(cam.translation, np.float64)
    cut = make_cut_plane((0.0, 0.0, 0.0), c)

    def face_mass(log_d):
        m = UnifiedModel(model.splats, log_d, model.radiative)
        return render_cutaway(m, cam, cut, window=(0.0, 0.1)).face_density.sum()

    g = jax.grad(face_mass)(model.log_densities)
    eps = 1e-2
    k = int(np.argmax(np.abs(np.asarray(g))))
    e = jnp.zeros_like(model.log_densities).at[k].set(eps)
    fd = (face_mass(model.log_densities + e) - face_mass(model.log_densities - e)) / (2 * eps)
    assert float(g[k]) == pytest.approx(float(fd), rel=2e-2)


def test_bad_cuts_are_named():
    with pytest.raises(ValueError, match="normal must be a non-zero"):
        make_cut_plane((0, 0, 0), (0, 0, 0))
    model = _model(n=8)
    cam = ring_cameras(1, size=16, distance=90.0)[0]
    with pytest.raises(ValueError, match="window must have hi > lo"):
        render_cutaway(model, cam, make_cut_plane((0, 0, 0), (0, 0, 1)), window=(1.0, 0.5))
