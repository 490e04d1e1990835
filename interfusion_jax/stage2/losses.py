"""Loss terms of PAPER.md Eq. 8: regularisers L_reg and the geometric priors.

All functions are pure and jittable; users unit-test them with chex. Shapes use
``...`` for arbitrary leading (ray / batch) axes and ``S`` for samples per ray.

* ``orient_loss``, ``sparsity_loss``, ``opaque_loss``: PAPER.md "L_reg".
* ``human_geometry_loss``: PAPER.md Eq. 4 (L_H^geo), official semantics.
* ``object_geometry_loss``: PAPER.md Eq. 7 (L_O^geo), official semantics.
* ``nerf_occupancy``: PAPER.md "NeRF occupancy", the one place the formula
  ``clamp(1 - exp(-0.2 sigma), 0, 1.1)`` is written (geometric losses, camera
  tracing, mesh export and the bar metrics all call it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Clamp of the occupancy indicator inside the cross-entropy (official: 1e-4).
CE_CLAMP = 1e-4
# Clamp of the opacity in the opaque loss (official: 1e-3).
OPAQUE_CLAMP = 1e-3
# Upper clamp of the NeRF occupancy in the geometric losses (official: 1.1).
OCC_MAX = 1.1


def orient_loss(weights: jax.Array, normals: jax.Array, dirs: jax.Array,
                opacity: jax.Array) -> jax.Array:
  """Orientation regulariser (PAPER.md "L_reg", orient; Ref-NeRF/DreamFusion).

  ``sum(stop_grad(w) * max(0, n . d)^2) / #(opacity > 0)``: penalises normals
  that face away from the camera (``d`` points from the camera into the scene).

  Args:
    weights: volume-rendering weights, ``[..., S]``.
    normals: per-sample unit normals, ``[..., S, 3]``.
    dirs: ray directions, ``[..., 3]`` (broadcast over samples) or ``[..., S, 3]``.
    opacity: accumulated opacity per ray, ``[...]``.

  Returns:
    A scalar. Zero when no ray has positive opacity.
  """
  if dirs.ndim == normals.ndim - 1:
    dirs = dirs[..., None, :]
  facing = jnp.maximum(jnp.sum(normals * dirs, axis=-1), 0.0)
  total = jnp.sum(jax.lax.stop_gradient(weights) * facing**2)
  count = jnp.sum(opacity > 0)
  return total / jnp.maximum(count, 1)


def sparsity_loss(opacity: jax.Array) -> jax.Array:
  """Sparsity regulariser (PAPER.md "L_reg"): ``mean(sqrt(opacity^2 + 0.01))``.

  Args:
    opacity: accumulated opacity, any shape ``[...]``.

  Returns:
    A scalar.
  """
  return jnp.mean(jnp.sqrt(opacity**2 + 0.01))


def opaque_loss(opacity: jax.Array) -> jax.Array:
  """Opaque regulariser (PAPER.md "L_reg"): ``BCE(o, o)``, o clamped to [1e-3, 1-1e-3].

  The binary entropy of the opacity; it pushes every ray to 0 or 1.

  Args:
    opacity: accumulated opacity, any shape ``[...]``.

  Returns:
    A scalar (the mean over elements).
  """
  o = jnp.clip(opacity, OPAQUE_CLAMP, 1.0 - OPAQUE_CLAMP)
  return -jnp.mean(o * jnp.log(o) + (1.0 - o) * jnp.log(1.0 - o))


def nerf_occupancy(sigma, delta: float = 0.2):
  """NeRF occupancy, PAPER.md "NeRF occupancy: alpha = clamp(1 - exp(-0.2 sigma), 0, 1.1)".

  ``alpha = clamp(1 - exp(-delta sigma), 0, OCC_MAX = 1.1)``. Used by L_H^geo
  (Eq. 4) and L_O^geo (Eq. 7), and thresholded at 0.5 by camera tracing, mesh
  export and the bar metrics. For ``sigma >= 0`` the clamp never binds (alpha
  lies in [0, 1)); it maps negative densities to 0.

  Args:
    sigma: densities ``[...]``. A JAX array (or tracer, Python scalar) is
      computed with ``jax.numpy``; a NumPy array with NumPy in its own dtype
      (e.g. float64 for the host-side metrics of ``evaluation.metrics``).
    delta: the pseudo step length (official 0.2).

  Returns:
    alpha, same shape and array type as ``sigma``.
  """
  xp = np if isinstance(sigma, (np.ndarray, np.generic)) else jnp
  return xp.clip(1.0 - xp.exp(-delta * sigma), 0.0, OCC_MAX)


# The name the geometric losses and the trainer used before ``nerf_occupancy``.
occupancy_from_density = nerf_occupancy


def _cross_entropy(p: jax.Array, q: jax.Array) -> jax.Array:
  """Element-wise official CE(p, q) = -[p log q' + (1-p) log(1-q')], q' = clamp(q)."""
  q = jnp.clip(q, CE_CLAMP, 1.0 - CE_CLAMP)
  return -(p * jnp.log(q) + (1.0 - p) * jnp.log(1.0 - q))


def _reduce(values: jax.Array, valid: jax.Array, reduction: str) -> jax.Array:
  if reduction == "sum":
    return jnp.sum(values * valid)
  if reduction == "mean":
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)
  raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")


def human_geometry_loss(sigma: jax.Array, inside: jax.Array, sq_dist: jax.Array, *,
                        delta: float = 0.2, eta: float = 0.4, reduction: str = "sum",
                        valid: jax.Array | None = None) -> jax.Array:
  """L_H^geo, PAPER.md Eq. 4, with the official semantics.

  Implements PAPER.md Eq. 4.

  ``CE_{p in P_in}(alpha, f(p)) + CE_{p in P_out}(alpha, f(p)) * (1 - exp(-d^2 / (2 eta^2)))``
  with ``alpha = clamp(1 - exp(-delta sigma), 0, 1.1)``, the indicator
  ``f(p) > 0.5`` clamped to [1e-4, 1 - 1e-4] inside the CE. Inside points pull
  the human occupancy up; far outside points push it down, while points near
  the anchor surface (``d`` small) are free, so detail can grow on the body.

  Args:
    sigma: human-field densities at the sample points, ``[N]`` (or any shape).
    inside: anchor occupancy at the points, bool or float in [0, 1] (``> 0.5``
      counts as inside), same shape as ``sigma``.
    sq_dist: squared distance from each point to the anchor surface, same shape.
    delta: occupancy scale (official 0.2).
    eta: proximal-surface width (official 0.4).
    reduction: ``"sum"`` (official) or ``"mean"`` (divided by the valid count).
    valid: optional mask of real (non-padding) points, same shape.

  Returns:
    A scalar.
  """
  occ = nerf_occupancy(jnp.asarray(sigma), delta)
  is_in = (jnp.asarray(inside) > 0.5).astype(occ.dtype)
  ce = _cross_entropy(occ, is_in)
  proximal = 1.0 - jnp.exp(-sq_dist / (2.0 * eta**2))
  per_point = is_in * ce + (1.0 - is_in) * ce * proximal
  v = jnp.ones_like(occ) if valid is None else jnp.asarray(valid, occ.dtype)
  return _reduce(per_point, v, reduction)


def object_geometry_loss(sigma: jax.Array, inside: jax.Array, *, delta: float = 0.2,
                         reduction: str = "sum",
                         valid: jax.Array | None = None) -> jax.Array:
  """L_O^geo, PAPER.md Eq. 7: ``CE_{p in P_in}(alpha, 1 - f(p))``, official form.

  Implements PAPER.md Eq. 7.

  At points inside the anchor body the target is forced to 0 (the clamped
  indicator 1e-4), so object occupancy there goes to 0: no interpenetration.
  Outside points do not contribute.

  Args:
    sigma: object-field densities at the sample points, ``[N]``.
    inside: anchor occupancy at the points (``> 0.5`` is inside), same shape.
    delta: occupancy scale (official 0.2).
    reduction: ``"sum"`` (official) or ``"mean"`` (divided by the valid inside count).
    valid: optional mask of real (non-padding) points, same shape.

  Returns:
    A scalar.
  """
  occ = nerf_occupancy(jnp.asarray(sigma), delta)
  is_in = (jnp.asarray(inside) > 0.5).astype(occ.dtype)
  ce = _cross_entropy(occ, jnp.zeros_like(occ))
  v = jnp.ones_like(occ) if valid is None else jnp.asarray(valid, occ.dtype)
  return _reduce(ce, v * is_in, reduction)
