"""Prompt sweeps: a prompt file in, one run directory per scene and a sweep index out.

``run_sweep(base, prompts_file, workdir)`` is what ``python -m
interfusion_jax.sweep`` calls. In order:

1. ``prompt_file.read_prompt_file``: JSONL (one JSON object a line) or CSV (a header
   row), one scene a row. Every error names the file, the row and the column
   and is raised before anything is loaded or compiled.
2. ``prompt_file.scene_config``: the base config with the row's columns applied
   (``prompt_file.COLUMNS`` lists them and the config keys they set). A row
   with N > 1 seeds (``--seeds`` or its ``seeds`` column) is N scenes
   ``<name>/seed-<seed>/`` that differ only in the seed, so they train in
   the same vmapped group; ranking them (best-of-N) reads finished runs and
   lives in ``evaluation/ranking.py``.
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

Each process holds a lock on the sweep directory (``.lock``; ``.lock.p<i>``
for process i of several) and on the run directory of every scene assigned to
it, for its whole life (``run_io.lock_run``): a second sweep or a ``train``
on one of them stops at once, naming the holder.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import pathlib
import sys
import time
from typing import Callable, Sequence

import ml_collections

from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import processes as processes_lib
from interfusion_jax.stage2 import prompt_file
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib


STATUS_FILE = "sweep_status.json"


@dataclasses.dataclass
class SceneEntry:
  """One scene of a sweep: its row, run directory name, config, group and process.

  ``scene`` is the row's scene name: ``name`` itself, or for one of a row's N > 1
  seeds the folder above ``name = <scene>/seed-<seed>``.
  """
  row: prompt_file.Row
  name: str
  config: config_lib.RunConfig
  group: int = 0
  process: int = 0
  scene: str = ""

  def __post_init__(self):
    self.scene = self.scene or self.name



# ----------------------------------------------------------------------------
# Groups and processes.


def static_key(run: config_lib.RunConfig) -> config_lib.RunConfig:
  """Everything of a config that must agree within a group (a hashable ``RunConfig``).

  Per-scene (not static): the three prompts, the seed, the whole stage-1
  pose section and the anchor augmentation (body.aug_rot / aug_trans); these
  only change the frozen inputs and the initial state. Everything else, e.g.
  the camera distance range (``CameraSpec``) or the lambda2 schedule
  (``ScheduleSpec``), is compiled into the step or shared by the group
  (guidance, train section), so scenes differing in it are trained apart.
  """
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


def seed_dir(seed: int) -> str:
  """The run directory of one seed of a best-of-N scene, under the scene's folder."""
  return f"seed-{int(seed)}"


def plan(base: config_lib.RunConfig, rows: Sequence[prompt_file.Row], num_processes: int = 1,
         path="prompts", seeds: int = 1) -> tuple[list[SceneEntry], list[list[int]]]:
  """(scenes, groups): one ``SceneEntry`` per row and seed, and the scene indices of each
  group.

  A row with one seed is the scene ``<name>``; with N > 1 seeds
  (``prompt_file.seed_list``: the row's ``seeds`` or else ``seeds``) it is N
  scenes ``<name>/seed-<seed>`` whose configs differ only in ``seed``, so
  they share a group. Groups are numbered in the order of their first row.
  """
  scenes, keys, groups = [], {}, []
  for r in rows:
    cfg = prompt_file.scene_config(base, r, path)
    name = r.values.get("name") or prompt_file.default_name(r)
    seed_values = prompt_file.seed_list(cfg, r, seeds, path)
    for seed in seed_values:
      one = cfg if len(seed_values) == 1 else config_lib.override(cfg, {"seed": seed})
      key = static_key(one)
      if key not in keys:
        keys[key] = len(groups)
        groups.append([])
      g = keys[key]
      groups[g].append(len(scenes))
      run_name = name if len(seed_values) == 1 else f"{name}/{seed_dir(seed)}"
      scenes.append(SceneEntry(r, run_name, one, g, scene=name))
  names = {}
  for s in scenes:
    if s.name in names:
      raise prompt_file.SweepError(f"{prompt_file.where(path, s.row, 'name')}: scene name {s.name!r} is also row "
                       f"{names[s.name]}'s; give each row its own name.")
    names[s.name] = s.row.number
  for i, p in assign(groups, num_processes).items():
    scenes[i].process = p
  return scenes, groups


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
                 "process", "seed", "human", "object", "interaction", "error", "scene", "rank",
                 "rank_score", "best")


def index_entry(s: SceneEntry, status: dict) -> dict:
  """One scene's row of the sweep index."""
  c = s.config
  return {"name": s.name, "scene": s.scene, "row": s.row.number, "workdir": s.name,
          "group": s.group,
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


def preflight(base: config_lib.RunConfig, prompts_file, workdir, num_processes: int,
              seeds: int = 1):
  """Everything checked before anything loads or compiles: (scenes, groups, root).

  A scene whose run directory already holds a different config.json is an
  error (the prompt file or config changed since the sweep started), except
  for the keys a single run may change on resume (``run_io.RESUMABLE_CHANGES``:
  more ``train.steps``, the log / checkpoint cadence, output sizes); and so
  is what ``setup.check_inputs`` refuses for a scene: a render size the device
  cannot hold, an anchor file (the row's or ``--config``'s) that is not an
  anchor. Each error names the prompt file's row.
  """
  scenes, groups = plan(base, prompt_file.read_prompt_file(prompts_file), num_processes,
                        prompts_file, seeds)
  if not str(workdir).strip():
    raise prompt_file.SweepError("--workdir is empty; give a directory, e.g. --workdir=runs/sweep.")
  root = pathlib.Path(workdir).expanduser().absolute()
  for s in scenes:   # render sizes against memory, the anchor file (also one from --config)
    try:
      setup_lib.check_inputs(s.config)
    except setup_lib.TrainSetupError as e:
      raise prompt_file.SweepError(f"{prompt_file.where(prompts_file, s.row)}: {e}") from None
  for s in scenes:
    saved = root / s.name / "config.json"
    if saved.is_file():
      try:
        changed = run_io.describe_config_changes(
            config_lib.parse(json.loads(saved.read_text(encoding="utf-8"))), s.config)
      except (ValueError, UnicodeDecodeError):   # unreadable, or a config the schema rejects
        changed = "its settings (it cannot be read)"
      if changed:
        raise prompt_file.SweepError(
            f"{prompt_file.where(prompts_file, s.row)}: {saved} holds a different config: "
            f"{changed} (the prompt file or --config changed since this sweep started); "
            "use a new --workdir or restore the old settings.")
  return scenes, groups, root


class SweepProgress:
  """The sweep's one progress bar (process 0): every process's scenes x steps, with an ETA.

  Every process counts its own scene-steps (resumed ones included) and posts
  the count through ``processes_lib.Processes.post`` at most every ``every_s`` seconds;
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

  def __init__(self, proc: processes_lib.Processes, total: int, disable: bool = False,
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


def failure_message(e: BaseException) -> str:
  """A failed scene's error for its status and the index: type and first line."""
  first = (str(e).splitlines() or [""])[0][:300]
  return f"{type(e).__name__}: {first}"


def mark_failed(root: pathlib.Path, name: str, e: BaseException) -> dict:
  """Writes ``<root>/<name>/sweep_status.json`` saying the scene failed with ``e``; returns it."""
  st = {"status": "failed", "step": 0, "error": failure_message(e)}
  run_io.write_json(root / name / STATUS_FILE, st)
  return st


def _set_up(todo: list, loaded: dict) -> tuple[list, loop.Group, list]:
  """(configs, group, states) of the scenes ``todo`` ([(SceneEntry, RunPaths)]): the
  guidance (loaded once per process and ``config.guidance``, cached in ``loaded``), each
  scene's prompts and anchor, its config.json, and its state (fresh or restored)."""
  cfgs = [s.config for s, _ in todo]
  gkey = cfgs[0].guidance
  if loaded.get("key") == gkey:       # the weights of an earlier group: only the prompts
    gspec, gparams = loaded["spec"], loaded["params"]
    table = setup_lib.text_table(cfgs[0], gspec.kind)
  else:
    gspec, gparams, table = setup_lib.load_guidance_and_text(cfgs[0])
    loaded.update(key=gkey, spec=gspec, params=gparams)
  group = loop.build_group(cfgs, [p for _, p in todo], guidance=(gspec, gparams, table))
  for c, p in zip(cfgs, group.paths):
    run_io.save_config(p, c)
  # Killed between two scenes' saves: all resume from their common step.
  latest = [ckpt_lib.latest_step(p.checkpoints) or 0 for p in group.paths]
  common = None if len(set(latest)) == 1 else min(latest)
  states = [loop.restore_or_init(c, group.spec, p, None, sc.object_origin, max_step=common)
            for c, p, sc in zip(cfgs, group.paths, group.scenes)]
  return cfgs, group, states


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
  try:
    cfgs, group, states = _set_up(todo, loaded)
  except Exception as e:  # pylint: disable=broad-except
    if len(todo) == 1:
      raise
    # One scene may break the setup of all: set them up one by one, so only the
    # culprits fail (each with its own error) and the others train together.
    logging.warning("setup of a group of %d scenes failed (%s); setting them up one by one",
                    len(todo), failure_message(e))
    healthy = []
    for item in todo:
      try:
        _set_up([item], loaded)
        healthy.append(item)
      except Exception as e1:  # pylint: disable=broad-except
        logging.warning("scene %s failed at setup: %s", item[0].name, failure_message(e1))
        out[item[0].name] = mark_failed(root, item[0].name, e1)
    if not healthy:
      return out
    todo = healthy
    cfgs, group, states = _set_up(todo, loaded)
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
        scene_info = dict(info, last_metrics=info["last_metrics"][k],
                          train_time_s=info["train_time_s"][k],
                          sample_budget=info["sample_budget"][k])
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


def run_sweep(base: config_lib.RunConfig | ml_collections.ConfigDict, prompts_file, workdir, *,
              processes: processes_lib.Processes | None = None, progress: bool = True,
              num_devices: int | None = None, retry_failed: bool = False,
              stop_after: int | None = None, final_outputs: bool = True,
              seeds: int = 1) -> list[dict]:
  """Trains this process's scenes of the sweep and (process 0) writes the index
  (sweep.json, sweep.csv; the command line then writes index.html and the reports).

  Args:
    base: the config every row starts from (configs/hoi.py + overrides), as the
      command line parsed it (a ``ConfigDict`` is parsed here).
    prompts_file: the JSONL/CSV prompt file (``prompt_file.read_prompt_file``).
    workdir: the sweep directory: ``<workdir>/<name>/`` per scene, plus
      ``sweep.json`` / ``sweep.csv``.
    processes: this process and its collectives (default: a single process).
    num_devices: local devices per group (default all that divide S).
    retry_failed: train scenes marked failed again.
    stop_after: each group stops after this many steps without final
      outputs (tests: a sweep "killed" mid-run).
    seeds: seeds of every row without its own ``seeds`` column (best-of-N:
      ``<name>/seed-<seed>/`` each; ``plan``).

  Returns:
    The index entries of every scene (on every process, after the barrier).

  Raises:
    prompt_file.SweepError, config.ConfigError: before anything loads or compiles, for bad
      input (``preflight``: every row's values, seeds, anchor files and names).
      Later errors mark scenes failed (the message is in the index) instead of
      ending the sweep: a group whose setup fails is set up again one scene at a
      time, so only the scenes that fail alone are marked failed; an error while
      a group trains marks that group's unfinished scenes failed.
    setup.TrainSetupError: the sweep directory or one of this process's scene
      directories is locked by another process (or cannot be written).
    KeyboardInterrupt: after SIGINT / SIGTERM, once the group in training has
      checkpointed every scene (``loop.train_loop``).
  """
  proc = processes or processes_lib.Processes()
  scenes, groups, root = preflight(config_lib.parse(base), prompts_file, workdir, proc.count,
                                   seeds)
  what = " ".join(sys.argv)[:300] or "sweep"
  with contextlib.ExitStack() as locks:
    try:
      locks.enter_context(run_io.lock_run(
          root, what, name=".lock" if proc.count == 1 else f".lock.p{proc.index}"))
      for s in scenes:
        if s.process == proc.index:
          locks.enter_context(run_io.lock_run(root / s.name, what))
    except run_io.WorkdirError as e:
      raise setup_lib.TrainSetupError(str(e)) from e
    return _run_sweep_locked(scenes, groups, root, prompts_file, proc, progress, num_devices,
                             retry_failed, stop_after, final_outputs)


def _run_sweep_locked(scenes, groups, root, prompts_file, proc, progress, num_devices,
                      retry_failed, stop_after, final_outputs) -> list[dict]:
  """``run_sweep`` once this process's directories are locked."""
  meta = {"prompts_file": str(pathlib.Path(prompts_file).absolute()),
          "num_processes": proc.count, "num_groups": len(groups),
          "groups": [[scenes[i].name for i in g] for g in groups],
          "seeds": {s.scene: [e.name for e in scenes if e.scene == s.scene]
                    for s in scenes if s.scene != s.name}}
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
          st = scene_status(run_io.RunPaths(root / s.name), int(s.config.train.steps))
          statuses[s.name] = st if st["status"] == "done" else mark_failed(root, s.name, e)
    bar.wait_for_all(timeout_s=processes_lib.BARRIER_TIMEOUT_S)
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
