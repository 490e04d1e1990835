"""evaluation/ranking.py: best-of-N seeds of a real sweep (the smoke config, one row with
two seeds, trained once by the sweep command line with a tiny Flax CLIP), ranked by CLIP
against the paper protocol's own scores, re-ranked by the geometry score against the bar
metrics, and the ``<scene>/best`` link taken by evaluate's loader and export.
"""
import csv
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import clip_reference
from interfusion_jax import export
from interfusion_jax.evaluation import metrics
from interfusion_jax.evaluation import protocol
from interfusion_jax.evaluation import ranking
from interfusion_jax.evaluation import rundirs
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.stage2 import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")
pytestmark = pytest.mark.slow
SEEDS = ("bike/seed-5", "bike/seed-6")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return clip_reference.make_clip_dir(tmp_path_factory.mktemp("clip"), image_size=32)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, clip_dir):
  root = tmp_path_factory.mktemp("seeds")
  prompts = root / "p.jsonl"
  prompts.write_text(json.dumps({"name": "bike", "human": "a man", "object": "a bike",
                                 "interaction": "riding a bike", "seed": 5, "seeds": 2}) + "\n")
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run(
      [sys.executable, "-m", "interfusion_jax.sweep", "--config=configs/hoi.py:smoke",
       f"--prompts={prompts}", f"--workdir={root / 'w'}", "--noprogress",
       "--config.train.final_resolution=24", "--config.train.steps=6",
       f"--clip_dir={clip_dir}"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"bike: best of 2 seeds by clip" in proc.stdout
  return root / "w"


def _expected_geometry_score(g):
  """The module doc's formula, written out again."""
  if g["object_volume_litres"] <= 0:
    return -2.0
  return g["human_iou"] - g["object_inside_fraction"] - min(g["object_gap_m"] / 0.05, 1.0)


def test_seeds_rank_by_the_protocols_clip_score(sweep_dir, clip_dir):
  index = json.loads((sweep_dir / "sweep.json").read_text())
  assert index["seeds"] == {"bike": list(SEEDS)} and index["groups"] == [list(SEEDS)]
  # Distinct PRNG streams: the two seeds trained different fields.
  (_, _, s5), (_, _, s6) = (loop.load_trained(str(sweep_dir / n)) for n in SEEDS)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(s5.params), jax.tree_util.tree_leaves(s6.params))) > 1e-3
  # The reference: evaluate's own record of each seed run (the paper protocol).
  clip = clip_lib.load_clip(clip_dir)
  ref = {n: protocol.evaluate_path(sweep_dir / n, clip=clip, geometry=False, write=False)[
      "records"][0]["clip"]["interaction"]["score"] for n in SEEDS}
  order = sorted(SEEDS, key=lambda n: -ref[n])
  r = index["ranking"]["bike"]
  assert r["by"] == "clip" and r["order"] == order and r["best"] == order[0]
  for n in SEEDS:
    assert r["scores"][n] == pytest.approx(ref[n], abs=1e-6)
  entries = {e["name"]: e for e in index["scenes"]}
  assert [entries[n]["rank"] for n in order] == [1, 2]
  assert [entries[n]["best"] for n in order] == [True, False]
  assert all(entries[n]["scene"] == "bike" and entries[n]["status"] == "done" for n in SEEDS)
  rows = {row["name"]: row for row in csv.DictReader(
      (sweep_dir / "sweep.csv").read_text().splitlines())}
  assert rows[order[0]]["rank"] == "1" and rows[order[0]]["best"] == "True"
  assert float(rows[order[1]]["rank_score"]) == pytest.approx(ref[order[1]], abs=1e-6)
  # <scene>/best links the best seed's run directory.
  best = sweep_dir / "bike" / ranking.BEST_LINK
  assert best.is_symlink() and best.resolve() == (sweep_dir / order[0]).resolve()
  assert ranking.best_runs(sweep_dir) == {"bike": order[0]}
  # index.html marks the best seed's card, and ranks the other.
  page = (sweep_dir / "index.html").read_text()
  assert page.count("best of 2 seeds (by clip)") == 2 and "seed rank 2 of 2" in page
  mark = page.index("best of 2 seeds (by clip)")
  card = page[page.rindex('<div class="card">', 0, mark):mark]
  assert f'href="{order[0]}/report.html"' in card and "\u2605" in card


def test_geometry_score_ranks_without_clip(sweep_dir):
  res = 24
  ref = {n: _expected_geometry_score(metrics.evaluate_run(str(sweep_dir / n), res))
         for n in SEEDS}
  out = ranking.rank_sweep(sweep_dir, clip=None, grid_resolution=res)
  order = sorted(SEEDS, key=lambda n: -ref[n])
  assert out["bike"]["by"] == "geometry" and out["bike"]["order"] == order
  for n in SEEDS:
    assert out["bike"]["scores"][n] == pytest.approx(ref[n], abs=1e-6)
  index = json.loads((sweep_dir / "sweep.json").read_text())
  assert index["ranking"]["bike"]["best"] == order[0]
  assert (sweep_dir / "bike" / "best").resolve() == (sweep_dir / order[0]).resolve()
  # The documented formula's corners.
  g = dict(human_iou=0.8, object_inside_fraction=0.1, object_gap_m=0.01, object_volume_litres=3)
  assert ranking.geometry_score(g) == pytest.approx(0.8 - 0.1 - 0.2)
  assert ranking.geometry_score(dict(g, object_gap_m=0.5)) == pytest.approx(0.8 - 0.1 - 1.0)
  assert ranking.geometry_score(dict(g, object_volume_litres=0.0)) == ranking.EMPTY_OBJECT_SCORE


def test_best_is_a_run_directory_for_evaluate_and_export(sweep_dir, tmp_path, capsys):
  best = sweep_dir / "bike" / "best"
  target = best.resolve()
  assert rundirs.discover(best).kind == "run"
  _, _, state = loop.load_trained(str(best))
  _, _, direct = loop.load_trained(str(target))
  for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(direct.params)):
    np.testing.assert_array_equal(a, b)
  assert export.main(["--workdir", str(best), "--resolution", "16", "--out", str(tmp_path)]) == 0
  assert (tmp_path / "mesh_combined.glb").is_file()
  assert "vertices" in capsys.readouterr().out
