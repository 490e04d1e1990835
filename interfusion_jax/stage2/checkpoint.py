"""Orbax checkpoints of the training state: save every N steps keeping k, resume.

* Writes are atomic: Orbax writes into a temporary directory and renames it
  when complete, so a killed run never leaves a half-written "latest".
* ``restore_latest`` walks the steps from newest to oldest; a checkpoint that
  fails to load (corrupt, truncated) is skipped with a warning and the previous
  one is used. With ``quarantine=True`` (training) the failed step is moved
  aside to ``corrupt-<step>/`` (kept for inspection), so the run trains and
  writes that step again instead of falling back to it forever.
* ``save`` refuses pytrees holding NaN/Inf (``NonFiniteCheckpointError``): a
  NaN is never written.

The state is saved as a host (NumPy) pytree; callers un-replicate first.

Checkpoints are always process-local: no training state of this project is
sharded across processes (a multi-host sweep trains different scenes in each
process, stage2/sweep.py). Under ``jax.distributed`` (``jax.process_count() >
1``) Orbax 0.12 would coordinate every save with all processes and write host
NumPy arrays only on process 0, so ``make_manager``, ``save`` and
``restore_latest`` run inside ``process_local()``, which makes Orbax treat the
calling process as the only one (docs/sweeps.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.multihost import multihost as _orbax_multihost


class NonFiniteCheckpointError(ValueError):
  """The pytree to save holds NaN or Inf; it is not written."""


class CheckpointDirError(FileNotFoundError):
  """The checkpoint directory cannot be created or written."""


def all_finite(tree: Any) -> bool:
  """True iff every floating leaf of ``tree`` is finite (non-float leaves ignored)."""
  for leaf in jax.tree_util.tree_leaves(tree):
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
      return False
  return True


def to_host(tree: Any) -> Any:
  """Copies a pytree of (possibly device) arrays to NumPy. Same structure."""
  return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


def _is_closed_loop_noise(exc_type, exc) -> bool:
  return exc_type is RuntimeError and str(exc) == "Event loop is closed"


def silence_closed_loop_tracebacks() -> None:
  """Drops the "RuntimeError: Event loop is closed" tracebacks of a failed restore.

  When a restore fails, Orbax closes its asyncio loop while TensorStore reads
  of the same checkpoint are still in flight; each one that completes later
  calls ``loop.call_soon_threadsafe`` from a TensorStore thread, which raises
  and is reported through ``sys.unraisablehook`` as a bare traceback (dozens
  per failed step). They are harmless: the failure itself is reported once, by
  ``restore_latest``. This wraps ``sys.unraisablehook`` (once per process) to
  drop exactly that exception; every other one is passed on.
  """
  hook = sys.unraisablehook
  if getattr(hook, "_drops_closed_loop", False):
    return

  def filtered(unraisable):
    if not _is_closed_loop_noise(unraisable.exc_type, unraisable.exc_value):
      hook(unraisable)

  filtered._drops_closed_loop = True  # pylint: disable=protected-access
  sys.unraisablehook = filtered


def _multiprocess() -> bool:
  return jax.process_count() > 1


@contextlib.contextmanager
def process_local():
  """Within: Orbax sees the calling process as process 0 of one (no cross-process sync).

  A no-op in a single-process run. Orbax 0.12 has no public option for
  "every process writes its own checkpoints": its NumPy handler writes only
  on process 0 and its managers wait at barriers of all processes. This
  patches its process index (``orbax.checkpoint._src.multihost``) for the
  duration; the managers made under it have ``active_processes={0}`` and a
  per-process barrier prefix, so every barrier is skipped.
  """
  if not _multiprocess():
    yield
    return
  real = _orbax_multihost.process_index
  _orbax_multihost.process_index = lambda: 0
  try:
    yield
  finally:
    _orbax_multihost.process_index = real


def make_manager(directory: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
  """A synchronous Orbax manager in ``directory`` keeping the ``keep`` newest steps.

  Raises:
    CheckpointDirError: if the directory cannot be created or written.
  """
  path = pathlib.Path(directory).absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointDirError(
        f"Cannot write checkpoints to {path}: {e}. Choose a writable --workdir.") from e
  if not _multiprocess():
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(keep), create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(path, options=options)
  mp = ocp.options.MultiprocessingOptions(
      primary_host=0, active_processes={0},
      barrier_sync_key_prefix=f"interfusion_p{jax.process_index()}")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(keep), create=False, enable_async_checkpointing=False,
      multiprocessing_options=mp)
  with process_local():
    return ocp.CheckpointManager(
        path, options=options,
        item_handlers=ocp.StandardCheckpointHandler(multiprocessing_options=mp))


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` (host pytree) at ``step``; keeps the newest k.

  Raises:
    NonFiniteCheckpointError: if any float leaf is NaN/Inf (nothing is written).
  """
  state = to_host(state)
  if not all_finite(state):
    raise NonFiniteCheckpointError(
        f"Refusing to write checkpoint at step {step}: the state holds NaN/Inf values.")
  with process_local():
    if step in manager.all_steps():
      return
    manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()


def quarantine_step(manager: ocp.CheckpointManager, step: int) -> pathlib.Path | None:
  """Moves the step's directory aside to ``corrupt-<step>`` (``-<step>.<k>`` if taken).

  Orbax no longer lists the step, so the next save at that step writes it
  again. Returns the new path (None when the step directory is not found).
  """
  root = pathlib.Path(manager.directory)
  src = root / str(int(step))
  if not src.is_dir():
    return None
  dst, k = root / f"corrupt-{int(step)}", 1
  while dst.exists():
    dst, k = root / f"corrupt-{int(step)}.{k}", k + 1
  os.replace(src, dst)
  with process_local():
    manager.reload()
  return dst


def restore_latest(manager: ocp.CheckpointManager, target: Any,
                   max_step: int | None = None,
                   legacy: Sequence[tuple[Any, Callable[[Any], Any]]] = (),
                   quarantine: bool = False) -> tuple[int, Any] | None:
  """Restores the newest loadable checkpoint into the structure of ``target``.

  Args:
    manager: from ``make_manager``.
    target: a pytree with the wanted structure, shapes and dtypes (values unused).
    max_step: only steps <= max_step are tried (a sweep resumes the scenes of a
      group from their common step); None: all.
    legacy: (older target, convert) pairs tried, in order, when a step does not
      fit ``target``; ``convert`` maps the restored older tree to the new
      structure (e.g. ``step.legacy_targets``).
    quarantine: move a step that fails to restore aside (``quarantine_step``);
      only for the process that owns (has locked) the run directory.

  Returns:
    (step, state as NumPy pytree) or None when there is no loadable checkpoint.
    A checkpoint that fails to load, has a different structure or holds
    non-finite values is skipped with a warning.
  """
  def abstract(tree):
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), to_host(tree))

  candidates = [(abstract(target), None)] + [(abstract(t), fn) for t, fn in legacy]
  silence_closed_loop_tracebacks()
  with process_local():
    manager.reload()
    steps = sorted((t for t in manager.all_steps() if max_step is None or t <= max_step),
                   reverse=True)
  for step in steps:
    error = None
    for wanted, convert in candidates:
      try:
        with process_local():
          restored = manager.restore(step, args=ocp.args.StandardRestore(wanted))
        restored = to_host(restored)
        if convert is not None:
          restored = convert(restored)
        if not all_finite(restored):
          raise NonFiniteCheckpointError("non-finite values")
        return int(step), restored
      except NonFiniteCheckpointError as e:
        error = e
        break
      except Exception as e:  # pylint: disable=broad-except
        error = error or e
    msg = (f"Checkpoint at step {step} in {manager.directory} could not be restored "
           f"({type(error).__name__}: {str(error)[:200]}); falling back to the previous one.")
    moved = quarantine_step(manager, step) if quarantine else None
    if moved is not None:
      msg += f" It was moved aside to {moved}."
    warnings.warn(msg)
    logging.warning(msg)
  return None


def latest_step(directory: str | os.PathLike) -> int | None:
  """Newest finalised step in ``directory`` (None if none), without loading it.

  Orbax's own step bookkeeping (``orbax.checkpoint.utils.checkpoint_steps``):
  unfinished temporary step directories are not counted.
  """
  path = pathlib.Path(directory)
  if not path.exists():
    return None
  steps = ocp.utils.checkpoint_steps(path)
  return max(steps) if steps else None
