"""JSON files written atomically, and the field checks every reader of the object layout uses."""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable

import numpy as np

from insideout_jax.io.errors import ObjectFolderError

PathLike = str | os.PathLike


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> pathlib.Path:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: PathLike, obj) -> pathlib.Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file + ``os.replace``).

    Raises:
      ValueError: if ``obj`` holds NaN or infinity (not valid JSON).
    """
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return _atomic_write(path, write)


def read_json(path: PathLike) -> dict:
    """A JSON object (dict) from ``path``; :class:`ObjectFolderError` if missing or malformed."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ObjectFolderError(path, "<file>", "file not found")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f, parse_constant=lambda c: float("nan"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ObjectFolderError(path, "<file>", f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ObjectFolderError(path, "<file>", f"must hold a JSON object, got {type(obj).__name__}")
    return obj


def _key(d: dict, key: str, path) -> object:
    if key not in d:
        raise ObjectFolderError(path, key, "missing key")
    return d[key]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v, path, field: str, *, positive: bool = False) -> float:
    if not _is_number(v) or not math.isfinite(v):
        raise ObjectFolderError(path, field, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise ObjectFolderError(path, field, f"must be positive, got {v!r}")
    return float(v)


def _vector(v, n: int | None, path, field: str, *, positive: bool = False,
            integer: bool = False) -> list:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        want = f"a list of {n} numbers" if n is not None else "a list of numbers"
        got = f"a list of {len(v)}" if isinstance(v, list) else repr(v)
        raise ObjectFolderError(path, field, f"must be {want}, got {got}")
    out = [_number(x, path, field, positive=positive) for x in v]
    if integer and any(x != int(x) for x in out):
        raise ObjectFolderError(path, field, f"must be integers, got {v}")
    return [int(x) for x in out] if integer else out


def _floats(v, n: int, path, field: str, *, positive: bool = False) -> np.ndarray:
    try:
        a = np.asarray(v, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ObjectFolderError(path, field, f"must be {n} numbers, got {v!r}") from None
    if a.size != n or not np.all(np.isfinite(a)):
        raise ObjectFolderError(path, field, f"must be {n} finite numbers, got {v!r}")
    if positive and np.any(a <= 0):
        raise ObjectFolderError(path, field, f"must be positive, got {v!r}")
    return a
