"""The one training loop, for a single run and for a sweep of scenes.

A *group* is S >= 1 scenes that share one ``TrainSpec`` (everything static):
their states, prompt tables and anchors are stacked along a leading scene
axis and trained by one compiled ``jax.vmap`` of ``step.train_step``; the
guidance weights are shared (``in_axes=None``), never copied per scene. A
single run is a group of one.

Devices are handled by ``jax.jit`` with ``NamedSharding`` over a 1-D mesh
of the local devices (axis ``"devices"``):

* a sweep's scene axis is sharded over the devices when S divides evenly;
* a single run with a camera batch B > 1 shards the cameras (``TrainSpec.
  camera_sharding``); parameters, optimizer state and frozen inputs are
  replicated, and XLA inserts the gradient all-reduce.

Scene i draws the step keys ``fold_in(PRNGKey(seed_i), step)``, the same as
a single run with its seed, so scene i of a sweep follows the trajectory of
its single run (up to float reassociation).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
import signal
import sys
import threading
import time
import warnings
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from interfusion_jax.guidance import core as guidance_core
from interfusion_jax.stage2 import budget as budget_lib
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import schedules
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib

FROZEN_AXES = {"guidance": None, "text": 0, "anchor": 0}
AXIS = "devices"


# A run that reaches its last step with more than this fraction of its steps
# skipped (non-finite loss or gradient; ``TrainState.total_skips``) has failed,
# whatever ``train.max_consecutive_skips`` says (docs/training.md).
MAX_SKIP_FRACTION = 0.25


class TooManySkipsError(RuntimeError):
  """Too many steps had a non-finite loss or gradient (in a row, or in all)."""


# ----------------------------------------------------------------------------
# Signals.


def sigterm_as_interrupt() -> None:
  """Makes SIGTERM (preemption: TPU VMs, SLURM, Kubernetes) raise KeyboardInterrupt,
  as SIGINT does, for the rest of the process (main thread only; command lines).

  Inside ``train_loop`` both signals are handled more gently (``stop_requests``).
  """
  def handler(signum, frame):
    del signum, frame
    raise KeyboardInterrupt
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def stop_requests() -> Iterator[dict]:
  """Within: a first SIGINT or SIGTERM only sets ``requests["signal"]`` (its name).

  The loop finishes its step, writes checkpoints and returns interrupted; a
  second signal raises KeyboardInterrupt at once. Handlers are installed only
  in the main thread (elsewhere the dict stays empty) and restored on exit.
  """
  requests: dict = {"signal": None}
  if threading.current_thread() is not threading.main_thread():
    yield requests
    return

  def handler(signum, frame):
    del frame
    if requests["signal"] is not None:
      raise KeyboardInterrupt
    requests["signal"] = signal.Signals(signum).name
    logging.warning("%s received: finishing this step and writing a checkpoint (send it "
                    "again to stop at once).", requests["signal"])

  previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield requests
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


# ----------------------------------------------------------------------------
# Stacking and devices.


def stack(trees: Sequence[Any]) -> Any:
  """Stacks identically structured pytrees along a new leading scene axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, n: int) -> list:
  """Inverse of ``stack``: n host pytrees."""
  host = jax.device_get(tree)
  return [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), host) for i in range(n)]


def device_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh (axis "devices") over the first ``num_devices`` local devices (default all)."""
  devices = jax.local_devices()
  return Mesh(np.array(devices[:num_devices or len(devices)]), (AXIS,))


def usable_devices(n: int, available: int) -> int:
  """The most devices d <= available that divide n (camera batch or scene count)."""
  return max(d for d in range(1, min(available, n) + 1) if n % d == 0)


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One group's compiled step and camera tracer, and how its arrays are placed.

  step(states [S...], frozen, keys [S, 2]) -> (states, metrics [S]);
  trace(params_object [S...], centers [S, 3]) -> centers [S, 3].
  """
  step: Any
  trace: Any
  scene_sharding: NamedSharding     # the stacked states and per-scene frozen inputs
  replicated: NamedSharding         # the shared guidance weights
  num_devices: int


def compile_group(spec: step_lib.TrainSpec, num_scenes: int,
                  num_devices: int | None = None) -> Compiled:
  """Jitted, vmapped step and tracer for ``num_scenes`` scenes of one spec.

  The scene axis is sharded over the largest device count dividing
  ``num_scenes``; with one scene and a camera batch, the cameras are sharded
  over the largest device count dividing ``render.batch_size`` instead.
  """
  available = num_devices or jax.local_device_count()
  batch = spec.settings.batch_size
  if num_scenes > 1:
    d = usable_devices(num_scenes, available)
    mesh = device_mesh(d)
    scene_sh = NamedSharding(mesh, P(AXIS))
  else:
    d = usable_devices(batch, available)
    mesh = device_mesh(d)
    scene_sh = NamedSharding(mesh, P())
    if d > 1:
      spec = dataclasses.replace(spec, camera_sharding=NamedSharding(mesh, P(AXIS)))
  repl = NamedSharding(mesh, P())
  step = jax.vmap(step_lib.make_train_step(spec), in_axes=(0, FROZEN_AXES, 0))
  trace = jax.vmap(functools.partial(step_lib.object_center, spec=spec))
  frozen_sh = {"guidance": repl, "text": scene_sh, "anchor": scene_sh}
  return Compiled(
      step=jax.jit(step, in_shardings=(scene_sh, frozen_sh, scene_sh),
                   out_shardings=(scene_sh, scene_sh), donate_argnums=(0,)),
      trace=jax.jit(trace, in_shardings=(scene_sh, scene_sh), out_shardings=scene_sh),
      scene_sharding=scene_sh, replicated=repl, num_devices=d)


_COMPILED: dict = {}


def cached_compile(spec: step_lib.TrainSpec, num_scenes: int,
                   num_devices: int | None = None) -> Compiled:
  """``compile_group`` memoised per (spec, scenes, devices): one compile per process."""
  key = (setup_lib.spec_key(spec), num_scenes, num_devices)
  if key not in _COMPILED:
    _COMPILED[key] = (spec, compile_group(spec, num_scenes, num_devices))
  return _COMPILED[key][1]


def place_frozen(frozen: dict, compiled: Compiled) -> dict:
  """The stacked frozen inputs on the devices: guidance replicated, the rest per scene."""
  return {"guidance": jax.device_put(frozen["guidance"], compiled.replicated),
          "text": jax.device_put(frozen["text"], compiled.scene_sharding),
          "anchor": jax.device_put(frozen["anchor"], compiled.scene_sharding)}


# ----------------------------------------------------------------------------
# Groups of scenes.


@dataclasses.dataclass
class Group:
  """S scenes that share one spec: the stacked frozen inputs plus per-scene parts.

  frozen: {"guidance": shared params, "text": stacked [S, ...], "anchor": stacked};
  scenes: the per-scene ``setup.Scene``; configs: the per-scene configs;
  paths: the per-scene run directories (None: nothing is written).
  """
  spec: step_lib.TrainSpec
  frozen: dict
  scenes: list
  configs: list
  paths: list


def stack_frozen(scenes: Sequence[setup_lib.Scene]) -> dict:
  """The frozen inputs of scenes that share one guidance model: {"guidance": the
  first scene's params (shared, not copied), "text", "anchor": stacked [S, ...]}."""
  return {"guidance": scenes[0].frozen["guidance"],
          "text": stack([s.frozen["text"] for s in scenes]),
          "anchor": stack([s.frozen["anchor"] for s in scenes])}


def build_group(configs: Sequence[config_lib.RunConfig], paths: Sequence | None = None,
                guidance=None) -> Group:
  """Loads the guidance once and each scene's prompt table and anchor.

  Args:
    configs: one parsed config per scene (a ``ConfigDict`` is parsed here); they
      may differ only in non-static settings (prompts, pose choice, seed).
    paths: per-scene ``run_io.RunPaths`` (or None entries / None).
    guidance: optional (GuidanceSpec, params, table) for the first scene (tests).

  Raises:
    setup.TrainSetupError: when the scenes' static settings differ.
  """
  configs = [config_lib.parse(c) for c in configs]
  paths = list(paths) if paths is not None else [None] * len(configs)
  first = setup_lib.build_scene(configs[0], paths[0], guidance=guidance)
  scenes = [first] + [setup_lib.build_scene(c, p, shared=first)
                      for c, p in zip(configs[1:], paths[1:])]
  for i, s in enumerate(scenes[1:], 1):
    if s.spec != first.spec:
      raise setup_lib.TrainSetupError(
          f"scene {i} has static settings different from scene 0; scenes trained together "
          "may differ only in prompts, pose choice and seed (group them by static settings).")
    s.spec = first.spec   # one spec object: one compiled program
  return Group(first.spec, stack_frozen(scenes), scenes, list(configs), paths)


def single_group(scene: setup_lib.Scene, config: config_lib.RunConfig,
                 paths: run_io.RunPaths | None) -> Group:
  """The group of one already built scene (a single run)."""
  return Group(scene.spec, stack_frozen([scene]), [scene], [config], [paths])


def restore_or_init(config: config_lib.RunConfig, spec: step_lib.TrainSpec,
                    paths: run_io.RunPaths | None, resume: bool | None,
                    origin=None, max_step: int | None = None) -> step_lib.TrainState:
  """Fresh state, or the newest loadable checkpoint (at a step <= ``max_step`` if given).

  resume None: resume automatically when checkpoints exist; True: a
  checkpoint must exist; False: start fresh (existing checkpoints are an error).
  origin: the fresh state's object origin (``setup.object_origin``).
  max_step: a sweep's scenes of one group resume from their common step, so
  the group trains as the same compiled program as before an interruption
  (bitwise resume on CPU); ``train_loop`` drops the metrics rows after it.
  """
  fresh = step_lib.init_state(jax.random.PRNGKey(int(config.seed)), spec, origin)
  if paths is None or (max_step is not None and max_step <= 0):
    return fresh
  has = ckpt_lib.latest_step(paths.checkpoints) is not None
  if resume is False:
    if has:
      raise setup_lib.TrainSetupError(
          f"{paths.checkpoints} already holds checkpoints but --noresume was given; use "
          "--resume (or drop the flag) to continue, or choose a new --workdir.")
    return fresh
  if not has:
    if resume:
      raise setup_lib.TrainSetupError(
          f"--resume given but {paths.checkpoints} holds no checkpoint.")
    return fresh
  manager = ckpt_lib.make_manager(paths.checkpoints, config.train.keep_checkpoints)
  try:   # a step that fails to restore is moved aside: it is trained and written again
    restored = ckpt_lib.restore_latest(manager, fresh, max_step=max_step,
                                       legacy=step_lib.legacy_targets(fresh), quarantine=True)
  finally:
    manager.close()
  if restored is None:
    if resume:
      raise setup_lib.TrainSetupError(f"No loadable checkpoint in {paths.checkpoints}.")
    warnings.warn("No loadable checkpoint; starting from scratch.")
    return fresh
  step, host = restored
  print(f"Resuming from step {step} ({paths.checkpoints}).", file=sys.stderr)
  return jax.tree_util.tree_map(jnp.asarray, host)


def start_budget(group: Group, start: int) -> budget_lib.SampleBudget:
  """The group's sample budget record at step ``start``: the configured budget, or the
  one its run directories' records had reached by then (a resumed run); the group's
  and its scenes' specs are set to it."""
  spec = group.spec
  budget = budget_lib.SampleBudget(config_lib.budget_policy(group.configs[0]),
                                   spec.render.sample_budget, spec.height * spec.width,
                                   len(group.scenes))
  budget.resume([p.root if p else None for p in group.paths], start)
  set_budget(group, budget.current)
  return budget


def set_budget(group: Group, sample_budget: int) -> step_lib.TrainSpec:
  """Sets the per-ray sample budget of the group's spec (and its scenes', which their
  final outputs render with); returns the spec."""
  if group.spec.render.sample_budget != sample_budget:
    spec = dataclasses.replace(group.spec, render=dataclasses.replace(
        group.spec.render, sample_budget=sample_budget))
    group.spec = spec
    for s in group.scenes:
      s.spec = spec
  return group.spec


def train_loop(states: list, group: Group, *, total_steps: int | None = None,
               num_devices: int | None = None, stop_after: int | None = None,
               progress: bool = True, isolate_failures: bool | None = None,
               bar: run_io.Progress | None = None) -> tuple[list, dict]:
  """Runs the group's scenes from their (common) step to ``total_steps`` together.

  Per scene: metrics every ``train.log_every`` steps, validation grids every
  ``val_every`` and checkpoints every ``ckpt_every`` steps (and at the end or
  on SIGINT / SIGTERM, after the step in flight: ``stop_requests``) into its
  run directory, when it has one, with the cumulative training time
  (``run_io.record_train_time``). Metrics rows already
  there for steps after the start step (a run killed after its last save, or
  before its first) are dropped first, so every step is logged once. ``stop_after`` (tests)
  returns after that many steps, like a killed run. A step that drops occupied
  samples grows the group's sample budget (``render.budget_growth``, ``start_budget``,
  ``budget.SampleBudget``): the next step runs at the new size, compiled once per size.

  Args:
    states: one host ``TrainState`` per scene, all at the same step.
    total_steps: default ``configs[0].train.steps``.
    isolate_failures: True: a scene that passes ``train.max_consecutive_skips``
      non-finite steps in a row is marked failed (info "failed"), writes
      nothing more (its last checkpoint holds only finite values) and the
      others go on; the loop ends early when every scene has failed. False:
      raise ``TooManySkipsError``. Default: True for S > 1 scenes, False for
      a single run. The same holds for a scene that reaches ``total_steps``
      with more than ``MAX_SKIP_FRACTION`` of its steps skipped.
    bar: a progress bar shared with other groups (a sweep's scenes x steps);
      it is advanced by S per step and not closed. None: the loop's own bar.

  Returns:
    (host TrainStates, info dict: "last_metrics" [per scene], "interrupted",
     "signal" (the stop signal's name or None), "steps_per_second",
     "wall_time_s" (this call), "steps_run", "num_devices",
     "train_time_s" [per scene: training seconds over every session, from
     train_time.json], "failed" [bool per scene], "failure" [message or None],
     "sample_budget" [per scene: budget.SampleBudget.summary]).

  Raises:
    TooManySkipsError: after ``train.max_consecutive_skips`` non-finite steps in
      a row, or at the last step with more than ``MAX_SKIP_FRACTION`` skipped,
      unless ``isolate_failures``.
  """
  spec, n = group.spec, len(group.scenes)
  tc = group.configs[0].train
  starts = {int(s.step) for s in states}
  if len(starts) != 1:
    raise setup_lib.TrainSetupError(
        f"scenes trained together must start at the same step; got steps {sorted(starts)}.")
  start = starts.pop()
  total = int(tc.steps if total_steps is None else total_steps)
  budget = start_budget(group, start)
  spec = group.spec
  compiled = cached_compile(spec, n, num_devices)
  frozen = place_frozen(group.frozen, compiled)
  dstate = jax.device_put(stack(states), compiled.scene_sharding)
  seeds = jnp.asarray([jax.random.PRNGKey(int(c.seed)) for c in group.configs])
  managers = [ckpt_lib.make_manager(p.checkpoints, tc.keep_checkpoints) if p else None
              for p in group.paths]
  for p in group.paths:   # rows logged after the start step (killed before or after a save)
    if p is not None:
      run_io.truncate_metrics(p.metrics, start)
  writers = [run_io.MetricsWriter(p) if p else None for p in group.paths]
  prior = [run_io.read_train_time(p, start) if p else 0.0 for p in group.paths]
  isolate = n > 1 if isolate_failures is None else bool(isolate_failures)
  own_bar = bar is None
  if own_bar:
    bar = run_io.Progress(total * n, initial=start * n, disable=not progress)
  last = [{} for _ in range(n)]
  failed, failure = [False] * n, [None] * n

  def fail(i: int, msg: str) -> None:
    """Scene i failed: the error of a single run, or (isolate) marked and skipped."""
    if not isolate:
      raise TooManySkipsError(msg)
    failed[i], failure[i] = True, msg
    logging.warning("scene %d failed: %s", i, msg)
  interrupted, done, step = False, 0, start

  def host_states():
    return unstack(dstate, n)

  def checkpoint(hosts, at):
    elapsed = time.perf_counter() - t0
    for i, (m, h) in enumerate(zip(managers, hosts)):
      if m is not None and at > 0 and not failed[i]:
        ckpt_lib.save(m, at, h)
        run_io.record_train_time(group.paths[i], at, prior[i] + elapsed)
        budget.save(group.paths[i].root, i)

  t0 = time.perf_counter()
  stop = contextlib.ExitStack()
  requests = {"signal": None}
  try:
    requests = stop.enter_context(stop_requests())
    while step < total and (stop_after is None or done < stop_after):
      if schedules.trace_due(step, spec.schedule.trace_every):
        dstate = dstate._replace(object_center=compiled.trace(dstate.params["object"],
                                                              dstate.object_center))
      keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(seeds)
      dstate, metrics = compiled.step(dstate, frozen, keys)
      step += 1
      done += 1
      skipped = np.asarray(metrics["skipped"]) > 0
      if skipped.any():
        runs = np.asarray(dstate.consecutive_skips)
        for i in np.flatnonzero(skipped & ~np.asarray(failed)):
          warnings.warn(f"step {step - 1}{f' (scene {i})' if n > 1 else ''}: non-finite loss "
                        f"or gradient; update skipped ({int(runs[i])} in a row).")
        over = [i for i in range(n) if runs[i] >= tc.max_consecutive_skips and not failed[i]]
        for i in over:
          msg = (f"{int(runs[i])} consecutive steps had a non-finite loss or gradient (step "
                 f"{step - 1}); aborting. Lower the learning rates or the guidance scale, or "
                 "check the guidance weights. The last checkpoint holds only finite values.")
          fail(i, msg)
      grown = budget.observe(step - 1, np.asarray(metrics["samples_dropped"]),
                             np.asarray(metrics["samples_dropped_max"]))
      if grown is not None:   # the whole group: one compiled step
        spec = set_budget(group, grown)
        compiled = cached_compile(spec, n, num_devices)
      if step % tc.log_every == 0 or step == total:
        host = jax.device_get(metrics)
        fresh = [{k: float(v[i]) for k, v in host.items()} for i in range(n)]
        last = [l if failed[i] else f for i, (l, f) in enumerate(zip(last, fresh))]
        for i, (w, m) in enumerate(zip(writers, last)):
          if w is not None and not failed[i]:
            w.write(step, m)
        live = [m["loss"] for i, m in enumerate(last) if not failed[i] and m]
        bar.update(step, float(np.mean(live)) if live else None, n=0)
      bar.update(step, None, n=n)
      if all(failed):
        break
      if step % tc.val_every == 0 or step == total:
        for i, (h, p) in enumerate(zip(host_states(), group.paths)):
          if p is not None and not failed[i]:
            run_io.write_png(p.val / f"step_{step:06d}.png",
                             outputs_lib.validation_grid(h.params, h.occupancy,
                                                         h.object_center, spec))
      if step % tc.ckpt_every == 0 or step == total or requests["signal"]:
        checkpoint(host_states(), step)
      if requests["signal"]:
        interrupted = True
        logging.warning("%s: stopped at step %d; checkpoint written. Run the same command "
                        "to resume.", requests["signal"], step)
        break
  except KeyboardInterrupt:
    interrupted = True
    checkpoint(host_states(), step)
    logging.warning("Interrupted at step %d; checkpoint written. Resume with --resume.", step)
  finally:
    stop.close()
    if own_bar:
      bar.close()
    for w in writers:
      if w is not None:
        w.close()
    for m in managers:
      if m is not None:
        m.close()
  dt = time.perf_counter() - t0
  hosts = host_states()
  if step >= total and not interrupted:
    for i, h in enumerate(hosts):
      skips = int(h.total_skips)
      if failed[i] or step <= 0 or skips <= MAX_SKIP_FRACTION * step:
        continue
      msg = (f"{skips} of {step} steps had a non-finite loss or gradient and were skipped "
             f"(the limit is {MAX_SKIP_FRACTION:.0%}); the run failed. Lower the learning "
             "rates, loss weights or the guidance scale, or check the guidance weights.")
      fail(i, msg)
  info = {"last_metrics": last, "interrupted": interrupted,
          "signal": requests.get("signal") if interrupted else None,
          "steps_per_second": done / dt if dt > 0 else 0.0, "wall_time_s": dt,
          "train_time_s": [p + dt for p in prior],
          "steps_run": done, "num_devices": compiled.num_devices,
          "failed": failed, "failure": failure,
          "sample_budget": [budget.summary(i) for i in range(n)]}
  return hosts, info


# ----------------------------------------------------------------------------
# Whole runs.


def describe_checkpoint(workdir: str, state: step_lib.TrainState) -> str:
  """One line for render / export / evaluate: which checkpoint step they use, and of how many."""
  paths = run_io.RunPaths(pathlib.Path(workdir).absolute())
  latest = ckpt_lib.latest_step(paths.checkpoints)
  note = ("" if latest is None or latest == int(state.step) else
          f" (step {latest} could not be restored; see the warning above)")
  return f"Using checkpoint step {int(state.step)} of {paths.checkpoints}{note}."


def preflight(config: config_lib.RunConfig | ml_collections.ConfigDict, workdir: str | None
              ) -> tuple[config_lib.RunConfig, run_io.RunPaths | None]:
  """The parsed config and the work directory, before anything loads or compiles.

  The command line passes the ``RunConfig`` it parsed; a ``ConfigDict`` (tests,
  notebooks) is parsed here, the one place a run's config is parsed.
  """
  run = config_lib.parse(config)
  if workdir is None:
    return run, None
  try:
    return run, run_io.prepare_workdir(workdir)
  except run_io.WorkdirError as e:
    raise setup_lib.TrainSetupError(str(e)) from e


def run(config: config_lib.RunConfig | ml_collections.ConfigDict, workdir: str, *,
        resume: bool | None = None,
        guidance=None, num_devices: int | None = None, stop_after: int | None = None,
        progress: bool = True, final_outputs: bool = True) -> dict:
  """The whole stage-2 run of one scene; returns summary.json's content (or loop info).

  The process holds the work directory's lock (``run_io.lock_run``) from
  before anything loads until it returns. A directory with checkpoints is
  resumed only under the config it was started with, up to
  ``run_io.RESUMABLE_CHANGES`` (``run_io.check_resume_config``): checked, like
  the lock, before anything loads or compiles and before config.json is
  written.

  Args:
    config: the parsed config (a ``ConfigDict`` from configs/hoi.py is parsed by
      ``preflight``).
    workdir: run directory.
    resume: None auto / True required / False fresh (see ``restore_or_init``).
    guidance: optional (GuidanceSpec, params, text table) override (tests).
    num_devices: local devices to use (default: all that divide the camera batch).
    stop_after: stop after this many steps without final outputs (tests).

  Raises:
    setup.TrainSetupError: the directory is locked by another process, holds
      checkpoints of another config (or --noresume was given), or setup failed.
    TooManySkipsError: see ``train_loop``.
  """
  config, paths = preflight(config, workdir)
  try:
    with run_io.lock_run(paths.root, " ".join(sys.argv)[:300] or "train"):
      if ckpt_lib.latest_step(paths.checkpoints) is not None:
        if resume is False:
          raise setup_lib.TrainSetupError(
              f"{paths.checkpoints} already holds checkpoints but --noresume was given; use "
              "--resume (or drop the flag) to continue, or choose a new --workdir.")
        run_io.check_resume_config(paths, config)
      return _run_locked(config, paths, resume, guidance, num_devices, stop_after,
                         progress, final_outputs)
  except run_io.WorkdirError as e:
    raise setup_lib.TrainSetupError(str(e)) from e


def _run_locked(config, paths, resume, guidance, num_devices, stop_after, progress,
                final_outputs) -> dict:
  """``run`` once the directory is locked and checked."""
  scene = setup_lib.build_scene(config, paths, guidance=guidance)
  group = single_group(scene, config, paths)
  run_io.save_config(paths, config)
  state = restore_or_init(config, group.spec, paths, resume, scene.object_origin)
  (state,), info = train_loop([state], group, num_devices=num_devices, stop_after=stop_after,
                              progress=progress)
  info["last_metrics"] = info["last_metrics"][0]
  info["train_time_s"] = info["train_time_s"][0]
  info["sample_budget"] = info["sample_budget"][0]
  info["state"] = state
  if info["interrupted"] or not final_outputs or int(state.step) < int(config.train.steps):
    return info
  summary = outputs_lib.write_final_outputs(state, scene, config, paths, info)
  summary["state"] = state
  return summary


def train_scenes(configs: Sequence[config_lib.RunConfig], *, steps: int | None = None,
                 guidance=None, progress: bool = True,
                 num_devices: int | None = None) -> dict:
  """Trains scenes of one group for ``steps`` (default config.train.steps) steps at once,
  in memory: fresh states, nothing read or written (tests and references;
  ``sweep.run_sweep`` is the sweep, with run directories and resume).

  The step is compiled once for all scenes.

  Returns:
    {"group": Group, "states": [host TrainState per scene],
     "metrics": [last metrics dict per scene], "wall_time_s", "steps"}.
  """
  group = build_group(configs, guidance=guidance)
  states = [restore_or_init(c, group.spec, None, None, s.object_origin)
            for c, s in zip(group.configs, group.scenes)]
  total = int(group.configs[0].train.steps if steps is None else steps)
  states, info = train_loop(states, group, total_steps=total, num_devices=num_devices,
                            progress=progress)
  return {"group": group, "states": states, "metrics": info["last_metrics"],
          "wall_time_s": info["wall_time_s"], "steps": total}


def load_trained(workdir: str, guidance_spec: Any = None):
  """(config, TrainSpec, host TrainState) of the latest loadable checkpoint in a run directory.

  The guidance is not loaded (it is not needed to render or export). The
  step used is the state's ``step`` (``describe_checkpoint`` says it in words).
  The spec renders at the sample budget the run had grown to
  (``budget.saved_budget``).
  """
  config = run_io.load_config(workdir)
  paths = run_io.RunPaths(pathlib.Path(workdir).absolute())
  gspec = guidance_spec or guidance_core.GuidanceSpec(kind="gaussian", guidance_scale=1.0,
                                                      weighting="uniform")
  spec = setup_lib.train_spec(config, gspec)
  grown = budget_lib.saved_budget(paths.root)    # the sample budget the run grew to
  if grown and grown > spec.render.sample_budget:
    spec = dataclasses.replace(spec, render=dataclasses.replace(spec.render, sample_budget=grown))
  manager = ckpt_lib.make_manager(paths.checkpoints, config.train.keep_checkpoints)
  target = step_lib.init_state(jax.random.PRNGKey(0), spec)
  try:   # a reader: a step that fails to restore is skipped (with a warning), not moved
    restored = ckpt_lib.restore_latest(manager, target, legacy=step_lib.legacy_targets(target))
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f"No loadable checkpoint in {paths.checkpoints}; train first.")
  return config, spec, restored[1]
