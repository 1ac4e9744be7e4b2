"""Slice renderer and voxelizer vs brute-force evaluation of the density field.

Relative errors are max |fast − reference| / max |reference|.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import make_xray_geometry
from insideout_jax.render.slices import (
    axial_plane,
    coronal_plane,
    make_slice_plane,
    make_voxel_grid,
    render_slice,
    slice_pixel_centers,
    voxel_centers,
    voxelize,
)
from insideout_jax.render.xray import render_xray
from insideout_jax.render.xray_reference import density_field_reference
from insideout_jax.splats import covariance, rad_splats_from_points, rgb_splats_from_points

CAP, RES = 48, (40, 48)


def _scene(n=40, seed=2):
    rng = np.random.default_rng(seed)
    s = rad_splats_from_points(rng.uniform(-20, 20, (n, 3)), rng.uniform(0.5, 2.0, n),
                               capacity=CAP, log_scales=np.log(rng.uniform(1.0, 4.0, (n, 3))))
    return s.replace(quats=jnp.asarray(rng.normal(size=(CAP, 4)), jnp.float32))


def _planes():
    ax = np.array([0.3, 0.5, -0.2]) / np.linalg.norm([0.3, 0.5, -0.2])
    e1 = np.cross(ax, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    return {"axial": axial_plane(1.25, (0.5, -1.0), (60.0, 50.0), RES),
            "coronal": coronal_plane(-2.0, (0.0, 0.0), (64.0, 48.0), RES),
            "oblique": make_slice_plane((1.0, 2.0, 3.0), e1, np.cross(ax, e1), (50.0, 40.0), RES)}


def _field(s, points, **kw):
    with jax.enable_x64(True):
        return np.asarray(density_field_reference(s, jnp.asarray(points, jnp.float64), **kw))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("name", ["axial", "coronal", "oblique"])
def test_render_slice_matches_brute_force(name):
    s, plane = _scene(), _planes()[name]
    img = render_slice(s, plane)
    chex.assert_shape(img, RES)
    chex.assert_type(img, jnp.float32)
    ref = _field(s, slice_pixel_centers(plane))
    assert ref.max() > 0.5
    assert _rel(img, ref) < 1e-5  # measured ≈ 4e-7 at the default 6σ
    # a 5σ cut leaves ≈ P(χ²₃ > 25) ≈ 1.5e-5 of an overlapping field (measured 1.2e-5 here)
    assert _rel(render_slice(s, plane, cutoff_sigma=5.0), ref) < 3e-5
    # at k = 3 the cut is large; the renderer equals the field truncated at exactly m ≤ 3, so
    # the in-plane footprint bounds miss nothing
    img3 = render_slice(s, plane, cutoff_sigma=3.0)
    assert _rel(img3, ref) > 1e-3
    assert _rel(img3, _field(s, slice_pixel_centers(plane), cutoff_sigma=3.0)) < 1e-6


def test_voxelize_matches_brute_force_and_axial_slices():
    s = _scene()
    grid = make_voxel_grid((20, 24, 28), (2.0, 1.5, 1.75), (-24.0, -18.0, -20.0))
    vol = voxelize(s, grid)
    chex.assert_shape(vol, (20, 24, 28))
    ref = _field(s, voxel_centers(grid))
    assert _rel(vol, ref) < 1e-5
    assert _rel(voxelize(s, grid, cutoff_sigma=3.0),
                _field(s, voxel_centers(grid), cutoff_sigma=3.0)) < 1e-6
    # voxel (k, j, i) centre = origin + (i sx, j sy, k sz): slice k is an axial plane
    k = 11
    plane = make_slice_plane((-24.0 + 13.5 * 1.75, -18.0 + 11.5 * 1.5, -20.0 + 2.0 * k),
                             (1, 0, 0), (0, 1, 0), (28 * 1.75, 24 * 1.5), (24, 28))
    np.testing.assert_allclose(np.asarray(render_slice(s, plane)), np.asarray(vol[k]),
                               rtol=1e-5, atol=1e-6)


def test_rgb_splats_use_opacity_as_density():
    rng = np.random.default_rng(7)
    s = rgb_splats_from_points(rng.uniform(-20, 20, (40, 3)), capacity=CAP,
                               log_scales=np.log(rng.uniform(1.0, 4.0, (40, 3))))
    s = s.replace(opacity_logits=jnp.asarray(rng.normal(size=CAP), jnp.float32))
    plane = _planes()["axial"]
    ref = _field(s, slice_pixel_centers(plane))
    assert _rel(render_slice(s, plane), ref) < 1e-5


def _grads(fn, s, w):
    def loss(m, ls, q, ld):
        return jnp.sum(fn(s.replace(means=m, log_scales=ls, quats=q, log_densities=ld)) * w)

    return jax.grad(loss, argnums=(0, 1, 2, 3))(s.means, s.log_scales, s.quats, s.log_densities)


def test_gradients_match_float64_autodiff_of_brute_force():
    # One weighted loss over a slice and a volume; its gradient is compared with float64 autodiff
    # of the brute-force field on the same points.
    s = _scene(n=25)
    plane = _planes()["oblique"]
    grid = make_voxel_grid((6, 12, 14), (4.0, 3.0, 3.0), (-20.0, -18.0, -21.0))
    rng = np.random.default_rng(1)
    w_img = jnp.asarray(rng.normal(size=RES), jnp.float32)
    w_vol = jnp.asarray(rng.normal(size=(6, 12, 14)), jnp.float32)
    fast = _grads(lambda x: (render_slice(x, plane) * w_img).sum() + (voxelize(x, grid) * w_vol)
                  .sum(), s, 1.0)
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if x.dtype == jnp.float32 else x, s)
        pts = jnp.concatenate([jnp.asarray(slice_pixel_centers(plane), jnp.float64).reshape(-1, 3),
                               jnp.asarray(voxel_centers(grid), jnp.float64).reshape(-1, 3)])
        w = jnp.concatenate([jnp.asarray(w_img, jnp.float64).ravel(),
                             jnp.asarray(w_vol, jnp.float64).ravel()])
        ref = _grads(lambda x: density_field_reference(x, pts), s64, w)
    for name, a, b in zip(["means", "log_scales", "quats", "log_densities"], fast, ref,
                          strict=True):
        assert _rel(a, b) < 1e-4, name  # measured ≈ 3e-6


def test_fields_on_one_geometry_render_in_one_pass():
    # values [C, K]: K fields Σᵢ values[i, k]·Gᵢ on the splats' one geometry (an image and its
    # masks), against K single-field renders and, with gradients (geometry and values), against
    # float64 autodiff of the brute-force fields.
    s, plane = _scene(n=25), _planes()["oblique"]
    rng = np.random.default_rng(3)
    vals = jnp.asarray(rng.uniform(0.2, 2.0, (CAP, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3,) + RES), jnp.float32)
    img = render_slice(s, plane, values=vals)
    chex.assert_shape(img, (3,) + RES)
    chex.assert_type(img, jnp.float32)
    for k in range(3):
        one = render_slice(s.replace(log_densities=jnp.log(vals[:, k])), plane)
        assert _rel(img[k], one) < 1e-6, k
    chex.assert_shape(render_slice(s, plane, values=vals[:, :1]), (1,) + RES)

    def loss(m, ls, q, v):
        return jnp.sum(render_slice(s.replace(means=m, log_scales=ls, quats=q), plane, values=v) * w)

    fast = jax.grad(loss, argnums=(0, 1, 2, 3))(s.means, s.log_scales, s.quats, vals)
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if x.dtype == jnp.float32 else x, s)
        pts = jnp.asarray(slice_pixel_centers(plane), jnp.float64).reshape(-1, 3)
        w64 = jnp.asarray(w, jnp.float64).reshape(3, -1)

        def ref_loss(m, ls, q, v):
            x = s64.replace(means=m, log_scales=ls, quats=q)
            return sum(jnp.sum(density_field_reference(x.replace(log_densities=jnp.log(v[:, k])), pts)
                               * w64[k]) for k in range(3))

        ref = jax.grad(ref_loss, argnums=(0, 1, 2, 3))(s64.means, s64.log_scales, s64.quats,
                                                        jnp.asarray(vals, jnp.float64))
    for name, a, b in zip(["means", "log_scales", "quats", "values"], fast, ref, strict=True):
        assert _rel(a, b) < 1e-4, name
    with pytest.raises(ValueError, match="values must be"):
        render_slice(s, plane, values=vals[:10])


def test_voxel_line_sums_equal_parallel_projection():
    # The density the voxelizer samples is the one the X-ray renderer integrates: a Riemann sum
    # along x over a fine grid equals the parallel-beam projection at θ = 0 (rays along −x),
    # pixel (i, j) ↔ (z, y) = ((i − (nv−1)/2)·dv, (j − (nu−1)/2)·du).
    s = _scene(n=12)
    nv, nu, h = 10, 12, 2.0
    g = make_xray_geometry(mode="parallel", n_detector=(nv, nu), d_detector=(h, h), angles=[0.0])
    proj = np.asarray(render_xray(s, g))[0]
    grid = make_voxel_grid((nv, nu, 160), (h, h, 0.5),
                           (-40.0, -(nu - 1) / 2 * h, -(nv - 1) / 2 * h))
    line = np.asarray(voxelize(s, grid, cutoff_sigma=7.0)).sum(axis=2) * 0.5
    assert _rel(line, proj) < 1e-4


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="e1"):
        make_slice_plane((0, 0, 0), (1, 1, 0), (0, 0, 1), (10, 10), (4, 4))
    with pytest.raises(ValueError, match="orthogonal"):
        make_slice_plane((0, 0, 0), (1, 0, 0), (1, 0, 0), (10, 10), (4, 4))
    with pytest.raises(ValueError, match="spacing_zyx"):
        make_voxel_grid((4, 4, 4), (1, 0, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="cutoff_sigma"):
        render_slice(_scene(n=3), _planes()["axial"], cutoff_sigma=-1.0)
    with pytest.raises(ValueError, match="RadSplats or RGBSplats"):
        voxelize(np.zeros(3), make_voxel_grid((4, 4, 4), (1, 1, 1), (0, 0, 0)))


def test_cell_averaged_splats_voxelize_to_the_cells_mean():
    """Thin rotated splats (a 2 mm-voxel wall's) against a float64 dense cell average of the
    original field (8³ sub-samples per voxel): point samples alias, the cell-averaged splats do
    not; each splat keeps its mass; a large splat is unchanged."""
    from insideout_jax.splats import cell_averaged

    rng = np.random.default_rng(3)
    n = 6
    q = rng.normal(size=(n, 4))
    s = rad_splats_from_points(rng.uniform(-6, 6, (n, 3)).astype(np.float32), 0.02,
                               log_scales=np.log(np.stack([np.full(n, 0.3), rng.uniform(1.5, 3, n),
                                                           rng.uniform(1.5, 3, n)], -1)).astype(np.float32))
    s = s.replace(quats=jnp.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), jnp.float32))
    h = np.array([2.0, 2.0, 2.0])
    grid = make_voxel_grid((12, 12, 12), h[::-1], (-11.0, -11.0, -11.0))
    centres = np.asarray(voxel_centers(grid), np.float64).reshape(-1, 3)
    sub = (np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) / 8 - 0.5
    cov = np.asarray(covariance(s.log_scales, s.quats), np.float64)
    prec, rho, mu = np.linalg.inv(cov), np.exp(np.asarray(s.log_densities, np.float64)), np.asarray(s.means, np.float64)
    mean = np.zeros(len(centres))
    for o in sub * h:
        d = centres[:, None, :] + o - mu[None]
        mean += (rho * np.exp(-0.5 * np.einsum("pni,nij,pnj->pn", d, prec, d))).sum(1)
    mean = (mean / len(sub)).reshape(12, 12, 12)
    point = np.asarray(voxelize(s, grid), np.float64)
    cells = np.asarray(voxelize(cell_averaged(s, h), grid), np.float64)
    err = lambda v: np.linalg.norm(v - mean) / np.linalg.norm(mean)  # noqa: E731
    print(f"relative error: point samples {err(point):.3f}, cell-averaged {err(cells):.3f}")
    assert err(point) > 0.5 and err(cells) < 0.1  # measured 0.73 and 0.076
    assert cells.max() == pytest.approx(mean.max(), rel=0.15)  # no spikes above the cells' mean
    np.testing.assert_allclose(cells.sum(), mean.sum(), rtol=0.02)  # mass kept (all inside the grid)
    big = rad_splats_from_points(np.zeros((1, 3), np.float32), 0.02,
                                 log_scales=np.full((1, 3), np.log(8.0), np.float32))
    cb = cell_averaged(big, h)
    np.testing.assert_allclose(np.exp(np.asarray(cb.log_scales)), np.sqrt(64 + 4 / 12), rtol=1e-5)  # Σ + h²/12
    np.testing.assert_allclose(np.exp(np.asarray(cb.log_densities)), 0.02 * (64 / (64 + 4 / 12)) ** 1.5, rtol=1e-5)
