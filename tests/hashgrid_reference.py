"""An independent transcription of the multiresolution hash encoding for the
hash-grid tests: plain jnp, level by level, so autodiff gives the reference
backward (a scatter-add per level and corner)."""
import jax.numpy as jnp

# instant-ngp's primes, written again here rather than read from the package.
PRIMES = (1, 2654435761, 805459861)


def plain_encode(table, x, spec):
  """The encoding written the obvious way, level by level (autodiff scatters)."""
  x = jnp.clip(x, 0.0, 1.0)
  t = 2**spec.log2_hashmap_size
  feats, off = [], 0
  for l in range(spec.n_levels):
    r = spec.resolutions[l]
    dense = (r + 1)**3 <= t
    pos = x * r
    cell = jnp.clip(jnp.floor(pos), 0, r - 1)
    f = pos - cell
    cell = cell.astype(jnp.uint32)
    acc = 0.0
    for c in range(8):
      b = [(c >> k) & 1 for k in range(3)]
      v = cell + jnp.asarray(b, jnp.uint32)
      if dense:
        idx = v[:, 0] + v[:, 1] * (r + 1) + v[:, 2] * (r + 1)**2
      else:
        idx = ((v[:, 0] * jnp.uint32(PRIMES[0])) ^ (v[:, 1] * jnp.uint32(PRIMES[1]))
               ^ (v[:, 2] * jnp.uint32(PRIMES[2]))) % jnp.uint32(t)
      w = 1.0
      for k in range(3):
        w = w * (f[:, k] if b[k] else 1.0 - f[:, k])
      acc = acc + w[:, None] * table[idx.astype(jnp.int32) + off]
    feats.append(acc)
    off += (r + 1)**3 if dense else t
  return jnp.concatenate(feats, axis=1)
