"""The run directory: resolved config, anchor, metrics, images, videos, summary.

Layout (see docs/training.md)::

    <workdir>/
      .lock                  held by the process writing the run (``lock_run``)
      config.json            resolved config (every key, after overrides)
      train_time.json        cumulative training seconds at each checkpointed step
      anchor/anchor.npz      the anchor pose used (+ anchor.png preview)
      checkpoints/<step>/    Orbax checkpoints (checkpoint.py)
      metrics.jsonl          one JSON object per logged step
      tb/                    TensorBoard events (only if tensorboardX/tensorboard is installed)
      val/step_XXXXXX.png    validation grids (RGB / normals / opacity)
      final/                 turntables (.mp4 or .gif), multiview.png, meshes, summary.json

Every file is written atomically: to a temporary file in the same directory,
then ``os.replace``; ``final/`` is written as a whole folder and renamed
into place (``fileio.atomic_directory``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import tempfile
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from interfusion_jax import fileio
from interfusion_jax.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401 (the run's writers)
from interfusion_jax.stage2 import config as config_lib


class WorkdirError(FileNotFoundError):
  """The work directory cannot be created or written."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Paths of one run directory."""
  root: pathlib.Path

  @property
  def config(self) -> pathlib.Path:
    return self.root / "config.json"

  @property
  def anchor_dir(self) -> pathlib.Path:
    return self.root / "anchor"

  @property
  def checkpoints(self) -> pathlib.Path:
    return self.root / "checkpoints"

  @property
  def metrics(self) -> pathlib.Path:
    return self.root / "metrics.jsonl"

  @property
  def tensorboard(self) -> pathlib.Path:
    return self.root / "tb"

  @property
  def val(self) -> pathlib.Path:
    return self.root / "val"

  @property
  def final(self) -> pathlib.Path:
    return self.root / "final"

  @property
  def summary(self) -> pathlib.Path:
    return self.final / "summary.json"

  @property
  def train_time(self) -> pathlib.Path:
    return self.root / "train_time.json"


def prepare_workdir(workdir: str | os.PathLike) -> RunPaths:
  """Creates the run directory tree and checks it is writable.

  Raises:
    WorkdirError: with the path and the OS reason when it is not writable.
  """
  if not str(workdir).strip():
    raise WorkdirError("--workdir is empty; give a directory, e.g. --workdir=runs/bike.")
  paths = RunPaths(pathlib.Path(workdir).expanduser().absolute())
  try:
    for d in (paths.root, paths.anchor_dir, paths.val, paths.final):
      d.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=paths.root, prefix=".probe", delete=True):
      pass
  except OSError as e:
    raise WorkdirError(
        f"Cannot write to the work directory {paths.root}: {e.strerror or e}. "
        "Choose a writable --workdir.") from e
  return paths


class WorkdirBusyError(WorkdirError):
  """Another process is writing the work directory (it holds its lock)."""


@contextlib.contextmanager
def lock_run(directory: str | os.PathLike, what: str, name: str = fileio.LOCK_FILE
             ) -> Iterator[pathlib.Path]:
  """Holds the run (or sweep) directory's lock while inside (``fileio.hold_lock``).

  Raises:
    WorkdirBusyError: at once, naming the holder (pid, host, start time), when
      another process holds it.
  """
  with contextlib.ExitStack() as stack:   # only acquiring is translated, not the block's errors
    try:
      path = stack.enter_context(fileio.hold_lock(directory, what, name))
    except fileio.DirectoryLockedError as e:
      raise WorkdirBusyError(str(e)) from None
    except OSError as e:
      raise WorkdirError(f"Cannot lock the work directory {directory}: {e.strerror or e}. "
                         "Choose a writable --workdir.") from e
    yield path


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist"):
    return _jsonable(x.tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Atomic JSON write (NumPy/JAX scalars and arrays converted to lists)."""
  atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def save_config(paths: RunPaths, run: config_lib.RunConfig) -> None:
  """Writes the parsed config as config.json (reload: ``load_config``)."""
  atomic_write_text(paths.config, json.dumps(_jsonable(config_lib.to_dict(run)), indent=2,
                                             sort_keys=True) + "\n")


def load_config(workdir: str | os.PathLike) -> config_lib.RunConfig:
  """The config saved in ``workdir/config.json``, parsed (``config.parse``).

  Raises:
    FileNotFoundError: if the run directory has no config.json.
    config.ConfigError: if it holds an unknown key or a bad value.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: --workdir must be a directory written by "
        "`python -m interfusion_jax.train`.")
  return config_lib.parse(json.loads(path.read_text()))


# Keys that may change between the sessions of one run: they only set how long
# it trains and what it logs, keeps and writes at the end (docs/training.md).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.val_every", "train.ckpt_every",
                     "train.keep_checkpoints", "train.turntable_frames",
                     "train.mesh_resolution", "train.final_resolution")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(old: config_lib.RunConfig, new: config_lib.RunConfig) -> list[str]:
  """Dotted keys whose values differ between two configs, outside ``RESUMABLE_CHANGES``."""
  a, b = (_flat(_jsonable(config_lib.to_dict(r))) for r in (old, new))
  return sorted(k for k in a.keys() | b.keys()
                if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def check_resume_config(paths: RunPaths, run: config_lib.RunConfig) -> None:
  """Refuses to resume a run directory under a config other than the one it was started with.

  Only the keys of ``RESUMABLE_CHANGES`` may differ from the stored
  config.json. A directory without config.json is not checked.

  Raises:
    WorkdirError: one line listing the differing keys and the two ways out.
  """
  if not paths.config.is_file():
    return
  try:
    old = config_lib.parse(json.loads(paths.config.read_text(encoding="utf-8")))
  except (ValueError, UnicodeDecodeError) as e:   # ConfigError is a ValueError
    raise WorkdirError(
        f"{paths.config} cannot be read ({str(e).splitlines()[0][:200]}), so its checkpoints "
        "cannot be resumed safely; choose a new --workdir.") from e
  shown = describe_config_changes(old, run)
  if shown:
    raise WorkdirError(
        f"{paths.root} was started with another config: {shown} differ from its "
        "config.json. Resume with the old values (see that config.json), or train the new "
        "config in a new --workdir.")


def describe_config_changes(old: config_lib.RunConfig, new: config_lib.RunConfig) -> str:
  """``config_changes`` as ``"key (old -> new), ..."`` (at most six, then a count); "" if none."""
  changed = config_changes(old, new)
  if not changed:
    return ""
  a, b = (_flat(_jsonable(config_lib.to_dict(r))) for r in (old, new))
  shown = ", ".join(f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in changed[:6])
  return shown + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")


def read_train_time(paths: RunPaths, step: int) -> float:
  """Training seconds spent up to the checkpointed ``step`` (0.0 when unknown or step 0)."""
  try:
    return float(json.loads(paths.train_time.read_text()).get(str(int(step)), 0.0))
  except (OSError, ValueError, AttributeError):
    return 0.0


def record_train_time(paths: RunPaths, step: int, seconds: float) -> None:
  """Adds {step: cumulative training seconds} to train_time.json (written with a checkpoint)."""
  try:
    times = json.loads(paths.train_time.read_text())
    times = times if isinstance(times, dict) else {}
  except (OSError, ValueError):
    times = {}
  times[str(int(step))] = float(seconds)
  atomic_write_text(paths.train_time, json.dumps(times, sort_keys=True) + "\n")


class MetricsWriter:
  """Appends metrics to metrics.jsonl (and TensorBoard when installed)."""

  def __init__(self, paths: RunPaths, use_tensorboard: bool = True):
    self._path = paths.metrics
    self._tb = None
    if use_tensorboard:
      self._tb = _tensorboard_writer(paths.tensorboard)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends ``{"step": step, **metrics}`` as one line (floats), flushes."""
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    line = json.dumps(_jsonable(row)) + "\n"
    with open(self._path, "a", encoding="utf-8") as f:
      f.write(line)
      f.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _tensorboard_writer(logdir: pathlib.Path):
  """A tensorboardX SummaryWriter, or None when tensorboardX (optional) is not installed.

  (torch.utils.tensorboard is never tried: the core never imports torch.)
  """
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tensorboardX.SummaryWriter(str(logdir))


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
  """All rows of a metrics.jsonl file ([] when it is missing; a truncated line is skipped)."""
  rows = []
  try:
    lines = pathlib.Path(path).read_text().splitlines()
  except FileNotFoundError:
    return rows
  for line in lines:
    with contextlib.suppress(json.JSONDecodeError):
      rows.append(json.loads(line))
  return rows


def truncate_metrics(path: str | os.PathLike, after_step: int) -> None:
  """Drops rows with step > ``after_step`` (used when resuming from a checkpoint)."""
  path = pathlib.Path(path)
  if not path.exists():
    return
  rows = [r for r in read_metrics(path) if r.get("step", 0) <= after_step]
  atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# ----------------------------------------------------------------------------
# Images and videos.

def to_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W, C] (C in {1, 3, 4}) float in [0, 1] -> uint8 [H, W, 3 or 4]."""
  image = np.nan_to_num(np.asarray(image, np.float32))
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles images into a grid.

  Args:
    rows: R rows of C images each, every image [H, W, 1|3] float in [0, 1]
      (all the same H, W).
    pad: white pixels between tiles.

  Returns:
    uint8 [R*H + (R+1)*pad, C*W + (C+1)*pad, 3].
  """
  tiles = [[to_uint8(im)[..., :3] for im in row] for row in rows]
  h, w = tiles[0][0].shape[:2]
  ncol = max(len(r) for r in tiles)
  out = np.full((len(tiles) * h + (len(tiles) + 1) * pad, ncol * w + (ncol + 1) * pad, 3),
                255, np.uint8)
  for i, row in enumerate(tiles):
    for j, t in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y:y + h, x:x + w] = t
  return out


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Atomic PNG write of [H, W, 3] uint8 or float in [0, 1]."""
  import imageio.v3 as iio
  image = image if image.dtype == np.uint8 else to_uint8(image)
  atomic_write_bytes(path, iio.imwrite("<bytes>", image, extension=".png"))


def write_video(path_stem: str | os.PathLike, frames: Sequence[np.ndarray],
                fps: int = 20) -> pathlib.Path:
  """Writes an MP4 (imageio-ffmpeg) or, if that fails, a GIF.

  Args:
    path_stem: output path without extension.
    frames: F frames [H, W, 3] (uint8 or float in [0, 1]).
    fps: frames per second.

  Returns:
    The path written (``.mp4`` or ``.gif``).
  """
  import imageio.v2 as imageio
  stem = pathlib.Path(path_stem)
  frames = [f if f.dtype == np.uint8 else to_uint8(f) for f in frames]
  frames = [f[..., :3] for f in frames]
  # H.264 wants even sizes; pad by edge replication.
  def even(f):
    h, w = f.shape[:2]
    return np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  mp4 = stem.with_suffix(".mp4")
  tmp = stem.parent / ("." + stem.name + ".tmp.mp4")
  try:
    with imageio.get_writer(str(tmp), fps=fps, codec="libx264", quality=8,
                            macro_block_size=1, ffmpeg_log_level="error") as w:
      for f in frames:
        w.append_data(even(f))
    os.replace(tmp, mp4)
    return mp4
  except Exception as e:  # pylint: disable=broad-except
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    warnings.warn(f"MP4 writing failed ({e}); writing a GIF instead.")
  import imageio.v3 as iio
  gif = stem.with_suffix(".gif")
  atomic_write_bytes(gif, iio.imwrite("<bytes>", np.stack(frames), extension=".gif",
                                      duration=1000.0 / fps, loop=0))
  return gif


# ----------------------------------------------------------------------------
# Progress.

class Progress:
  """tqdm progress bar showing step, it/s, total loss and ETA."""

  def __init__(self, total: int, initial: int = 0, disable: bool = False):
    self._t0 = time.perf_counter()
    self._initial = initial
    self._bar = tqdm(total=total, initial=initial, disable=disable, dynamic_ncols=True,
                     desc="train", unit="it")

  def update(self, step: int, loss: float | None = None, n: int = 1) -> None:
    self._bar.update(n)
    if loss is not None:
      self._bar.set_postfix(step=step, loss=f"{loss:.4g}", refresh=False)

  def close(self) -> None:
    self._bar.close()

  def steps_per_second(self, step: int) -> float:
    dt = time.perf_counter() - self._t0
    return (step - self._initial) / dt if dt > 0 else 0.0


@contextlib.contextmanager
def timer() -> Iterator[dict]:
  """``with timer() as t: ...``; afterwards t["seconds"] is the wall time."""
  out = {}
  t0 = time.perf_counter()
  try:
    yield out
  finally:
    out["seconds"] = time.perf_counter() - t0
