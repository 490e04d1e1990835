"""Measures README's first command end to end and checks issue 7's bars on its result.

    PYTHONPATH=. python benchmarks/bench_default_run.py [--variant cpu] [--workdir DIR]
        [--warm-cache] [--eval-only] [--set key=value ...]

1. Runs ``python -m interfusion_jax.train --config=configs/hoi.py:<variant>
   --workdir=DIR`` as a subprocess (a cold XLA compilation cache and a cold
   anchor cache by default, like a fresh clone), timing the whole command and,
   from the moments the rows of metrics.jsonl appear, the compile/setup time
   before the first logged step and the time per step after it.
2. Loads the final checkpoint (``train.load_trained``) and computes the bar
   metrics with ``interfusion_jax.evaluation.metrics.evaluate_run`` on a 128^3 grid.
3. Writes benchmarks/results/default_run.json (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _watch_metrics(path: pathlib.Path, stamps: list, stop: threading.Event) -> None:
  """Appends (wall time, step) each time a new metrics.jsonl row appears."""
  seen = 0
  while not stop.is_set():
    if path.exists():
      lines = path.read_text().splitlines()
      now = time.perf_counter()
      for line in lines[seen:]:
        try:
          stamps.append((now, int(json.loads(line)["step"])))
        except (ValueError, KeyError):
          continue
      seen = len(lines)
    stop.wait(0.25)


def run_command(variant: str, workdir: pathlib.Path, warm_cache: bool, sets: list) -> dict:
  """Runs the training CLI; returns timings (seconds) and the exit code."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
  extra = [f"--config.{s}" for s in sets]
  tmp = None
  if not warm_cache:
    tmp = tempfile.mkdtemp(prefix="bench_default_run_cache_")
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tmp, "jax")
    extra.append(f"--config.body.cache_dir={os.path.join(tmp, 'anchors')}")
  cmd = [sys.executable, "-m", "interfusion_jax.train", f"--config=configs/hoi.py:{variant}",
         f"--workdir={workdir}", "--noprogress"] + extra
  stamps, stop = [], threading.Event()
  watcher = threading.Thread(target=_watch_metrics,
                             args=(workdir / "metrics.jsonl", stamps, stop), daemon=True)
  t0 = time.perf_counter()
  watcher.start()
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  stop.set()
  watcher.join()
  if tmp:
    shutil.rmtree(tmp, ignore_errors=True)
  out = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "wall_time_s": wall,
         "stderr_tail": proc.stderr[-2000:] if proc.returncode else ""}
  if len(stamps) >= 2:
    (t_a, s_a), (t_b, s_b) = stamps[0], stamps[-1]
    out["time_to_first_logged_step_s"] = t_a - t0
    out["first_logged_step"] = s_a
    out["step_time_after_compile_s"] = (t_b - t_a) / max(s_b - s_a, 1)
    out["final_outputs_s"] = wall - (t_b - t0)
    # Setup + compile estimate: time to the first row minus its steps at the steady rate.
    out["setup_and_compile_s_est"] = (t_a - t0) - s_a * out["step_time_after_compile_s"]
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--variant", default="cpu")
  ap.add_argument("--workdir", default="")
  ap.add_argument("--out", default=str(ROOT / "benchmarks/results/default_run.json"))
  ap.add_argument("--warm-cache", action="store_true",
                  help="use the user's XLA/anchor caches instead of cold temporary ones")
  ap.add_argument("--eval-only", action="store_true", help="only evaluate --workdir")
  ap.add_argument("--set", action="append", default=[],
                  help="extra config override key=value (e.g. prompt.human='a man in red')")
  ap.add_argument("--resolution", type=int, default=128)
  args = ap.parse_args()

  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_default_run_"))
  result = {"variant": args.variant, "workdir": str(workdir), "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0], "overrides": args.set}
  if not args.eval_only:
    if (workdir / "checkpoints").exists():
      sys.exit(f"{workdir} already holds checkpoints; pass a fresh --workdir.")
    result["run"] = run_command(args.variant, workdir, args.warm_cache, args.set)
    print(json.dumps(result["run"], indent=1))
    if result["run"]["returncode"] != 0:
      sys.exit(f"training failed:\n{result['run']['stderr_tail']}")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  sys.path.insert(0, str(ROOT))
  from interfusion_jax.evaluation import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  t = time.perf_counter()
  metrics = metrics_lib.evaluate_run(str(workdir), resolution=args.resolution)
  result["evaluate_s"] = time.perf_counter() - t
  if "run" in result:
    metrics["wall_time_s"] = result["run"]["wall_time_s"]
  summary = workdir / "final" / "summary.json"
  if summary.exists():
    s = json.loads(summary.read_text())
    result["summary"] = {k: s.get(k) for k in ("step", "wall_time_s", "steps_per_second",
                                               "total_skipped_steps", "object_center")}
    result["outputs_present"] = sorted(pathlib.Path(p).name for p in s.get("outputs", {}).values()
                                       if pathlib.Path(p).exists())
  result["metrics"] = metrics
  result["bars"] = metrics_lib.check_bars(metrics)
  result["thresholds"] = metrics_lib.BARS
  print(json.dumps({"metrics": metrics, "bars": result["bars"]}, indent=1))
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
  main()
