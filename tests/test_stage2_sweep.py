"""stage2/sweep.py: groups by static settings, process assignment, the release's
sweep file, checks before anything compiles, and whole sweeps on the closed-form
blob field (tests/blob_scene.py): isolation of a failing scene, mixed files,
resume from a common step, metrics after a kill, the progress bar.
"""
import json

import jax
import numpy as np
import pytest

import blob_scene
from configs import hoi
from interfusion_jax.evaluation import report
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import processes as processes_lib
from interfusion_jax.stage2 import prompt_file
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import sweep
from scene_rows import ROOT, ROW, _jsonl, _smoke


def _other_shape_weights(cfg):
  """One of the release's two lambda2 level sets, not the base config's."""
  base = tuple(round(float(w), 6) for w in cfg.loss.shape_weights)
  return [0.001, 0.01, 0.1] if base == (0.01, 0.1, 0.1) else [0.01, 0.1, 0.1]


def test_groups_split_on_static_settings_only(tmp_path):
  rows = prompt_file.read_prompt_file(_jsonl(tmp_path, [
      dict(ROW, name="a"),
      dict(ROW, name="b", seed=3, pose_rank=2, aug_rot=True, human="a woman"),
      dict(ROW, name="c", camera_distance=[2.0, 2.7]),
      dict(ROW, name="d", aug_trans=True, camera_distance=[2.0, 2.7]),
      dict(ROW, name="e", shape_weights=_other_shape_weights(_smoke())),
  ]))
  scenes, groups = sweep.plan(config_lib.parse(_smoke()), rows, num_processes=2)
  assert [[scenes[i].name for i in g] for g in groups] == [["a", "b"], ["c", "d"], ["e"]]
  b = scenes[1].config
  assert (b.seed, b.pose.choose, b.pose.rank, b.body.aug_rot, b.prompt.human) == (
      3, "rank", 2, True, "a woman")
  assert tuple(scenes[2].config.camera.distance_range) == (2.0, 2.7)
  # The static part decides: equal keys <=> equal TrainSpecs (compiled programs).
  spec = lambda c: setup_lib.train_spec(c, None, model="m")
  assert spec(scenes[0].config) == spec(scenes[1].config)
  assert spec(scenes[0].config) != spec(scenes[2].config)
  assert spec(scenes[0].config) != spec(scenes[4].config)
  # Round-robin over the scenes in group order: balanced, the same on every process.
  assert [s.process for s in scenes] == [0, 1, 0, 1, 0]
  assert sweep.assign([[0, 1, 2], [3]], 3) == {0: 0, 1: 1, 2: 2, 3: 0}


def test_seeds_expand_a_row_into_one_run_per_seed_in_one_group(tmp_path):
  rows = prompt_file.read_prompt_file(_jsonl(tmp_path, [
      dict(ROW, name="bike", seed=7),
      dict(ROW, name="once", seeds=1, human="a woman"),
      dict(ROW, name="chair", seeds=3, camera_distance=[2.0, 2.7])]))
  scenes, groups = sweep.plan(config_lib.parse(_smoke()), rows, seeds=2)
  assert [s.name for s in scenes] == ["bike/seed-7", "bike/seed-8", "once", "chair/seed-0",
                                      "chair/seed-1", "chair/seed-2"]
  assert [s.scene for s in scenes] == ["bike"] * 2 + ["once"] + ["chair"] * 3
  assert [s.config.seed for s in scenes] == [7, 8, 0, 0, 1, 2]
  # Seeds differ only in config.seed: one group each (the camera splits chair off).
  assert [[scenes[i].name for i in g] for g in groups] == [
      ["bike/seed-7", "bike/seed-8", "once"], ["chair/seed-0", "chair/seed-1", "chair/seed-2"]]
  for a, b in ((0, 1), (3, 5)):
    assert scenes[a].config == config_lib.override(scenes[b].config,
                                                   {"seed": scenes[a].config.seed})
  # Distinct PRNG streams: the seeds' keys all differ.
  keys = {tuple(np.asarray(jax.random.key_data(jax.random.PRNGKey(s.config.seed))).tolist())
          for s in scenes if s.scene == "chair"}
  assert len(keys) == 3
  # The index knows each run's scene; the run directories nest under it.
  entry = sweep.index_entry(scenes[1], {"status": "pending"})
  assert (entry["name"], entry["scene"], entry["workdir"], entry["seed"]) == (
      "bike/seed-8", "bike", "bike/seed-8", 8)


@pytest.mark.parametrize("row, seeds, match", [
    (dict(ROW, seeds=0), 1, "column 'seeds': 0 must be a number of seeds from 1 to 64"),
    (dict(ROW, seeds="two"), 1, "column 'seeds': 'two' must be a number of seeds"),
    (dict(ROW), 65, r"row 1 \(line 1\): 65 seeds; give 1 to 64 \(--seeds"),
    (dict(ROW, seed=2 ** 32 - 2), 3, "column 'seed': seeds 4294967294..4294967296 reach 2"),
])
def test_bad_seeds_name_the_row_before_anything_runs(tmp_path, row, seeds, match):
  with pytest.raises(prompt_file.SweepError, match=match):
    sweep.plan(config_lib.parse(_smoke()),
               prompt_file.read_prompt_file(_jsonl(tmp_path, [row])), seeds=seeds)


def test_official_sweep_file_holds_the_eleven_release_scenes():
  rows = prompt_file.read_prompt_file(ROOT / "configs" / "sweeps" / "official.jsonl")
  scenes, groups = sweep.plan(config_lib.parse(hoi.get_config("paper")), rows)
  by = {s.name: s.config for s in scenes}
  assert len(by) == 11 and len(groups) == 3
  # Facts of InterGen/configs/interfusion-if/*.yaml (sisidai/InterFusion@45fe45d).
  assert tuple(by["reading_a_laptop"].camera.distance_range) == (2.0, 2.7)
  assert tuple(by["riding_a_bike"].camera.distance_range) == (2.5, 3.0)
  assert by["sitting_on_a_chair"].body.aug_rot and by["jumping_a_skateboard"].body.aug_trans
  assert by["carrying_a_backpack"].pose.rank == 4 and by["riding_a_bike"].pose.rank == 0
  assert by["pushing_a_shopping_cart"].prompt.interaction == "carrying a shopping cart"
  # its pose path: PoseGen/exp/poses/pushing_a_shopping_cart/top_1.npy (line 17)
  assert by["pushing_a_shopping_cart"].pose.query == "pushing a shopping cart"
  assert by["riding_a_bike"].pose.query == ""
  lam = lambda c: (c.loss.lambda_object_geo, tuple(c.loss.shape_weights))
  assert lam(by["carrying_a_backpack"]) != lam(by["riding_a_bike"])


def test_bad_input_fails_before_anything_loads_or_compiles(tmp_path, monkeypatch):
  def forbidden(*a, **k):
    raise AssertionError("loaded or compiled before the input was checked")
  monkeypatch.setattr(loop, "cached_compile", forbidden)
  monkeypatch.setattr(setup_lib, "load_guidance_and_text", forbidden)
  path = _jsonl(tmp_path, [ROW, dict(ROW, interaction="")])
  with pytest.raises(prompt_file.SweepError, match="row 2 .*column 'interaction': empty prompt"):
    sweep.run_sweep(_smoke(), path, tmp_path / "w")
  assert not (tmp_path / "w").exists()
  # A scene whose directory holds another config (the file changed since the sweep began).
  (tmp_path / "w" / "001_riding_a_bike").mkdir(parents=True)
  (tmp_path / "w" / "001_riding_a_bike" / "config.json").write_text('{"seed": 7}')
  with pytest.raises(prompt_file.SweepError, match="row 1 .*holds a different config"):
    sweep.run_sweep(_smoke(), _jsonl(tmp_path, [ROW]), tmp_path / "w")


@pytest.fixture
def blob_world(monkeypatch):
  """Setup with the closed-form blob field, a Gaussian denoiser, per-prompt random
  embeddings and a sphere anchor (NaN distances when the object prompt says "nan")."""
  blob_scene.patch_setup(monkeypatch)
  cfg = blob_scene._config()
  cfg.train.max_consecutive_skips = 2
  cfg.train.turntable_frames = 2
  cfg.train.mesh_resolution = 8
  return cfg


def _rows(tmp_path, rows, name="p.jsonl"):
  path = tmp_path / name
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _row(name, obj, **kw):
  return dict(name=name, human="a man", object=obj, interaction="holding it", **kw)


def _final_params(workdir, name):
  _, _, state = loop.load_trained(str(workdir / name))
  return jax.tree_util.tree_leaves(state.params), int(state.step)


def test_a_nan_scene_fails_alone_and_is_not_trained_again(tmp_path, blob_world, monkeypatch):
  path = _rows(tmp_path, [_row("a", "a red ball"), _row("bad", "a nan ball", seed=1),
                          _row("b", "a blue chair", seed=2)])
  with pytest.warns(UserWarning, match="non-finite"):
    entries = sweep.run_sweep(blob_world, path, tmp_path / "w", progress=False)
  status = {e["name"]: e for e in entries}
  assert [status[n]["status"] for n in ("a", "bad", "b")] == ["done", "failed", "done"]
  assert "2 consecutive steps" in status["bad"]["error"]
  assert status["a"]["step"] == status["b"]["step"] == blob_world.train.steps
  index = json.loads((tmp_path / "w" / "sweep.json").read_text())
  assert [e["status"] for e in index["scenes"]] == ["done", "failed", "done"]
  csv_rows = (tmp_path / "w" / "sweep.csv").read_text().splitlines()
  assert csv_rows[2].startswith("bad,failed,")
  # index.html (written by the command line after the sweep): one card per scene,
  # linking each finished run's report.
  report.write_reports(tmp_path / "w")
  page = (tmp_path / "w" / "index.html").read_text()
  assert all(f'href="{n}/report.html"' in page for n in ("a", "b")) and "failed" in page
  # The failed scene: no final outputs, no checkpoint after it failed, metrics stop.
  bad = run_io.RunPaths(tmp_path / "w" / "bad")
  assert not bad.summary.exists() and (tmp_path / "w" / "a" / "final" / "summary.json").exists()
  assert ckpt_lib.latest_step(bad.checkpoints) is None
  assert [r["step"] for r in run_io.read_metrics(bad.metrics)] == [1]   # before it failed
  # The others equal a sweep without it (a group of two).
  path2 = _rows(tmp_path, [_row("a", "a red ball"), _row("b", "a blue chair", seed=2)], "q.jsonl")
  assert [e["status"] for e in sweep.run_sweep(blob_world, path2, tmp_path / "w2",
                                                   progress=False, final_outputs=False)] == [
      "trained", "trained"]
  for n in ("a", "b"):
    (x, _), (y, _) = _final_params(tmp_path / "w", n), _final_params(tmp_path / "w2", n)
    for u, v in zip(x, y):
      np.testing.assert_allclose(u, v, atol=1e-5)
  # Re-running the same command trains nothing: finished and failed scenes are kept.
  def no_training(*a, **k):
    raise AssertionError("a finished scene was trained again")
  monkeypatch.setattr(loop, "train_loop", no_training)
  again = sweep.run_sweep(blob_world, path, tmp_path / "w", progress=False)
  assert [e["status"] for e in again] == ["done", "failed", "done"]


def test_a_mixed_file_forms_two_groups_equal_to_two_sweeps(tmp_path, blob_world):
  near, far = [2.0, 2.7], [2.5, 3.0]
  rows = [_row("a", "a red ball", camera_distance=far), _row("b", "a blue chair", seed=1,
                                                              camera_distance=near),
          _row("c", "a green box", seed=2, camera_distance=far)]
  sweep.run_sweep(blob_world, _rows(tmp_path, rows), tmp_path / "mixed", progress=False,
                      final_outputs=False)
  index = json.loads((tmp_path / "mixed" / "sweep.json").read_text())
  assert index["groups"] == [["a", "c"], ["b"]]
  assert [e["group"] for e in index["scenes"]] == [0, 1, 0]
  sweep.run_sweep(blob_world, _rows(tmp_path, [rows[0], rows[2]], "far.jsonl"),
                      tmp_path / "far", progress=False, final_outputs=False)
  sweep.run_sweep(blob_world, _rows(tmp_path, [rows[1]], "near.jsonl"),
                      tmp_path / "near", progress=False, final_outputs=False)
  for name, alone in (("a", "far"), ("c", "far"), ("b", "near")):
    (x, sx), (y, sy) = _final_params(tmp_path / "mixed", name), _final_params(tmp_path / alone, name)
    assert sx == sy == blob_world.train.steps
    for u, v in zip(x, y):
      np.testing.assert_array_equal(u, v)
  # The two groups really differ in the static setting (different cameras, different params).
  (xa, _), (xb, _) = _final_params(tmp_path / "mixed", "a"), _final_params(tmp_path / "mixed", "b")
  assert max(float(np.max(np.abs(u - v))) for u, v in zip(xa, xb)) > 1e-4


def test_scenes_checkpointed_at_different_steps_resume_from_their_common_step(tmp_path,
                                                                              blob_world):
  """A kill between two scenes' saves: both resume from the step they share, so the
  group trains as the same program and ends bit-identical to an uninterrupted sweep."""
  import shutil
  path = _rows(tmp_path, [_row("a", "a red ball"), _row("b", "a blue chair", seed=2)])
  sweep.run_sweep(blob_world, path, tmp_path / "full", progress=False, final_outputs=False)
  sweep.run_sweep(blob_world, path, tmp_path / "cut", progress=False, final_outputs=False,
                      stop_after=5)
  assert ckpt_lib.latest_step(tmp_path / "cut" / "a" / "checkpoints") == 4
  shutil.rmtree(tmp_path / "cut" / "b" / "checkpoints" / "4")      # b's save never happened
  entries = sweep.run_sweep(blob_world, path, tmp_path / "cut", progress=False,
                                final_outputs=False)
  assert [e["status"] for e in entries] == ["trained", "trained"]
  for n in ("a", "b"):
    (x, sx), (y, sy) = _final_params(tmp_path / "full", n), _final_params(tmp_path / "cut", n)
    assert sx == sy == blob_world.train.steps
    for u, v in zip(x, y):
      np.testing.assert_array_equal(u, v)
    rows = run_io.read_metrics(tmp_path / "cut" / n / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, blob_world.train.steps + 1))


def test_a_finished_sweep_resumes_with_more_steps_but_not_with_other_settings(tmp_path,
                                                                             blob_world):
  """More train.steps (a key single runs may change on resume) trains every done scene
  on from its last checkpoint and writes its final outputs again; a changed learning
  rate is one error naming the key, old and new, before anything trains."""
  path = _rows(tmp_path, [_row("a", "a red ball"), _row("b", "a blue chair", seed=2)])
  steps = blob_world.train.steps
  first = sweep.run_sweep(blob_world, path, tmp_path / "w", progress=False)
  assert [(e["status"], e["step"]) for e in first] == [("done", steps)] * 2
  params_before = {n: _final_params(tmp_path / "w", n)[0] for n in ("a", "b")}
  more = blob_world.copy_and_resolve_references()
  more.train.steps = steps + 2
  entries = sweep.run_sweep(more, path, tmp_path / "w", progress=False)
  assert [(e["status"], e["step"]) for e in entries] == [("done", steps + 2)] * 2
  for n in ("a", "b"):
    params, step = _final_params(tmp_path / "w", n)
    assert step == steps + 2
    assert any(not np.array_equal(u, v) for u, v in zip(params, params_before[n]))
    summary = json.loads((tmp_path / "w" / n / "final" / "summary.json").read_text())
    assert summary["step"] == steps + 2
    rows = run_io.read_metrics(tmp_path / "w" / n / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 3))   # continued, not restarted
    assert json.loads((tmp_path / "w" / n / "config.json").read_text())["train"]["steps"] == (
        steps + 2)
  other = more.copy_and_resolve_references()
  other.optim.lr_field = float(more.optim.lr_field) * 2
  with pytest.raises(prompt_file.SweepError,
                     match=r"row 1 .*holds a different config: optim\.lr_field \(0\.01 -> 0\.02\)"):
    sweep.run_sweep(other, path, tmp_path / "w", progress=False)


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_not_repeated(tmp_path,
                                                                              blob_world):
  """Rows logged before the first save are dropped when the run starts again from
  scratch: a single run (loop.run) and a sweep scene whose checkpoints are gone."""
  cfg = blob_world.copy_and_resolve_references()
  cfg.train.ckpt_every = 4
  loop.run(cfg, str(tmp_path / "single"), progress=False, stop_after=3, final_outputs=False)
  rows = run_io.read_metrics(tmp_path / "single" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert ckpt_lib.latest_step(tmp_path / "single" / "checkpoints") is None
  loop.run(cfg, str(tmp_path / "single"), progress=False, final_outputs=False)
  rows = run_io.read_metrics(tmp_path / "single" / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))

  import shutil
  path = _rows(tmp_path, [_row("a", "a red ball"), _row("b", "a blue chair", seed=2)])
  sweep.run_sweep(blob_world, path, tmp_path / "cut", progress=False, final_outputs=False,
                      stop_after=5)
  shutil.rmtree(tmp_path / "cut" / "b" / "checkpoints")   # killed before b's first save
  sweep.run_sweep(blob_world, path, tmp_path / "cut", progress=False, final_outputs=False)
  for n in ("a", "b"):
    rows = run_io.read_metrics(tmp_path / "cut" / n / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, blob_world.train.steps + 1)), n


def test_sweep_progress_counts_every_processes_scene_steps(monkeypatch):
  """Process 0's bar adds the counts the others post (at most once per every_s),
  and wait_for_all keeps reading until each has posted finished."""
  store = {}   # the coordination service's key-value store, process -> latest post
  now = [0.0]
  clock = lambda: now[0]

  def processes(index):
    return processes_lib.Processes(
        index=index, count=3,
        post=lambda name, obj: store.__setitem__((name, index), json.loads(json.dumps(obj))),
        posted=lambda name: {i: v for (n, i), v in store.items() if n == name})

  bars = [sweep.SweepProgress(processes(i), total=30, every_s=1.0, clock=clock)
          for i in range(3)]
  bars[1].update(1, n=4)            # posted at once (first update)
  bars[2].update(1, n=2)
  bars[0].update(1, n=3)            # reads 4 + 2
  assert [b.count for b in bars] == [9, 4, 2]
  bars[1].update(2, n=5)            # within every_s: not posted yet
  bars[0].update(2, n=0)
  assert bars[0].count == 9 and store[("progress", 1)] == {"steps": 4, "finished": False}
  now[0] = 1.5
  bars[1].update(3, n=1)            # posts 10
  bars[0].update(3, n=0)            # reads it
  assert bars[0].count == 3 + 10 + 2

  polls, fired = [], []

  def sleep(s):
    polls.append(s)
    now[0] += s
    if len(polls) == 2 and not fired:   # the others finish while process 0 waits
      fired.append(True)
      bars[1].wait_for_all(timeout_s=10)
      bars[2].update(4, n=8)
      bars[2].wait_for_all(timeout_s=10)
  monkeypatch.setattr(sweep.time, "sleep", sleep)
  bars[0].wait_for_all(timeout_s=60, poll_s=0.5)
  assert len(polls) == 2 and bars[0].count == 3 + 10 + 10
  assert store[("progress", 0)] == {"steps": 3, "finished": True}
  # A process that never finishes: process 0 stops waiting after timeout_s.
  store[("progress", 2)]["finished"] = False
  polls.clear()
  bars[0].wait_for_all(timeout_s=5, poll_s=1.0)
  assert len(polls) == 5
  single = sweep.SweepProgress(processes_lib.Processes(), total=3, clock=clock)
  single.update(1, n=3)
  single.wait_for_all(timeout_s=5)   # nobody else: returns at once
  assert single.count == 3
