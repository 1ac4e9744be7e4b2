"""The X-Gaussian baseline: cone-beam views as exact pinholes, alpha compositing against a per-pixel
loop built on the cone-beam projection itself, the density view against the line integral, and a
short training run."""

from __future__ import annotations

import dataclasses

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import make_xray_geometry, project_points, xray_project, xray_project_jacobian
from insideout_jax.render.xgaussian import (
    density_view,
    from_pinhole_images,
    render_xgaussian,
    to_pinhole_images,
    xray_pinhole,
)
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import covariance, rgb_splats_from_points


def _geometry(angles, n=(10, 12)):
    return make_xray_geometry(mode="cone", n_detector=n, d_detector=(6.0, 5.0), angles=angles,
                              dso=300.0, dsd=500.0, offset_detector=(3.0, -7.0),
                              offset_origin=(4.0, -2.0, 5.0))


def test_the_pinhole_of_a_view_is_its_cone_beam_projection_exactly():
    rng = np.random.default_rng(0)
    g = _geometry(rng.uniform(0, 2 * np.pi, 5))
    pts = rng.uniform(-60, 60, (200, 3)).astype(np.float32)
    nv = g.n_detector[0]
    for a in np.asarray(g.angles):
        cam = xray_pinhole(g, a)
        r = np.asarray(cam.rotation, np.float64)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-6)
        uv, z = (np.asarray(x, np.float64) for x in project_points(cam, jnp.asarray(pts)))
        ij, depth = (np.asarray(x, np.float64) for x in xray_project(g, a, jnp.asarray(pts)))
        np.testing.assert_allclose(z, depth, rtol=1e-5)
        np.testing.assert_allclose(uv[:, 0], ij[:, 0] + 0.5, atol=2e-3)  # columns as they are
        np.testing.assert_allclose(uv[:, 1], nv - 0.5 - ij[:, 1], atol=2e-3)  # rows upside down
    p = np.random.default_rng(1).uniform(0, 3, (2, 10, 12)).astype(np.float32)
    img = to_pinhole_images(p, 3.0)
    chex.assert_shape(img, (2, 10, 12, 3))
    np.testing.assert_allclose(np.asarray(from_pinhole_images(img, 3.0)), p, rtol=1e-6)
    with pytest.raises(ValueError, match="parallel"):
        xray_pinhole(make_xray_geometry(mode="parallel", n_detector=(4, 4), d_detector=(1, 1),
                                        angles=[0.0]), 0.0)


def test_render_matches_a_per_pixel_compositing_loop_on_the_cone_beam_projection():
    rng = np.random.default_rng(3)
    n = 20
    s = rgb_splats_from_points(rng.uniform(-15, 15, (n, 3)), rng.uniform(0.1, 1, (n, 3)), sh_degree=0,
                               capacity=n + 1, log_scales=np.log(rng.uniform(3.0, 8.0, (n, 3))))
    s = s.replace(quats=jnp.asarray(rng.normal(size=(n + 1, 4)), jnp.float32),
                  opacity_logits=jnp.asarray(rng.normal(size=n + 1) * 2 + 2.5, jnp.float32))
    g = _geometry([0.4])
    img = np.asarray(render_xgaussian(s, g, scale=2.0))[0]
    a = g.angles[0]
    uv, depth = (np.asarray(x, np.float64) for x in xray_project(g, a, s.means))
    jac = np.asarray(xray_project_jacobian(g, a, s.means), np.float64)
    cov = np.asarray(covariance(s.log_scales, s.quats), np.float64)
    opa = 1 / (1 + np.exp(-np.asarray(s.opacity_logits, np.float64)))
    col = np.maximum(0.28209479177387814 * np.asarray(s.sh, np.float64)[:, 0, 0] + 0.5, 0)
    order = [i for i in np.argsort(depth) if np.asarray(s.active)[i]]
    ref, stopped = np.zeros((10, 12)), 0
    for r in range(10):
        for c in range(12):
            t, acc = 1.0, 0.0
            for i in order:
                cov2 = jac[i] @ cov[i] @ jac[i].T + 0.3 * np.eye(2)
                d = np.array([c, r]) - uv[i]
                al = min(0.99, opa[i] * np.exp(-0.5 * d @ np.linalg.solve(cov2, d)))
                if al < 1 / 255:
                    continue
                if t * (1 - al) < 1e-4:
                    stopped += 1
                    break
                acc, t = acc + t * al * col[i], t * (1 - al)
            ref[r, c] = 2.0 * acc
    assert stopped > 0  # early termination is exercised
    np.testing.assert_allclose(img, ref, rtol=1e-4, atol=1e-5)


def test_the_density_view_of_an_isolated_gaussian_integrates_to_its_composited_value():
    g = make_xray_geometry(mode="cone", n_detector=(33, 33), d_detector=(1.0, 1.0), angles=[0.0, 1.1],
                           dso=400.0, dsd=600.0)
    o, c, scale = 0.05, 0.6, 3.0
    s = rgb_splats_from_points(np.zeros((1, 3)), np.full((1, 3), c), sh_degree=0, opacity=o,
                               log_scales=np.log(np.full((1, 3), 2.0)))
    xg = np.asarray(render_xgaussian(s, g, scale=scale))[:, 16, 16]
    np.testing.assert_allclose(xg, o * c * scale, rtol=1e-5)  # the centre pixel: o·c·s
    rad = density_view(s, scale)
    assert float(np.exp(rad.log_densities[0])) == pytest.approx(o * c * scale / (np.sqrt(2 * np.pi) * 2.0),
                                                                rel=1e-5)
    line = np.asarray(render_xray(rad, g))[:, 16, 16]
    np.testing.assert_allclose(line, o * c * scale, rtol=1e-4)  # ρ·√(2π)·σ through the centre


def test_training_on_projections_lowers_the_loss_and_scores_held_out_views(small_object):
    from insideout_jax.io.objects import read_object
    from insideout_jax.pipeline.geometry import split_views
    from insideout_jax.train.rgb import RGBTrainConfig
    from insideout_jax.train.xgaussian import XGaussianConfig, evaluate_xgaussian, train_xgaussian

    obj = read_object(small_object, load_images=False)
    (p_tr, g_tr), (p_ho, g_ho) = split_views(obj.projections, obj.geometry, 4)
    cfg = XGaussianConfig(train=RGBTrainConfig(iterations=200, block=50, sh_degree=0, densify_from=50,
                                               densify_until=100, densify_every=50,
                                               opacity_reset_every=10**6), n_init=500)
    splats, hist, scale = train_xgaussian(p_tr, g_tr, cfg, progress=False)
    assert scale == pytest.approx(float(p_tr.max()))
    losses = np.asarray(hist["loss"])
    assert losses[-1] < 0.7 * losses[0]
    ev = evaluate_xgaussian(splats, scale, p_ho, g_ho)
    init = train_xgaussian(p_tr, g_tr, dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, iterations=0)), progress=False)[0]
    ev0 = evaluate_xgaussian(init, scale, p_ho, g_ho)
    assert ev["n_views"] == g_ho.n_views == 2
    assert ev["psnr"] > ev0["psnr"] + 3 and ev["ssim"] > ev0["ssim"]  # held-out views improve
    with pytest.raises(ValueError, match="sh_degree"):
        train_xgaussian(p_tr, g_tr, XGaussianConfig(train=RGBTrainConfig(sh_degree=1)), progress=False)
