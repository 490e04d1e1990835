"""stage2/prompt_file.py: every bad row or column is named in one line; rows become
scene configs through the one translation.
"""
import pytest

from interfusion_jax.stage2 import prompt_file
from scene_rows import ROW, PROMPTS, _jsonl, _base


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


def test_scene_configs_sets_prompts_and_validates():
  cfgs = prompt_file.scene_configs(_base(), PROMPTS)
  assert [c.prompt.object for c in cfgs] == ["a blue chair", "a yellow bike"]
  assert cfgs[0].prompt.prefix == _base().prompt.prefix
  with pytest.raises(ValueError, match="no prompts"):
    prompt_file.scene_configs(_base(), [])
  with pytest.raises(ValueError, match="unknown column"):
    prompt_file.scene_configs(_base(), [dict(PROMPTS[0], colour="red")])
  with pytest.raises(ValueError, match="column 'object'"):
    prompt_file.scene_configs(_base(), [dict(PROMPTS[0], object="  ")])


def test_pose_query_column_sets_the_retrieval_text(tmp_path):
  cfgs = prompt_file.scene_configs(_base(), [dict(PROMPTS[0], pose_query=" pushing a cart "),
                                             PROMPTS[1]])
  assert [c.pose.query for c in cfgs] == ["pushing a cart", ""]
  assert cfgs[0].prompt.interaction == PROMPTS[0]["interaction"]
  msg = _error(_jsonl(tmp_path, [dict(ROW, pose_query="  ")]))
  assert "column 'pose_query'" in msg and "non-empty string" in msg
