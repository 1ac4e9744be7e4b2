"""3DGS PLY export/import: Inria field names and order, exact round trips, rejections."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from insideout_jax.io import ObjectFolderError, read_ply, write_ply
from insideout_jax.sh import SH_C0
from insideout_jax.splats import RadSplats, RGBSplats


def _rgb(n=7, degree=3, seed=0):
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    q = rng.normal(size=(n, 4)).astype(np.float32)
    return RGBSplats(means=jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
                     log_scales=jnp.asarray(rng.normal(size=(n, 3)) - 3, jnp.float32),
                     quats=jnp.asarray(q), opacity_logits=jnp.asarray(rng.normal(size=n), jnp.float32),
                     sh=jnp.asarray(rng.normal(size=(n, k, 3)), jnp.float32),
                     active=jnp.asarray(np.arange(n) % 3 != 1))


def _rad(n=6, f=2, seed=1):
    rng = np.random.default_rng(seed)
    return RadSplats(means=jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
                     log_scales=jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
                     quats=jnp.asarray(rng.normal(size=(n, 4)), jnp.float32),
                     log_densities=jnp.asarray(rng.normal(size=n) - 2, jnp.float32),
                     opacity_logits=jnp.asarray(rng.normal(size=n), jnp.float32),
                     features=jnp.asarray(rng.normal(size=(n, f)), jnp.float32),
                     colors=jnp.asarray(rng.uniform(size=(n, 3)), jnp.float32),
                     active=jnp.asarray(np.arange(n) != 2))


def _active(x, active):
    return np.asarray(x)[np.asarray(active)]


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_rgb_round_trip_exact_active_only(tmp_path, degree):
    s = _rgb(degree=degree)
    write_ply(tmp_path / "s.ply", s)
    r = read_ply(tmp_path / "s.ply")
    assert isinstance(r, RGBSplats) and r.sh_degree == degree
    n = int(np.sum(np.asarray(s.active)))
    chex.assert_shape(r.sh, (n, (degree + 1) ** 2, 3))
    assert bool(np.all(np.asarray(r.active)))
    for f in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert np.array_equal(np.asarray(getattr(r, f)), _active(getattr(s, f), s.active)), f


def test_inria_field_names_order_and_layout(tmp_path):
    """f_rest is channel-major as in the Inria code: features_rest [N, K-1, 3] → [N, 3, K-1]."""
    s = _rgb(n=3, degree=2)
    write_ply(tmp_path / "s.ply", s)
    ply = PlyData.read(str(tmp_path / "s.ply"))
    assert ply.header.count("binary_little_endian") == 1
    v = ply["vertex"].data
    names = list(v.dtype.names)
    want = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(24)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == want
    assert all(v.dtype[k] == np.dtype("<f4") for k in names)
    sh = _active(s.sh, s.active)
    rest = np.transpose(sh[:, 1:, :], (0, 2, 1)).reshape(len(sh), -1)
    got = np.stack([v[f"f_rest_{i}"] for i in range(24)], 1)
    assert np.array_equal(got, rest)
    assert np.array_equal(v["f_rest_7"], sh[:, 8, 0])  # last R coefficient
    assert np.array_equal(v["f_rest_8"], sh[:, 1, 1])  # first G coefficient follows all 8 R ones
    assert np.array_equal(v["rot_0"], _active(s.quats, s.active)[:, 0])  # w first
    assert np.array_equal(v["opacity"], _active(s.opacity_logits, s.active))  # logit, not sigmoid
    assert np.array_equal(v["nx"], np.zeros(len(sh), np.float32))


def test_rad_round_trip_and_density_property(tmp_path):
    s = _rad()
    write_ply(tmp_path / "r.ply", s)
    v = PlyData.read(str(tmp_path / "r.ply"))["vertex"].data
    act = np.asarray(s.active)
    np.testing.assert_allclose(v["density"], np.exp(np.asarray(s.log_densities))[act], rtol=1e-6)
    # viewers see the RGB colour through f_dc: 0.5 + SH_C0 · f_dc
    np.testing.assert_allclose(0.5 + SH_C0 * np.stack([v[f"f_dc_{c}"] for c in range(3)], 1),
                               np.asarray(s.colors)[act], atol=1e-6)
    assert not any(k.startswith("f_rest") for k in v.dtype.names)
    r = read_ply(tmp_path / "r.ply")
    assert isinstance(r, RadSplats)
    for f in ("means", "log_scales", "quats", "opacity_logits", "features"):
        assert np.array_equal(np.asarray(getattr(r, f)), _active(getattr(s, f), act)), f
    np.testing.assert_allclose(np.asarray(r.log_densities), _active(s.log_densities, act), atol=1e-6)
    np.testing.assert_allclose(np.asarray(r.colors), _active(s.colors, act), atol=1e-6)


def _write_vertex(path, cols):
    arr = np.empty(len(next(iter(cols.values()))), dtype=[(k, "<f4") for k in cols])
    for k, c in cols.items():
        arr[k] = c
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(path))


def _columns(tmp_path, s):
    write_ply(tmp_path / "ok.ply", s)
    v = PlyData.read(str(tmp_path / "ok.ply"))["vertex"].data
    return {k: np.array(v[k]) for k in v.dtype.names}


def _err(fn, *fragments):
    with pytest.raises(ObjectFolderError) as e:
        fn()
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_malformed_ply_is_rejected(tmp_path):
    cols = _columns(tmp_path, _rgb(degree=1))
    bad = {k: v for k, v in cols.items() if k != "opacity"}
    _write_vertex(tmp_path / "a.ply", bad)
    _err(lambda: read_ply(tmp_path / "a.ply"), "a.ply", "'opacity'", "missing vertex property")
    bad = {k: v for k, v in cols.items() if k != "f_rest_3"}  # a gap in the numbering
    _write_vertex(tmp_path / "b.ply", bad)
    _err(lambda: read_ply(tmp_path / "b.ply"), "'f_rest_3'", "missing")
    bad = {k: v for k, v in cols.items() if k not in ("f_rest_7", "f_rest_8")}
    _write_vertex(tmp_path / "c.ply", bad)
    _err(lambda: read_ply(tmp_path / "c.ply"), "'f_rest'", "got 7")
    bad = dict(cols, scale_0=np.full(len(cols["x"]), np.nan, np.float32))
    _write_vertex(tmp_path / "d.ply", bad)
    _err(lambda: read_ply(tmp_path / "d.ply"), "'scale_0'", "non-finite")
    (tmp_path / "e.ply").write_bytes(b"this is not a ply file")
    _err(lambda: read_ply(tmp_path / "e.ply"), "e.ply", "not a readable PLY")
    pts = np.zeros(3, dtype=[("x", "<f4")])
    PlyData([PlyElement.describe(pts, "point")]).write(str(tmp_path / "f.ply"))
    _err(lambda: read_ply(tmp_path / "f.ply"), "'vertex'", "missing element")
    rad = _columns(tmp_path, _rad())
    rad["density"][0] = -1.0
    _write_vertex(tmp_path / "g.ply", rad)
    _err(lambda: read_ply(tmp_path / "g.ply"), "'density'", "positive")
    with pytest.raises(ValueError, match="RGBSplats or RadSplats"):
        write_ply(tmp_path / "h.ply", {"means": 1})


def test_write_mesh_ply_round_trip(tmp_path):
    from insideout_jax.io.ply import write_mesh_ply

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * 2.5
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    path = write_mesh_ply(tmp_path / "m.ply", v, f)
    d = PlyData.read(str(path))
    np.testing.assert_array_equal(np.stack([d["vertex"][k] for k in "xyz"], 1), v)
    np.testing.assert_array_equal(np.stack(d["face"]["vertex_indices"]), f)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="faces"):
        write_mesh_ply(tmp_path / "bad.ply", v, f[:, :2])
