"""The paper's evaluation protocol on run and sweep directories (PAPER.md "How the
paper evaluates"): the CLIP score of the interaction, human and object renders,
R-precision over a sweep's prompts, and the bar metrics of ``evaluation.metrics``;
``eval.json`` / ``eval.csv`` / a Markdown table per run or sweep.
"""
from __future__ import annotations

import csv
import io
import math
import pathlib
import time
from typing import Sequence

import numpy as np

from interfusion_jax import fileio
from interfusion_jax.evaluation import clip_score as clip_score_lib
from interfusion_jax.evaluation import metrics
from interfusion_jax.evaluation import rundirs
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import run_io

# Figures the paper reports (PAPER.md "How the paper evaluates"); never measured here.
PAPER_REFERENCE = (
    {"method": "InterFusion", "metric": "CLIP score", "value": 0.3308,
     "note": "reported in the paper (61 prompts, the best of all methods); not measured here"},
    {"method": "InterFusion", "metric": "GPT-4V select %", "value": 65.57,
     "note": "reported in the paper (40 of 61 prompts); not measured here"},
)
NO_CLIP_NOTE = ("CLIP score not computed: no CLIP weights (give --clip_dir=openai/clip-vit-"
                "base-patch32, a hub id fetched once, or a local FlaxCLIP directory saved with "
                "save_pretrained, or set config.pose.clip_dir); geometry metrics only.")
GEOMETRY_KEYS = ("human_iou", "object_volume_litres", "object_inside_fraction", "object_gap_m")
CSV_COLUMNS = ("run", "scene_prompt", "step", "clip_interaction", "clip_human", "clip_object",
               *GEOMETRY_KEYS)


def evaluate_loaded(workdir, config, spec, state, *, clip=None,
                    score_spec: clip_score_lib.ClipScoreSpec = clip_score_lib.ClipScoreSpec(),
                    grid_resolution: int = 128, geometry: bool = True):
  """The eval.json record of one trained run, and its interaction view features.

  Args:
    workdir: the run directory (for its anchor file and the record's name).
    config, spec, state: as returned by ``loop.load_trained``.
    clip: a ``pose.clip.ClipBundle`` or None (then no CLIP score, and the
      record's ``clip_note`` says so).
    score_spec: views, elevation and resolution of the CLIP views.
    grid_resolution: R of the geometry grid; geometry=False skips it.

  Returns:
    (record dict: run, prompts, step, clip | None, clip_note, clip_model,
     clip_protocol, geometry, bars, timings, reference;
     [N, D] unit image features of the interaction views, or None without CLIP).
  """
  timings = {}
  prompts = clip_score_lib.scene_prompts(vars(config.prompt))
  record = {"run": str(pathlib.Path(workdir).absolute()), "prompts": prompts,
            "step": int(state.step), "clip": None, "clip_note": NO_CLIP_NOTE,
            "clip_model": None, "reference": [dict(r) for r in PAPER_REFERENCE]}
  feats = None
  if clip is not None:
    t0 = time.perf_counter()
    views = clip_score_lib.render_views(state, spec, score_spec, clip.image_size)
    timings["clip_renders"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = clip_score_lib.scene_clip_scores(clip, views, prompts)
    timings["clip_model"] = time.perf_counter() - t0
    feats = scores.pop("interaction_features")
    n = int(score_spec.views)
    elev = (float(spec.camera.eval_elevation_deg) if score_spec.elevation_deg is None
            else float(score_spec.elevation_deg))
    record.update(clip=scores, clip_note="", clip_model=clip.name, clip_protocol={
        "views": n, "azimuths_deg": [360.0 * k / n for k in range(n)],
        "elevation_deg": elev, "distance": float(spec.camera.eval_distance),
        "fovy_deg": float(spec.camera.eval_fovy_deg),
        "render_resolution": int(score_spec.resolution) or int(clip.image_size),
        "clip_input_resolution": int(clip.image_size), "background": "white, albedo"})
  if geometry:
    t0 = time.perf_counter()
    m = metrics.evaluate_state(config, spec, state, metrics.anchor_for_run(config, workdir, grid_resolution),
                       grid_resolution)
    timings["geometry"] = time.perf_counter() - t0
    m["grid_resolution"] = int(grid_resolution)
    record["geometry"] = m
    record["bars"] = metrics.check_bars(m)
  else:
    record["geometry"], record["bars"] = {}, {}
  record["timings"] = timings
  return record, feats


def csv_row(record: dict) -> dict:
  """One eval.csv row of a run's record (None for what was not measured)."""
  clip = record.get("clip") or {}
  geo = record.get("geometry") or {}
  row = {"run": pathlib.Path(record["run"]).name,
         "scene_prompt": record["prompts"]["interaction"], "step": record.get("step")}
  for part in ("interaction", "human", "object"):
    row[f"clip_{part}"] = (clip.get(part) or {}).get("score")
  for k in GEOMETRY_KEYS:
    row[k] = geo.get(k)
  return row


def mean_row(rows: Sequence[dict]) -> dict:
  """Column means over the rows' measured values ("mean" row; None where none was measured)."""
  out = {"run": "mean", "scene_prompt": f"{len(rows)} scenes", "step": None}
  for k in CSV_COLUMNS[3:]:
    vals = [float(r[k]) for r in rows if r.get(k) is not None and math.isfinite(float(r[k]))]
    out[k] = float(np.mean(vals)) if vals else None
  return out


def reference_rows() -> list[dict]:
  """PAPER_REFERENCE as table rows, labelled as reported in the paper."""
  out = []
  for r in PAPER_REFERENCE:
    row = {k: None for k in CSV_COLUMNS}
    row["run"] = f"{r['method']} (reported in the paper, not measured here)"
    row["scene_prompt"] = f"{r['metric']} = {r['value']}"
    if r["metric"] == "CLIP score":
      row["clip_interaction"] = r["value"]
    out.append(row)
  return out


def _cell(v) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.4f}"
  return str(v)


def table_csv(rows: Sequence[dict]) -> str:
  """CSV text (header CSV_COLUMNS) of table rows."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
  w.writeheader()
  for r in rows:
    w.writerow({k: _cell(r.get(k)) for k in CSV_COLUMNS})
  return buf.getvalue()


def table_markdown(rows: Sequence[dict]) -> str:
  """A Markdown table of the rows (empty cells: not measured)."""
  head = "| " + " | ".join(CSV_COLUMNS) + " |\n|" + "---|" * len(CSV_COLUMNS) + "\n"
  return head + "".join("| " + " | ".join(_cell(r.get(k)) for k in CSV_COLUMNS) + " |\n"
                        for r in rows)


def evaluate_path(path, *, clip=None,
                  score_spec: clip_score_lib.ClipScoreSpec = clip_score_lib.ClipScoreSpec(),
                  grid_resolution: int = 128, geometry: bool = True, write: bool = True,
                  load=None) -> dict:
  """Evaluates a run directory, or every run of a sweep directory (``rundirs.discover``).

  Writes ``eval.json`` into each run; for a sweep also ``<sweep>/eval.json``
  (records, mean, CLIP R-precision over the distinct prompts of the measured
  scenes; a scene without a checkpoint is listed with its "error", unmeasured),
  ``eval.csv`` and ``eval.md`` (one row per scene, the mean, then the paper's
  reference rows).

  Args:
    clip: ClipBundle or None; score_spec, grid_resolution, geometry: see
      ``evaluate_loaded``; write: False writes nothing.
    load: workdir -> (config, spec, state); default ``loop.load_trained``.

  Returns:
    {"kind": "run" | "sweep", "records": [...], "rows": table rows (scenes,
     mean, references), "r_precision": float | None, "r_precision_note": str}.
  """
  rs = rundirs.discover(path)
  load = load or loop.load_trained
  records, feats = [], []
  for run in rs.runs:
    try:
      config, spec, state = load(str(run))
    except FileNotFoundError as e:
      if rs.kind == "run":
        raise
      # A sweep scene that has not trained yet (or failed): reported, not measured.
      records.append({"run": str(pathlib.Path(run).absolute()), "step": None, "clip": None,
                      "prompts": clip_score_lib.scene_prompts(rundirs.saved_prompt(run)),
                      "error": str(e), "geometry": {}})
      continue
    rec, f = evaluate_loaded(run, config, spec, state, clip=clip, score_spec=score_spec,
                             grid_resolution=grid_resolution, geometry=geometry)
    records.append(rec)
    feats.append(f)
    if write:
      run_io.write_json(pathlib.Path(run) / "eval.json", rec)
  rows = [csv_row(r) for r in records]
  measured = [r for r in records if "error" not in r]
  table = rows + ([mean_row(rows)] if rs.kind == "sweep" else []) + reference_rows()
  out = {"kind": rs.kind, "records": records, "rows": table, "r_precision": None,
         "r_precision_note": ""}
  if rs.kind == "sweep":
    prompts = sorted({r["prompts"]["interaction"] for r in measured})
    if clip is None:
      out["r_precision_note"] = "not computed: no CLIP weights"
    elif len(prompts) < 2:
      out["r_precision_note"] = "not computed: the sweep has fewer than 2 distinct prompts"
    else:
      scores = clip_score_lib.prompt_score_matrix(clip, feats, prompts)
      own = [prompts.index(r["prompts"]["interaction"]) for r in measured]
      out["r_precision"] = clip_score_lib.r_precision(scores, own)
      out["r_precision_prompts"] = prompts
      out["r_precision_scores"] = scores.tolist()
    if write:
      root = rs.root
      run_io.write_json(root / "eval.json", {
          "runs": [r["run"] for r in records], "mean": table[len(rows)],
          "not_measured": {r["run"]: r["error"] for r in records if "error" in r},
          "r_precision": out["r_precision"], "r_precision_note": out["r_precision_note"],
          "r_precision_prompts": out.get("r_precision_prompts"),
          "r_precision_scores": out.get("r_precision_scores"),
          "clip_note": "" if clip is not None else NO_CLIP_NOTE,
          "reference": [dict(r) for r in PAPER_REFERENCE]})
      fileio.atomic_write_text(root / "eval.csv", table_csv(table))
      fileio.atomic_write_text(root / "eval.md", table_markdown(table))
  return out


def default_clip_dir(path) -> str:
  """``config.pose.clip_dir`` of the first run under ``path`` ("" when unset)."""
  first = rundirs.discover(path).runs[0]
  try:
    return str(run_io.load_config(first).pose.clip_dir or "")
  except (FileNotFoundError, AttributeError, ValueError):
    return ""


def summary_text(result: dict) -> str:
  """``evaluate_path``'s table as Markdown, plus the R-precision line for a sweep."""
  text = table_markdown(result["rows"])
  if result["kind"] == "sweep":
    r = result["r_precision"]
    text += ("CLIP R-precision: " + ("—" if r is None else f"{r:.4f}") + " "
             + result["r_precision_note"]).rstrip() + "\n"
  return text
