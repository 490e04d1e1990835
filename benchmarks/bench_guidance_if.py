"""Tiny IF-I UNet: our jitted Flax forward vs diffusers' PyTorch on the CPU, in one run.

``python benchmarks/bench_guidance_if.py`` -> benchmarks/results/guidance_if.json.
Batch 8 (4 renders x the CFG pair), 16x16, the tiny_models IF config; the
two are timed interleaved so CPU contention hits both alike.
"""
import json
import os
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import tiny_models  # noqa: E402
from interfusion_jax.guidance import deepfloyd, loading  # noqa: E402


def main(reps: int = 20, batch: int = 8) -> dict:
  folder = pathlib.Path(tempfile.mkdtemp()) / "unet"
  pt = tiny_models.make_torch_if_unet(folder)
  model, params, _ = loading.load_if_unet(folder.parent)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
  t = rng.integers(20, 980, batch)
  e = rng.standard_normal((batch, 77, tiny_models.IF_TEXT_DIM)).astype(np.float32)
  f = jax.jit(model.apply)
  t0 = time.perf_counter()
  jax.block_until_ready(f({"params": params}, x, t, e))
  compile_s = time.perf_counter() - t0
  xt, tt, et = torch.tensor(x), torch.tensor(t), torch.tensor(e)
  with torch.no_grad():
    pt(xt, tt, et)
  jx, tx = [], []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f({"params": params}, x, t, e))
    jx.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    with torch.no_grad():
      pt(xt, tt, et)
    tx.append(time.perf_counter() - t0)
  jm, tm = float(np.median(jx)), float(np.median(tx))
  out = {"what": "tiny IF-I UNet forward (tests/tiny_models.if_unet_kwargs), batch 8, 16x16, "
                 "77 text tokens, fp32, CPU, interleaved medians",
         "reps": reps, "jax_ms": round(jm * 1e3, 2), "torch_ms": round(tm * 1e3, 2),
         "torch_over_jax": round(tm / jm, 2), "jax_compile_s": round(compile_s, 2),
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
         "jax": jax.__version__, "torch": torch.__version__}
  path = ROOT / "benchmarks" / "results" / "guidance_if.json"
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
