"""Prompt files, grouping and process assignment (stage2/sweep.py), and the sweep command
line's bad-input errors, which come before anything is loaded or compiled."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from configs import hoi
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import prompt_file
from interfusion_jax.stage2 import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROW = {"human": "a man", "object": "a bike", "interaction": "riding a bike"}


def _jsonl(tmp_path, rows, name="p.jsonl"):
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def _error(path):
  with pytest.raises(prompt_file.SweepError) as e:
    prompt_file.read_prompt_file(path)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_bad_rows_name_the_row_and_the_column(tmp_path):
  msg = _error(_jsonl(tmp_path, [ROW, dict(ROW, object="  ")]))
  assert "row 2 (line 2), column 'object': empty prompt" in msg
  msg = _error(_jsonl(tmp_path, [ROW, ROW, dict(ROW, colour="red")]))
  assert "row 3 (line 3), column 'colour': unknown column" in msg and "shape_weights" in msg
  msg = _error(_jsonl(tmp_path, [ROW, '{"human": "a man", "object": "a bike" "interaction": 1}']))
  assert "row 2 (line 2), character 39: malformed JSON" in msg
  msg = _error(_jsonl(tmp_path, [dict(ROW, name="a"), dict(ROW, name="b"), dict(ROW, name="a")]))
  assert "row 3 (line 3), column 'name': duplicate scene name 'a' (also row 1)" in msg
  msg = _error(_jsonl(tmp_path, [{"human": "a man", "object": "a bike"}]))
  assert "row 1 (line 1), column 'interaction': missing" in msg
  msg = _error(_jsonl(tmp_path, [dict(ROW, seed=-1)]))
  assert "column 'seed': -1 must be a non-negative integer" in msg
  msg = _error(_jsonl(tmp_path, [dict(ROW, camera_distance=[3.0, 2.0])]))
  assert "column 'camera_distance'" in msg
  msg = _error(_jsonl(tmp_path, [dict(ROW, anchor_file="nope.npz")]))
  assert "column 'anchor_file'" in msg and "does not exist" in msg
  msg = _error(_jsonl(tmp_path, [dict(ROW, shape_weights=[0.1, 0.2])]))
  assert "column 'shape_weights'" in msg and "3 numbers" in msg


def test_csv_rows_and_their_errors(tmp_path):
  path = tmp_path / "p.csv"
  path.write_text("name,human,object,interaction,camera_distance,aug_rot,seed\n"
                  "a,a man,a bike,riding a bike,2.0 2.7,true,4\n"
                  "\n"
                  'b,"a man, tall",a chair,sitting on a chair,,,\n')
  rows = prompt_file.read_prompt_file(path)
  assert [r.values["name"] for r in rows] == ["a", "b"]
  assert rows[0].values["camera_distance"] == (2.0, 2.7) and rows[0].values["aug_rot"] is True
  assert rows[0].values["seed"] == 4 and rows[1].line == 4
  assert rows[1].values["human"] == "a man, tall" and "seed" not in rows[1].values
  path.write_text("human,object,interaction\na man,a bike,riding a bike,extra\n")
  assert "row 1 (line 2), column 4: malformed row with 4 fields; the header has 3" in _error(path)
  path.write_text("human,object,interaction\na man,,riding a bike\n")
  assert "row 1 (line 2), column 'object': missing" in _error(path)
  path.write_text("human,object,interaction,aug_trans\na man,a bike,riding a bike,maybe\n")
  assert "column 'aug_trans': 'maybe' must be true or false" in _error(path)
  assert "unknown format '.txt'" in _error(_jsonl(tmp_path, [ROW], "p.txt"))
  assert "no rows" in _error(_jsonl(tmp_path, ["", "# nothing"]))


def _smoke():
  cfg = hoi.get_config("smoke")
  cfg.train.steps = 4
  return cfg


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


def test_command_line_prints_one_line_and_exits_2(tmp_path):
  path = _jsonl(tmp_path, [ROW, dict(ROW, name="x"), dict(ROW, name="x")])
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "interfusion_jax.sweep",
                         "--config=configs/hoi.py:smoke", f"--prompts={path}",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "row 3" in lines[0]
  assert "column 'name': duplicate scene name 'x'" in lines[0]
  assert not (tmp_path / "w").exists()
