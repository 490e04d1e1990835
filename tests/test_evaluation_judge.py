"""Comparison sheets and the judge tally, with a stub judge program that looks at the sheet."""
import json
import pathlib
import subprocess
import sys
import textwrap

import imageio.v3 as iio
import numpy as np
import pytest

from interfusion_jax.evaluation import judge
from interfusion_jax.stage2 import run_io

COLOURS = {"good": (1.0, 0.0, 0.0), "meh": (0.0, 0.7, 0.0), "bad": (0.0, 0.0, 1.0)}
PROMPTS = ["a man riding a bike", "a man sitting on a chair", "a man TIE holding a ball",
           "a man INVALID lifting a box", "a man CRASH kicking a ball"]

# Picks the row whose pixels are reddest; the prompt (in the question on stdin)
# can ask it to tie, to babble, or to fail.
STUB = textwrap.dedent("""
    import sys
    import imageio.v3 as iio
    import numpy as np
    sheet, qfile = sys.argv[1], sys.argv[2]
    q = sys.stdin.read()
    assert q == open(qfile).read()
    if "CRASH" in q:
        sys.exit(3)
    if "INVALID" in q:
        print("I cannot tell.")
        sys.exit(0)
    img = iio.imread(sheet).astype(float) / 255
    content = (img[:, 48:].min(axis=2) < 0.9).any(axis=1)   # rows that are not white
    bands, start = [], None
    for y, c in enumerate(list(content) + [False]):
        if c and start is None:
            start = y
        if not c and start is not None:
            bands.append((start, y)); start = None
    red = [img[a:b, 48:, 0].mean() - img[a:b, 48:, 2].mean() for a, b in bands]
    order = np.argsort(red)[::-1]
    letters = "ABCDEFGH"
    if "TIE" in q:
        print("thinking...\\nAnswer: " + letters[order[0]] + " and " + letters[order[1]])
    else:
        print("Answer: " + letters[order[0]] + ".")
""")


def _fake_run(root: pathlib.Path, prompt: str, colour) -> pathlib.Path:
  """A run dir with config.json and a 3-row multiview.png whose top row has ``colour``."""
  human, inter = prompt.split(" ", 2)[:2], prompt.split(" ", 2)[2]
  root.mkdir(parents=True)
  (root / "config.json").write_text(json.dumps({"prompt": {
      "human": " ".join(human), "object": "x", "interaction": inter}}))
  tile = np.ones((8, 8, 3))
  tile[2:6, 2:6] = colour
  grey = np.full((8, 8, 3), 0.5)
  run_io.write_png(root / "final" / "multiview.png",
                   run_io.image_grid([[tile] * 4, [grey] * 4, [grey] * 4]))
  return root


@pytest.fixture
def methods(tmp_path):
  out = {}
  for name, colour in COLOURS.items():
    for i, p in enumerate(PROMPTS):
      if name == "bad" and i == 1:
        continue                      # "bad" lacks one scene: that sheet has only 2 rows
      _fake_run(tmp_path / name / f"scene{i}", p, colour)
    out[name] = str(tmp_path / name)
  return out


def test_multiview_row_cuts_the_interaction_row():
  rows = [[np.full((5, 6, 3), v)] * 4 for v in (0.0, 0.5, 1.0)]
  grid = run_io.image_grid(rows)
  top = judge.multiview_row(grid)
  assert top.shape == (5 + 4, grid.shape[1], 3)
  np.testing.assert_array_equal(top[2:7, 2:8], 0)
  np.testing.assert_array_equal(judge.multiview_row(grid, 1)[2:7, 2:8], 128)


def test_sheets_key_and_tally_with_stub_judge(tmp_path, methods):
  out = tmp_path / "judge"
  key = judge.make_sheets(methods, out, seed=3)
  assert len(key["sheets"]) == len(PROMPTS) and key["skipped"] == []
  assert json.loads((out / "key.json").read_text()) == key
  sizes = [len(s["labels"]) for s in key["sheets"]]
  assert sorted(sizes) == [2, 3, 3, 3, 3]
  # The order is shuffled: "good" is not always A.
  assert len({next(l for l, m in s["labels"].items() if m == "good")
              for s in key["sheets"]}) > 1
  for s in key["sheets"]:
    q = (out / s["question"]).read_text()
    assert s["prompt"] in q and "complete human body" in q and "contact" in q
    assert "good" not in q and "bad" not in q          # the key stays apart
    assert iio.imread(out / s["sheet"]).shape[0] >= 128 * len(s["labels"])
  # One sheet goes missing before judging.
  missing = next(s for s in key["sheets"] if s["prompt"] == "a man riding a bike")
  (out / missing["sheet"]).unlink()
  stub = tmp_path / "stub_judge.py"
  stub.write_text(STUB)
  res = judge.run_judge(f"{sys.executable} {stub}", out, timeout=60)
  # 5 sheets: 1 missing, 1 invalid text, 1 crash (invalid), 1 tie, 1 valid pick.
  assert (res["sheets"], res["valid"], res["invalid"], res["missing"], res["ties"]) == (
      5, 2, 2, 1, 1)
  per = res["per_method"]
  # chair sheet (good vs meh): good wins 1; TIE sheet: the two reddest are good and
  # meh (green has more red-minus-blue than blue), half a prompt each.
  assert per["good"]["credit"] == pytest.approx(1.5) and per["good"]["valid_sheets"] == 2
  assert per["meh"]["credit"] == pytest.approx(0.5) and per["meh"]["valid_sheets"] == 2
  assert per["bad"]["credit"] == 0 and per["bad"]["valid_sheets"] == 1
  assert per["good"]["select_pct"] == pytest.approx(75.0)
  assert per["meh"]["select_pct"] == pytest.approx(25.0)
  assert per["bad"]["select_pct"] == 0.0
  tallied = json.loads((out / "tally.json").read_text())
  assert tallied["per_method"]["good"]["select_pct"] == pytest.approx(75.0)
  reasons = {a["status"] for a in json.loads((out / "answers.json").read_text())}
  assert reasons == {"valid", "invalid", "missing"}


def test_parse_answer():
  labels = ["A", "B", "C"]
  assert judge.parse_answer("B", labels) == ["B"]
  assert judge.parse_answer("reasoning...\nAnswer: c.", labels) == ["C"]
  assert judge.parse_answer("A, C", labels) == ["A", "C"]
  assert judge.parse_answer("A and B", labels) == ["A", "B"]
  for bad in ("", "D", "I think A", "A A", "none", "Answer:"):
    assert judge.parse_answer(bad, labels) is None, bad


def test_tally_counts_an_answer_for_a_sheet_never_asked_as_missing():
  key = {"methods": ["x", "y"], "sheets": [
      {"sheet": "s0.png", "labels": {"A": "x", "B": "y"}},
      {"sheet": "s1.png", "labels": {"A": "y", "B": "x"}}]}
  res = judge.tally(key, {"s0.png": judge.Answer("s0.png", "valid", ("B",))})
  assert res["missing"] == 1 and res["valid"] == 1
  assert res["per_method"]["y"]["select_pct"] == 100.0
  assert res["per_method"]["x"]["select_pct"] == 0.0


def test_compare_cli(tmp_path, methods):
  stub = tmp_path / "stub_judge.py"
  stub.write_text(STUB)
  proc = subprocess.run(
      [sys.executable, "-m", "interfusion_jax.evaluate",
       "--compare=" + ",".join(f"{k}={v}" for k, v in methods.items()),
       f"--sheets_dir={tmp_path / 'j'}", f"--judge_cmd={sys.executable} {stub}"],
      capture_output=True, text=True, timeout=300,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr[-2000:]
  # bike and chair: good; TIE: good and meh half each; INVALID and CRASH invalid.
  assert "good: select 83.3333 % (2.5 of 3)" in proc.stdout, proc.stdout
  assert "meh: select 16.6667 % (0.5 of 3)" in proc.stdout
  assert "bad: select 0.0000 % (0 of 2)" in proc.stdout
  assert "valid 3 (ties 1), invalid 2, missing 0" in proc.stdout
  proc = subprocess.run([sys.executable, "-m", "interfusion_jax.evaluate",
                         f"--compare={methods['good']}", f"--sheets_dir={tmp_path / 'k'}"],
                        capture_output=True, text=True, timeout=300,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 2
  assert proc.stderr.count("\n") == 1 and "at least 2 methods" in proc.stderr
