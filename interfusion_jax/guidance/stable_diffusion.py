"""Latent backend: Stable Diffusion (FlaxAutoencoderKL + FlaxUNet2DConditionModel).

PAPER.md "Guidance model", Stable Diffusion alternative: the render is resized
to ``spec.resolution`` (512), mapped to [-1, 1], VAE-encoded and multiplied by
the scaling factor (0.18215 for SD 1.x/2.x); SDS runs on the 4-channel latents
and its gradient flows back through the encoder into the render.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

LATENT_CHANNELS = 4


def resize_images(images: jax.Array, size: int) -> jax.Array:
  """Bilinear resize like ``F.interpolate(mode="bilinear", align_corners=False)``.

  Args:
    images: [B, H, W, C].
    size: output height = width.

  Returns:
    [B, size, size, C] (``images`` itself when already that size).
  """
  b, h, w, c = images.shape
  if size <= 0 or (h == size and w == size):
    return images
  return jax.image.resize(images, (b, size, size, c), method="bilinear", antialias=False)


def vae_encode(spec: Any, vae_params: Any, images: jax.Array,
               key: jax.Array | None) -> jax.Array:
  """Images in [0, 1] -> scaled SD latents (threestudio ``encode_images``).

  Args:
    spec: a ``GuidanceSpec`` with ``vae`` (FlaxAutoencoderKL), ``resolution``,
      ``scaling_factor``, ``latent_sample`` and ``vae_remat``.
    vae_params: the VAE parameter pytree.
    images: [B, H, W, 3] in [0, 1].
    key: PRNG key for sampling the posterior (ignored when
      ``spec.latent_sample`` is False, i.e. the posterior mean is used).

  Returns:
    [B, resolution/8, resolution/8, 4] float32 latents * scaling_factor.
  """
  x = resize_images(images.astype(jnp.float32), spec.resolution) * 2.0 - 1.0
  x = jnp.transpose(x, (0, 3, 1, 2))  # diffusers Flax models take NCHW

  def encode(p, x):
    dist = spec.vae.apply({"params": p}, x, method=spec.vae.encode).latent_dist
    return dist.mean, dist.std

  if spec.vae_remat:
    encode = jax.checkpoint(encode)
  mean, std = encode(vae_params, x)
  if spec.latent_sample and key is not None:
    z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
  else:
    z = mean
  return z.astype(jnp.float32) * spec.scaling_factor


def unet_eps(spec: Any, unet_params: Any, x_t: jax.Array, t: jax.Array,
             emb: jax.Array) -> jax.Array:
  """One UNet evaluation in NHWC, returning the eps prediction.

  Works for any Flax module called as ``module.apply({"params": p}, sample
  NCHW, timesteps, encoder_hidden_states)`` whose output is an array or has
  ``.sample`` (diffusers' FlaxUNet2DConditionModel; a future IF-I port).
  Learned-variance outputs (2C channels for C input channels) keep the eps
  half (the first C channels).

  Args:
    spec: ``GuidanceSpec`` with ``unet`` and ``unet_dtype`` ("auto": the
      module's ``dtype``).
    unet_params: UNet parameter pytree.
    x_t: [N, h, w, C] noisy model input.
    t: [N] integer timesteps.
    emb: [N, L, D] text embeddings.

  Returns:
    [N, h, w, C] float32 eps.
  """
  if spec.unet_dtype == "auto":  # not resolved by a loader: the module's compute dtype
    dtype = getattr(spec.unet, "dtype", jnp.float32)
  else:
    dtype = jnp.bfloat16 if spec.unet_dtype == "bfloat16" else jnp.float32
  sample = jnp.transpose(x_t, (0, 3, 1, 2)).astype(dtype)
  out = spec.unet.apply({"params": unet_params}, sample, t, emb.astype(dtype))
  out = getattr(out, "sample", out)
  out = jnp.transpose(out, (0, 2, 3, 1)).astype(jnp.float32)
  c = x_t.shape[-1]
  if out.shape[-1] == 2 * c:
    out = out[..., :c]
  return out


def to_eps(out: jax.Array, x_t: jax.Array, t: jax.Array, alphas_cumprod: jax.Array,
           prediction_type: str) -> jax.Array:
  """Converts a model output to eps (x_t = a x0 + b eps, a^2 + b^2 = 1).

  "epsilon": out; "v_prediction" (v = a eps - b x0): eps = a v + b x_t;
  "sample" (x0): eps = (x_t - a x0) / b.

  Args:
    out, x_t: [N, h, w, C]; t: [N]; alphas_cumprod: [T].

  Returns:
    [N, h, w, C] eps.
  """
  if prediction_type == "epsilon":
    return out
  abar = jnp.asarray(alphas_cumprod, jnp.float32)[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
  a, b = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  if prediction_type == "v_prediction":
    return a * out + b * x_t
  if prediction_type == "sample":
    return (x_t - a * out) / b
  raise ValueError(f"Unsupported prediction_type {prediction_type!r}; "
                   "use epsilon, v_prediction or sample.")


def encode(spec: Any, params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
  """Backend ``encode``: [B, H, W, 3] in [0, 1] -> [B, h, w, 4] latents."""
  return vae_encode(spec, params["vae"], images, key)


def predict_eps(spec: Any, params: Any, x_t: jax.Array, t: jax.Array,
                emb: jax.Array) -> jax.Array:
  """Backend ``predict_eps``: [N, h, w, 4], [N], [N, L, D] -> [N, h, w, 4]."""
  out = unet_eps(spec, params["unet"], x_t, t, emb)
  return to_eps(out, x_t, t, params["alphas_cumprod"], spec.prediction_type)
