"""Atomic file writes: a temporary file in the same directory, then ``os.replace``.

The base of every file the project writes (run directories, meshes, sweep
indexes), below all other modules. A reader never sees a half-written file,
and a killed process leaves the previous version in place.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (temporary file + os.replace)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Atomic UTF-8 text write. See ``atomic_write_bytes``."""
  atomic_write_bytes(path, text.encode("utf-8"))
