"""Visual alignment: colour transfer (1-NN), detail cloning (p95), unified model views and PLY."""

import jax.numpy as jnp
import numpy as np
import pytest
from plyfile import PlyData
from scipy.spatial import cKDTree

from insideout_jax import sh as sh_lib
from insideout_jax.splats import rad_splats_from_points, rgb_splats_from_points
from insideout_jax.visual import as_radiative, colour_transfer, detail_clone_mask, unify, write_unified_ply


def _sets(seed=0):
    rng = np.random.default_rng(seed)
    surf = rng.normal(size=(400, 3))
    surf = 50 * surf / np.linalg.norm(surf, axis=1, keepdims=True)
    rgb = rgb_splats_from_points(surf, rng.uniform(size=(400, 3)), sh_degree=2, capacity=420)
    ls = np.log(rng.uniform(0.5, 3.0, (420, 3)))
    rgb = rgb.replace(log_scales=jnp.asarray(ls, jnp.float32))
    inner = rng.uniform(-45, 45, (800, 3))
    rad = rad_splats_from_points(inner, rng.uniform(0.01, 0.05, 800), capacity=850)
    return rgb, rad, surf, inner


def test_colour_transfer_is_nearest_neighbour():
    rgb, rad, surf, inner = _sets()
    col = np.asarray(colour_transfer(rad, rgb))[:800]  # active radiative slots
    _, nn = cKDTree(surf).query(np.asarray(rad.means)[:800])
    want = np.clip(np.asarray(sh_lib.sh0_to_rgb(rgb.sh[:, 0]))[nn], 0, 1)
    np.testing.assert_allclose(col, want, atol=1e-6)


def test_detail_clone_percentile_and_unified_model(tmp_path):
    rgb, rad, surf, inner = _sets(1)
    keep = detail_clone_mask(rgb, percentile=95.0)
    lam = np.exp(2 * np.asarray(rgb.log_scales)).max(1)[:400]
    assert keep[:400].sum() == np.sum(lam <= np.percentile(lam, 95)) and not keep[400:].any()
    model = unify(rad, rgb)
    n = 800 + int(keep.sum())
    assert model.splats.capacity == n and int(model.radiative.sum()) == 800
    dens = as_radiative(model)
    np.testing.assert_allclose(np.exp(dens.log_densities[:800]), np.asarray(rad.densities[:800]), rtol=1e-6)
    # cloned splats keep their SH and opacity, and carry no mass by default ...
    cl = np.flatnonzero(keep)
    np.testing.assert_array_equal(model.splats.sh[800:], rgb.sh[cl])
    np.testing.assert_array_equal(np.exp(np.asarray(dens.log_densities[800:])), 0.0)
    # ... or take the density of the nearest radiative splat
    dens_nn = as_radiative(unify(rad, rgb, clone_density="nearest"))
    _, nn = cKDTree(inner).query(surf[cl])
    np.testing.assert_allclose(np.asarray(dens_nn.log_densities[800:]), np.asarray(rad.log_densities)[nn])
    with pytest.raises(ValueError, match="clone_density"):
        unify(rad, rgb, clone_density="mean")
    p = write_unified_ply(tmp_path / "unified.ply", model)
    v = PlyData.read(str(p))["vertex"]
    assert len(v.data) == n and "f_rest_0" in v.data.dtype.names
    np.testing.assert_allclose(v["density"][:800], np.asarray(rad.densities[:800]), rtol=1e-6)
    assert v["radiative"].sum() == 800 and np.all(v["density"][800:] == 0.0)


def test_colour_fit_restores_the_photos_and_moves_nothing_else():
    from insideout_jax.cameras import ring_cameras
    from insideout_jax.metrics.image import psnr
    from insideout_jax.render.rgb import render_rgb
    from insideout_jax.visual import refine_colours

    rgb, rad, _, _ = _sets(2)
    cams = ring_cameras(6, size=40, distance=220.0, elevations_deg=(0.0, 30.0))
    photos = np.stack([np.asarray(render_rgb(rgb, c).color) for c in cams])  # the RGB model's views
    model = unify(rad, rgb, percentile=60.0)  # 40 % of the RGB splats replaced by radiative ones
    views = lambda m: np.stack([np.asarray(render_rgb(m.splats, c).color) for c in cams])  # noqa: E731
    before = psnr(views(model), photos)
    fitted, hist = refine_colours(model, photos, cams, iterations=150, lr=2e-2, block=50,
                                  progress=False)
    after = psnr(views(fitted), photos)
    assert after > before + 3.0 and hist["loss"][-1] < hist["loss"][0]
    s0, s1 = model.splats, fitted.splats
    for f in ("means", "log_scales", "quats", "opacity_logits"):
        np.testing.assert_array_equal(getattr(s1, f), getattr(s0, f))
    np.testing.assert_array_equal(fitted.log_densities, model.log_densities)
    with pytest.raises(ValueError, match="one camera each"):
        refine_colours(model, photos, cams[:3], iterations=1, progress=False)
