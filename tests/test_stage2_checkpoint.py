"""Checkpoint save/restore, keep-k, corrupt fallback, NaN refusal."""
import pathlib
import shutil

import numpy as np
import optax
import pytest
import jax.numpy as jnp

from interfusion_jax.stage2 import checkpoint


def _state(v):
  params = {"a": jnp.full((3, 2), v, jnp.float32), "b": {"c": jnp.arange(4.0) + v}}
  opt = optax.adam(1e-2).init(params)
  return {"params": params, "opt": opt, "step": np.int32(v)}


def _assert_tree_equal(x, y):
  import jax
  for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_roundtrip_and_keep(tmp_path):
  mgr = checkpoint.make_manager(tmp_path / "ckpt", keep=2)
  for s in (1, 2, 3):
    checkpoint.save(mgr, s, _state(float(s)))
  assert sorted(mgr.all_steps()) == [2, 3]
  assert checkpoint.latest_step(tmp_path / "ckpt") == 3
  step, restored = checkpoint.restore_latest(mgr, _state(0.0))
  assert step == 3
  _assert_tree_equal(restored, _state(3.0))
  # The optax namedtuple structure survives.
  assert type(restored["opt"][0]).__name__ == "ScaleByAdamState"


def test_corrupt_latest_falls_back(tmp_path):
  d = tmp_path / "ckpt"
  mgr = checkpoint.make_manager(d, keep=3)
  checkpoint.save(mgr, 1, _state(1.0))
  checkpoint.save(mgr, 2, _state(2.0))
  # Corrupt step 2: delete every data file under it.
  for p in (d / "2").rglob("*"):
    if p.is_file():
      p.write_bytes(b"garbage")
  mgr = checkpoint.make_manager(d, keep=3)
  with pytest.warns(UserWarning, match="falling back"):
    step, restored = checkpoint.restore_latest(mgr, _state(0.0))
  assert step == 1
  _assert_tree_equal(restored, _state(1.0))


def test_empty_dir_returns_none(tmp_path):
  mgr = checkpoint.make_manager(tmp_path / "none", keep=1)
  assert checkpoint.restore_latest(mgr, _state(0.0)) is None


def test_refuses_nan(tmp_path):
  mgr = checkpoint.make_manager(tmp_path / "ckpt", keep=2)
  bad = _state(1.0)
  bad["params"]["a"] = bad["params"]["a"].at[0, 0].set(jnp.nan)
  with pytest.raises(checkpoint.NonFiniteCheckpointError):
    checkpoint.save(mgr, 5, bad)
  assert mgr.all_steps() == [] or list(mgr.all_steps()) == []


def test_unwritable_dir(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(checkpoint.CheckpointDirError, match="writable"):
    checkpoint.make_manager(f / "ckpt", keep=1)


def test_latest_step_ignores_an_unfinished_step(tmp_path):
  """A step killed mid-write (Orbax's temporary directory) is not the latest step."""
  mgr = checkpoint.make_manager(tmp_path / "ckpt", keep=3)
  checkpoint.save(mgr, 4, _state(4.0))
  (tmp_path / "ckpt" / "8.orbax-checkpoint-tmp-1234").mkdir()
  assert checkpoint.latest_step(tmp_path / "ckpt") == 4
  assert checkpoint.latest_step(tmp_path / "nowhere") is None
