"""Internal rendering trainer: slices pull the splats toward the CT, kept view terms, frozen colour.

Independent truth: the targets are rendered from a known splat set; the trainer starts from a
perturbed copy and must recover it on the training planes (and between them, where the kept
projection loss constrains the field).
"""

import dataclasses

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import make_xray_geometry, ring_cameras
from insideout_jax.internal.train import InternalConfig, train_internal
from insideout_jax.render.rgb import render_rgb
from insideout_jax.render.slices import axial_plane, coronal_plane, render_slice
from insideout_jax.render.xray import render_xray
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points

RES = (24, 24)


def _planes():
    ax = [axial_plane(z, (0.0, 0.0), (48.0, 48.0), RES) for z in (-8.0, 0.0, 8.0)]
    co = [coronal_plane(y, (0.0, 0.0), (48.0, 48.0), RES) for y in (-8.0, 8.0)]
    return ax + co


def _truth(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rad_splats_from_points(rng.uniform(-12, 12, (n, 3)), rng.uniform(0.02, 0.05, n),
                                  log_scales=np.log(rng.uniform(2.0, 4.0, (n, 3))))


def _slice_err(sp, planes, targets):
    pred = np.stack([np.asarray(render_slice(sp, p)) for p in planes])
    return float(np.abs(pred - targets).mean())


def test_radiative_internal_rendering_recovers_the_density_with_the_projection_term():
    truth = _truth()
    planes = _planes()
    targets = np.stack([np.asarray(render_slice(truth, p)) for p in planes])
    geom = make_xray_geometry(mode="cone", n_detector=(24, 24), d_detector=(3.0, 3.0),
                              angles=np.linspace(0, np.pi, 6, endpoint=False), dso=200.0, dsd=300.0)
    proj = np.asarray(render_xray(truth, geom, jnp.arange(6)))
    start = truth.replace(log_densities=truth.log_densities + np.log(0.4))  # 60 % of the mass lost
    e0 = _slice_err(start, planes, targets)
    cfg = InternalConfig(iterations=80, block=20, lr=1e-4, density_lr=0.05, scale_lr=1e-3,
                         rotation_lr=1e-3, projection_weight=1.0, projection_every=2)
    out, hist = train_internal(start, planes, targets, cfg, projections=proj, geometry=geom,
                               progress=False)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, start)
    assert _slice_err(out, planes, targets) < 0.35 * e0
    assert hist["step"][-1] == 80 and hist["loss"][-1] < hist["loss"][0]
    # only geometry and density move; the radiative colour fields stay
    np.testing.assert_array_equal(out.features, start.features)
    # the projection term is on: a wrong projection target changes the result
    wrong, _ = train_internal(start, planes, targets, cfg, projections=proj[::-1], geometry=geom,
                              progress=False)
    assert not np.allclose(np.asarray(wrong.log_densities), np.asarray(out.log_densities))
    with pytest.raises(ValueError, match="projections"):
        train_internal(start, planes, targets, cfg, projections=0.0 * proj, geometry=geom,
                       progress=False)


def test_rgb_internal_rendering_moves_geometry_never_colour_and_uses_the_photos():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-10, 10, (40, 3))
    rgb = rgb_splats_from_points(pts, rng.uniform(0, 1, (40, 3)), sh_degree=1)
    planes = _planes()
    contours = np.zeros((len(planes),) + RES, np.float32)  # "no surface here": opacity must fall
    cams = ring_cameras(3, size=32, distance=80.0, elevations_deg=(0.0,))
    photos = np.stack([np.asarray(render_rgb(rgb, c).color) for c in cams])
    cfg = InternalConfig(iterations=40, block=20, lr=1e-4, density_lr=0.05, photo_weight=0.0)
    out, _ = train_internal(rgb, planes, contours, cfg, progress=False)
    np.testing.assert_array_equal(out.sh, rgb.sh)  # colour frozen
    assert float(np.mean(out.opacities)) < float(np.mean(rgb.opacities))
    with_photos, _ = train_internal(rgb, planes, contours, dataclasses.replace(cfg, photo_weight=5.0),
                                    photos=photos, cameras=cams, progress=False)
    np.testing.assert_array_equal(with_photos.sh, rgb.sh)
    # the photometric term keeps the model closer to the photos than the contour loss alone
    err = lambda sp: float(np.mean([np.abs(np.asarray(render_rgb(sp, c).color) - p).mean()  # noqa: E731
                                    for c, p in zip(cams, photos, strict=True)]))
    assert err(with_photos) < 0.5 * err(out)
    with pytest.raises(ValueError, match="cameras"):
        train_internal(rgb, planes, contours, dataclasses.replace(cfg, photo_weight=1.0),
                       photos=photos, cameras=cams[:2], progress=False)


def test_internal_densification_prunes_faint_splats():
    truth = _truth()
    faint = truth.replace(log_densities=truth.log_densities.at[:10].set(np.log(1e-6)))
    planes = _planes()
    targets = np.stack([np.asarray(render_slice(truth, p)) for p in planes])
    from insideout_jax.train.densify import DensifyConfig

    cfg = InternalConfig(iterations=20, block=10, density_lr=0.01, projection_weight=0.0,
                         densify_every=10, densify_until=10,
                         densify=DensifyConfig(grad_threshold=1e9, min_density=1e-4,
                                               max_scale_fraction=10.0))
    out, _ = train_internal(faint, planes, targets, cfg, progress=False)
    assert int(np.asarray(out.active).sum()) == 30


def test_density_cap_keeps_peaks_at_or_below_the_targets_maximum():
    truth = _truth()
    planes = _planes()
    targets = np.stack([np.asarray(render_slice(truth, p)) for p in planes])
    # a few splats start 4x over-dense: the cap pulls them to the targets' maximum at once
    hot = truth.replace(log_densities=truth.log_densities.at[:5].add(np.log(4.0) + 1.0))
    cfg = InternalConfig(iterations=10, block=10, density_lr=0.01, projection_weight=0.0,
                         density_cap=1.0)
    out, _ = train_internal(hot, planes, targets, cfg, progress=False)
    peak = np.exp(np.asarray(out.log_densities, np.float64))
    assert peak.max() <= float(targets.max()) * (1 + 1e-5)
    uncapped, _ = train_internal(hot, planes, targets, dataclasses.replace(cfg, density_cap=None),
                                 progress=False)
    assert np.exp(np.asarray(uncapped.log_densities)).max() > 2.0 * float(targets.max())
