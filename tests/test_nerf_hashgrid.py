"""Tests for interfusion_jax.nerf.hashgrid against an independent NumPy encoding."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.hoi import get_config
from hashgrid_reference import PRIMES, plain_encode
from interfusion_jax.nerf import hashgrid
from interfusion_jax.stage2 import config as config_lib

# Two dense levels (res 4, 8: 5^3, 9^3 <= 2^10) and two hashed (res 16, 32).
SMALL = hashgrid.HashGridSpec(n_levels=4, n_features_per_level=2,
                              log2_hashmap_size=10, base_resolution=4,
                              per_level_scale=2.0, backend="jax")

# One dense level (res 4) and one hashed level (res 8: 9^3 > 2^8).
TINY = hashgrid.HashGridSpec(n_levels=2, n_features_per_level=2,
                             log2_hashmap_size=8, base_resolution=4,
                             per_level_scale=2.0, backend="jax")


def np_layout(spec):
  """Resolutions, dense flags, row counts and offsets, derived independently."""
  t = 2**spec.log2_hashmap_size
  res = []
  for l in range(spec.n_levels):
    v = spec.base_resolution * spec.per_level_scale**l
    # A rounded per_level_scale (1.4472692 = 256^(1/15)) must still reach 4096.
    res.append(int(round(v)) if abs(v - round(v)) < 1e-5 * v else int(math.floor(v)))
  dense = [(r + 1)**3 <= t for r in res]
  rows = [(r + 1)**3 if d else t for r, d in zip(res, dense)]
  offs = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
  return res, dense, rows, offs


def np_corners(x, spec):
  """Per level: (global row indices [N, 8], weights [N, 8]) in float64/int64."""
  t = 2**spec.log2_hashmap_size
  res, dense, _, offs = np_layout(spec)
  x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
  out = []
  for r, d, off in zip(res, dense, offs):
    pos = x * r
    cell = np.minimum(np.floor(pos), r - 1).astype(np.int64)
    f = pos - cell
    idx = np.zeros((x.shape[0], 8), np.int64)
    w = np.zeros((x.shape[0], 8))
    for c in range(8):
      b = np.array([(c >> k) & 1 for k in range(3)])
      v = cell + b
      if d:
        idx[:, c] = v[:, 0] + v[:, 1] * (r + 1) + v[:, 2] * (r + 1)**2
      else:
        h = (v[:, 0] * PRIMES[0]) ^ (v[:, 1] * PRIMES[1]) ^ (v[:, 2] * PRIMES[2])
        idx[:, c] = h % t
      w[:, c] = np.prod(np.where(b == 1, f, 1.0 - f), axis=1)
    out.append((idx + off, w))
  return out


def np_encode(table, x, spec):
  table = np.asarray(table, np.float64)
  return np.concatenate(
      [np.einsum("nc,ncf->nf", w, table[idx]) for idx, w in np_corners(x, spec)],
      axis=1)


def np_table_grad(g, x, spec, n_rows):
  """d sum(g * encode) / d table by np.add.at."""
  g = np.asarray(g, np.float64).reshape(x.shape[0], spec.n_levels, -1)
  out = np.zeros((n_rows, g.shape[-1]))
  for l, (idx, w) in enumerate(np_corners(x, spec)):
    np.add.at(out, idx.reshape(-1), (w[:, :, None] * g[:, l, None, :]).reshape(-1, g.shape[-1]))
  return out


def _table(spec, key=0):
  return jax.random.normal(jax.random.PRNGKey(key),
                           (spec.total_rows, spec.n_features_per_level), jnp.float32)


def _points(n, key=1, lo=0.0, hi=1.0):
  return jax.random.uniform(jax.random.PRNGKey(key), (n, 3), jnp.float32, lo, hi)


def test_layout_matches_independent_derivation():
  for spec in (SMALL, hashgrid.HashGridSpec()):
    res, dense, rows, offs = np_layout(spec)
    assert list(spec.resolutions) == res
    assert list(spec.dense) == dense
    assert list(spec.level_rows) == rows
    assert list(spec.level_offsets) == list(offs)
    assert spec.total_rows == sum(rows)
  assert SMALL.dense == (True, True, False, False)
  default = hashgrid.HashGridSpec()
  assert hashgrid.finest_resolution(default) == 4096  # PAPER.md "finest 4096"
  assert sum(default.dense) == 5  # 16..70 fit 2^19 directly


def test_values_match_numpy_including_outside_points():
  table = _table(SMALL)
  x = jnp.concatenate([_points(500), _points(100, 2, -0.3, 1.3),
                       jnp.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])])
  got = jax.jit(lambda t, x: hashgrid.hash_encode({"table": t}, x, SMALL))(table, x)
  assert got.shape == (x.shape[0], SMALL.output_dim) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, np_encode(table, x, SMALL), rtol=1e-5, atol=1e-5)


def test_default_spec_values_match_numpy():
  spec = hashgrid.HashGridSpec(backend="jax")
  table = _table(spec)
  x = _points(64, 3)
  got = jax.jit(lambda t, x: hashgrid.hash_encode({"table": t}, x, spec))(table, x)
  # float32 x * 4096 resolves fractions to ~2.5e-4: compare at that precision.
  np.testing.assert_allclose(got, np_encode(table, x, spec), rtol=0, atol=2e-3)


def test_table_gradient_matches_numpy_and_naive_autodiff():
  table = _table(SMALL)
  x = jnp.concatenate([_points(700), _points(50, 4, -0.2, 1.2)])
  g = jax.random.normal(jax.random.PRNGKey(5), (x.shape[0], SMALL.output_dim))
  ours = jax.jit(jax.grad(
      lambda t: jnp.sum(g * hashgrid.hash_encode({"table": t}, x, SMALL))))(table)
  naive = jax.jit(jax.grad(lambda t: jnp.sum(g * plain_encode(t, x, SMALL))))(table)
  np.testing.assert_allclose(ours, np_table_grad(g, x, SMALL, SMALL.total_rows),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours, naive, rtol=1e-4, atol=1e-4)


def test_gradients_match_finite_differences():
  table = _table(SMALL)
  # Keep points away from cell faces of every level so the central
  # difference stays inside one trilinear cell (where it is exact).
  x = np.asarray(_points(400, 6))
  fr = np.stack([(x * r) % 1.0 for r in SMALL.resolutions], 0)
  x = jnp.asarray(x[np.all((fr > 0.1) & (fr < 0.9), axis=(0, 2))][:20])
  assert x.shape[0] >= 5
  v = jax.random.normal(jax.random.PRNGKey(7), (x.shape[0], SMALL.output_dim))
  f = lambda t, x: jnp.sum(v * hashgrid.hash_encode({"table": t}, x, SMALL))
  gt, gx = jax.jit(jax.grad(f, (0, 1)))(table, x)
  eps = 1e-3
  per_point = jax.jit(
      lambda y: jnp.sum(v * hashgrid.hash_encode({"table": table}, y, SMALL), axis=1))
  f = jax.jit(f)
  for d in range(3):
    e = jnp.zeros_like(x).at[:, d].set(eps)
    fd = (per_point(x + e) - per_point(x - e)) / (2 * eps)
    np.testing.assert_allclose(gx[:, d], fd, rtol=2e-2, atol=2e-2)
  # The encoding is linear in the table: FD over a few used rows.
  rows = np.argsort(-np.abs(np.asarray(gt[:, 0])))[:5]
  for r in rows:
    e = jnp.zeros_like(table).at[r, 0].set(0.5)
    fd = (f(table + e, x) - f(table - e, x)) / 1.0
    np.testing.assert_allclose(gt[r, 0], fd, rtol=1e-3, atol=1e-3)


def test_position_gradient_zero_where_clamped():
  table = _table(SMALL)
  x = jnp.array([[1.5, 0.3, 0.6], [-0.5, 0.7, 0.2]])
  gx = jax.jit(jax.grad(
      lambda x: jnp.sum(hashgrid.hash_encode({"table": table}, x, SMALL))))(x)
  assert gx[0, 0] == 0.0 and gx[1, 0] == 0.0
  assert np.all(np.asarray(gx[:, 1:]) != 0.0)


def test_second_order_matches_naive():
  """Gradient w.r.t. the table of a loss on the position gradient (normals)."""
  spec = TINY
  table = _table(spec)
  x = _points(200, 8)

  def loss(enc, t):
    gx = jax.grad(lambda y: jnp.sum(jnp.sin(enc(t, y))))(x)
    return jnp.sum(gx**2)

  ours = jax.jit(jax.grad(
      lambda t: loss(lambda t, y: hashgrid.hash_encode({"table": t}, y, spec), t)))(table)
  naive = jax.jit(jax.grad(lambda t: loss(lambda t, y: plain_encode(t, y, spec), t)))(table)
  np.testing.assert_allclose(ours, naive, rtol=1e-3, atol=1e-3 * float(jnp.abs(naive).max()))


def test_init_range_and_shape():
  spec = config_lib.hashgrid_spec(config_lib.parse(get_config("smoke")))
  p = hashgrid.init_hashgrid(jax.random.PRNGKey(0), spec)
  t = np.asarray(p["table"])
  assert t.shape == (spec.total_rows, spec.n_features_per_level)
  assert t.dtype == np.float32
  assert np.abs(t).max() <= 1e-4 and np.abs(t).max() > 5e-5 and t.std() > 1e-5


@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_from_config(variant):
  config = get_config(variant)
  cfg = config.field
  spec = config_lib.hashgrid_spec(config_lib.parse(config))
  assert spec.n_levels == cfg.n_levels
  assert spec.log2_hashmap_size == cfg.log2_hashmap_size
  assert spec.output_dim == cfg.n_levels * cfg.n_features_per_level
  assert hash(spec) == hash(config_lib.hashgrid_spec(config_lib.parse(config)))


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="log2_hashmap_size"):
    hashgrid.HashGridSpec(log2_hashmap_size=40)
  with pytest.raises(ValueError, match="per_level_scale"):
    hashgrid.HashGridSpec(per_level_scale=0.5)
  p = hashgrid.init_hashgrid(jax.random.PRNGKey(0), SMALL)
  with pytest.raises(ValueError, match=r"\[N, 3\]"):
    hashgrid.hash_encode(p, jnp.zeros((4, 2)), SMALL)
  with pytest.raises(ValueError, match="init_hashgrid"):
    hashgrid.hash_encode({"table": jnp.zeros((3, 2))}, jnp.zeros((4, 3)), SMALL)


@pytest.fixture(scope="module")
def ffi_small():
  if not hashgrid.ffi_kernel_available():
    pytest.skip("optional C++ hash-grid kernel cannot be built here (no g++?)")
  import dataclasses
  return dataclasses.replace(SMALL, backend="ffi")


def test_ffi_kernel_matches_numpy_values_and_gradients(ffi_small):
  table = _table(SMALL)
  x = jnp.concatenate([_points(700), _points(50, 4, -0.2, 1.2)])
  g = jax.random.normal(jax.random.PRNGKey(5), (x.shape[0], SMALL.output_dim))
  enc = jax.jit(lambda t, x: hashgrid.hash_encode({"table": t}, x, ffi_small))
  np.testing.assert_allclose(enc(table, x), np_encode(table, x, SMALL), rtol=1e-5, atol=1e-5)
  gt, gx = jax.jit(jax.grad(
      lambda t, x: jnp.sum(g * hashgrid.hash_encode({"table": t}, x, ffi_small)), (0, 1)))(table, x)
  np.testing.assert_allclose(gt, np_table_grad(g, x, SMALL, SMALL.total_rows),
                             rtol=1e-4, atol=1e-4)
  gx_jax = jax.jit(jax.grad(
      lambda x: jnp.sum(g * hashgrid.hash_encode({"table": table}, x, SMALL))))(x)
  np.testing.assert_allclose(gx, gx_jax, rtol=1e-4, atol=1e-4)


def test_ffi_kernel_second_order(ffi_small):
  import dataclasses
  spec = dataclasses.replace(TINY, backend="ffi")
  table = _table(spec)
  x = _points(200, 8)

  def loss(s, t):
    gx = jax.grad(lambda y: jnp.sum(jnp.sin(hashgrid.hash_encode({"table": t}, y, s))))(x)
    return jnp.sum(gx**2) + jnp.sum(hashgrid.hash_encode({"table": t}, x, s)**2)

  ours = jax.jit(jax.grad(lambda t: loss(spec, t)))(table)
  ref = jax.jit(jax.grad(lambda t: loss(TINY, t)))(table)
  np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3 * float(jnp.abs(ref).max()))
