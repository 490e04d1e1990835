"""Prompt sweeps from the command line: flags in, one library call.

    python -m interfusion_jax.sweep --config=configs/hoi.py[:variant] \
        --prompts=configs/sweeps/official.jsonl --workdir=runs/official

On several hosts run the same command on every host; on Cloud TPU
``jax.distributed`` finds the others itself, elsewhere pass
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or let
SLURM's environment supply them). Re-running the command resumes. The sweep
itself is ``stage2.sweep.run_sweep`` (docs/sweeps.md). With ``--seeds=N`` (or a
``seeds`` column) every scene trains N seeds, ranked afterwards by
``evaluation.ranking.rank_sweep`` (CLIP with ``--clip_dir``, else geometry) and
linked as ``<workdir>/<scene>/best``. Exit codes: 0 every
scene done, 1 some scene failed or is unfinished, 2 bad input or a directory
in use by another process (one line ``error: ...``), 130 interrupted by SIGINT
or SIGTERM (every scene in training checkpointed).
"""
from __future__ import annotations

import logging
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from interfusion_jax import hub
from interfusion_jax.evaluation import ranking
from interfusion_jax.evaluation import report
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import processes as processes_lib
from interfusion_jax.stage2 import prompt_file
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import sweep as sweep_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Base config of every scene, e.g. configs/hoi.py:paper.", lock_config=True)
flags.DEFINE_string("prompts", None, "Prompt file: .jsonl or .csv, one scene a row "
                    "(columns: docs/sweeps.md).")
flags.DEFINE_string("workdir", None, "Sweep directory: one run directory per scene, "
                    "sweep.json and sweep.csv.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (jax.distributed); "
                    "not needed on Cloud TPU or with a single process.")
flags.DEFINE_integer("num_processes", None, "Number of processes (jax.distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (jax.distributed).")
flags.DEFINE_bool("retry_failed", False, "Train scenes marked failed again.")
flags.DEFINE_bool("progress", True, "Show the progress bar (process 0).")
flags.DEFINE_integer("seeds", 1, "Best-of-N: seeds per scene (rows may set their own "
                     "'seeds'); each seed is a run <workdir>/<scene>/seed-<seed>/, the best "
                     "is linked as <workdir>/<scene>/best.")
flags.DEFINE_string("clip_dir", None, "FlaxCLIP folder or hub id that ranks the seeds by CLIP score "
                    "(default: config.pose.clip_dir; none: ranked by the geometry score).")
flags.mark_flags_as_required(["config", "prompts", "workdir"])


def main(argv) -> int:
  del argv
  try:
    processes = processes_lib.initialize_distributed(FLAGS.coordinator_address,
                                                     FLAGS.num_processes, FLAGS.process_id)
  except processes_lib.DistributedSetupError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  setup_lib.enable_compilation_cache()
  loop.sigterm_as_interrupt()
  absl_logging.set_verbosity(absl_logging.WARNING if processes.index == 0 else absl_logging.ERROR)
  if processes.index != 0:   # logs come from process 0 only
    logging.getLogger().setLevel(logging.ERROR)
  try:
    base = config_lib.parse(FLAGS.config)   # the one translation into typed specs
    clip_dir = str(FLAGS.clip_dir if FLAGS.clip_dir is not None else base.pose.clip_dir or "")
    if clip_dir.strip() and not (pathlib.Path(clip_dir).expanduser().is_dir()
                                 or hub.is_hub_id(clip_dir)):
      raise prompt_file.SweepError(f"--clip_dir={clip_dir}: neither a directory nor a hub "
                                   "model id; give a FlaxCLIP folder or id (e.g. "
                                   "openai/clip-vit-base-patch32), or none to rank seeds by "
                                   "geometry.")
    entries = sweep_lib.run_sweep(base, FLAGS.prompts, FLAGS.workdir,
                                  processes=processes, progress=FLAGS.progress,
                                  retry_failed=FLAGS.retry_failed, seeds=FLAGS.seeds)
  except (prompt_file.SweepError, setup_lib.TrainSetupError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"Interrupted; checkpoints written under {FLAGS.workdir}. Run the same command "
          "to resume.", file=sys.stderr)
    return 130
  if processes.index == 0:
    for scene, r in ranking.refresh_ranking(FLAGS.workdir, clip_dir).items():
      print(f"{scene}: best of {len(r['order'])} seeds by {r['by']}: {r['best']} "
            f"(linked as {FLAGS.workdir}/{scene}/{ranking.BEST_LINK}).")
    report.refresh_reports(FLAGS.workdir)
    counts = {}
    for e in entries:
      counts[e["status"]] = counts.get(e["status"], 0) + 1
    print(f"Sweep: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}; index: "
          f"{FLAGS.workdir}/sweep.json, sweep.csv, index.html.")
  return 0 if all(e["status"] == "done" for e in entries) else 1


def cli() -> None:
  """Entry point: rejects unknown --config.* keys in one line, then runs ``main``."""
  config_lib.exit_on_bad_overrides(sys.argv[1:])
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli()
