"""Tests for interfusion_jax.losses against independent NumPy transcriptions."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax import losses

jax.config.update("jax_enable_x64", False)


def _np_ce(p, q):
  q = np.clip(q, 1e-4, 1 - 1e-4)
  return -(p * np.log(q) + (1 - p) * np.log(1 - q))


def _np_human(sigma, inside, d2, delta=0.2, eta=0.4):
  occ = np.clip(1 - np.exp(-delta * sigma), 0, 1.1)
  f = (inside > 0.5).astype(np.float64)
  loss = 0.0
  for o, fi, di in zip(occ, f, d2):
    if fi:
      loss += _np_ce(o, 1.0)
    else:
      loss += _np_ce(o, 0.0) * (1 - np.exp(-di / (2 * eta**2)))
  return loss


def _np_human_grad(sigma, inside, d2, delta=0.2, eta=0.4):
  f = (inside > 0.5)
  q = np.where(f, 1 - 1e-4, 1e-4)
  dce_docc = -(np.log(q) - np.log(1 - q))
  w = np.where(f, 1.0, 1 - np.exp(-d2 / (2 * eta**2)))
  return w * dce_docc * delta * np.exp(-delta * sigma)


@pytest.fixture
def pts():
  rng = np.random.default_rng(0)
  n = 257
  sigma = rng.gamma(1.0, 5.0, n).astype(np.float32)
  inside = rng.random(n).astype(np.float32)
  d2 = (rng.random(n) ** 2).astype(np.float32)
  return sigma, inside, d2


def test_human_geometry_loss_matches_numpy(pts):
  sigma, inside, d2 = pts
  got = losses.human_geometry_loss(sigma, inside, d2)
  np.testing.assert_allclose(got, _np_human(sigma.astype(np.float64), inside, d2), rtol=1e-4)
  g = jax.grad(lambda s: losses.human_geometry_loss(s, inside, d2))(jnp.asarray(sigma))
  np.testing.assert_allclose(g, _np_human_grad(sigma, inside, d2), rtol=1e-4, atol=1e-6)


def test_human_geometry_loss_slope_is_ln_1e4(pts):
  # Official semantics: linear in occupancy with slope ln(1e4) ~ 9.21 (PAPER.md).
  occ = np.linspace(0.0, 0.9, 5)
  sigma = -np.log(1 - occ) / 0.2
  inside_loss = jax.vmap(lambda s: losses.human_geometry_loss(s, 1.0, 0.0))(sigma)
  slope = -np.diff(np.asarray(inside_loss)) / np.diff(occ)
  np.testing.assert_allclose(slope, np.log(1e4) - np.log(1 / (1 - 1e-4)), rtol=1e-4)


def test_human_geometry_loss_proximal_points_are_free():
  # A point right on the surface (d=0) outside the body costs nothing.
  assert float(losses.human_geometry_loss(jnp.array([50.0]), jnp.array([0.0]),
                                          jnp.array([0.0]))) == 0.0
  far = losses.human_geometry_loss(jnp.array([50.0]), jnp.array([0.0]), jnp.array([4.0]))
  assert float(far) > 9.0


def test_human_geometry_loss_mean_and_valid(pts):
  sigma, inside, d2 = pts
  valid = np.arange(sigma.size) % 3 != 0
  got = losses.human_geometry_loss(sigma, inside, d2, reduction="mean", valid=valid)
  ref = _np_human(sigma[valid].astype(np.float64), inside[valid], d2[valid]) / valid.sum()
  np.testing.assert_allclose(got, ref, rtol=1e-4)
  with pytest.raises(ValueError, match="reduction"):
    losses.human_geometry_loss(sigma, inside, d2, reduction="max")


def test_object_geometry_loss_matches_numpy(pts):
  sigma, inside, _ = pts
  occ = np.clip(1 - np.exp(-0.2 * sigma.astype(np.float64)), 0, 1.1)
  ref = np.sum(_np_ce(occ, 0.0) * (inside > 0.5))
  np.testing.assert_allclose(losses.object_geometry_loss(sigma, inside), ref, rtol=1e-4)
  g = jax.grad(lambda s: losses.object_geometry_loss(s, inside))(jnp.asarray(sigma))
  dce_docc = np.log(1 - 1e-4) - np.log(1e-4)  # ~9.21, target clamped to 1e-4
  gref = (inside > 0.5) * dce_docc * 0.2 * np.exp(-0.2 * sigma)
  np.testing.assert_allclose(g, gref, rtol=1e-4, atol=1e-7)
  # Outside points never contribute.
  assert float(losses.object_geometry_loss(sigma, np.zeros_like(inside))) == 0.0


def test_orient_loss_matches_numpy():
  rng = np.random.default_rng(1)
  w = rng.random((4, 8)).astype(np.float32)
  n = rng.normal(size=(4, 8, 3)).astype(np.float32)
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  d = rng.normal(size=(4, 3)).astype(np.float32)
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  op = np.array([0.0, 0.5, 0.9, 0.0], np.float32)
  ref = 0.0
  for r in range(4):
    for s in range(8):
      ref += w[r, s] * max(0.0, float(n[r, s] @ d[r])) ** 2
  ref /= 2
  np.testing.assert_allclose(losses.orient_loss(w, n, d, op), ref, rtol=1e-5)
  # Weights are stop-gradded: no gradient flows into them.
  gw = jax.grad(lambda w_: losses.orient_loss(w_, n, d, op))(jnp.asarray(w))
  chex.assert_trees_all_close(gw, jnp.zeros_like(gw))
  # Per-sample directions give the same answer.
  dd = np.broadcast_to(d[:, None], n.shape)
  np.testing.assert_allclose(losses.orient_loss(w, n, dd, op), ref, rtol=1e-5)


def test_sparsity_and_opaque_match_numpy():
  o = np.array([0.0, 1e-4, 0.3, 0.999999, 1.0], np.float32)
  np.testing.assert_allclose(losses.sparsity_loss(o), np.mean(np.sqrt(o.astype(np.float64)**2 + 0.01)),
                             rtol=1e-6)
  oc = np.clip(o.astype(np.float64), 1e-3, 1 - 1e-3)
  ref = -np.mean(oc * np.log(oc) + (1 - oc) * np.log(1 - oc))
  np.testing.assert_allclose(losses.opaque_loss(o), ref, rtol=1e-5)
  # Finite-difference gradient of the opaque loss at an interior point.
  x = jnp.array([0.3, 0.6], jnp.float32)
  g = jax.grad(losses.opaque_loss)(x)
  eps = 1e-3
  fd = [(losses.opaque_loss(x.at[i].add(eps)) - losses.opaque_loss(x.at[i].add(-eps))) / (2 * eps)
        for i in range(2)]
  np.testing.assert_allclose(g, np.array(fd), rtol=2e-2)


def test_losses_jit_and_vmap(pts):
  sigma, inside, d2 = pts
  f = jax.jit(jax.vmap(lambda s, i, d: losses.human_geometry_loss(s, i, d)))
  out = f(np.stack([sigma, sigma]), np.stack([inside, inside]), np.stack([d2, d2]))
  chex.assert_shape(out, (2,))
  np.testing.assert_allclose(out[0], out[1])
