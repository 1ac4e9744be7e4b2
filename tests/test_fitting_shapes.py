"""An asymmetric test solid (union of ellipsoids) for the fitting tests, and checks of its samplers.

``surface_samples`` draws area-uniform points on the union's boundary (the "RGB shell"),
``interior_samples`` uniform points inside it (the "radiative solid"). Other fitting test files
and ``benchmarks/bench_fitting.py`` import these helpers.
"""

import numpy as np
from scipy.spatial.transform import Rotation

# (centre, semi-axes, rotation vector): a head-like body, a jaw, an off-centre bump, a nose.
# Chosen so the union has three well-separated principal variances and no symmetry plane.
ELLIPSOIDS = (
    ((0.0, 0.0, 0.0), (1.00, 0.72, 0.58), (0.0, 0.0, 0.0)),
    ((0.55, -0.10, -0.50), (0.60, 0.45, 0.30), (0.0, 0.35, 0.1)),
    ((-0.70, 0.35, 0.35), (0.40, 0.32, 0.32), (0.2, 0.0, 0.4)),
    ((0.95, 0.15, 0.05), (0.25, 0.12, 0.15), (0.0, 0.0, 0.5)),
)


def _frames():
    out = []
    for c, r, rv in ELLIPSOIDS:
        out.append((np.asarray(c), np.asarray(r), Rotation.from_rotvec(rv).as_matrix()))
    return out


def ellipsoid_values(points):
    """[N, E] value of ‖R^T(p − c)/r‖² − 1 per ellipsoid (< 0 inside)."""
    p = np.asarray(points, np.float64)
    vals = []
    for c, r, rot in _frames():
        loc = (p - c) @ rot / r
        vals.append(np.sum(loc**2, axis=1) - 1.0)
    return np.stack(vals, axis=1)


def inside(points):
    """[N] bool: the point is inside the union."""
    return np.any(ellipsoid_values(points) < 0, axis=1)


def _areas():
    # Area of each ellipsoid (Knud Thomsen's approximation; only the sampling proportions use it).
    p = 1.6075
    out = []
    for _, r, _ in _frames():
        a, b, c = r
        out.append(4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p))
    return np.asarray(out)


def surface_samples(n, rng):
    """[n, 3] float32 area-uniform samples of the union's outer boundary."""
    frames = _frames()
    areas = _areas()
    out = []
    total = 0
    while total < n:
        e = rng.choice(len(frames), size=4 * n, p=areas / areas.sum())
        u = rng.normal(size=(4 * n, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        pts = np.empty_like(u)
        acc = np.zeros(len(u), bool)
        for i, (c, r, rot) in enumerate(frames):
            sel = e == i
            pts[sel] = (u[sel] * r) @ rot.T + c
            # Area element of x = diag(r)·u on the unit sphere ∝ ‖u / r‖ · r1 r2 r3.
            g = np.linalg.norm(u[sel] / r, axis=1)
            gmax = 1.0 / r.min()
            acc[sel] = rng.uniform(size=sel.sum()) < g / gmax
        pts = pts[acc]
        vals = ellipsoid_values(pts)
        own = e[acc]
        vals[np.arange(len(pts)), own] = np.inf  # ignore the ellipsoid the point lies on
        pts = pts[np.all(vals > 0, axis=1)]
        out.append(pts)
        total += len(pts)
    return np.concatenate(out)[:n].astype(np.float32)


def interior_samples(n, rng):
    """[n, 3] float32 uniform samples of the union's interior."""
    lo, hi = np.array([-1.4, -1.2, -1.2]), np.array([1.4, 1.2, 1.2])
    out, total = [], 0
    while total < n:
        p = rng.uniform(lo, hi, size=(3 * n, 3))
        p = p[inside(p)]
        out.append(p)
        total += len(p)
    return np.concatenate(out)[:n].astype(np.float32)


SIZE = 2.3  # largest extent of the union (x), units of the CT frame


def random_similarity(rng, *, scale_range=(0.01, 100.0), max_shift=10.0):
    """A uniformly random rotation, log-uniform scale s and a translation up to ``max_shift``
    object sizes, for the map RGB → CT; the RGB points are ``(ct − t) @ R / s``."""
    rot = Rotation.random(random_state=rng).as_matrix()
    s = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
    t = rng.normal(size=3)
    t = t / np.linalg.norm(t) * rng.uniform(0, max_shift) * SIZE
    return rot, t, s


# ------------------------------------------------------------------------------------------------
# Checks of the samplers themselves.


def test_surface_samples_lie_on_the_outer_boundary():
    rng = np.random.default_rng(0)
    s = surface_samples(3000, rng)
    vals = ellipsoid_values(s)
    # On exactly one ellipsoid (value 0) and outside every other one.
    assert np.all(np.min(np.abs(vals), axis=1) < 1e-5)
    own = np.argmin(np.abs(vals), axis=1)
    # A small step along the own ellipsoid's outward normal leaves the union; inward enters it.
    normals = np.empty_like(s, dtype=np.float64)
    for i, (c, r, rot) in enumerate(_frames()):
        sel = own == i
        loc = (s[sel] - c) @ rot / r
        normals[sel] = (loc / r) @ rot.T
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    assert np.all(~inside(s + 1e-3 * normals))
    assert np.all(inside(s - 1e-3 * normals))


def test_interior_samples_are_inside_and_the_shape_is_asymmetric():
    rng = np.random.default_rng(1)
    v = interior_samples(5000, rng)
    assert np.all(inside(v))
    ev = np.linalg.eigvalsh(np.cov(v.T))
    gaps = np.diff(ev) / ev[1:]
    assert np.all(gaps > 0.1), ev  # distinct principal variances: PCA axes are well defined
    # No symmetry under the 180° turns about the principal axes (the PCA sign ambiguity): each
    # turned copy of the surface is far from the surface itself.
    from scipy.spatial import cKDTree

    surf = surface_samples(4000, rng)
    mu = v.mean(0)
    _, vec = np.linalg.eigh(np.cov(v.T))
    tree = cKDTree(surf)
    for axis in range(3):
        flip = -np.ones(3)
        flip[axis] = 1.0
        turned = ((surf - mu) @ vec * flip) @ vec.T + mu
        assert np.mean(tree.query(turned)[0]) > 0.05, axis  # object size ≈ 2.3
