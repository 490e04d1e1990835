"""Prompt sweeps: a prompt file in, one run directory per scene and a sweep index out.

``run_sweep(base, prompts_file, workdir)`` is what ``python -m
interfusion_jax.sweep`` calls. In order:

1. ``read_prompt_file``: JSONL (one JSON object a line) or CSV (a header
   row), one scene a row. Every error names the file, the row and the column
   and is raised before anything is loaded or compiled.
2. ``scene_config``: the base config with the row's columns applied
   (``COLUMNS`` lists them and the config keys they set).
3. ``plan``: scenes whose static settings (``static_key``: everything but
   prompts, seed, stage-1 pose choice and anchor augmentation) agree form a
   group, compiled once and trained together by ``loop.train_loop``; scenes
   are assigned to processes deterministically (``assign``).
4. Each process trains only its own scenes, group by group, and writes their
   run directories ``<workdir>/<name>/`` (the layout of a single run) plus a
   ``sweep_status.json`` in each. The guidance weights are loaded once per
   process and shared by all its groups with the same ``config.guidance``.
5. All processes meet at a barrier; process 0 gathers the scenes' statuses
   and writes ``<workdir>/sweep.json`` and ``sweep.csv`` (``write_index``).

Re-running the same command resumes: finished (and failed) scenes are not
trained again, the others continue from their newest checkpoints.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import pathlib
import re
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
# The coordination service's client (barrier, key-value store): jax has no public handle.
from jax._src import distributed as jax_distributed

from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import schedules
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib


class SweepError(ValueError):
  """A prompt file, a row or a sweep directory is invalid (one line, names row and column)."""


# Column -> what it sets. Rows may leave the optional ones out (or empty in CSV).
COLUMNS = {
    "name": "the scene's run directory <workdir>/<name> (default: row number + interaction)",
    "human": "config.prompt.human (T_H), required",
    "object": "config.prompt.object (T_O), required",
    "interaction": "config.prompt.interaction (T_I), required",
    "seed": "config.seed",
    "pose_rank": "config.pose.choose='rank', config.pose.rank (stage-1 retrieval rank)",
    "anchor_file": "config.pose.anchor_file (relative paths: to the prompt file)",
    "aug_rot": "config.body.aug_rot",
    "aug_trans": "config.body.aug_trans",
    "camera_distance": "config.camera.distance_range: [lo, hi] or one number (static)",
    "shape_weights": "the lambda2 levels [w0, w1, w2]: config.loss.shape_weights where the "
                     "schema has it, else the config.loss.lambda_object_geo schedule with "
                     "those levels (static)",
}
REQUIRED = ("human", "object", "interaction")
EXAMPLES = {"human": "a man", "object": "a bike", "interaction": "riding a bike"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
STATUS_FILE = "sweep_status.json"
BARRIER_TIMEOUT_S = 14 * 24 * 3600.0   # how long a finished process waits for the others


@dataclasses.dataclass(frozen=True)
class Row:
  """One parsed row: its 1-based number, the file line, and its non-empty columns."""
  number: int
  line: int
  values: dict


@dataclasses.dataclass
class SceneEntry:
  """One scene of a sweep: its row, run directory name, config, group and process."""
  row: Row
  name: str
  config: ml_collections.ConfigDict
  group: int = 0
  process: int = 0


def _where(path, row: Row, column: str | None = None) -> str:
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
      raise SweepError(f"{_where(path, r, 'name')}: duplicate scene name {name!r} (also row "
                       f"{seen[name]}); every scene needs its own name.")
    seen[name] = r.number
  return rows


def _jsonl_rows(path, text: str) -> list[Row]:
  rows = []
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip() or line.lstrip().startswith("#"):
      continue
    row = Row(len(rows) + 1, line_no, {})
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise SweepError(f"{_where(path, row)}, character {e.colno}: malformed JSON ({e.msg}); "
                       "each line must be one JSON object.") from None
    if not isinstance(obj, dict):
      raise SweepError(f"{_where(path, row)}: a JSON {type(obj).__name__}, not an object; each "
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
      raise SweepError(f"{_where(path, row)}, {col}: malformed row with {len(fields)} fields; "
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


def has_shape_weights_key() -> bool:
  """Whether the schema has ``config.loss.shape_weights`` (free lambda2 levels)."""
  return "loss.shape_weights" in config_lib.valid_keys()


def shape_weight_variants() -> dict[str, tuple[float, float, float]]:
  """{config.loss.lambda_object_geo value: its lambda2 levels (ends, shoulders, middle)}.

  Read from ``schedules.lambda_object_geo`` at period 1 (steps 0, 1 and 5
  fall in the ends, the shoulders and the middle).
  """
  field = {f.name: f for f in dataclasses.fields(config_lib.LossConfig)}["lambda_object_geo"]
  return {v: tuple(round(float(schedules.lambda_object_geo(s, v, 1)), 6) for s in (0, 1, 5))
          for v in field.metadata["choices"]}


def check_row(path, row: Row) -> Row:
  """The row with every value parsed; raises SweepError naming the row and column."""
  values = {}
  for col in row.values:
    if col not in COLUMNS:
      raise SweepError(f"{_where(path, row, col)}: unknown column; the columns are "
                       f"{', '.join(COLUMNS)} (docs/sweeps.md).")
  for col in REQUIRED:
    v = row.values.get(col)
    if v is None:
      raise SweepError(f"{_where(path, row, col)}: missing; every row needs "
                       f"{', '.join(REQUIRED)}.")
    if not isinstance(v, str) or not v.strip():
      raise SweepError(f"{_where(path, row, col)}: empty prompt; give a non-empty string "
                       f"(e.g. {EXAMPLES[col]!r}).")
    values[col] = v.strip()
  for col, v in row.values.items():
    if col in REQUIRED:
      continue
    try:
      if col == "name":
        if not isinstance(v, str) or not NAME_RE.match(v.strip()):
          raise ValueError("must be a directory name of letters, digits, '.', '_' or '-'")
        values[col] = v.strip()
      elif col == "seed" or col == "pose_rank":
        values[col] = _as_int(v)
      elif col in ("aug_rot", "aug_trans"):
        values[col] = _as_bool(v)
      elif col == "anchor_file":
        if not isinstance(v, str) or not v.strip():
          raise ValueError("must be the path of an anchor .npz")
        p = pathlib.Path(v.strip()).expanduser()
        p = p if p.is_absolute() else pathlib.Path(path).absolute().parent / p
        if not p.is_file():
          raise ValueError(f"{str(p)!r} does not exist")
        values[col] = str(p)
      elif col == "camera_distance":
        d = _as_numbers(v, (1, 2))
        lo, hi = (d[0], d[0]) if len(d) == 1 else d
        if not 0 < lo <= hi:
          raise ValueError("must be (lo, hi) with 0 < lo <= hi")
        values[col] = (lo, hi)
      elif col == "shape_weights":
        w = tuple(round(x, 6) for x in _as_numbers(v, (3,)))
        if any(x < 0 for x in w):
          raise ValueError("must be three non-negative numbers")
        named = {lv: k for k, lv in shape_weight_variants().items()}
        if has_shape_weights_key():
          values[col] = w
          continue
        if w not in named:
          raise ValueError(
              f"{list(w)} is not a lambda2 schedule of config.loss.lambda_object_geo ("
              + "; ".join(f"{k}: {list(lv)}" for k, lv in shape_weight_variants().items())
              + "); free levels need a config key that does not exist yet")
        values[col] = named[w]
    except ValueError as e:
      raise SweepError(f"{_where(path, row, col)}: {v!r} {e}.") from None
  return Row(row.number, row.line, values)


# ----------------------------------------------------------------------------
# Configs, groups and processes.

_SETS = {"human": ("prompt.human",), "object": ("prompt.object",),
         "interaction": ("prompt.interaction",), "seed": ("seed",),
         "pose_rank": ("pose.choose", "pose.rank"), "anchor_file": ("pose.anchor_file",),
         "aug_rot": ("body.aug_rot",), "aug_trans": ("body.aug_trans",),
         "camera_distance": ("camera.distance_range",),
         "shape_weights": ("loss.lambda_object_geo", "loss.shape_weights")}


def default_name(row: Row) -> str:
  """``<row number>_<interaction>`` as a directory name (e.g. ``003_riding_a_bike``)."""
  slug = re.sub(r"[^A-Za-z0-9]+", "_", row.values["interaction"]).strip("_").lower()[:40]
  return f"{row.number:03d}_{slug or 'scene'}"


def scene_config(base: ml_collections.ConfigDict, row: Row, path="prompts") -> ml_collections.ConfigDict:
  """The base config with the row's columns applied, validated.

  Raises:
    SweepError: naming the row and column when the schema rejects a value.
  """
  c = base.copy_and_resolve_references()
  v = row.values
  for col in ("human", "object", "interaction"):
    setattr(c.prompt, col, v[col])
  if "seed" in v:
    c.seed = int(v["seed"])
  if "pose_rank" in v:
    c.pose.choose, c.pose.rank = "rank", int(v["pose_rank"])
  if "anchor_file" in v:
    c.pose.anchor_file = v["anchor_file"]
  for col in ("aug_rot", "aug_trans"):
    if col in v:
      setattr(c.body, col, bool(v[col]))
  if "camera_distance" in v:
    c.camera.distance_range = tuple(v["camera_distance"])
  if "shape_weights" in v and has_shape_weights_key():
    c.loss.lambda_object_geo, c.loss.shape_weights = "official", tuple(v["shape_weights"])
  elif "shape_weights" in v:
    c.loss.lambda_object_geo = v["shape_weights"]
  try:
    config_lib.parse(c)
  except config_lib.ConfigError as e:
    col = next((k for k, keys in _SETS.items() if k in v
                and any(f"config.{key}" in str(e) for key in keys)), None)
    raise SweepError(f"{_where(path, row, col)}: {e}") from None
  return c


def static_key(config: ml_collections.ConfigDict) -> config_lib.RunConfig:
  """Everything of a config that must agree within a group (a hashable ``RunConfig``).

  Per-scene (not static): the three prompts, the seed, the whole stage-1
  pose section and the anchor augmentation (body.aug_rot / aug_trans); these
  only change the frozen inputs and the initial state. Everything else, e.g.
  the camera distance range (``CameraSpec``) or the lambda2 schedule
  (``ScheduleSpec``), is compiled into the step or shared by the group
  (guidance, train section), so scenes differing in it are trained apart.
  """
  run = config_lib.parse(config)
  return dataclasses.replace(
      run, seed=0, variant="",
      prompt=dataclasses.replace(run.prompt, human="-", object="-", interaction="-"),
      pose=config_lib.PoseConfig(),
      body=dataclasses.replace(run.body, aug_rot=False, aug_trans=False))


def assign(groups: Sequence[Sequence[int]], num_processes: int) -> dict[int, int]:
  """Scene index -> process: round-robin over the scenes in group order.

  Deterministic (every process computes the same map) and balanced to
  within one scene per process.
  """
  out, k = {}, 0
  for g in groups:
    for i in g:
      out[i] = k % num_processes
      k += 1
  return out


def plan(base: ml_collections.ConfigDict, rows: Sequence[Row], num_processes: int = 1,
         path="prompts") -> tuple[list[SceneEntry], list[list[int]]]:
  """(scenes, groups): one ``SceneEntry`` per row and the scene indices of each group.

  Groups are numbered in the order of their first row.
  """
  config_lib.parse(base)
  scenes, keys, groups = [], {}, []
  for r in rows:
    cfg = scene_config(base, r, path)
    key = static_key(cfg)
    if key not in keys:
      keys[key] = len(groups)
      groups.append([])
    g = keys[key]
    groups[g].append(len(scenes))
    scenes.append(SceneEntry(r, r.values.get("name") or default_name(r), cfg, g))
  names = {}
  for s in scenes:
    if s.name in names:
      raise SweepError(f"{_where(path, s.row, 'name')}: scene name {s.name!r} is also row "
                       f"{names[s.name]}'s; give each row its own name.")
    names[s.name] = s.row.number
  for i, p in assign(groups, num_processes).items():
    scenes[i].process = p
  return scenes, groups


# ----------------------------------------------------------------------------
# Processes.


@dataclasses.dataclass(frozen=True)
class Processes:
  """This process's place in the sweep and the coordination it needs.

  barrier(name): every process waits until all arrive; gather(obj) -> the
  JSON-able ``obj`` of every process, in process order. post(name, obj)
  publishes this process's latest JSON-able ``obj`` under ``name`` without
  waiting; posted(name) -> {process index: its latest obj} of the processes
  that have posted one (no waiting; this process's own included).
  """
  index: int = 0
  count: int = 1
  barrier: Callable[[str], None] = lambda name: None
  gather: Callable[[Any], list] = lambda obj: [obj]
  post: Callable[[str, Any], None] = lambda name, obj: None
  posted: Callable[[str], dict] = lambda name: {}


def jax_processes(timeout_s: float = BARRIER_TIMEOUT_S) -> Processes:
  """``Processes`` of an initialised ``jax.distributed``: its coordination service.

  The barrier and the gather go through the coordination service's barrier
  and key-value store, not through device collectives: a process that
  finishes hours before the others waits there (``timeout_s``), where a
  device collective (gloo on CPU) would give up after its own short
  rendezvous timeout.
  """
  client = jax_distributed.global_state.client
  if client is None:
    raise SweepError("jax.distributed is not initialised; call initialize_distributed first.")
  ms = int(timeout_s * 1000)
  index, count = jax.process_index(), jax.process_count()

  def barrier(name: str) -> None:
    client.wait_at_barrier(name, ms)

  def gather(obj):
    client.key_value_set(f"interfusion_sweep_gather/{index}", json.dumps(obj))
    barrier("interfusion_sweep_gather")
    return [json.loads(client.blocking_key_value_get(f"interfusion_sweep_gather/{i}", ms))
            for i in range(count)]

  def post(name: str, obj) -> None:
    client.key_value_set(f"interfusion_sweep_{name}/{index}", json.dumps(obj),
                         allow_overwrite=True)

  def posted(name: str) -> dict:
    return {int(k.rsplit("/", 1)[-1]): json.loads(v)
            for k, v in client.key_value_dir_get(f"interfusion_sweep_{name}/")}

  return Processes(index, count, barrier, gather, post, posted)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> Processes:
  """``jax.distributed.initialize`` when asked or needed; this process's ``Processes``.

  With no arguments and one process (no cluster environment), nothing is
  initialised. On Cloud TPU, SLURM and the like, ``jax.distributed`` reads
  the environment. On CPU the collectives go through gloo.
  """
  if num_processes == 1 and not coordinator_address:
    return Processes()
  kwargs = {k: v for k, v in dict(coordinator_address=coordinator_address or None,
                                  num_processes=num_processes,
                                  process_id=process_id).items() if v is not None}
  jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU only; else unused
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    if kwargs:
      raise SweepError(f"jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                       f"failed: {str(e).splitlines()[0]}; check --coordinator_address, "
                       "--num_processes and --process_id.") from e
    return Processes()    # no cluster environment: a single process
  return jax_processes() if jax.process_count() > 1 else Processes()


# ----------------------------------------------------------------------------
# Scene status and the index.


def scene_status(paths: run_io.RunPaths, steps: int) -> dict:
  """What a scene's run directory says: {"status", "step", ...} (never raises).

  "done": final/summary.json at ``steps``; "failed": its sweep_status.json
  says so; "partial": checkpoints only ("trained" in the index: every step
  but no final outputs, ``run_sweep(final_outputs=False)``); "pending":
  nothing yet.
  """
  out = {"status": "pending", "step": 0}
  try:
    summary = json.loads(paths.summary.read_text())
    if int(summary.get("step", -1)) >= steps:
      return {"status": "done", "step": int(summary["step"]),
              "final_metrics": summary.get("final_losses", {}),
              "wall_time_s": summary.get("wall_time_s")}
  except (OSError, ValueError):
    pass
  try:
    st = json.loads((paths.root / STATUS_FILE).read_text())
    if st.get("status") == "failed":
      return st
  except (OSError, ValueError):
    pass
  step = ckpt_lib.latest_step(paths.checkpoints)
  if step:
    out = {"status": "partial", "step": int(step)}
  return out


INDEX_COLUMNS = ("name", "status", "step", "steps", "loss", "wall_time_s", "workdir", "group",
                 "process", "seed", "human", "object", "interaction", "error")


def index_entry(s: SceneEntry, status: dict) -> dict:
  """One scene's row of the sweep index."""
  c = s.config
  return {"name": s.name, "row": s.row.number, "workdir": s.name, "group": s.group,
          "process": s.process, "seed": int(c.seed), "steps": int(c.train.steps),
          "human": str(c.prompt.human), "object": str(c.prompt.object),
          "interaction": str(c.prompt.interaction),
          "status": status.get("status", "pending"), "step": int(status.get("step", 0)),
          "final_metrics": status.get("final_metrics", {}),
          "wall_time_s": status.get("wall_time_s"), "error": status.get("error")}


def write_index(workdir: pathlib.Path, entries: Sequence[dict], meta: dict) -> None:
  """``sweep.json`` ({"scenes": entries, **meta}) and ``sweep.csv`` (``INDEX_COLUMNS``), atomically."""
  run_io.write_json(workdir / "sweep.json", {**meta, "scenes": list(entries)})
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(INDEX_COLUMNS)
  for e in entries:
    flat = dict(e, loss=e.get("final_metrics", {}).get("loss"))
    w.writerow(["" if flat.get(k) is None else flat[k] for k in INDEX_COLUMNS])
  run_io.atomic_write_text(workdir / "sweep.csv", buf.getvalue())


# ----------------------------------------------------------------------------
# The sweep.


def preflight(base: ml_collections.ConfigDict, prompts_file, workdir, num_processes: int):
  """Everything checked before anything loads or compiles: (scenes, groups, root).

  A scene whose run directory already holds a different config.json is an
  error (the prompt file or config changed since the sweep started).
  """
  scenes, groups = plan(base, read_prompt_file(prompts_file), num_processes, prompts_file)
  if not str(workdir).strip():
    raise SweepError("--workdir is empty; give a directory, e.g. --workdir=runs/sweep.")
  root = pathlib.Path(workdir).expanduser().absolute()
  for s in scenes:
    saved = root / s.name / "config.json"
    if saved.is_file():
      try:
        same = json.loads(saved.read_text()) == json.loads(s.config.to_json())
      except ValueError:
        same = False
      if not same:
        raise SweepError(f"{_where(prompts_file, s.row)}: {saved} holds a different config "
                         f"(the prompt file or --config changed since this sweep started); "
                         "use a new --workdir or restore the old settings.")
  return scenes, groups, root


def restore_at_most(config, spec, paths: run_io.RunPaths, origin, max_step: int):
  """The scene's newest loadable checkpoint at a step <= ``max_step`` (fresh if none).

  The scenes of a group resume from one step, so the group trains as the
  same compiled program as before the interruption (bitwise resume on CPU);
  ``loop.train_loop`` drops the metrics rows after that step.
  """
  fresh = step_lib.init_state(jax.random.PRNGKey(int(config.seed)), spec, origin)
  if max_step <= 0:
    return fresh
  manager = ckpt_lib.make_manager(paths.checkpoints, config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, fresh, max_step=max_step,
                                     legacy=step_lib.legacy_targets(fresh))
  if restored is None:
    return fresh
  step, host = restored
  return jax.tree_util.tree_map(jax.numpy.asarray, host)


class SweepProgress:
  """The sweep's one progress bar (process 0): every process's scenes x steps, with an ETA.

  Every process counts its own scene-steps (resumed ones included) and posts
  the count through ``Processes.post`` at most every ``every_s`` seconds;
  process 0 adds the others' posted counts to its bar, and ``wait_for_all``
  keeps its bar moving while it waits for the others to finish. Same
  ``update`` / ``close`` interface as ``run_io.Progress`` (``loop.train_loop``
  drives it).

  Args:
    proc: this process and its collectives.
    total: scene-steps of the whole sweep (every process's scenes).
    disable: no bar; the counts are still posted (process 0 reads none), and
      ``wait_for_all`` returns at once.
  """

  def __init__(self, proc: Processes, total: int, disable: bool = False,
               every_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
    self._proc, self._every_s, self._clock = proc, every_s, clock
    self._disabled = disable
    self._bar = run_io.Progress(total, disable=disable or proc.index != 0)
    self._own, self._others, self._last = 0, 0, -math.inf

  @property
  def count(self) -> int:
    """Scene-steps shown: this process's plus (on process 0) the others' last posted."""
    return self._own + self._others

  def update(self, step: int, loss: float | None = None, n: int = 1) -> None:
    self._own += n
    self._bar.update(step, loss, n=n)
    if self._clock() - self._last >= self._every_s:
      self.sync()

  def sync(self, finished: bool = False) -> dict:
    """Posts this process's count; on process 0 adds the others' new steps to the bar.

    Returns:
      {process index: {"steps": int, "finished": bool}} of those that posted.
    """
    self._last = self._clock()
    self._proc.post("progress", {"steps": self._own, "finished": finished})
    if self._proc.index != 0 or self._disabled:
      return {}
    seen = {i: v for i, v in self._proc.posted("progress").items() if i != 0}
    others = sum(int(v["steps"]) for v in seen.values())
    if others > self._others:
      self._bar.update(0, None, n=others - self._others)
      self._others = others
    return seen

  def wait_for_all(self, timeout_s: float, poll_s: float = 1.0) -> None:
    """This process is done: posts that; process 0 refreshes the bar until every
    other process has posted ``finished`` (or ``timeout_s`` passes; the barrier
    after it is what waits for a process that never does)."""
    seen = self.sync(finished=True)
    if self._proc.index != 0 or self._disabled:
      return
    deadline = self._clock() + timeout_s
    while self._clock() < deadline and not (
        len(seen) == self._proc.count - 1 and all(v["finished"] for v in seen.values())):
      time.sleep(poll_s)
      seen = self.sync(finished=True)

  def close(self) -> None:
    self._bar.close()


def _train_group(members: list[SceneEntry], root: pathlib.Path, loaded: dict, bar,
                 num_devices, retry_failed: bool, stop_after, final_outputs: bool
                 ) -> dict[str, dict]:
  """Trains one process's scenes of one group; returns {name: status}."""
  out, todo = {}, []
  for s in members:
    paths = run_io.prepare_workdir(root / s.name)
    st = scene_status(paths, int(s.config.train.steps))
    if st["status"] == "done" or (st["status"] == "failed" and not retry_failed):
      out[s.name] = st
      bar.update(0, None, n=int(s.config.train.steps))
    else:
      todo.append((s, paths))
  if not todo:
    return out
  cfgs = [s.config for s, _ in todo]
  gkey = config_lib.parse(cfgs[0]).guidance
  if loaded.get("key") == gkey:       # the weights of an earlier group: only the prompts
    gspec, gparams = loaded["spec"], loaded["params"]
    table = setup_lib.text_table(cfgs[0], gspec.kind)
  else:
    gspec, gparams, table = setup_lib.load_guidance_and_text(cfgs[0])
    loaded.update(key=gkey, spec=gspec, params=gparams)
  group = loop.build_group(cfgs, [p for _, p in todo], guidance=(gspec, gparams, table))
  for c, p in zip(cfgs, group.paths):
    run_io.save_config(p, c)
  latest = [ckpt_lib.latest_step(p.checkpoints) or 0 for p in group.paths]
  if len(set(latest)) == 1:
    states = [loop.restore_or_init(c, group.spec, p, None, sc.object_origin)
              for c, p, sc in zip(cfgs, group.paths, group.scenes)]
  else:   # killed between two scenes' saves: resume all from their common step
    states = [restore_at_most(c, group.spec, p, sc.object_origin, min(latest))
              for c, p, sc in zip(cfgs, group.paths, group.scenes)]
  by_step: dict[int, list[int]] = {}
  for i, st in enumerate(states):
    by_step.setdefault(int(st.step), []).append(i)
    bar.update(0, None, n=int(st.step))
  for _, idx in sorted(by_step.items()):
    sub = loop.Group(group.spec, loop.stack_frozen([group.scenes[i] for i in idx]),
                     [group.scenes[i] for i in idx], [cfgs[i] for i in idx],
                     [group.paths[i] for i in idx])
    t0 = time.perf_counter()
    finals, info = loop.train_loop([states[i] for i in idx], sub, num_devices=num_devices,
                                   stop_after=stop_after, isolate_failures=True, bar=bar)
    for k, i in enumerate(idx):
      s, p, state = todo[i][0], group.paths[i], finals[k]
      st = {"status": "partial", "step": int(state.step),
            "final_metrics": info["last_metrics"][k],
            "wall_time_s": time.perf_counter() - t0}
      if info["failed"][k]:
        st.update(status="failed", error=info["failure"][k])
      elif int(state.step) >= int(s.config.train.steps) and final_outputs:
        scene_info = dict(info, last_metrics=info["last_metrics"][k])
        outputs_lib.write_final_outputs(state, group.scenes[i], s.config, p, scene_info)
        st["status"] = "done"
      elif int(state.step) >= int(s.config.train.steps):
        st["status"] = "trained"      # final_outputs=False: every step, no final/
      elif info["interrupted"]:
        st["status"] = "interrupted"
      run_io.write_json(p.root / STATUS_FILE, st)
      out[s.name] = st
    if info["interrupted"]:
      raise KeyboardInterrupt
  return out


def run_sweep(base: ml_collections.ConfigDict, prompts_file, workdir, *,
              processes: Processes | None = None, progress: bool = True,
              num_devices: int | None = None, retry_failed: bool = False,
              stop_after: int | None = None, final_outputs: bool = True) -> list[dict]:
  """Trains this process's scenes of the sweep and (process 0) writes the index
  (sweep.json, sweep.csv; the command line then writes index.html and the reports).

  Args:
    base: the config every row starts from (configs/hoi.py + overrides).
    prompts_file: the JSONL/CSV prompt file (``read_prompt_file``).
    workdir: the sweep directory: ``<workdir>/<name>/`` per scene, plus
      ``sweep.json`` / ``sweep.csv``.
    processes: this process and its collectives (default: a single process).
    num_devices: local devices per group (default all that divide S).
    retry_failed: train scenes marked failed again.
    stop_after: each group stops after this many steps without final
      outputs (tests: a sweep "killed" mid-run).

  Returns:
    The index entries of every scene (on every process, after the barrier).

  Raises:
    SweepError, config.ConfigError: before anything loads or compiles, for bad
      input (``preflight``). Later errors mark the scenes of their group failed
      (the message is in the index) instead of ending the sweep.
  """
  proc = processes or Processes()
  scenes, groups, root = preflight(base, prompts_file, workdir, proc.count)
  root.mkdir(parents=True, exist_ok=True)
  meta = {"prompts_file": str(pathlib.Path(prompts_file).absolute()),
          "num_processes": proc.count, "num_groups": len(groups),
          "groups": [[scenes[i].name for i in g] for g in groups]}
  if proc.index == 0:
    write_index(root, [index_entry(s, scene_status(run_io.RunPaths(root / s.name),
                                                   int(s.config.train.steps)))
                       for s in scenes], dict(meta, state="running"))
  bar = SweepProgress(proc, sum(int(s.config.train.steps) for s in scenes),
                      disable=not progress)
  statuses, loaded = {}, {}
  try:
    for g, members in enumerate(groups):
      local = [scenes[i] for i in members if scenes[i].process == proc.index]
      if not local:
        continue
      try:
        statuses.update(_train_group(local, root, loaded, bar, num_devices, retry_failed,
                                     stop_after, final_outputs))
      except Exception as e:  # pylint: disable=broad-except
        # A group that cannot train (setup error, out of memory, ...) fails alone:
        # this process goes on with its other groups and still reaches the barrier.
        logging.exception("group %d failed", g)
        for s in local:
          statuses[s.name] = {"status": "failed", "step": 0,
                              "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
          run_io.write_json(root / s.name / STATUS_FILE, statuses[s.name])
    bar.wait_for_all(timeout_s=BARRIER_TIMEOUT_S)
  finally:
    bar.close()
  proc.barrier("interfusion_sweep_done")
  gathered = {}
  for part in proc.gather(statuses):
    gathered.update(part)
  entries = [index_entry(s, gathered.get(s.name, {"status": "pending"})) for s in scenes]
  if proc.index == 0:
    write_index(root, entries, dict(meta, state="finished"))
  return entries
