"""GPT-4V-style comparison sheets and the tally of a judge's answers.

The paper's "GPT-4V select" is the share of prompts on which the judge picks
a method's result as the most 3D-plausible: a complete body, a complete
object, correct contact (PAPER.md "How the paper evaluates").

* ``make_sheets``: for every scene prompt that two or more methods share, one
  PNG with each method's interaction-scene views (the top row of its
  ``final/multiview.png``) in one row, the rows labelled A, B, C, ... in a
  random order (seeded), and the question text beside it
  (``sheets/sheet_NNN.{png,txt}``). The key (which label is which method) is
  written apart, to ``key.json`` beside the ``sheets/`` folder; the judge
  sees only the sheet and the question.
* ``run_judge``: hands each sheet to a local program,
  ``PROGRAM <sheet.png> <question.txt>`` with the question also on stdin,
  and reads the last non-empty line of its stdout (``parse_answer``).
  Nothing here uses the network.
* ``tally``: the select percentage per method.

Answers: one label (``B``, ``Answer: B``, ``b.``) picks that result; several
labels (``A, C`` or ``A and C``) are a tie, and each named method gets an
equal share of that prompt; anything else, a label not on the sheet, a
non-zero exit or a timeout is invalid. A sheet listed in the key but absent
on disk is missing. A method's select percentage is 100 x its credit over
the valid answers of the sheets it appears on.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shlex
import subprocess
import string
from typing import Mapping, Sequence

import imageio.v3 as iio
import numpy as np

from interfusion_jax import fileio
from interfusion_jax.stage2 import run_io
from interfusion_jax.evaluation import rundirs

QUESTION = (
    "Each row of this image shows one 3D result for the text prompt \"{prompt}\", rendered "
    "from {views} viewpoints around the scene. The rows are labelled {labels}. Which result "
    "is the most 3D-plausible: a complete human body, a complete object, and correct contact "
    "between the human and the object as the prompt describes? Answer with the letter of "
    "exactly one row.")
MULTIVIEW_ROWS, MULTIVIEW_PAD = 3, 2   # outputs.write_renders: interaction / human / object


class JudgeError(ValueError):
  """Bad comparison input (too few methods, unreadable key)."""


def scene_prompt(run_dir) -> str:
  """The full scene prompt ``T_H T_I`` of a run directory's config.json."""
  p = rundirs.saved_prompt(run_dir)
  return f"{p['human']} {p['interaction']}"


def method_scenes(path) -> dict:
  """{scene prompt: run dir} of a run or sweep directory (the first run of a repeated prompt)."""
  out = {}
  for run in rundirs.discover(path).runs:
    out.setdefault(scene_prompt(run), run)
  return out


def multiview_row(image: np.ndarray, row: int = 0, rows: int = MULTIVIEW_ROWS,
                  pad: int = MULTIVIEW_PAD) -> np.ndarray:
  """Row ``row`` (0 = interaction) of a ``run_io.image_grid`` with ``rows`` rows, pads kept.

  Args:
    image: [rows*H + (rows+1)*pad, W', 3] uint8.

  Returns:
    [H + 2 pad, W', 3] uint8.
  """
  image = np.asarray(image)
  h = (image.shape[0] - (rows + 1) * pad) // rows
  if h <= 0:
    raise ValueError(f"multiview_row: an image of height {image.shape[0]} cannot hold "
                     f"{rows} rows with {pad}-pixel padding.")
  y = row * (h + pad)
  return image[y:y + h + 2 * pad, :, :3]


def _font(size: int):
  from PIL import ImageFont  # pillow comes with imageio
  try:
    return ImageFont.load_default(size=size)
  except TypeError:
    return ImageFont.load_default()


def compose_sheet(rows: Sequence[np.ndarray], labels: Sequence[str], min_height: int = 128,
                  label_width: int = 48) -> np.ndarray:
  """Stacks one image row per result, each scaled up (nearest) to ``min_height`` pixels and
  labelled with its letter on the left. Returns uint8 [H, W, 3] on white."""
  from PIL import Image, ImageDraw
  scaled = []
  for r in rows:
    r = np.asarray(r, np.uint8)[..., :3]
    k = max(1, int(np.ceil(min_height / r.shape[0])))
    scaled.append(np.repeat(np.repeat(r, k, 0), k, 1))
  w = label_width + max(s.shape[1] for s in scaled)
  h = sum(s.shape[0] for s in scaled) + 4 * (len(scaled) + 1)
  canvas = Image.new("RGB", (w, h), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = _font(32)
  y = 4
  for s, lab in zip(scaled, labels):
    canvas.paste(Image.fromarray(s), (label_width, y))
    draw.text((10, y + s.shape[0] // 2 - 18), lab, fill=(0, 0, 0), font=font)
    y += s.shape[0] + 4
  return np.asarray(canvas)


def make_sheets(methods: Mapping[str, str], out_dir, seed: int = 0) -> dict:
  """Writes the comparison sheets and key.json for two or more methods.

  Args:
    methods: {method name: run or sweep directory}; scenes are matched by
      their full scene prompt.
    out_dir: written: ``sheets/sheet_NNN.png``, ``sheets/sheet_NNN.txt``, ``key.json``.
    seed: seed of the label order.

  Returns:
    the key: {"methods": [...], "seed", "sheets": [{"sheet", "question", "prompt",
    "labels": {letter: method}}], "skipped": [{"prompt", "methods"}]} (prompts
    fewer than two methods share, or whose multiview.png is missing).

  Raises:
    JudgeError: fewer than two methods.
  """
  if len(methods) < 2:
    raise JudgeError(f"--compare needs at least 2 methods, got {len(methods)}: "
                     "give NAME=DIR,NAME=DIR (run or sweep directories).")
  out = pathlib.Path(out_dir).absolute()
  scenes = {name: method_scenes(path) for name, path in methods.items()}
  prompts = sorted({p for s in scenes.values() for p in s})
  rng = np.random.default_rng(seed)
  key = {"methods": list(methods), "seed": int(seed), "sheets": [], "skipped": []}
  for prompt in prompts:
    rows = {}
    for name in methods:
      run = scenes[name].get(prompt)
      grid = None if run is None else pathlib.Path(run) / "final" / "multiview.png"
      if grid is not None and grid.is_file():
        rows[name] = multiview_row(iio.imread(grid))
    if len(rows) < 2:
      key["skipped"].append({"prompt": prompt, "methods": sorted(rows)})
      continue
    names = list(rows)
    order = [names[i] for i in rng.permutation(len(names))]
    labels = list(string.ascii_uppercase[:len(order)])
    i = len(key["sheets"])
    sheet = out / "sheets" / f"sheet_{i:03d}.png"
    question = QUESTION.format(prompt=prompt, views=4, labels=", ".join(labels))
    run_io.write_png(sheet, compose_sheet([rows[n] for n in order], labels))
    fileio.atomic_write_text(sheet.with_suffix(".txt"), question + "\n")
    key["sheets"].append({"sheet": f"sheets/{sheet.name}", "question": f"sheets/{sheet.stem}.txt",
                          "prompt": prompt, "labels": dict(zip(labels, order))})
  run_io.write_json(out / "key.json", key)
  return key


_PREFIX = re.compile(r"^\s*(answer|choice|result|row)\s*[:=\-]?\s*", re.IGNORECASE)
_SPLIT = re.compile(r"\s*(?:,|;|/|&|\+|\band\b|\s)\s*", re.IGNORECASE)


def parse_answer(text: str, labels: Sequence[str]) -> list[str] | None:
  """The labels a judge's output names, or None when the answer is invalid.

  Reads the last non-empty line; an optional "Answer:" prefix and trailing
  punctuation are dropped; the rest must be one or more distinct labels
  (case-insensitive) separated by commas, "and", "/", "&", "+" or spaces.
  """
  lines = [l for l in str(text).splitlines() if l.strip()]
  if not lines:
    return None
  line = _PREFIX.sub("", lines[-1].strip()).strip().strip(".!").strip()
  tokens = [t for t in _SPLIT.split(line) if t]
  if not tokens:
    return None
  allowed = {l.upper() for l in labels}
  picked = []
  for t in tokens:
    t = t.strip("()[]\"'*").upper()
    if t not in allowed or t in picked:
      return None
    picked.append(t)
  return picked


@dataclasses.dataclass(frozen=True)
class Answer:
  """One sheet's outcome: status "valid" | "invalid" | "missing", the labels, the raw text."""
  sheet: str
  status: str
  labels: tuple = ()
  raw: str = ""
  reason: str = ""


def ask(cmd: str, sheet: pathlib.Path, question: str, labels: Sequence[str],
        timeout: float) -> Answer:
  """Runs the judge program on one sheet (see the module docstring)."""
  qfile = sheet.with_suffix(".txt")
  if not sheet.is_file():
    return Answer(sheet.name, "missing", reason="sheet file not found")
  try:
    proc = subprocess.run(shlex.split(cmd) + [str(sheet), str(qfile)], input=question,
                          capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return Answer(sheet.name, "invalid", reason=f"timed out after {timeout:g} s")
  except OSError as e:
    raise JudgeError(f"--judge_cmd {cmd!r} cannot be run: {e.strerror or e}.") from e
  if proc.returncode != 0:
    return Answer(sheet.name, "invalid", raw=proc.stdout[-500:],
                  reason=f"exit status {proc.returncode}: {proc.stderr.strip()[-200:]}")
  picked = parse_answer(proc.stdout, labels)
  if picked is None:
    return Answer(sheet.name, "invalid", raw=proc.stdout[-500:],
                  reason=f"not one of the labels {', '.join(labels)}")
  return Answer(sheet.name, "valid", tuple(picked), proc.stdout[-500:])


def tally(key: Mapping, answers: Mapping[str, Answer]) -> dict:
  """Select percentages from the key and the answers per sheet path.

  Returns:
    {"per_method": {method: {"credit", "valid_sheets", "select_pct" | None}},
     "sheets", "valid", "invalid", "missing", "ties"}.
  """
  per = {m: {"credit": 0.0, "valid_sheets": 0} for m in key["methods"]}
  counts = {"sheets": len(key["sheets"]), "valid": 0, "invalid": 0, "missing": 0, "ties": 0}
  for s in key["sheets"]:
    a = answers.get(s["sheet"])
    if a is None or a.status == "missing":
      counts["missing"] += 1
      continue
    if a.status != "valid":
      counts["invalid"] += 1
      continue
    counts["valid"] += 1
    counts["ties"] += int(len(a.labels) > 1)
    for method in s["labels"].values():
      per[method]["valid_sheets"] += 1
    for lab in a.labels:
      per[s["labels"][lab]]["credit"] += 1.0 / len(a.labels)
  for m in per.values():
    m["select_pct"] = (100.0 * m["credit"] / m["valid_sheets"]) if m["valid_sheets"] else None
  return {"per_method": per, **counts}


def run_judge(cmd: str, out_dir, timeout: float = 600.0) -> dict:
  """Asks the judge about every sheet of ``out_dir/key.json``; writes answers.json, tally.json.

  Returns:
    the tally (``tally``) plus "answers": [per-sheet dicts].

  Raises:
    JudgeError: when key.json is missing or unreadable, or the program cannot run.
  """
  out = pathlib.Path(out_dir).absolute()
  try:
    key = json.loads((out / "key.json").read_text())
  except (OSError, ValueError) as e:
    raise JudgeError(f"{out / 'key.json'} is missing or unreadable ({e}); make the sheets "
                     "first with --compare.") from e
  answers = {}
  for s in key["sheets"]:
    sheet = out / s["sheet"]
    qfile = out / s["question"]
    question = qfile.read_text() if qfile.is_file() else ""
    answers[s["sheet"]] = ask(cmd, sheet, question, list(s["labels"]), timeout)
  result = tally(key, answers)
  result["answers"] = [dict(dataclasses.asdict(a), sheet=k) for k, a in answers.items()]
  run_io.write_json(out / "answers.json", result["answers"])
  run_io.write_json(out / "tally.json", {k: v for k, v in result.items() if k != "answers"})
  return result


def parse_methods(items: Sequence[str]) -> dict:
  """{name: dir} from ``NAME=DIR`` or bare ``DIR`` items (a bare DIR is named after its folder).

  Raises:
    JudgeError: when a name repeats.
  """
  out = {}
  for item in items:
    name, sep, path = str(item).partition("=")
    if not sep:
      name, path = "", item
    name = name or pathlib.Path(path).absolute().name
    if name in out:
      raise JudgeError(f"--compare names {name!r} twice; give NAME=DIR pairs.")
    out[name] = path
  return out


def summary_lines(result: Mapping) -> list[str]:
  """Human-readable lines of a ``run_judge`` result: the counts, then one line per method."""
  lines = [f"sheets {result['sheets']}: valid {result['valid']} (ties {result['ties']}), "
           f"invalid {result['invalid']}, missing {result['missing']}"]
  for m, r in result["per_method"].items():
    pct = "—" if r["select_pct"] is None else f"{r['select_pct']:.4f}"
    lines.append(f"{m}: select {pct} % ({r['credit']:g} of {r['valid_sheets']})")
  return lines
