"""The pose codebook file format (PAPER.md "Stage 1", step 3).

A codebook is one ``.npz`` file:

  poses            [K, 63] float32  key pose of each cluster (axis-angle body
                                    pose; the member nearest the centroid)
  global_orients   [K, 3]  float32  its global orientation (body frame, y up)
  embeddings       [K, D]  float32  cluster feature: "clip" codebooks hold the
                                    unit-norm mean of the members' CLIP
                                    embeddings (D = CLIP projection dim);
                                    "pose" codebooks (the built-in one) the
                                    mean 66-D pose feature (body pose + orient)
  member_offsets   [K+1]   int64    CSR offsets into the member arrays
  member_poses     [M, 63] float32  every clustered pose, grouped by cluster
  member_orients   [M, 3]  float32
  member_phrases   [M]     str      the phrase that produced each member
  cluster_phrases  [K]     str      distinct member phrases, " | "-joined,
                                    most frequent first
  metadata         ()      str      JSON: version, embedding_space, body
                                    model, CLIP model, render settings,
                                    cluster space, K requested, source, ...

The file holds only arrays and strings (no pickles): ``np.load`` with
``allow_pickle=False`` reads it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

FORMAT_VERSION = 1
POSE_DIM = 63
BUILTIN_PATH = pathlib.Path(__file__).resolve().parent.parent / "assets" / "builtin_codebook.npz"
_KEYS = ("poses", "global_orients", "embeddings", "member_offsets",
         "member_poses", "member_orients", "member_phrases", "cluster_phrases",
         "metadata")


class CodebookError(ValueError):
  """A codebook file is missing or malformed; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Codebook:
  """An in-memory codebook (see the module docstring for the shapes)."""
  poses: np.ndarray
  global_orients: np.ndarray
  embeddings: np.ndarray
  member_offsets: np.ndarray
  member_poses: np.ndarray
  member_orients: np.ndarray
  member_phrases: np.ndarray
  cluster_phrases: np.ndarray
  metadata: dict

  @property
  def size(self) -> int:
    return int(self.poses.shape[0])

  @property
  def embedding_space(self) -> str:
    return str(self.metadata.get("embedding_space", ""))

  def members(self, k: int) -> np.ndarray:
    """Member indices [m] (into member_* arrays) of cluster k."""
    return np.arange(self.member_offsets[k], self.member_offsets[k + 1])

  def phrases(self, k: int) -> list[str]:
    """The distinct phrases that fed cluster k."""
    return [p for p in str(self.cluster_phrases[k]).split(" | ") if p]


def validate(cb: Codebook, where: str = "codebook") -> Codebook:
  """Checks shapes, dtypes and consistency; raises CodebookError."""
  def bad(msg):
    raise CodebookError(
        f"{where}: {msg}. Rebuild it with `python -m interfusion_jax.pose.build` "
        "or tools/build_builtin_codebook.py.")
  k = cb.poses.shape[0] if cb.poses.ndim == 2 else -1
  if cb.poses.ndim != 2 or cb.poses.shape[1] != POSE_DIM or k < 1:
    bad(f"poses has shape {cb.poses.shape}, expected [K, {POSE_DIM}] with K >= 1")
  if cb.global_orients.shape != (k, 3):
    bad(f"global_orients has shape {cb.global_orients.shape}, expected [{k}, 3]")
  if cb.embeddings.ndim != 2 or cb.embeddings.shape[0] != k or cb.embeddings.shape[1] < 1:
    bad(f"embeddings has shape {cb.embeddings.shape}, expected [{k}, D]")
  off = cb.member_offsets
  if off.shape != (k + 1,) or off[0] != 0 or np.any(np.diff(off) < 1):
    bad("member_offsets must be [K+1], start at 0 and give every cluster >= 1 member")
  m = int(off[-1])
  if cb.member_poses.shape != (m, POSE_DIM) or cb.member_orients.shape != (m, 3):
    bad(f"member_poses/member_orients have shapes {cb.member_poses.shape}/"
        f"{cb.member_orients.shape}, expected [{m}, {POSE_DIM}]/[{m}, 3]")
  if cb.member_phrases.shape != (m,) or cb.cluster_phrases.shape != (k,):
    bad("member_phrases must be [M] and cluster_phrases [K]")
  for name in ("poses", "global_orients", "embeddings", "member_poses"):
    if not np.all(np.isfinite(getattr(cb, name))):
      bad(f"{name} contains NaN or inf")
  if cb.metadata.get("embedding_space") not in ("clip", "pose"):
    bad(f"metadata.embedding_space = {cb.metadata.get('embedding_space')!r}, "
        "expected 'clip' or 'pose'")
  return cb


def make_codebook(poses, global_orients, embeddings, member_offsets,
                  member_poses, member_orients, member_phrases, cluster_phrases,
                  metadata: dict) -> Codebook:
  """Builds and validates a Codebook from array-likes (shapes as above)."""
  cb = Codebook(
      poses=np.asarray(poses, np.float32),
      global_orients=np.asarray(global_orients, np.float32),
      embeddings=np.asarray(embeddings, np.float32),
      member_offsets=np.asarray(member_offsets, np.int64),
      member_poses=np.asarray(member_poses, np.float32),
      member_orients=np.asarray(member_orients, np.float32),
      member_phrases=np.asarray([str(p) for p in member_phrases], dtype=np.str_),
      cluster_phrases=np.asarray([str(p) for p in cluster_phrases], dtype=np.str_),
      # JSON round trip: the in-memory metadata equals what load() returns.
      metadata=json.loads(json.dumps({"version": FORMAT_VERSION, **dict(metadata)})))
  return validate(cb)


def save(path: str | os.PathLike, cb: Codebook) -> pathlib.Path:
  """Writes ``cb`` to ``path`` (.npz, atomically). Returns the path."""
  validate(cb)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.npz")
  arrays: dict[str, Any] = {k: getattr(cb, k) for k in _KEYS if k != "metadata"}
  arrays["metadata"] = np.asarray(json.dumps(cb.metadata, sort_keys=True))
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)
  return path


def load(path: str | os.PathLike | None = None) -> Codebook:
  """Reads and validates a codebook; ``None``/"" loads the built-in one.

  Raises:
    FileNotFoundError: the file does not exist.
    CodebookError: it is not a valid codebook.
  """
  path = pathlib.Path(path) if path else BUILTIN_PATH
  if not path.is_file():
    hint = ("run `python tools/build_builtin_codebook.py` to rebuild the "
            "built-in codebook" if path == BUILTIN_PATH else
            "build one with `python -m interfusion_jax.pose.build`, or leave "
            "config.pose.codebook empty to use the built-in one")
    raise FileNotFoundError(f"Pose codebook {str(path)!r} does not exist; {hint}.")
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in _KEYS if k not in z.files]
      if missing:
        raise CodebookError(
            f"{path}: not a pose codebook (missing arrays {missing}). Build one "
            "with `python -m interfusion_jax.pose.build`.")
      data = {k: z[k] for k in _KEYS}
  except (OSError, ValueError) as e:
    if isinstance(e, CodebookError):
      raise
    raise CodebookError(f"{path}: cannot be read as a .npz codebook ({e}).") from e
  try:
    meta = json.loads(str(data.pop("metadata")))
  except json.JSONDecodeError as e:
    raise CodebookError(f"{path}: metadata is not valid JSON ({e}).") from e
  return validate(Codebook(metadata=meta, **data), where=str(path))
