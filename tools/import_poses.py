"""Imports per-image body-estimator results into one pose set (.npz).

    python tools/import_poses.py --out poses.npz INPUT [INPUT ...]

INPUT is a file or a directory (searched recursively) of:
  * official ``{name}_smpl.npy`` files (InterFusion PoseGen/estimate.py,
    ICON + PIXIE): a pickled dict(betas, pose, orient, trans) where pose
    [1, 21, 6] and orient [1, 1, 6] are 6D rotations (Zhou et al. 2019; the
    six numbers are a row-major 3x2 matrix whose columns are the first two
    columns of the rotation). Values may be torch tensors (needs torch) or
    NumPy arrays. The phrase is taken from the name: images are saved as
    "{phrase with _}_{j}.png", so "riding_a_bike_3_smpl.npy" -> "riding a bike".
  * AMASS-style ``.npz``: ``poses`` [T, >= 66] (root orient 3 + body 63 + ...)
    or ``pose_body`` [T, 63] (+ ``root_orient`` [T, 3]); optional ``betas``.
    ``--stride`` subsamples frames; the phrase is ``--phrase`` or the parent
    directory name.

Output: interfusion_jax.pose.poseset (body_pose [N, 63] axis-angle,
global_orient [N, 3], betas [N, B], phrase [N], source [N]).

Only the 63-D body pose (21 joints) is kept, as the official pipeline keeps
it (PoseGen ``load_pose`` reads ``pose`` alone; stage 2 poses the body with
global_orient 0): the estimator's root orientation is camera-frame (an
AMASS root orientation is mocap-world-frame), and a body posed with it can
stand tilted or upside down. ``global_orient`` is therefore written as zeros
(upright), unless ``--keep_orient`` asks for the file's own.
"""
from __future__ import annotations

import argparse
import pathlib
import pickle
import sys
from typing import Any, Iterable

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from interfusion_jax.pose import poseset  # noqa: E402


class PoseFileError(ValueError):
  """An input pose file is malformed; the message names the file and field."""


def rot6d_to_matrix(x: np.ndarray) -> np.ndarray:
  """6D rotation [..., 6] -> rotation matrices [..., 3, 3] (Gram-Schmidt).

  The six numbers are a row-major 3x2 matrix (columns a1, a2), as in the
  official ``rot6d_to_rotation_matrix``: b1 = a1/|a1|, b2 = normalised
  a2 - (b1.a2) b1, b3 = b1 x b2; R = [b1 b2 b3] (columns).
  """
  x = np.asarray(x, np.float64).reshape(x.shape[:-1] + (3, 2))
  a1, a2 = x[..., 0], x[..., 1]
  b1 = a1 / np.maximum(np.linalg.norm(a1, axis=-1, keepdims=True), 1e-12)
  a2 = a2 - np.sum(b1 * a2, -1, keepdims=True) * b1
  b2 = a2 / np.maximum(np.linalg.norm(a2, axis=-1, keepdims=True), 1e-12)
  b3 = np.cross(b1, b2)
  return np.stack([b1, b2, b3], axis=-1)


def matrix_to_axis_angle(m: np.ndarray) -> np.ndarray:
  """[..., 3, 3] rotation matrices -> [..., 3] axis-angle."""
  shape = m.shape[:-2]
  return Rotation.from_matrix(m.reshape(-1, 3, 3)).as_rotvec().reshape(shape + (3,))


def _to_numpy(v: Any, name: str, path: pathlib.Path) -> np.ndarray:
  if hasattr(v, "detach"):  # torch tensor
    v = v.detach().cpu().numpy()
  try:
    a = np.asarray(v, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise PoseFileError(f"{path}: field {name!r} is not numeric ({type(v).__name__}).") from e
  if not np.all(np.isfinite(a)):
    raise PoseFileError(f"{path}: field {name!r} contains NaN or inf.")
  return a


def phrase_from_name(stem: str) -> str:
  """'riding_a_bike_3_smpl' -> 'riding a bike'."""
  s = stem[:-5] if stem.endswith("_smpl") else stem
  head, _, tail = s.rpartition("_")
  if head and tail.isdigit():
    s = head
  return s.replace("_", " ").strip()


def read_official_smpl_npy(path: pathlib.Path) -> dict:
  """One official ``{name}_smpl.npy`` -> dict(body_pose [63], global_orient [3], betas [B])."""
  try:
    obj = np.load(path, allow_pickle=True)
  except ModuleNotFoundError as e:
    raise PoseFileError(f"{path}: holds pickled objects from module {e.name!r}; install it "
                        "(torch tensors need `pip install torch==2.13.0`).") from e
  except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
    raise PoseFileError(f"{path}: cannot be read by np.load ({e}).") from e
  if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
    obj = obj.item()
  if not isinstance(obj, dict):
    raise PoseFileError(f"{path}: expected a pickled dict(betas, pose, orient, trans) as "
                        f"written by the official estimate.py, got {type(obj).__name__}.")
  missing = [k for k in ("pose", "orient") if k not in obj]
  if missing:
    raise PoseFileError(f"{path}: missing fields {missing}; the official format has "
                        "betas, pose (6D), orient (6D), trans.")
  pose = _to_numpy(obj["pose"], "pose", path)
  orient = _to_numpy(obj["orient"], "orient", path)
  if pose.size % 6 or pose.size // 6 not in (21, 23):
    raise PoseFileError(f"{path}: pose has {pose.size} numbers (shape {pose.shape}); "
                        "expected 21 joints x 6D rotation = 126 (SMPL-X body).")
  if orient.size != 6:
    raise PoseFileError(f"{path}: orient has {orient.size} numbers; expected one 6D rotation.")
  aa = matrix_to_axis_angle(rot6d_to_matrix(pose.reshape(-1, 6)))[:21].reshape(63)
  go = matrix_to_axis_angle(rot6d_to_matrix(orient.reshape(1, 6)))[0]
  betas = _to_numpy(obj.get("betas", np.zeros(0)), "betas", path).reshape(-1)
  return dict(body_pose=aa, global_orient=go, betas=betas)


def read_amass_npz(path: pathlib.Path, stride: int = 1) -> dict:
  """AMASS-style .npz -> dict(body_pose [T,63], global_orient [T,3], betas [B])."""
  try:
    z = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise PoseFileError(f"{path}: cannot be read as an .npz ({e}).") from e
  with z:
    if "pose_body" in z.files:
      body = _to_numpy(z["pose_body"], "pose_body", path)
      if body.ndim != 2 or body.shape[1] != 63:
        raise PoseFileError(f"{path}: pose_body has shape {body.shape}; expected [T, 63].")
      orient = (_to_numpy(z["root_orient"], "root_orient", path) if "root_orient" in z.files
                else np.zeros((body.shape[0], 3)))
    elif "poses" in z.files:
      p = _to_numpy(z["poses"], "poses", path)
      if p.ndim != 2 or p.shape[1] < 66:
        raise PoseFileError(f"{path}: poses has shape {p.shape}; expected [T, >= 66] "
                            "(root orient 3 + 21 body joints x 3 + ...).")
      body, orient = p[:, 3:66], p[:, :3]
    else:
      raise PoseFileError(f"{path}: no 'poses' or 'pose_body' array (keys: {z.files}); "
                          "not an AMASS-style file.")
    betas = (_to_numpy(z["betas"], "betas", path).reshape(-1) if "betas" in z.files
             else np.zeros(0))
  if orient.shape != (body.shape[0], 3):
    raise PoseFileError(f"{path}: root_orient has shape {orient.shape}; expected "
                        f"[{body.shape[0]}, 3].")
  if body.shape[0] == 0:
    raise PoseFileError(f"{path}: has no frames.")
  return dict(body_pose=body[::stride], global_orient=orient[::stride], betas=betas)


def _files(inputs: Iterable[str]) -> list[pathlib.Path]:
  out = []
  for s in inputs:
    p = pathlib.Path(s)
    if p.is_dir():
      out += sorted(q for q in p.rglob("*") if q.name.endswith(("_smpl.npy", ".npz")))
    elif p.is_file():
      out.append(p)
    else:
      raise FileNotFoundError(f"Input {s!r} does not exist.")
  if not out:
    raise FileNotFoundError(f"No *_smpl.npy or .npz pose files under {list(inputs)}.")
  return out


def import_poses(inputs: Iterable[str], *, stride: int = 1, phrase: str = "",
                 skip_bad: bool = False, num_betas: int = 10,
                 keep_orient: bool = False) -> poseset.PoseSet:
  """Reads every input file into one PoseSet (see module docstring).

  Args:
    keep_orient: keep each file's root orientation in ``global_orient``;
      False (the official behaviour): ``global_orient`` is all zeros.
  """
  bp, go, be, ph, src = [], [], [], [], []
  for f in _files(inputs):
    try:
      if f.name.endswith(".npy"):
        d = read_official_smpl_npy(f)
        d = {k: v[None] if k != "betas" else v for k, v in d.items()}
        name = phrase or phrase_from_name(f.stem)
      elif f.suffix == ".npz":
        d = read_amass_npz(f, stride)
        name = phrase or f.parent.name.replace("_", " ")
      else:
        raise PoseFileError(f"{f}: unknown file type (expected *_smpl.npy or .npz).")
    except PoseFileError as e:
      if skip_bad:
        print(f"skipping: {e}", file=sys.stderr)
        continue
      raise
    n = d["body_pose"].shape[0]
    b = np.zeros(num_betas)
    b[:min(num_betas, d["betas"].size)] = d["betas"][:num_betas]
    bp.append(d["body_pose"])
    go.append(d["global_orient"] if keep_orient else np.zeros_like(d["global_orient"]))
    be.append(np.repeat(b[None], n, 0))
    ph += [name] * n
    src += [str(f)] * n
  if not bp:
    raise PoseFileError("No valid pose files were read.")
  return poseset.make_pose_set(np.concatenate(bp), np.concatenate(go), np.concatenate(be),
                               ph, src)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("inputs", nargs="+")
  p.add_argument("--out", required=True)
  p.add_argument("--stride", type=int, default=1, help="AMASS frame subsampling")
  p.add_argument("--phrase", default="", help="phrase for every pose (default: from names)")
  p.add_argument("--skip_bad", action="store_true", help="skip malformed files")
  p.add_argument("--keep_orient", action="store_true",
                 help="keep the files' root orientation (default: dropped, upright, as official)")
  a = p.parse_args(argv)
  ps = import_poses(a.inputs, stride=a.stride, phrase=a.phrase, skip_bad=a.skip_bad,
                    keep_orient=a.keep_orient)
  poseset.save_pose_set(a.out, ps)
  print(f"wrote {a.out}: {len(ps)} poses, {len(set(ps.phrase.tolist()))} phrases")
  return 0


if __name__ == "__main__":
  sys.exit(main())
