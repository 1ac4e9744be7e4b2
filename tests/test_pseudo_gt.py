"""Pseudo ground truth: slice grid, plane sampling of a volume, outer Canny contour targets."""

import numpy as np
import pytest

from insideout_jax.internal.pseudo_gt import (
    make_slices,
    outer_contour_target,
    sample_volume_on_slice,
    slice_pixel_centres,
    slice_positions,
)


def test_slice_positions_every_15mm_centred_and_heldout_offset():
    np.testing.assert_allclose(slice_positions(-40, 50), [-40, -25, -10, 5, 20, 35, 50])
    np.testing.assert_allclose(slice_positions(-40, 50, offset=7.5), [-32.5, -17.5, -2.5, 12.5, 27.5, 42.5])
    s = make_slices([-100, -90, -80], [100, 90, 80], resolution=64)
    kinds = [x.kind for x in s]
    assert kinds.count("axial") == len(slice_positions(-80, 80))
    assert kinds.count("coronal") == len(slice_positions(-90, 90))
    h = make_slices([-100, -90, -80], [100, 90, 80], resolution=64, heldout=True)
    assert all(x.heldout for x in h)
    with pytest.raises(ValueError, match="bbox"):
        make_slices([0, 0, 0], [0, 1, 1])


def test_sampling_reproduces_a_linear_field_exactly():
    # trilinear interpolation is exact for an affine field away from the border
    sp, org = (2.0, 1.5, 1.0), (-20.0, -15.0, -10.0)
    z, y, x = np.meshgrid(np.arange(21) * sp[0] + org[2], np.arange(21) * sp[1] + org[1],
                          np.arange(41) * sp[2] + org[0], indexing="ij")
    vol = (0.3 * x - 0.2 * y + 0.1 * z + 5.0).astype(np.float32)
    for s in make_slices([-15, -10, -5], [15, 10, 5], spacing=5.0, resolution=16):
        img = sample_volume_on_slice(vol, sp, org, s)
        p = slice_pixel_centres(s)
        want = 0.3 * p[..., 0] - 0.2 * p[..., 1] + 0.1 * p[..., 2] + 5.0
        np.testing.assert_allclose(img, want, atol=2e-5)


def test_outer_contour_keeps_only_the_outer_ring():
    r = 128
    yy, xx = np.mgrid[:r, :r] - (r - 1) / 2
    rad = np.hypot(xx, yy)
    img = np.where(rad < 50, 1.0, 0.0) + np.where(rad < 20, 1.0, 0.0)  # nested disks
    tgt = outer_contour_target(img)
    assert set(np.unique(tgt)) == {0.0, 1.0}
    on = rad[tgt > 0]
    assert np.all(np.abs(on - 50) < 3.0)  # only the outer boundary, not the inner one at 20
    assert len(on) > 2 * np.pi * 50 * 0.8  # a closed ring
    assert outer_contour_target(np.ones((32, 32))).sum() == 0


def test_to_plane_has_the_same_pixel_centres():
    from insideout_jax.internal.pseudo_gt import to_plane
    from insideout_jax.render.slices import slice_pixel_centers

    for s in make_slices([-15, -10, -5], [15, 10, 5], spacing=5.0, resolution=12):
        np.testing.assert_allclose(np.asarray(slice_pixel_centers(to_plane(s))),
                                   slice_pixel_centres(s), atol=1e-4)
