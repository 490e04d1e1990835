"""Finding run directories: a single run, or a sweep directory of runs.

A *run directory* holds ``config.json`` (written by ``python -m
interfusion_jax.train`` or a sweep). A *sweep directory* holds ``sweep.json``
and/or several run directories, one per scene. ``sweep.json`` is read for
the scenes' directories when it names them (keys ``workdir``, ``dir``,
``path`` or ``run_dir`` of the entries under ``scenes`` or ``runs``);
otherwise every immediate sub-directory with a ``config.json`` is a scene,
in name order.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib


class RunDirError(ValueError):
  """The path is neither a run directory nor a sweep directory."""


@dataclasses.dataclass(frozen=True)
class RunSet:
  """kind: "run" or "sweep"; root: the given directory; runs: the run directories."""
  kind: str
  root: pathlib.Path
  runs: tuple


def saved_prompt(run_dir) -> dict:
  """{"human", "object", "interaction"} of a run directory's config.json, read as
  plain JSON (a run of any age; a missing prompt is "")."""
  try:
    cfg = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
  except (OSError, ValueError):
    cfg = {}
  p = cfg.get("prompt", {}) if isinstance(cfg, dict) else {}
  p = p if isinstance(p, dict) else {}
  return {k: str(p.get(k, "")).strip() for k in ("human", "object", "interaction")}


def is_run_dir(path) -> bool:
  """True when ``path`` holds a config.json."""
  return (pathlib.Path(path) / "config.json").is_file()


def _from_sweep_json(root: pathlib.Path) -> list:
  try:
    data = json.loads((root / "sweep.json").read_text())
  except (OSError, ValueError):
    return []
  entries = []
  if isinstance(data, dict):
    for key in ("scenes", "runs"):
      if isinstance(data.get(key), list):
        entries = data[key]
        break
  elif isinstance(data, list):
    entries = data
  out = []
  for e in entries:
    name = None
    if isinstance(e, str):
      name = e
    elif isinstance(e, dict):
      name = next((e[k] for k in ("workdir", "run_dir", "dir", "path") if isinstance(e.get(k), str)),
                  None)
    if name:
      p = pathlib.Path(name)
      p = p if p.is_absolute() else root / p
      if is_run_dir(p):
        out.append(p)
  return out


def discover(path) -> RunSet:
  """The run set at ``path``.

  Raises:
    RunDirError: with the path when it holds neither a config.json nor runs.
  """
  root = pathlib.Path(path).expanduser().absolute()
  if not root.is_dir():
    raise RunDirError(f"{root} is not a directory; --workdir must be a run directory "
                      "(with config.json) or a sweep directory (with sweep.json or run dirs).")
  if is_run_dir(root) and not (root / "sweep.json").is_file():
    return RunSet("run", root, (root,))
  runs = _from_sweep_json(root) if (root / "sweep.json").is_file() else []
  if not runs:
    runs = sorted(p for p in root.iterdir() if p.is_dir() and is_run_dir(p))
  if not runs:
    raise RunDirError(f"{root} holds no config.json and no run directories; --workdir must be "
                      "a run directory written by `python -m interfusion_jax.train` or a sweep "
                      "directory.")
  return RunSet("sweep", root, tuple(runs))
