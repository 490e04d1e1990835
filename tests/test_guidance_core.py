"""Backend protocol: guidance_apply gradient, batched CFG call, jit/pmap, specs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.guidance import core, sds
from interfusion_jax.stage2 import config as config_lib


def _abar(T=1000):
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
  return jnp.asarray(np.cumprod(1 - betas), jnp.float32)


def _linear_predict(spec, params, x_t, t, emb):
  """Toy eps model whose output depends on the embedding and t."""
  del spec
  return params["w"] * x_t + jnp.mean(emb, axis=(1, 2))[:, None, None, None] + 1e-3 * t[:, None, None, None]


@pytest.fixture
def toy_backend(monkeypatch):
  calls = []

  def predict(spec, params, x_t, t, emb):
    calls.append(x_t.shape)
    return _linear_predict(spec, params, x_t, t, emb)

  monkeypatch.setitem(core.BACKENDS, "toy", (core._identity_encode, predict))
  monkeypatch.setitem(core.DEFAULTS, "toy", (7.0, "sds"))
  return calls


def test_apply_gradient_equals_sds_gradient(toy_backend):
  rng = np.random.default_rng(0)
  spec = core.GuidanceSpec(kind="toy", guidance_scale=7.5, weighting="fantasia3d", grad_clip=0.0)
  params = {"alphas_cumprod": _abar(), "w": jnp.float32(0.3)}
  imgs = jnp.asarray(rng.uniform(size=(4, 6, 6, 3)), jnp.float32)
  cond = jnp.asarray(rng.standard_normal((4, 5, 8)), jnp.float32)
  uncond = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
  key = jax.random.PRNGKey(3)
  (loss, aux), g = jax.value_and_grad(
      lambda im: core.guidance_apply(spec, params, im, cond, uncond, key), has_aux=True)(imgs)
  assert toy_backend == [(8, 6, 6, 3)]  # ONE batched call: cond + uncond
  # Re-derive with NumPy from the same randomness.
  _, k_t, k_n = jax.random.split(key, 3)
  t = np.asarray(sds.sample_timesteps(k_t, 4, 0.02, 0.98, 1000))
  np.testing.assert_array_equal(aux["t"], t)
  noise = np.asarray(jax.random.normal(k_n, imgs.shape))
  abar = np.asarray(_abar())[t][:, None, None, None]
  x_t = np.sqrt(abar) * np.asarray(imgs) + np.sqrt(1 - abar) * noise
  tt = t[:, None, None, None]
  ec = 0.3 * x_t + np.asarray(cond).mean((1, 2))[:, None, None, None] + 1e-3 * tt
  eu = 0.3 * x_t + np.asarray(uncond).mean() + 1e-3 * tt
  w = np.sqrt(abar) * (1 - abar)
  want = w * ((1 + 7.5) * ec - 7.5 * eu - noise)
  np.testing.assert_allclose(g * 4, want, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(loss, 0.5 * np.sum(want ** 2) / 4, rtol=1e-3)
  np.testing.assert_allclose(aux["grad_norm"],
                             np.mean(np.sqrt(np.sum(want.reshape(4, -1) ** 2, -1))), rtol=1e-4)


def test_apply_perp_neg_is_one_batched_call_of_the_perp_neg_formula(toy_backend):
  """Perp-Neg: ONE denoiser call on (2 + K) B inputs; the gradient is w(t) times
  threestudio's eps_u + s (e_pos + sum_k w_k perp(eps_k - eps_u, e_pos)) - eps."""
  rng = np.random.default_rng(1)
  spec = core.GuidanceSpec(kind="toy", guidance_scale=20.0, weighting="uniform")
  params = {"alphas_cumprod": _abar(), "w": jnp.float32(0.3)}
  imgs = jnp.asarray(rng.uniform(size=(2, 6, 6, 3)), jnp.float32)
  cond = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
  uncond = jnp.asarray(rng.standard_normal((5, 8)), jnp.float32)
  negs = jnp.asarray(rng.standard_normal((2, 2, 5, 8)), jnp.float32)
  weights = jnp.asarray([[-0.5, -1.5], [0.0, -2.0]], jnp.float32)
  key = jax.random.PRNGKey(4)
  g, aux = jax.grad(lambda im: core.guidance_apply(spec, params, im, cond, uncond, key,
                                                   neg_emb=negs, neg_weights=weights),
                    has_aux=True)(imgs)
  assert toy_backend == [(8, 6, 6, 3)]   # (2 + K) B = 8 inputs, one call
  _, k_t, k_n = jax.random.split(key, 3)
  t = np.asarray(sds.sample_timesteps(k_t, 2, 0.02, 0.98, 1000))
  np.testing.assert_array_equal(aux["t"], t)
  noise = np.asarray(jax.random.normal(k_n, imgs.shape))
  abar = np.asarray(_abar())[t][:, None, None, None]
  x_t = np.sqrt(abar) * np.asarray(imgs) + np.sqrt(1 - abar) * noise
  eps = lambda e: 0.3 * x_t + np.asarray(e).mean(axis=(-2, -1)).reshape(-1, 1, 1, 1) + \
      1e-3 * t[:, None, None, None]
  ep, eu = eps(cond), eps(np.broadcast_to(uncond, cond.shape))
  e_pos = ep - eu
  acc = 0.0
  for i in range(2):
    d = eps(negs[:, i]) - eu
    coef = np.sum(d * e_pos, (1, 2, 3)) / np.maximum(np.sum(e_pos ** 2, (1, 2, 3)), 1e-6)
    acc = acc + np.asarray(weights)[:, i, None, None, None] * (d - coef[:, None, None, None] * e_pos)
  want = eu + 20.0 * (e_pos + acc) - noise
  np.testing.assert_allclose(g * 2, want, rtol=2e-4, atol=2e-4)
  # Camera-conditioned backends: the direction reaches the negatives too.
  cam = jnp.asarray([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]], jnp.float32)
  spec_cam = core.GuidanceSpec(kind="toy", guidance_scale=20.0, weighting="uniform",
                               camera_conditioning=True)
  app = lambda x: jnp.concatenate([x, jnp.broadcast_to(
      cam.reshape((2,) + (1,) * (x.ndim - 2) + (3,)), x.shape[:-1] + (3,))], -1)
  got = core.guidance_apply(spec_cam, params, imgs, cond, uncond, key, camera=cam,
                            neg_emb=negs, neg_weights=weights)[0]
  ref = core.guidance_apply(spec, params, imgs, app(cond), app(jnp.broadcast_to(uncond, cond.shape)),
                            key, neg_emb=app(negs), neg_weights=weights)[0]
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_apply_t_max_override_and_clip(toy_backend):
  spec = core.GuidanceSpec(kind="toy", guidance_scale=100.0, weighting="uniform", grad_clip=0.01)
  params = {"alphas_cumprod": _abar(), "w": jnp.float32(1.0)}
  imgs = jnp.ones((64, 4, 4, 3)) * 0.5
  f = jax.jit(lambda im, hi: jax.grad(lambda x: core.guidance_apply(
      spec, params, x, jnp.ones((64, 2, 3)), jnp.zeros((2, 3)), jax.random.PRNGKey(0),
      t_max=hi)[0])(im))
  g = f(imgs, 0.3)
  assert float(jnp.max(jnp.abs(g))) <= 0.01 / 64 + 1e-9
  _, aux = core.guidance_apply(spec, params, imgs, jnp.ones((64, 2, 3)), jnp.zeros((2, 3)),
                               jax.random.PRNGKey(0), t_max=0.3)
  assert int(aux["t"].max()) <= 300


def test_apply_compiles_once_and_runs_under_pmap():
  traces = []
  spec = core.GuidanceSpec(kind="targets", guidance_scale=20.0, weighting="uniform")
  params = {"alphas_cumprod": _abar(), "targets": jnp.zeros((2, 8, 8, 3))}

  def fn(params, imgs, cond, uncond, key):
    traces.append(1)
    return jax.grad(lambda x: core.guidance_apply(spec, params, x, cond, uncond, key)[0])(imgs)

  jf = jax.jit(fn)
  for i in range(3):
    jf(params, jnp.full((4, 8, 8, 3), 0.1 * i), jnp.zeros((4, 3, 2)), jnp.zeros((3, 2)),
       jax.random.PRNGKey(i))
  assert len(traces) == 1
  n = jax.local_device_count()
  assert n == 4
  pf = jax.pmap(fn, in_axes=(None, 0, 0, None, 0))
  imgs = jnp.broadcast_to(jnp.linspace(0, 1, n)[:, None, None, None, None], (n, 2, 8, 8, 3))
  out = pf(params, imgs, jnp.zeros((n, 2, 3, 2)), jnp.zeros((3, 2)),
           jax.random.split(jax.random.PRNGKey(0), n))
  assert out.shape == (n, 2, 8, 8, 3)
  # device i pulls toward the zero targets proportionally to its image value
  signs = np.sign(np.asarray(out).reshape(n, -1).mean(-1))
  np.testing.assert_array_equal(signs[1:], 1.0)


def test_spec_from_config_defaults_and_errors():
  cfg = hoi.get_config()
  sd = core.GuidanceSpec.from_options(config_lib.guidance_options(config_lib.parse(cfg)), kind="stable_diffusion")
  assert (sd.guidance_scale, sd.weighting, sd.resolution) == (100.0, "sds", 512)
  px = core.GuidanceSpec.from_options(config_lib.guidance_options(config_lib.parse(cfg)), kind="pixel", resolution=64)
  assert (px.guidance_scale, px.weighting, px.resolution) == (20.0, "uniform", 64)
  cfg.guidance.guidance_scale = 7.5
  cfg.guidance.weighting = "fantasia3d"
  sd = core.GuidanceSpec.from_options(config_lib.guidance_options(config_lib.parse(cfg)), kind="stable_diffusion")
  assert (sd.guidance_scale, sd.weighting) == (7.5, "fantasia3d")
  hash(sd)
  with pytest.raises(ValueError, match="kind"):
    core.GuidanceSpec(kind="nope", guidance_scale=1.0, weighting="sds")
  with pytest.raises(ValueError, match="weighting"):
    core.GuidanceSpec(kind="pixel", guidance_scale=1.0, weighting="nope")
  with pytest.raises(ValueError, match="t_min"):
    core.GuidanceSpec(kind="pixel", guidance_scale=1.0, weighting="sds", t_min=0.9, t_max=0.5)
