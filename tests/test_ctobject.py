"""Objects from CT volumes: ray-marched projections and isosurface renders."""

from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from insideout_jax import cameras as C
from insideout_jax.data import ctobject as cto
from insideout_jax.data import phantom as ph
from insideout_jax.data import raycast

STANFORD = (Path(__file__).parents[1] / ".." / "shared" / "data" / "ct" / "stanford_cthead"
            / "cthead_z113_y256_x256_uint16.npy")


def test_hu_to_attenuation():
    got = cto.hu_to_attenuation(np.array([-2000.0, -1000.0, 0.0, 1000.0]), mu_water=0.02)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.02, 0.04], atol=1e-9)
    assert got.dtype == np.float32


@pytest.fixture(scope="module")
def voxel_skull():
    skull = ph.skull_phantom()
    h = 1.25  # mm; a grid just around the head (x ±92, y ±112, z ±120 mm)
    n_xyz = np.ceil(np.array([184.0, 224.0, 240.0]) / h).astype(int) + 1
    origin = tuple(-0.5 * (n_xyz - 1) * h)
    shape, spacing = tuple(int(v) for v in n_xyz[::-1]), (h, h, h)
    return skull, ph.phantom_volume(skull, shape, spacing, origin, supersample=2), spacing, origin


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_marched_projections_of_voxelized_skull_match_closed_form(voxel_skull, mode):
    skull, vol, spacing, origin = voxel_skull
    if mode == "cone":
        geom = ph.default_skull_geometry(n_views=2, n_det=112)  # 12544 rays per view
    else:
        geom = C.make_xray_geometry(mode="parallel", n_detector=(112, 112), d_detector=(2.2, 2.2),
                                    angles=[0.3, 1.4])
    exact = ph.project_phantom(skull, geom)
    march = cto.ct_volume_projections(vol, spacing, origin, geom)  # default step: one voxel
    chex.assert_shape(march, exact.shape)
    obj = exact > 0.01 * exact.max()
    rel_l1 = np.abs(march - exact)[obj].sum() / exact[obj].sum()
    per_pixel = np.mean(np.abs(march - exact)[obj] / exact[obj])
    print(f"{mode}: ray-marched ({vol.shape} voxels of {spacing[0]} mm, step {spacing[0]} mm) "
          f"vs closed form over "
          f"{obj.sum()} object pixels: relative L1 {100 * rel_l1:.3f}%, mean per-pixel relative "
          f"{100 * per_pixel:.3f}%")
    assert rel_l1 < 0.01
    far = ndimage.maximum_filter(exact, size=(1, 3, 3)) == 0  # not next to the object
    assert far.any() and np.abs(march[far]).max() == 0.0


def test_marching_step_error_is_small(voxel_skull):
    _, vol, spacing, origin = voxel_skull
    geom = ph.default_skull_geometry(n_views=2, n_det=32)
    ref = cto.ct_volume_projections(vol, spacing, origin, geom, step_mm=spacing[0] / 16)
    obj = ref > 0.01 * ref.max()
    for frac, tol in ((0.5, 5e-4), (1.0, 2e-3)):
        m = cto.ct_volume_projections(vol, spacing, origin, geom, step_mm=spacing[0] * frac)
        err = np.abs(m - ref)[obj].sum() / ref[obj].sum()
        print(f"step {frac} voxel: relative L1 vs 1/16-voxel steps {err:.2e}")
        assert err < tol


def _axis_aligned_parallel_check(vol, spacing):
    """Parallel beam at θ = 0 through voxel centres equals Σ_x f·dx (trapezoid of the interpolant)."""
    nz, ny, nx = vol.shape
    dz, dy, dx = spacing
    origin = -0.5 * (np.array([nx, ny, nz]) - 1) * np.array([dx, dy, dz])
    geom = C.make_xray_geometry(mode="parallel", n_detector=(nz, ny), d_detector=(dz, dy), angles=[0.0])
    got = cto.ct_volume_projections(vol, spacing, origin, geom, step_mm=dx / 2)[0]
    want = vol.sum(axis=2) * dx
    return got, want


def test_axis_aligned_parallel_projection_is_a_voxel_sum():
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 0.05, size=(6, 9, 11)).astype(np.float32)
    got, want = _axis_aligned_parallel_check(vol, (2.0, 1.0, 1.5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_largest_component_mask_drops_detached_parts():
    vol = np.zeros((20, 20, 30), np.float32)
    vol[5:15, 5:15, 3:15] = 1.0  # object
    vol[8:10, 8:10, 22:26] = 1.0  # detached part
    mask = cto.largest_component_mask(vol, 0.5, dilate_voxels=1)
    assert mask[10, 10, 10] and not mask[9, 9, 24]
    assert mask[4, 10, 10] and not mask[3, 10, 10]  # dilated by one voxel


def _ball_volume(radius=40.0, n=64, h=2.0):
    c = (np.arange(n) - (n - 1) / 2) * h
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = (radius - np.sqrt(x * x + y * y + z * z)).astype(np.float32)  # signed distance, level 0
    origin = (c[0], c[0], c[0])
    return vol, (h, h, h), origin


def test_isosurface_of_a_ball_has_analytic_shading_and_silhouette():
    radius = 40.0
    vol, spacing, origin = _ball_volume(radius)
    rot, t = C.look_at((0.0, -250.0, 0.0), (0.0, 0.0, 0.0))
    size, f = 65, 100.0
    cam = C.make_pinhole(rot, t, f, f, size / 2, size / 2, size, size)
    ldir = np.array([0.3, -0.8, 0.5]) / np.linalg.norm([0.3, -0.8, 0.5])
    img = cto.render_isosurface_rgb(vol, spacing, origin, 0.0, [cam], light_dirs=ldir[None],
                                    light_intensities=[0.7], ambient=0.2)[0]
    chex.assert_shape(img, (size, size, 3))
    albedo = np.asarray(raycast.surface_albedo(np.float32([[0.0, -radius, 0.0]])))[0]
    want = albedo * (0.2 + 0.7 * (np.array([0.0, -1.0, 0.0]) @ ldir))
    np.testing.assert_allclose(img[32, 32], want, atol=0.02)
    o, d = C.pinhole_rays(cam)
    o, d = np.asarray(o, np.float64), np.asarray(d, np.float64)
    b = np.sum(o * d, -1)
    miss = np.sqrt(np.sum(o * o, -1) - b * b)
    analytic = miss < radius
    sure = np.abs(miss - radius) > 0.5  # the voxelized sphere is within ~0.1 mm of the true one
    np.testing.assert_array_equal((img.max(-1) > 0)[sure], analytic[sure])
    np.testing.assert_array_equal(img, cto.render_isosurface_rgb(
        vol, spacing, origin, 0.0, [cam], light_dirs=ldir[None], light_intensities=[0.7],
        ambient=0.2)[0])


# ---------------------------------------------------------------- the real Stanford head

@pytest.fixture(scope="module")
def stanford():
    if not STANFORD.is_file():
        pytest.skip(f"real CT head not found at {STANFORD} (only on developer machines)")
    raw = np.load(STANFORD)[::-1].astype(np.float32)  # z index 0 is the top: flip to superior = +z
    return cto.hu_to_attenuation(raw - 1000.0), (2.0, 1.0, 1.0)  # stored as HU + 1000


def test_stanford_head_projections(stanford):
    att, spacing = stanford
    got, want = _axis_aligned_parallel_check(att, spacing)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    origin = -0.5 * (np.array(att.shape[::-1]) - 1) * np.array(spacing[::-1])
    geom = cto.default_ct_geometry(att.shape, spacing, origin, n_views=4, n_det=64)
    proj = cto.ct_volume_projections(att, spacing, origin, geom)
    chex.assert_shape(proj, (4, 64, 64))
    assert np.isfinite(proj).all() and proj.min() >= 0.0
    assert 3.0 < proj.max() < 10.0  # ≈ 200 mm of tissue and bone
    # the detector covers the grid box: nothing reaches the outer rows and columns
    assert max(proj[:, :, 0].max(), proj[:, :, -1].max(), proj[:, 0].max(), proj[:, -1].max()) < 0.05


def test_stanford_head_isosurface_renders(stanford):
    att, spacing = stanford
    att, spacing = att[:, ::2, ::2], (2.0, 2.0, 2.0)  # 2 mm voxels: a quicker test
    origin = -0.5 * (np.array(att.shape[::-1]) - 1) * np.array(spacing[::-1])
    level = cto.default_iso_level(att)
    hu = level / cto.MU_WATER * 1000 - 1000
    print(f"Otsu skin level {level:.4f}/mm = {hu:.0f} HU")
    assert -900 < hu < -100  # between air and soft tissue
    att = att * cto.largest_component_mask(att, level)  # drop the thin head rest
    cams = cto.default_ct_cameras(att.shape, spacing, origin, n=8, size=112)[::3]  # 12544 rays
    imgs = cto.render_isosurface_rgb(att, spacing, origin, level, cams)
    chex.assert_shape(imgs, (3, 112, 112, 3))
    # independent silhouette: pixels covered by projected voxel centres ≥ level
    k, j, i = np.nonzero(att >= level)
    pts = np.stack([origin[0] + i * spacing[2], origin[1] + j * spacing[1],
                    origin[2] + k * spacing[0]], -1)
    for cam, img in zip(cams, imgs, strict=True):
        uv, _ = C.project_points(cam, jnp.asarray(np.float32(pts)))
        uv = np.floor(np.asarray(uv)).astype(int)
        ok = (uv >= 0).all(1) & (uv < 112).all(1)
        cover = np.zeros((112, 112), bool)
        cover[uv[ok, 1], uv[ok, 0]] = True
        rendered = img.max(-1) > 0
        iou = (cover & rendered).sum() / (cover | rendered).sum()
        print(f"silhouette IoU {iou:.3f}")
        assert iou > 0.9, iou
        assert 0.1 < rendered.mean() < 0.8
        assert img[rendered].std(0).min() > 0.05  # textured


def test_a_from_ct_object_has_its_outer_surface_as_truth(tmp_path):
    """A hollow ball (outer radius 30 mm, an enclosed cavity of 18 mm): truth/surface.npz holds
    the outer isosurface only — the cavity's wall is not the surface the photos show — with
    outward unit normals, so the internal-noise metric is computable for from-ct objects."""
    from insideout_jax.data.objects import make_ct_object, read_true_surface

    n, h = 40, 2.0
    ax = (np.arange(n) - (n - 1) / 2) * h
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    r = np.sqrt(xx**2 + yy**2 + zz**2)
    vol = np.clip(30.0 - r, 0, 1) * np.clip(r - 18.0, 0, 1) * 0.03  # 1 mm ramps at both walls
    make_ct_object(vol.astype(np.float32), (h, h, h), tmp_path / "ball", n_views=8, n_det=32,
                   n_rgb_views=3, rgb_size=32, verbose=False)
    pts, nrm = read_true_surface(tmp_path / "ball")
    chex.assert_shape(pts, (20000, 3))
    rad = np.linalg.norm(pts, axis=1)
    # the outer wall within half a voxel (the Otsu level on a 1 mm ramp, linear interpolation
    # over 2 mm voxels); nothing on the cavity's wall at 18-19 mm
    assert np.all(np.abs(rad - 29.5) < 1.0), (rad.min(), rad.max())
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    cos = np.einsum("ij,ij->i", nrm, pts / rad[:, None])  # outward; faceted at 2 mm voxels
    assert cos.min() > 0.8 and cos.mean() > 0.97, (cos.min(), cos.mean())


def test_the_skin_level_of_a_two_valued_phantom_is_the_half_level():
    """Air exactly 0 and tissue a constant: Otsu's criterion is flat across the gap, so its own
    threshold is arbitrary in it (skimage's: the first bin, just above 0); the level is its middle.
    On a noisy volume it stays Otsu's (the gap is one bin)."""
    from skimage.filters import threshold_otsu

    vol = np.zeros((64, 32, 32), np.float32)
    vol[16:48, 8:24, 8:24] = 0.4
    vol[28:36, 12:20, 12:20] = 1.0
    assert threshold_otsu(vol) < 0.01  # skimage's pick in the flat gap
    assert cto.default_iso_level(vol) == pytest.approx(0.2)
    noisy = vol + np.random.default_rng(0).normal(0, 0.05, vol.shape).astype(np.float32)
    assert cto.default_iso_level(noisy) == pytest.approx(threshold_otsu(noisy), abs=0.01)


def test_photos_of_a_stepped_volume_show_its_surface_not_its_steps():
    """A binary ball (radius 15 voxels): photos rendered from the volume itself show the envelope
    of its voxel steps, a disk wider than the ball's; rendered from ``without_steps`` they show
    the ball (closed-form silhouette radius of the marching-cubes surface's equivalent sphere)."""
    from insideout_jax.metrics.mesh import marching_cubes_mesh

    n, rad = 48, 15.0
    g = np.arange(n) - (n - 1) / 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    vol = (np.sqrt(xx**2 + yy**2 + zz**2) <= rad).astype(np.float32) * 0.02
    level, origin = cto.default_iso_level(vol), (-(n - 1) / 2,) * 3
    verts, faces = marching_cubes_mesh(np.pad(vol, 1), (1, 1, 1), tuple(o - 1 for o in origin), level)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    r_eq = (3 * abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6) / (4 * np.pi)) ** (1 / 3)
    assert abs(r_eq - rad) < 0.1  # the surface the projections see: the ball (voxelized)
    rot, t = C.look_at((100.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    cam = C.make_pinhole(rot, t, 400.0, 400.0, 64.0, 64.0, 128, 128)  # 4 px per voxel at the ball
    expect = 400.0 * r_eq / np.sqrt(100.0**2 - r_eq**2)  # disk radius, px
    radius = {}
    for name, field in (("raw", vol), ("smoothed", cto.without_steps(vol))):
        img = cto.render_isosurface_rgb(field, (1, 1, 1), origin, level, [cam])[0]
        radius[name] = np.sqrt((img.max(-1) > 0).sum() / np.pi)
    assert radius["raw"] - expect > 0.5, radius  # the steps' envelope (measured 1.0 px at R = 30)
    assert abs(radius["smoothed"] - expect) < 0.25, (radius, expect)
