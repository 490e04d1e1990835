"""stage2/loop.py: the one loop on the blob scene (tests/blob_scene.py): aborting
after consecutive skips, bit-identical resume, the resume flags, Ctrl-C, and
groups of scenes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blob_scene import _config, _spec, _frozen
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import prompt_file
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib
from scene_rows import PROMPTS, _base


def test_loop_aborts_after_consecutive_skips(tmp_path):
  cfg = _config()
  cfg.train.max_consecutive_skips = 2
  spec = _spec()
  scene = setup_lib.Scene(spec, _frozen(nan_anchor=True), None)
  paths = run_io.prepare_workdir(tmp_path)
  state = step_lib.init_state(jax.random.PRNGKey(0), spec)
  with pytest.warns(UserWarning, match="non-finite"):
    with pytest.raises(loop.TooManySkipsError, match="2 consecutive"):
      _train_loop(state, scene, cfg, paths)
  assert ckpt_lib.latest_step(paths.checkpoints) is None or ckpt_lib.all_finite(
      ckpt_lib.restore_latest(ckpt_lib.make_manager(paths.checkpoints, 3), state)[1])


def _train_loop(state, scene, cfg, paths, **kw):
  """The one loop on a single scene (a group of one)."""
  (out,), info = loop.train_loop([state], loop.single_group(scene, cfg, paths), progress=False,
                                 **kw)
  return out, info


def _leaves(state):
  return jax.tree_util.tree_leaves(jax.device_get(state))


def test_resume_is_bit_identical(tmp_path):
  cfg = _config()
  spec = _spec()
  scene = setup_lib.Scene(spec, _frozen(), None)
  fresh = lambda: step_lib.init_state(jax.random.PRNGKey(cfg.seed), spec)
  # Uninterrupted run.
  full, _ = _train_loop(fresh(), scene, cfg, run_io.prepare_workdir(tmp_path / "a"))
  # "Killed" after 3 steps (checkpoint at 2 only), then resumed from disk.
  paths = run_io.prepare_workdir(tmp_path / "b")
  _train_loop(fresh(), scene, cfg, paths, stop_after=3)
  assert ckpt_lib.latest_step(paths.checkpoints) == 2
  state = loop.restore_or_init(cfg, spec, paths, resume=True)
  assert int(state.step) == 2
  resumed, _ = _train_loop(state, scene, cfg, paths)
  assert int(resumed.step) == int(full.step) == cfg.train.steps
  for a, b in zip(_leaves(full), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  rows = run_io.read_metrics(paths.metrics)
  assert [r["step"] for r in rows] == list(range(1, cfg.train.steps + 1))


def test_resume_flags(tmp_path):
  cfg = _config()
  spec = _spec()
  paths = run_io.prepare_workdir(tmp_path)
  with pytest.raises(setup_lib.TrainSetupError, match="no checkpoint"):
    loop.restore_or_init(cfg, spec, paths, resume=True)
  assert int(loop.restore_or_init(cfg, spec, paths, resume=None).step) == 0
  mgr = ckpt_lib.make_manager(paths.checkpoints, 2)
  ckpt_lib.save(mgr, 4, step_lib.init_state(jax.random.PRNGKey(0), spec)._replace(
      step=jnp.int32(4)))
  with pytest.raises(setup_lib.TrainSetupError, match="--noresume"):
    loop.restore_or_init(cfg, spec, paths, resume=False)
  assert int(loop.restore_or_init(cfg, spec, paths, resume=None).step) == 4


def test_ctrl_c_writes_checkpoint_and_exits_cleanly(tmp_path, monkeypatch):
  cfg = _config()
  cfg.train.ckpt_every = 100
  spec = _spec()
  real = loop.cached_compile(spec, 1)
  calls = []

  def step(*args):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real.step(*args)

  import dataclasses
  monkeypatch.setattr(loop, "cached_compile",
                      lambda *a, **k: dataclasses.replace(real, step=step))
  paths = run_io.prepare_workdir(tmp_path)
  state, info = _train_loop(step_lib.init_state(jax.random.PRNGKey(0), spec),
                            setup_lib.Scene(spec, _frozen(), None), cfg, paths)
  assert info["interrupted"] and int(state.step) == 2
  assert ckpt_lib.latest_step(paths.checkpoints) == 2
  restored = loop.restore_or_init(cfg, spec, paths, resume=True)
  for a, b in zip(_leaves(state), _leaves(restored)):
    np.testing.assert_array_equal(a, b)


def test_build_sweep_rejects_different_static_settings():
  a, b = prompt_file.scene_configs(_base(), PROMPTS)
  b = config_lib.override(b, {"render.height": 24})
  with pytest.raises(setup_lib.TrainSetupError, match="scene 1"):
    loop.build_group([a, b])


def test_stack_unstack_round_trip():
  trees = [{"a": np.full((2,), i, np.float32), "b": np.int32(i)} for i in range(3)]
  back = loop.unstack(loop.stack(trees), 3)
  for t, u in zip(trees, back):
    np.testing.assert_array_equal(t["a"], u["a"])
    assert int(u["b"]) == int(t["b"])
