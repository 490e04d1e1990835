"""Prompt files of a sweep: reading and checking them, and a row's scene config.

A prompt file is JSONL (one JSON object a line) or CSV (a header row), one
scene a row; ``COLUMNS`` lists the columns and the config keys they set
(docs/sweeps.md). ``read_prompt_file`` + ``check_row`` raise ``SweepError``
naming the file, the row and the column, before anything is loaded or
compiled; ``scene_config`` applies a checked row to the base config, the one
translation of a prompt row into config settings.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
import re
from typing import Sequence

import ml_collections

from interfusion_jax.pose import anchor as pose_anchor
from interfusion_jax.stage2 import config as config_lib


class SweepError(ValueError):
  """A prompt file, a row or a sweep directory is invalid (one line, names row and column)."""


# Column -> what it sets. Rows may leave the optional ones out (or empty in CSV).
COLUMNS = {
    "name": "the scene's run directory <workdir>/<name> (default: row number + interaction)",
    "human": "config.prompt.human (T_H), required",
    "object": "config.prompt.object (T_O), required",
    "interaction": "config.prompt.interaction (T_I), required",
    "seed": "config.seed (with seeds > 1: the first of the scene's seeds)",
    "seeds": "N seeds of the scene (best-of-N; default: the sweep's --seeds, 1): seeds "
             "seed, seed+1, ..., seed+N-1, each its own run <name>/seed-<seed>/",
    "pose_rank": "config.pose.choose='rank', config.pose.rank (stage-1 retrieval rank)",
    "pose_query": "config.pose.query (the stage-1 retrieval text; default: the interaction)",
    "anchor_file": "config.pose.anchor_file (relative paths: to the prompt file)",
    "aug_rot": "config.body.aug_rot",
    "aug_trans": "config.body.aug_trans",
    "camera_distance": "config.camera.distance_range: [lo, hi] or one number (static)",
    "shape_weights": "the lambda2 levels [w0, w1, w2]: config.loss.shape_weights under the "
                     "official schedule (static)",
}
REQUIRED = ("human", "object", "interaction")
EXAMPLES = {"human": "a man", "object": "a bike", "interaction": "riding a bike"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Files a sweep directory holds beside its scenes' directories (the index, the
# reports, the evaluation); no scene may be named like one (any letter case).
RESERVED_NAMES = ("sweep.json", "sweep.csv", "index.html", "report.html", "eval.json",
                  "eval.csv", "sweep_status.json")
MAX_SEEDS = 64      # seeds of one scene (a sweep's ``--seeds`` or a row's ``seeds``)

@dataclasses.dataclass(frozen=True)
class Row:
  """One parsed row: its 1-based number, the file line, and its non-empty columns."""
  number: int
  line: int
  values: dict


def where(path, row: Row, column: str | None = None) -> str:
  col = f", column {column!r}" if column else ""
  return f"{path}: row {row.number} (line {row.line}){col}"


# ----------------------------------------------------------------------------
# Reading and checking the prompt file.


def read_prompt_file(path: str | pathlib.Path) -> list[Row]:
  """The rows of a JSONL or CSV prompt file (by extension; ``.jsonl``/``.json``/``.csv``).

  Blank lines and JSONL lines starting with ``#`` are skipped. Every value is
  checked (``check_row``) and scene names must be unique.

  Raises:
    SweepError: naming the file, row and column: unreadable file, malformed
      row, unknown or missing column, empty prompt, bad value, duplicate name.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except OSError as e:
    raise SweepError(f"--prompts={path}: cannot be read ({e.strerror or e}); give a .jsonl "
                     "or .csv file with one scene a row.") from e
  except UnicodeDecodeError as e:
    line = text_line_of(path.read_bytes(), e.start)
    raise SweepError(f"--prompts={path}: line {line}, byte {e.start}: not UTF-8 text "
                     f"({e.reason}); save the file as UTF-8.") from None
  suffix = path.suffix.lower()
  if suffix in (".jsonl", ".json"):
    rows = _jsonl_rows(path, text)
  elif suffix == ".csv":
    rows = _csv_rows(path, text)
  else:
    raise SweepError(f"--prompts={path}: unknown format {suffix!r}; use .jsonl (one JSON "
                     "object a line) or .csv (a header row).")
  if not rows:
    raise SweepError(f"--prompts={path}: no rows; give one scene a row with columns "
                     f"{', '.join(REQUIRED)}.")
  rows = [check_row(path, r) for r in rows]
  seen = {}
  for r in rows:
    name = r.values.get("name")
    if name is None:
      continue
    if name in seen:
      raise SweepError(f"{where(path, r, 'name')}: duplicate scene name {name!r} (also row "
                       f"{seen[name]}); every scene needs its own name.")
    seen[name] = r.number
  return rows


def text_line_of(data: bytes, offset: int) -> int:
  """The 1-based line of byte ``offset`` in ``data``."""
  return data.count(b"\n", 0, offset) + 1


def _jsonl_rows(path, text: str) -> list[Row]:
  rows = []
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    row = Row(len(rows) + 1, line_no, {})
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise SweepError(f"{where(path, row)}, character {e.colno}: malformed JSON ({e.msg}); "
                       "each line must be one JSON object.") from None
    if not isinstance(obj, dict):
      raise SweepError(f"{where(path, row)}: a JSON {type(obj).__name__}, not an object; each "
                       "line must be one object such as {\"human\": ..., \"object\": ..., "
                       "\"interaction\": ...}.")
    rows.append(Row(row.number, line_no, obj))
  return rows


def _csv_rows(path, text: str) -> list[Row]:
  reader = csv.reader(io.StringIO(text))
  header, rows = None, []
  for fields in reader:
    line_no = reader.line_num
    if not fields or all(not f.strip() for f in fields):
      continue
    if header is None:
      header = [f.strip() for f in fields]
      for i, h in enumerate(header, 1):
        if not h:
          raise SweepError(f"{path}: header (line {line_no}), column {i}: empty column name; "
                           f"name every column (e.g. {', '.join(REQUIRED)}).")
      continue
    row = Row(len(rows) + 1, line_no, {})
    if len(fields) != len(header):
      extra = len(fields) > len(header)
      col = f"column {len(header) + 1}" if extra else f"column {header[len(fields)]!r}"
      raise SweepError(f"{where(path, row)}, {col}: malformed row with {len(fields)} fields; "
                       f"the header has {len(header)} (quote values that contain commas).")
    rows.append(Row(row.number, line_no,
                    {h: f for h, f in zip(header, fields) if f.strip() != ""}))
  return rows


def _as_bool(v):
  if isinstance(v, bool):
    return v
  if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"):
    return True
  if isinstance(v, str) and v.strip().lower() in ("false", "0", "no"):
    return False
  raise ValueError("must be true or false")


def _as_int(v):
  if isinstance(v, bool):
    raise ValueError("must be a non-negative integer")
  if isinstance(v, str):
    v = v.strip()
    if not re.fullmatch(r"\d+", v):
      raise ValueError("must be a non-negative integer")
    return int(v)
  if isinstance(v, int) and v >= 0:
    return v
  raise ValueError("must be a non-negative integer")


def _as_numbers(v, n: tuple[int, ...]):
  """A list of numbers (JSON list, or a CSV cell holding a JSON list / space-separated numbers)."""
  if isinstance(v, str):
    s = v.strip()
    try:
      v = json.loads(s)
    except json.JSONDecodeError:
      v = s.replace(",", " ").split()
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    v = [v]
  if not isinstance(v, (list, tuple)) or len(v) not in n:
    raise ValueError(f"must be a list of {' or '.join(map(str, n))} numbers")
  out = []
  for x in v:
    try:
      f = float(x) if not isinstance(x, bool) else math.nan
    except (TypeError, ValueError):
      f = math.nan
    if not math.isfinite(f):
      raise ValueError(f"must be a list of {' or '.join(map(str, n))} finite numbers")
    out.append(f)
  return out


def check_row(path, row: Row) -> Row:
  """The row with every value parsed; raises SweepError naming the row and column."""
  values = {}
  for col in row.values:
    if col not in COLUMNS:
      raise SweepError(f"{where(path, row, col)}: unknown column; the columns are "
                       f"{', '.join(COLUMNS)} (docs/sweeps.md).")
  for col in REQUIRED:
    v = row.values.get(col)
    if v is None:
      raise SweepError(f"{where(path, row, col)}: missing; every row needs "
                       f"{', '.join(REQUIRED)}.")
    if not isinstance(v, str) or not v.strip():
      raise SweepError(f"{where(path, row, col)}: empty prompt; give a non-empty string "
                       f"(e.g. {EXAMPLES[col]!r}).")
    values[col] = v.strip()
  for col, v in row.values.items():
    if col in REQUIRED:
      continue
    try:
      if col == "name":
        if not isinstance(v, str) or not NAME_RE.match(v.strip()):
          raise ValueError("must be a directory name of letters, digits, '.', '_' or '-'")
        if v.strip().lower() in RESERVED_NAMES:
          raise ValueError(f"is a file of the sweep directory ({', '.join(RESERVED_NAMES)}); "
                           "give the scene another name")
        values[col] = v.strip()
      elif col == "seed":
        values[col] = _as_int(v)
        if values[col] >= config_lib.SEED_LIMIT:
          raise ValueError(f"must be an integer in [0, 2^32 - 1 = {config_lib.SEED_LIMIT - 1}]")
      elif col == "pose_rank":
        values[col] = _as_int(v)
      elif col == "seeds":
        try:
          values[col] = _as_int(v)
        except ValueError:
          values[col] = 0
        if not 1 <= values[col] <= MAX_SEEDS:
          raise ValueError(f"must be a number of seeds from 1 to {MAX_SEEDS}")
      elif col in ("aug_rot", "aug_trans"):
        values[col] = _as_bool(v)
      elif col == "pose_query":
        if not isinstance(v, str) or not v.strip():
          raise ValueError("must be a non-empty string (leave the column out for the interaction)")
        values[col] = v.strip()
      elif col == "anchor_file":
        if not isinstance(v, str) or not v.strip():
          raise ValueError("must be the path of an anchor .npz")
        p = pathlib.Path(v.strip()).expanduser()
        p = p if p.is_absolute() else pathlib.Path(path).absolute().parent / p
        if not p.is_file():
          raise ValueError(f"{str(p)!r} does not exist")
        try:   # its content too (shapes, finite and plausible angles): no group fails on it
          pose_anchor.load_anchor(p)
        except (OSError, ValueError) as e:
          raise ValueError(f"is not a usable anchor file: {str(e).splitlines()[0]}") from None
        values[col] = str(p)
      elif col == "camera_distance":
        d = _as_numbers(v, (1, 2))
        lo, hi = (d[0], d[0]) if len(d) == 1 else d
        if not 0 < lo <= hi:
          raise ValueError("must be (lo, hi) with 0 < lo <= hi")
        values[col] = (lo, hi)
      elif col == "shape_weights":
        values[col] = tuple(round(x, 6) for x in _as_numbers(v, (3,)))
        if any(x < 0 for x in values[col]):
          raise ValueError("must be three non-negative numbers")
    except ValueError as e:
      raise SweepError(f"{where(path, row, col)}: {v!r} {e}.") from None
  return Row(row.number, row.line, values)


# ----------------------------------------------------------------------------
# A row's config.

_SETS = {"human": ("prompt.human",), "object": ("prompt.object",),
         "interaction": ("prompt.interaction",), "seed": ("seed",), "seeds": (),
         "pose_rank": ("pose.choose", "pose.rank"), "pose_query": ("pose.query",),
         "anchor_file": ("pose.anchor_file",),
         "aug_rot": ("body.aug_rot",), "aug_trans": ("body.aug_trans",),
         "camera_distance": ("camera.distance_range",),
         "shape_weights": ("loss.lambda_object_geo", "loss.shape_weights")}


def default_name(row: Row) -> str:
  """``<row number>_<interaction>`` as a directory name (e.g. ``003_riding_a_bike``)."""
  slug = re.sub(r"[^A-Za-z0-9]+", "_", row.values["interaction"]).strip("_").lower()[:40]
  return f"{row.number:03d}_{slug or 'scene'}"


def seed_list(config: config_lib.RunConfig, row: Row, seeds: int = 1, path="prompts"
              ) -> list[int]:
  """The seeds of a row's scene: ``config.seed`` (the row's ``seed`` or the base's) and
  the next ``n - 1`` integers, ``n`` the row's ``seeds`` or else ``seeds``.

  Consecutive integers below 2^32 are distinct PRNG streams (``PRNGKey(seed)``
  keeps 32 bits, so larger seeds would alias).

  Raises:
    SweepError: naming the row when ``n`` is out of range or a seed reaches 2^32.
  """
  n = int(row.values.get("seeds", seeds))
  col = "seeds" if "seeds" in row.values else None
  if not 1 <= n <= MAX_SEEDS:
    raise SweepError(f"{where(path, row, col)}: {n} seeds; give 1 to {MAX_SEEDS} "
                     "(--seeds or the seeds column).")
  first = int(config.seed)
  if first + n > config_lib.SEED_LIMIT:
    raise SweepError(f"{where(path, row, 'seed' if 'seed' in row.values else col)}: seeds "
                     f"{first}..{first + n - 1} reach 2^32 = {config_lib.SEED_LIMIT}, where seeds alias "
                     "(PRNG keys hold 32 bits); give a smaller seed.")
  return [first + k for k in range(n)]


def scene_config(base: config_lib.RunConfig, row: Row, path="prompts") -> config_lib.RunConfig:
  """The base config with the row's columns applied (``config.override``), checked.

  Raises:
    SweepError: naming the row and column when the schema rejects a value.
  """
  v = row.values
  values = {f"prompt.{col}": v[col] for col in ("human", "object", "interaction")}
  if "seed" in v:
    values["seed"] = int(v["seed"])
  if "pose_rank" in v:
    values.update({"pose.choose": "rank", "pose.rank": int(v["pose_rank"])})
  if "pose_query" in v:
    values["pose.query"] = v["pose_query"]
  if "anchor_file" in v:
    values["pose.anchor_file"] = v["anchor_file"]
  for col in ("aug_rot", "aug_trans"):
    if col in v:
      values[f"body.{col}"] = bool(v[col])
  if "camera_distance" in v:
    values["camera.distance_range"] = tuple(v["camera_distance"])
  if "shape_weights" in v:
    values.update({"loss.lambda_object_geo": "official",
                   "loss.shape_weights": tuple(v["shape_weights"])})
  try:
    return config_lib.override(base, values)
  except config_lib.ConfigError as e:
    col = next((k for k, keys in _SETS.items() if k in v
                and any(f"config.{key}" in str(e) for key in keys)), None)
    raise SweepError(f"{where(path, row, col)}: {e}") from None


def scene_configs(base: config_lib.RunConfig | ml_collections.ConfigDict,
                  prompts: Sequence[dict], path="prompts") -> list[config_lib.RunConfig]:
  """One config per prompt dict (the columns of ``COLUMNS`` as keys), each checked as a
  prompt-file row (``check_row``) and applied by ``scene_config``.

  Raises:
    SweepError: for an empty list, or naming the row and column of a bad value.
  """
  if not prompts:
    raise SweepError("no prompts given; pass at least one "
                     "{'human': ..., 'object': ..., 'interaction': ...} dict.")
  rows = [check_row(path, Row(i, i, dict(p)))
          for i, p in enumerate(prompts, 1)]
  base = config_lib.parse(base)
  return [scene_config(base, r, path) for r in rows]
