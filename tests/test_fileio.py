"""Atomically written files get 0o666 & ~umask, like a plain open(), not the temp file's 0600;
a folder written with ``atomic_directory`` appears whole or not at all; ``hold_lock``
keeps a second holder out and names the first."""
import os
import stat

import numpy as np
import pytest

from interfusion_jax import fileio
from interfusion_jax.stage2 import run_io


@pytest.fixture
def umask():
  old = os.umask(0o022)
  os.umask(old)
  yield lambda m: os.umask(m)
  os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask):
  umask(mask)
  assert fileio.process_umask() == mask
  writers = {
      "a.txt": lambda p: fileio.atomic_write_text(p, "x"),
      "b.json": lambda p: run_io.write_json(p, {"a": 1}),
      "c.png": lambda p: run_io.write_png(p, np.zeros((4, 4, 3), np.uint8)),
  }
  plain = tmp_path / "plain.txt"
  plain.write_text("x")                       # what open() gives under this umask
  for name, write in writers.items():
    path = tmp_path / name
    write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
  # Replacing an existing file also gives the usual mode.
  os.chmod(tmp_path / "a.txt", 0o600)
  fileio.atomic_write_text(tmp_path / "a.txt", "y")
  assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_directory_is_replaced_whole_or_not_at_all(tmp_path):
  final = tmp_path / "final"
  with fileio.atomic_directory(final) as tmp:
    (tmp / "a.txt").write_text("1")
    assert not final.exists()
  assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
  with pytest.raises(KeyboardInterrupt):
    with fileio.atomic_directory(final) as tmp:
      (tmp / "b.txt").write_text("half")
      raise KeyboardInterrupt
  assert sorted(p.name for p in final.iterdir()) == ["a.txt"]     # the old folder, intact
  with fileio.atomic_directory(final) as tmp:
    (tmp / "c.txt").write_text("2")
  assert sorted(p.name for p in final.iterdir()) == ["c.txt"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary left


def test_hold_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
  with fileio.hold_lock(tmp_path, "first holder") as path:
    with pytest.raises(fileio.DirectoryLockedError,
                       match=rf"pid {os.getpid()} on host .*first holder"):
      with fileio.hold_lock(tmp_path, "second"):
        pass
    assert "first holder" in fileio.lock_holder(path)
  with fileio.hold_lock(tmp_path, "third"):   # released on exit
    pass
