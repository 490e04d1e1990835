"""The field / background binding: psi_H, psi_O and their two backgrounds behind one interface.

``bind(field_spec, background_spec) -> ModelFns`` closes the pure functions of
``nerf.field`` and ``nerf.background`` over their static specs, so the
renderer and the training step only see:

* ``field(params, x [M, 3]) -> (sigma [M], albedo [M, 3], normals [M, 3])``;
* ``density(params, x [M, 3]) -> sigma [M]``;
* ``background(params, dirs [R, 3]) -> rgb [R, 3]``;
* ``init(key) -> {"human", "object", "bg_human", "bg_object"}`` parameters.

Tests substitute closed-form fields behind the same ``ModelFns``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax

from interfusion_jax.nerf import background as bg_lib
from interfusion_jax.nerf import field as field_lib

PARAM_GROUPS = ("human", "object", "bg_human", "bg_object")


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """Static (hashable) callables of the two fields and their backgrounds (see module doc)."""
  field: Callable[..., Any]
  density: Callable[..., Any]
  background: Callable[..., Any]
  init: Callable[..., Any]


@functools.lru_cache(maxsize=None)
def bind(fspec: field_lib.FieldSpec, bspec: bg_lib.BackgroundSpec) -> ModelFns:
  """ModelFns of the hash-grid field ``fspec`` and the background ``bspec`` (memoised)."""

  def field(params, x):
    return field_lib.field_forward_with_normals(params, x, fspec)

  def density(params, x):
    return field_lib.field_density(params, x, fspec)

  def background(params, dirs):
    return bg_lib.background_color(params, dirs, bspec)

  def init(key):
    kh, ko, kbh, kbo = jax.random.split(key, 4)
    return {"human": field_lib.init_field(kh, fspec), "object": field_lib.init_field(ko, fspec),
            "bg_human": bg_lib.init_background(kbh, bspec),
            "bg_object": bg_lib.init_background(kbo, bspec)}

  return ModelFns(field=field, density=density, background=background, init=init)


def with_blob_centers(params: dict, object_origin: jax.Array) -> dict:
  """Both fields with a ``blob_center`` leaf: psi_O's at ``object_origin`` [3], psi_H's at 0.

  (field.with_blob_center; the human's is only there so that both fields'
  trees match and can be stacked.)
  """
  return dict(params,
              human=field_lib.with_blob_center(params["human"], jax.numpy.zeros(3)),
              object=field_lib.with_blob_center(params["object"], object_origin))
