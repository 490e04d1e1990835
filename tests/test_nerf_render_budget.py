"""nerf/render.py's sample budget under overflow: a 1 m fog ball at the paper's
sampling (512 samples per ray, 64 per ray on average) overflows the budget; the
grown budget (``grown_sample_budget``) evaluates every occupied sample, and its
renders and gradients then equal the dense render (no grid, every sample)."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import occupancy as occ_lib
from interfusion_jax.nerf import render
from interfusion_jax.stage2 import config as config_lib

SIZE = 16          # 16 x 16 rays


def _fog(params, x):
  """A uniform fog ball of radius 1 m (density params["sigma"] inside, 0 outside)."""
  r = jnp.linalg.norm(x, axis=-1)
  sigma = jnp.where(r < 1.0, params["sigma"], 0.0)
  albedo = jax.nn.sigmoid(3.0 * x + params["tint"])
  return sigma, albedo, x / jnp.maximum(r, 1e-6)[:, None]


PARAMS = {"sigma": jnp.float32(2.0), "tint": jnp.array([0.1, -0.2, 0.3], jnp.float32)}


@functools.partial(jax.jit, static_argnums=0)
def _grid_and_rays(ospec):
  # The grid as training builds it, dilated by one cell so that no cell the ball
  # reaches is missed by its one jittered density probe.
  grid = occ_lib.update_occupancy(occ_lib.init_occupancy(ospec),
                                  lambda x: _fog(PARAMS, x)[0], jax.random.PRNGKey(0), 0, ospec)
  # A camera 1.8 m from the centre: the ball fills the image.
  c2w = camera_lib.look_at(jnp.array([1.8, 0.3, 0.4]), jnp.zeros(3))
  o, d = camera_lib.pinhole_rays(c2w, np.deg2rad(60.0), SIZE, SIZE)
  return grid, o.reshape(-1, 3), d.reshape(-1, 3)


@pytest.fixture(scope="module")
def scene():
  run = config_lib.parse(hoi.get_config("paper"))
  spec = config_lib.render_spec(run)
  assert (spec.num_samples, spec.sample_budget) == (512, 64)      # the paper's sampling
  ospec = dataclasses.replace(config_lib.occupancy_spec(run), dilate=1)
  return (spec,) + _grid_and_rays(ospec)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _render(spec, grads, grid, o, d):
  """The render (and, with ``grads``, the gradients of a loss on it wrt PARAMS)."""
  def f(p):
    out = render.render_rays(_fog, p, o, d, jnp.ones(3), spec, occupancy=grid,
                             key=jax.random.PRNGKey(3))
    return jnp.sum(out.rgb * jnp.array([0.3, 0.5, 0.2])) + jnp.sum(out.depth), out
  if not grads:
    return f(PARAMS)[1], None
  (_, out), g = jax.value_and_grad(f, has_aux=True)(PARAMS)
  return out, g


def test_grown_budget_renders_equal_the_dense_render(scene):
  spec, grid, o, d = scene
  rays = o.shape[0]
  dense, g_dense = _render(spec, True, None, o, d)   # every sample: no grid, no budget
  fixed, _ = _render(spec, False, grid, o, d)
  dropped = int(fixed.num_dropped)
  assert dropped > 0.1 * rays * spec.sample_budget     # the fog overflows 64 per ray
  # What is lost is visible: the fixed budget's opacity falls short of the dense one.
  assert float(jnp.max(jnp.abs(fixed.opacity - dense.opacity))) > 0.05

  grown = render.grown_sample_budget(spec.sample_budget, dropped, rays, spec.num_samples)
  occupied = rays * spec.sample_budget + dropped
  # The smallest 64 * 2^k (k >= 1) with room for every occupied sample.
  k = max(1, int(np.ceil(np.log2(occupied / (rays * spec.sample_budget)))))
  assert grown == min(spec.sample_budget * 2 ** k, spec.num_samples)
  out, g_grown = _render(dataclasses.replace(spec, sample_budget=grown), True, grid, o, d)
  assert int(out.num_dropped) == 0
  # Equal to the dense render: the same samples and weights (tolerance: float32
  # sums in another order) ...
  for name in ("rgb", "opacity", "depth", "normal", "weights"):
    np.testing.assert_allclose(getattr(out, name), getattr(dense, name), atol=2e-5,
                               err_msg=name)
  # ... and the same gradients.
  for name in PARAMS:
    np.testing.assert_allclose(g_grown[name], g_dense[name], rtol=1e-4, atol=1e-4,
                               err_msg=name)


def test_grown_sample_budget_doubles_at_least_and_stops_at_the_cap():
  # no drops: unchanged; a small overflow: doubled; a large one: the power of two that fits
  assert render.grown_sample_budget(64, 0, 100, 512) == 64
  assert render.grown_sample_budget(64, 1, 100, 512) == 128
  assert render.grown_sample_budget(64, 100 * 64, 100, 512) == 128      # 128 per ray fit
  assert render.grown_sample_budget(64, 100 * 64 + 1, 100, 512) == 256
  assert render.grown_sample_budget(64, 100 * 400, 100, 512) == 512     # needs 464
  assert render.grown_sample_budget(64, 10 ** 9, 100, 512) == 512       # capped
  assert render.grown_sample_budget(512, 10, 100, 512) == 512           # at the cap
  assert render.grown_sample_budget(24, 5, 10, 40) == 40                # cap not a power of 2
