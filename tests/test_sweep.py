"""Prompt sweeps (stage2/loop.py): one vmapped step for several scenes."""
import jax
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import loop as sweep
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as train
from interfusion_jax.stage2 import config as config_validation
from interfusion_jax.stage2 import schedules

PROMPTS = [
    {"human": "a man in a red shirt", "object": "a blue chair",
     "interaction": "sitting on a chair"},
    {"human": "a man in a green shirt", "object": "a yellow bike",
     "interaction": "riding a bike"},
]


def _base():
  cfg = hoi.get_config("smoke")
  cfg.train.steps = 3
  cfg.camera.trace_every = 2
  return cfg


def test_scene_configs_sets_prompts_and_validates():
  cfgs = sweep.scene_configs(_base(), PROMPTS)
  assert [c.prompt.object for c in cfgs] == ["a blue chair", "a yellow bike"]
  assert cfgs[0].prompt.prefix == _base().prompt.prefix
  with pytest.raises(ValueError, match="no prompts"):
    sweep.scene_configs(_base(), [])
  with pytest.raises(ValueError, match="unknown keys"):
    sweep.scene_configs(_base(), [{"human": "a man", "colour": "red"}])
  with pytest.raises(config_validation.ConfigError, match="prompt.object"):
    sweep.scene_configs(_base(), [{"object": "  "}])


def test_build_sweep_rejects_different_static_settings():
  a, b = sweep.scene_configs(_base(), PROMPTS)
  b.render.height = 24
  with pytest.raises(setup_lib.TrainSetupError, match="scene 1"):
    sweep.build_group([a, b])


def test_stack_unstack_round_trip():
  trees = [{"a": np.full((2,), i, np.float32), "b": np.int32(i)} for i in range(3)]
  back = sweep.unstack(sweep.stack(trees), 3)
  for t, u in zip(trees, back):
    np.testing.assert_array_equal(t["a"], u["a"])
    assert int(u["b"]) == int(t["b"])


@pytest.mark.slow
def test_sweep_scene_matches_a_single_run():
  """Scene i of a sweep follows the trajectory of a single run of its prompts."""
  cfgs = sweep.scene_configs(_base(), PROMPTS)
  out = sweep.train_sweep(cfgs, progress=False)
  sw = out["group"]
  # The two scenes see different prompts and anchors, so they must differ.
  p0, p1 = (jax.tree_util.tree_leaves(s.params["object"]) for s in out["states"])
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(p0, p1)) > 1e-4
  # Reference: the single-scene loop, written out with the unvmapped step.
  scene = sw.scenes[1]
  step = jax.jit(train.make_train_step(sw.spec))
  state = train.init_state(jax.random.PRNGKey(int(cfgs[1].seed)), sw.spec)
  key = jax.random.PRNGKey(int(cfgs[1].seed))
  for i in range(cfgs[1].train.steps):
    if schedules.trace_due(i, sw.spec.schedule.trace_every):
      state = state._replace(object_center=train.object_center(
          state.params["object"], state.object_center, sw.spec))
    state, _ = step(state, scene.frozen, jax.random.fold_in(key, i))
  got = out["states"][1]
  assert int(got.step) == 3
  np.testing.assert_allclose(got.object_center, state.object_center, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_allclose(a, b, atol=1e-4)
