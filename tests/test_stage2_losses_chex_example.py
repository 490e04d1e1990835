"""The worked example of docs/testing.md: a chex test for a new loss term.

A user adds a loss term (here an overlap penalty between the two fields'
occupancies, written like the terms of stage2/losses.py) and tests it the way
the loss tests do: a NumPy reference, a gradient check, and chex.variants so
the same assertions run jitted, eagerly, with device-placed inputs and
pmapped over the 4 forced host devices of tests/conftest.py.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.stage2 import losses


def overlap_loss(sigma_h: jax.Array, sigma_o: jax.Array, *, delta: float = 0.2,
                 reduction: str = "mean") -> jax.Array:
  """Overlap of the human and object occupancies: ``reduce(alpha_H * alpha_O)``.

  Args:
    sigma_h, sigma_o: densities of the two fields at the same points, ``[N]``.
    delta: occupancy scale of ``losses.nerf_occupancy``.
    reduction: "mean" or "sum".

  Returns:
    A scalar.
  """
  prod = losses.nerf_occupancy(sigma_h, delta) * losses.nerf_occupancy(sigma_o, delta)
  if reduction == "mean":
    return jnp.mean(prod)
  if reduction == "sum":
    return jnp.sum(prod)
  raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


def _np_overlap(sigma_h, sigma_o, delta=0.2):
  """Independent NumPy reference (float64)."""
  a_h = np.clip(1 - np.exp(-delta * np.float64(sigma_h)), 0, 1.1)
  a_o = np.clip(1 - np.exp(-delta * np.float64(sigma_o)), 0, 1.1)
  return np.mean(a_h * a_o)


def _inputs(n=64, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.gamma(1.0, 5.0, n).astype(np.float32),
          rng.gamma(1.0, 5.0, n).astype(np.float32))


class OverlapLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_device=True, with_pmap=True)
  def test_value_matches_numpy(self):
    sigma_h, sigma_o = _inputs()
    loss = self.variant(overlap_loss)
    out = loss(sigma_h, sigma_o)
    chex.assert_shape(out, ())              # a scalar loss
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out, _np_overlap(sigma_h, sigma_o), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True, with_device=True, with_pmap=True)
  def test_gradient_matches_finite_differences(self):
    sigma_h, sigma_o = _inputs(n=8, seed=1)
    # Static (non-array) arguments are bound with functools.partial: the pmap
    # variant broadcasts every argument it is given to the devices.
    loss = self.variant(functools.partial(overlap_loss, reduction="sum"))
    g = jax.grad(loss)(jnp.asarray(sigma_h), jnp.asarray(sigma_o))
    chex.assert_shape(g, sigma_h.shape)
    chex.assert_tree_all_finite(g)
    eps = 1e-3
    for i in range(sigma_h.size):
      hi, lo = sigma_h.astype(np.float64).copy(), sigma_h.astype(np.float64).copy()
      hi[i] += eps
      lo[i] -= eps
      fd = (_np_overlap(hi, sigma_o) - _np_overlap(lo, sigma_o)) * sigma_h.size / (2 * eps)
      np.testing.assert_allclose(g[i], fd, rtol=1e-3, atol=1e-6)

  def test_bad_reduction_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "reduction"):
      overlap_loss(jnp.ones(3), jnp.ones(3), reduction="max")
