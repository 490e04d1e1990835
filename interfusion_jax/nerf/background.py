"""Background colour per ray direction: neural environment map, solid, white.

PAPER.md "Official field ... defaults", background row (threestudio
``neural-environment-map-background``): the unit ray direction is encoded
with real spherical harmonics (degree 3 = bands 0..2, 9 coefficients, the
tiny-cuda-nn convention), fed to a bias-free ReLU MLP (16 wide, 2 hidden
layers) and squashed with a sigmoid.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from interfusion_jax.nerf import field

Params = dict[str, Any]

KINDS = ("neural", "solid", "white")


class BackgroundConfigError(ValueError):
  """A background setting is invalid."""


@dataclasses.dataclass(frozen=True)
class BackgroundSpec:
  """Static background settings (hashable)."""
  kind: str = "neural"
  sh_degree: int = 3
  mlp_width: int = 16
  mlp_hidden_layers: int = 2
  solid_color: tuple[float, float, float] = (1.0, 1.0, 1.0)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise BackgroundConfigError(
          f"BackgroundSpec.kind = {self.kind!r}: unknown value; choose one of "
          f"{list(KINDS)} (config.background.kind).")
    if self.sh_degree not in (1, 2, 3, 4):
      raise BackgroundConfigError(
          f"BackgroundSpec.sh_degree = {self.sh_degree!r}: must be 1, 2, 3 or 4 "
          "(config.background.sh_degree).")
    if len(self.solid_color) != 3:
      raise BackgroundConfigError(
          f"BackgroundSpec.solid_color = {self.solid_color!r}: must be an RGB "
          "triple (config.background.solid_color).")

  @property
  def n_coefficients(self) -> int:
    """SH coefficients of the direction encoding: sh_degree^2."""
    return self.sh_degree**2


def sh_encode(dirs: jax.Array, degree: int) -> jax.Array:
  """Real spherical harmonics of unit directions (tiny-cuda-nn conventions).

  Args:
    dirs: [..., 3] unit vectors.
    degree: number of bands (1..4); degree 3 gives 9 coefficients.

  Returns:
    [..., degree^2] float32, orthonormal on the unit sphere.
  """
  x, y, z = (dirs[..., i].astype(jnp.float32) for i in range(3))
  out = [jnp.full_like(x, 0.28209479177387814)]
  if degree > 1:
    out += [-0.48860251190291987 * y, 0.48860251190291987 * z,
            -0.48860251190291987 * x]
  if degree > 2:
    xx, yy, zz = x * x, y * y, z * z
    out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy)]
  if degree > 3:
    xx, yy, zz = x * x, y * y, z * z
    out += [0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy)]
  return jnp.stack(out, axis=-1)


def init_background(key: jax.Array, spec: BackgroundSpec) -> Params:
  """Initialises the background.

  Returns:
    ``{"mlp": (W...)}`` mapping sh_degree^2 -> 3 for ``kind == "neural"``;
    ``{}`` for solid / white (nothing to learn).
  """
  if spec.kind != "neural":
    return {}
  return {"mlp": field.init_mlp(key, spec.n_coefficients, spec.mlp_width,
                                spec.mlp_hidden_layers, 3)}


def background_color(params: Params, dirs: jax.Array, spec: BackgroundSpec
                     ) -> jax.Array:
  """Background colour seen along ray directions.

  Args:
    params: from ``init_background``.
    dirs: [..., 3] unit ray directions (world frame).
    spec: the background.

  Returns:
    [..., 3] float32 colours in [0, 1].
  """
  if dirs.shape[-1] != 3:
    raise ValueError(f"background_color expects directions [..., 3], got {dirs.shape}.")
  batch = dirs.shape[:-1]
  if spec.kind == "white":
    return jnp.ones(batch + (3,), jnp.float32)
  if spec.kind == "solid":
    return jnp.broadcast_to(jnp.asarray(spec.solid_color, jnp.float32), batch + (3,))
  if "mlp" not in params:
    raise ValueError(
        "neural background needs params {'mlp': ...}; build them with "
        "init_background(key, spec) for kind='neural'.")
  enc = sh_encode(dirs.reshape(-1, 3), spec.sh_degree)
  rgb = jax.nn.sigmoid(field.mlp_apply(params["mlp"], enc))
  return rgb.reshape(batch + (3,))
