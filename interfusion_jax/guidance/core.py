"""The guidance backend protocol: a static spec, a params pytree, one apply.

A backend ``kind`` is two pure functions, looked up in ``BACKENDS``:

* ``encode(spec, params, images [B,H,W,3] in [0,1], key) -> x [B,h,w,c]``
  (differentiable; e.g. VAE latents or [-1, 1] pixels);
* ``predict_eps(spec, params, x_t [N,h,w,c], t [N], emb [N,L,D]) -> [N,h,w,c]``.

``guidance_apply`` adds noise, runs conditional and unconditional
predictions (and Perp-Neg's view negatives, when given) in ONE batched
``predict_eps`` call and returns the SDS loss
whose gradient with respect to ``images`` is the SDS gradient
(PAPER.md "Score distillation").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from interfusion_jax.guidance import deepfloyd  # DeepFloyd IF stage I (the paper's guidance)
from interfusion_jax.guidance import analytic, builtin, pixel, sds, stable_diffusion


# kind -> (default guidance scale, default weighting).
DEFAULTS = {
    "stable_diffusion": (100.0, "sds"),
    "pixel": (20.0, "uniform"),
    "deepfloyd_if": (20.0, "uniform"),  # PAPER.md: CFG 20, w(t) = 1
    "gaussian": (1.0, "uniform"),
    "targets": (1.0, "uniform"),
    "builtin": (10.0, "uniform"),  # interfusion_jax.prior (the offline default)
}


def _identity_encode(spec, params, images, key):
  del params, key
  return stable_diffusion.resize_images(images.astype(jnp.float32), spec.resolution)


def _gaussian_predict(spec, params, x_t, t, emb):
  del spec, emb
  return analytic.gaussian_eps(x_t, t, params["alphas_cumprod"], params["mean"], params["std"])


def _targets_predict(spec, params, x_t, t, emb):
  del spec, emb
  return analytic.targets_eps(x_t, t, params["alphas_cumprod"], params["targets"])


# config.guidance.unet_dtype values; "auto" is resolved by resolve_unet_dtype.
UNET_DTYPES = ("auto", "float32", "bfloat16")
# Platforms (jax ``Device.platform`` / backend names) where "auto" means bfloat16:
# their matrix units run bf16 at full rate, and IF-I-XL's UNet weights halve
# (17.2 GB fp32 -> 8.6 GB bf16).
BF16_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def resolve_unet_dtype(name: str, platform: str) -> str:
  """The UNet compute/weight dtype for a ``config.guidance.unet_dtype`` value.

  Args:
    name: "auto" | "float32" | "bfloat16".
    platform: where the UNet runs, a jax platform name ("cpu", "gpu",
      "cuda", "rocm", "tpu"; e.g. ``device.platform``).

  Returns:
    "float32" or "bfloat16": "auto" gives "bfloat16" on ``BF16_PLATFORMS``
    and "float32" elsewhere (the CPU, where bf16 matmuls are emulated and
    the tests compare against float32 references); explicit values pass.

  Raises:
    ValueError: (one line) ``name`` is not in ``UNET_DTYPES``.
  """
  if name not in UNET_DTYPES:
    raise ValueError(f"config.guidance.unet_dtype = {name!r}: unknown value; choose one of "
                     f"{list(UNET_DTYPES)}.")
  if name != "auto":
    return name
  return "bfloat16" if str(platform).lower() in BF16_PLATFORMS else "float32"


# kind -> (encode, predict_eps). Analytic kinds work in [0, 1] image space.
BACKENDS: dict[str, tuple[Callable[..., jax.Array], Callable[..., jax.Array]]] = {
    "stable_diffusion": (stable_diffusion.encode, stable_diffusion.predict_eps),
    "pixel": (pixel.encode, pixel.predict_eps),
    "deepfloyd_if": (deepfloyd.encode, deepfloyd.predict_eps),
    "gaussian": (_identity_encode, _gaussian_predict),
    "targets": (_identity_encode, _targets_predict),
    "builtin": (builtin.encode, builtin.predict_eps),
}


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
  """Static guidance settings (hashable; pass as a static jit argument).

  Attributes:
    kind: a key of ``BACKENDS``.
    guidance_scale: CFG scale s.
    weighting: "uniform" | "sds" | "fantasia3d".
    t_min, t_max: timestep range as fractions of T.
    num_train_timesteps: T.
    grad_clip: elementwise gradient clip (0 disables).
    resolution: model input image size (512 for SD renders, the UNet sample
      size for pixel models, 0 = no resize for analytic kinds).
    unet: the Flax UNet module (None for analytic kinds).
    vae: the FlaxAutoencoderKL module (latent kind only).
    unet_dtype: "auto" | "float32" | "bfloat16" compute dtype of the UNet
      (``resolve_unet_dtype``; the loaders store the resolved value, "auto"
      left here computes in the UNet module's own dtype).
    vae_remat: recompute the VAE encoder in the backward pass (memory).
    scaling_factor: latent scaling (0.18215 for SD 1.x/2.x).
    latent_sample: sample the VAE posterior (threestudio) instead of its mean.
    prediction_type: the UNet's target ("epsilon", "v_prediction", "sample"),
      from ``scheduler_config.json``; outputs are converted to eps.
    camera_conditioning: the backend also reads the render's camera: the
      ``camera`` argument of ``guidance_apply`` (unit direction from the
      look-at target to the camera, [B, 3]) is appended to the conditional
      and unconditional embeddings along D (the built-in prior; text-only
      models keep False).
  """
  kind: str
  guidance_scale: float
  weighting: str
  t_min: float = 0.02
  t_max: float = 0.98
  num_train_timesteps: int = 1000
  grad_clip: float = 0.0
  resolution: int = 0
  unet: Any = None
  vae: Any = None
  unet_dtype: str = "auto"
  vae_remat: bool = False
  scaling_factor: float = 0.18215
  latent_sample: bool = True
  prediction_type: str = "epsilon"
  camera_conditioning: bool = False

  def __post_init__(self):
    if self.kind not in BACKENDS:
      raise ValueError(f"Unknown guidance kind {self.kind!r}; choose one of {sorted(BACKENDS)}.")
    if self.weighting not in sds.WEIGHTINGS:
      raise ValueError(f"Unknown SDS weighting {self.weighting!r}; choose one of {list(sds.WEIGHTINGS)}.")
    if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
      raise ValueError(f"Unsupported prediction_type {self.prediction_type!r} (scheduler_config."
                       "json); use epsilon, v_prediction or sample.")
    if not 0.0 <= self.t_min < self.t_max < 1.0:
      raise ValueError(f"Need 0 <= t_min < t_max < 1, got t_min={self.t_min}, t_max={self.t_max}.")
    resolve_unet_dtype(self.unet_dtype, "cpu")  # validates the name

  @classmethod
  def from_options(cls, options: "GuidanceOptions", *, kind: str,
                   **overrides: Any) -> "GuidanceSpec":
    """The spec of backend ``kind`` under the user's ``options``.

    Negative ``guidance_scale`` / empty ``weighting`` select the backend
    defaults (SD: 100, "sds"; pixel: 20, "uniform"). ``overrides`` (e.g.
    ``unet=``, ``vae=``, ``resolution=``, ``num_train_timesteps=``) win.
    """
    if kind not in DEFAULTS:
      raise ValueError(f"Unknown guidance kind {kind!r}; choose one of {sorted(DEFAULTS)}.")
    o = options
    scale, weighting = DEFAULTS[kind]
    kw = dict(
        kind=kind,
        guidance_scale=float(o.guidance_scale) if o.guidance_scale >= 0 else scale,
        weighting=o.weighting or weighting,
        t_min=float(o.t_min), t_max=float(o.t_max),
        grad_clip=float(o.grad_clip),
        resolution=int(o.sd_resolution) if kind == "stable_diffusion" else 0,
        unet_dtype=o.unet_dtype, vae_remat=bool(o.vae_remat))
    kw.update(overrides)
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class GuidanceOptions:
  """The user's guidance settings (``config.guidance``, translated once by
  ``stage2.config.guidance_options``), before a model is loaded.

  Attributes:
    backend: "auto" (from the weights directory) | "stable_diffusion" |
      "pixel" | "deepfloyd_if" | "builtin".
    weights_dir: local diffusers directory ("" = the built-in prior).
    guidance_scale: CFG scale (< 0: the backend default).
    weighting: "" (backend default) | "uniform" | "sds" | "fantasia3d".
    t_min, t_max: timestep range as fractions of T.
    grad_clip: elementwise SDS gradient clip (0 disables).
    sd_resolution: render size fed to Stable Diffusion's VAE.
    unet_dtype: compute dtype of the UNet.
    vae_remat: recompute the VAE encoder in the backward pass.
    memory_efficient_attention: chunked attention in diffusers' Flax UNet.
    text_cache_dir: DeepFloyd IF's T5 embedding cache ("" = its default).
    builtin_object_sharpness: the built-in prior's object caption sharpness
      (-1 = its default).
  """
  backend: str = "auto"
  weights_dir: str = ""
  guidance_scale: float = -1.0
  weighting: str = ""
  t_min: float = GuidanceSpec.t_min
  t_max: float = GuidanceSpec.t_max
  grad_clip: float = GuidanceSpec.grad_clip
  sd_resolution: int = 512
  unet_dtype: str = GuidanceSpec.unet_dtype
  vae_remat: bool = GuidanceSpec.vae_remat
  memory_efficient_attention: bool = False
  text_cache_dir: str = ""
  builtin_object_sharpness: float = -1.0


def encode(spec: GuidanceSpec, params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
  """Renders [B, H, W, 3] in [0, 1] -> model space x [B, h, w, c] (differentiable)."""
  return BACKENDS[spec.kind][0](spec, params, images, key)


def predict_eps(spec: GuidanceSpec, params: Any, x_t: jax.Array, t: jax.Array,
                emb: jax.Array) -> jax.Array:
  """Noise prediction [N, h, w, c] for x_t [N, h, w, c], t [N], emb [N, L, D]."""
  return BACKENDS[spec.kind][1](spec, params, x_t, t, emb)


def predict_cfg_pair(spec: GuidanceSpec, params: Any, x_t: jax.Array, t: jax.Array,
                     cond_emb: jax.Array, uncond_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Conditional and unconditional eps from ONE batched ``predict_eps`` call.

  Args:
    x_t: [B, h, w, c]; t: [B]; cond_emb: [B, L, D]; uncond_emb: [L, D] or
      [B, L, D].

  Returns:
    (eps_cond, eps_uncond), each [B, h, w, c] float32.
  """
  b = x_t.shape[0]
  uncond = jnp.broadcast_to(uncond_emb, (b,) + cond_emb.shape[1:]).astype(cond_emb.dtype)
  eps = predict_eps(spec, params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                    jnp.concatenate([cond_emb, uncond]))
  return eps[:b], eps[b:]


def predict_perp_neg_batch(spec: GuidanceSpec, params: Any, x_t: jax.Array, t: jax.Array,
                           cond_emb: jax.Array, uncond_emb: jax.Array, neg_emb: jax.Array
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Positive, unconditional and K negative eps from ONE batched ``predict_eps``
  call of (2 + K) B inputs (Perp-Neg; threestudio's 4B batch for K = 2).

  Args:
    x_t: [B, h, w, c]; t: [B]; cond_emb: [B, L, D]; uncond_emb: [L, D] or
      [B, L, D]; neg_emb: [B, K, L, D].

  Returns:
    (eps_pos [B, h, w, c], eps_uncond [B, h, w, c], eps_neg [B, K, h, w, c]).
  """
  b, k = neg_emb.shape[:2]
  uncond = jnp.broadcast_to(uncond_emb, (b,) + cond_emb.shape[1:]).astype(cond_emb.dtype)
  negs = jnp.swapaxes(neg_emb, 0, 1).reshape((k * b,) + neg_emb.shape[2:]).astype(cond_emb.dtype)
  eps = predict_eps(spec, params, jnp.concatenate([x_t] * (2 + k)),
                    jnp.concatenate([t] * (2 + k)), jnp.concatenate([cond_emb, uncond, negs]))
  eps_neg = jnp.swapaxes(eps[2 * b:].reshape((k, b) + eps.shape[1:]), 0, 1)
  return eps[:b], eps[b:2 * b], eps_neg


def with_camera(cond_emb: jax.Array, uncond_emb: jax.Array, camera: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """Appends the camera direction to both CFG embeddings (camera-conditioned backends).

  Args:
    cond_emb: [B, L, D]; uncond_emb: [L, D] or [B, L, D]; camera: [B, 3].

  Returns:
    ([B, L, D + 3], [B, L, D + 3]): the same direction on every token of both.
  """
  b, l = cond_emb.shape[:2]
  cam = jnp.broadcast_to(jnp.asarray(camera, cond_emb.dtype)[:, None, :], (b, l, camera.shape[-1]))
  uncond = jnp.broadcast_to(uncond_emb, (b,) + cond_emb.shape[1:]).astype(cond_emb.dtype)
  return jnp.concatenate([cond_emb, cam], -1), jnp.concatenate([uncond, cam], -1)


def guidance_apply(spec: GuidanceSpec, params: Any, images: jax.Array,
                   cond_emb: jax.Array, uncond_emb: jax.Array, key: jax.Array, *,
                   t_max: float | jax.Array | None = None,
                   camera: jax.Array | None = None,
                   neg_emb: jax.Array | None = None,
                   neg_weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """SDS loss for a batch of renders (PAPER.md "Score distillation").

  Args:
    spec: static ``GuidanceSpec``.
    params: pytree with ``alphas_cumprod`` [T] and the backend's weights
      (``unet``, ``vae`` / ``mean``, ``std`` / ``targets``).
    images: [B, H, W, 3] renders in [0, 1].
    cond_emb: [B, L, D] prompt embeddings (per render, e.g. view-dependent).
    uncond_emb: [L, D] or [B, L, D] unconditional (negative-prompt, "" by
      default) embedding.
    key: PRNG key (timesteps, noise, VAE posterior sample).
    t_max: optional (traced) max-timestep fraction overriding ``spec.t_max``
      (annealing).
    camera: optional [B, 3] unit directions from each render's look-at
      target to its camera; used only when ``spec.camera_conditioning``
      (``with_camera``), ignored otherwise.
    neg_emb, neg_weights: Perp-Neg (``prompts.perp_neg_embeddings``): [B, K,
      L, D] view-negative embeddings and their [B, K] weights. Given, the
      denoiser runs once on (2 + K) B inputs and ``sds.perp_neg_guidance``
      replaces CFG; None (the default): plain CFG on 2 B inputs.

  Returns:
    (loss, aux): scalar loss with d loss / d images = the SDS gradient pulled
    back through ``encode``; aux = {"t": [B] int32, "grad_norm": scalar (mean
    per-sample L2 norm of the model-space gradient), "weight": [B]}.
  """
  if spec.camera_conditioning:
    if camera is None:
      raise ValueError(f"guidance kind {spec.kind!r} is camera-conditioned: pass camera= "
                       "(unit directions [B, 3]) to guidance_apply.")
    if neg_emb is not None:
      k, l = neg_emb.shape[1:3]
      cam = jnp.broadcast_to(jnp.asarray(camera, neg_emb.dtype)[:, None, None, :],
                             (camera.shape[0], k, l, camera.shape[-1]))
      neg_emb = jnp.concatenate([neg_emb, cam], -1)
    cond_emb, uncond_emb = with_camera(cond_emb, uncond_emb, camera)
  k_enc, k_t, k_noise = jax.random.split(key, 3)
  x = encode(spec, params, images, k_enc)
  b = x.shape[0]
  t = sds.sample_timesteps(k_t, b, spec.t_min, spec.t_max if t_max is None else t_max,
                           spec.num_train_timesteps)
  noise = jax.random.normal(k_noise, x.shape, jnp.float32)
  abar = params["alphas_cumprod"]
  x_t = sds.add_noise(jax.lax.stop_gradient(x), noise, t, abar)
  if neg_emb is None:
    eps_c, eps_u = predict_cfg_pair(spec, jax.lax.stop_gradient(params), x_t, t, cond_emb,
                                    uncond_emb)
    grad = sds.sds_gradient(eps_c, eps_u, noise, t, abar, guidance_scale=spec.guidance_scale,
                            weighting=spec.weighting, clip=spec.grad_clip or None)
  else:
    eps_c, eps_u, eps_n = predict_perp_neg_batch(spec, jax.lax.stop_gradient(params), x_t, t,
                                                 cond_emb, uncond_emb, neg_emb)
    eps_hat = sds.perp_neg_guidance(eps_c, eps_u, eps_n, neg_weights, spec.guidance_scale)
    grad = sds.guided_sds_gradient(eps_hat, noise, t, abar, weighting=spec.weighting,
                                   clip=spec.grad_clip or None)
  loss = sds.sds_loss(x, grad)
  aux = {"t": t,
         "grad_norm": jnp.mean(jnp.sqrt(jnp.sum(jnp.square(grad.reshape(b, -1)), -1))),
         "weight": sds.sds_weight(t, abar, spec.weighting)}
  return loss, aux
