"""Latent/pixel backend helpers: output conversion, resize, eps half."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.guidance import pixel, stable_diffusion


def _abar(T=1000):
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
  return jnp.asarray(np.cumprod(1 - betas), jnp.float32)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_to_eps_recovers_noise(ptype):
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
  t = np.array([10, 300, 900])
  abar = np.asarray(_abar())[t][:, None, None, None]
  a, b = np.sqrt(abar), np.sqrt(1 - abar)
  x_t = a * x0 + b * eps
  out = {"epsilon": eps, "v_prediction": a * eps - b * x0, "sample": x0}[ptype]
  np.testing.assert_allclose(stable_diffusion.to_eps(out, x_t, t, _abar(), ptype), eps,
                             rtol=1e-3, atol=2e-4)


def test_resize_matches_torch_bilinear_for_upsampling():
  """jax bilinear without antialias == align_corners=False bilinear (NumPy re-derivation)."""
  rng = np.random.default_rng(1)
  img = rng.uniform(size=(1, 4, 4, 1)).astype(np.float32)
  got = np.asarray(stable_diffusion.resize_images(jnp.asarray(img), 8))[0, :, :, 0]
  src = (np.arange(8) + 0.5) / 2 - 0.5
  src = np.clip(src, 0, 3)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, 3)
  f = src - i0
  rows = img[0, i0, :, 0] * (1 - f)[:, None] + img[0, i1, :, 0] * f[:, None]
  want = rows[:, i0] * (1 - f)[None] + rows[:, i1] * f[None]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _SixChannelUNet:
  """Stand-in for a pixel UNet with a learned-variance head (IF-I style)."""

  def apply(self, variables, sample, t, emb):
    del t, emb
    scale = variables["params"]["s"]
    return jnp.concatenate([scale * sample, 100.0 + sample], axis=1)  # NCHW, 2C channels


def test_pixel_backend_keeps_eps_half():
  from interfusion_jax.guidance import core
  spec = core.GuidanceSpec(kind="pixel", guidance_scale=20.0, weighting="uniform",
                           unet=_SixChannelUNet(), resolution=4)
  params = {"unet": {"s": jnp.float32(2.0)}, "alphas_cumprod": _abar()}
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 4, 3)), jnp.float32)
  eps = pixel.predict_eps(spec, params, x, jnp.array([1, 2]), jnp.zeros((2, 3, 5)))
  np.testing.assert_allclose(eps, 2.0 * x, rtol=1e-6)
  # encode: [0, 1] renders at any size -> [-1, 1] at the UNet resolution
  x0 = pixel.encode(spec, params, jnp.zeros((1, 16, 16, 3)), None)
  assert x0.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(x0, -1.0)
