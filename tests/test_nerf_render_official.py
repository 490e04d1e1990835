"""The official renderers' sampling (PAPER.md renderer row, issue 13 items 2, 3, 5, 7).

One random offset per ray, alpha / transmittance pruning, three occupancy
grids, one shading draw per render (and per field of the interaction render),
per-field backgrounds, and L^geo drawn from the real samples: each against an
independent NumPy re-derivation or the official probabilities.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.nerf import occupancy as occ
from interfusion_jax.nerf import render
from interfusion_jax.stage2 import step as step_lib

import blob_scene as tt


def constant_field(params, x):
  m = x.shape[0]
  return (jnp.full((m,), 1.0) * params["sigma"], jnp.broadcast_to(params["rgb"], (m, 3)),
          jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), (m, 3)))


def _np_visible(alpha, thr, eps):
  """Brute-force nerfacc render_visibility_from_alpha, one ray at a time."""
  out = np.zeros(alpha.shape, bool)
  for r in range(alpha.shape[0]):
    trans = 1.0
    for i in range(alpha.shape[1]):
      out[r, i] = trans >= eps and alpha[r, i] >= thr
      trans *= 1.0 - alpha[r, i]
  return out


def test_one_random_offset_per_ray():
  t_near = jnp.array([0.5, 1.0, 0.2, 0.0])
  t_far = jnp.array([3.0, 3.5, 2.0, 4.0])
  step = 0.05
  s = render.stratified_samples(t_near, t_far, 100, step, key=jax.random.PRNGKey(3))
  t, mask = np.asarray(s.t), np.asarray(s.mask)
  for r in range(4):
    inner = t[r][mask[r]][:-1]                           # the last interval may be clipped
    np.testing.assert_allclose(np.diff(inner), step, atol=1e-5)
  u = (t[:, 0] - np.asarray(t_near) - 0.5 * step) / step   # the ray's offset in steps
  assert np.all((u >= -1e-5) & (u < 1.0)) and np.ptp(u) > 0.05
  mid = render.stratified_samples(t_near, t_far, 100, step, key=None)
  k = np.arange(100)
  want = np.asarray(t_near)[:, None] + (k + 0.5) * step
  np.testing.assert_allclose(np.asarray(mid.t)[:, :30], want[:, :30], atol=1e-5)  # before t_far


def test_visible_samples_matches_nerfacc_rule():
  rng = np.random.default_rng(0)
  alpha = rng.uniform(0, 1, (6, 30)) ** 3
  alpha[2, :] = 0.004                                       # below the alpha threshold
  for thr, eps in ((0.01, 1e-4), (0.0, 1e-4), (0.01, 0.0), (0.003, 0.3)):
    got = np.asarray(render.visible_samples(jnp.asarray(alpha, jnp.float32), thr, eps))
    np.testing.assert_array_equal(got, _np_visible(alpha.astype(np.float32), thr, eps))


def test_pruning_threshold_is_min_of_001_and_mean_occupancy():
  spec = render.RenderSpec(num_samples=32, sample_budget=32)
  g = occ.OccupancyGrid(density=jnp.full((4, 4, 4), 0.002), bitfield=jnp.ones((4, 4, 4), bool))
  assert float(render.prune_threshold(g, spec)) == pytest.approx(0.002)
  g = g._replace(density=jnp.full((4, 4, 4), 0.5))
  assert float(render.prune_threshold(g, spec)) == pytest.approx(0.01)
  assert float(render.prune_threshold(g.bitfield, spec)) == pytest.approx(0.01)


def _rays(n=5):
  o = jnp.tile(jnp.array([[-3.0, 0.0, 0.0]]), (n, 1)) + jnp.array([0.0, 0.0, 0.1]) * jnp.arange(
      n)[:, None]
  d = jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (n, 1))
  return o, d


def test_render_drops_samples_after_early_stop_and_keeps_the_image():
  """A dense constant field: the samples after T < 1e-4 are pruned, the image does not change
  by more than the transmittance left (the pruned mass), and the weights match NumPy."""
  o, d = _rays()
  grid = occ.OccupancyGrid(density=jnp.ones((8, 8, 8)), bitfield=jnp.ones((8, 8, 8), bool))
  params = {"sigma": jnp.float32(8.0), "rgb": jnp.array([0.2, 0.5, 0.9])}
  full = render.RenderSpec(num_samples=64, sample_budget=64, alpha_threshold=0.0,
                           early_stop_eps=0.0)
  pruned = dataclasses.replace(full, alpha_threshold=0.01, early_stop_eps=1e-4)
  a = render.render_rays(constant_field, params, o, d, jnp.ones(3), full, occupancy=grid)
  b = render.render_rays(constant_field, params, o, d, jnp.ones(3), pruned, occupancy=grid)
  assert int(a.num_pruned) == 0 and int(b.num_pruned) > 0
  want = _np_visible(np.asarray(a.alpha), 0.01, 1e-4) & np.asarray(a.mask)
  np.testing.assert_array_equal(np.asarray(b.mask), want)
  assert int(b.num_pruned) == int(np.sum(np.asarray(a.mask) & ~want))
  np.testing.assert_allclose(b.rgb, a.rgb, atol=2e-4)
  np.testing.assert_allclose(b.opacity, a.opacity, atol=2e-4)
  dense = render.render_rays(constant_field, params, o, d, jnp.ones(3), pruned, occupancy=None)
  assert int(dense.num_pruned) == 0                    # no grid: no pruning (official)


def test_interaction_keeps_a_sample_visible_in_either_field():
  """Official sampling_: masks | masks_, each from its own field's transmittance."""
  o, d = _rays(3)
  grid = occ.OccupancyGrid(density=jnp.ones((8, 8, 8)), bitfield=jnp.ones((8, 8, 8), bool))
  spec = render.RenderSpec(num_samples=64, sample_budget=64)
  ph = {"sigma": jnp.float32(6.0), "rgb": jnp.array([1.0, 0.0, 0.0])}
  po = {"sigma": jnp.float32(0.3), "rgb": jnp.array([0.0, 0.0, 1.0])}
  out = render.render_two_fields(constant_field, ph, constant_field, po, o, d, jnp.ones(3),
                                 spec, occupancy=grid)
  off = dataclasses.replace(spec, alpha_threshold=0.0, early_stop_eps=0.0)
  ref = render.render_two_fields(constant_field, ph, constant_field, po, o, d, jnp.ones(3),
                                 off, occupancy=grid)
  a_h, a_o = np.asarray(ref.aux["alpha_h"]), np.asarray(ref.aux["alpha_o"])
  thr = 0.01
  want = (_np_visible(a_h, thr, 1e-4) | _np_visible(a_o, thr, 1e-4)) & np.asarray(ref.mask)
  np.testing.assert_array_equal(np.asarray(out.mask), want)
  # the thin object field keeps samples the opaque human alone would have dropped
  assert np.sum(want & ~_np_visible(a_h, thr, 1e-4)) > 0


def test_three_grids_each_on_its_own_density():
  spec = tt._spec()
  state = step_lib.init_state(jax.random.PRNGKey(0), spec)
  assert set(state.occupancy) == set(step_lib.GRIDS)
  grids = step_lib.update_grids(state, jax.random.PRNGKey(1), spec)   # step 0: an update step
  o = spec.occupancy
  g = o.resolution
  cell = 2.0 * o.radius / g
  key = lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i)
  for i, name in enumerate(step_lib.GRIDS):
    jitter = (jax.random.uniform(key(i), (g, g, g, 3)) - 0.5) * cell
    x = (occ.cell_centers(g, o.radius) + jitter).reshape(-1, 3)
    sh = np.asarray(tt._blob_density(state.params["human"], x))
    so = np.asarray(tt._blob_density(state.params["object"], x))
    want = {"object": so, "human": sh, "interaction": sh + so}[name] * o.render_step
    np.testing.assert_allclose(np.asarray(grids[name].density).reshape(-1), want, rtol=1e-5,
                               atol=1e-7)
  assert step_lib.GRID_OF == {"object": "object", "human": "human", "head": "human",
                           "interaction": "interaction"}


def test_backgrounds_follow_the_field_and_are_white_half_the_time():
  spec = tt._spec()
  params = {"bg_human": {"rgb": jnp.full(3, -3.0)}, "bg_object": {"rgb": jnp.full(3, 3.0)}}
  dirs = jnp.ones((2, 3))
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  human, obj = float(jax.nn.sigmoid(-3.0)), float(jax.nn.sigmoid(3.0))
  for name, allowed in (("object", {obj}), ("human", {human}), ("head", {human}),
                        ("interaction", {human, obj})):
    bg = np.asarray(jax.vmap(lambda k: step_lib.augmented_background(params, dirs, k, spec, name))(
        keys))[:, 0, 0]
    white = np.isclose(bg, 1.0)
    assert abs(white.mean() - 0.5) < 4 * math.sqrt(0.25 / len(keys))
    rest = bg[~white]
    seen = {v for v in (human, obj) if np.any(np.isclose(rest, v, atol=1e-6))}
    assert seen == allowed, (name, seen)
    if name == "interaction":
      frac = np.mean(np.isclose(rest, human, atol=1e-6))
      assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / len(rest))


def test_each_render_and_field_draws_its_own_shading():
  """Five independent official draws: P(two renders share a mode) = sum p^2."""
  spec = tt._spec()
  n = 8000
  keys = jax.random.split(jax.random.PRNGKey(5), n)
  sh = jax.vmap(lambda k: step_lib.sample_shadings(k, jnp.bool_(False), spec))(keys)
  modes = {k: np.asarray(render.shading_mode(v)) for k, v in sh.items()}
  assert set(modes) == set(step_lib.SHADED)
  p = np.array([0.25, 0.375, 0.375])
  same = np.mean(modes["interaction_human"] == modes["interaction_object"])
  assert abs(same - np.sum(p ** 2)) < 4 * math.sqrt(0.34 * 0.66 / n)
  same = np.mean(modes["object"] == modes["human"])
  assert abs(same - np.sum(p ** 2)) < 4 * math.sqrt(0.34 * 0.66 / n)
  for v in modes.values():
    for m, pm in enumerate(p):
      assert abs(np.mean(v == m) - pm) < 4 * math.sqrt(pm * (1 - pm) / n)
  albedo = jax.vmap(lambda k: step_lib.sample_shadings(k, jnp.bool_(True), spec))(keys[:16])
  for v in albedo.values():
    assert np.all(np.asarray(render.shading_mode(v)) == 0)


@pytest.mark.parametrize("max_points", [64, 100000])
def test_geo_points_are_min_of_real_samples_and_cap(max_points):
  spec = tt._spec()
  spec = dataclasses.replace(spec, loss=dataclasses.replace(spec.loss,
                                                          geo_max_points=max_points))
  state = step_lib.init_state(jax.random.PRNGKey(0), spec)

  @jax.jit
  def run(state):
    state = state._replace(occupancy=step_lib.update_grids(state, jax.random.PRNGKey(1), spec))
    cam = step_lib.camera_lib.sample_camera(jax.random.PRNGKey(2), spec.camera)
    cams = step_lib.derived_cameras(cam, state.object_center, jnp.zeros(3), spec)
    shadings = step_lib.sample_shadings(jax.random.PRNGKey(3), jnp.bool_(True), spec)
    outs = step_lib.render_views(state.params, cams, state.occupancy, jax.random.PRNGKey(4),
                              shadings, spec)
    _, counts = step_lib.geometry_terms(state.params, outs, tt._anchor(), jax.random.PRNGKey(5),
                                     spec)
    return {n: jnp.sum(outs[n].mask) for n in ("human", "object")}, counts

  real, counts = run(state)
  for name in ("human", "object"):
    assert int(real[name]) > 64
    assert int(counts[f"geo_points_{name}"]) == min(int(real[name]), max_points)


def test_a_checkpoint_with_one_grid_restores_into_the_three(tmp_path):
  """Runs saved before the three official grids resume (and render) with their grid in all three."""
  from interfusion_jax.stage2 import checkpoint as ckpt_lib
  spec = tt._spec()
  fresh = step_lib.init_state(jax.random.PRNGKey(0), spec)
  old_grid = occ.OccupancyGrid(density=jnp.full_like(fresh.occupancy["human"].density, 0.25),
                               bitfield=jnp.zeros_like(fresh.occupancy["human"].bitfield))
  old = fresh._replace(occupancy=old_grid, step=jnp.int32(7))
  mgr = ckpt_lib.make_manager(tmp_path / "ckpt", keep=2)
  ckpt_lib.save(mgr, 7, old)
  assert ckpt_lib.restore_latest(mgr, fresh) is None         # the new layout alone cannot
  step, state = ckpt_lib.restore_latest(mgr, fresh, legacy=step_lib.legacy_targets(fresh))
  assert step == 7 and set(state.occupancy) == set(step_lib.GRIDS)
  for g in step_lib.GRIDS:
    np.testing.assert_array_equal(state.occupancy[g].density, 0.25)
    assert not np.any(state.occupancy[g].bitfield)
