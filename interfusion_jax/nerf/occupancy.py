"""Occupancy grid for empty-space skipping (PAPER.md renderer defaults).

A G^3 grid over the scene box [-r, r]^3 stores an exponential moving average
of the (alpha-like) occupancy sigma * step of each cell, and a bitfield of the
cells worth sampling. It follows nerfacc's ``OccupancyGrid`` as used by
threestudio:

  occ_c   <- max(ema_decay * occ_c, sigma(x_c) * render_step)   (x_c jittered in cell c)
  bit_c   <- occ_c > min(threshold, mean(occ))

The density function is the SUMMED density of both fields (human + object).
The state is a pytree so it can live inside the train state, be pmapped, and
be checkpointed.

Warm-up: in nerfacc (the official code) "warm-up" means that updates during
the first ``warmup_steps`` evaluate every cell, afterwards a random quarter.
Here EVERY update evaluates all G^3 cells (32^3 = 32k points, cheap), so the
official warm-up is always on. ``init_occupancy`` starts with all cells
occupied until the first update (call it at step 0). Optionally
(``occupied_during_warmup=True``) all cells stay occupied while
step < warmup_steps; this is NOT the official behaviour, and with a
sample budget it can truncate rays (see docs/rendering.md).
"""
import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

DensityFn = Callable[[jnp.ndarray], jnp.ndarray]  # x [N, 3] -> sigma [N]


class OccupancyGrid(NamedTuple):
  """Grid state. density [G, G, G] float32 EMA occupancy; bitfield [G, G, G] bool."""
  density: jnp.ndarray
  bitfield: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class OccupancySpec:
  """Static settings (config.occupancy + box radius and render step)."""
  resolution: int = 32
  radius: float = 2.0
  ema_decay: float = 0.95
  threshold: float = 0.01
  warmup_steps: int = 256
  update_every: int = 16
  render_step: float = math.sqrt(3.0) * 4.0 / 512
  occupied_during_warmup: bool = False
  dilate: int = 0


def init_occupancy(spec: OccupancySpec) -> OccupancyGrid:
  """A fresh grid: zero EMA, every cell occupied (warm-up state). Shapes [G, G, G]."""
  g = spec.resolution
  return OccupancyGrid(density=jnp.zeros((g, g, g), jnp.float32),
                       bitfield=jnp.ones((g, g, g), bool))


def cell_centers(resolution: int, radius: float) -> jnp.ndarray:
  """Centres of the G^3 cells of [-r, r]^3, indexed [i, j, k] along (x, y, z).

  Returns:
    [G, G, G, 3].
  """
  c = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution
  c = (2.0 * c - 1.0) * radius
  return jnp.stack(jnp.meshgrid(c, c, c, indexing="ij"), axis=-1)


def update_occupancy(grid: OccupancyGrid, density_fn: DensityFn, key, step,
                     spec: OccupancySpec) -> OccupancyGrid:
  """One EMA update of the grid (call it every ``spec.update_every`` steps).

  Args:
    grid: current state, [G, G, G] arrays.
    density_fn: x [N, 3] -> sigma [N]; pass the SUMMED density of both fields.
    key: PRNG key for the per-cell jitter.
    step: scalar training step (traced is fine).
    spec: occupancy spec.

  Returns:
    The new OccupancyGrid (no gradient flows into it).
  """
  g = spec.resolution
  cell = 2.0 * spec.radius / g
  jitter = (jax.random.uniform(key, (g, g, g, 3)) - 0.5) * cell
  x = (cell_centers(g, spec.radius) + jitter).reshape(-1, 3)
  occ = jax.lax.stop_gradient(density_fn(x)).reshape(g, g, g) * spec.render_step
  density = jnp.maximum(grid.density * spec.ema_decay, occ)
  thresh = jnp.minimum(spec.threshold, jnp.mean(density))
  bitfield = dilate_bitfield(density > thresh, spec.dilate)
  if spec.occupied_during_warmup:
    bitfield = jnp.logical_or(bitfield, step < spec.warmup_steps)
  return OccupancyGrid(density=density, bitfield=bitfield)


def dilate_bitfield(bitfield: jnp.ndarray, cells: int) -> jnp.ndarray:
  """Marks every cell within ``cells`` (Chebyshev distance) of an occupied one.

  Not in the official code: it keeps the low-density fringe (alpha < threshold
  per sample, but many samples) that thresholding alone would skip.

  Args:
    bitfield: [G, G, G] bool.
    cells: dilation radius in cells (0 = identity).

  Returns:
    [G, G, G] bool.
  """
  if cells <= 0:
    return bitfield
  w = 2 * cells + 1
  return jax.lax.reduce_window(bitfield.astype(jnp.float32), 0.0, jax.lax.max,
                               (w, w, w), (1, 1, 1), "SAME") > 0.0


def maybe_update_occupancy(grid: OccupancyGrid, density_fn: DensityFn, key, step,
                           spec: OccupancySpec) -> OccupancyGrid:
  """``update_occupancy`` when step % update_every == 0, else ``grid`` (lax.cond)."""
  return jax.lax.cond(
      step % spec.update_every == 0,
      lambda g: update_occupancy(g, density_fn, key, step, spec),
      lambda g: g, grid)


def query_occupancy(bitfield: jnp.ndarray, x: jnp.ndarray, radius: float) -> jnp.ndarray:
  """Whether points fall into occupied cells; points outside the box are empty.

  Args:
    bitfield: [G, G, G] bool.
    x: [..., 3] points.
    radius: box half-size r.

  Returns:
    [...] bool.
  """
  g = bitfield.shape[0]
  u = (x + radius) / (2.0 * radius)
  inside = jnp.all((u >= 0.0) & (u <= 1.0), axis=-1)
  idx = jnp.clip(jnp.floor(u * g).astype(jnp.int32), 0, g - 1)
  return bitfield[idx[..., 0], idx[..., 1], idx[..., 2]] & inside


def occupied_fraction(grid: OccupancyGrid) -> jnp.ndarray:
  """Fraction of occupied cells (scalar), for logging."""
  return jnp.mean(grid.bitfield.astype(jnp.float32))
