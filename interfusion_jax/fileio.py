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


def process_umask() -> int:
  """The process umask (Linux: read from /proc/self/status; elsewhere set and restored)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically (temporary file + os.replace).

  The file gets the mode a plain ``open(path, "w")`` would give it,
  ``0o666 & ~umask`` (the temporary file alone would leave 0600).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
  try:
    os.chmod(tmp, 0o666 & ~process_umask())
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
