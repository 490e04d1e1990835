"""Write report.html (a run) or report.html per run + index.html (a sweep): flags in, one call.

    python -m interfusion_jax.report --workdir=RUN_OR_SWEEP

The pages are self-contained and open offline from the file system
(``evaluation.report``). Exit codes: 0 done, 2 bad input (one-line ``error: ...``).
"""
from __future__ import annotations

import sys

from absl import app, flags

from interfusion_jax.evaluation import report
from interfusion_jax.evaluation import rundirs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory or sweep directory.")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> int:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; use --workdir=DIR.", file=sys.stderr)
    return 2
  try:
    written = report.write_reports(FLAGS.workdir)
  except rundirs.RunDirError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for p in written:
    print(p)
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
