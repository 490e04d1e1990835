"""Two runs of the smoke config in one process with the same seed are bitwise equal
(issue 12, "No behaviour change"): nothing in the loop, the step or the
built-in prior depends on hidden state, and the second run reuses the first
run's compiled program."""
import jax
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import loop


@pytest.mark.slow
def test_smoke_config_twice_in_one_process_is_bitwise_equal(tmp_path):
  cfg = hoi.get_config("smoke")
  cfg.train.steps = 6
  runs = [loop.run(cfg, str(tmp_path / name), progress=False, final_outputs=False)
          for name in ("a", "b")]
  a, b = (r["state"] for r in runs)
  assert int(a.step) == int(b.step) == 6 and int(a.total_skips) == 0
  leaves_a = jax.tree_util.tree_leaves(a)
  leaves_b = jax.tree_util.tree_leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Training moved the fields (the check above is not between two untouched inits).
  fresh = loop.restore_or_init(cfg, loop.build_group([cfg]).spec, None, False)
  moved = [float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
           for x, y in zip(jax.tree_util.tree_leaves(fresh.params),
                           jax.tree_util.tree_leaves(a.params))]
  assert max(moved) > 1e-4
