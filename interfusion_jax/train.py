"""Stage 2 of InterFusion from the command line: flags in, one library call.

    python -m interfusion_jax.train --config=configs/hoi.py[:variant] \
        --config.prompt.object="a bike" --workdir=runs/bike [--resume|--noresume]

The run itself is ``stage2.loop.run``; the training step is in
``stage2/step.py``. Exit codes: 0 done; 2 bad input (config, weights, anchor, work directory),
a work directory in use by another process or started with another config,
or too many non-finite steps, with a one-line ``error: ...`` message; 130
interrupted by SIGINT or SIGTERM (the step in flight finishes and a
checkpoint is written; run the same command to resume).
"""
from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from interfusion_jax.evaluation import report
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import setup as setup_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/hoi.py or configs/hoi.py:smoke.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (created).")
flags.DEFINE_bool("resume", None, "Resume from the latest checkpoint (default: automatically "
                  "when the workdir has one; --noresume starts fresh).")
flags.DEFINE_bool("progress", True, "Show the progress bar (--noprogress hides it).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
  del argv
  setup_lib.enable_compilation_cache()
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/JAX INFO chatter off
  loop.sigterm_as_interrupt()
  try:
    run = config_lib.parse(FLAGS.config)   # the one translation into typed specs
    summary = loop.run(run, FLAGS.workdir, resume=FLAGS.resume, progress=FLAGS.progress)
  except (setup_lib.TrainSetupError, config_lib.ConfigError, loop.TooManySkipsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"Interrupted; the checkpoints written so far are in {FLAGS.workdir}/checkpoints "
          "(final/ untouched). Run the same command to resume.", file=sys.stderr)
    return 130
  if summary.get("interrupted"):
    print(f"Interrupted by {summary.get('signal') or 'Ctrl-C'} at step "
          f"{int(summary['state'].step)}; checkpoint written to {FLAGS.workdir}/checkpoints. "
          "Run the same command to resume.", file=sys.stderr)
    return 130
  report.refresh_reports(FLAGS.workdir)
  print(f"Done: {FLAGS.workdir}/final (summary.json, turntables, meshes) and "
        f"{FLAGS.workdir}/report.html.")
  return 0


def cli() -> None:
  """Entry point: rejects unknown --config.* keys in one line, then runs ``main``."""
  try:
    config_lib.check_overrides(sys.argv[1:])
  except config_lib.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli()
