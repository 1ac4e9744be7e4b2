"""RGB tile rasterizer vs the dense float64 reference: forward, gradients, exactness, back ends."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax.cameras import PinholeCamera
from insideout_jax.render import RasterConfig, render_rgb, render_rgb_dense, sh_colors
from insideout_jax.sh import rgb_to_sh0, sh_basis
from insideout_jax.splats import RGBSplats

H, W, F = 30, 45, 40.0  # partial border tiles for 8- and 16-px tiles
BG = (0.2, 0.5, 0.9)
FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")
MAIN = RasterConfig(chunk_size=8, pair_capacity=256)  # 8-px tiles, several pair windows


def _rotation(seed):
    q = np.random.default_rng(seed).normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _camera(dtype, width=W, height=H, seed=11):
    rot = _rotation(seed)
    t = np.array([0.1, -0.2, 0.3])
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return PinholeCamera(f(rot), f(t), f(F), f(F * 1.1), f(width / 2 + 0.7), f(height / 2 - 0.4),
                         width, height), rot, t


def _scene(n=250, seed=0, dtype=jnp.float32, degree=2):
    """Random splats: off-screen centres with on-screen footprints, some behind the near plane,
    a few huge ones, opacities below 1/255 and above 0.99, 5 % inactive."""
    rng = np.random.default_rng(seed)
    cam, rot, t = _camera(dtype)
    z = rng.uniform(2.0, 6.0, n)
    z[:6] = rng.uniform(-1.0, 0.15, 6)  # behind / at the near plane
    u = rng.uniform(-8, W + 8, n)
    v = rng.uniform(-8, H + 8, n)
    p_cam = np.stack([(u - W / 2) * z / F, (v - H / 2) * z / (1.1 * F), z], -1)
    means = (p_cam - t) @ rot  # world = Rᵀ(p − t)
    sigma_px = rng.uniform(0.3, 4.0, (n, 3))
    sigma_px[6:10] = rng.uniform(10, 20, (4, 3))  # cover many tiles
    log_scales = np.log(sigma_px * np.abs(z)[:, None] / F)
    quats = rng.normal(size=(n, 4))
    logits = rng.normal(0, 2, n)
    logits[10:14] = -7.0  # opacity < 1/255: never composited
    logits[14:20] = 6.0  # o·G > 0.99 at the centre: clamped
    sh = rng.normal(0, 0.3, (n, (degree + 1) ** 2, 3))
    sh[:, 0] = np.asarray(rgb_to_sh0(rng.uniform(0, 1, (n, 3))))
    active = rng.uniform(size=n) > 0.05
    f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return RGBSplats(f(means), f(log_scales), f(quats), f(logits), f(sh), jnp.asarray(active)), cam


def _weights(shape=(H, W)):
    rng = np.random.default_rng(1)
    return (rng.normal(size=shape + (3,)), rng.normal(size=shape), rng.normal(size=shape))


def _loss(color, alpha, depth, weights):
    wc, wa, wd = weights
    return jnp.sum(color * wc) + jnp.sum(alpha * wa) + jnp.sum(alpha * depth * wd)


@functools.partial(jax.jit, static_argnames=("config", "sh_degree"))
def _value_and_grad(splats, cam, bg, delta, weights, config, sh_degree):
    def loss(sp, bg, delta):
        out = render_rgb(sp, cam, background=bg, config=config, sh_degree=sh_degree,
                         means2d_delta=delta)
        return _loss(out.color, out.alpha, out.depth, weights), out

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True, allow_int=True)(
        splats, bg, delta)


def _fast_value_and_grad(splats, cam, config, sh_degree=None):
    dtype = splats.means.dtype
    weights = jax.tree_util.tree_map(lambda w: jnp.asarray(w, dtype), _weights())
    return _value_and_grad(splats, cam, jnp.asarray(BG, dtype),
                           jnp.zeros((splats.capacity, 2), dtype), weights, config, sh_degree)


def _ref_value_and_grad(splats, cam, sh_degree=None):
    with jax.enable_x64(True):
        sp = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype != bool else x,
                                    splats)
        cam64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), cam)
        weights = _weights()

        def loss(sp, bg):
            c, a, d = render_rgb_dense(sp, cam64, background=bg, sh_degree=sh_degree)
            return _loss(c, a, d, weights), (c, a, d)

        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True, allow_int=True))
        (val, img), grads = fn(sp, jnp.asarray(BG, jnp.float64))
        return jax.tree_util.tree_map(np.asarray, ((val, img), grads))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.fixture(scope="module")
def scene():
    splats, cam = _scene()
    return splats, cam, _ref_value_and_grad(splats, cam)


@pytest.fixture(scope="module")
def main_result(scene):
    splats, cam, _ = scene
    return _fast_value_and_grad(splats, cam, MAIN)


def test_forward_matches_dense_reference(scene, main_result):
    _, _, ((_, (c_ref, a_ref, d_ref)), _) = scene
    (_, out), _ = main_result
    chex.assert_shape(out.color, (H, W, 3))
    chex.assert_shape((out.alpha, out.depth), (H, W))
    assert int(out.n_pairs) > 2 * MAIN.pair_capacity  # three or more windows were composited
    assert np.abs(out.color - c_ref).max() <= 1e-5
    assert np.abs(out.alpha - a_ref).max() <= 1e-5
    assert np.abs(out.alpha * out.depth - a_ref * d_ref).max() <= 1e-5 * np.abs(d_ref).max()
    seen = a_ref > 0.05
    np.testing.assert_allclose(np.asarray(out.depth)[seen], d_ref[seen], rtol=1e-5)
    assert 0.3 < a_ref.mean() < 0.99  # the scene is neither empty nor opaque everywhere


def test_gradients_match_dense_reference(scene, main_result):
    _, _, (_, (g_ref, g_bg_ref)) = scene
    _, (g, g_bg, _) = main_result
    for name in FIELDS:
        assert _rel(getattr(g, name), getattr(g_ref, name)) <= 1e-4, name
    assert _rel(g_bg, g_bg_ref) <= 1e-4
    culled = ~np.asarray(scene[0].active)
    assert np.all(np.asarray(g.means)[culled] == 0)  # inactive slots get no gradient


def test_float64_run_matches_reference_to_round_off(scene):
    """The same code in float64: forward and hand-written gradients equal autodiff of the
    reference to ~1e-12, and the screen-space gradient equals a central finite difference."""
    splats, cam32, ((val_ref, (c_ref, a_ref, _)), (g_ref, g_bg_ref)) = scene
    with jax.enable_x64(True):
        sp = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype != bool else x,
                                    splats)
        cam = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), cam32)
        (val, out), (g, g_bg, g_delta) = _fast_value_and_grad(sp, cam, MAIN)
        assert abs(float(val) - float(val_ref)) <= 1e-10 * abs(float(val_ref))
        assert np.abs(out.color - c_ref).max() <= 1e-12
        assert np.abs(out.alpha - a_ref).max() <= 1e-12
        for name in FIELDS:
            assert _rel(getattr(g, name), getattr(g_ref, name)) <= 1e-9, name
        assert _rel(g_bg, g_bg_ref) <= 1e-9
        i = int(np.argmax(np.abs(np.asarray(g_delta)).sum(1)))
        eps = 1e-6
        weights = jax.tree_util.tree_map(jnp.asarray, _weights())

        def loss_at(shift):
            d = jnp.zeros((sp.capacity, 2), jnp.float64).at[i, 0].set(shift)
            return float(_value_and_grad(sp, cam, jnp.asarray(BG), d, weights, MAIN, None)[0][0])

        fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        assert abs(fd - float(g_delta[i, 0])) <= 1e-6 * max(1.0, abs(fd))


def test_sh_degree_selects_bands():
    splats, cam = _scene(n=40)
    full = sh_colors(splats.sh, splats.means, cam, degree=1)
    cut = sh_colors(splats.sh[:, :4], splats.means, cam)
    np.testing.assert_array_equal(full, cut)
    centre = -np.asarray(cam.rotation).T @ np.asarray(cam.translation)
    d = np.asarray(splats.means) - centre
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    want = np.maximum(0.5 + np.einsum("nk,nkc->nc", np.asarray(sh_basis(jnp.asarray(d), 1)),
                                      np.asarray(splats.sh[:, :4])), 0)
    np.testing.assert_allclose(full, want, atol=1e-5)


def test_tile_with_over_1000_gaussians_is_composited_completely():
    """1 200 faint Gaussians cover a 16×16 image (four 8-px tiles); every one of them must be
    composited, through many chunks of each tile's list (windows: see the MAIN scene)."""
    n, size = 1200, 16
    rng = np.random.default_rng(5)
    cam = PinholeCamera(jnp.eye(3), jnp.zeros(3), jnp.float32(F), jnp.float32(F),
                        jnp.float32(size / 2), jnp.float32(size / 2), size, size)
    z = rng.uniform(2, 4, n)
    uv = rng.uniform(4, 12, (n, 2))
    means = np.concatenate([(uv - size / 2) * z[:, None] / F, z[:, None]], 1)
    sh = np.zeros((n, 1, 3))
    sh[:, 0] = np.asarray(rgb_to_sh0(rng.uniform(0, 1, (n, 3))))
    o = rng.uniform(0.0045, 0.0075, n)  # Σα ≈ 7: the pixels never reach T < 1e-4
    splats = RGBSplats(jnp.asarray(means, jnp.float32),
                       jnp.asarray(np.log(30 * z / F)[:, None].repeat(3, 1), jnp.float32),
                       jnp.tile(jnp.asarray([1.0, 0, 0, 0]), (n, 1)),
                       jnp.asarray(np.log(o / (1 - o)), jnp.float32),
                       jnp.asarray(sh, jnp.float32), jnp.ones(n, bool))
    with jax.enable_x64(True):
        sp64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if x.dtype != bool else x,
                                      splats)
        cam64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), cam)
        c_ref, a_ref, _ = jax.jit(render_rgb_dense)(sp64, cam64)
        c_ref, a_ref = np.asarray(c_ref), np.asarray(a_ref)
    config = RasterConfig(tile_size=8, chunk_size=64)  # 4 tiles × 1 200 pairs, 19 chunks each
    out = render_rgb(splats, cam, config=config)
    assert np.abs(out.color - c_ref).max() <= 1e-5
    assert np.abs(out.alpha - a_ref).max() <= 1e-5
    assert int(out.n_pairs) == 4 * n
    assert int(out.max_pairs_per_tile) == n
    # the last 200 Gaussians (in index order) matter: dropping them changes the image
    fewer = render_rgb(splats.replace(active=jnp.arange(n) < 1000), cam, config=config)
    assert np.abs(np.asarray(fewer.color) - c_ref).max() > 1e-3
    assert 0.9 < a_ref.min() and a_ref.max() < 0.9999


def test_stop_and_skip_rules_golden():
    """Hand-computed 3DGS semantics at one pixel: skip α < 1/255, clamp α at 0.99, stop before
    T would fall below 1e-4 (the stopping Gaussian and all later ones are not composited)."""
    size = 8
    cam = PinholeCamera(jnp.eye(3), jnp.zeros(3), jnp.float32(10.0), jnp.float32(10.0),
                        jnp.float32(4.0), jnp.float32(4.0), size, size)
    # five Gaussians on the optical axis, centred on pixel (3, 3)'s centre (u = v = 3.5)
    depth = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    x = -0.05 * depth  # (3.5 − 4) / 10 · z
    opac = np.array([0.003, 0.995, 0.9, 0.95, 0.5])  # skipped, clamped, kept, stops, after stop
    cols = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]], float)
    sh = np.asarray(rgb_to_sh0(cols))[:, None, :]
    tiny = np.log(1e-4 * depth / 10)  # 2D covariance ≈ 0.3 px² (low-pass only): G = 1 at centre
    splats = RGBSplats(jnp.asarray(np.stack([x, x, depth], 1), jnp.float32),
                       jnp.asarray(np.repeat(tiny[:, None], 3, 1), jnp.float32),
                       jnp.tile(jnp.asarray([1.0, 0, 0, 0]), (5, 1)),
                       jnp.asarray(np.log(opac / (1 - opac)), jnp.float32),
                       jnp.asarray(sh, jnp.float32), jnp.ones(5, bool))
    bg = np.array([0.3, 0.3, 0.3])
    out = render_rgb(splats, cam, background=jnp.asarray(bg, jnp.float32))
    # pixel (3, 3): α = 0 (skipped), 0.99, 0.9, then T·(1 − 0.95) = 5e-5 < 1e-4 → stop
    t1, t2 = 1 - 0.99, (1 - 0.99) * (1 - 0.9)
    want = 0.99 * cols[1] + 0.9 * t1 * cols[2] + t2 * bg
    np.testing.assert_allclose(out.color[3, 3], want, atol=2e-6)
    np.testing.assert_allclose(out.alpha[3, 3], 1 - t2, atol=1e-6)
    np.testing.assert_allclose(out.depth[3, 3], (0.99 * 2 + 0.9 * t1 * 3) / (1 - t2), rtol=1e-5)


def test_inactive_slots_and_determinism(scene, main_result):
    splats, cam, _ = scene
    (_, out), grads = main_result
    inactive = ~np.asarray(splats.active)
    junk = splats.replace(means=jnp.where(inactive[:, None], 0.0, splats.means),
                          opacity_logits=jnp.where(inactive, 9.0, splats.opacity_logits))
    (_, out2), grads2 = _fast_value_and_grad(junk, cam, MAIN)
    np.testing.assert_array_equal(out2.color, out.color)
    (_, out3), grads3 = _fast_value_and_grad(splats, cam, MAIN)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads3), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-for-bit reproducible
    assert not np.any(np.asarray(out.visible)[inactive])
    assert np.all(np.asarray(out.visible)[:6] == 0)  # behind the near plane


@pytest.mark.parametrize("pair_capacity", [None, 128], ids=["one-window", "windows"])
def test_pallas_interpret_matches_xla(scene, main_result, pair_capacity):
    """Pallas kernels (interpreted, 16-px tiles; one window, or several that carry the per-pixel
    state from kernel call to kernel call) vs the XLA loop (MAIN: 8-px tiles, several windows)
    and the float64 dense reference: the same compositing, so equal up to float round-off."""
    splats, cam, ((_, (c_ref, a_ref, _)), (g_ref, _)) = scene
    (_, o1), (g1, gb1, _) = main_result
    cfg = RasterConfig(backend="pallas_interpret", pair_capacity=pair_capacity)
    (_, o2), (g2, gb2, _) = _fast_value_and_grad(splats, cam, cfg)
    if pair_capacity is not None:
        assert int(o2.n_pairs) > 2 * pair_capacity  # three or more windows
    assert np.abs(o2.color - c_ref).max() <= 1e-5  # the XLA path's tolerances vs float64
    assert np.abs(o2.alpha - a_ref).max() <= 1e-5
    assert np.abs(o1.color - o2.color).max() <= 1e-5
    assert np.abs(o1.alpha - o2.alpha).max() <= 1e-5
    assert np.abs(o1.alpha * o1.depth - o2.alpha * o2.depth).max() <= 1e-5 * 6
    for name in FIELDS:
        assert _rel(getattr(g2, name), getattr(g1, name)) <= 1e-4, name
        assert _rel(getattr(g2, name), getattr(g_ref, name)) <= 1e-4, name
    assert _rel(gb2, gb1) <= 1e-5


def test_ellipse_culling_changes_nothing_but_the_work(scene, main_result):
    """The exact ellipse–tile test leaves out only pairs that composite nothing: colour, alpha,
    depth and every gradient are bit-identical to the axis-aligned boxes' render, with fewer
    pairs in the longest tile list."""
    splats, cam, _ = scene
    box = _fast_value_and_grad(splats, cam, dataclasses.replace(MAIN, cull="box"))
    (v_e, out_e), g_e = main_result
    (v_b, out_b), g_b = box
    assert float(v_e) == float(v_b)
    for a, b in ((out_e.color, out_b.color), (out_e.alpha, out_b.alpha), (out_e.depth, out_b.depth)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(g_e), jax.tree_util.tree_leaves(g_b), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(out_e.n_pairs) == int(out_b.n_pairs)  # the box count: the windows' size
    assert int(out_e.max_pairs_per_tile) < int(out_b.max_pairs_per_tile)
    with pytest.raises(ValueError, match="cull"):
        render_rgb(splats, cam, config=RasterConfig(cull="circle"))


def test_fitted_pair_capacity_is_the_power_of_two_below_the_largest_count(scene):
    """The capacity the trainers fit: a power of two ≥ 4096, ≤ the largest pair count of the
    given views and more than half of it; a render at that capacity (several windows) equals the
    default-capacity render bit for bit."""
    from insideout_jax.render.rgb import fitted_pair_capacity

    splats, cam, _ = scene
    many = splats.replace(means=jnp.concatenate([splats.means] * 40),
                          log_scales=jnp.concatenate([splats.log_scales + 0.7] * 40),
                          quats=jnp.concatenate([splats.quats] * 40),
                          opacity_logits=jnp.concatenate([splats.opacity_logits] * 40),
                          sh=jnp.concatenate([splats.sh] * 40),
                          active=jnp.concatenate([splats.active] * 40))
    cam2 = cam.replace(cx=cam.cx + 9.0)
    counts = [int(render_rgb(many, c).n_pairs) for c in (cam, cam2)]
    cap = fitted_pair_capacity(many, [cam, cam2])
    assert cap & (cap - 1) == 0 and cap >= 4096
    assert max(counts) >= cap > max(counts) / 2, (cap, counts)
    assert fitted_pair_capacity(splats, [cam]) == 4096  # small scenes: the floor
    a = render_rgb(many, cam, config=RasterConfig(pair_capacity=cap))
    b = render_rgb(many, cam)
    np.testing.assert_array_equal(np.asarray(a.color), np.asarray(b.color))


def test_render_rgb_validates_inputs():
    splats, cam = _scene(n=30)
    with pytest.raises(ValueError, match="sh_degree"):
        render_rgb(splats, cam, sh_degree=3)
    with pytest.raises(ValueError, match="background"):
        render_rgb(splats, cam, background=jnp.zeros(4))
    with pytest.raises(ValueError, match="log_scales"):
        render_rgb(splats.replace(log_scales=splats.log_scales[:, :2]), cam)
    with pytest.raises(ValueError, match="backend"):
        render_rgb(splats, cam, config=dataclasses.replace(MAIN, backend="cuda"))
    with pytest.raises(ValueError, match="means2d_delta"):
        render_rgb(splats, cam, means2d_delta=jnp.zeros((3, 2)))
