"""Atomic file writes (a temporary file in the same directory, then ``os.replace``)
and directory locks.

The base of every file the project writes (run directories, meshes, sweep
indexes), below all other modules. A reader never sees a half-written file,
and a killed process leaves the previous version in place. ``hold_lock``
keeps a second process out of a directory that one is writing.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import shutil
import socket
import tempfile
import time
from typing import Iterator


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


class DirectoryLockedError(RuntimeError):
  """Another process holds the directory's lock (``hold_lock``)."""


LOCK_FILE = ".lock"


def lock_holder(path: str | os.PathLike) -> str:
  """Who holds the lock file ``path``, as its holder wrote it ("unknown" when unreadable)."""
  try:
    info = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    return (f"pid {info['pid']} on host {info['host']}, started "
            f"{info['started']}: {info['what']}")
  except (OSError, ValueError, KeyError, TypeError):
    return "unknown holder"


@contextlib.contextmanager
def hold_lock(directory: str | os.PathLike, what: str,
              name: str = LOCK_FILE) -> Iterator[pathlib.Path]:
  """Holds an exclusive OS lock (``fcntl.flock``) on ``directory/name`` while inside.

  The lock belongs to the open file, so it is released when the process ends
  in any way (SIGKILL included): there are no stale locks. The file itself
  stays, holding the last holder's pid, host, start time and ``what`` (the
  command), which the error of a second process quotes. Two ``hold_lock`` of
  one file conflict within one process too.

  Yields:
    The lock file's path.

  Raises:
    DirectoryLockedError: at once (no waiting) when another holder has it.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / name
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~process_umask())
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    raise DirectoryLockedError(
        f"{directory} is in use by another process ({lock_holder(path)}); wait for it to "
        "end (or stop it), or choose another --workdir.") from None
  try:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    yield path
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary sibling directory that replaces ``path`` when the block ends normally.

  Write a whole folder inside; on success the previous ``path`` (if any) is
  renamed aside and removed, and the new one renamed into place. An
  exception or signal inside the block removes the temporary folder and
  leaves ``path`` as it was: a reader finds either the old folder or the
  new one, never a half-written one (between the two renames, for an instant,
  neither).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
  try:
    os.chmod(tmp, 0o777 & ~process_umask())
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  old = path.parent / f".{path.name}.old"
  shutil.rmtree(old, ignore_errors=True)
  if path.exists():
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)
