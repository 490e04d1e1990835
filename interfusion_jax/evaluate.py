"""Evaluate finished runs as the paper does, from the command line: flags in, library calls.

    python -m interfusion_jax.evaluate --workdir=RUN_OR_SWEEP [--clip_dir=DIR] \
        [--views=8] [--elevation=DEG] [--resolution=PX] [--grid_resolution=128]
    python -m interfusion_jax.evaluate --compare=ours=runs/sweep,base=other/sweep \
        --sheets_dir=judge/ [--judge_cmd=PROGRAM] [--seed=0]

The first form writes eval.json (+ eval.csv, eval.md for a sweep) and refreshes the
reports; the second writes comparison sheets and a key, and with --judge_cmd tallies a
local program's answers. Exit codes: 0 done, 2 bad input (one-line ``error: ...``).
"""
from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging

from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.evaluation import clip_score, judge, protocol, report, rundirs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory or sweep directory to evaluate.")
flags.DEFINE_string("clip_dir", None, "Local FlaxCLIP directory or hub id, e.g. "
                    "openai/clip-vit-base-patch32 (default: the run's config.pose.clip_dir; "
                    "none: geometry metrics only).")
flags.DEFINE_integer("views", 8, "CLIP score views (turntable azimuths 360 k / N).")
flags.DEFINE_float("elevation", None, "CLIP view elevation, degrees (default: the run's "
                   "config.camera.eval_elevation_deg).")
flags.DEFINE_integer("resolution", 0, "CLIP view render size, pixels (0: CLIP's input size).")
flags.DEFINE_integer("grid_resolution", 128, "Geometry grid nodes per axis.")
flags.DEFINE_bool("geometry", True, "Compute the geometry metrics (--nogeometry skips them).")
flags.DEFINE_bool("reports", True, "Refresh report.html / index.html afterwards.")
flags.DEFINE_list("compare", None, "Methods to compare: NAME=DIR,NAME=DIR (run or sweep dirs).")
flags.DEFINE_string("sheets_dir", None, "Where the comparison sheets and key.json go (or are).")
flags.DEFINE_string("judge_cmd", None, "Local program asked about each sheet: PROGRAM "
                    "<sheet.png> <question.txt> (question also on stdin); last stdout line = "
                    "the letter.")
flags.DEFINE_float("judge_timeout", 600.0, "Seconds per sheet for --judge_cmd.")
flags.DEFINE_integer("seed", 0, "Seed of the sheets' label order.")


def evaluate_main() -> None:
  spec = clip_score.ClipScoreSpec(views=FLAGS.views, elevation_deg=FLAGS.elevation,
                                  resolution=FLAGS.resolution)
  clip_dir = (FLAGS.clip_dir if FLAGS.clip_dir is not None
              else protocol.default_clip_dir(FLAGS.workdir))
  clip = clip_lib.load_clip(clip_dir) if clip_dir.strip() else None
  if clip is None:
    print(protocol.NO_CLIP_NOTE)
  out = protocol.evaluate_path(FLAGS.workdir, clip=clip, score_spec=spec,
                                 grid_resolution=FLAGS.grid_resolution, geometry=FLAGS.geometry)
  for rec in out["records"]:   # which checkpoint each measured run used
    if rec.get("step") is not None:
      print(f"{rec['run']}: checkpoint step {rec['step']}")
  print(protocol.summary_text(out), end="")
  for p in report.write_reports(FLAGS.workdir) if FLAGS.reports else []:
    print(f"report: {p}")


def compare_main() -> None:
  if not FLAGS.sheets_dir:
    raise judge.JudgeError("--sheets_dir is required with --compare or --judge_cmd.")
  if FLAGS.compare:
    key = judge.make_sheets(judge.parse_methods(FLAGS.compare), FLAGS.sheets_dir, FLAGS.seed)
    print(f"{len(key['sheets'])} sheets in {FLAGS.sheets_dir}/sheets ({len(key['skipped'])} "
          f"prompts skipped); key: {FLAGS.sheets_dir}/key.json")
  if FLAGS.judge_cmd:
    res = judge.run_judge(FLAGS.judge_cmd, FLAGS.sheets_dir, timeout=FLAGS.judge_timeout)
    print("\n".join(judge.summary_lines(res)))


def main(argv) -> int:
  absl_logging.set_verbosity(absl_logging.WARNING)
  if len(argv) > 1 or not (FLAGS.workdir or FLAGS.compare or FLAGS.judge_cmd):
    print("error: give --workdir=RUN_OR_SWEEP, or --compare=NAME=DIR,... / --judge_cmd=... "
          f"with --sheets_dir=DIR (unexpected arguments: {argv[1:]}).", file=sys.stderr)
    return 2
  try:
    if FLAGS.workdir:
      evaluate_main()
    if FLAGS.compare or FLAGS.judge_cmd:
      compare_main()
  except (rundirs.RunDirError, clip_lib.ClipDirError, judge.JudgeError, ValueError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
