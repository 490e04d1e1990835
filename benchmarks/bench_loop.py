"""The one loop's compiled step against the plain jitted step, on the default run's config.

The loop (stage2/loop.py) trains every run as a group: one ``jax.jit`` of a
``jax.vmap`` over scenes with ``NamedSharding`` (a single run is a group of
one). The loop before issue 12 jitted ``train_step`` itself. This measures,
in one process and interleaved, the step time of both on the same state,
frozen inputs and keys, for the ``cpu`` variant (README's first command)
with the built-in prior, and checks that they compute the same update.

Usage: PYTHONPATH=. python benchmarks/bench_loop.py [--variant cpu] [--repeats 10]
Writes benchmarks/results/loop.json.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import hoi  # noqa: E402
from interfusion_jax.stage2 import loop  # noqa: E402
from interfusion_jax.stage2 import setup as setup_lib  # noqa: E402
from interfusion_jax.stage2 import step as step_lib  # noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="cpu")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loop.json"))
  args = ap.parse_args()
  cfg = hoi.get_config(args.variant)
  scene = setup_lib.build_scene(config_lib.parse(cfg), None)
  group = loop.single_group(scene, cfg, None)
  state = step_lib.init_state(jax.random.PRNGKey(0), scene.spec, scene.object_origin)

  plain = jax.jit(step_lib.make_train_step(scene.spec))
  compiled = loop.compile_group(scene.spec, 1)
  frozen_g = loop.place_frozen(group.frozen, compiled)
  key = jax.random.PRNGKey(7)

  def run_plain():
    return plain(state, scene.frozen, key)

  def run_group():
    # donate_argnums: hand the group step a fresh copy of the stacked state each call
    return compiled.step(jax.device_put(loop.stack([state]), compiled.scene_sharding),
                         frozen_g, key[None])

  t0 = time.perf_counter()
  p_state, p_metrics = jax.block_until_ready(run_plain())
  compile_plain = time.perf_counter() - t0
  t0 = time.perf_counter()
  g_state, g_metrics = jax.block_until_ready(run_group())
  compile_group = time.perf_counter() - t0
  diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)[0]))) for a, b in
           zip(jax.tree_util.tree_leaves(p_state.params),
               jax.tree_util.tree_leaves(g_state.params))]
  times = {"plain": [], "group": []}
  for _ in range(args.repeats):
    for name, fn in (("plain", run_plain), ("group", run_group)):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  med = {k: float(np.median(v)) for k, v in times.items()}
  result = {
      "what": f"one training step of configs/hoi.py:{args.variant} (built-in prior), "
              "interleaved medians: the loop's group step (jit of vmap over 1 scene, "
              "NamedSharding, donated state) vs jax.jit(train_step)",
      "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
      "repeats": args.repeats, "plain_step_s": med["plain"], "group_step_s": med["group"],
      "group_over_plain": med["group"] / med["plain"],
      "compile_plain_s": compile_plain, "compile_group_s": compile_group,
      "loss_plain": float(p_metrics["loss"]), "loss_group": float(g_metrics["loss"][0]),
      "max_param_diff_after_one_step": max(diffs),
  }
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
