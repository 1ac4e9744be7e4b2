"""Radiative rasterizer: exact line integrals vs the float64 closed form, gradients, parity.

The Pallas back end is tested in ``test_pallas_xray.py``.

Relative errors are max |fast − reference| / max |reference| over the whole output (per parameter
field for gradients).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import make_xray_geometry
from insideout_jax.render.xray import render_xray, xray_tile_stats
from insideout_jax.render.xray_reference import reference_rays, render_xray_reference
from insideout_jax.splats import rad_splats_from_points, select_active

# Tests share one capacity, detector shape and view count where they can, so that the jitted
# renderer compiles once per mode (compilation dominates the run time of this file).
CAP, SHAPE = 24, (36, 44)


def _scene(n=20, seed=0, extent=30.0, scale=(1.5, 6.0)):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-extent, extent, (n, 3))
    s = rad_splats_from_points(pts, rng.uniform(0.01, 0.05, n), capacity=CAP,
                               log_scales=np.log(rng.uniform(*scale, (n, 3))))
    return s.replace(quats=jnp.asarray(rng.normal(size=(CAP, 4)), jnp.float32))


def _geom(mode, shape=SHAPE, n_views=2, **kw):
    args = dict(mode=mode, n_detector=shape, d_detector=(2.0, 1.6), dso=400.0, dsd=600.0,
                angles=np.linspace(0.3, 0.3 + 2 * np.pi, n_views, endpoint=False),
                offset_detector=(3.0, -2.5), offset_origin=(2.0, -1.0, 3.0))
    args.update(kw)
    return make_xray_geometry(**args)


def _ref(s, g, **kw):
    with jax.enable_x64(True):
        return np.asarray(render_xray_reference(s, g, np.asarray(g.angles, np.float64), **kw))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("mode", ["cone", "parallel"])
@pytest.mark.parametrize("scale", [(1.5, 6.0), (0.05, 10.0)], ids=["blobs", "needles"])
def test_matches_float64_closed_form(mode, scale):
    # "needles": axis ratios up to 200, where the naive c − b²/a form fails in float32
    s, g = _scene(seed=7, scale=scale), _geom(mode)
    img = render_xray(s, g)
    chex.assert_shape(img, (2, 36, 44))
    chex.assert_type(img, jnp.float32)
    ref = _ref(s, g)
    assert ref.max() > 0.1
    assert _rel(img, ref) < 1e-4  # measured ≈ 5e-6 (5σ truncation + float32)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_footprint_is_exact_at_small_cutoff(mode):
    # At k = 3 a missed pixel inside the silhouette would cost ≥ e^{-4.5} ≈ 1% of a Gaussian's
    # peak: compare with the reference truncated at exactly m ≤ 3. Large, elongated Gaussians close
    # to the source (strong perspective) stress the exact silhouette bounds.
    s = _scene(n=12, seed=4, extent=60.0, scale=(0.3, 30.0))
    g = _geom(mode, dso=150.0, dsd=300.0, d_detector=(4.0, 4.0))
    if mode == "cone":
        assert xray_tile_stats(s, g, cutoff_sigma=3.0)["n_culled_at_source"] == 0
    img = render_xray(s, g, cutoff_sigma=3.0)
    assert _rel(img, _ref(s, g, cutoff_sigma=3.0)) < 2e-5
    # and the truncation itself is large at 3σ, i.e. the comparison above is not vacuous
    assert _rel(img, _ref(s, g)) > 1e-3


def test_single_isotropic_gaussian_parallel_closed_form():
    # Through the centre of ρ·exp(−r²/2σ²) the line integral is ρ·σ·sqrt(2π); at offset h it is
    # multiplied by exp(−h²/2σ²). Detector pixel 1 mm, Gaussian on the axis.
    sigma, rho = 3.0, 0.7
    s = rad_splats_from_points(np.zeros((1, 3)), rho, log_scales=np.full((1, 3), np.log(sigma)),
                               capacity=CAP)
    g = make_xray_geometry(mode="parallel", n_detector=SHAPE, d_detector=(1.0, 1.0),
                           angles=[0.7, 2.0])
    img = np.asarray(render_xray(s, g))
    hv = np.arange(SHAPE[0]) - (SHAPE[0] - 1) / 2
    hu = np.arange(SHAPE[1]) - (SHAPE[1] - 1) / 2
    r2 = hv[:, None] ** 2 + hu[None] ** 2
    expect = rho * sigma * math.sqrt(2 * math.pi) * np.exp(-r2 / (2 * sigma**2))
    expect[r2 > 25 * sigma**2] = 0.0
    for view in img:
        np.testing.assert_allclose(view, expect, rtol=2e-6, atol=1e-7)


def test_reference_rays_agree_with_cameras():
    from insideout_jax.cameras import xray_rays

    for mode in ("cone", "parallel"):
        g = _geom(mode, n_views=1)
        with jax.enable_x64(True):
            o, d = reference_rays(g, np.float64(g.angles[0]))
            d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
            o2, d2 = xray_rays(g, g.angles[0])
            np.testing.assert_allclose(np.asarray(d), np.asarray(d2), atol=1e-6)
            # same lines: the origins differ by a multiple of the direction
            diff = np.asarray(o2, np.float64) - np.asarray(o)
            perp = diff - np.sum(diff * np.asarray(d), -1, keepdims=True) * np.asarray(d)
            assert np.abs(perp).max() < 2e-3


def _grads(render, s, w, **kw):
    def loss(m, ls, q, ld):
        return jnp.sum(render(s.replace(means=m, log_scales=ls, quats=q, log_densities=ld), **kw)
                       * w)

    return jax.grad(loss, argnums=(0, 1, 2, 3))(s.means, s.log_scales, s.quats, s.log_densities)


@pytest.mark.parametrize("mode", ["cone", "parallel"])
def test_gradients_match_float64_autodiff_of_dense_reference(mode):
    s, g = _scene(seed=1), _geom(mode)
    w = jnp.asarray(np.random.default_rng(5).normal(size=(2,) + SHAPE), jnp.float32)
    fast5 = _grads(lambda x: render_xray(x, g), s, w)
    fast6 = _grads(lambda x: render_xray(x, g, cutoff_sigma=6.0), s, w)
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if x.dtype == jnp.float32 else x, s)
        ang = np.asarray(g.angles, np.float64)
        # truncated at 6σ: differs from the untruncated closed form by < 1e-6 relative here
        ref = _grads(lambda x: render_xray_reference(x, g, ang, cutoff_sigma=6.0), s64,
                     jnp.asarray(w, jnp.float64))
    for name, a5, a6, b in zip(["means", "log_scales", "quats", "log_densities"], fast5, fast6,
                               ref, strict=False):
        # the same function: float32 accuracy of the hand-written backward (measured ≈ 1e-6)
        assert _rel(a6, b) < 2e-5, name
        # the default 5σ cut shows in the gradients (measured up to 1.4e-4)
        assert _rel(a5, b) < 5e-4, name


def test_inactive_splats_are_ignored_and_get_zero_gradient():
    s = _scene(seed=2)
    act = np.asarray(s.active).copy()
    act[[1, 4, 7]] = False
    s = s.replace(active=jnp.asarray(act))
    g = _geom("cone")
    # the same set with those splats removed (compacted, then padded back to the same capacity)
    compact = select_active(s)
    pad = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x[:CAP - x.shape[0]]]), compact)
    pad = pad.replace(active=jnp.arange(CAP) < compact.capacity)
    np.testing.assert_allclose(np.asarray(render_xray(s, g)), np.asarray(render_xray(pad, g)),
                               rtol=0, atol=1e-6)
    w = jnp.ones((2,) + SHAPE, jnp.float32)
    for gr in _grads(lambda x: render_xray(x, g), s, w):
        assert np.all(np.asarray(gr)[~act] == 0.0)
        assert np.all(np.isfinite(np.asarray(gr)))


def test_views_by_index_or_angle_and_determinism():
    s, g = _scene(), _geom("cone", n_views=4)
    f = jax.jit(lambda x, v: render_xray(x, g, v))
    a = np.asarray(f(s, jnp.asarray([3, 1])))
    b = np.asarray(render_xray(s, g, np.asarray(g.angles)[[3, 1]]))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a, np.asarray(f(s, jnp.asarray([3, 1]))))  # bitwise repeatable
    w = jnp.ones((2,) + SHAPE, jnp.float32)
    g2 = _geom("cone")
    for a, b in zip(_grads(lambda x: render_xray(x, g2), s, w),
                    _grads(lambda x: render_xray(x, g2), s, w), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gaussian_at_source_is_culled_and_reported():
    s = _scene()
    means = np.asarray(s.means).copy()
    means[0] = [400.0, 0.0, 0.0]  # the source of view angle 0 (offset_origin 0 here)
    s = s.replace(means=jnp.asarray(means))
    g = _geom("cone", angles=[0.0, 1.0], offset_origin=(0.0, 0.0, 0.0))
    assert xray_tile_stats(s, g)["n_culled_at_source"] == 1
    img = render_xray(s, g)
    assert np.all(np.isfinite(np.asarray(img)))
    for gr in _grads(lambda x: render_xray(x, g), s, jnp.ones((2,) + SHAPE, jnp.float32)):
        assert np.all(np.isfinite(np.asarray(gr)))


def test_bad_inputs_raise_value_error():
    s, g = _scene(n=3), _geom("cone")
    with pytest.raises(ValueError, match="cutoff_sigma"):
        render_xray(s, g, cutoff_sigma=0.0)
    with pytest.raises(ValueError, match="views"):
        render_xray(s, g, np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="backend"):
        render_xray(s, g, backend="cuda")
    with pytest.raises(ValueError, match="tile_size"):
        render_xray(s, g, backend="pallas_interpret", tile_size=12)
    with pytest.raises(ValueError, match="capacity"):
        render_xray(s, g, backend="pallas_interpret", capacity=0)
    with pytest.raises(ValueError, match="RadSplats"):
        render_xray(g, g)
    with pytest.raises(ValueError, match=r"C ≥ 1, got \(0, 3\)"):  # no splats: said, not a modulo by zero
        render_xray(jax.tree_util.tree_map(lambda x: x[:0], s), g)


def test_additive_engine_generic_kernel_and_autodiff_fallback():
    # A kernel whose value is the record's weight times the pixel's column index, on every pixel
    # of its box: the per-tile sums and the jax.vjp fallback of the custom VJP have closed forms.
    from insideout_jax.render.additive import SplatKernel, TileLayout, sum_splat

    def ev(rec, aux, x0, y0, layer, ts):
        lx = jnp.arange(ts[0] * ts[1]) % ts[1]
        return rec[:, :1] * (x0[:, None] + lx[None, :]).astype(jnp.float32) * aux

    layout = TileLayout(2, 3, 4, 4, 4, chunk=5)  # 2 layers of 3 × 4 tiles of 4 × 4 px
    boxes = jnp.asarray([[0, 0, 0, 2, 1, 1], [1, 1, 0, 3, 2, 2], [0, 0, 0, 0, 0, 0],
                         [3, 2, 1, 1, 1, 1]], jnp.int32)  # (tx0, ty0, layer0, ntx, nty, nl)
    rec = jnp.asarray([[1.0], [2.0], [5.0], [3.0]], jnp.float32)
    img = layout.untile(sum_splat(SplatKernel(ev), layout, rec, jnp.float32(1.0), boxes), 12, 16)
    cols = np.broadcast_to(np.arange(16.0)[None, :], (12, 16))
    ct = np.random.default_rng(0).normal(size=(2, 12, 16))
    expect, expect_g = np.zeros((2, 12, 16)), []
    for (tx0, ty0, l0, ntx, nty, nl), w in zip(np.asarray(boxes), [1.0, 2.0, 5.0, 3.0],
                                              strict=True):
        rows, c = slice(4 * ty0, 4 * (ty0 + nty)), slice(4 * tx0, 4 * (tx0 + ntx))
        expect[l0:l0 + nl, rows, c] += w * cols[rows, c]
        expect_g.append(np.sum(ct[l0:l0 + nl, rows, c] * cols[rows, c]))
    np.testing.assert_allclose(np.asarray(img), expect, rtol=1e-6)
    g = jax.grad(lambda r: jnp.sum(layout.untile(
        sum_splat(SplatKernel(ev), layout, r, jnp.float32(1.0), boxes), 12, 16) * ct))(rec)
    np.testing.assert_allclose(np.asarray(g)[:, 0], expect_g, rtol=1e-5, atol=1e-4)


def test_rsqrt_series_is_within_float32_rounding():
    from insideout_jax.render.xray_records import SERIES_EPS, _rsqrt_1p

    eps = np.linspace(-SERIES_EPS, SERIES_EPS, 20001)
    exact = (1.0 + eps) ** -0.5
    series = np.asarray(_rsqrt_1p(jnp.asarray(eps, jnp.float32), True), np.float64)
    assert np.abs(series / exact - 1.0).max() < 4e-7  # truncation ≤ 2.3e-7, plus float32 rounding
    # and outside the bound it would not be (the bound is what keeps the series exact)
    far = np.float32(4 * SERIES_EPS)
    assert abs(float(_rsqrt_1p(far, True)) * (1 + far) ** 0.5 - 1.0) > 1e-5


def test_series_and_rsqrt_passes_both_run_in_the_accuracy_tests():
    # The closed-form and gradient tests above (cone beam) hold for both passes of the XLA path:
    # their scenes have records on both sides of the series bound.
    from insideout_jax.render import additive as ad
    from insideout_jax.render import xray as xr

    for seed, scale in [(7, (1.5, 6.0)), (7, (0.05, 10.0)), (1, (1.5, 6.0))]:
        s, g = _scene(seed=seed, scale=scale), _geom("cone")
        layout = xr._layout(g, 2, 16, 1024)
        rec, boxes, _ = xr._xray_setup(s, g, g.angles, jnp.float32(5.0), layout)
        sel = np.asarray(xr.series_records(rec, boxes, layout))
        has_pairs = np.asarray(ad.box_counts(boxes)) > 0
        assert (sel & has_pairs).sum() >= 5 and (~sel & has_pairs).sum() >= 5


def test_xla_jit_options_top_level_and_nested():
    from insideout_jax import xla

    if jax.default_backend() != "cpu":
        pytest.skip("the compiler options are CPU options")
    opts = xla.compiler_options()
    assert opts.items() <= xla._CPU_OPTIONS.items() and "xla_cpu_prefer_vector_width" in opts
    s, g = _scene(seed=7), _geom("cone")
    top = render_xray(s, g)  # top-level: compiled with the options
    nested = jax.jit(lambda x: render_xray(x, g))(s)  # inside a user's jit: a plain nested jit
    # the same arithmetic; the vector width changes only the float32 rounding
    np.testing.assert_allclose(np.asarray(top), np.asarray(nested), rtol=1e-5, atol=1e-6)
    assert _rel(top, _ref(s, g)) < 1e-4
