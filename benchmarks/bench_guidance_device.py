"""The real IF-I-XL UNet on an accelerator, random bf16 weights: one command.

``python benchmarks/bench_guidance_device.py`` (GPU/TPU) -> UNet calls/s at
batch 8 (4 renders x the CFG pair), compile time, peak device memory;
writes benchmarks/results/guidance_device.json. On a CPU-only machine it
refuses (the XL forward needs ~9 GB and minutes per call) unless ``--tiny``
(the tests' tiny IF config, for checking the script itself).

Weights are random (no download): drawn on the host in bf16 and
``device_put`` once, as ``loading.load_if_unet`` does with real weights.
"""
import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from interfusion_jax.guidance import deepfloyd, loading  # noqa: E402

XL = dict(sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
          block_out_channels=(704, 1408, 2112, 2816),
          down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
          up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
          mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64,
          cross_attention_dim=2816, cross_attention_norm="group_norm", encoder_hid_dim=4096,
          addition_embed_type="text", addition_embed_type_num_heads=64,
          resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_eps=1e-5)


def random_host_params(shapes, dtype, seed=0):
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(shapes)
  out = {k: ((k[-1] == "scale") + 0.02 * rng.standard_normal(v.shape, np.float32)).astype(dtype)
         for k, v in flat.items()}
  return traverse_util.unflatten_dict(out)


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--tiny", action="store_true", help="tiny config (runs on CPU)")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--reps", type=int, default=20)
  args = ap.parse_args()
  dev = jax.devices()[0]
  if dev.platform == "cpu" and not args.tiny:
    print("bench_guidance_device: no GPU/TPU found (jax.devices() is CPU). The IF-I-XL UNet "
          "needs an accelerator; run with --tiny to check the script on the CPU.")
    return 0
  if args.tiny:
    import tiny_models
    cfg, text_dim, res = tiny_models.if_unet_kwargs(), tiny_models.IF_TEXT_DIM, tiny_models.IF_SAMPLE
  else:
    cfg, text_dim, res = XL, 4096, 64
  model = deepfloyd.IFUNet.from_config(dict(cfg), dtype=jnp.bfloat16)
  shapes = jax.eval_shape(model.init_weights, jax.random.PRNGKey(0))
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes))
  params = loading.to_device(random_host_params(shapes, jnp.bfloat16))
  rng = np.random.default_rng(0)
  b = args.batch
  x = jnp.asarray(rng.standard_normal((b, 3, res, res)), jnp.bfloat16)
  t = jnp.asarray(rng.integers(20, 980, b))
  e = jnp.asarray(rng.standard_normal((b, 77, text_dim)), jnp.bfloat16)
  f = jax.jit(model.apply)
  t0 = time.perf_counter()
  compiled = f.lower({"params": params}, x, t, e).compile()
  compile_s = time.perf_counter() - t0
  out = compiled({"params": params}, x, t, e)
  jax.block_until_ready(out)
  finite = bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  t0 = time.perf_counter()
  for _ in range(args.reps):
    out = compiled({"params": params}, x, t, e)
  jax.block_until_ready(out)
  dt = (time.perf_counter() - t0) / args.reps
  stats = dev.memory_stats() or {}
  res_json = {"what": ("IF-I-XL" if not args.tiny else "tiny IF") + " UNet forward, random bf16 "
                      f"weights, batch {b} (4 renders x CFG pair), {res}x{res}, 77 T5 tokens",
              "device": str(dev.device_kind), "platform": dev.platform, "params": n_params,
              "calls_per_s": round(1.0 / dt, 3), "ms_per_call": round(dt * 1e3, 2),
              "compile_s": round(compile_s, 2), "output_finite": finite,
              "peak_device_bytes": stats.get("peak_bytes_in_use"),
              "weights_bytes": 2 * n_params, "jax": jax.__version__}
  name = "guidance_device_tiny.json" if args.tiny else "guidance_device.json"
  (ROOT / "benchmarks" / "results" / name).write_text(json.dumps(res_json, indent=1) + "\n")
  print(json.dumps(res_json, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
