"""End to end on one smoke run: report.html written by the run, evaluate (CLIP score with a
tiny CLIP, R-precision, geometry) and report on a run and a sweep dir, and both pages opened
in headless Chromium from the file system.

The smoke run is trained once (module fixture); the sweep dir holds two copies of it with
different prompts (the layout a sweep writes: run dirs with config.json, and sweep.json).
"""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import browser  # noqa: E402  pylint: disable=g-import-not-at-top
import clip_reference  # noqa: E402  pylint: disable=g-import-not-at-top

CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")
pytestmark = pytest.mark.slow


def _run(args, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  work = tmp_path_factory.mktemp("smoke") / "run"
  proc = _run(["interfusion_jax.train", "--config=configs/hoi.py:smoke", f"--workdir={work}",
               "--noprogress", "--config.train.final_resolution=24"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return work


@pytest.fixture(scope="module")
def sweep_dir(smoke_run, tmp_path_factory):
  root = tmp_path_factory.mktemp("sweep")
  prompts = {"scene_a": None, "scene_b": ("a chair", "sitting on a chair")}
  for name, p in prompts.items():
    shutil.copytree(smoke_run, root / name)
    (root / name / "report.html").unlink()
    if p:
      cfg = json.loads((root / name / "config.json").read_text())
      cfg["prompt"]["object"], cfg["prompt"]["interaction"] = p
      (root / name / "config.json").write_text(json.dumps(cfg))
  (root / "sweep.json").write_text(json.dumps({"scenes": [{"workdir": n} for n in prompts]}))
  return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return clip_reference.make_clip_dir(tmp_path_factory.mktemp("clip"), image_size=32)


@pytest.fixture(scope="module")
def chromium():
  b = browser.find_browser()
  if b is None:
    if os.environ.get("CI") == "true":
      pytest.fail("CI=true but no Chromium was found: .ci/run must install Debian's "
                  "chromium (apt-get install -y chromium).")
    pytest.skip("no Chromium found (Debian: apt-get install chromium); the browser checks "
                "of report.html / index.html are skipped outside CI.")
  return b


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
  return tmp_path_factory.mktemp("artefacts")


def _save_artefact(page, artefacts, name):
  shot = page.screenshot(artefacts / name)
  extra = os.environ.get("INTERFUSION_TEST_ARTEFACTS")
  if extra:
    pathlib.Path(extra).mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, pathlib.Path(extra) / name)
  print(f"screenshot: {shot}")
  return shot


def _check_loaded(state):
  assert state["images"], "no images"
  for im in state["images"]:
    assert im["w"] > 0 and im["h"] > 0, im
  for v in state["videos"]:
    assert v["error"] is None and v["ready"] >= 2 and v["w"] > 0, v


def test_run_report_written_by_the_run_opens_in_chromium(chromium, smoke_run, artefacts):
  report = smoke_run / "report.html"
  assert report.is_file()
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE(report.stat().st_mode) == 0o666 & ~umask
  text = report.read_text()
  assert "http://" not in text and "https://" not in text     # nothing from a network
  summary = json.loads((smoke_run / "final" / "summary.json").read_text())
  assert summary["outputs"]["report"] == str(report)
  rows = [json.loads(l) for l in (smoke_run / "metrics.jsonl").read_text().splitlines()]
  keys = {k for r in rows for k in r if k == "loss" or k.startswith(("loss_", "lambda"))}
  with browser.Page(chromium) as page:
    page.goto(report)
    state = browser.page_state(page)
    _save_artefact(page, artefacts, "report_smoke.png")
    errors = page.errors()
  assert errors == []
  _check_loaded(state)
  assert len(state["videos"]) + sum(i["gif"] for i in state["images"]) == 3   # 3 turntables
  alts = {i["alt"] for i in state["images"]}
  assert {"anchor pose (front and side)", "multi-view grid"} <= alts
  assert len(state["curves"]) == len(keys)
  for c in state["curves"]:
    assert c["points"] == len(rows) and c["length"] > 0, c
  body = state["text"]
  assert "LOW FIDELITY" in body and "built-in offline prior" in body
  cfg = json.loads((smoke_run / "config.json").read_text())
  for k in ("human", "object", "interaction"):
    assert cfg["prompt"][k] in body
  assert "Top-k candidates" in body and "chosen" in body
  assert "steps per second" in body
  for link in state["links"]:
    assert (smoke_run / link).is_file(), link
  (canvas,) = state["canvases"]                 # the 3D view of mesh_combined_textured.glb
  import trimesh
  glb = trimesh.load(smoke_run / "final" / "mesh_combined_textured.glb", process=False)
  faces = sum(len(g.faces) for g in glb.geometry.values())
  assert int(canvas["faces"]) == faces and canvas["ink"] > 100


def test_evaluate_run_without_clip_says_so_in_one_line(smoke_run):
  proc = _run(["interfusion_jax.evaluate", f"--workdir={smoke_run}", "--grid_resolution=24",
               "--noreports"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if "CLIP" in l and "not computed" in l]
  assert len(lines) == 1, proc.stdout
  ev = json.loads((smoke_run / "eval.json").read_text())
  assert ev["clip"] is None and "not computed" in ev["clip_note"]
  g = ev["geometry"]
  assert 0.0 <= g["human_iou"] <= 1.0 and g["object_volume_litres"] >= 0
  assert 0.0 <= g["object_inside_fraction"] <= 1.0 and g["grid_resolution"] == 24
  assert ev["reference"][0]["value"] == 0.3308 and "not measured here" in ev["reference"][0]["note"]
  run_row = next(l for l in proc.stdout.splitlines() if l.startswith("| run | a man"))
  assert "| 12 |  |  |  | " in run_row, run_row      # step, then blank CLIP cells: no made-up score


def test_evaluate_sweep_with_clip_and_index_in_chromium(chromium, sweep_dir, clip_dir,
                                                        artefacts):
  proc = _run(["interfusion_jax.evaluate", f"--workdir={sweep_dir}", f"--clip_dir={clip_dir}",
               "--views=4", "--nogeometry"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "CLIP R-precision" in proc.stdout
  recs = {n: json.loads((sweep_dir / n / "eval.json").read_text()) for n in ("scene_a", "scene_b")}
  assert recs["scene_b"]["prompts"]["interaction"] == (
      "a man wearing a WORLD lettered T-shirt sitting on a chair")
  for r in recs.values():
    assert r["clip_protocol"]["views"] == 4 and r["clip_protocol"]["render_resolution"] == 32
    assert r["clip_protocol"]["azimuths_deg"] == [0.0, 90.0, 180.0, 270.0]
    cfg = json.loads((sweep_dir / "scene_a" / "config.json").read_text())
    assert r["clip_protocol"]["elevation_deg"] == pytest.approx(cfg["camera"]["eval_elevation_deg"])
    for part in ("interaction", "human", "object"):
      assert -1 <= r["clip"][part]["score"] <= 1
      assert r["clip"][part]["score"] == pytest.approx(np.mean(r["clip"][part]["per_view"]))
  # Conformance on the very renders: PyTorch transformers CLIP on the same views.
  from interfusion_jax.evaluation import clip_score
  from interfusion_jax.stage2 import loop
  config, spec, state = loop.load_trained(str(sweep_dir / "scene_a"))
  views = clip_score.render_views(state, spec, clip_score.ClipScoreSpec(views=4), 32)
  ref_model = clip_reference.load(clip_dir)
  for part, prompt in clip_score.scene_prompts(vars(config.prompt)).items():
    ref = clip_reference.scores(ref_model, views[part], [prompt])[:, 0]
    np.testing.assert_allclose(recs["scene_a"]["clip"][part]["per_view"], ref, atol=1e-5)
  # R-precision from the stored matrix, by hand.
  sweep = json.loads((sweep_dir / "eval.json").read_text())
  s = np.asarray(sweep["r_precision_scores"])
  prompts = sweep["r_precision_prompts"]
  own = [prompts.index(recs[n]["prompts"]["interaction"]) for n in ("scene_a", "scene_b")]
  hand = np.mean([s[i, j] > np.delete(s[i], j).max() for i, j in enumerate(own)])
  assert sweep["r_precision"] == pytest.approx(hand)
  ref_inter = clip_reference.scores(ref_model, views["interaction"], prompts).mean(0)
  np.testing.assert_allclose(s[0], ref_inter, atol=1e-5)
  import csv
  text = (sweep_dir / "eval.csv").read_text()
  assert text.startswith("run,scene_prompt,step,clip_interaction")
  table = list(csv.DictReader(text.splitlines()))
  assert [r["run"] for r in table] == [
      "scene_a", "scene_b", "mean"] + ["InterFusion (reported in the paper, not measured here)"] * 2
  assert float(table[2]["clip_interaction"]) == pytest.approx(
      np.mean([r["clip"]["interaction"]["score"] for r in recs.values()]), abs=1e-4)
  assert table[3]["clip_interaction"] == "0.3308" and "GPT-4V select % = 65.57" in table[4][
      "scene_prompt"]
  assert table[0]["human_iou"] == ""          # --nogeometry: blank, not made up
  # The reports were refreshed: index.html plus one report.html per scene.
  index = sweep_dir / "index.html"
  with browser.Page(chromium) as page:
    page.goto(index)
    state = browser.page_state(page)
    order0 = page.evaluate("[...document.querySelectorAll('table.sortable tbody tr')]"
                           ".map(r => r.cells[1].textContent)")
    page.evaluate("document.querySelectorAll('table.sortable th')[1].click(); "
                  "document.querySelectorAll('table.sortable th')[1].click(); 0")
    order1 = page.evaluate("[...document.querySelectorAll('table.sortable tbody tr')]"
                           ".map(r => r.cells[1].textContent)")
    _save_artefact(page, artefacts, "index_sweep.png")
    errors = page.errors()
    page.goto(sweep_dir / "scene_b" / "report.html")
    run_state = browser.page_state(page)
    run_errors = page.errors()
  assert errors == [] and run_errors == []
  _check_loaded(state)
  _check_loaded(run_state)
  assert len(state["images"]) == 2                       # one thumbnail per card
  assert order1 == sorted(order0, reverse=True) and len(order0) == 2
  hrefs = [h for h in state["links"] if h.endswith("report.html")]
  assert sorted(set(hrefs)) == ["scene_a/report.html", "scene_b/report.html"]
  for h in hrefs:
    assert (sweep_dir / h).is_file()
  assert "CLIP R-precision" in state["text"]
  assert "CLIP score, interaction" in run_state["text"]
  assert "reported in the paper" in run_state["text"]


def test_report_cli(sweep_dir, tmp_path):
  proc = _run(["interfusion_jax.report", f"--workdir={sweep_dir}"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == [str(sweep_dir / "scene_a" / "report.html"),
                                 str(sweep_dir / "scene_b" / "report.html"),
                                 str(sweep_dir / "index.html")]
  proc = _run(["interfusion_jax.report", f"--workdir={tmp_path}"], timeout=300)
  assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
  assert "no config.json and no run directories" in proc.stderr
