"""Orbax checkpoints of the training state: save every N steps keeping k, resume.

* Writes are atomic: Orbax writes into a temporary directory and renames it
  when complete, so a killed run never leaves a half-written "latest".
* ``restore_latest`` walks the steps from newest to oldest; a checkpoint that
  fails to load (corrupt, truncated) is skipped with a warning and the previous
  one is used.
* ``save`` refuses pytrees holding NaN/Inf (``NonFiniteCheckpointError``): a
  NaN is never written.

The state is saved as a host (NumPy) pytree; callers un-replicate first.
"""
from __future__ import annotations

import logging
import os
import pathlib
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


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
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(keep), create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(path, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves ``state`` (host pytree) at ``step``; keeps the newest k.

  Raises:
    NonFiniteCheckpointError: if any float leaf is NaN/Inf (nothing is written).
  """
  state = to_host(state)
  if not all_finite(state):
    raise NonFiniteCheckpointError(
        f"Refusing to write checkpoint at step {step}: the state holds NaN/Inf values.")
  if step in manager.all_steps():
    return
  manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[int, Any] | None:
  """Restores the newest loadable checkpoint into the structure of ``target``.

  Args:
    manager: from ``make_manager``.
    target: a pytree with the wanted structure, shapes and dtypes (values unused).

  Returns:
    (step, state as NumPy pytree) or None when there is no loadable checkpoint.
    A checkpoint that fails to load, has a different structure or holds
    non-finite values is skipped with a warning.
  """
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), to_host(target))
  manager.reload()
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
      restored = to_host(restored)
      if not all_finite(restored):
        raise NonFiniteCheckpointError("non-finite values")
      return int(step), restored
    except Exception as e:  # pylint: disable=broad-except
      msg = (f"Checkpoint at step {step} in {manager.directory} could not be restored "
             f"({type(e).__name__}: {str(e)[:200]}); falling back to the previous one.")
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
