"""3DGS-compatible PLY files (Inria field names), so SuperSplat and other viewers open them.

One ``vertex`` element, float32 properties, binary little-endian, active splats only:

- ``x y z`` means; ``nx ny nz`` zeros (kept for compatibility);
- ``f_dc_0..2`` the DC SH coefficient per channel (colour = 0.5 + SH_C0 · f_dc);
- ``f_rest_0..3(K−1)−1`` higher SH coefficients, channel-major as the Inria code writes them:
  all K−1 coefficients of R, then of G, then of B (``f_rest_{c·(K−1)+k}`` = ``sh[:, k+1, c]``);
- ``opacity`` the opacity logit; ``scale_0..2`` log standard deviations; ``rot_0..3`` the
  quaternion (w, x, y, z).

:class:`RadSplats` are written with the same fields (``f_dc`` from ``colors``, no ``f_rest``) plus
``density`` (the peak density ρ = exp(log_densities), 1/mm) and ``feature_0..F−1``; a file with
a ``density`` property reads back as :class:`RadSplats`.
"""

from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import numpy as np

from insideout_jax import sh as sh_lib
from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.splats import RadSplats, RGBSplats, select_active

__all__ = ["write_ply", "read_ply", "write_mesh_ply"]

_BASE = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def write_ply(path: str | os.PathLike, splats: RGBSplats | RadSplats) -> pathlib.Path:
    """Write the active splats of ``splats`` to ``path`` (see the module docstring)."""
    from plyfile import PlyData, PlyElement

    if not isinstance(splats, (RGBSplats, RadSplats)):
        raise ValueError(f"splats must be RGBSplats or RadSplats, got {type(splats).__name__}")
    s = select_active(splats)
    n = int(s.means.shape[0])
    cols = {}
    means = np.asarray(s.means, np.float32)
    for i, name in enumerate("xyz"):
        cols[name] = means[:, i]
    for name in ("nx", "ny", "nz"):
        cols[name] = np.zeros(n, np.float32)
    if isinstance(s, RGBSplats):
        shc = np.asarray(s.sh, np.float32)  # [N, K, 3]
        dc = shc[:, 0, :]
        rest = np.transpose(shc[:, 1:, :], (0, 2, 1)).reshape(n, -1)  # channel-major
    else:
        dc = (np.asarray(s.colors, np.float32) - 0.5) / np.float32(sh_lib.SH_C0)
        rest = np.zeros((n, 0), np.float32)
    for c in range(3):
        cols[f"f_dc_{c}"] = dc[:, c]
    for j in range(rest.shape[1]):
        cols[f"f_rest_{j}"] = rest[:, j]
    cols["opacity"] = np.asarray(s.opacity_logits, np.float32)
    ls, q = np.asarray(s.log_scales, np.float32), np.asarray(s.quats, np.float32)
    for i in range(3):
        cols[f"scale_{i}"] = ls[:, i]
    for i in range(4):
        cols[f"rot_{i}"] = q[:, i]
    if isinstance(s, RadSplats):
        cols["density"] = np.exp(np.asarray(s.log_densities, np.float64)).astype(np.float32)
        feats = np.asarray(s.features, np.float32)
        for j in range(feats.shape[1]):
            cols[f"feature_{j}"] = feats[:, j]
    arr = np.empty(n, dtype=[(k, "<f4") for k in cols])
    for k, v in cols.items():
        arr[k] = v
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(arr, "vertex")], byte_order="<").write(str(path))
    return path


def _column(v, name: str, path) -> np.ndarray:
    if name not in v.dtype.names:
        raise ObjectFolderError(path, name, "missing vertex property")
    col = np.asarray(v[name], np.float32)
    if not np.all(np.isfinite(col)):
        raise ObjectFolderError(path, name, "holds non-finite values")
    return col


def read_ply(path: str | os.PathLike) -> RGBSplats | RadSplats:
    """Read a 3DGS PLY (as written by :func:`write_ply` or the Inria code); all splats active.

    Returns:
      :class:`RadSplats` when the file has a ``density`` property, else :class:`RGBSplats` with SH
      degree from the number of ``f_rest`` properties.

    Raises:
      ObjectFolderError: unreadable file, no ``vertex`` element, a missing property, an
        ``f_rest`` count that is not 3·((d+1)² − 1) for d in 0..3 (or gaps in its numbering),
        non-finite values, or non-positive densities.
    """
    from plyfile import PlyData

    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises PlyParseError, ValueError, ...
        raise ObjectFolderError(path, "<file>", f"not a readable PLY ({e})") from None
    if "vertex" not in [e.name for e in ply.elements]:
        raise ObjectFolderError(path, "vertex", "missing element")
    v = ply["vertex"].data
    n = len(v)
    if n == 0:
        raise ObjectFolderError(path, "vertex", "no splats")
    col = {name: _column(v, name, path) for name in _BASE + _TAIL}
    n_rest = sum(1 for k in v.dtype.names if k.startswith("f_rest_"))
    for j in range(n_rest):
        if f"f_rest_{j}" not in v.dtype.names:
            raise ObjectFolderError(path, f"f_rest_{j}", f"missing (file has {n_rest} f_rest fields)")
    if n_rest % 3 or n_rest // 3 + 1 not in (1, 4, 9, 16):
        raise ObjectFolderError(path, "f_rest", f"count must be 3·((d+1)² − 1) for degree 0..3 "
                                f"(0, 9, 24 or 45), got {n_rest}")
    k = n_rest // 3 + 1
    means = np.stack([col["x"], col["y"], col["z"]], 1)
    log_scales = np.stack([col[f"scale_{i}"] for i in range(3)], 1)
    quats = np.stack([col[f"rot_{i}"] for i in range(4)], 1)
    if np.any(np.linalg.norm(quats, axis=1) == 0):
        raise ObjectFolderError(path, "rot_0", "zero quaternion")
    dc = np.stack([col[f"f_dc_{c}"] for c in range(3)], 1)
    active = jnp.ones(n, bool)
    if "density" in v.dtype.names:
        rho = _column(v, "density", path)
        if np.any(rho <= 0):
            raise ObjectFolderError(path, "density", "must be positive")
        nf = sum(1 for name in v.dtype.names if name.startswith("feature_"))
        feats = (np.stack([_column(v, f"feature_{j}", path) for j in range(nf)], 1) if nf
                 else rho[:, None].copy())
        return RadSplats(
            means=jnp.asarray(means), log_scales=jnp.asarray(log_scales), quats=jnp.asarray(quats),
            log_densities=jnp.asarray(np.log(rho.astype(np.float64)).astype(np.float32)),
            opacity_logits=jnp.asarray(col["opacity"]), features=jnp.asarray(feats),
            colors=jnp.asarray(dc * np.float32(sh_lib.SH_C0) + np.float32(0.5)), active=active)
    rest = np.stack([_column(v, f"f_rest_{j}", path) for j in range(n_rest)], 1) if n_rest else (
        np.zeros((n, 0), np.float32))
    shc = np.concatenate([dc[:, None, :], rest.reshape(n, 3, k - 1).transpose(0, 2, 1)], axis=1)
    return RGBSplats(means=jnp.asarray(means), log_scales=jnp.asarray(log_scales),
                     quats=jnp.asarray(quats), opacity_logits=jnp.asarray(col["opacity"]),
                     sh=jnp.asarray(shc), active=active)


def write_mesh_ply(path: str | os.PathLike, vertices, faces) -> pathlib.Path:
    """A triangle mesh as PLY (``vertex`` x, y, z float32; ``face`` vertex_indices), written atomically.

    Args:
      vertices: [V, 3] positions (mm in the CT frame for the package's meshes).
      faces: [F, 3] vertex indices.
    """
    from plyfile import PlyData, PlyElement

    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int32)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"need vertices [V, 3] and faces [F, 3], got {v.shape} and {f.shape}")
    vert = np.empty(len(v), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
    face = np.empty(len(f), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = f
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    PlyData([PlyElement.describe(vert, "vertex"), PlyElement.describe(face, "face")]).write(str(tmp))
    os.replace(tmp, path)
    return path
