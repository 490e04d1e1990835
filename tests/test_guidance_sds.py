"""SDS math: CFG, weighting, gradient, loss form, timesteps, annealing, schedule."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.guidance import schedule, sds


def _abar(T=1000):
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
  return np.cumprod(1 - betas).astype(np.float32)


def _np_weight(abar_t, kind):
  return {"uniform": np.ones_like(abar_t), "sds": 1 - abar_t,
          "fantasia3d": np.sqrt(abar_t) * (1 - abar_t)}[kind]


@pytest.mark.parametrize("weighting", ["uniform", "sds", "fantasia3d"])
@pytest.mark.parametrize("scale", [0.0, 7.5, 20.0, 100.0])
def test_sds_gradient_matches_formula(weighting, scale):
  rng = np.random.default_rng(int(scale) + len(weighting))
  ec, eu, n = (rng.standard_normal((3, 4, 5, 2)).astype(np.float32) for _ in range(3))
  t = np.array([20, 500, 979])
  abar = _abar()
  got = sds.sds_gradient(ec, eu, n, t, abar, guidance_scale=scale, weighting=weighting)
  w = _np_weight(abar[t], weighting)[:, None, None, None]
  want = w * ((1 + scale) * ec - scale * eu - n)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sds_gradient_nonfinite_and_clip():
  ec = np.array([[np.nan, 1.0, np.inf, 3.0]], np.float32)
  eu = np.zeros_like(ec)
  n = np.zeros_like(ec)
  g = sds.sds_gradient(ec, eu, n, np.array([3]), _abar(), guidance_scale=1.0, weighting="uniform")
  np.testing.assert_allclose(g, [[0.0, 2.0, 0.0, 6.0]])
  g = sds.sds_gradient(ec, eu, n, np.array([3]), _abar(), guidance_scale=1.0,
                       weighting="uniform", clip=2.5)
  np.testing.assert_allclose(g, [[0.0, 2.0, 0.0, 2.5]])
  with pytest.raises(ValueError, match="weighting"):
    sds.sds_weight(np.array([1]), _abar(), "bogus")


def test_sds_loss_gradient_is_exactly_grad():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32)
  # threestudio divides the summed loss by the batch: each sample's gradient is
  # its g, the batch-mean loss has gradient g / B (exactly g for B = 1).
  np.testing.assert_allclose(jax.grad(sds.sds_loss)(x, g), g / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(sds.sds_loss)(x[:1], g[:1]), g[:1], rtol=1e-5, atol=1e-6)
  # value: 0.5 ||g||^2 / B
  np.testing.assert_allclose(sds.sds_loss(x, g), 0.5 * np.sum(np.square(g)) / 3, rtol=1e-5)


def test_classifier_free_guidance_two_forms():
  rng = np.random.default_rng(1)
  ec, eu = rng.standard_normal((2, 10))
  np.testing.assert_allclose(sds.classifier_free_guidance(ec, eu, 20.0), 21 * ec - 20 * eu,
                             rtol=1e-6)


def test_add_noise_closed_form():
  rng = np.random.default_rng(2)
  x, n = rng.standard_normal((2, 2, 3, 3, 1)).astype(np.float32)
  abar = _abar()
  t = np.array([0, 999])
  a = abar[t][:, None, None, None]
  np.testing.assert_allclose(sds.add_noise(x, n, t, abar), np.sqrt(a) * x + np.sqrt(1 - a) * n,
                             rtol=1e-6)


def test_sample_timesteps_range_and_uniformity():
  t = jax.jit(sds.sample_timesteps, static_argnums=(1, 4))(jax.random.PRNGKey(0), 20000, 0.02,
                                                            0.98, 1000)
  t = np.asarray(t)
  assert t.min() == 20 and t.max() == 980
  counts = np.bincount(t - 20, minlength=961)
  assert counts.min() > 0 and abs(t.mean() - 500) < 5
  # traced t_max (annealing) respected
  f = jax.jit(lambda k, hi: sds.sample_timesteps(k, 4096, 0.02, hi, 1000))
  t2 = np.asarray(f(jax.random.PRNGKey(1), jnp.float32(0.5)))
  assert t2.min() >= 20 and t2.max() == 500


@pytest.mark.parametrize("kind", ["none", "linear", "hifa_sqrt"])
def test_anneal_t_max(kind):
  steps = np.array([0, 250, 1000, 5000])
  got = np.array([float(sds.anneal_t_max(s, 1000, 0.98, 0.5, kind)) for s in steps])
  r = np.clip(steps / 1000, 0, 1)
  want = {"none": np.full(4, 0.98), "linear": 0.98 - 0.48 * r,
          "hifa_sqrt": 0.98 - 0.48 * np.sqrt(r)}[kind]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_schedule_closed_forms():
  cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
         "num_train_timesteps": 1000}
  np.testing.assert_allclose(schedule.alphas_cumprod_from_config(cfg), _abar(), rtol=1e-6)
  lin = schedule.alphas_cumprod_from_config({"beta_schedule": "linear", "beta_start": 1e-4,
                                             "beta_end": 0.02, "num_train_timesteps": 10})
  np.testing.assert_allclose(lin, np.cumprod(1 - np.linspace(1e-4, 0.02, 10)), rtol=1e-6)
  with pytest.raises(ValueError, match="beta_schedule"):
    schedule.alphas_cumprod_from_config({"beta_schedule": "sigmoid"})


@pytest.mark.torch
@pytest.mark.parametrize("name", ["scaled_linear", "linear", "squaredcos_cap_v2"])
def test_schedule_matches_diffusers(name):
  pytest.importorskip("torch")
  from diffusers import DDPMScheduler
  ref = DDPMScheduler(beta_schedule=name, beta_start=0.00085, beta_end=0.012).alphas_cumprod
  got = schedule.alphas_cumprod_from_config(
      {"beta_schedule": name, "beta_start": 0.00085, "beta_end": 0.012})
  np.testing.assert_allclose(got, ref.numpy(), rtol=2e-5, atol=1e-7)


def _ts_perpendicular(x, y):
  """threestudio ``perpendicular_component`` in NumPy ([B, C, H, W] there, any layout here)."""
  axes = tuple(range(1, x.ndim))
  eps = np.ones(x.shape[0]) * 1e-6
  coef = np.sum(x * y, axis=axes) / np.maximum(np.sum(y * y, axis=axes), eps)
  return x - coef.reshape((-1,) + (1,) * (x.ndim - 1)) * y


def _ts_perp_neg(pred_text, pred_uncond, pred_neg, weights, scale):
  """threestudio's perp-neg branch (deep_floyd_guidance.py) in NumPy: the UNet
  output is [text (B); uncond (B); negatives interleaved (B K)], ``weights`` [B, K]."""
  e_pos = pred_text - pred_uncond
  accum = 0
  k = weights.shape[-1]
  for i in range(k):
    e_i_neg = pred_neg[i::k] - pred_uncond
    accum += weights[:, i].reshape(-1, 1, 1, 1) * _ts_perpendicular(e_i_neg, e_pos)
  return pred_uncond + scale * (e_pos + accum)


def _perp_neg_inputs(seed=0, b=3, k=2):
  rng = np.random.default_rng(seed)
  ep, eu = (rng.standard_normal((b, 4, 5, 3)).astype(np.float32) for _ in range(2))
  en = rng.standard_normal((b, k, 4, 5, 3)).astype(np.float32)
  w = -np.abs(rng.standard_normal((b, k))).astype(np.float32)
  return ep, eu, en, w


def test_perp_neg_guidance_matches_threestudio():
  ep, eu, en, w = _perp_neg_inputs()
  interleaved = en.reshape((-1,) + en.shape[2:])     # threestudio's row b K + i
  for scale in (7.5, 20.0):
    got = sds.perp_neg_guidance(ep, eu, en, w, scale)
    np.testing.assert_allclose(got, _ts_perp_neg(ep, eu, interleaved, w, scale),
                               rtol=1e-4, atol=1e-4)
  # Zero weights: threestudio's eps_u + s (eps_pos - eps_u), not CFG's eps_c + s (...).
  got = sds.perp_neg_guidance(ep, eu, en, np.zeros_like(w), 20.0)
  np.testing.assert_allclose(got, eu + 20.0 * (ep - eu), rtol=1e-5, atol=1e-5)
  # A negative parallel to e_pos has no perpendicular part; zero e_pos is guarded.
  par = eu[:, None] + 3.0 * (ep - eu)[:, None]
  np.testing.assert_allclose(sds.perp_neg_guidance(ep, eu, np.repeat(par, 2, 1), w, 5.0),
                             eu + 5.0 * (ep - eu), rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(sds.perp_neg_guidance(eu, eu, en, w, 5.0)))


def test_guided_sds_gradient_is_sds_gradient_from_cfg():
  rng = np.random.default_rng(5)
  ec, eu, n = (rng.standard_normal((3, 4, 5, 2)).astype(np.float32) for _ in range(3))
  t, abar = np.array([20, 500, 979]), _abar()
  want = sds.sds_gradient(ec, eu, n, t, abar, guidance_scale=7.5, weighting="sds", clip=0.3)
  got = sds.guided_sds_gradient(8.5 * ec - 7.5 * eu, n, t, abar, weighting="sds", clip=0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# The same closed forms under chex.variants (jitted, eager, device-placed,
# pmapped over the 4 forced host devices). String and static arguments are
# bound with functools.partial: the pmap variant broadcasts every argument.
# ----------------------------------------------------------------------------

_VARIANTS = dict(with_jit=True, without_jit=True, with_device=True, with_pmap=True)


class SdsVariantsTest(chex.TestCase):

  @chex.variants(**_VARIANTS)
  def test_sds_gradient_matches_formula(self):
    rng = np.random.default_rng(3)
    ec, eu, n = (rng.standard_normal((3, 4, 5, 2)).astype(np.float32) for _ in range(3))
    t, abar = np.array([20, 500, 979]), _abar()
    for weighting in ("uniform", "sds", "fantasia3d"):
      fn = self.variant(functools.partial(sds.sds_gradient, guidance_scale=7.5,
                                          weighting=weighting))
      got = fn(ec, eu, n, t, abar)
      chex.assert_shape(got, ec.shape)
      chex.assert_tree_all_finite(got)
      w = _np_weight(abar[t], weighting)[:, None, None, None]
      np.testing.assert_allclose(got, w * (8.5 * ec - 7.5 * eu - n), rtol=1e-5, atol=1e-4)

  @chex.variants(**_VARIANTS)
  def test_sds_gradient_nonfinite_and_clip(self):
    ec = np.array([[np.nan, 1.0, np.inf, 3.0]], np.float32)
    zeros = np.zeros_like(ec)
    fn = self.variant(functools.partial(sds.sds_gradient, guidance_scale=1.0,
                                        weighting="uniform", clip=2.5))
    g = fn(ec, zeros, zeros, np.array([3]), _abar())
    chex.assert_shape(g, (1, 4))
    chex.assert_tree_all_finite(g)
    np.testing.assert_allclose(g, [[0.0, 2.0, 0.0, 2.5]])

  @chex.variants(**_VARIANTS)
  def test_sds_loss_value_and_gradient(self):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, 8, 8, 4)), jnp.float32)
    fn = self.variant(sds.sds_loss)
    value, grad = fn(x, g), jax.grad(fn)(x, g)
    chex.assert_shape(value, ())
    chex.assert_shape(grad, x.shape)
    chex.assert_tree_all_finite((value, grad))
    np.testing.assert_allclose(value, 0.5 * np.sum(np.square(g)) / 3, rtol=1e-5)
    np.testing.assert_allclose(grad, g / 3, rtol=1e-5, atol=1e-6)

  @chex.variants(**_VARIANTS)
  def test_cfg_and_add_noise(self):
    rng = np.random.default_rng(2)
    ec, eu = rng.standard_normal((2, 10)).astype(np.float32)
    cfg = self.variant(functools.partial(sds.classifier_free_guidance, guidance_scale=20.0))
    e = cfg(ec, eu)
    chex.assert_shape(e, (10,))
    chex.assert_tree_all_finite(e)
    np.testing.assert_allclose(e, 21 * ec - 20 * eu, rtol=1e-5, atol=1e-5)
    x, n = rng.standard_normal((2, 2, 3, 3, 1)).astype(np.float32)
    t, abar = np.array([0, 999]), _abar()
    xt = self.variant(sds.add_noise)(x, n, t, abar)
    chex.assert_shape(xt, x.shape)
    chex.assert_tree_all_finite(xt)
    a = abar[t][:, None, None, None]
    np.testing.assert_allclose(xt, np.sqrt(a) * x + np.sqrt(1 - a) * n, rtol=1e-6, atol=1e-6)

  @chex.variants(**_VARIANTS)
  def test_sample_timesteps_and_anneal(self):
    t_max = self.variant(functools.partial(sds.anneal_t_max, total_steps=1000, start=0.98,
                                           end=0.5, kind="hifa_sqrt"))(jnp.int32(250))
    chex.assert_shape(t_max, ())
    chex.assert_tree_all_finite(t_max)
    np.testing.assert_allclose(t_max, 0.98 - 0.48 * 0.5, rtol=1e-6)
    sample = self.variant(lambda key, hi: sds.sample_timesteps(key, 4096, 0.02, hi, 1000))
    t = sample(jax.random.PRNGKey(1), jnp.float32(0.5))
    chex.assert_shape(t, (4096,))
    assert int(t.min()) >= 20 and int(t.max()) == 500


class PerpNegVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_perp_neg_combination(self):
    ep, eu, en, w = _perp_neg_inputs(seed=1, b=2, k=2)
    got = self.variant(functools.partial(sds.perp_neg_guidance, guidance_scale=20.0))(
        ep, eu, en, w)
    chex.assert_shape(got, ep.shape)
    chex.assert_tree_all_finite(got)
    want = _ts_perp_neg(ep, eu, en.reshape((-1,) + en.shape[2:]), w, 20.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    perp = self.variant(sds.perpendicular_component)(en[:, 0] - eu, ep - eu)
    np.testing.assert_allclose(np.sum(perp * (ep - eu), axis=(1, 2, 3)), 0.0, atol=1e-3)
