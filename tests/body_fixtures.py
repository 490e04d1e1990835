"""Tiny synthetic SMPL / SMPL-X models in the real on-disk formats (tests only)."""
from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import scipy.sparse

SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                 17, 18, 19, 15, 15, 15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20,
                 34, 35, 20, 37, 38, 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49,
                 50, 21, 52, 53]
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21]


def random_model_arrays(seed: int, num_joints: int, num_verts: int = 64,
                        num_shape: int = 20) -> dict:
  """smplx-style keys with random values and the right shapes."""
  rng = np.random.default_rng(seed)
  parents = SMPLX_PARENTS if num_joints == 55 else SMPL_PARENTS
  kintree = np.zeros((2, num_joints), np.int64)
  kintree[0] = parents
  kintree[0, 0] = 4294967295   # what real files store for the root
  kintree[1] = np.arange(num_joints)
  jreg = rng.random((num_joints, num_verts))
  jreg /= jreg.sum(1, keepdims=True)
  logits = rng.normal(size=(num_verts, num_joints)) * 3
  weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  out = dict(
      v_template=rng.normal(size=(num_verts, 3)) * 0.3,
      shapedirs=rng.normal(size=(num_verts, 3, num_shape)) * 0.01,
      posedirs=rng.normal(size=(num_verts, 3, 9 * (num_joints - 1))) * 0.01,
      J_regressor=jreg, weights=weights, kintree_table=kintree,
      f=rng.integers(0, num_verts, size=(2 * num_verts, 3)).astype(np.uint32),
  )
  if num_joints == 55:
    out.update(
        hands_meanl=rng.normal(size=45) * 0.2, hands_meanr=rng.normal(size=45) * 0.2,
        hands_componentsl=rng.normal(size=(45, 45)),
        hands_componentsr=rng.normal(size=(45, 45)),
        lmk_faces_idx=np.arange(4, dtype=np.int64),
        lmk_bary_coords=np.full((4, 3), 1 / 3),
    )
  return out


def write_chumpy_smpl_pkl(path, arrays: dict) -> None:
  """Writes an SMPL .pkl the way the official files are: chumpy arrays and a
  scipy.sparse J_regressor. A throw-away fake ``chumpy`` module is registered
  only while pickling, so the file references ``chumpy.ch.Ch``."""
  chumpy = types.ModuleType("chumpy")
  ch = types.ModuleType("chumpy.ch")

  class Ch:   # state layout of chumpy.ch.Ch.__getstate__: x plus bookkeeping
    def __init__(self, x):
      self.x = x
      self.label = None

  Ch.__module__ = "chumpy.ch"
  Ch.__qualname__ = "Ch"
  ch.Ch = Ch
  chumpy.ch = ch
  saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
  sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
  try:
    data = dict(arrays)
    for k in ("v_template", "shapedirs", "posedirs", "weights"):
      data[k] = Ch(np.asarray(arrays[k]))
    data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    with open(path, "wb") as f:
      pickle.dump(data, f, protocol=2)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
