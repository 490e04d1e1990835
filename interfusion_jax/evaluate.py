"""Evaluate finished runs as the paper does, from the command line: flags in, library calls.

    python -m interfusion_jax.evaluate --workdir=RUN_OR_SWEEP [--clip_dir=DIR] \
        [--views=8] [--elevation=DEG] [--resolution=PX] [--grid_resolution=128]
    python -m interfusion_jax.evaluate --compare=ours=runs/sweep,base=other/sweep \
        --sheets_dir=judge/ [--judge_cmd=PROGRAM] [--seed=0]

The first form writes eval.json into every run (CLIP scores, geometry
metrics, the paper's reference figures), and for a sweep eval.json /
eval.csv / eval.md with the CLIP R-precision, then refreshes the reports
(``stage2.evaluation``, ``stage2.report``). The second form writes
comparison sheets and their key, and with --judge_cmd asks a local program
about each sheet and tallies the select percentage (``stage2.judge``).
Exit codes: 0 done, 2 bad input (one-line ``error: ...``).
"""
from __future__ import annotations

import math
import os
import pathlib
import sys

from absl import app, flags
from absl import logging as absl_logging

from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.stage2 import clip_score
from interfusion_jax.stage2 import evaluation
from interfusion_jax.stage2 import judge
from interfusion_jax.stage2 import report
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import rundirs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory or sweep directory to evaluate.")
flags.DEFINE_string("clip_dir", None, "Local FlaxCLIP directory (default: the run's "
                    "config.pose.clip_dir; none: geometry metrics only).")
flags.DEFINE_integer("views", 8, "CLIP score views (turntable azimuths 360 k / N).")
flags.DEFINE_float("elevation", None, "CLIP view elevation, degrees (default: the run's "
                   "config.camera.eval_elevation_deg).")
flags.DEFINE_integer("resolution", 0, "CLIP view render size, pixels (0: CLIP's input size).")
flags.DEFINE_integer("grid_resolution", 128, "Geometry grid nodes per axis.")
flags.DEFINE_bool("geometry", True, "Compute the geometry metrics (--nogeometry skips them).")
flags.DEFINE_bool("reports", True, "Refresh report.html / index.html afterwards.")
flags.DEFINE_list("compare", None, "Methods to compare: NAME=DIR,NAME=DIR (run or sweep dirs; "
                  "a bare DIR is named after its folder).")
flags.DEFINE_string("sheets_dir", None, "Where the comparison sheets and key.json go (or are).")
flags.DEFINE_string("judge_cmd", None, "Local program asked about each sheet: PROGRAM "
                    "<sheet.png> <question.txt>, question also on stdin; last stdout line = "
                    "the letter.")
flags.DEFINE_float("judge_timeout", 600.0, "Seconds per sheet for --judge_cmd.")
flags.DEFINE_integer("seed", 0, "Seed of the sheets' label order.")


def parse_methods(items) -> dict:
  """{name: dir} from NAME=DIR / DIR items."""
  out = {}
  for item in items:
    name, _, path = item.partition("=") if "=" in item else (None, "", item)
    name = name or pathlib.Path(path).absolute().name
    if name in out:
      raise judge.JudgeError(f"--compare names {name!r} twice; give NAME=DIR pairs.")
    out[name] = path
  return out


def default_clip_dir(path) -> str:
  """config.pose.clip_dir of the first run under ``path`` ("" when unset)."""
  first = rundirs.discover(path).runs[0]
  try:
    return str(run_io.load_config(first).pose.get("clip_dir", "") or "")
  except (FileNotFoundError, AttributeError, ValueError):
    return ""


def _fmt(v) -> str:
  return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (
      f"{v:.4f}" if isinstance(v, float) else str(v))


def evaluate_main() -> int:
  clip_dir = FLAGS.clip_dir if FLAGS.clip_dir is not None else default_clip_dir(FLAGS.workdir)
  clip = None
  if clip_dir.strip():
    clip = clip_lib.load_clip(clip_dir)
  else:
    print(evaluation.NO_CLIP_NOTE)
  spec = clip_score.ClipScoreSpec(views=FLAGS.views, elevation_deg=FLAGS.elevation,
                                  resolution=FLAGS.resolution)
  out = evaluation.evaluate_path(FLAGS.workdir, clip=clip, score_spec=spec,
                                 grid_resolution=FLAGS.grid_resolution,
                                 geometry=FLAGS.geometry)
  print(evaluation.table_markdown(out["rows"]), end="")
  if out["kind"] == "sweep":
    print(f"CLIP R-precision: {_fmt(out['r_precision'])} {out['r_precision_note']}".rstrip())
  if FLAGS.reports:
    for p in report.write_reports(FLAGS.workdir):
      print(f"report: {p}")
  return 0


def compare_main() -> int:
  if not FLAGS.sheets_dir:
    raise judge.JudgeError("--sheets_dir is required with --compare or --judge_cmd.")
  if FLAGS.compare:
    key = judge.make_sheets(parse_methods(FLAGS.compare), FLAGS.sheets_dir, seed=FLAGS.seed)
    print(f"{len(key['sheets'])} sheets in {FLAGS.sheets_dir}/sheets "
          f"({len(key['skipped'])} prompts skipped); key: {FLAGS.sheets_dir}/key.json")
  if FLAGS.judge_cmd:
    res = judge.run_judge(FLAGS.judge_cmd, FLAGS.sheets_dir, timeout=FLAGS.judge_timeout)
    print(f"sheets {res['sheets']}: valid {res['valid']} (ties {res['ties']}), invalid "
          f"{res['invalid']}, missing {res['missing']}")
    for m, r in res["per_method"].items():
      print(f"{m}: select {_fmt(r['select_pct'])} % ({r['credit']:g} of {r['valid_sheets']})")
  return 0


def main(argv) -> int:
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}; use --workdir=... or --compare=...",
          file=sys.stderr)
    return 2
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  absl_logging.set_verbosity(absl_logging.WARNING)
  if not FLAGS.workdir and not FLAGS.compare and not FLAGS.judge_cmd:
    print("error: give --workdir=RUN_OR_SWEEP, or --compare=... / --judge_cmd=... with "
          "--sheets_dir=DIR.", file=sys.stderr)
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


def cli() -> None:
  app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
  cli()
