"""stage2/loop.py's growth decision: a step that drops occupied samples makes the
next step run on the program compiled for the grown budget; growth stops at
config.render.max_sample_budget; a fixed budget never grows; the record is saved
with the checkpoints and a resumed run continues at the budget it had reached.

The compiled step is replaced by a stand-in that drops what a scene with a
given number of occupied samples per ray would drop at the budget it was
compiled for (the real renderer's overflow is tested in
test_nerf_render_budget.py, the real vmapped step's growth in
test_stage2_sweep_budget.py)."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import blob_scene
from interfusion_jax.stage2 import budget as budget_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib

# Occupied samples per ray (average over the rays of the worst render) at each step.
NEEDED = [50, 70, 100, 130, 300, 20, 40]


def _config(**render):
  cfg = blob_scene._config()      # smoke: a fixed budget; the default grows
  cfg.render.num_samples, cfg.render.sample_budget = 512, 64
  cfg.render.budget_growth = "grow"
  cfg.train.steps = len(NEEDED)
  cfg.train.ckpt_every = 1000
  for k, v in render.items():
    cfg.render[k] = v
  return config_lib.parse(cfg)


@pytest.fixture
def fake_compile(monkeypatch):
  """loop.cached_compile -> a stand-in; records the budget of every compiled step
  and the budget each step ran at."""
  compiled, ran = [], []

  def cached_compile(spec, n, num_devices=None):
    budget, rays = spec.render.sample_budget, spec.height * spec.width
    compiled.append(budget)
    sharding = NamedSharding(loop.device_mesh(1), P())

    def step(state, frozen, keys):
      i = int(state.step[0])
      ran.append(budget)
      worst = float(max(0, NEEDED[i] - budget) * rays)
      m = {"loss": jnp.zeros(n), "skipped": jnp.zeros(n),
           "samples_dropped": jnp.full(n, 2.0 * worst),   # two renders overflow alike
           "samples_dropped_max": jnp.full(n, worst),
           "sample_budget": jnp.full(n, float(budget))}
      return state._replace(step=state.step + 1), m

    return loop.Compiled(step=step, trace=lambda p, c: c, scene_sharding=sharding,
                         replicated=sharding, num_devices=1)

  monkeypatch.setattr(loop, "cached_compile", cached_compile)
  return compiled, ran


def _run(run, paths=None, scenes=1):
  spec = setup_lib.train_spec(run, blob_scene._guidance()[0], model=blob_scene.BLOB)
  states, group_scenes = [], []
  for _ in range(scenes):
    group_scenes.append(setup_lib.Scene(spec, blob_scene._frozen(), None))
    states.append(step_lib.init_state(jax.random.PRNGKey(0), spec))
  group = loop.Group(spec, loop.stack_frozen(group_scenes), group_scenes, [run] * scenes,
                     [paths] * scenes)
  _, info = loop.train_loop(states, group, progress=False)
  return group, info


def test_loop_grows_on_overflow_and_runs_the_next_step_at_the_new_size(fake_compile, tmp_path,
                                                                        caplog, monkeypatch):
  compiled, ran = fake_compile
  paths = run_io.prepare_workdir(tmp_path / "run")
  run_io.save_config(paths, _config())
  with caplog.at_level(logging.WARNING):
    group, info = _run(_config(), paths)
  # 70 > 64 after step 1 -> 128; 130 > 128 after step 3 -> 256; 300 > 256 -> 512
  assert ran == [64, 64, 128, 128, 256, 512, 512]
  assert compiled == [64, 128, 256, 512]
  assert [r.getMessage().split(":")[0] for r in caplog.records
          if "growing it" in r.getMessage()] == ["step 1", "step 3", "step 4"]
  # The group's spec, and its scenes' (their final outputs render with it), grew too.
  assert group.spec.render.sample_budget == 512
  assert group.scenes[0].spec.render.sample_budget == 512
  s = info["sample_budget"][0]
  rays = blob_scene.H ** 2
  assert (s["start"], s["final"], s["steps_with_drops"]) == (64, 512, 3)
  assert s["samples_dropped_peak"] == 2.0 * (300 - 256) * rays
  # Logged per step, and saved next to the final checkpoint.
  rows = run_io.read_metrics(paths.metrics)
  assert [r["sample_budget"] for r in rows] == ran
  saved = json.loads((paths.root / budget_lib.FILE).read_text())
  assert saved["final"] == 512 and len(saved["growths"]) == 3
  # The render / export / evaluate entry points render the run at that budget.
  monkeypatch.setattr(setup_lib, "model_fns", lambda run: blob_scene.BLOB)
  assert loop.load_trained(str(paths.root))[1].render.sample_budget == 512
  # A run resumed from step 3's state continues at 128 (grown after step 1).
  fresh = loop.Group(group.spec, group.frozen, group.scenes, group.configs, group.paths)
  fresh.spec = setup_lib.train_spec(_config(), blob_scene._guidance()[0], model=blob_scene.BLOB)
  assert loop.start_budget(fresh, 3).current == 128
  assert fresh.spec.render.sample_budget == 128


def test_loop_growth_stops_at_the_maximum(fake_compile):
  compiled, ran = fake_compile
  _, info = _run(_config(max_sample_budget=128))
  assert ran == [64, 64, 128, 128, 128, 128, 128] and compiled == [64, 128]
  assert info["sample_budget"][0]["steps_with_drops"] == 3


def test_fixed_budget_never_grows(fake_compile):
  compiled, ran = fake_compile
  _, info = _run(_config(budget_growth="fixed"), scenes=2)
  assert ran == [64] * len(NEEDED) and compiled == [64]
  rays = blob_scene.H ** 2
  for s in info["sample_budget"]:
    assert (s["mode"], s["final"], s["growths"]) == ("fixed", 64, [])
    assert s["samples_dropped_peak"] == 2.0 * (300 - 64) * rays
    assert s["steps_with_drops"] == int(np.sum(np.asarray(NEEDED) > 64))
