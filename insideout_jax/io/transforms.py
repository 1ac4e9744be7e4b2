"""Similarity transforms (``truth/transform.json``): the SfM frame → CT frame map of a generated object."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from insideout_jax.io.errors import ObjectFolderError
from insideout_jax.io.jsonfile import (
    PathLike,
    _key,
    _number,
    _vector,
    read_json,
    write_json_atomic,
)


@dataclasses.dataclass(frozen=True, eq=False)
class Similarity:
    """p ↦ scale · rotation @ p + translation (SfM frame → CT frame for ``truth/transform.json``).

    Attributes:
      rotation: [3, 3] float64 proper rotation.
      translation: [3] float64, mm.
      scale: float > 0.
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float

    def apply(self, points) -> np.ndarray:
        """[..., 3] points mapped by the similarity (float64)."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation


def _similarity_problem(rot, t, s) -> tuple | None:
    if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
        return "rotation", f"must be a finite 3×3 matrix, got shape {rot.shape}"
    if np.abs(rot.T @ rot - np.eye(3)).max() > 1e-5 or abs(np.linalg.det(rot) - 1) > 1e-5:
        return "rotation", "must be a proper rotation (RᵀR = I, det = +1 within 1e-5)"
    if t.shape != (3,) or not np.all(np.isfinite(t)):
        return "translation", f"must be 3 finite numbers, got shape {t.shape}"
    if not (np.isfinite(s) and s > 0):
        return "scale", f"must be positive, got {s}"
    return None


def make_similarity(rotation, translation, scale=1.0) -> Similarity:
    """Validated :class:`Similarity`; ``ValueError`` names the bad argument."""
    rot, t = np.asarray(rotation, np.float64), np.asarray(translation, np.float64)
    s = float(scale)
    bad = _similarity_problem(rot, t, s)
    if bad:
        raise ValueError(f"{bad[0]} {bad[1]}")
    return Similarity(rot, t, s)


def read_transform(path: PathLike) -> Similarity:
    """``truth/transform.json`` ({"rotation": 3×3, "translation": [3], "scale": s}) → Similarity."""
    d = read_json(path)
    rows = _key(d, "rotation", path)
    if not isinstance(rows, list) or len(rows) != 3:
        raise ObjectFolderError(path, "rotation", "must be a list of 3 rows")
    rot = np.array([_vector(r, 3, path, "rotation") for r in rows], np.float64)
    t = np.array(_vector(_key(d, "translation", path), 3, path, "translation"), np.float64)
    s = _number(_key(d, "scale", path), path, "scale", positive=True)
    bad = _similarity_problem(rot, t, s)
    if bad:
        raise ObjectFolderError(path, *bad)
    return Similarity(rot, t, s)


def write_transform(path: PathLike, transform: Similarity) -> pathlib.Path:
    """Write ``transform`` to ``path`` (exact float64 round trip)."""
    if not isinstance(transform, Similarity):
        raise ValueError(f"transform must be a Similarity, got {type(transform).__name__}")
    return write_json_atomic(path, {"rotation": np.asarray(transform.rotation).tolist(),
                                    "translation": np.asarray(transform.translation).tolist(),
                                    "scale": float(transform.scale)})
