"""The one triangle-mesh type of the project, and its concatenation.

``Mesh(vertices [V, 3] float32, faces [F, 3] int32, colors [V, 3] in [0, 1] or
None)``: the parametric objects and the mannequin of the built-in prior carry
no colours; meshes extracted from the fields carry vertex colours.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np


class Mesh(NamedTuple):
  """A triangle mesh: vertices [V, 3] float32, faces [F, 3] int32, colors [V, 3] or None."""
  vertices: np.ndarray
  faces: np.ndarray
  colors: Optional[np.ndarray] = None


def empty_mesh(colored: bool = True) -> Mesh:
  """A mesh with no vertices (with an empty [0, 3] colour array when ``colored``)."""
  return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32),
              np.zeros((0, 3), np.float32) if colored else None)


def concat(meshes: Sequence[Mesh]) -> Mesh:
  """Union of meshes: vertices stacked, face indices offset, colours stacked.

  Meshes without vertices are dropped. The result has colours when every
  input has them, none when no input has them.

  Raises:
    ValueError: when some inputs have colours and others do not.
  """
  meshes = [m for m in meshes if len(m.vertices)]
  if not meshes:
    return empty_mesh()
  has = [m.colors is not None for m in meshes]
  if any(has) and not all(has):
    raise ValueError("concat: some meshes have vertex colours and others do not.")
  offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
  colors = np.concatenate([m.colors for m in meshes]).astype(np.float32) if all(has) else None
  return Mesh(np.concatenate([m.vertices for m in meshes]).astype(np.float32),
              np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(np.int32),
              colors)
