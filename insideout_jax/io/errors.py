"""The one exception raised by every reader in :mod:`insideout_jax.io`."""

from __future__ import annotations

import os

__all__ = ["ObjectFolderError"]


class ObjectFolderError(ValueError):
    """A file could not be read or does not hold what its schema promises.

    The message always names the file and the field (or ``<file>`` when the whole file is at
    fault), e.g. ``xray/geometry.json: field 'DSO': must be a positive number (mm), got -3``.

    Attributes:
      path: the offending file (or folder).
      field: the offending key, property, tag or variable; ``"<file>"`` for the file as a whole.
      problem: what is wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, field: str, problem: str):
        self.path = os.fspath(path)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: field '{field}': {problem}")
