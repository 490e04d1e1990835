"""stage2/step.py lowered: the number of scatters into the hash-grid tables of
the whole training step (68 before the hash grid's backward served the
analytic normals; now one splat per field, block of levels and use: the
renders, and the geometry loss's density points), and none left in XLA when
the CPU kernel serves the backward. The step is lowered on an abstract state
(the paper's tables are never allocated) of the blob scene's config
(tests/blob_scene.py) with the paper's hash grid.
"""
import jax

from blob_scene import _config, _frozen, _guidance
from configs import hoi
from interfusion_jax.nerf import hashgrid
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib


def _step_text(backend, paper_field=False):
  """The lowered training step of the tests' tiny config (abstract state: the
  paper's tables are never allocated) and its hash-grid spec."""
  cfg = _config()
  if paper_field:
    paper = hoi.get_config("paper").field
    for k in ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution",
              "per_level_scale"):
      cfg.field[k] = paper[k]
  cfg.field.hashgrid_backend = backend
  gspec, _, _ = _guidance()
  spec = setup_lib.train_spec(config_lib.parse(cfg), gspec)
  state = jax.eval_shape(lambda: step_lib.init_state(jax.random.PRNGKey(0), spec))
  step = jax.jit(step_lib.make_train_step(spec))
  txt = step.lower(state, _frozen(), jax.random.PRNGKey(1)).as_text()
  return txt, config_lib.hashgrid_spec(config_lib.parse(cfg))


def test_train_step_table_scatters_paper_field():
  """The paper's grid (dense + hashed block): 68 table scatters before."""
  txt, grid = _step_text("jax", paper_field=True)
  assert sum(grid.dense) == 5
  n = hashgrid.count_table_scatters(txt, grid.total_rows)
  print(f"training step (paper field, jax backend): {n} table scatters")
  # Per field and block: one splat for the renders (features and normals
  # together; the human's three views batched in one) and one for the
  # geometry loss's density points. Autodiff of the gathers made 32 per field
  # for the renders alone.
  assert 0 < n <= 8


def test_train_step_cpu_kernel_table_scatters(monkeypatch):
  """With the CPU kernel ("auto"): the features' splats run in the kernel; the
  joint feature + Jacobian splats of the renders stay XLA scatters while
  ``hashgrid.KERNEL_JACOBIAN_SPLAT`` is off (see its comment), none with it."""
  if not hashgrid.ffi_kernel_available():
    return
  txt, grid = _step_text("auto")
  n = hashgrid.count_table_scatters(txt, grid.total_rows)
  assert 0 < n <= 2 * len({d for d in grid.dense}), n   # per field and block, at most
  assert "ifj_hashgrid_bwd" in txt and "ifj_hashgrid_bwd_jac" not in txt
  monkeypatch.setattr(hashgrid, "KERNEL_JACOBIAN_SPLAT", True)
  txt, grid = _step_text("auto")
  assert hashgrid.count_table_scatters(txt, grid.total_rows) == 0
  assert "ifj_hashgrid_bwd_jac" in txt
