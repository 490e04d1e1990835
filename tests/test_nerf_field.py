"""Tests for interfusion_jax.nerf.field: bias closed forms, MLP/activation, normals."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.hoi import get_config
from interfusion_jax.nerf import field
from interfusion_jax.nerf import hashgrid
from interfusion_jax.stage2 import config as config_lib

GRID = hashgrid.HashGridSpec(n_levels=3, n_features_per_level=2,
                             log2_hashmap_size=10, base_resolution=4,
                             per_level_scale=2.0, backend="jax")
SPEC = field.FieldSpec(grid=GRID, mlp_width=16)


def _params(spec=SPEC, key=0, table_scale=1.0):
  p = field.init_field(jax.random.PRNGKey(key), spec)
  p["grid"] = {"table": p["grid"]["table"] * table_scale}
  return p


def _points(n, key=1, r=1.5):
  return jax.random.uniform(jax.random.PRNGKey(key), (n, 3), jnp.float32, -r, r)


def np_mlp(ws, h):
  h = np.asarray(h, np.float64)
  for i, w in enumerate(ws):
    h = h @ np.asarray(w, np.float64)
    if i < len(ws) - 1:
      h = np.maximum(h, 0.0)
  return h


def np_softplus(v):
  return np.logaddexp(0.0, v)


def test_density_bias_closed_forms():
  x = np.asarray(_points(50))
  r = np.linalg.norm(x, axis=-1)
  magic = field.density_bias(jnp.asarray(x), SPEC)
  np.testing.assert_allclose(magic, 10.0 * (1.0 - r / 0.5), rtol=1e-5, atol=1e-5)
  dream = field.density_bias(
      jnp.asarray(x), dataclasses.replace(SPEC, density_bias="blob_dreamfusion",
                                          blob_scale=5.0, blob_std=0.2))
  np.testing.assert_allclose(dream, 5.0 * np.exp(-r**2 / (2 * 0.2**2)), rtol=1e-5, atol=1e-6)
  none = field.density_bias(jnp.asarray(x), dataclasses.replace(SPEC, density_bias="none"))
  assert none.shape == (50,) and np.all(np.asarray(none) == 0.0)


def test_blob_center_moves_the_density_bias_and_is_not_trained():
  p = _params()
  p = dict(p, density_mlp=jax.tree_util.tree_map(jnp.zeros_like, p["density_mlp"]))  # raw = 0
  c = np.array([0.4, -0.3, 0.2], np.float32)
  moved = field.with_blob_center(p, c)
  x = np.asarray(_points(64))
  sigma = np.asarray(field.field_density(moved, jnp.asarray(x), SPEC))
  np.testing.assert_allclose(
      sigma, np_softplus(10.0 * (1.0 - np.linalg.norm(x - c, axis=-1) / 0.5)),
      rtol=1e-5, atol=1e-6)
  # Without the leaf the blob stays at the origin (the official field).
  np.testing.assert_allclose(
      field.field_density(p, jnp.asarray(x), SPEC),
      np_softplus(10.0 * (1.0 - np.linalg.norm(x, axis=-1) / 0.5)), rtol=1e-5, atol=1e-6)
  trained = field.with_blob_center(_params(table_scale=1e4), c)
  g = jax.grad(lambda q: jnp.sum(field.field_density(q, jnp.asarray(x), SPEC)))(trained)
  assert np.all(np.asarray(g["blob_center"]) == 0.0)
  assert sum(float(jnp.sum(jnp.abs(w))) for w in g["density_mlp"]) > 0.0


@pytest.mark.parametrize("act", ["softplus", "exp", "relu"])
def test_density_and_albedo_match_numpy(act):
  spec = dataclasses.replace(SPEC, density_activation=act)
  p = _params(spec, table_scale=1e4)  # make the grid matter
  x = _points(64)
  sigma, albedo = jax.jit(lambda p, x: field.field_forward(p, x, spec))(p, x)
  feats = jax.jit(lambda g, u: hashgrid.hash_encode(g, u, GRID))(p["grid"], (x + 2.0) / 4.0)
  pre = np_mlp(p["density_mlp"], feats)[:, 0] + 10.0 * (
      1.0 - np.linalg.norm(np.asarray(x), axis=-1) / 0.5)
  want = {"softplus": np_softplus(pre), "exp": np.exp(np.minimum(pre, 15.0)),
          "relu": np.maximum(pre, 0.0)}[act]
  np.testing.assert_allclose(sigma, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(albedo, 1.0 / (1.0 + np.exp(-np_mlp(p["albedo_mlp"], feats))),
                             rtol=1e-4, atol=1e-5)
  dens = jax.jit(lambda p, x: field.field_density(p, x, spec))(p, x)
  np.testing.assert_allclose(dens, sigma, rtol=1e-5, atol=1e-6)


def test_shapes_and_init():
  p = _params()
  assert p["grid"]["table"].shape == (GRID.total_rows, 2)
  assert [w.shape for w in p["density_mlp"]] == [(6, 16), (16, 1)]
  assert [w.shape for w in p["albedo_mlp"]] == [(6, 16), (16, 3)]
  s, a, n = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, SPEC))(p, _points(10))
  assert s.shape == (10,) and a.shape == (10, 3) and n.shape == (10, 3)
  assert np.all(np.asarray(s) >= 0) and np.all((np.asarray(a) > 0) & (np.asarray(a) < 1))


def _mostly_close(a, b, atol, frac=0.95):
  """Row-wise closeness for >= frac of rows: central differences are wrong
  at the few points whose stencil crosses a ReLU kink of the MLP."""
  ok = np.all(np.abs(np.asarray(a) - np.asarray(b)) <= atol, axis=-1)
  assert ok.mean() >= frac, f"only {ok.mean():.2%} of rows within {atol}"


def _interior_points(spec, n=400, key=3, margin=0.1):
  """Points whose fractions at every level stay away from cell faces."""
  x = np.asarray(_points(n, key, r=0.9))
  u = (x + spec.radius) / (2 * spec.radius)
  fr = np.stack([(u * r) % 1.0 for r in spec.grid.resolutions])
  return jnp.asarray(x[np.all((fr > margin) & (fr < 1 - margin), axis=(0, 2))])


def test_analytic_normals_match_finite_differences_of_density():
  p = _params(table_scale=3e4)
  x = _interior_points(SPEC)
  assert x.shape[0] >= 5
  _, _, n = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, SPEC))(p, x)
  dens = jax.jit(lambda y: field.field_density(p, y, SPEC))
  eps = 1e-3
  grad = np.stack([(dens(x + eps * e) - dens(x - eps * e)) / (2 * eps)
                   for e in np.eye(3, dtype=np.float32)], axis=-1)
  want = -grad / np.linalg.norm(grad, axis=-1, keepdims=True)
  _mostly_close(n, want, atol=2e-2)
  np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)


def test_finite_difference_mode_matches_analytic():
  p = _params(table_scale=3e4)
  x = _interior_points(SPEC)
  fd_spec = dataclasses.replace(SPEC, normals="finite_difference", fd_eps=1e-3)
  _, _, n_a = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, SPEC))(p, x)
  s, a, n_f = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, fd_spec))(p, x)
  _mostly_close(n_f, n_a, atol=2e-2)
  # A pure blob (no grid) has outward normals -grad sigma ~ x / |x|.
  p0 = _params(table_scale=0.0)
  _, _, n0 = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, fd_spec))(p0, x)
  np.testing.assert_allclose(n0, x / np.linalg.norm(x, axis=-1, keepdims=True), atol=1e-3)


def test_normals_are_differentiable():
  p = _params(table_scale=1e3)
  x = _points(32)
  g = jax.jit(jax.grad(lambda p: jnp.sum(
      field.field_forward_with_normals(p, x, SPEC)[2][:, 0])))(p)
  assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree_util.tree_leaves(g))
  assert float(jnp.abs(g["density_mlp"][0]).max()) > 0


def test_bfloat16_compute_runs_and_is_close():
  spec = dataclasses.replace(SPEC, compute_dtype="bfloat16")
  p = _params(table_scale=1e4)
  x = _points(64)
  s16, a16, n16 = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, spec))(p, x)
  s32, a32, _ = jax.jit(lambda p, x: field.field_forward_with_normals(p, x, SPEC))(p, x)
  assert s16.dtype == jnp.float32 and a16.dtype == jnp.float32
  np.testing.assert_allclose(s16, s32, rtol=5e-2, atol=5e-2)
  np.testing.assert_allclose(a16, a32, atol=2e-2)
  assert np.all(np.isfinite(np.asarray(n16)))


@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_from_config(variant):
  config = get_config(variant)
  cfg = config.field
  run = config_lib.parse(config)
  spec = config_lib.field_spec(run)
  assert spec.grid == config_lib.hashgrid_spec(run)
  assert (spec.radius, spec.mlp_width, spec.blob_scale, spec.blob_std) == (
      cfg.radius, cfg.mlp_width, cfg.density_blob_scale, cfg.density_blob_std)
  hash(spec)


def test_bad_settings_and_inputs_raise():
  with pytest.raises(ValueError, match="density_bias"):
    field.FieldSpec(density_bias="gauss")
  with pytest.raises(ValueError, match="normals"):
    field.FieldSpec(normals="sobel")
  with pytest.raises(ValueError, match=r"\[N, 3\]"):
    field.field_density(_params(), jnp.zeros((2, 4, 3)), SPEC)
