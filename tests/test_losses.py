"""Tests for insideout_jax.losses against independent float64 references and closed forms."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64
from jax.test_util import check_grads
from scipy import signal

from insideout_jax import losses


def _ssim_reference_2d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent float64 3DGS SSIM map: 2D window, scipy convolve2d with zero fill ('same')."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)

    def f(z):
        return signal.convolve2d(z, w, mode="same", boundary="fill", fillvalue=0.0)

    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def _pair(seed, shape):
    rng = np.random.default_rng(seed)
    # Smooth-ish structure plus noise so that SSIM is far from 0 and 1.
    a = rng.uniform(size=shape)
    a = np.clip(0.5 * a + 0.5 * np.roll(a, 1, axis=0), 0, 1)
    b = np.clip(a + rng.normal(0, 0.1, size=shape), 0, 1)
    return a, b


@pytest.mark.parametrize("shape", [(37, 29), (24, 31, 3), (9, 70, 2)])
def test_ssim_matches_float64_reference(shape):
    a, b = _pair(0, shape)
    if len(shape) == 2:
        ref_map = _ssim_reference_2d(a, b)
    else:
        ref_map = np.stack(
            [_ssim_reference_2d(a[..., c], b[..., c]) for c in range(shape[2])], axis=-1
        )
    # float32, jitted
    m32 = jax.jit(losses.ssim_map)(a.astype(np.float32), b.astype(np.float32))
    chex.assert_shape(m32, shape)
    chex.assert_type(m32, jnp.float32)
    np.testing.assert_allclose(np.asarray(m32), ref_map, atol=2e-5)
    np.testing.assert_allclose(
        float(losses.ssim(a.astype(np.float32), b.astype(np.float32))), ref_map.mean(), atol=5e-6
    )
    # float64: same formula to rounding
    with enable_x64(True):
        m64 = losses.ssim_map(jnp.asarray(a), jnp.asarray(b))
        assert m64.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(m64), ref_map, atol=1e-12)


def test_ssim_identity_and_symmetry():
    a, b = _pair(1, (20, 22, 3))
    np.testing.assert_allclose(float(losses.ssim(a, a)), 1.0, atol=1e-6)
    np.testing.assert_allclose(float(losses.ssim(a, b)), float(losses.ssim(b, a)), atol=1e-7)
    np.testing.assert_allclose(
        float(losses.d_ssim(a, b)), 1.0 - float(losses.ssim(a, b)), atol=1e-7
    )
    assert float(losses.ssim(a, b)) < 0.99


def test_ssim_vmap_batch():
    rng = np.random.default_rng(2)
    a = rng.uniform(size=(3, 16, 18, 3)).astype(np.float32)
    b = rng.uniform(size=(3, 16, 18, 3)).astype(np.float32)
    batched = jax.vmap(losses.ssim)(a, b)
    chex.assert_shape(batched, (3,))
    for i in range(3):
        np.testing.assert_allclose(float(batched[i]), float(losses.ssim(a[i], b[i])), atol=1e-6)


def test_ssim_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        losses.ssim_map(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="pred"):
        losses.ssim_map(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 3)))


def test_l1_and_photometric_loss():
    a, b = _pair(3, (19, 17, 3))
    chex.assert_shape(losses.l1(a, b), (19, 17, 3))
    np.testing.assert_allclose(float(losses.l1_loss(a, b)), np.abs(a - b).mean(), rtol=1e-6)
    ref_ssim = np.mean([_ssim_reference_2d(a[..., c], b[..., c]).mean() for c in range(3)])
    expected = 0.8 * np.abs(a - b).mean() + 0.2 * (1.0 - ref_ssim)
    np.testing.assert_allclose(float(losses.photometric_loss(a, b)), expected, atol=1e-5)
    # lambda_ssim = 0 and 1 select the two terms.
    np.testing.assert_allclose(
        float(losses.photometric_loss(a, b, lambda_ssim=0.0)), np.abs(a - b).mean(), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(losses.photometric_loss(a, b, lambda_ssim=1.0)), 1.0 - ref_ssim, atol=1e-5
    )


def test_gradients_float64():
    a, b = _pair(4, (14, 13))
    with enable_x64(True):
        x, y = jnp.asarray(a), jnp.asarray(b)
        check_grads(
            lambda p: losses.ssim(p, y), (x,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6
        )
        check_grads(
            lambda p: losses.photometric_loss(p, y),
            (x,),
            order=1,
            modes=("rev",),
            atol=1e-6,
            rtol=1e-6,
        )
        vol = jnp.asarray(np.random.default_rng(5).normal(size=(4, 5, 6)))
        check_grads(losses.tv_3d, (vol,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_zero_one_closed_form_values():
    # alpha = 0.5: log(1/2) + log(1/2) = -2 ln 2, the maximum.
    np.testing.assert_allclose(float(losses.zero_one(0.0)), -2 * math.log(2), rtol=1e-6)
    # Saturated logits hit the clip: alpha~ = 1 - 1e-3 (or 1e-3).
    sat = math.log(1e-3) + math.log(1 - 1e-3)
    for o in (7.0, 50.0, -7.0, -1e4):
        np.testing.assert_allclose(float(losses.zero_one(o)), sat, rtol=1e-5)
    # Agrees with the naive definition where that is accurate.
    o = np.linspace(-6.5, 6.5, 101)
    alpha = 1.0 / (1.0 + np.exp(-o))
    with enable_x64(True):
        np.testing.assert_allclose(
            np.asarray(losses.zero_one(jnp.asarray(o))),
            np.log(alpha) + np.log(1 - alpha),
            rtol=1e-12,
        )
    # Range: always in [-6.909, -1.386]; symmetric in o.
    z = np.asarray(losses.zero_one(np.linspace(-100, 100, 2001, dtype=np.float32)))
    assert z.max() <= -2 * math.log(2) + 1e-6 and z.min() >= -6.9089
    np.testing.assert_allclose(z, z[::-1], atol=1e-6)


def test_zero_one_gradient():
    o = np.array([-9.0, -6.0, -2.0, -0.3, 0.0, 0.4, 1.5, 6.0, 9.0])
    grad = np.asarray(jax.grad(lambda x: jnp.sum(losses.zero_one(x)))(jnp.asarray(o, jnp.float32)))
    expected = np.where(np.abs(o) < losses.ZERO_ONE_CLIP, 1.0 - 2.0 / (1.0 + np.exp(-o)), 0.0)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    with enable_x64(True):
        check_grads(
            losses.zero_one_loss,
            (jnp.asarray(o[1:-1]),),
            order=2,
            modes=("rev",),
            atol=1e-7,
            rtol=1e-7,
        )


def test_zero_one_loss_mask_and_xray_loss():
    o = jnp.asarray([0.0, 3.0, -2.0, 100.0])
    z = np.asarray(losses.zero_one(o))
    np.testing.assert_allclose(float(losses.zero_one_loss(o)), z.mean(), rtol=1e-6)
    mask = jnp.asarray([True, False, True, False])
    np.testing.assert_allclose(
        float(losses.zero_one_loss(o, mask=mask)), (z[0] + z[2]) / 2, rtol=1e-6
    )
    assert float(losses.zero_one_loss(o, mask=jnp.zeros(4, bool))) == 0.0
    a, b = _pair(6, (16, 16))
    got = losses.xray_reference_loss(a, b, o, lambda_ssim=0.2, lambda_zero_one=0.005)
    expected = float(losses.photometric_loss(a, b, lambda_ssim=0.2)) + 0.005 * z.mean()
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)
    jitted = jax.jit(losses.xray_reference_loss)(a, b, o)
    np.testing.assert_allclose(float(jitted), expected, rtol=1e-6)


def test_tv_3d():
    rng = np.random.default_rng(7)
    v = rng.normal(size=(5, 6, 7))
    diffs = [np.abs(np.diff(v, axis=k)) for k in range(3)]
    total = sum(d.sum() for d in diffs)
    count = sum(d.size for d in diffs)
    np.testing.assert_allclose(float(losses.tv_3d(v)), total / count, rtol=1e-5)
    np.testing.assert_allclose(float(losses.tv_3d(v, reduction="sum")), total, rtol=1e-5)
    # Closed form: a ramp 2.5·x has |dx| = 2.5 and no z / y variation.
    ramp = 2.5 * np.broadcast_to(np.arange(7.0), (5, 6, 7))
    expected = 2.5 * 5 * 6 * 6 / (4 * 6 * 7 + 5 * 5 * 7 + 5 * 6 * 6)
    np.testing.assert_allclose(float(losses.tv_3d(ramp)), expected, rtol=1e-6)
    assert float(losses.tv_3d(np.ones((3, 3, 3)))) == 0.0
    with pytest.raises(ValueError, match="volume"):
        losses.tv_3d(np.ones((3, 3)))
    with pytest.raises(ValueError, match="reduction"):
        losses.tv_3d(v, reduction="max")
