"""The analytic skull phantom: closed-form projections, exact volume, surface, ray-cast photos."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax import cameras as C
from insideout_jax.data import phantom as ph
from insideout_jax.data import raycast


def _sphere(rho=1.0, radius=1.0, centre=(0.0, 0.0, 0.0)):
    return ph.make_phantom([(rho, [("ball", centre, (radius,) * 3)])])


def _inside_np(points, phantom, only=None):
    """[N, E] membership (or [N, len(only)]), float64, independent of the module (quadratic form)."""
    sel = slice(None) if only is None else only
    c = np.asarray(phantom.centres, np.float64)[sel]
    s = np.asarray(phantom.semi_axes, np.float64)[sel]
    r = np.asarray(phantom.rotations, np.float64)[sel]
    a = np.einsum("eij,ej,ekj->eik", r, 1.0 / s ** 2, r)  # R diag(s⁻²) Rᵀ
    q = points[:, None, :] - c[None]
    return np.einsum("nei,eij,nej->ne", q, a, q) <= 1.0


def _density_np(points, phantom):
    ins = _inside_np(points, phantom)
    rho = np.asarray(phantom.densities, np.float64)
    return sum(rho[g] * ins[:, list(m)].any(1) for g, m in enumerate(phantom.groups))


# ---------------------------------------------------------------- closed-form unit cases (§7)

def test_unit_sphere_chords():
    rho = 0.7
    p = _sphere(rho)
    hs = np.array([0.0, 0.3, 0.6, 0.9, 0.99, 1.2])
    o = np.stack([np.full_like(hs, -5.0), hs, np.zeros_like(hs)], -1).astype(np.float32)
    d = np.tile(np.float32([1, 0, 0]), (len(hs), 1))
    got = np.asarray(ph.project_rays(p, jnp.asarray(o), jnp.asarray(d)))
    want = 2 * rho * np.sqrt(np.clip(1 - hs ** 2, 0, None))
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert got[0] == pytest.approx(2 * rho, rel=1e-6) and got[-1] == 0.0  # centre; miss


def test_chord_along_each_semi_axis_of_a_rotated_ellipsoid():
    semi = (30.0, 12.0, 7.0)
    p = ph.make_phantom([(1.0, [("e", (5.0, -3.0, 2.0), semi, (20.0, -35.0, 50.0))])])
    rot = np.asarray(p.rotations[0], np.float64)
    for a in range(3):
        axis = rot[:, a]
        o = np.float32(np.array([5.0, -3.0, 2.0]) - 500 * axis)[None]
        got = float(ph.project_rays(p, jnp.asarray(o), jnp.asarray(np.float32(axis)[None]))[0])
        assert got == pytest.approx(2 * semi[a], rel=1e-5)


def test_shell_is_outer_minus_inner():
    # a 6 mm shell: outer +ρ, inner −ρ; through the centre: 2ρ(R − r); tangent to the inner: chord of outer only
    rho = 0.03
    p = ph.make_phantom([(rho, [("outer", (0, 0, 0), (70.0,) * 3)]),
                         (-rho, [("inner", (0, 0, 0), (64.0,) * 3)])])
    o = jnp.asarray(np.float32([[0, -1000, 0], [66.0, -1000, 0]]))
    d = jnp.asarray(np.float32([[0, 1, 0], [0, 1, 0]]))
    got = np.asarray(ph.project_rays(p, o, d))
    np.testing.assert_allclose(got, [2 * rho * 6, 2 * rho * np.sqrt(70 ** 2 - 66 ** 2)], rtol=1e-5)


def _union_reference(s, e, v):
    iv = sorted((a, b) for a, b, ok in zip(s, e, v, strict=True) if ok)
    total, cur = 0.0, None
    for a, b in iv:
        if cur is None or a > cur[1]:
            total += 0.0 if cur is None else cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (0.0 if cur is None else cur[1] - cur[0])


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 9])
def test_union_length_matches_sort_and_merge(k):
    rng = np.random.default_rng(k)
    n = 400
    s = rng.integers(0, 20, size=(k, n)).astype(np.float32)  # integers: ties and touching ends
    e = s + rng.integers(0, 8, size=(k, n)).astype(np.float32)
    v = rng.random((k, n)) < 0.8
    got = np.asarray(ph._union_length([jnp.asarray(a) for a in s], [jnp.asarray(b) for b in e],
                                      [jnp.asarray(c) for c in v]))
    want = [_union_reference(s[:, i], e[:, i], v[:, i]) for i in range(n)]
    np.testing.assert_array_equal(got, np.float32(want))


# ---------------------------------------------------------------- the skull vs dense integration

def test_skull_projection_matches_dense_line_integration():
    skull = ph.skull_phantom()
    # 128² = 16384 rays per view: whole views, at a size where XLA CPU once miscompiled a fusion
    geom = ph.default_skull_geometry(n_views=3, n_det=128)
    proj = ph.project_phantom(skull, geom)
    rng = np.random.default_rng(0)
    rays_o, rays_d, closed = [], [], []
    for v, a in enumerate(np.asarray(geom.angles)):
        o, d = C.xray_rays(geom, jnp.float32(a))
        o, d = np.asarray(o).reshape(-1, 3), np.asarray(d).reshape(-1, 3)
        p = proj[v].ravel()
        pick = rng.choice(np.nonzero(p > 0.1 * p.max())[0], 34, replace=False)
        rays_o.append(o[pick]), rays_d.append(d[pick]), closed.append(p[pick])
    o = np.concatenate(rays_o).astype(np.float64)
    d = np.concatenate(rays_d).astype(np.float64)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    closed = np.concatenate(closed).astype(np.float64)
    # dense midpoint rule in float64 (step ≤ 2 µm) over the part of each line inside the bounding
    # spheres of the ellipsoids it can meet (exact culling: an ellipsoid lies in its bounding sphere)
    c = np.asarray(skull.centres, np.float64)
    big_r = np.asarray(skull.semi_axes, np.float64).max(1)
    rho = np.asarray(skull.densities, np.float64)
    dense = np.zeros(len(o))
    for i in range(len(o)):
        tc = (c - o[i]) @ d[i]
        miss2 = np.sum((c - o[i]) ** 2, 1) - tc ** 2
        near = miss2 < big_r ** 2
        half = np.sqrt(big_r[near] ** 2 - miss2[near])
        lo, hi = (tc[near] - half).min(), (tc[near] + half).max()
        n = int(np.ceil((hi - lo) / 2e-3))
        h = (hi - lo) / n
        t = lo + (np.arange(n) + 0.5) * h
        x = o[i] + t[:, None] * d[i]
        ins = np.zeros((n, len(c)), bool)
        ins[:, near] = _inside_np(x, skull, only=np.nonzero(near)[0])
        f = sum(rho[g] * ins[:, list(m)].any(1) for g, m in enumerate(skull.groups))
        dense[i] = np.sum(f) * h
    rel = np.abs(closed - dense) / dense
    print(f"closed form vs dense integration on {len(o)} rays: max rel {rel.max():.2e}, "
          f"mean {rel.mean():.2e}")
    assert len(o) >= 100
    assert rel.max() <= 1e-4


# ---------------------------------------------------------------- volume, tissues, surface

def test_volume_matches_direct_density():
    skull = ph.skull_phantom()
    shape, spacing, origin = (22, 26, 18), (9.5, 8.5, 10.0), (-85.0, -106.0, -100.0)
    vol = ph.phantom_volume(skull, shape, spacing, origin, supersample=1)
    chex.assert_shape(vol, shape)
    assert vol.dtype == np.float32
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    pts = np.stack([origin[0] + i * spacing[2], origin[1] + j * spacing[1],
                    origin[2] + k * spacing[0]], -1).reshape(-1, 3)
    want = _density_np(pts, skull).reshape(shape)
    np.testing.assert_allclose(vol, want, atol=1e-7)
    direct = np.asarray(ph.phantom_density(skull, jnp.asarray(np.float32(pts)))).reshape(shape)
    np.testing.assert_allclose(direct, want, atol=1e-7)
    # supersampled: the mean of the k³ sub-sample densities
    sub = ph.phantom_volume(skull, shape, spacing, origin, supersample=2)
    offs = np.array([[a, b, cc] for a in (-0.25, 0.25) for b in (-0.25, 0.25) for cc in (-0.25, 0.25)])
    sp_xyz = np.asarray(spacing[::-1])
    mean = np.mean([_density_np(pts + o * sp_xyz, skull) for o in offs], 0).reshape(shape)
    np.testing.assert_allclose(sub, mean, atol=1e-7)


def test_skull_tissues_are_nested_and_documented():
    skull = ph.skull_phantom()
    rng = np.random.default_rng(1)
    pts = rng.uniform([-90, -110, -115], [90, 110, 120], size=(300_000, 3))
    f = _density_np(pts, skull)
    allowed = np.array(sorted(set(ph.TISSUES.values())))
    dist = np.abs(f[:, None] - allowed[None]).min(1)
    assert dist.max() < 1e-6, "a point has a density that is no documented tissue (bad nesting)"
    outer = _inside_np(pts, skull)[:, list(skull.groups[skull.outer_group])].any(1)
    assert np.all(f[~outer] == 0.0)
    present = {name for name, v in ph.TISSUES.items() if np.any(np.abs(f[outer] - v) < 1e-6)}
    assert {"air", "bone", "grey_matter", "csf", "teeth", "fat", "soft_tissue"} <= present
    # extent ≈ 200 mm, centred near the origin
    ext = np.ptp(pts[outer], 0)
    assert np.all(ext > 150) and np.all(ext < 240) and np.abs(pts[outer].mean(0)).max() < 20


def test_surface_points_lie_on_the_outer_surface():
    skull = ph.skull_phantom()
    pts, nrm = ph.phantom_surface_points(skull, 3000, seed=2)
    chex.assert_shape([pts, nrm], (3000, 3))
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    members = list(skull.groups[skull.outer_group])
    inside = lambda x: _inside_np(np.asarray(x, np.float64), skull)[:, members].any(1)  # noqa: E731
    assert inside(pts - 0.05 * nrm).all()
    # just outside, except within 0.05 mm of a concave seam between two members (rare)
    assert inside(pts + 0.05 * nrm).mean() < 2e-3
    again = ph.phantom_surface_points(skull, 3000, seed=2)
    np.testing.assert_array_equal(pts, again[0])


def test_default_geometry_covers_the_skull_and_noise_statistics():
    skull = ph.skull_phantom()
    geom = ph.default_skull_geometry(n_views=6, n_det=40)
    proj = ph.project_phantom(skull, geom)
    chex.assert_shape(proj, (6, 40, 40))
    assert proj.dtype == np.float32 and proj.max() > 3.0
    border = np.concatenate([proj[:, :2].ravel(), proj[:, -2:].ravel(), proj[:, :, :2].ravel(),
                             proj[:, :, -2:].ravel()])
    assert border.max() == 0.0  # the whole head is on the detector with a margin
    # noise: Poisson + read noise; delta-method variance of −ln(counts / i0)
    p = np.full((20000,), 2.0, np.float32)
    i0, sig = 1e4, 5.0
    noisy = ph.add_projection_noise(p, 3, i0=i0, read_sigma=sig)
    n = i0 * np.exp(-2.0)
    assert noisy.mean() == pytest.approx(2.0, abs=3e-3)
    assert noisy.var() == pytest.approx((n + sig ** 2) / n ** 2, rel=0.05)
    np.testing.assert_array_equal(noisy, ph.add_projection_noise(p, 3, i0=i0, read_sigma=sig))


# ---------------------------------------------------------------- ray-cast photos

def _camera_looking_at_origin(eye, size=65, f=80.0):
    rot, t = C.look_at(eye, (0.0, 0.0, 0.0))
    return C.make_pinhole(rot, t, f, f, size / 2, size / 2, size, size)


def test_sphere_render_has_analytic_lambert_shading_at_every_pixel():
    # 129² = 16641 rays: inside the row range where XLA CPU once miscompiled the shading sum
    radius, size = 50.0, 129
    ball = _sphere(0.02, radius)
    cam = _camera_looking_at_origin((0.0, -300.0, 0.0), size=size, f=320.0)
    o, d = (np.asarray(a, np.float64).reshape(-1, 3) for a in C.pinhole_rays(cam))
    b = np.sum(o * d, -1)
    disc = b * b - (np.sum(o * o, -1) - radius ** 2)
    inner = disc > 0.05 * radius ** 2  # hit pixels away from the silhouette
    t = -b[inner] - np.sqrt(disc[inner])
    pts = o[inner] + t[:, None] * d[inner]
    normals = pts / radius
    albedo = np.asarray(raycast.surface_albedo(np.float32(pts)), np.float64)
    for ldir, inten, amb in (([0.3, -0.8, 0.5], 0.7, 0.2), ([0.0, 1.0, 0.0], 0.9, 0.25)):
        ldir = np.asarray(ldir) / np.linalg.norm(ldir)
        img = raycast.render_phantom_rgb(ball, [cam], light_dirs=ldir[None],
                                         light_intensities=[inten], ambient=amb)
        chex.assert_shape(img, (1, size, size, 3))
        want = np.clip(albedo * (amb + inten * np.maximum(normals @ ldir, 0.0))[:, None], 0, 1)
        got = img[0].reshape(-1, 3)[inner]
        assert inner.sum() > 5000
        # texture evaluated at float32 hit points: tiny differences at spot edges only
        assert np.median(np.abs(got - want)) < 1e-5 and np.mean(np.abs(got - want) < 2e-3) > 0.995
        np.testing.assert_allclose(img[0, 64, 64], want[np.argmin(np.sum(pts[:, [0, 2]] ** 2, 1))],
                                   atol=1e-4)


def test_lambert_shade_matches_numpy_for_many_points():
    rng = np.random.default_rng(4)
    for n in (1000, 12000, 32768):  # sizes where a fused reduce once went wrong on XLA CPU
        nrm = rng.normal(size=(n, 3)).astype(np.float32)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        alb = rng.uniform(size=(n, 3)).astype(np.float32)
        got = np.asarray(jax.jit(raycast.lambert_shade)(jnp.asarray(alb), jnp.asarray(nrm)))
        ld = raycast.DEFAULT_LIGHT_DIRS
        irr = raycast.DEFAULT_AMBIENT + np.maximum(nrm @ ld.T, 0) @ raycast.DEFAULT_LIGHT_INTENSITIES
        np.testing.assert_allclose(got, np.clip(alb * irr[:, None], 0, 1), atol=1e-5)


def test_sphere_silhouette_and_determinism():
    radius = 50.0
    ball = _sphere(0.02, radius, centre=(10.0, 0.0, 5.0))
    cam = _camera_looking_at_origin((0.0, -300.0, 40.0))
    img = raycast.render_phantom_rgb(ball, [cam])[0]
    o, d = C.pinhole_rays(cam)
    o, d = np.asarray(o, np.float64), np.asarray(d, np.float64)
    q = o - np.array([10.0, 0.0, 5.0])
    b = np.sum(q * d, -1)
    miss_dist2 = np.sum(q * q, -1) - b ** 2
    analytic = miss_dist2 < radius ** 2
    margin = np.abs(np.sqrt(miss_dist2) - radius) > 0.05  # skip numerically tangent pixels
    np.testing.assert_array_equal((img.max(-1) > 0)[margin], analytic[margin])
    np.testing.assert_array_equal(img, raycast.render_phantom_rgb(ball, [cam])[0])


def test_default_cameras_frame_the_textured_head():
    skull = ph.skull_phantom()
    cams = ph.default_skull_cameras(n=60, size=96)
    assert len(cams) == 60
    for cam in cams[::13]:
        uv, depth = C.project_points(cam, jnp.zeros((1, 3)))
        np.testing.assert_allclose(np.asarray(uv[0]), [48.0, 48.0], atol=1e-3)
    imgs = raycast.render_phantom_rgb(skull, cams[::15])
    assert imgs.dtype == np.float32 and 0.0 <= imgs.min() and imgs.max() <= 1.0
    for im in imgs:
        mask = im.max(-1) > 0
        rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        extent = max(np.ptp(rows), np.ptp(cols)) / 96
        assert 0.5 < extent < 0.85
        assert im[mask].std(0).min() > 0.05  # textured, not flat
