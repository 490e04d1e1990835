"""Tests for interfusion_jax.nerf.occupancy against NumPy re-derivations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.nerf import occupancy as occ
from interfusion_jax.stage2 import config as config_lib


def _ball_density(x, centre=(0.5, -0.25, 0.0), radius=0.6, sigma=30.0):
  d = jnp.linalg.norm(x - jnp.asarray(centre), axis=-1)
  return jnp.where(d < radius, sigma, 0.0)


def test_from_config_and_init():
  spec = config_lib.occupancy_spec(config_lib.parse(hoi.get_config()))
  assert spec.resolution == 32 and spec.ema_decay == 0.95 and spec.threshold == 0.01
  assert spec.warmup_steps == 256 and spec.radius == 2.0
  assert spec.render_step == pytest.approx(np.sqrt(3) * 4 / 512)
  grid = occ.init_occupancy(spec)
  assert grid.density.shape == grid.bitfield.shape == (32, 32, 32)
  assert bool(grid.bitfield.all())


def test_update_matches_numpy_ema_and_threshold():
  spec = occ.OccupancySpec(resolution=8, radius=2.0, warmup_steps=10, render_step=0.05)
  rng = np.random.default_rng(0)
  prev = rng.uniform(0, 0.05, (8, 8, 8)).astype(np.float32)
  grid = occ.OccupancyGrid(jnp.asarray(prev), jnp.ones((8, 8, 8), bool))
  key = jax.random.PRNGKey(1)
  new = occ.update_occupancy(grid, _ball_density, key, 50, spec)
  # NumPy re-derivation with the same jitter.
  cell = 4.0 / 8
  jitter = (np.asarray(jax.random.uniform(key, (8, 8, 8, 3))) - 0.5) * cell
  c = (np.arange(8) + 0.5) * cell - 2.0
  centres = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1)
  x = centres + jitter
  sig = np.where(np.linalg.norm(x - [0.5, -0.25, 0.0], axis=-1) < 0.6, 30.0, 0.0)
  want = np.maximum(prev * 0.95, sig * 0.05)
  np.testing.assert_allclose(np.asarray(new.density), want, rtol=1e-6)
  thr = min(0.01, want.mean())
  np.testing.assert_array_equal(np.asarray(new.bitfield), want > thr)
  assert 0 < np.asarray(new.bitfield).mean() < 1


def test_warmup_option_and_ema_decay():
  official = occ.OccupancySpec(resolution=8, warmup_steps=5, render_step=0.05)
  held = occ.OccupancySpec(resolution=8, warmup_steps=5, render_step=0.05,
                           occupied_during_warmup=True)
  grid = occ.init_occupancy(official)
  dens = lambda x: jnp.where(x[:, 0] > 0, 1.0, 0.0)  # occ = 0.05 for x > 0
  grid = occ.update_occupancy(grid, dens, jax.random.PRNGKey(0), 0, official)
  frac = float(occ.occupied_fraction(grid))
  assert frac == pytest.approx(0.5)                  # official: threshold from step 0
  held_grid = occ.update_occupancy(grid, dens, jax.random.PRNGKey(0), 4, held)
  assert bool(held_grid.bitfield.all())               # option: all occupied in warm-up
  after = occ.update_occupancy(grid, dens, jax.random.PRNGKey(0), 5, held)
  assert float(occ.occupied_fraction(after)) == pytest.approx(0.5)
  # EMA decay: with an empty field the stored value decays by 0.95 per update.
  empty = lambda x: jnp.zeros(x.shape[:1])
  g = grid
  for step in range(3):
    g = occ.update_occupancy(g, empty, jax.random.PRNGKey(step), 10 + step, official)
  d = np.asarray(g.density)
  np.testing.assert_allclose(d[d > 0], 0.05 * 0.95 ** 3, rtol=1e-5)


def test_query_matches_numpy_indexing():
  rng = np.random.default_rng(2)
  bits = rng.uniform(size=(6, 6, 6)) > 0.5
  x = rng.uniform(-2.5, 2.5, (500, 3)).astype(np.float32)
  got = np.asarray(occ.query_occupancy(jnp.asarray(bits), jnp.asarray(x), 2.0))
  idx = np.floor((x + 2.0) / 4.0 * 6).astype(int)
  inside = np.all(np.abs(x) <= 2.0, axis=-1)
  idx = np.clip(idx, 0, 5)
  want = bits[idx[:, 0], idx[:, 1], idx[:, 2]] & inside
  np.testing.assert_array_equal(got, want)
  assert (~inside).any() and want.any()


def test_ball_cells_found_and_jittable():
  spec = occ.OccupancySpec(resolution=16, warmup_steps=0)
  upd = jax.jit(lambda g, k, s: occ.maybe_update_occupancy(g, _ball_density, k, s, spec))
  grid = occ.init_occupancy(spec)
  for step in range(0, 64):
    grid = upd(grid, jax.random.PRNGKey(step), step)
  # Cells whose centre lies well inside the ball are occupied, far ones are not.
  centres = np.asarray(occ.cell_centers(16, 2.0)).reshape(-1, 3)
  d = np.linalg.norm(centres - [0.5, -0.25, 0.0], axis=-1)
  bits = np.asarray(grid.bitfield).reshape(-1)
  assert bits[d < 0.6 - 0.22].all()
  assert not bits[d > 0.6 + 0.22].any()
  frac = float(occ.occupied_fraction(grid))
  assert frac == pytest.approx(bits.mean())


def test_maybe_update_respects_period():
  spec = occ.OccupancySpec(resolution=4, update_every=16, warmup_steps=0)
  grid = occ.init_occupancy(spec)
  same = occ.maybe_update_occupancy(grid, _ball_density, jax.random.PRNGKey(0), 17, spec)
  np.testing.assert_array_equal(np.asarray(same.bitfield), np.asarray(grid.bitfield))
  changed = occ.maybe_update_occupancy(grid, _ball_density, jax.random.PRNGKey(0), 32, spec)
  assert not np.array_equal(np.asarray(changed.bitfield), np.asarray(grid.bitfield))
