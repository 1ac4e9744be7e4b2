"""The RGB centres' depth behind the surface the model shows (fitting.visible), and the fitting's
use of it: closed forms for a sphere's visual hull and a uniform ball, and the scale of a fit
whose RGB centres lie inside the true surface."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from test_fitting_shapes import ellipsoid_values, interior_samples, random_similarity, surface_samples

from insideout_jax.cameras import PinholeCamera, look_at, ring_cameras
from insideout_jax.fitting.hierarchical import hierarchical_fit
from insideout_jax.fitting.visible import hull_depths, visible_depth
from insideout_jax.splats import rgb_splats_from_points


def _ring(n, distance, size, f, elevation=0.0):
    cams = []
    for a in np.linspace(0, 2 * np.pi, n, endpoint=False):
        e = np.deg2rad(elevation)
        eye = distance * np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
        rot, t = look_at(eye, (0.0, 0.0, 0.0))
        cams.append(PinholeCamera(rotation=jnp.asarray(rot, jnp.float32),
                                  translation=jnp.asarray(t, jnp.float32), fx=jnp.float32(f),
                                  fy=jnp.float32(f), cx=jnp.float32(size / 2),
                                  cy=jnp.float32(size / 2), width=size, height=size))
    return cams


def _sphere_silhouette(cam, radius):
    """Exact silhouette of the sphere |x| ≤ radius: pixels whose centre ray passes within it."""
    j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    d_cam = np.stack([(j - float(cam.cx)) / float(cam.fx), (i - float(cam.cy)) / float(cam.fy),
                      np.ones_like(j)], -1)
    rot = np.asarray(cam.rotation, np.float64)
    d = d_cam @ rot  # world directions (rows: Rᵀ d_cam)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    c = -rot.T @ np.asarray(cam.translation, np.float64)
    along = d @ -c  # closest approach of the ray to the origin
    return np.sum(c * c) - along**2 <= radius**2


def test_hull_depths_of_points_in_a_sphere_match_the_distance_to_its_surface():
    radius, dist, size, f = 50.0, 500.0, 256, 800.0  # 0.625 mm pixels at the centre
    cams = _ring(72, dist, size, f)
    sils = [_sphere_silhouette(c, radius) for c in cams]
    rng = np.random.default_rng(0)
    rho = rng.uniform(0.2, 0.9, 200) * radius
    phi = rng.uniform(0, 2 * np.pi, 200)
    pts = np.stack([rho * np.cos(phi), rho * np.sin(phi), rng.uniform(-0.1, 0.1, 200) * radius], 1)
    got = hull_depths(pts, sils, cams)
    chex.assert_shape(got, (200,))
    true = radius - np.linalg.norm(pts, axis=1)
    # The hull of 72 views lies within R(1/cos(2.5°) − 1) = 0.05 mm of the sphere; image
    # distances are taken at the point's depth (≤ 0.5 % off at 10 radii) on a 0.6 mm grid.
    np.testing.assert_allclose(got, true, atol=0.3)  # measured: ≤ 0.21


def test_hull_depths_edge_cases():
    cams = _ring(4, 500.0, 64, 200.0)
    sils = [_sphere_silhouette(c, 50.0) for c in cams]
    # (0, 0, 70) lies 20 mm above the sphere, in every frame (28 px off centre of 32) and
    # outside every silhouette (20 px radius): depth 0
    far = hull_depths(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 70.0]]), sils, cams)
    assert far[1] == 0.0 and far[0] > 40.0
    behind_all = hull_depths(np.array([[0.0, 0.0, 0.0]]), sils[:1], cams[:1])
    assert np.isfinite(behind_all[0])
    # A view whose frame does not hold the point says nothing about it: a narrow camera filled
    # by the sphere (its silhouette all True) sees (0, 0, 0) but not (30, 0, 0), 30 mm off its axis.
    narrow = _ring(4, 500.0, 64, 2000.0)[1]  # at (0, 500, 0), looking along −y
    assert _sphere_silhouette(narrow, 50.0).all()
    pts = np.array([[30.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with_narrow = hull_depths(pts, sils + [_sphere_silhouette(narrow, 50.0)], cams + [narrow])
    np.testing.assert_array_equal(with_narrow[0], hull_depths(pts[:1], sils, cams)[0])
    assert with_narrow[0] > 15.0  # 20 mm inside the sphere, not 0 for "outside the frame"
    assert np.isinf(hull_depths(pts[:1], [_sphere_silhouette(narrow, 50.0)], [narrow])[0])
    with pytest.raises(ValueError, match="silhouettes for"):
        hull_depths(np.zeros((1, 3)), sils[:2], cams)
    with pytest.raises(ValueError, match="does not match"):
        hull_depths(np.zeros((1, 3)), [s[:10] for s in sils], cams)


def test_visible_depth_of_a_ball_of_opaque_splats_is_the_uniform_ball_median():
    """Centres uniform in a ball of radius R0, the silhouette's radius R_s measured on the render:
    every centre's depth below the hull is R_s − |p|, whose median is R_s − R0·2^(−1/3)."""
    rng = np.random.default_rng(1)
    r0, n = 40.0, 6000
    p = rng.normal(size=(n, 3))
    p *= (r0 * rng.uniform(0, 1, n) ** (1 / 3) / np.linalg.norm(p, axis=1))[:, None]
    rgb = rgb_splats_from_points(p, sh_degree=0, opacity=0.95,
                                 log_scales=np.full((n, 3), np.log(1.5), np.float32))
    cams = ring_cameras(24, size=160, distance=400.0, elevations_deg=(-40.0, 0.0, 40.0), fov_deg=20.0)
    got = visible_depth(rgb, cams)
    from insideout_jax.render.rgb import render_rgb

    area = float(np.sum(np.asarray(render_rgb(rgb, cams[0]).alpha) >= 0.5))
    r_img = np.sqrt(area / np.pi)  # px
    alpha = np.arctan(r_img / float(cams[0].fx))
    r_s = 400.0 * np.sin(alpha)  # the sphere whose silhouette this is
    expected = r_s - r0 * 2 ** (-1 / 3)
    assert abs(got - expected) < 0.025 * r0, (got, expected)  # measured: 0.54 (1.4 %)
    with pytest.raises(ValueError, match="opacity threshold"):
        visible_depth(rgb, cams, min_opacity=0.99)


def _outward_normals(q, h=1e-4):
    """Unit normals of the test solid's boundary: the gradient of its active ellipsoid's value."""
    k = np.argmin(np.abs(ellipsoid_values(q)), axis=1)
    g = np.stack([(ellipsoid_values(q + h * e)[np.arange(len(q)), k]
                   - ellipsoid_values(q - h * e)[np.arange(len(q)), k]) / (2 * h)
                  for e in np.eye(3)], 1)
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_rgb_depth_removes_the_scale_bias_of_centres_inside_the_surface():
    rng = np.random.default_rng(5)
    vol = interior_samples(10000, rng)
    q = surface_samples(2000, rng)
    delta = 0.04  # CT units: 1.7 % of the solid's size
    inner = q - delta * _outward_normals(q)
    rot, t, s = random_similarity(rng)
    pts = ((inner - t) @ rot) / s
    rgb = rgb_splats_from_points(pts, sh_degree=0)
    scale_err = {}
    for depth in (0.0, delta / s):
        res = hierarchical_fit(rgb, vol, seed=3, schedule=(1.0,), rgb_depth=depth)
        scale_err[depth] = abs(float(res.stages[0].transform.scale) / s - 1.0)
    assert scale_err[0.0] > 0.03  # centres matched to the surface itself: the set grows
    assert scale_err[delta / s] < 0.01, scale_err
    with pytest.raises(ValueError, match="rgb_depth"):
        hierarchical_fit(rgb, vol, rgb_depth=-1.0)
