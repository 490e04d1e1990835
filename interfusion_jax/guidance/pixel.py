"""Pixel-space backend (DeepFloyd-IF style; the official InterFusion path).

PAPER.md "Guidance model": renders are resized to the UNet's sample size
(64 for IF-I) and mapped to [-1, 1]; SDS runs directly on the pixels. Any
Flax module with the diffusers UNet call convention plugs in through
``GuidanceSpec.unet`` (e.g. a future Flax port of IF-I); 6-channel
learned-variance outputs keep the eps half.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from interfusion_jax.guidance import stable_diffusion

PIXEL_CHANNELS = 3


def encode(spec: Any, params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
  """Backend ``encode``: [B, H, W, 3] in [0, 1] -> [B, R, R, 3] in [-1, 1].

  ``params`` and ``key`` are unused (kept for the backend protocol).
  """
  del params, key
  x = stable_diffusion.resize_images(images.astype(jnp.float32), spec.resolution)
  return x * 2.0 - 1.0


def predict_eps(spec: Any, params: Any, x_t: jax.Array, t: jax.Array,
                emb: jax.Array) -> jax.Array:
  """Backend ``predict_eps``: [N, R, R, 3], [N], [N, L, D] -> [N, R, R, 3]."""
  out = stable_diffusion.unet_eps(spec, params["unet"], x_t, t, emb)
  return stable_diffusion.to_eps(out, x_t, t, params["alphas_cumprod"], spec.prediction_type)
