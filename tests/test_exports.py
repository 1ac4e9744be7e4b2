"""Exports for other tools (issue #20): NIfTI and NRRD read back by nibabel / pynrrd with the
right affine (a voxel's world position checked), OBJ meshes, and glTF KHR_gaussian_splatting files
that follow the extension's rules and load back to the same Gaussians (covariances compared in
the world frame, independent of the storage conventions)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from insideout_jax import io as iio
from insideout_jax.io.exports import (
    Z_UP_TO_Y_UP,
    read_gltf_splats,
    volume_affine,
    write_gltf_splats,
    write_nifti,
    write_nrrd,
    write_obj,
)
from insideout_jax.splats import covariance, rgb_splats_from_points


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return iio.make_volume(rng.random((5, 6, 7)).astype(np.float32), (2.0, 0.5, 0.25), (-3.0, 4.0, 10.0),
                           quantity="attenuation")


def _world(volume, z, y, x):
    """World position (mm) of voxel [z, y, x] by the CTVolume's definition."""
    return np.asarray(volume.origin_xyz) + np.array([x, y, z]) * np.asarray(volume.spacing_zyx)[::-1]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trips_with_the_voxel_positions(volume, tmp_path, suffix):
    import nibabel as nib

    p = write_nifti(tmp_path / f"v{suffix}", volume)
    img = nib.load(str(p))
    data = np.asarray(img.dataobj)
    assert data.shape == (7, 6, 5)  # [x, y, z]
    z, y, x = 3, 1, 5
    assert data[x, y, z] == pytest.approx(float(volume.data[z, y, x]))
    np.testing.assert_allclose(img.affine @ [x, y, z, 1], [*_world(volume, z, y, x), 1], atol=1e-6)
    assert img.header.get_xyzt_units()[0] == "mm" and int(img.header["sform_code"]) == 2


def test_nrrd_round_trips_with_the_voxel_positions(volume, tmp_path):
    import nrrd

    data, header = nrrd.read(str(write_nrrd(tmp_path / "v.nrrd", volume)))
    assert data.shape == (7, 6, 5)
    z, y, x = 4, 5, 0
    assert data[x, y, z] == pytest.approx(float(volume.data[z, y, x]))
    world = header["space origin"] + header["space directions"].T @ [x, y, z]
    np.testing.assert_allclose(world, _world(volume, z, y, x), atol=1e-9)
    np.testing.assert_allclose(volume_affine(volume) @ [x, y, z, 1], [*world, 1])


def test_obj_mesh_has_the_vertices_and_one_based_faces(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1.5, 0], [0, 0, 2]])
    f = np.array([[0, 1, 2], [0, 1, 3]])
    text = write_obj(tmp_path / "m.obj", v, f).read_text().splitlines()
    vs = np.array([[float(t) for t in ln.split()[1:]] for ln in text if ln.startswith("v ")])
    fs = np.array([[int(t) for t in ln.split()[1:]] for ln in text if ln.startswith("f ")])
    np.testing.assert_allclose(vs, v)
    np.testing.assert_array_equal(fs, f + 1)
    with pytest.raises(ValueError, match="faces index vertices"):
        write_obj(tmp_path / "bad.obj", v, f + 3)


def _splats():
    rng = np.random.default_rng(1)
    n = 12
    sp = rgb_splats_from_points(rng.normal(size=(n, 3)) * 10, rng.random((n, 3)), capacity=n + 2)
    return sp.replace(log_scales=jnp.asarray(rng.normal(size=(n + 2, 3)) * 0.5, jnp.float32),
                      quats=jnp.asarray(rng.normal(size=(n + 2, 4)), jnp.float32),
                      opacity_logits=jnp.asarray(rng.normal(size=n + 2), jnp.float32))


def test_gltf_splats_follow_the_extension_and_load_back_to_the_same_gaussians(tmp_path):
    sp = _splats()
    act = np.asarray(sp.active)
    dens = np.linspace(0.01, 0.02, sp.capacity)
    p = write_gltf_splats(tmp_path / "s.glb", sp, density=dens, radiative=np.arange(sp.capacity) % 2)
    out = read_gltf_splats(p)
    doc = out["_document"]
    # the rules of glTF 2.0 and KHR_gaussian_splatting that apply to this file
    assert doc["asset"]["version"] == "2.0" and "KHR_gaussian_splatting" in doc["extensionsUsed"]
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0  # POINTS
    ext = prim["extensions"]["KHR_gaussian_splatting"]
    assert ext["kernel"] == "ellipse" and ext["colorSpace"] in ("srgb_rec709_display", "lin_rec709_display")
    types = {"POSITION": "VEC3", "KHR_gaussian_splatting:ROTATION": "VEC4", "KHR_gaussian_splatting:SCALE": "VEC3",
             "KHR_gaussian_splatting:OPACITY": "SCALAR", "KHR_gaussian_splatting:SH_DEGREE_0_COEF_0": "VEC3",
             "COLOR_0": "VEC4"}
    for name, t in types.items():
        acc = doc["accessors"][prim["attributes"][name]]
        assert acc["type"] == t and acc["componentType"] == 5126 and acc["count"] == act.sum(), name
    pos_acc = doc["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_allclose(pos_acc["min"], out["POSITION"].min(0))
    np.testing.assert_allclose(pos_acc["max"], out["POSITION"].max(0))
    assert all(v["byteOffset"] % 4 == 0 for v in doc["bufferViews"])
    assert all(n.startswith(("KHR_gaussian_splatting:", "_")) or n in ("POSITION", "COLOR_0")
               for n in prim["attributes"])
    # conventions: y-up positions, unit xyzw quaternions, linear scales, opacity after the sigmoid
    means = np.asarray(sp.means, np.float64)[act]
    np.testing.assert_allclose(out["POSITION"], means @ Z_UP_TO_Y_UP.T, atol=1e-5)
    q = out["KHR_gaussian_splatting:ROTATION"].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    x, y, z, w = q.T
    rot = np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                    np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                    np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)
    s = out["KHR_gaussian_splatting:SCALE"].astype(np.float64)
    cov_gltf = rot @ (s[:, :, None] ** 2 * np.swapaxes(rot, 1, 2))
    cov_ours = np.asarray(covariance(sp.log_scales, sp.quats), np.float64)[act]
    np.testing.assert_allclose(cov_gltf, Z_UP_TO_Y_UP @ cov_ours @ Z_UP_TO_Y_UP.T, rtol=1e-4, atol=1e-6)
    opa = out["KHR_gaussian_splatting:OPACITY"][:, 0]
    assert np.all((opa >= 0) & (opa <= 1))
    np.testing.assert_allclose(opa, 1 / (1 + np.exp(-np.asarray(sp.opacity_logits)[act])), rtol=1e-6)
    np.testing.assert_allclose(out["KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"], np.asarray(sp.sh)[act, 0], rtol=1e-6)
    np.testing.assert_allclose(out["COLOR_0"][:, :3], np.clip(np.asarray(sp.sh)[act, 0] * 0.2820948 + 0.5, 0, 1),
                               atol=1e-6)
    np.testing.assert_allclose(out["_DENSITY"][:, 0], dens[act], rtol=1e-6)
    json.dumps(doc)  # the JSON chunk is plain JSON


def test_a_file_that_is_not_a_splat_glb_is_named(tmp_path):
    bad = tmp_path / "x.glb"
    bad.write_bytes(b"not a glb at all, really")
    with pytest.raises(iio.ObjectFolderError, match=r"x\.glb.*not a binary glTF"):
        read_gltf_splats(bad)
