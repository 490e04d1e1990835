"""Lowered-program checks: how many scatters into the hash-grid tables a
render-with-normals gradient and the whole stage-2 training step contain.

Autodiff of the gathers scatters once per level block and corner (8 per block)
for the features and again for the analytic normals; the hash grid's custom
backward splats the features' and the normals' cotangents together, once per
block.
"""
import jax
import jax.numpy as jnp
import numpy as np

import test_train as tt
from configs import hoi
from interfusion_jax.nerf import camera
from interfusion_jax.nerf import field
from interfusion_jax.nerf import hashgrid
from interfusion_jax.nerf import occupancy as occ
from interfusion_jax.nerf import render
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as train

GRID = hashgrid.HashGridSpec(n_levels=4, n_features_per_level=2, log2_hashmap_size=10,
                             base_resolution=4, per_level_scale=2.0, backend="jax")


def _rays(h=4, w=4):
  cams = camera.orbit_cameras(1, 3.0, 20.0, 50.0, azimuth_start_deg=30.0)
  return render.camera_rays(jax.tree.map(lambda a: a[0], cams), h, w)


def test_render_with_normals_gradient_scatters_each_block_once():
  spec = field.FieldSpec(grid=GRID, mlp_width=16)
  params = field.init_field(jax.random.PRNGKey(0), spec)
  o, d = _rays()
  grid = occ.init_occupancy(occ.OccupancySpec(resolution=8))
  rspec = render.RenderSpec(num_samples=16, sample_budget=6)  # the budget overflows
  field_fn = lambda p, x: field.field_forward_with_normals(p, x, spec)

  def loss(p):
    out = render.render_rays(field_fn, p, o, d, jnp.ones(3), rspec, occupancy=grid)
    return jnp.sum(out.rgb) + jnp.sum(out.normal * jnp.array([1.0, -1.0, 2.0]))

  txt = jax.jit(jax.grad(loss)).lower(params).as_text()
  n = hashgrid.count_table_scatters(txt, GRID.total_rows)
  print(f"render-with-normals gradient: {n} table scatters")  # 32 before
  assert n == 2


def test_unused_slots_spread_over_distinct_samples():
  mask = np.zeros((4, 8), bool)
  mask[1, 2] = mask[2, 5] = mask[3, 0] = True
  flat, valid, dropped = jax.jit(render.compact_indices, static_argnums=1)(
      jnp.asarray(mask), 10)
  np.testing.assert_array_equal(np.asarray(flat)[:3], [10, 21, 24])
  assert np.all(np.asarray(flat)[3:] == mask.size) and int(dropped) == 0
  points = jnp.arange(32 * 3, dtype=jnp.float32).reshape(32, 3)
  x = np.asarray(render._slot_points(points, flat, valid))  # pylint: disable=protected-access
  np.testing.assert_array_equal(x[:3], np.asarray(points)[[10, 21, 24]])
  assert len({tuple(r) for r in x[3:]}) == 7   # the unused slots share no point
  # Values scattered back from unused slots land nowhere.
  back = render._scatter(jnp.ones((10,)), flat, valid, 32)  # pylint: disable=protected-access
  np.testing.assert_array_equal(np.asarray(back), mask.reshape(-1).astype(np.float32))


def _step_text(backend, paper_field=False):
  """The lowered training step of the tests' tiny config (abstract state: the
  paper's tables are never allocated) and its hash-grid spec."""
  cfg = tt._config()  # pylint: disable=protected-access
  if paper_field:
    paper = hoi.get_config("paper").field
    for k in ("n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution",
              "per_level_scale"):
      cfg.field[k] = paper[k]
  cfg.field.hashgrid_backend = backend
  gspec, _, _ = tt._guidance()  # pylint: disable=protected-access
  spec = setup_lib.train_spec(cfg, gspec)
  state = jax.eval_shape(lambda: train.init_state(jax.random.PRNGKey(0), spec))
  step = jax.jit(train.make_train_step(spec))
  txt = step.lower(state, tt._frozen(), jax.random.PRNGKey(1)).as_text()  # pylint: disable=protected-access
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


def test_train_step_cpu_kernel_leaves_no_table_scatter():
  if not hashgrid.ffi_kernel_available():
    return
  txt, grid = _step_text("auto")
  assert hashgrid.count_table_scatters(txt, grid.total_rows) == 0
  assert "ifj_hashgrid_bwd_jac" in txt
