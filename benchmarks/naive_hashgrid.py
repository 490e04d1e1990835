"""Naive reference hash encoding: straightforward jnp gather, autodiff scatter.

Same encoding (same table layout, resolutions, hash and corner order) as
``interfusion_jax.nerf.hashgrid.hash_encode``, written the obvious way: per level,
compute the 8 corner indices, gather with plain ``table[idx]`` indexing and
let ``jax.grad`` produce the scatter-add backward. Used by
``benchmarks/bench_hashgrid.py`` as the baseline and by the tests as an
independent jnp implementation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from interfusion_jax.nerf.hashgrid import HashGridSpec

_PRIMES = (1, 2654435761, 805459861)


def naive_hash_encode(params: dict, x01: jax.Array, spec: HashGridSpec
                      ) -> jax.Array:
  """[N, 3] in [0, 1] -> [N, n_levels * F], plain gather / autodiff."""
  table = params["table"]
  x = jnp.clip(x01, 0.0, 1.0)
  feats = []
  for res, dense, off in zip(spec.resolutions, spec.dense, spec.level_offsets):
    pos = x * res
    cell = jnp.clip(jnp.floor(pos), 0, res - 1)
    frac = pos - cell
    cell = cell.astype(jnp.int32)
    level = 0.0
    for c in range(8):
      b = (c & 1, (c >> 1) & 1, (c >> 2) & 1)
      corner = cell + jnp.asarray(b, jnp.int32)
      if dense:
        idx = corner[:, 0] + corner[:, 1] * (res + 1) + corner[:, 2] * (res + 1)**2
      else:
        u = corner.astype(jnp.uint32)
        h = (u[:, 0] * jnp.uint32(_PRIMES[0])) ^ (u[:, 1] * jnp.uint32(_PRIMES[1])) ^ (
            u[:, 2] * jnp.uint32(_PRIMES[2]))
        idx = (h % jnp.uint32(spec.hashmap_size)).astype(jnp.int32)
      w = 1.0
      for d in range(3):
        w = w * (frac[:, d] if b[d] else 1.0 - frac[:, d])
      level = level + w[:, None] * table[idx + off]
    feats.append(level)
  return jnp.concatenate(feats, axis=-1)
