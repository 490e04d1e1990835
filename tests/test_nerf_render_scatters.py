"""nerf/render.py in lowered programs: a render-with-normals gradient scatters into
each hash-grid table once per block of levels (autodiff of the gathers did so
once per block and corner, for the features and again for the analytic
normals), and unused compacted sample slots scatter nowhere.
"""
import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.nerf import camera
from interfusion_jax.nerf import field
from interfusion_jax.nerf import hashgrid
from interfusion_jax.nerf import occupancy as occ
from interfusion_jax.nerf import render


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
