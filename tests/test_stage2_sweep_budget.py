"""stage2/sweep.py with a growing sample budget: the scenes of a group share one
compiled (vmapped) step, so an overflow in any of them grows the budget of the
whole group; each scene's summary.json and report.html then show the budget
used and the peak of samples_dropped. Real steps on the closed-form blob
scene (tests/blob_scene.py); the final renders and meshes are left out."""
import json

import pytest

from blob_scene import _config, patch_setup
from interfusion_jax.evaluation import report
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import sweep
from scene_rows import _jsonl

START = 4      # of 24 samples per ray: the blob scenes overflow it in their first steps


@pytest.mark.slow   # two compiles of the vmapped step: ~70 s CPU from a cold XLA cache
def test_sweep_group_grows_its_budget_as_one(tmp_path, monkeypatch):
  patch_setup(monkeypatch)
  # summary.json as written at the end, without the turntables and meshes (cost)
  monkeypatch.setattr(outputs_lib, "write_renders", lambda *a, **k: ({}, {}))
  monkeypatch.setattr(outputs_lib, "write_meshes", lambda *a, **k: ({}, {}))
  cfg = _config()
  cfg.render.sample_budget = START
  cfg.render.budget_growth = "grow"
  cfg.train.steps = 4
  rows = [dict(name="a", human="a man", object="a red ball", interaction="holding it"),
          dict(name="b", human="a man", object="a blue chair", interaction="holding it", seed=2)]
  entries = sweep.run_sweep(cfg, _jsonl(tmp_path, rows), tmp_path / "w", progress=False)
  assert [e["status"] for e in entries] == ["done", "done"]
  summaries = [json.loads((tmp_path / "w" / n / "final" / "summary.json").read_text())
               for n in ("a", "b")]
  grown = summaries[0]["sample_budget"]
  assert grown["growths"] and grown["final"] > START and grown["start"] == START
  assert grown["max"] == cfg.render.num_samples
  for s in summaries:
    # one group: the same growths and final budget in every scene's summary
    assert s["sample_budget"]["growths"] == grown["growths"]
    assert s["sample_budget"]["final"] == grown["final"]
    assert s["samples_dropped_peak"] == s["sample_budget"]["samples_dropped_peak"]
  assert max(s["samples_dropped_peak"] for s in summaries) > 0
  for name in ("a", "b"):
    rows_ = run_io.read_metrics(tmp_path / "w" / name / "metrics.jsonl")
    # each step ran at the budget in effect: the start, then each growth's size
    expected, b = [], START
    for r in rows_:
      expected.append(b)
      for g in grown["growths"]:
        if g["step"] == r["step"] - 1:
          b = g["to"]
    assert [r["sample_budget"] for r in rows_] == expected
    assert rows_[-1]["samples_dropped"] == 0
    page = report.run_report_html(tmp_path / "w" / name)
    assert "Ray samples" in page and f"{START} / {grown['final']} / 24" in page
