"""Files for the tools people already use: volumes as NIfTI (3D Slicer, ITK-SNAP, napari) and NRRD,
meshes as OBJ, splats as glTF with ``KHR_gaussian_splatting`` (PlayCanvas, Babylon.js, Cesium).

World frame: the object's CT frame, x, y, z in mm (z the scanner axis). No anatomical orientation
is claimed: the NIfTI sform is "aligned to another file" (code 2) and the NRRD has no named space.

glTF conventions differ from the Inria PLY's (:mod:`insideout_jax.io.ply`), and are converted here:

* axes: glTF is +Y up, our frame +Z up: p_gltf = (x, z, −y) (a rotation of −90° about x),
  applied to positions and to every splat's orientation;
* rotation: a unit quaternion in (x, y, z, w) order (the PLY stores w first);
* scale: linear standard deviations (the PLY stores their logarithms);
* opacity: after the sigmoid, in [0, 1] (the PLY stores the logit);
* colour: SH band 0 as ``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0`` (diffuse = 0.2821·c + 0.5),
  ``COLOR_0`` the diffuse colour and opacity for viewers without the extension. Higher SH bands
  are not written (they would need rotating into the y-up frame); the file is view-independent.
* extra per-splat values (the unified model's ``density`` in 1/mm, ``radiative``) go in
  application-specific attributes ``_DENSITY`` and ``_RADIATIVE`` (glTF 2.0 §3.7.2.1).
"""

from __future__ import annotations

import json
import os
import pathlib
import struct

import numpy as np

from insideout_jax.io.checkpoint import atomic_write_bytes
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.volumes import CTVolume

__all__ = ["volume_affine", "write_nifti", "write_nrrd", "write_obj", "write_gltf_splats",
           "read_gltf_splats", "Z_UP_TO_Y_UP"]

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Rotation taking our +Z-up frame to glTF's +Y-up frame: (x, y, z) → (x, z, −y)."""

_FLOAT, _UBYTE = 5126, 5121
_SH_C0 = 0.28209479177387814


def volume_affine(volume: CTVolume) -> np.ndarray:
    """[4, 4] voxel index (i, j, k) = (x, y, z) → world mm, for data stored as [x, y, z]."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(volume.spacing_zyx, np.float64)[::-1])
    a[:3, 3] = np.asarray(volume.origin_xyz, np.float64)
    return a


def write_nifti(path: str | os.PathLike, volume: CTVolume) -> pathlib.Path:
    """``.nii`` / ``.nii.gz`` of a volume (float32, [x, y, z] order, mm, affine from spacing and
    origin; the quantity in the description)."""
    import nibabel as nib

    path = pathlib.Path(path)
    img = nib.Nifti1Image(np.asarray(volume.data, np.float32).transpose(2, 1, 0), volume_affine(volume))
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = f"insideout_jax {volume.quantity}"[:79].encode()
    img.set_sform(volume_affine(volume), code=2)
    img.set_qform(volume_affine(volume), code=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, img.to_bytes() if path.suffix != ".gz" else _gzip(img.to_bytes()))
    return path


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=6, mtime=0)


def write_nrrd(path: str | os.PathLike, volume: CTVolume) -> pathlib.Path:
    """``.nrrd`` of a volume (float32, gzip, [x, y, z] order, space directions and origin in mm)."""
    import nrrd

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"space dimension": 3, "space units": ["mm", "mm", "mm"],
              "space directions": np.diag(np.asarray(volume.spacing_zyx, np.float64)[::-1]),
              "space origin": np.asarray(volume.origin_xyz, np.float64),
              "kinds": ["domain", "domain", "domain"], "encoding": "gzip",
              "content": f"insideout_jax {volume.quantity}"}
    tmp = path.with_name(f".{path.name}.tmp")
    nrrd.write(str(tmp), np.asarray(volume.data, np.float32).transpose(2, 1, 0), header, index_order="F")
    os.replace(tmp, path)
    return path


def write_obj(path: str | os.PathLike, vertices, faces) -> pathlib.Path:
    """Wavefront OBJ of a triangle mesh (vertices [V, 3] mm, faces [F, 3] 0-based)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"vertices must be [V, 3] and faces [F, 3], got {v.shape} and {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"faces index vertices 0..{len(v) - 1}, got {f.min()}..{f.max()}")
    lines = ["# insideout_jax mesh, mm"] + [f"v {a:.6g} {b:.6g} {c:.6g}" for a, b, c in v]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path = pathlib.Path(path)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def _quat_multiply_wxyz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


_Q_CONV = np.array([np.cos(-np.pi / 4), np.sin(-np.pi / 4), 0.0, 0.0])  # −90° about x, (w, x, y, z)


def write_gltf_splats(path: str | os.PathLike, splats, *, density=None, radiative=None) -> pathlib.Path:
    """Binary glTF (``.glb``) of the active splats with ``KHR_gaussian_splatting`` (module
    docstring for the conventions). ``density`` [C] (1/mm) and ``radiative`` [C] are optional
    per-splat extras (the unified model's)."""
    act = np.asarray(splats.active)
    pos = np.asarray(splats.means, np.float64)[act] @ Z_UP_TO_Y_UP.T
    q = np.asarray(splats.quats, np.float64)[act]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    q = _quat_multiply_wxyz(np.broadcast_to(_Q_CONV, q.shape), q)
    q = q * np.where(q[:, :1] < 0, -1.0, 1.0)  # w ≥ 0 (either sign is the same rotation)
    attrs = {"POSITION": pos, "KHR_gaussian_splatting:ROTATION": q[:, [1, 2, 3, 0]],
             "KHR_gaussian_splatting:SCALE": np.exp(np.asarray(splats.log_scales, np.float64)[act])}
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(splats.opacity_logits, np.float64)[act]))
    attrs["KHR_gaussian_splatting:OPACITY"] = opacity
    sh0 = np.asarray(splats.sh, np.float64)[act, 0]
    attrs["KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"] = sh0
    attrs["COLOR_0"] = np.concatenate([np.clip(sh0 * _SH_C0 + 0.5, 0, 1), opacity[:, None]], 1)
    if density is not None:
        attrs["_DENSITY"] = np.asarray(density, np.float64)[act]
    if radiative is not None:
        attrs["_RADIATIVE"] = np.asarray(radiative, np.float64)[act]
    return _write_glb(pathlib.Path(path), attrs)


_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}


def _write_glb(path: pathlib.Path, attrs: dict) -> pathlib.Path:
    blob, views, accessors, index = bytearray(), [], [], {}
    for k, (name, a) in enumerate(attrs.items()):
        a = np.ascontiguousarray(a, np.float32)
        a2 = a.reshape(len(a), -1)
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": a.nbytes})
        acc = {"bufferView": k, "componentType": _FLOAT, "count": len(a), "type": _TYPES[a2.shape[1]]}
        if name == "POSITION":
            acc["min"], acc["max"] = a2.min(0).tolist(), a2.max(0).tolist()
        accessors.append(acc)
        index[name] = k
        blob += a.tobytes()
        blob += b"\0" * (-len(blob) % 4)
    doc = {"asset": {"version": "2.0", "generator": "insideout_jax"},
           "extensionsUsed": ["KHR_gaussian_splatting"],
           "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "splats"}],
           "meshes": [{"primitives": [{"attributes": index, "mode": 0, "extensions": {
               "KHR_gaussian_splatting": {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                                          "sortingMethod": "cameraDistance",
                                          "projection": "perspective"}}}]}],
           "buffers": [{"byteLength": len(blob)}], "bufferViews": views, "accessors": accessors}
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    out = struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js
    out += struct.pack("<II", len(blob), 0x004E4942) + bytes(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, out)
    return path


def read_gltf_splats(path: str | os.PathLike) -> dict:
    """{attribute name: [N, k] float32} of the splat primitive of a ``.glb`` written by
    :func:`write_gltf_splats` (positions, rotations and scales as stored: y-up, xyzw, linear).
    ObjectFolderError naming the file for anything else."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    if len(data) < 20 or struct.unpack_from("<I", data, 0)[0] != 0x46546C67:
        raise ObjectFolderError(path, "<file>", "not a binary glTF (.glb)")
    try:
        jlen, _ = struct.unpack_from("<II", data, 12)
        doc = json.loads(data[20:20 + jlen])
        blen, _ = struct.unpack_from("<II", data, 20 + jlen)
        blob = data[28 + jlen:28 + jlen + blen]
        prim = doc["meshes"][0]["primitives"][0]
    except (struct.error, ValueError, KeyError, IndexError) as e:
        raise ObjectFolderError(path, "<file>", f"a damaged or foreign glTF ({type(e).__name__}: {e})") from None
    if "KHR_gaussian_splatting" not in prim.get("extensions", {}):
        raise ObjectFolderError(path, "KHR_gaussian_splatting", "the primitive is not a splat set")
    out = {}
    for name, k in prim["attributes"].items():
        try:
            acc = doc["accessors"][k]
            view = doc["bufferViews"][acc["bufferView"]]
            width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
            a = np.frombuffer(blob, np.float32, acc["count"] * width, view["byteOffset"])
        except (KeyError, IndexError, ValueError) as e:
            raise ObjectFolderError(path, name, f"unreadable accessor ({type(e).__name__}: {e})") from None
        out[name] = a.reshape(acc["count"], width)
    out["_document"] = doc
    return out
