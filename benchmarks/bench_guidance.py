"""Guidance throughput on CPU with tiny random diffusers Flax models.

Measures, in one run:
* pixel backend: guidance calls/s (value_and_grad of ``guidance_apply``) for
  4 renders of 64x64 -> one batched UNet call of 8 (cond + uncond);
* latent backend: 4 renders of 64x64 resized to 512 -> tiny 4-block VAE ->
  4x64x64 latents (encoder under remat) -> one UNet call of 8; and the split
  between the VAE encode
  (forward + backward) and the UNet call;
* the batched CFG call against a naive reference (two separate UNet calls of
  4, cond then uncond).

Usage: PYTHONPATH=.:tests python benchmarks/bench_guidance.py
Writes benchmarks/results/guidance.json.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import jax
import jax.numpy as jnp
import numpy as np

import tiny_models
from interfusion_jax.guidance import core, stable_diffusion


def _timeit(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))  # compile + warm up
  best = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best.append(time.perf_counter() - t0)
  return float(np.median(best))


def _abar():
  from interfusion_jax.guidance import schedule
  return jnp.asarray(schedule.alphas_cumprod_from_config(tiny_models.SCHEDULER))


def main():
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  key = jax.random.PRNGKey(0)
  results = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
             "renders": 4, "unet_batch": 8}
  b = 4
  imgs = jnp.asarray(np.random.default_rng(0).uniform(size=(b, 64, 64, 3)), jnp.float32)
  cond = jnp.asarray(np.random.default_rng(1).standard_normal((b, 77, tiny_models.TEXT_DIM)),
                     jnp.float32)
  uncond = jnp.zeros((77, tiny_models.TEXT_DIM))

  for kind in ("pixel", "latent"):
    kw = tiny_models.unet_kwargs(kind)
    # Self-attention only at 32x32 (a 64x64 attention map of batch 8 alone is
    # 8 x heads x 4096^2 floats); same channels as the test models.
    kw.update(sample_size=64, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=2)
    unet = FlaxUNet2DConditionModel(**kw)
    params = {"unet": tiny_models.random_params(jax.eval_shape(unet.init_weights, key)),
              "alphas_cumprod": _abar()}
    extra = {}
    if kind == "latent":
      vkw = tiny_models.vae_kwargs(n_blocks=4)
      vkw["sample_size"] = 512
      vae = FlaxAutoencoderKL(**vkw)
      params["vae"] = tiny_models.random_params(jax.eval_shape(vae.init_weights, key), 1)
      extra = dict(vae=vae, resolution=512, vae_remat=True)
      spec = core.GuidanceSpec(kind="stable_diffusion", guidance_scale=100.0, weighting="sds",
                               unet=unet, **extra)
    else:
      spec = core.GuidanceSpec(kind="pixel", guidance_scale=20.0, weighting="uniform",
                               unet=unet, resolution=64)
    params = jax.device_put(params)

    full = jax.jit(jax.value_and_grad(
        lambda im, k: core.guidance_apply(spec, params, im, cond, uncond, k)[0]))
    t_full = _timeit(full, imgs, key)
    print(kind, "full call", t_full, flush=True)
    x = core.encode(spec, params, imgs, key)
    t_ = jnp.full((b,), 500, jnp.int32)
    batched = jax.jit(lambda x: core.predict_cfg_pair(spec, params, x, t_, cond, uncond))
    t_unet = _timeit(batched, x)
    single = jax.jit(lambda x, e: core.predict_eps(spec, params, x, t_, e))
    naive = lambda x: (single(x, cond), single(x, jnp.broadcast_to(uncond, cond.shape)))
    t_naive = _timeit(naive, x)
    r = {"calls_per_s": 1.0 / t_full, "ms_per_call": 1e3 * t_full,
         "model_space": list(x.shape[1:]),
         "unet_batched_cfg_ms": 1e3 * t_unet, "unet_naive_two_calls_ms": 1e3 * t_naive,
         "batched_vs_naive_speedup": t_naive / t_unet}
    if kind == "latent":
      enc = jax.jit(lambda im, k: jax.vjp(lambda z: stable_diffusion.vae_encode(
          spec, params["vae"], z, k), im)[1](jnp.ones((b, 64, 64, 4)))[0])
      t_vae = _timeit(enc, imgs, key)
      r.update({"vae_encode_fwd_bwd_ms": 1e3 * t_vae,
                "vae_fraction_of_call": t_vae / t_full,
                "unet_fraction_of_call": t_unet / t_full})
    results[kind] = r
    print(kind, json.dumps(r, indent=1), flush=True)
  out = ROOT / "benchmarks" / "results" / "guidance.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print("wrote", out)


if __name__ == "__main__":
  main()
