"""Neural field psi: hash grid -> MLPs -> density (+ bias, activation), albedo.

PAPER.md "Official field ... defaults" (threestudio ``implicit-volume``):
scene box [-r, r]^3 with r = 2, the hash grid of ``hashgrid.py``, two
bias-free MLPs (64 wide, 1 hidden ReLU layer), one for the raw density and one
for the 3 albedo features; density = softplus(raw + blob bias) with the
``blob_magic3d`` bias 10 (1 - |x| / 0.5); albedo = sigmoid(features);
normals are the normalised negative density gradient (analytic) or central
finite differences.

Both the human (H-NeRF) and the object (O-NeRF) fields use this module.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.nerf import hashgrid

Params = dict[str, Any]

DENSITY_BIASES = ("blob_magic3d", "blob_dreamfusion", "none")
DENSITY_ACTIVATIONS = ("softplus", "exp", "relu")
NORMAL_MODES = ("analytic", "finite_difference")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class FieldConfigError(ValueError):
  """A field setting is invalid."""


def _choice(name: str, value: str, allowed) -> None:
  if value not in allowed:
    raise FieldConfigError(
        f"FieldSpec.{name} = {value!r}: unknown value; choose one of "
        f"{list(allowed)} (config.field.{name}).")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
  """Static field settings (hashable; safe as a jit static argument)."""
  grid: hashgrid.HashGridSpec = hashgrid.HashGridSpec()
  radius: float = 2.0
  mlp_width: int = 64
  mlp_hidden_layers: int = 1
  density_bias: str = "blob_magic3d"
  blob_scale: float = 10.0
  blob_std: float = 0.5
  density_activation: str = "softplus"
  normals: str = "analytic"
  fd_eps: float = 0.01
  compute_dtype: str = "float32"

  def __post_init__(self):
    _choice("density_bias", self.density_bias, DENSITY_BIASES)
    _choice("density_activation", self.density_activation, DENSITY_ACTIVATIONS)
    _choice("normals", self.normals, NORMAL_MODES)
    _choice("compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))
    if not self.radius > 0:
      raise FieldConfigError(
          f"FieldSpec.radius = {self.radius!r}: must be positive (config.field.radius).")
    if not self.fd_eps > 0:
      raise FieldConfigError(
          f"FieldSpec.fd_eps = {self.fd_eps!r}: must be positive (config.field.fd_eps).")
    if self.mlp_width < 1 or self.mlp_hidden_layers < 0:
      raise FieldConfigError(
          f"FieldSpec mlp_width = {self.mlp_width}, mlp_hidden_layers = "
          f"{self.mlp_hidden_layers}: need width >= 1 and hidden layers >= 0.")
    if self.density_bias != "none" and not self.blob_std > 0:
      raise FieldConfigError(
          f"FieldSpec.blob_std = {self.blob_std!r}: must be positive "
          "(config.field.density_blob_std).")


# --------------------------------------------------------------------------
# MLP.
# --------------------------------------------------------------------------

def init_mlp(key: jax.Array, d_in: int, width: int, hidden_layers: int,
             d_out: int) -> tuple[jax.Array, ...]:
  """Bias-free MLP weights (threestudio VanillaMLP, torch Linear init).

  Returns:
    A tuple of ``hidden_layers + 1`` matrices: [d_in, width], [width, width]...,
    [width, d_out]; entries ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  dims = [d_in] + [width] * hidden_layers + [d_out]
  keys = jax.random.split(key, len(dims) - 1)
  return tuple(
      jax.random.uniform(k, (a, b), jnp.float32, -1.0 / np.sqrt(a), 1.0 / np.sqrt(a))
      for k, a, b in zip(keys, dims[:-1], dims[1:]))


def mlp_apply(weights: tuple[jax.Array, ...], h: jax.Array,
              compute_dtype: str = "float32") -> jax.Array:
  """ReLU MLP without biases; linear output.

  Args:
    weights: from ``init_mlp``.
    h: [N, d_in].
    compute_dtype: "float32" or "bfloat16" (matmuls; the output is float32).

  Returns:
    [N, d_out] float32.
  """
  dt = COMPUTE_DTYPES[compute_dtype]
  h = h.astype(dt)
  for i, w in enumerate(weights):
    h = jnp.dot(h, w.astype(dt), preferred_element_type=jnp.float32)
    if i < len(weights) - 1:
      h = jax.nn.relu(h).astype(dt)
  return h.astype(jnp.float32)


# --------------------------------------------------------------------------
# Field.
# --------------------------------------------------------------------------

def init_field(key: jax.Array, spec: FieldSpec) -> Params:
  """Initialises a field.

  Returns:
    ``{"grid": {"table": [rows, F]}, "density_mlp": (W...), "albedo_mlp": (W...)}``
    with the density MLP mapping [L*F] -> 1 and the albedo MLP [L*F] -> 3.
  """
  kg, kd, ka = jax.random.split(key, 3)
  d_in = spec.grid.output_dim
  return {
      "grid": hashgrid.init_hashgrid(kg, spec.grid),
      "density_mlp": init_mlp(kd, d_in, spec.mlp_width, spec.mlp_hidden_layers, 1),
      "albedo_mlp": init_mlp(ka, d_in, spec.mlp_width, spec.mlp_hidden_layers, 3),
  }


def normalize_points(x: jax.Array, radius: float) -> jax.Array:
  """World coordinates in [-r, r]^3 -> [0, 1]^3 (unclamped): [..., 3]."""
  return (x + radius) / (2.0 * radius)


def density_bias(x: jax.Array, spec: FieldSpec) -> jax.Array:
  """Density bias at world points (threestudio ``density_bias``).

  blob_magic3d: scale * (1 - |x| / std); blob_dreamfusion:
  scale * exp(-|x|^2 / (2 std^2)); none: 0.

  Args:
    x: [N, 3] world coordinates.

  Returns:
    [N] float32.
  """
  x = x.astype(jnp.float32)
  if spec.density_bias == "blob_magic3d":
    return spec.blob_scale * (1.0 - jnp.sqrt(jnp.sum(x * x, axis=-1)) / spec.blob_std)
  if spec.density_bias == "blob_dreamfusion":
    return spec.blob_scale * jnp.exp(-jnp.sum(x * x, axis=-1) / (2.0 * spec.blob_std**2))
  return jnp.zeros(x.shape[:-1], jnp.float32)


def density_activation(raw: jax.Array, spec: FieldSpec) -> jax.Array:
  """sigma = act(raw): softplus | exp | relu. [N] -> [N]."""
  if spec.density_activation == "softplus":
    return jax.nn.softplus(raw)
  if spec.density_activation == "exp":
    return jnp.exp(jnp.minimum(raw, 15.0))  # threestudio trunc_exp clamps at 15
  return jax.nn.relu(raw)


def _check_points(x: jax.Array) -> None:
  if x.ndim != 2 or x.shape[-1] != 3:
    raise ValueError(
        f"field functions expect world points of shape [N, 3], got {x.shape}; "
        "flatten batch dimensions first (x.reshape(-1, 3)).")


def _encode(params: Params, x: jax.Array, spec: FieldSpec) -> jax.Array:
  """[N, 3] world -> [N, L*F] hash features."""
  _check_points(x)
  return hashgrid.hash_encode(params["grid"], normalize_points(x, spec.radius),
                              spec.grid)


def blob_frame(params: Params, x: jax.Array) -> jax.Array:
  """Points relative to the field's blob centre: [N, 3] -> [N, 3].

  A field may carry an untrained ``params["blob_center"]`` [3] (its gradient is
  stopped, so Adam leaves it unchanged): the density bias is then centred
  there instead of at the origin. Without it (the official setting) this is x.
  """
  if "blob_center" not in params:
    return x
  return x - jax.lax.stop_gradient(params["blob_center"]).astype(x.dtype)


def with_blob_center(params: Params, center) -> Params:
  """A copy of ``params`` whose density blob is centred at ``center`` [3]."""
  return dict(params, blob_center=jnp.asarray(center, jnp.float32).reshape(3))


def _sigma(params: Params, feats: jax.Array, x: jax.Array, spec: FieldSpec
           ) -> jax.Array:
  raw = mlp_apply(params["density_mlp"], feats, spec.compute_dtype)[:, 0]
  return density_activation(raw + density_bias(blob_frame(params, x), spec), spec)


def field_density(params: Params, x: jax.Array, spec: FieldSpec) -> jax.Array:
  """Density sigma = act(raw + bias) at world points: [N, 3] -> [N] float32."""
  return _sigma(params, _encode(params, x, spec), x, spec)


def field_forward(params: Params, x: jax.Array, spec: FieldSpec
                  ) -> tuple[jax.Array, jax.Array]:
  """Density and albedo at world points.

  Args:
    params: from ``init_field``.
    x: [N, 3] world coordinates (outside the box: clamped into the grid).

  Returns:
    (sigma [N], albedo [N, 3] = sigmoid(albedo MLP)), float32.
  """
  feats = _encode(params, x, spec)
  albedo = jax.nn.sigmoid(mlp_apply(params["albedo_mlp"], feats, spec.compute_dtype))
  return _sigma(params, feats, x, spec), albedo


def _safe_normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
  return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), eps**2))


def normals_from_gradient(grad_sigma: jax.Array) -> jax.Array:
  """n = -grad sigma / |grad sigma|: [N, 3] -> [N, 3]."""
  return _safe_normalize(-grad_sigma)


def finite_difference_gradient(params: Params, x: jax.Array, spec: FieldSpec
                               ) -> jax.Array:
  """Central differences (sigma(x + e_d eps) - sigma(x - e_d eps)) / (2 eps).

  Args:
    x: [N, 3] world points.

  Returns:
    [N, 3] approximate density gradient.
  """
  n = x.shape[0]
  offs = spec.fd_eps * jnp.concatenate([jnp.eye(3), -jnp.eye(3)])  # [6, 3]
  pts = (x[:, None, :] + offs[None]).reshape(-1, 3)
  s = field_density(params, pts, spec).reshape(n, 6)
  return (s[:, :3] - s[:, 3:]) / (2.0 * spec.fd_eps)


def field_forward_with_normals(params: Params, x: jax.Array, spec: FieldSpec
                               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Density, albedo and normals at world points.

  Analytic normals use one ``jax.vjp`` pass through the field (differentiable
  again, e.g. for the orientation loss); ``finite_difference`` uses central
  differences with ``spec.fd_eps`` (6 extra density evaluations per point).

  Args:
    x: [N, 3] world coordinates.

  Returns:
    (sigma [N], albedo [N, 3], normals [N, 3] unit, pointing out of the
    density, i.e. along -grad sigma).
  """
  _check_points(x)
  if spec.normals == "analytic":
    (sigma, albedo), vjp = jax.vjp(lambda p: field_forward(params, p, spec), x)
    (grad,) = vjp((jnp.ones_like(sigma), jnp.zeros_like(albedo)))
  else:
    sigma, albedo = field_forward(params, x, spec)
    grad = finite_difference_gradient(params, x, spec)
  return sigma, albedo, normals_from_gradient(grad)
