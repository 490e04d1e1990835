"""The training step of this tree against the same step of another checkout (e.g. before a change).

Each tree's step runs in fresh processes of its own (its own import of
``interfusion_jax``), alternating between the trees ``--rounds`` times on the
same machine, so the ratio is measured in one run. Every process builds the
scene of the ``--variant`` config (default ``cpu``, README's first command,
with the built-in prior), jits ``step.make_train_step(spec)`` (the loop's
step for one scene), runs ``--warmup`` steps, then times ``--steps`` steps on
the advancing state; it also records the trace + compile time of the first
call and the loss after the last step. The trees' C++ hash-grid kernels are
cached by their source, so each tree runs its own.

Usage:
  git worktree add /tmp/old <commit>
  PYTHONPATH=. python benchmarks/bench_step_versions.py --other=/tmp/old \
      [--variant cpu] [--steps 10] [--rounds 2] [--set field.hashgrid_backend=jax]
Writes benchmarks/results/step_versions.json (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs inside a fresh process with the tree's root first on sys.path. Only the
# API that both sides of a comparison have: loop.build_group over ConfigDicts,
# loop.restore_or_init, step.make_train_step.
_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["TREE"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import jax
from configs import hoi
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import step as step_lib
import interfusion_jax
assert interfusion_jax.__file__.startswith(os.environ["TREE"]), interfusion_jax.__file__
cfg = hoi.get_config(os.environ["VARIANT"])
for key, value in json.loads(os.environ["OVERRIDES"]).items():
  *parents, leaf = key.split(".")
  node = cfg
  for name in parents:
    node = getattr(node, name)
  setattr(node, leaf, value)
group = loop.build_group([cfg])
scene = group.scenes[0]
state = loop.restore_or_init(cfg, group.spec, None, False, scene.object_origin)
step = jax.jit(step_lib.make_train_step(group.spec))
key = jax.random.PRNGKey(3)
t0 = time.perf_counter()
state, m = step(state, scene.frozen, key)
jax.block_until_ready(state)
compile_s = time.perf_counter() - t0
for i in range(int(os.environ["WARMUP"])):
  state, m = step(state, scene.frozen, jax.random.fold_in(key, i + 1))
jax.block_until_ready(state)
n = int(os.environ["STEPS"])
t0 = time.perf_counter()
for i in range(n):
  state, m = step(state, scene.frozen, jax.random.fold_in(key, 100 + i))
jax.block_until_ready(state)
print(json.dumps({"step_s": (time.perf_counter() - t0) / n, "first_call_s": compile_s,
                  "loss": float(m["loss"]), "steps_timed": n}))
"""


def run_tree(tree: pathlib.Path, variant: str, steps: int, warmup: int,
             overrides: dict | None = None) -> dict:
  env = dict(os.environ, TREE=str(tree), VARIANT=variant, STEPS=str(steps), WARMUP=str(warmup),
             PYTHONPATH=str(tree), JAX_PLATFORMS="cpu", OVERRIDES=json.dumps(overrides or {}))
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True,
                       cwd=tree, check=False)
  if out.returncode != 0:
    raise SystemExit(f"{tree}: the step failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--other", required=True, help="root of the other checkout (the baseline)")
  ap.add_argument("--variant", default="cpu")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="config override applied in both trees, e.g. "
                       "field.hashgrid_backend=jax (value: a JSON literal or a string)")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_versions.json"))
  args = ap.parse_args()
  overrides = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep or not key:
      print(f"error: --set {item!r}: write KEY=VALUE, e.g. --set field.hashgrid_backend=jax",
            file=sys.stderr)
      raise SystemExit(2)
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  other = pathlib.Path(args.other).resolve()
  if not (other / "interfusion_jax").is_dir():
    print(f"error: --other={other} holds no interfusion_jax package; give a checkout's root "
          "(e.g. git worktree add /tmp/old <commit>).", file=sys.stderr)
    raise SystemExit(2)
  runs = {"this": [], "other": []}
  for r in range(args.rounds):
    for name, tree in (("other", other), ("this", ROOT)):
      res = run_tree(tree, args.variant, args.steps, args.warmup, overrides)
      runs[name].append(res)
      print(f"round {r}: {name}: {res}", flush=True)
  best = {k: min(v, key=lambda x: x["step_s"]) for k, v in runs.items()}
  result = {
      "variant": args.variant, "overrides": overrides, "steps_timed": args.steps, "rounds": args.rounds,
      "other_tree": str(other),
      "other_commit": subprocess.run(["git", "-C", str(other), "rev-parse", "HEAD"],
                                     capture_output=True, text=True).stdout.strip(),
      "this_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "loadavg_1min": os.getloadavg()[0]},
      "runs": runs,
      "best_step_s": {k: v["step_s"] for k, v in best.items()},
      "step_time_ratio_this_over_other": best["this"]["step_s"] / best["other"]["step_s"],
      "first_call_ratio_this_over_other": best["this"]["first_call_s"] / best["other"]["first_call_s"],
  }
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps({k: result[k] for k in ("best_step_s", "step_time_ratio_this_over_other",
                                           "first_call_ratio_this_over_other")}, indent=1))


if __name__ == "__main__":
  main()
