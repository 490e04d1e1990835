"""Cost of the built-in prior's denoiser call inside every training step.

    PYTHONPATH=. python benchmarks/bench_prior.py [--repeats 20]

One call = what ``guidance_apply`` asks of the prior per step at the ``cpu``
variant: 8 noisy 32x32 images (4 renders x CFG pair) against the shipped
bank, with the camera direction appended. Compares, in one run and
interleaved, the per-caption sharpness path (``object_sharpness`` in the
params: lambda chosen from each caption's render kind) against the single
scalar lambda path (no ``object_sharpness``), and reports the ratio.
Writes benchmarks/results/prior.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import hoi  # noqa: E402
from interfusion_jax.stage2 import run_io# noqa: E402
from interfusion_jax.prior import assets# noqa: E402
from interfusion_jax.guidance import builtin as denoiser
from interfusion_jax.stage2 import config as config_lib


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prior.json"))
  args = ap.parse_args(argv)

  spec, params, _ = assets.load_builtin_guidance(config_lib.guidance_options(config_lib.parse(hoi.get_config("cpu"))), config_lib.prompt_spec(config_lib.parse(hoi.get_config("cpu"))), progress=False)
  caps = ["a man in a red shirt, side view", "the head of a man in a red shirt",
          "a blue chair, side view", "a man in a red shirt sitting on a chair"]
  cond = denoiser.embed_captions(caps)                                  # [4, 1, 46]
  emb = np.concatenate([cond, np.repeat(denoiser.embed_captions([""]), 4, 0)])
  d = np.tile(np.array([[[0.6, 0.0, 0.8]]], np.float32), (8, 1, 1))
  emb = jnp.asarray(np.concatenate([emb, d], -1))                       # [8, 1, 49]
  r = params["bank"].shape[1]
  x_t = jax.random.normal(jax.random.PRNGKey(0), (8, r, r, 3))
  t = jnp.full((8,), 300, jnp.int32)
  scalar = {k: v for k, v in params.items() if k != "object_sharpness"}
  call = jax.jit(lambda p, x: denoiser.predict_eps(spec, p, x, t, emb))  # one trace per tree
  ps = {"per_caption": params, "scalar": scalar}
  for p in ps.values():
    jax.block_until_ready(call(p, x_t))
  times = {k: [] for k in ps}
  for _ in range(args.repeats):
    for k, p in ps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call(p, x_t))
      times[k].append(time.perf_counter() - t0)
  med = {k: float(np.median(v)) for k, v in times.items()}
  row = {"bank_images": int(params["bank"].shape[0]), "batch": 8, "repeats": args.repeats,
         "median_ms": {k: round(1e3 * v, 2) for k, v in med.items()},
         "per_caption_over_scalar": round(med["per_caption"] / med["scalar"], 3)}
  print(json.dumps(row))
  run_io.write_json(pathlib.Path(args.out), row)
  return 0


if __name__ == "__main__":
  sys.exit(main())
