"""The pose-set file: many poses with their phrases (input of the codebook build).

One ``.npz`` (no pickles):
  body_pose      [N, 63] float32  axis-angle, SMPL-X body joint order
  global_orient  [N, 3]  float32  axis-angle (estimator / camera frame)
  betas          [N, B]  float32  shape coefficients (B may be 0)
  phrase         [N]     str      the interaction phrase of each pose
  source         [N]     str      the image (or file) each pose came from
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np


class PoseSetError(ValueError):
  """A pose-set file is malformed."""


@dataclasses.dataclass(frozen=True)
class PoseSet:
  body_pose: np.ndarray
  global_orient: np.ndarray
  betas: np.ndarray
  phrase: np.ndarray
  source: np.ndarray

  def __len__(self) -> int:
    return int(self.body_pose.shape[0])


def make_pose_set(body_pose, global_orient=None, betas=None, phrase=None,
                  source=None) -> PoseSet:
  """Validates and converts arrays ([N,63], [N,3], [N,B], [N], [N])."""
  bp = np.asarray(body_pose, np.float32)
  if bp.ndim != 2 or bp.shape[1] != 63 or bp.shape[0] < 1:
    raise PoseSetError(f"body_pose has shape {bp.shape}; expected [N, 63] with N >= 1 "
                       "(21 SMPL-X body joints x axis-angle).")
  n = bp.shape[0]
  go = np.zeros((n, 3), np.float32) if global_orient is None else np.asarray(global_orient, np.float32)
  be = np.zeros((n, 0), np.float32) if betas is None else np.asarray(betas, np.float32)
  ph = np.asarray([""] * n if phrase is None else [str(p) for p in phrase], np.str_)
  so = np.asarray([""] * n if source is None else [str(s) for s in source], np.str_)
  if go.shape != (n, 3):
    raise PoseSetError(f"global_orient has shape {go.shape}; expected [{n}, 3].")
  if be.ndim != 2 or be.shape[0] != n:
    raise PoseSetError(f"betas has shape {be.shape}; expected [{n}, B].")
  if ph.shape != (n,) or so.shape != (n,):
    raise PoseSetError(f"phrase/source must have {n} entries (got {ph.shape}, {so.shape}).")
  for name, a in (("body_pose", bp), ("global_orient", go), ("betas", be)):
    if not np.all(np.isfinite(a)):
      rows = np.flatnonzero(~np.all(np.isfinite(a.reshape(n, -1)), axis=1))
      raise PoseSetError(f"{name} has NaN/inf in rows {rows[:10].tolist()}; drop them.")
  return PoseSet(bp, go, be, ph, so)


def save_pose_set(path: str | os.PathLike, ps: PoseSet) -> pathlib.Path:
  """Writes a pose set .npz; returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **dataclasses.asdict(ps))
  return path


def load_pose_set(path: str | os.PathLike) -> PoseSet:
  """Reads a pose set .npz (see module docstring).

  Raises:
    FileNotFoundError, PoseSetError.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Pose set {str(path)!r} does not exist; create one with "
                            "tools/import_poses.py.")
  try:
    with np.load(path, allow_pickle=False) as z:
      if "body_pose" not in z.files:
        raise PoseSetError(f"{path}: no 'body_pose' array; not a pose set "
                           "(create one with tools/import_poses.py).")
      data = {k: z[k] for k in ("body_pose", "global_orient", "betas", "phrase", "source")
              if k in z.files}
  except (OSError, ValueError) as e:
    if isinstance(e, PoseSetError):
      raise
    raise PoseSetError(f"{path}: cannot be read as a pose-set .npz ({e}).") from e
  return make_pose_set(**data)
