"""The one exception raised by every reader in :mod:`insideout_jax.io`."""

from __future__ import annotations

import errno
import os

__all__ = ["ObjectFolderError", "os_error_message"]


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


# Errors of the machine rather than of the program, and what to do about them.
_OS_ADVICE = {errno.ENOSPC: "the disk is full: free space there or write elsewhere",
              errno.EDQUOT: "the disk quota is exhausted: free space or write elsewhere",
              errno.EACCES: "permission denied: use files and folders you may read and write",
              errno.EPERM: "operation not permitted: use files and folders you may read and write",
              errno.EROFS: "the file system is read-only: write elsewhere",
              errno.ENOTDIR: "a part of the path is a file, not a folder",
              errno.EEXIST: "a file is in the way: remove it or write elsewhere"}


def os_error_message(e: OSError) -> str | None:
    """'cannot access PATH: what to do' for a full disk, a forbidden or read-only folder or a file in
    the way; None for other OS errors (those are bugs and keep their traceback)."""
    if e.errno not in _OS_ADVICE:
        return None
    return f"cannot access {e.filename or 'a file'}: {_OS_ADVICE[e.errno]}"
