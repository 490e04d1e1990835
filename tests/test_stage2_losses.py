"""Tests for interfusion_jax.stage2.losses against independent NumPy transcriptions."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.stage2 import losses

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


def test_nerf_occupancy_matches_closed_form():
  # PAPER.md "NeRF occupancy: alpha = clamp(1 - exp(-0.2 sigma), 0, 1.1)".
  sigma = np.array([-3.0, 0.0, np.log(2.0) / 0.2, 1.0, 50.0, 1e4])
  want = np.clip(1 - np.exp(-0.2 * sigma), 0, 1.1)
  got = losses.nerf_occupancy(jnp.asarray(sigma, jnp.float32))
  chex.assert_shape(got, sigma.shape)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got[2], 0.5, rtol=1e-6)   # the camera-tracing threshold
  assert float(got[0]) == 0.0                          # negative densities clamp to 0
  # NumPy in, NumPy out, in the input's dtype (float64 host-side metrics).
  host = losses.nerf_occupancy(sigma, delta=0.5)
  assert isinstance(host, np.ndarray) and host.dtype == np.float64
  np.testing.assert_allclose(host, np.clip(1 - np.exp(-0.5 * sigma), 0, 1.1), rtol=1e-12)
  assert losses.occupancy_from_density is losses.nerf_occupancy


# ----------------------------------------------------------------------------
# The same references under chex.variants: jitted, eager, device-placed inputs
# and pmapped over the 4 forced host devices of conftest.py. String / static
# arguments are bound with functools.partial (the pmap variant broadcasts every
# positional and keyword argument to the devices).
# ----------------------------------------------------------------------------

_VARIANTS = dict(with_jit=True, without_jit=True, with_device=True, with_pmap=True)


def _points():
  rng = np.random.default_rng(0)
  n = 257
  return (rng.gamma(1.0, 5.0, n).astype(np.float32), rng.random(n).astype(np.float32),
          (rng.random(n) ** 2).astype(np.float32))


class LossVariantsTest(chex.TestCase):

  @chex.variants(**_VARIANTS)
  def test_nerf_occupancy(self):
    sigma = jnp.linspace(-1.0, 60.0, 33)
    alpha = self.variant(losses.nerf_occupancy)(sigma)
    chex.assert_shape(alpha, (33,))
    chex.assert_tree_all_finite(alpha)
    s = np.asarray(sigma, np.float64)
    np.testing.assert_allclose(alpha, np.clip(1 - np.exp(-0.2 * s), 0, 1.1), atol=1e-6)

  @chex.variants(**_VARIANTS)
  def test_human_geometry_loss(self):
    sigma, inside, d2 = _points()
    fn = self.variant(losses.human_geometry_loss)
    got = fn(sigma, inside, d2)
    chex.assert_shape(got, ())
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, _np_human(sigma.astype(np.float64), inside, d2), rtol=1e-4)
    g = jax.grad(lambda s: fn(s, inside, d2))(jnp.asarray(sigma))
    chex.assert_shape(g, sigma.shape)
    chex.assert_tree_all_finite(g)
    np.testing.assert_allclose(g, _np_human_grad(sigma, inside, d2), rtol=1e-4, atol=1e-6)

  @chex.variants(**_VARIANTS)
  def test_human_geometry_loss_mean_and_valid(self):
    sigma, inside, d2 = _points()
    valid = (np.arange(sigma.size) % 3 != 0).astype(np.float32)
    fn = self.variant(functools.partial(losses.human_geometry_loss, reduction="mean"))
    got = fn(sigma, inside, d2, valid=valid)
    chex.assert_shape(got, ())
    chex.assert_tree_all_finite(got)
    m = valid > 0
    ref = _np_human(sigma[m].astype(np.float64), inside[m], d2[m]) / m.sum()
    np.testing.assert_allclose(got, ref, rtol=1e-4)

  @chex.variants(**_VARIANTS)
  def test_object_geometry_loss(self):
    sigma, inside, _ = _points()
    fn = self.variant(losses.object_geometry_loss)
    got = fn(sigma, inside)
    chex.assert_shape(got, ())
    chex.assert_tree_all_finite(got)
    occ = np.clip(1 - np.exp(-0.2 * sigma.astype(np.float64)), 0, 1.1)
    np.testing.assert_allclose(got, np.sum(_np_ce(occ, 0.0) * (inside > 0.5)), rtol=1e-4)
    g = jax.grad(lambda s: fn(s, inside))(jnp.asarray(sigma))
    chex.assert_shape(g, sigma.shape)
    chex.assert_tree_all_finite(g)
    dce_docc = np.log(1 - 1e-4) - np.log(1e-4)
    np.testing.assert_allclose(g, (inside > 0.5) * dce_docc * 0.2 * np.exp(-0.2 * sigma),
                               rtol=1e-4, atol=1e-7)
    assert float(fn(sigma, np.zeros_like(inside))) == 0.0

  @chex.variants(**_VARIANTS)
  def test_orient_loss(self):
    rng = np.random.default_rng(1)
    w = rng.random((4, 8)).astype(np.float32)
    n = rng.normal(size=(4, 8, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    d = rng.normal(size=(4, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    op = np.array([0.0, 0.5, 0.9, 0.0], np.float32)
    ref = 0.5 * np.sum(w * np.maximum(np.einsum("rsc,rc->rs", n, d), 0.0) ** 2)
    fn = self.variant(losses.orient_loss)
    got = fn(w, n, d, op)
    chex.assert_shape(got, ())
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    gw = jax.grad(lambda w_: fn(w_, n, d, op))(jnp.asarray(w))
    chex.assert_shape(gw, w.shape)
    chex.assert_trees_all_close(gw, jnp.zeros_like(gw))

  @chex.variants(**_VARIANTS)
  def test_sparsity_and_opaque(self):
    o = np.array([0.0, 1e-4, 0.3, 0.999999, 1.0], np.float32)
    sp, oq = self.variant(losses.sparsity_loss)(o), self.variant(losses.opaque_loss)(o)
    chex.assert_shape((sp, oq), ())
    chex.assert_tree_all_finite((sp, oq))
    np.testing.assert_allclose(sp, np.mean(np.sqrt(o.astype(np.float64) ** 2 + 0.01)), rtol=1e-6)
    oc = np.clip(o.astype(np.float64), 1e-3, 1 - 1e-3)
    np.testing.assert_allclose(oq, -np.mean(oc * np.log(oc) + (1 - oc) * np.log(1 - oc)),
                               rtol=1e-5)
    x = jnp.array([0.3, 0.6], jnp.float32)
    g = jax.grad(self.variant(losses.opaque_loss))(x)
    chex.assert_shape(g, (2,))
    chex.assert_tree_all_finite(g)
    np.testing.assert_allclose(g, -np.log(x / (1 - x)) / 2, rtol=1e-4)   # d/dx of -mean(H)
