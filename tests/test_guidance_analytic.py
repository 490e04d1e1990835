"""Analytic denoisers vs Tweedie's formula, and SDS convergence with them."""
import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.guidance import analytic, core, sds


def _abar(T=1000):
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
  return jnp.asarray(np.cumprod(1 - betas), jnp.float32)


def _tweedie_eps(logp, x_t, b):
  """eps = -b * grad log p_t(x_t) (independent of the posterior-mean derivation)."""
  return -b * jax.grad(logp)(x_t)


def test_gaussian_eps_is_tweedie():
  rng = np.random.default_rng(0)
  mean = rng.uniform(size=(4, 4, 3)).astype(np.float32)
  std = rng.uniform(0.05, 0.5, size=(4, 4, 3)).astype(np.float32)
  abar = _abar()
  for t in (30, 400, 950):
    a, b = float(np.sqrt(abar[t])), float(np.sqrt(1 - abar[t]))
    x_t = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)
    var = (a * std) ** 2 + b ** 2
    logp = lambda x: jnp.sum(-0.5 * jnp.square(x - a * mean) / var)
    want = _tweedie_eps(logp, jnp.asarray(x_t), b)
    got = analytic.gaussian_eps(x_t, jnp.array([t]), abar, mean, std)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_targets_eps_is_tweedie():
  rng = np.random.default_rng(1)
  targets = rng.uniform(size=(3, 4, 4, 3)).astype(np.float32)
  abar = _abar()
  for t in (50, 500, 900):
    a, b = float(np.sqrt(abar[t])), float(np.sqrt(1 - abar[t]))
    x_t = (a * targets[1] + 0.7 * b * rng.standard_normal((4, 4, 3))).astype(np.float32)[None]
    logp = lambda x: jax.scipy.special.logsumexp(
        -jnp.sum(jnp.square(x[0][None] - a * targets), axis=(1, 2, 3)) / (2 * b * b))
    want = _tweedie_eps(logp, jnp.asarray(x_t), b)
    got = analytic.targets_eps(x_t, jnp.array([t]), abar, targets)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def _sds_descent(spec, params, x0, steps, lr, seed=0):
  cond = jnp.zeros((x0.shape[0], 2, 4))
  uncond = jnp.ones((2, 4))

  def step(x, key):
    g = jax.grad(lambda im: core.guidance_apply(spec, params, im, cond, uncond, key)[0])(x)
    return x - lr * x.shape[0] * g, None  # * B: per-sample SDS gradient

  keys = jax.random.split(jax.random.PRNGKey(seed), steps)
  return jax.jit(lambda x: jax.lax.scan(step, x, keys)[0])(x0)


def test_sds_converges_to_single_target():
  rng = np.random.default_rng(2)
  target = jnp.asarray(rng.uniform(size=(1, 64, 64, 3)), jnp.float32)
  spec = core.GuidanceSpec(kind="targets", guidance_scale=20.0, weighting="uniform")
  params = {"alphas_cumprod": _abar(), "targets": target}
  x0 = jnp.full((1, 64, 64, 3), 0.5, jnp.float32)
  x = _sds_descent(spec, params, x0, steps=300, lr=0.05)
  mse0 = float(jnp.mean(jnp.square(x0 - target)))
  mse = float(jnp.mean(jnp.square(x - target)))
  assert mse < 1e-4 and mse < 1e-3 * mse0, (mse0, mse)


def test_sds_moves_mean_to_gaussian_mean():
  rng = np.random.default_rng(3)
  mean = jnp.asarray(rng.uniform(0.2, 0.8, size=(8, 8, 3)), jnp.float32)
  spec = core.GuidanceSpec(kind="gaussian", guidance_scale=0.0, weighting="sds")
  params = {"alphas_cumprod": _abar(), "mean": mean, "std": jnp.float32(0.1)}
  x0 = jnp.zeros((16, 8, 8, 3), jnp.float32)
  x = _sds_descent(spec, params, x0, steps=400, lr=0.3)
  err0 = float(jnp.mean(jnp.abs(x0.mean(0) - mean)))
  err = float(jnp.mean(jnp.abs(x.mean(0) - mean)))
  assert err < 0.02 and err < 0.05 * err0, (err0, err)
