"""Tests for interfusion_jax.render against closed forms and NumPy references."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.nerf import camera
from interfusion_jax.nerf import occupancy as occ
from interfusion_jax.nerf import render
from interfusion_jax.stage2 import config as config_lib


# ----------------------------------------------------------------------------
# Analytic fields: (params, x [M, 3]) -> (sigma [M], albedo [M, 3], normals [M, 3]).
# ----------------------------------------------------------------------------


def constant_field(params, x):
  """sigma = params["sigma"] everywhere; colour params["rgb"]."""
  m = x.shape[0]
  n = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0]), (m, 3))
  return (jnp.full((m,), 1.0) * params["sigma"],
          jnp.broadcast_to(params["rgb"], (m, 3)), n)


def slab_field(params, x):
  """sigma inside |x_0| < 0.5, zero outside."""
  s = jnp.where(jnp.abs(x[:, 0]) < 0.5, params["sigma"], 0.0)
  return s, jnp.broadcast_to(params["rgb"], x.shape), jnp.zeros_like(x)


def blob_field(params, x):
  """Smooth Gaussian blob with an affine-sigmoid albedo (all differentiable)."""
  d = x - params["centre"]
  r2 = jnp.sum(d * d, axis=-1)
  sigma = params["amp"] * jnp.exp(-0.5 * r2 / params["scale"] ** 2)
  albedo = jax.nn.sigmoid(x @ params["w"] + params["b"])
  normals = d / jnp.sqrt(r2 + 0.25)[:, None]  # smooth (not unit) normals
  return sigma, albedo, normals


_LIGHT_DIR = np.array([1.0, 2.0, 1.5]) / np.linalg.norm([1.0, 2.0, 1.5])


def lit_blob_field(params, x):
  """blob_field whose normals face a distant light (n . l > 0: no shading kink)."""
  sigma, albedo, normals = blob_field(params, x)
  return sigma, albedo, jnp.asarray(_LIGHT_DIR, jnp.float32) + 0.3 * normals


def ball_field(params, x):
  """Sharp-edged ball (for empty-space skipping: no long density tails)."""
  d = jnp.linalg.norm(x - params["centre"], axis=-1)
  sigma = params["amp"] * jax.nn.sigmoid((params["scale"] - d) * 40.0)
  albedo = jax.nn.sigmoid(x @ params["w"] + params["b"])
  return sigma, albedo, (x - params["centre"]) / jnp.maximum(d, 1e-3)[:, None]


def empty_field(params, x):
  del params
  return jnp.zeros(x.shape[:1]), jnp.zeros_like(x), jnp.zeros_like(x)


def _blob_params(centre=(0.0, 0.0, 0.0), amp=20.0, scale=0.3, seed=0):
  rng = np.random.default_rng(seed)
  return dict(centre=jnp.asarray(centre, jnp.float32), amp=jnp.float32(amp),
              scale=jnp.float32(scale),
              w=jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
              b=jnp.asarray(rng.normal(size=3), jnp.float32))


def _camera_rays(h=16, w=16, dist=3.0, elev=20.0, az=30.0, fovy=50.0, target=(0, 0, 0)):
  cams = camera.orbit_cameras(1, dist, elev, fovy, target=target, azimuth_start_deg=az)
  cam = jax.tree.map(lambda a: a[0], cams)
  return render.camera_rays(cam, h, w)


def _np_chord(o, d, radius, n=200001):
  """Length of a ray inside [-r, r]^3 by brute-force dense sampling (reference)."""
  t = np.linspace(0, 20, n)
  x = o[None] + t[:, None] * d[None]
  inside = np.all(np.abs(x) <= radius, axis=-1)
  return inside.sum() * (t[1] - t[0]), (t[inside][0] if inside.any() else np.nan)


_render = jax.jit(render.render_rays, static_argnums=(0, 5))
_render2 = jax.jit(render.render_two_fields, static_argnums=(0, 2, 7))


# ----------------------------------------------------------------------------
# Volume rendering closed forms.
# ----------------------------------------------------------------------------


def test_constant_density_box_closed_form():
  rng = np.random.default_rng(0)
  sigma = 0.7
  spec = render.RenderSpec(num_samples=256, sample_budget=64)
  origins = rng.normal(size=(12, 3))
  origins = 5.0 * origins / np.linalg.norm(origins, axis=-1, keepdims=True)
  targets = rng.uniform(-1.5, 1.5, (12, 3))
  dirs = targets - origins
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  params = dict(sigma=jnp.float32(sigma), rgb=jnp.array([0.2, 0.5, 0.9]))
  out = _render(constant_field, params, jnp.asarray(origins, jnp.float32),
                 jnp.asarray(dirs, jnp.float32), jnp.zeros(3), spec)
  for i in range(12):
    chord, t0 = _np_chord(origins[i], dirs[i], 2.0)
    opacity = 1.0 - math.exp(-sigma * chord)
    assert float(out.opacity[i]) == pytest.approx(opacity, abs=2e-4)
    # weights sum to opacity; rgb = opacity * colour over a black background
    assert float(out.weights[i].sum()) == pytest.approx(float(out.opacity[i]), abs=1e-6)
    np.testing.assert_allclose(out.rgb[i], opacity * np.array([0.2, 0.5, 0.9]), atol=2e-4)
    # transmittance before each interval: exp(-sigma (t_start - t0))
    m = np.asarray(out.mask[i])
    tk = np.asarray(out.t[i])[m]
    w = np.asarray(out.weights[i])[m]
    a = np.asarray(out.alpha[i])[m]
    step = spec.step
    starts = t0 + step * np.arange(m.sum())
    np.testing.assert_allclose(w / a, np.exp(-sigma * (starts - t0)), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(tk[:-1], starts[:-1] + 0.5 * step, atol=2e-4)
    # depth = integral of t sigma exp(-sigma (t - t0)) over the chord
    want = t0 * opacity + (1.0 - math.exp(-sigma * chord) * (1 + sigma * chord)) / sigma
    assert float(out.depth[i]) == pytest.approx(want, abs=2 * step)


def test_slab_transmittance_closed_form():
  sigma, spec = 3.0, render.RenderSpec(num_samples=512, sample_budget=128)
  rng = np.random.default_rng(1)
  yz = rng.uniform(-1.8, 1.8, (8, 2))
  o = np.concatenate([np.full((8, 1), -6.0), yz], -1).astype(np.float32)
  d = np.tile([[1.0, 0.0, 0.0]], (8, 1)).astype(np.float32)
  params = dict(sigma=jnp.float32(sigma), rgb=jnp.ones(3))
  bg = jnp.array([0.0, 1.0, 0.0])
  out = _render(slab_field, params, jnp.asarray(o), jnp.asarray(d), bg, spec)
  want = 1.0 - math.exp(-sigma * 1.0)
  np.testing.assert_allclose(out.opacity, want, atol=sigma * spec.step)
  np.testing.assert_allclose(out.weights.sum(-1), out.opacity, atol=1e-6)
  # background shows through with weight (1 - opacity)
  np.testing.assert_allclose(out.rgb[:, 1], 1.0, atol=1e-5)
  np.testing.assert_allclose(out.rgb[:, 0], out.opacity, atol=1e-5)
  # depth: slab entered at t = 5.5
  want_depth = 5.5 * want + (1 - math.exp(-sigma) * (1 + sigma)) / sigma
  np.testing.assert_allclose(out.depth, want_depth, atol=2 * spec.step)


def test_rays_missing_box_render_background():
  spec = render.RenderSpec(num_samples=32, sample_budget=8)
  o = jnp.array([[5.0, 5.0, 5.0]])
  d = jnp.array([[1.0, 0.0, 0.0]])
  params = dict(sigma=jnp.float32(10.0), rgb=jnp.ones(3))
  out = render.render_rays(constant_field, params, o, d, jnp.array([0.3, 0.2, 0.1]), spec)
  assert float(out.opacity[0]) == 0.0
  np.testing.assert_allclose(out.rgb[0], [0.3, 0.2, 0.1])
  assert not bool(out.mask.any())


# ----------------------------------------------------------------------------
# Eq. 6 compositing.
# ----------------------------------------------------------------------------


def test_composite_two_fields_matches_formula():
  rng = np.random.default_rng(2)
  a_h = rng.uniform(0, 1, (4, 7)).astype(np.float32)
  a_o = rng.uniform(0, 1, (4, 7)).astype(np.float32)
  a_h[0, 0] = a_o[0, 0] = 0.0
  c_h = rng.uniform(0, 1, (4, 7, 3)).astype(np.float32)
  c_o = rng.uniform(0, 1, (4, 7, 3)).astype(np.float32)
  den = np.maximum(a_h + a_o, 1e-6)[..., None]
  want_c = (a_h[..., None] * c_h + a_o[..., None] * c_o) / den
  a, c = render.composite_two_fields(a_h, c_h, a_o, c_o, mode="sum_clamped")
  np.testing.assert_allclose(a, np.clip(a_h + a_o, 0, 1), atol=1e-6)
  np.testing.assert_allclose(c, want_c, atol=1e-5)
  assert (np.asarray(a) == 1.0).any()  # the clamp was exercised
  a, c = render.composite_two_fields(a_h, c_h, a_o, c_o, mode="union")
  np.testing.assert_allclose(a, 1 - (1 - a_h) * (1 - a_o), atol=1e-6)
  np.testing.assert_allclose(c, want_c, atol=1e-5)
  np.testing.assert_allclose(c[0, 0], 0.0)
  with pytest.raises(ValueError, match="alpha_mode|mode"):
    render.composite_two_fields(a_h, c_h, a_o, c_o, mode="max")


def test_composite_stop_gradient_switch():
  a_h, a_o = jnp.array([0.3, 0.2]), jnp.array([0.1, 0.4])
  c_h, c_o = jnp.full((2, 3), 0.9), jnp.full((2, 3), 0.1)

  def loss(a_h, c_h, a_o, stop):
    a, c = render.composite_two_fields(a_h, c_h, a_o, c_o, stop_human_grad=stop)
    return jnp.sum(a) + jnp.sum(a[:, None] * c)

  g_on = jax.grad(loss, argnums=(0, 1, 2))(a_h, c_h, a_o, True)
  g_off = jax.grad(loss, argnums=(0, 1, 2))(a_h, c_h, a_o, False)
  assert float(jnp.abs(g_on[0]).sum()) == 0.0 and float(jnp.abs(g_on[1]).sum()) == 0.0
  assert float(jnp.abs(g_on[2]).sum()) > 0.0
  assert float(jnp.abs(g_off[0]).sum()) > 0.0 and float(jnp.abs(g_off[1]).sum()) > 0.0


@pytest.mark.parametrize("mode", ["sum_clamped", "union"])
def test_two_fields_with_empty_object_equal_single_field(mode):
  spec = render.RenderSpec(num_samples=48, sample_budget=48, alpha_mode=mode)
  o, d = _camera_rays(6, 6)
  p = _blob_params(amp=15.0)
  bg = jnp.array([0.1, 0.2, 0.3])
  sh = render.Shading(jnp.array([2.0, 1.0, 2.0]), jnp.float32(0.3), jnp.float32(0.7),
                      jnp.float32(0.0))
  single = _render(blob_field, p, o, d, bg, spec, shading=sh)
  two = _render2(blob_field, p, empty_field, None, o, d, bg, spec, shading=sh)
  assert float(single.opacity.max()) > 0.5
  for name in ("rgb", "opacity", "depth", "weights", "normal"):
    np.testing.assert_allclose(getattr(two, name), getattr(single, name), atol=2e-5,
                               err_msg=name)


def test_union_mode_equals_summed_density():
  # Physically exact mode: two constant fields == one field with summed density.
  spec = render.RenderSpec(num_samples=64, sample_budget=64, alpha_mode="union")
  o, d = _camera_rays(4, 4)
  ph = dict(sigma=jnp.float32(0.4), rgb=jnp.array([1.0, 0.0, 0.0]))
  po = dict(sigma=jnp.float32(1.2), rgb=jnp.array([0.0, 0.0, 1.0]))
  two = _render2(constant_field, ph, constant_field, po, o, d, jnp.zeros(3), spec)
  both = dict(sigma=jnp.float32(1.6), rgb=jnp.array([0.25, 0.0, 0.75]))
  one = _render(constant_field, both, o, d, jnp.zeros(3), spec)
  np.testing.assert_allclose(two.opacity, one.opacity, atol=1e-5)
  np.testing.assert_allclose(two.weights, one.weights, atol=1e-6)
  # colour: per-sample alpha-weighted mix of the two colours (NumPy re-derivation)
  a_h, a_o = np.asarray(two.aux["alpha_h"]), np.asarray(two.aux["alpha_o"])
  np.testing.assert_allclose(two.alpha, 1 - (1 - a_h) * (1 - a_o), atol=1e-6)
  mix = (a_h[..., None] * [1.0, 0.0, 0.0] + a_o[..., None] * [0.0, 0.0, 1.0]) / np.maximum(
      a_h + a_o, 1e-6)[..., None]
  np.testing.assert_allclose(two.rgb, np.einsum("rs,rsc->rc", np.asarray(two.weights), mix),
                             atol=1e-5)
  assert np.ptp(np.asarray(two.rgb)[:, 0]) > 0.0
  np.testing.assert_allclose(two.aux["sigma_h"] + two.aux["sigma_o"], two.sigma)


def test_two_field_render_stop_human_grad():
  o, d = _camera_rays(4, 4)
  ph = _blob_params(centre=(0.0, 0.0, 0.0), seed=1)
  po = _blob_params(centre=(0.3, 0.2, 0.0), seed=2)

  def loss(ph, po, stop):
    spec = render.RenderSpec(num_samples=32, sample_budget=32, stop_human_grad=stop)
    out = render.render_two_fields(blob_field, ph, blob_field, po, o, d, jnp.ones(3), spec)
    return jnp.sum(out.rgb * jnp.array([0.3, -0.5, 0.8]))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  gh_on, go_on = grad(ph, po, True)
  gh_off, _ = grad(ph, po, False)
  norm = lambda g: sum(float(jnp.abs(v).sum()) for v in jax.tree.leaves(g))
  assert norm(gh_on) == 0.0
  assert norm(go_on) > 1e-4
  assert norm(gh_off) > 1e-4


# Eq. 6 under chex.variants: jitted, eager, device-placed inputs, and (for the
# per-sample compositing, a pure array function) pmapped over the 4 forced host
# devices. Static arguments are bound with functools.partial.
_VARIANTS = dict(with_jit=True, without_jit=True, with_device=True, with_pmap=True)


class CompositingVariantsTest(chex.TestCase):

  @chex.variants(**_VARIANTS)
  def test_composite_two_fields_matches_formula(self):
    rng = np.random.default_rng(2)
    a_h, a_o = (rng.uniform(0, 1, (4, 7)).astype(np.float32) for _ in range(2))
    a_h[0, 0] = a_o[0, 0] = 0.0
    c_h, c_o = (rng.uniform(0, 1, (4, 7, 3)).astype(np.float32) for _ in range(2))
    want_c = (a_h[..., None] * c_h + a_o[..., None] * c_o) / np.maximum(a_h + a_o,
                                                                      1e-6)[..., None]
    want_a = {"sum_clamped": np.clip(a_h + a_o, 0, 1), "union": 1 - (1 - a_h) * (1 - a_o)}
    for mode, want in want_a.items():
      a, c = self.variant(functools.partial(render.composite_two_fields, mode=mode))(
          a_h, c_h, a_o, c_o)
      chex.assert_shape(a, (4, 7))
      chex.assert_shape(c, (4, 7, 3))
      chex.assert_tree_all_finite((a, c))
      np.testing.assert_allclose(a, want, atol=1e-6, err_msg=mode)
      np.testing.assert_allclose(c, want_c, atol=1e-5, err_msg=mode)
      np.testing.assert_allclose(c[0, 0], 0.0)

  @chex.variants(**_VARIANTS)
  def test_composite_stop_gradient_switch(self):
    a_h, a_o = jnp.array([0.3, 0.2]), jnp.array([0.1, 0.4])
    c_h, c_o = jnp.full((2, 3), 0.9), jnp.full((2, 3), 0.1)
    for stop in (True, False):
      comp = self.variant(functools.partial(render.composite_two_fields, stop_human_grad=stop))

      def loss(a_h, c_h, a_o, comp=comp):
        a, c = comp(a_h, c_h, a_o, c_o)
        return jnp.sum(a) + jnp.sum(a[:, None] * c)

      g = jax.grad(loss, argnums=(0, 1, 2))(a_h, c_h, a_o)
      chex.assert_shape(g, [(2,), (2, 3), (2,)])
      chex.assert_tree_all_finite(g)
      human = float(jnp.abs(g[0]).sum() + jnp.abs(g[1]).sum())
      assert (human == 0.0) if stop else (human > 0.0)
      assert float(jnp.abs(g[2]).sum()) > 0.0

  @chex.variants(with_jit=True, without_jit=True, with_device=True)
  def test_union_two_field_render_equals_summed_density(self):
    spec = render.RenderSpec(num_samples=32, sample_budget=32, alpha_mode="union")
    o, d = _camera_rays(3, 3)
    ph = dict(sigma=jnp.float32(0.4), rgb=jnp.array([1.0, 0.0, 0.0]))
    po = dict(sigma=jnp.float32(1.2), rgb=jnp.array([0.0, 0.0, 1.0]))
    two = self.variant(lambda ph, po, o, d: render.render_two_fields(
        constant_field, ph, constant_field, po, o, d, jnp.zeros(3), spec))(ph, po, o, d)
    chex.assert_shape([two.rgb, two.normal], (9, 3))
    chex.assert_shape([two.opacity, two.depth], (9,))
    chex.assert_shape([two.weights, two.alpha], (9, 32))
    chex.assert_tree_all_finite((two.rgb, two.opacity, two.depth, two.weights, two.alpha))
    both = dict(sigma=jnp.float32(1.6), rgb=jnp.array([0.25, 0.0, 0.75]))
    one = _render(constant_field, both, o, d, jnp.zeros(3), spec)
    np.testing.assert_allclose(two.opacity, one.opacity, atol=1e-5)
    np.testing.assert_allclose(two.weights, one.weights, atol=1e-6)
    a_h, a_o = np.asarray(two.aux["alpha_h"]), np.asarray(two.aux["alpha_o"])
    np.testing.assert_allclose(two.alpha, 1 - (1 - a_h) * (1 - a_o), atol=1e-6)


# ----------------------------------------------------------------------------
# Gradients vs finite differences.
# ----------------------------------------------------------------------------


def test_gradients_match_finite_differences():
  spec = render.RenderSpec(num_samples=96, sample_budget=96)
  o, d = _camera_rays(6, 6, dist=2.5)
  p = _blob_params(amp=8.0, scale=0.5, seed=3)
  sh = render.Shading(jnp.asarray(100.0 * _LIGHT_DIR, jnp.float32), jnp.float32(0.2),
                      jnp.float32(0.8), jnp.float32(0.0))
  proj = jnp.asarray(np.random.default_rng(4).normal(size=(36, 3)), jnp.float32)

  def loss(p):
    out = _render(lit_blob_field, p, o, d, jnp.array([0.5, 0.5, 0.5]), spec, shading=sh)
    return jnp.sum(out.rgb * proj) + jnp.sum(out.depth) * 0.1

  grads = jax.grad(loss)(p)
  loss_j = jax.jit(loss)
  rng = np.random.default_rng(5)
  for name in ("centre", "amp", "scale", "w", "b"):
    v = rng.normal(size=np.shape(p[name])).astype(np.float32)
    eps = 3e-3
    plus = dict(p, **{name: p[name] + eps * v})
    minus = dict(p, **{name: p[name] - eps * v})
    fd = (float(loss_j(plus)) - float(loss_j(minus))) / (2 * eps)
    an = float(jnp.sum(grads[name] * v))
    assert an == pytest.approx(fd, rel=1e-2, abs=2e-3), name


# ----------------------------------------------------------------------------
# Empty-space skipping.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sparse_scene():
  p = _blob_params(centre=(0.4, -0.3, 0.2), amp=60.0, scale=0.4, seed=6)
  density = lambda x: ball_field(p, x)[0]
  ospec = occ.OccupancySpec(resolution=32, warmup_steps=0, render_step=math.sqrt(3) * 4 / 128)
  grid = occ.init_occupancy(ospec)
  upd = jax.jit(lambda g, k: occ.update_occupancy(g, density, k, 1000, ospec))
  for i in range(10):
    grid = upd(grid, jax.random.PRNGKey(i))
  return p, grid


def test_skipped_render_equals_dense_render():
  p, grid = _sparse_scene()
  assert float(occ.occupied_fraction(grid)) < 0.05
  o, d = _camera_rays(24, 24, target=(0.4, -0.3, 0.2), dist=2.5)
  dense_spec = render.RenderSpec(num_samples=128, sample_budget=128)
  skip_spec = render.RenderSpec(num_samples=128, sample_budget=16, alpha_threshold=0.0,
                                   early_stop_eps=0.0)  # skipping alone
  bg = jnp.array([1.0, 1.0, 1.0])
  dense = _render(ball_field, p, o, d, bg, dense_spec)
  skip = _render(ball_field, p, o, d, bg, skip_spec, occupancy=grid)
  assert int(skip.num_evaluated) == 24 * 24 * 16 and int(dense.num_evaluated) == 24 * 24 * 128
  assert int(skip.num_dropped) == 0
  assert float(dense.opacity.max()) > 0.9 and float(dense.opacity.min()) < 0.01
  mse = float(jnp.mean((dense.rgb - skip.rgb) ** 2))
  assert -10 * math.log10(max(mse, 1e-12)) > 40.0
  np.testing.assert_allclose(skip.opacity, dense.opacity, atol=5e-2)
  # per-sample outputs keep the dense [R, N] layout; skipped samples have zero weight
  assert skip.weights.shape == dense.weights.shape == (576, 128)
  assert float(jnp.abs(jnp.where(skip.mask, 0.0, skip.weights)).max()) == 0.0
  np.testing.assert_allclose(skip.points, dense.points, atol=1e-6)


def _np_water_fill(mask, budget):
  """Reference: occupied samples ordered by (rank within ray, ray), first M kept."""
  rays, ks = np.nonzero(mask)
  rank = np.cumsum(mask, axis=1)[rays, ks] - 1
  order = np.lexsort((rays, rank))[:budget]
  return np.sort(rays[order] * mask.shape[1] + ks[order])


def test_compact_indices_matches_numpy():
  rng = np.random.default_rng(7)
  mask = rng.uniform(size=(6, 9)) < rng.uniform(0.1, 0.9, (6, 1))
  compact = jax.jit(render.compact_indices, static_argnums=1)
  for budget in (7, 20, 54):   # overflow with a partial level, overflow, no overflow
    flat, valid, dropped = compact(jnp.asarray(mask), budget)
    want = _np_water_fill(mask, budget)
    n = len(want)
    np.testing.assert_array_equal(np.asarray(flat)[:n], want)
    np.testing.assert_array_equal(np.asarray(valid), np.arange(budget) < n)
    assert int(dropped) == max(mask.sum() - budget, 0)


def test_budget_overflow_drops_deepest_samples():
  spec = render.RenderSpec(num_samples=64, sample_budget=8)
  o, d = _camera_rays(4, 4)
  grid = occ.init_occupancy(occ.OccupancySpec(resolution=8))  # all occupied
  params = dict(sigma=jnp.float32(0.5), rgb=jnp.ones(3))
  out = _render(constant_field, params, o, d, jnp.zeros(3), spec, occupancy=grid)
  dense = _render(constant_field, params, o, d, jnp.zeros(3), spec)
  assert int(out.num_dropped) > 0
  assert int(out.mask.sum()) == 16 * 8
  m, inbox = np.asarray(out.mask), np.asarray(dense.mask)
  for i in range(16):  # kept samples are a front prefix of the in-box samples
    k = m[i].sum()
    np.testing.assert_array_equal(m[i], inbox[i] & (np.cumsum(inbox[i]) <= k))


def test_field_chunks_match_unchunked_values_and_grads():
  o, d = _camera_rays(4, 4)
  p = _blob_params(seed=9)
  grid = occ.init_occupancy(occ.OccupancySpec(resolution=8))

  def loss(p, chunks):
    spec = render.RenderSpec(num_samples=32, sample_budget=8, field_chunks=chunks)
    out = render.render_rays(blob_field, p, o, d, jnp.ones(3), spec, occupancy=grid)
    return jnp.sum(out.rgb * jnp.array([1.0, -2.0, 0.5])) + jnp.sum(out.depth), out.rgb

  f = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (l1, rgb1), g1 = f(p, 1)
  (l3, rgb3), g3 = f(p, 3)   # 128 points in 3 chunks: exercises the padding
  np.testing.assert_allclose(rgb3, rgb1, atol=1e-6)
  for k in g1:
    np.testing.assert_allclose(g3[k], g1[k], rtol=1e-4, atol=1e-6)
  assert float(jnp.abs(g1["amp"])) > 0


# ----------------------------------------------------------------------------
# Shading.
# ----------------------------------------------------------------------------


def test_shade_matches_numpy():
  rng = np.random.default_rng(8)
  alb = rng.uniform(size=(20, 3)).astype(np.float32)
  n = rng.normal(size=(20, 3)).astype(np.float32)
  n /= np.linalg.norm(n, axis=-1, keepdims=True)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  light = np.array([1.0, -2.0, 3.0], np.float32)
  for tex in (0.0, 1.0):
    sh = render.Shading(jnp.asarray(light), jnp.float32(0.1), jnp.float32(0.9), jnp.float32(tex))
    got = np.asarray(render.shade(alb, n, x, jnp.asarray(light), sh))
    ldir = light - x
    ldir /= np.linalg.norm(ldir, axis=-1, keepdims=True)
    lum = 0.1 + 0.9 * np.maximum((n * ldir).sum(-1, keepdims=True), 0)
    want = np.broadcast_to(np.clip(lum, 0, 1), alb.shape) if tex else np.clip(alb * lum, 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
  sh = render.albedo_shading()
  np.testing.assert_allclose(render.shade(alb, n, x, sh.light_position, sh), alb, atol=1e-7)


def test_sample_shading():
  """Official DiffuseWithPointLightMaterial: albedo 25 %, textureless 37.5 %, diffuse
  37.5 %; soft shading diffuse ~ U(0, 1), ambient = 1 - diffuse; albedo while ambient_only."""
  spec = config_lib.shading_spec(config_lib.parse(hoi.get_config()))
  n = 20000
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  light = jnp.array([1.0, 0.0, 0.0])
  amb = jax.vmap(lambda k: render.sample_shading(k, light, True, spec))(keys)
  np.testing.assert_allclose(amb.ambient, 1.0)
  np.testing.assert_allclose(amb.diffuse, 0.0)
  np.testing.assert_allclose(amb.textureless, 0.0)
  s = jax.vmap(lambda k: render.sample_shading(k, light, False, spec))(keys)
  mode = np.asarray(render.shading_mode(s))
  want = {0: 1 - 0.75, 1: 0.75 * 0.5, 2: 0.75 * 0.5}      # the official probability tree
  for m, p in want.items():
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(np.mean(mode == m) - p) < 4 * sigma, (m, np.mean(mode == m), p)
  shaded = mode > 0
  d, a = np.asarray(s.diffuse)[shaded], np.asarray(s.ambient)[shaded]
  np.testing.assert_allclose(a, 1.0 - d, atol=1e-6)
  assert d.min() >= 0.0 and d.max() <= 1.0
  np.testing.assert_allclose(np.quantile(d, [0.1, 0.5, 0.9]), [0.1, 0.5, 0.9], atol=0.02)
  np.testing.assert_allclose(np.asarray(s.ambient)[~shaded], 1.0)
  np.testing.assert_allclose(np.asarray(s.diffuse)[~shaded], 0.0)
  hard = jax.vmap(lambda k: render.sample_shading(k, light, False,
                                                  render.ShadingSpec(soft=False)))(keys[:64])
  hm = np.asarray(render.shading_mode(hard))
  assert np.all(np.asarray(hard.ambient)[hm > 0] == pytest.approx(0.1))
  assert np.all(np.asarray(hard.diffuse)[hm > 0] == pytest.approx(0.9))


def test_normals_to_image():
  n = jnp.array([[0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
  img = render.normals_to_image(n, jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(img, [[0.5, 0.5, 1.0], [1.0, 1.0, 1.0]], atol=1e-6)


# ----------------------------------------------------------------------------
# Compilation, devices, config, and the real field.
# ----------------------------------------------------------------------------


def test_jit_compiles_once():
  traces = []

  def counted(params, x):
    traces.append(1)
    return blob_field(params, x)

  spec = render.RenderSpec(num_samples=32, sample_budget=8)
  f = jax.jit(render.render_rays, static_argnums=(0, 5))
  grid = occ.init_occupancy(occ.OccupancySpec(resolution=8))
  for i in range(3):
    o, d = _camera_rays(4, 4, az=30.0 * i)
    p = _blob_params(seed=i)
    sh = render.sample_shading(jax.random.PRNGKey(i), jnp.ones(3), i == 0, render.ShadingSpec())
    out = f(counted, p, o, d, jnp.ones(3), spec, occupancy=grid,
            key=jax.random.PRNGKey(i), shading=sh)
    out.rgb.block_until_ready()
  assert len(traces) == 1


def test_pmap_over_devices_matches_single_device():
  n_dev = jax.local_device_count()
  if n_dev < 4:
    pytest.skip("needs the 4 forced host devices of conftest.py")
  _, grid = _sparse_scene()
  p = _blob_params(centre=(0.4, -0.3, 0.2), amp=60.0, scale=0.4, seed=6)
  o, d = _camera_rays(8, 8, target=(0.4, -0.3, 0.2), dist=2.5)
  spec = render.RenderSpec(num_samples=128, sample_budget=32)
  bg = jnp.array([0.2, 0.4, 0.6])
  fn = functools.partial(render.render_rays, ball_field, spec=spec)
  single = jax.jit(lambda p, o, d, g: fn(p, o, d, bg, occupancy=g))(p, o, d, grid)
  pm = jax.pmap(lambda p, o, d, g: fn(p, o, d, bg, occupancy=g).rgb,
                in_axes=(None, 0, 0, None))
  rgb = pm(p, o.reshape(4, -1, 3), d.reshape(4, -1, 3), grid).reshape(-1, 3)
  np.testing.assert_allclose(rgb, single.rgb, atol=1e-5)
  assert float(single.opacity.max()) > 0.5


def test_spec_from_config_and_errors():
  cfg = hoi.get_config()
  spec = config_lib.render_spec(config_lib.parse(cfg))
  assert spec.num_samples == 512 and spec.sample_budget == 64 and spec.radius == 2.0
  assert spec.field_chunks == 1
  assert spec.step == pytest.approx(math.sqrt(3) * 4 / 512)
  assert spec.alpha_mode == "sum_clamped" and spec.stop_human_grad
  with pytest.raises(ValueError, match="alpha_mode"):
    render.RenderSpec(alpha_mode="max")
  with pytest.raises(ValueError, match="sample_budget"):
    render.RenderSpec(num_samples=32, sample_budget=64)
  with pytest.raises(ValueError, match="field_chunks"):
    render.RenderSpec(field_chunks=0)


def test_real_field_two_field_render_smoke():
  field = pytest.importorskip("interfusion_jax.nerf.field")
  cfg = hoi.get_config("smoke")
  fspec = config_lib.field_spec(config_lib.parse(cfg))
  fn = lambda p, x: field.field_forward_with_normals(p, x, fspec)
  kh, ko = jax.random.split(jax.random.PRNGKey(0))
  ph, po = field.init_field(kh, fspec), field.init_field(ko, fspec)
  spec = config_lib.render_spec(config_lib.parse(cfg))
  o, d = _camera_rays(8, 8)
  out = jax.jit(lambda ph, po: render.render_two_fields(fn, ph, fn, po, o, d, jnp.ones(3), spec))(ph, po)
  assert np.isfinite(np.asarray(out.rgb)).all()
  # The blob bias makes the centre opaque and the corners see background.
  op = np.asarray(out.opacity).reshape(8, 8)
  assert op[3:5, 3:5].min() > 0.9 and op[0, 0] < 0.5
