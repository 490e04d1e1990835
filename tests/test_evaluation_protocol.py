"""evaluate_path on run and sweep dirs without training (a stub loader): what is written
when no CLIP is given, a sweep scene that has no checkpoint, and run/sweep detection."""
import csv
import pathlib
import json
import types

import pytest

from interfusion_jax.evaluation import protocol, rundirs


def _run_dir(path, interaction, steps=5):
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps({
      "prompt": {"human": "a man", "object": "a bike", "interaction": interaction},
      "pose": {"clip_dir": ""}, "train": {"steps": steps}}))
  return path


def _load(workdir):
  cfg = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  if "untrained" in workdir:
    raise FileNotFoundError(f"No loadable checkpoint in {workdir}/checkpoints; train first.")
  config = types.SimpleNamespace(prompt=types.SimpleNamespace(**cfg["prompt"]))
  return config, None, types.SimpleNamespace(step=7)


def test_discover_run_and_sweep_dirs(tmp_path):
  run = _run_dir(tmp_path / "one", "riding a bike")
  assert rundirs.discover(run).kind == "run"
  sweep = tmp_path / "sweep"
  b = _run_dir(sweep / "b", "x")
  a = _run_dir(sweep / "a", "y")
  (sweep / "notes").mkdir()
  rs = rundirs.discover(sweep)
  assert rs.kind == "sweep" and rs.runs == (a, b)
  # sweep.json's order and list win over the folder listing.
  (sweep / "sweep.json").write_text(json.dumps({"scenes": [{"workdir": "b"}, {"workdir": "a"}]}))
  assert rundirs.discover(sweep).runs == (b, a)
  with pytest.raises(rundirs.RunDirError, match="holds no config.json"):
    rundirs.discover(tmp_path / "sweep" / "notes")
  with pytest.raises(rundirs.RunDirError, match="not a directory"):
    rundirs.discover(tmp_path / "nowhere")


def test_sweep_without_clip_and_with_an_untrained_scene(tmp_path):
  sweep = tmp_path / "sweep"
  _run_dir(sweep / "a", "riding a bike")
  _run_dir(sweep / "untrained", "sitting on a chair")
  out = protocol.evaluate_path(sweep, geometry=False, load=_load)
  assert out["kind"] == "sweep" and out["r_precision"] is None
  assert out["r_precision_note"] == "not computed: no CLIP weights"
  ev = json.loads((sweep / "a" / "eval.json").read_text())
  assert ev["clip"] is None and ev["step"] == 7 and ev["prompts"]["interaction"] == (
      "a man riding a bike")
  assert not (sweep / "untrained" / "eval.json").exists()
  top = json.loads((sweep / "eval.json").read_text())
  assert list(top["not_measured"]) == [str(sweep / "untrained")]
  assert "no CLIP weights" in top["clip_note"]
  rows = list(csv.DictReader((sweep / "eval.csv").read_text().splitlines()))
  assert [r["run"] for r in rows[:3]] == ["a", "untrained", "mean"]
  assert all(r["clip_interaction"] == "" for r in rows[:3])     # nothing made up
  assert rows[3]["run"].endswith("(reported in the paper, not measured here)")
  md = (sweep / "eval.md").read_text()
  assert "| a | a man riding a bike | 7 |" in md


def test_single_run_without_checkpoint_is_an_error(tmp_path):
  run = _run_dir(tmp_path / "untrained", "riding a bike")
  with pytest.raises(FileNotFoundError, match="train first"):
    protocol.evaluate_path(run, geometry=False, load=_load)


def test_cli_bad_input_is_one_line(tmp_path):
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  from configs import hoi
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(hoi.get_config("smoke").to_json())   # never trained
  for args, words in ((["--clip_dir=" + str(tmp_path / "nope")], "does not exist"),
                      (["--views=0"], "at least 1 view"),
                      ([], "no loadable checkpoint")):
    proc = subprocess.run([sys.executable, "-m", "interfusion_jax.evaluate",
                           f"--workdir={run}", *args], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, (args, proc.stderr[-1000:])
    assert proc.stderr.count("\n") == 1 and words in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr
