"""Tests for interfusion_jax.nerf.background."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from configs.hoi import get_config
from interfusion_jax.nerf import background
from interfusion_jax.stage2 import config as config_lib


def _dirs(shape, key=0):
  d = jax.random.normal(jax.random.PRNGKey(key), shape + (3,))
  return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def _fibonacci_sphere(n):
  i = np.arange(n) + 0.5
  z = 1.0 - 2.0 * i / n
  phi = np.pi * (1.0 + 5**0.5) * i
  r = np.sqrt(1.0 - z * z)
  return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_sh_basis_is_orthonormal(degree):
  d = _fibonacci_sphere(40000)
  y = np.asarray(background.sh_encode(jnp.asarray(d, jnp.float32), degree), np.float64)
  assert y.shape == (40000, degree**2)
  gram = 4.0 * np.pi * (y.T @ y) / d.shape[0]
  np.testing.assert_allclose(gram, np.eye(degree**2), atol=2e-3)


def test_sh_spans_scipy_real_harmonics_per_band():
  """Each band spans the same space as scipy's real spherical harmonics."""
  d = _fibonacci_sphere(5000)
  theta = np.arccos(d[:, 2])
  phi = np.arctan2(d[:, 1], d[:, 0])
  ours = np.asarray(background.sh_encode(jnp.asarray(d, jnp.float32), 4), np.float64)
  for l in range(4):
    cols = []
    for m in range(-l, l + 1):
      c = special.sph_harm_y(l, abs(m), theta, phi)
      cols.append(np.sqrt(2) * (c.imag if m < 0 else c.real) if m != 0 else c.real)
    ref = np.stack(cols, axis=1)
    block = ours[:, l * l:(l + 1) * (l + 1)]
    # Both orthonormal bases of the same band: block = ref @ Q with Q orthogonal.
    q, *_ = np.linalg.lstsq(ref, block, rcond=None)
    np.testing.assert_allclose(ref @ q, block, atol=1e-4)
    np.testing.assert_allclose(q.T @ q, np.eye(2 * l + 1), atol=1e-3)


def test_white_and_solid():
  dirs = _dirs((2, 5))
  white = background.background_color({}, dirs, background.BackgroundSpec(kind="white"))
  assert white.shape == (2, 5, 3) and np.all(np.asarray(white) == 1.0)
  spec = background.BackgroundSpec(kind="solid", solid_color=(0.2, 0.4, 0.6))
  solid = background.background_color(background.init_background(jax.random.PRNGKey(0), spec),
                                      dirs, spec)
  np.testing.assert_allclose(solid, np.broadcast_to([0.2, 0.4, 0.6], (2, 5, 3)), rtol=1e-6)


def test_neural_matches_numpy():
  spec = background.BackgroundSpec()
  p = background.init_background(jax.random.PRNGKey(1), spec)
  assert [w.shape for w in p["mlp"]] == [(9, 16), (16, 16), (16, 3)]
  dirs = _dirs((4, 6), key=2)
  rgb = jax.jit(lambda p, d: background.background_color(p, d, spec))(p, dirs)
  assert rgb.shape == (4, 6, 3)
  d = np.asarray(dirs, np.float64).reshape(-1, 3)
  x, y, z = d.T
  sh = np.stack([np.full_like(x, 0.5 * np.sqrt(1 / np.pi)),
                 -np.sqrt(3 / (4 * np.pi)) * y, np.sqrt(3 / (4 * np.pi)) * z,
                 -np.sqrt(3 / (4 * np.pi)) * x,
                 0.5 * np.sqrt(15 / np.pi) * x * y, -0.5 * np.sqrt(15 / np.pi) * y * z,
                 0.25 * np.sqrt(5 / np.pi) * (3 * z * z - 1),
                 -0.5 * np.sqrt(15 / np.pi) * x * z,
                 0.25 * np.sqrt(15 / np.pi) * (x * x - y * y)], axis=1)
  h = sh
  for i, w in enumerate(p["mlp"]):
    h = h @ np.asarray(w, np.float64)
    if i < 2:
      h = np.maximum(h, 0)
  np.testing.assert_allclose(np.asarray(rgb).reshape(-1, 3), 1 / (1 + np.exp(-h)),
                             rtol=1e-5, atol=1e-6)
  g = jax.grad(lambda p: jnp.sum(background.background_color(p, dirs, spec)))(p)
  assert float(jnp.abs(g["mlp"][0]).max()) > 0


@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_from_config(variant):
  config = get_config(variant)
  cfg = config.background
  spec = config_lib.background_spec(config_lib.parse(config))
  assert (spec.kind, spec.sh_degree, spec.mlp_width, spec.mlp_hidden_layers) == (
      cfg.kind, cfg.sh_degree, cfg.mlp_width, cfg.mlp_hidden_layers)
  assert spec.n_coefficients == 9
  hash(spec)


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="kind"):
    background.BackgroundSpec(kind="sky")
  with pytest.raises(ValueError, match="init_background"):
    background.background_color({}, _dirs((3,)), background.BackgroundSpec())
  assert dataclasses.replace(background.BackgroundSpec(), kind="white").kind == "white"
