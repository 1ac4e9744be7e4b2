"""The built-in matryoshka: nested thin shells with exact truth, made like the skull."""

from __future__ import annotations

import dataclasses
import json

import chex
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from insideout_jax.config import preset
from insideout_jax.data import matryoshka as mt
from insideout_jax.data.objects import make_builtin_object, read_true_surface
from insideout_jax.data.phantom import phantom_density, project_rays


def _dolls():
    """The dolls as the phantom holds them: [(body centre z, a, b, c, head centre y, z, r)]."""
    ph = mt.matryoshka_phantom()
    c, s = np.asarray(ph.centres, np.float64), np.asarray(ph.semi_axes, np.float64)
    outer = [g for g, rho in zip(ph.groups, np.asarray(ph.densities), strict=True) if rho > 0]
    return [(c[b, 2], *s[b], c[h, 1], c[h, 2], s[h, 0]) for b, h in outer]


def _half_width(z, bz, a, c, hy, hz, r):
    """Half-width at height z, along x through the z axis, of body ∪ head (closed form)."""
    body = a * np.sqrt(max(0.0, 1.0 - ((z - bz) / c) ** 2))
    head = np.sqrt(max(0.0, r * r - hy * hy - (z - hz) ** 2))
    return max(body, head)


def test_three_hollow_shells_and_a_solid_core_with_air_between():
    dolls = _dolls()
    assert len(dolls) == 4 and len(mt.MATRYOSHKA_WALLS_MM) == 3
    assert all(2.0 <= w <= 4.0 for w in mt.MATRYOSHKA_WALLS_MM)
    # the x–z and y–z planes through the axis at 0.1 mm: one wood density, never two dolls in one
    # place, four separate rings of wood, at least 2 mm of air between neighbours
    t, z = np.arange(-66, 66, 0.1), np.arange(-110, 110, 0.1)
    tt, zz = np.meshgrid(t, z)
    for axis in (0, 1):
        pts = np.zeros(tt.shape + (3,), np.float32)
        pts[..., axis], pts[..., 2] = tt, zz
        f = np.asarray(phantom_density(mt.matryoshka_phantom(), jnp.asarray(pts.reshape(-1, 3))))
        np.testing.assert_allclose(np.unique(np.round(f, 6)), [0.0, mt.MATRYOSHKA_WOOD], atol=1e-6)
        lab, n = ndimage.label(f.reshape(tt.shape) > 0.5 * mt.MATRYOSHKA_WOOD)
        assert n == 4
        for k in range(1, n):
            gap = 0.1 * ndimage.distance_transform_edt(lab != k)[lab == k + 1].min()
            assert gap >= 2.0, (axis, k, gap)
    # each hollow doll's wall, measured at its body's equator along +x: the stated thickness
    x = np.arange(0.0, 66.0, 0.01)
    for k, (bz, a, *_rest) in enumerate(dolls[:3]):
        line = np.stack([x, 0 * x, 0 * x + bz], 1).astype(np.float32)
        wood = np.asarray(phantom_density(mt.matryoshka_phantom(), jnp.asarray(line))) > 0
        outer_wall = x[wood & (x > a - 5.0) & (x <= a + 0.01)]
        assert abs(outer_wall.max() - a) < 0.02
        np.testing.assert_allclose(outer_wall.max() - outer_wall.min() + 0.01,
                                   mt.MATRYOSHKA_WALLS_MM[k], atol=0.03)


def test_horizontal_line_integrals_match_the_closed_form_chords():
    """Lines along x through the axis at many heights: ρ · Σ ± (union chord lengths)."""
    dolls = _dolls()
    heights = np.linspace(-104.0, 79.0, 40)
    o = np.stack([np.full_like(heights, -200.0), 0 * heights, heights], 1).astype(np.float32)
    d = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (len(heights), 1))
    got = np.asarray(project_rays(mt.matryoshka_phantom(), jnp.asarray(o), jnp.asarray(d)))
    want = []
    for zh in heights:
        total = 0.0
        for k, (bz, a, _b, c, hy, hz, r) in enumerate(dolls):
            total += 2 * _half_width(zh, bz, a, c, hy, hz, r)
            if k < 3:
                w = mt.MATRYOSHKA_WALLS_MM[k]
                total -= 2 * _half_width(zh, bz, a - w, c - w, hy, hz, r - w)
        want.append(mt.MATRYOSHKA_WOOD * total)
    chex.assert_shape(got, (len(heights),))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_make_matryoshka_writes_an_object_with_its_truth(tmp_path):
    cfg = dataclasses.replace(preset("tiny").skull, n_views=6, n_detector=24, volume_size=32,
                              n_rgb_views=4, rgb_size=64)
    make_builtin_object(tmp_path / "m", cfg, name="matryoshka", verbose=False)
    acq = json.loads((tmp_path / "m" / "xray" / "acquisition.json").read_text())
    assert acq["generator"]["name"] == "matryoshka"
    pts, nrm = read_true_surface(tmp_path / "m")
    # the true surface is the outer doll's: every point on body ∪ head's boundary
    bz, a, b, c, hy, hz, r = _dolls()[0]
    assert b < a and hy < 0  # near-symmetric: flatter front to back, the face forward
    u_body = np.sqrt((pts[:, 0] / a) ** 2 + (pts[:, 1] / b) ** 2 + ((pts[:, 2] - bz) / c) ** 2)
    u_head = np.sqrt(pts[:, 0] ** 2 + (pts[:, 1] - hy) ** 2 + (pts[:, 2] - hz) ** 2) / r
    np.testing.assert_allclose(np.minimum(u_body, u_head), 1.0, atol=1e-3)
    assert np.all(np.maximum(u_body, u_head) >= 1.0 - 1e-3)  # never inside the other part
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-4)
    assert len(list((tmp_path / "m" / "rgb" / "images").iterdir())) == 4
