"""S = 4 scenes in one sweep against 4 sequential single runs (smoke config, CPU).

    python benchmarks/bench_sweep.py [--steps 12] [--repeats 2] [--out benchmarks/results/sweep.json]

Each mode runs in its own fresh process with an empty compilation cache and
one CPU device: ``sweep`` calls ``stage2.sweep.run_sweep`` on a 4-row prompt
file; ``single`` calls ``stage2.loop.run`` once per scene. Neither writes
final outputs (training only). Per mode: total wall time of the process's
work, XLA compile time (the sum of jax's backend-compile events), the
training throughput excluding compiles (scene-steps per second and steps per
second seen by one scene), and the peak resident memory of the process.
Each mode runs ``--repeats`` times, interleaved with the other; per mode the
repetition with the shortest wall time is reported (every wall time is kept).
The JSON holds both modes and their ratios, measured in one invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Four colour scenes of the built-in prior (configs/sweeps/colors4.jsonl).
SCENES = [json.loads(line) for line in
          (ROOT / "configs" / "sweeps" / "colors4.jsonl").read_text().splitlines()]


def child(mode: str, steps: int, workdir: str) -> dict:
  """One mode in this process; returns its measurements."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  compile_s = [0.0]

  def on_duration(event, duration, **kw):
    del kw
    if event == "/jax/core/compile/backend_compile_duration":
      compile_s[0] += duration
  monitoring.register_event_duration_secs_listener(on_duration)
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_sweep_cache"))
  sys.path.insert(0, str(ROOT))
  from configs import hoi  # pylint: disable=g-import-not-at-top
  from interfusion_jax.stage2 import loop, sweep  # pylint: disable=g-import-not-at-top

  base = hoi.get_config("smoke")
  base.train.steps = steps
  base.train.val_every = 10 * steps
  work = pathlib.Path(workdir)
  t0 = time.perf_counter()
  if mode == "sweep":
    prompts = work / "scenes.jsonl"
    prompts.write_text("".join(json.dumps(s) + "\n" for s in SCENES))
    entries = sweep.run_sweep(base, prompts, work / "sweep", progress=False,
                              final_outputs=False)
    assert all(e["step"] == steps for e in entries), entries
  else:
    for s in SCENES:
      cfg = base.copy_and_resolve_references()
      for k in ("human", "object", "interaction"):
        setattr(cfg.prompt, k, s[k])
      cfg.seed = s.get("seed", 0)
      out = loop.run(cfg, str(work / s["name"]), progress=False, final_outputs=False)
      assert int(out["state"].step) == steps
  wall = time.perf_counter() - t0
  train_s = max(wall - compile_s[0], 1e-9)
  n = len(SCENES)
  return {"mode": mode, "scenes": n, "steps": steps, "wall_s": wall,
          "compile_s": compile_s[0],
          "scene_steps_per_s_excl_compile": n * steps / train_s,
          "steps_per_s_per_scene_excl_compile": (steps / train_s if mode == "sweep"
                                                 else n * steps / train_s),
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
          "devices": jax.local_device_count()}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=12)
  ap.add_argument("--repeats", type=int, default=2,
                  help="fresh processes per mode; each mode's fastest is reported")
  ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sweep.json"))
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print("RESULT " + json.dumps(child(args.child, args.steps, args.workdir)), flush=True)
    return
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = {"single": [], "sweep": []}
  for _ in range(args.repeats):   # interleaved, so a slow spell of the machine hits both
    for mode in runs:
      with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--steps",
                               str(args.steps), "--workdir", tmp], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=False)
      line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
      if line is None:
        raise SystemExit(f"bench_sweep: the {mode} child failed:\n{done.stderr[-3000:]}")
      runs[mode].append(json.loads(line[len("RESULT "):]))
  # Per mode, the repetition with the shortest wall time (all its figures).
  s, q = (min(runs[m], key=lambda r: r["wall_s"]) for m in ("sweep", "single"))
  out = {
      "what": "S=4 smoke scenes: one sweep (stage2.sweep.run_sweep, one vmapped group) vs 4 "
              "sequential single runs (stage2.loop.run); training only, no final outputs; "
              "each mode in a fresh process with an empty compilation cache, 1 CPU device; "
              "per mode the fastest of `repeats` interleaved repetitions",
      "machine": f"{os.cpu_count()} CPU cores",
      "repeats": args.repeats,
      "wall_s_of_every_repeat": {m: [r["wall_s"] for r in rs] for m, rs in runs.items()},
      "single_runs": q, "sweep": s,
      "ratios_sweep_over_single": {
          "wall_s": s["wall_s"] / q["wall_s"],
          "compile_s": s["compile_s"] / q["compile_s"],
          "scene_steps_per_s_excl_compile": (s["scene_steps_per_s_excl_compile"]
                                             / q["scene_steps_per_s_excl_compile"]),
          "steps_per_s_per_scene_excl_compile": (s["steps_per_s_per_scene_excl_compile"]
                                                 / q["steps_per_s_per_scene_excl_compile"]),
          "peak_rss_mib": s["peak_rss_mib"] / q["peak_rss_mib"]},
      "measured": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  }
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(out, indent=2) + "\n")
  os.replace(tmp, path)
  print(json.dumps(out["ratios_sweep_over_single"], indent=2))


if __name__ == "__main__":
  main()
