"""Atomic checkpoints of pytrees (splat sets, optimizer states, training state).

A checkpoint is one ``.npz`` file holding every leaf of the pytree (by its key path) plus a JSON
metadata string. It is written to a temporary file in the same folder, flushed and fsynced, then
moved over the target with ``os.replace``: a run killed at any moment leaves either the previous
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_meta", "atomic_write_bytes"]

_META_KEY = "__meta__"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _key(path) -> str:
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/") or "leaf"


def save_checkpoint(path: str | Path, tree: Any, meta: dict | None = None) -> None:
    """Save every array leaf of ``tree`` and a JSON-serialisable ``meta`` dict, atomically."""
    import io

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays = {}
    for p, leaf in flat:
        k = _key(p)
        if k in arrays or k == _META_KEY:
            raise ValueError(f"duplicate checkpoint key {k!r}")
        arrays[k] = np.asarray(leaf)
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta or {}).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_meta(path: str | Path) -> dict:
    """The metadata dict of a checkpoint."""
    with np.load(Path(path)) as z:
        return json.loads(bytes(z[_META_KEY]).decode())


def load_checkpoint(path: str | Path, like: Any) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of ``like`` (a pytree with the same structure).

    Returns:
      (tree, meta). Leaves are NumPy arrays with the saved dtypes and shapes.

    Raises:
      ValueError: naming the file and the key when a leaf is missing or its shape differs from
        ``like``'s (a checkpoint of another configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: checkpoint file not found")
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    with np.load(path) as z:
        for p, ref in flat:
            k = _key(p)
            if k not in z:
                raise ValueError(f"{path}: checkpoint has no entry {k!r} (saved by another version"
                                 " or configuration?)")
            a = z[k]
            ref_shape = np.shape(ref)
            if a.shape != ref_shape:
                raise ValueError(f"{path}: entry {k!r} has shape {a.shape}, expected {ref_shape}")
            leaves.append(a)
        meta = json.loads(bytes(z[_META_KEY]).decode())
    return jax.tree_util.tree_unflatten(treedef, leaves), meta
