"""SMPL / SMPL-X body-model files -> a frozen ``BodyModel`` pytree (NumPy).

Reads the formats users already have, with the same keys the ``smplx``
package reads:

* SMPL-X ``.npz`` (``np.load``) and ``.pkl`` (plain pickle);
* SMPL ``.pkl`` whose arrays are ``chumpy`` objects and whose
  ``J_regressor`` is a ``scipy.sparse`` matrix. chumpy is NOT needed: a
  custom ``Unpickler`` maps every ``chumpy`` class to a stub whose state
  holds the array (chumpy keeps it under ``x``).

The free default body (``interfusion_jax/assets/default_body.npz``) is an
SMPL-X-layout ``.npz`` and goes through the very same code path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import pickle
from typing import Any, Mapping

import flax.struct
import numpy as np

ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"
DEFAULT_BODY_PATH = ASSETS_DIR / "default_body.npz"

NUM_BODY_JOINTS = 21          # SMPL-X body joints besides the root.
NUM_HAND_JOINTS = 15
HEAD_JOINT = 15               # PAPER.md Eq. 3: the head camera aims here.
_REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor",
                  "weights", "kintree_table", "f")


class BodyModelError(ValueError):
  """A body-model file is malformed."""


class BodyModelNotFoundError(FileNotFoundError):
  """A body-model file does not exist where the config says it is."""


@flax.struct.dataclass
class BodyModel:
  """A linear-blend-skinned body model (SMPL or SMPL-X layout).

  Attributes (V vertices, J joints, B shape coefficients, P = 9 (J - 1)):
    v_template: [V, 3] rest template (y-up, metres).
    shapedirs: [V, 3, B] shape blendshapes.
    posedirs: [P, 3 V] pose-corrective blendshapes (smplx's layout); P = 0
      when the file has none (the default body).
    j_regressor: [J, V] joint regressor.
    lbs_weights: [V, J] skinning weights.
    hands_mean: [90] left then right hand mean pose (zeros if absent).
    faces: [F, 3] int32 triangles.
    parents: static tuple of J parent indices (parents[0] = -1).
    kind: static "smplx" (55 joints) or "smpl" (24 joints).
  """
  v_template: np.ndarray
  shapedirs: np.ndarray
  posedirs: np.ndarray
  j_regressor: np.ndarray
  lbs_weights: np.ndarray
  hands_mean: np.ndarray
  faces: np.ndarray
  parents: tuple[int, ...] = flax.struct.field(pytree_node=False)
  kind: str = flax.struct.field(pytree_node=False, default="smplx")

  @property
  def num_joints(self) -> int:
    return len(self.parents)

  @property
  def num_betas(self) -> int:
    return int(self.shapedirs.shape[-1])


# --- chumpy-free unpickling. ---------------------------------------------


class _ChumpyStub:
  """Stands in for any chumpy class; keeps the pickled state."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    self.__dict__["_state"] = {}

  def __setstate__(self, state):
    if isinstance(state, tuple):  # (dict, slots) form.
      state = {k: v for part in state if isinstance(part, dict)
               for k, v in part.items()}
    self.__dict__["_state"] = dict(state)

  def to_numpy(self) -> np.ndarray:
    state = self.__dict__.get("_state", {})
    for key in ("x", "a", "r"):
      if key in state:
        return _to_numpy(state[key])
    raise BodyModelError(
        "This SMPL .pkl holds a chumpy expression (keys "
        f"{sorted(state)}) that is not a plain chumpy array; convert the file "
        "with chumpy installed (np.array(value)) or use an SMPL-X .npz.")


class _ChumpyFreeUnpickler(pickle.Unpickler):
  """Maps chumpy classes to ``_ChumpyStub``; everything else is normal."""

  def find_class(self, module: str, name: str) -> Any:
    if module == "chumpy" or module.startswith("chumpy."):
      return _ChumpyStub
    return super().find_class(module, name)


def _to_numpy(value: Any) -> np.ndarray:
  """chumpy stub / scipy.sparse / array-like -> ndarray."""
  if isinstance(value, _ChumpyStub):
    return value.to_numpy()
  if hasattr(value, "toarray") and "scipy.sparse" in str(type(value)):
    return np.asarray(value.toarray())
  return np.asarray(value)


def _read_raw(path: pathlib.Path) -> Mapping[str, Any]:
  """Reads the raw key -> value mapping of an .npz or .pkl body file."""
  suffix = path.suffix.lower()
  if suffix == ".npz":
    with np.load(path, allow_pickle=True) as data:
      return {k: data[k] for k in data.files}
  if suffix == ".pkl":
    with open(path, "rb") as f:
      data = _ChumpyFreeUnpickler(f, encoding="latin1").load()
    if not isinstance(data, dict):
      raise BodyModelError(f"{path}: expected a pickled dict, got {type(data).__name__}.")
    return data
  raise BodyModelError(
      f"{path}: unknown body-model extension {suffix!r}; use an SMPL-X .npz / "
      ".pkl or an SMPL .pkl.")


# --- Loading. -------------------------------------------------------------


def body_model_from_arrays(raw: Mapping[str, Any], *, name: str = "<arrays>") -> BodyModel:
  """Builds a ``BodyModel`` from smplx-style keys (see module docstring).

  Args:
    raw: mapping with v_template [V,3], shapedirs [V,3,B], posedirs [V,3,P],
      J_regressor [J,V], weights [V,J], kintree_table [2,J], f [F,3] and
      optionally hands_meanl / hands_meanr [45].
    name: file name used in error messages.
  Returns:
    BodyModel with float32 arrays.
  """
  missing = [k for k in _REQUIRED_KEYS if k not in raw]
  if missing:
    raise BodyModelError(
        f"{name}: missing keys {missing}; an SMPL/SMPL-X model needs "
        f"{list(_REQUIRED_KEYS)}.")
  arr = {k: _to_numpy(raw[k]) for k in _REQUIRED_KEYS}
  v_template = arr["v_template"].astype(np.float32)
  num_verts = v_template.shape[0]
  parents = tuple(int(p) for p in np.asarray(arr["kintree_table"])[0])
  num_joints = len(parents)
  parents = (-1,) + parents[1:]
  if num_joints == 55:
    kind = "smplx"
  elif num_joints == 24:
    kind = "smpl"
  else:
    raise BodyModelError(
        f"{name}: {num_joints} joints; expected 55 (SMPL-X) or 24 (SMPL).")
  shapedirs = arr["shapedirs"].astype(np.float32)
  if shapedirs.ndim == 2:
    shapedirs = shapedirs[:, :, None]
  if kind == "smplx":
    # smplx: the first 10 (or 300) components are shape; the rest expression.
    num_shape = 300 if shapedirs.shape[-1] >= 400 else min(10, shapedirs.shape[-1])
  else:
    num_shape = min(10, shapedirs.shape[-1]) if shapedirs.shape[-1] < 300 else 300
  shapedirs = shapedirs[:, :, :num_shape]
  posedirs = arr["posedirs"].astype(np.float32)
  if posedirs.shape[-1] == 0:                              # no pose correctives
    posedirs = np.zeros((0, 3 * num_verts), np.float32)
  else:
    posedirs = posedirs.reshape(-1, posedirs.shape[-1]).T  # [P, 3V]
  j_regressor = arr["J_regressor"].astype(np.float32)
  weights = arr["weights"].astype(np.float32)
  faces = arr["f"].astype(np.int64)
  expect = {
      "shapedirs": (shapedirs.shape[:2], (num_verts, 3)),
      "posedirs": (posedirs.shape, ((9 * (num_joints - 1) if posedirs.shape[0] else 0),
                                    3 * num_verts)),
      "J_regressor": (j_regressor.shape, (num_joints, num_verts)),
      "weights": (weights.shape, (num_verts, num_joints)),
  }
  for key, (got, want) in expect.items():
    if tuple(got) != tuple(want):
      raise BodyModelError(f"{name}: {key} has shape {tuple(got)}, expected {want}.")
  if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= num_verts:
    raise BodyModelError(f"{name}: faces must be [F, 3] indices into {num_verts} vertices.")
  hands = []
  for key in ("hands_meanl", "hands_meanr"):
    value = raw.get(key) if hasattr(raw, "get") else None
    hands.append(np.zeros(45, np.float32) if value is None
                 else _to_numpy(value).astype(np.float32).reshape(45))
  return BodyModel(
      v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
      j_regressor=j_regressor, lbs_weights=weights,
      hands_mean=np.concatenate(hands), faces=faces.astype(np.int32),
      parents=parents, kind=kind)


def resolve_body_model_path(model: str, gender: str = "neutral") -> pathlib.Path:
  """config.body.model -> the file to load.

  Args:
    model: "default", a file (.npz / .pkl) or a directory holding
      SMPLX_{GENDER}.npz|pkl (smplx's naming; also smplx/ sub-folder).
    gender: neutral | male | female (only used for directories).
  Returns:
    an existing path.
  Raises:
    BodyModelNotFoundError naming the expected path(s).
  """
  if model in ("", "default"):
    path = DEFAULT_BODY_PATH
    if not path.exists():
      raise BodyModelNotFoundError(
          f"The default body {path} is missing from the package; reinstall "
          "interfusion_jax or rebuild it with tools/export_default_body.py.")
    return path
  path = pathlib.Path(os.path.expanduser(model))
  if path.is_dir():
    stem = f"SMPLX_{gender.upper()}"
    candidates = [path / sub / f"{stem}.{ext}" for sub in ("", "smplx")
                  for ext in ("npz", "pkl")]
    for c in candidates:
      if c.exists():
        return c
    raise BodyModelNotFoundError(
        f"config.body.model = {model!r} is a directory but none of "
        f"{[str(c) for c in candidates]} exists. Put the SMPL-X files there "
        "as explained in WORKSPACE.md (section 'Body models'), or use "
        "config.body.model=default.")
  if not path.exists():
    raise BodyModelNotFoundError(
        f"Body-model file {str(path)!r} (config.body.model) does not exist. "
        "Download SMPL-X (e.g. SMPLX_NEUTRAL.npz) and place it as explained "
        "in WORKSPACE.md (section 'Body models'), or use "
        "config.body.model=default for the free built-in body.")
  return path


def load_body_model(model: str | os.PathLike = "default", gender: str = "neutral") -> BodyModel:
  """Loads a body model (see ``resolve_body_model_path`` for ``model``)."""
  path = resolve_body_model_path(str(model), gender)
  return body_model_from_arrays(_read_raw(path), name=str(path))


def body_model_digest(body: BodyModel) -> str:
  """sha256 hex digest of all arrays and static fields (cache keys)."""
  h = hashlib.sha256()
  h.update(repr((body.parents, body.kind)).encode())
  for f in dataclasses.fields(body):
    value = getattr(body, f.name)
    if isinstance(value, np.ndarray):
      h.update(f.name.encode())
      h.update(str(value.shape).encode())
      h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()
