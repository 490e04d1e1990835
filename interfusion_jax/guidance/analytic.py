"""Exact optimal denoisers for simple data distributions (test backends).

For x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)) the
MMSE noise prediction is E[eps | x_t] = (x_t - a E[x0 | x_t]) / b. These
closed forms let tests check that SDS really moves images to the data
distribution (PAPER.md "Score distillation"). They ignore the prompt.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _ab(t: jax.Array, alphas_cumprod: jax.Array, ndim: int) -> tuple[jax.Array, jax.Array]:
  abar = jnp.asarray(alphas_cumprod, jnp.float32)[t]
  abar = abar.reshape(abar.shape + (1,) * (ndim - 1))
  return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def gaussian_eps(x_t: jax.Array, t: jax.Array, alphas_cumprod: jax.Array,
                 mean: jax.Array, std: jax.Array) -> jax.Array:
  """Optimal eps for data x0 ~ N(mean, diag(std^2)).

  E[eps | x_t] = b (x_t - a mean) / (a^2 std^2 + b^2).

  Args:
    x_t: [B, H, W, C] noisy images.
    t: [B] integer timesteps.
    alphas_cumprod: [T].
    mean: [H, W, C] (or broadcastable) data mean.
    std: [H, W, C] (or broadcastable / scalar) data standard deviation.

  Returns:
    [B, H, W, C] noise prediction.
  """
  a, b = _ab(t, alphas_cumprod, x_t.ndim)
  return b * (x_t - a * mean) / (jnp.square(a * std) + jnp.square(b))


def targets_eps(x_t: jax.Array, t: jax.Array, alphas_cumprod: jax.Array,
                targets: jax.Array) -> jax.Array:
  """Optimal eps for data uniform on a finite set of images {y_k}.

  Posterior weights r_k = softmax_k(-||x_t - a y_k||^2 / (2 b^2)); then
  E[x0 | x_t] = sum_k r_k y_k and eps = (x_t - a E[x0 | x_t]) / b.

  Args:
    x_t: [B, H, W, C] noisy images.
    t: [B] integer timesteps.
    alphas_cumprod: [T].
    targets: [K, H, W, C] the data set.

  Returns:
    [B, H, W, C] noise prediction.
  """
  a, b = _ab(t, alphas_cumprod, x_t.ndim)
  diff = x_t[:, None] - a[:, None] * targets[None]             # [B, K, H, W, C]
  d2 = jnp.sum(jnp.square(diff), axis=tuple(range(2, diff.ndim)))  # [B, K]
  logits = -d2 / (2.0 * jnp.square(b.reshape(-1, 1)))
  r = jax.nn.softmax(logits, axis=-1)
  x0 = jnp.einsum("bk,k...->b...", r, targets)
  return (x_t - a * x0) / b
