"""Tests for insideout_jax.metrics.mesh: directions, icospheres, marching cubes, occupancy."""

import numpy as np
import pytest

from insideout_jax.metrics import mesh


def _unit_cube_mesh():
    """Axis-aligned cube [0, 2]³ as 12 outward triangles (independent of marching cubes)."""
    v = np.array([[x, y, z] for x in (0.0, 2.0) for y in (0.0, 2.0) for z in (0.0, 2.0)])
    faces = []
    centre = v.mean(axis=0)
    for axis in range(3):
        for side in (0.0, 2.0):
            quad = np.nonzero(v[:, axis] == side)[0]
            # order the 4 corners around the face, then fan into two triangles
            others = [k for k in range(3) if k != axis]
            ang = np.arctan2(v[quad, others[1]] - 1.0, v[quad, others[0]] - 1.0)
            q = quad[np.argsort(ang)]
            for tri in ((q[0], q[1], q[2]), (q[0], q[2], q[3])):
                n = np.cross(v[tri[1]] - v[tri[0]], v[tri[2]] - v[tri[0]])
                faces.append(tri if n @ (v[tri[0]] - centre) > 0 else tri[::-1])
    return v, np.asarray(faces)


def test_fibonacci_directions():
    for n in (1, 42, 242):
        d = mesh.fibonacci_directions(n)
        assert d.shape == (n, 3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    d = mesh.fibonacci_directions(242)
    i = np.arange(242)
    np.testing.assert_allclose(d[:, 2], 1 - (2 * i + 1) / 242)
    np.testing.assert_allclose(
        np.arctan2(d[5, 1], d[5, 0]) % (2 * np.pi), (5 * np.pi * (3 - np.sqrt(5))) % (2 * np.pi)
    )
    assert np.linalg.norm(d.mean(axis=0)) < 0.01  # evenly spread
    with pytest.raises(ValueError, match="n"):
        mesh.fibonacci_directions(0)


@pytest.mark.parametrize("level,nv,nf", [(0, 12, 20), (1, 42, 80), (2, 162, 320)])
def test_icosphere(level, nv, nf):
    v, f = mesh.icosphere(level)
    assert v.shape == (nv, 3) and f.shape == (nf, 3)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    edges = {tuple(sorted(e)) for t in f for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    assert nv - len(edges) + nf == 2  # Euler characteristic of a closed sphere
    normals, areas = mesh.face_normals_areas(v, f)
    assert np.all(np.einsum("ij,ij->i", normals, v[f].mean(axis=1)) > 0)  # outward
    # Inscribed polyhedron: area below 4π, approaching it with level.
    assert 0.75 * 4 * np.pi < areas.sum() < 4 * np.pi
    if level == 0:  # a regular icosahedron: all 30 edges equal
        lengths = [np.linalg.norm(v[a] - v[b]) for a, b in edges]
        np.testing.assert_allclose(lengths, lengths[0], rtol=1e-12)


def test_face_normals_areas_closed_form():
    v = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [6.0, 0.0, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3]])  # ccw in xy, cw, degenerate
    n, a = mesh.face_normals_areas(v, f)
    np.testing.assert_allclose(a, [6.0, 6.0, 0.0])
    np.testing.assert_allclose(n, [[0, 0, 1], [0, 0, -1], [0, 0, 0]])


def test_marching_cubes_world_frame_anisotropic():
    spacing = np.array([2.0, 1.0, 1.5])  # dz, dy, dx (mm)
    origin = np.array([-10.0, 5.0, 3.0])  # x, y, z of voxel [0, 0, 0] (mm)
    centre, radius = np.array([5.0, 20.0, 22.0]), 12.0
    iz, iy, ix = np.mgrid[:18, :36, :28].astype(float)
    world = np.stack(
        [origin[0] + ix * spacing[2], origin[1] + iy * spacing[1], origin[2] + iz * spacing[0]], -1
    )
    volume = radius - np.linalg.norm(world - centre, axis=-1)  # signed distance, > 0 inside
    verts, faces = mesh.marching_cubes_mesh(volume, spacing, origin, 0.0)
    assert verts.shape[1] == 3 and faces.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(verts - centre, axis=1), radius, atol=0.1)
    n, a = mesh.face_normals_areas(verts, faces)
    assert np.all(np.einsum("ij,ij->i", n, verts[faces].mean(axis=1) - centre) > 0)  # outward
    np.testing.assert_allclose(a.sum(), 4 * np.pi * radius**2, rtol=0.01)
    with pytest.raises(ValueError, match="level"):
        mesh.marching_cubes_mesh(volume, spacing, origin, 100.0)
    with pytest.raises(ValueError, match="spacing_zyx"):
        mesh.marching_cubes_mesh(volume, (1.0, 1.0), origin, 0.0)


def test_sphere_spherical_occupancy():
    n = 40
    z, y, x = np.mgrid[:n, :n, :n].astype(float)
    c = (n - 1) / 2
    volume = 0.35 * n - np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2)
    verts, faces = mesh.marching_cubes_mesh(volume, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0.0)
    normals, areas = mesh.face_normals_areas(verts, faces)
    # Measured on spheres of 24³-64³ voxels: SO_mean in [0.43, 0.60] (42 bins), [0.45, 0.52] (242).
    for nbins, tol in ((42, 0.1), (242, 0.06)):
        dirs = mesh.fibonacci_directions(nbins)
        so = mesh.spherical_occupancy(normals, areas, dirs)
        assert so["any"] == 1.0
        assert abs(so["mean"] - 0.5) <= tol
        hist = mesh.normal_orientation_histogram(normals, areas, dirs)
        np.testing.assert_allclose(hist.sum(), 1.0)
    # Fibonacci cells have nearly equal area, so a sphere's histogram is nearly uniform.
    hist = mesh.normal_orientation_histogram(normals, areas, mesh.fibonacci_directions(42))
    np.testing.assert_allclose(hist * 42, 1.0, atol=0.15)


def test_cube_normals_fill_six_bins():
    v, f = _unit_cube_mesh()
    normals, areas = mesh.face_normals_areas(v, f)
    np.testing.assert_allclose(np.abs(normals).sum(axis=1), 1.0)  # axis-aligned normals
    for dirs in (
        mesh.fibonacci_directions(42),
        mesh.fibonacci_directions(242),
        mesh.icosphere(1)[0],
    ):
        hist = mesh.normal_orientation_histogram(normals, areas, dirs)
        assert np.count_nonzero(hist) == 6
        np.testing.assert_allclose(hist[hist > 0], 1 / 6)
        so = mesh.spherical_occupancy(normals, areas, dirs)
        assert so == {"any": 6 / len(dirs), "mean": 6 / len(dirs)}


def test_bin_assignment_is_nearest_direction():
    dirs = np.eye(3)
    normals = np.array([[0.9, 0.1, 0.0], [0.0, 0.6, 0.8], [0.1, 0.75, 0.65]])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    hist = mesh.normal_orientation_histogram(normals, np.array([1.0, 2.0, 5.0]), dirs)
    np.testing.assert_allclose(hist, np.array([1.0, 5.0, 2.0]) / 8.0)
    with pytest.raises(ValueError, match="areas"):
        mesh.spherical_occupancy(normals, np.ones(2), dirs)
