"""The training cameras and light against the official release's sampler.

References (InterFusion's own threestudio copy, read for facts only):
``InterGen/threestudio/data/uncond.py`` ``RandomCameraIterableDataset.collate``
(elevation mixture :102-126, batch_uniform_azimuth :130-138, perturbations
:174-189, magic3d light :217-247, c2w :253-264) and
``InterGen/threestudio/systems/interfusion.py`` ``forward`` (the derived
cameras keep ``c_mtx``). Every expected value below is re-derived here in NumPy
(closed-form mixture moments / CDF, the local light frame), not taken from
``nerf.camera``.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.nerf import camera

N = 100_000
SPEC = camera.CameraSpec()
NO_PERTURB = dataclasses.replace(SPEC, camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)


@functools.lru_cache(maxsize=None)
def _sampler(spec):
  """One compilation per spec (and draw count): index and count are traced."""
  return jax.jit(jax.vmap(lambda k, i, c: camera.sample_camera(k, spec, i, c)))


def _draw(spec, n=N, seed=0, index=None, count=1):
  keys = jax.random.split(jax.random.PRNGKey(seed), n)
  index = np.zeros(n, np.int32) if index is None else np.asarray(index, np.int32)
  cams = _sampler(spec)(keys, index, np.full(n, count, np.int32))
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), cams)


@pytest.fixture(scope="module")
def cams():
  return _draw(SPEC)


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --- Elevation: the official mixture. ------------------------------------------

def _mixture_reference(lo_deg, hi_deg, p_sphere):
  """Mean, variance and CDF (radians) of the official elevation mixture.

  Uniform part: U(lo, hi) in degrees. Sphere part, as the official code writes
  it: sin(el) = 2 v - 1 with v ~ U(p0, p1), p = (deg + 90) / 180 -- linear in
  DEGREES, so its support is [asin(2 p0 - 1), asin(2 p1 - 1)] (for (-30, 90):
  [-19.47, 90] deg, not [-30, 90]) with density cos(el) / (2 (p1 - p0)).
  """
  a, b = math.radians(lo_deg), math.radians(hi_deg)
  p0, p1 = (lo_deg + 90.0) / 180.0, (hi_deg + 90.0) / 180.0
  a_s, b_s = math.asin(2 * p0 - 1), math.asin(2 * p1 - 1)
  s = 2 * (p1 - p0)                    # = sin(b_s) - sin(a_s)
  m_u, e2_u = (a + b) / 2, (b ** 3 - a ** 3) / (3 * (b - a))
  f1 = lambda x: x * math.sin(x) + math.cos(x)                        # int x cos x
  f2 = lambda x: x * x * math.sin(x) + 2 * x * math.cos(x) - 2 * math.sin(x)  # int x^2 cos x
  m_s, e2_s = (f1(b_s) - f1(a_s)) / s, (f2(b_s) - f2(a_s)) / s
  mean = (1 - p_sphere) * m_u + p_sphere * m_s
  var = (1 - p_sphere) * e2_u + p_sphere * e2_s - mean ** 2
  cdf = lambda x: ((1 - p_sphere) * np.clip((x - a) / (b - a), 0, 1)
                   + p_sphere * np.clip((np.sin(x) - math.sin(a_s)) / s, 0, 1))
  return mean, var, cdf


def _quantiles_of(cdf, lo_deg, hi_deg, qs):
  grid = np.linspace(math.radians(lo_deg), math.radians(hi_deg), 200_001)
  return np.interp(qs, cdf(grid), grid)


QS = np.array([0.05, 0.25, 0.5, 0.75, 0.95])


def test_default_elevation_is_the_official_mixture(cams):
  assert SPEC.elevation_range_deg == (-30.0, 90.0) and SPEC.elevation_sphere_prob == 0.5
  el = cams.elevation
  assert el.min() >= math.radians(-30) - 1e-6 and el.max() <= math.radians(90) + 1e-6
  mean, var, cdf = _mixture_reference(-30.0, 90.0, 0.5)
  # Standard errors at N = 1e5: mean ~2e-3 rad, variance ~1e-3, quantile ~3e-3 rad.
  assert el.mean() == pytest.approx(mean, abs=0.01)
  assert el.var() == pytest.approx(var, abs=0.01)
  want = _quantiles_of(cdf, -30.0, 90.0, QS)
  np.testing.assert_allclose(np.quantile(el, QS), want, atol=math.radians(1.0))
  # The ECDF at the reference quantiles (max binomial s.e. 1.6e-3).
  np.testing.assert_allclose([np.mean(el <= x) for x in want], QS, atol=0.008)
  # Sanity of the reference itself: a NumPy Monte Carlo of the official formula.
  rng = np.random.default_rng(1)
  u, pick = rng.random(400_000), rng.random(400_000) < 0.5
  p0, p1 = 60.0 / 180.0, 180.0 / 180.0
  ref = np.where(pick, np.arcsin(2 * (u * (p1 - p0) + p0) - 1), np.radians(u * 120.0 - 30.0))
  assert ref.mean() == pytest.approx(mean, abs=0.005)
  np.testing.assert_allclose(np.quantile(ref, QS), want, atol=math.radians(0.5))


@pytest.mark.parametrize("p_sphere", [0.0, 1.0])
def test_elevation_sphere_prob_extremes(p_sphere):
  spec = dataclasses.replace(NO_PERTURB, elevation_sphere_prob=p_sphere)
  el = _draw(spec, n=20_000, seed=2).elevation   # quantile s.e. <= 0.4 deg
  _, _, cdf = _mixture_reference(-30.0, 90.0, p_sphere)
  want = _quantiles_of(cdf, -30.0, 90.0, QS)
  np.testing.assert_allclose(np.quantile(el, QS), want, atol=math.radians(1.5))
  if p_sphere == 0.0:   # plain uniform in degrees
    np.testing.assert_allclose(np.degrees(want), -30.0 + 120.0 * QS, atol=1e-3)
  else:                 # the official sphere branch stops at asin(-1/3) = -19.47 deg
    assert np.degrees(el.min()) == pytest.approx(math.degrees(math.asin(-1 / 3)), abs=0.5)
    assert np.degrees(el.min()) >= math.degrees(math.asin(-1 / 3)) - 1e-3


# --- Azimuth: batch_uniform_azimuth. -------------------------------------------

def test_stratified_azimuth_each_camera_in_its_stratum():
  b = 8
  width = 360.0 / b
  index = np.arange(N) % b                       # N / b = 12500 cameras per slot
  az_all = np.degrees(_draw(SPEC, seed=10, index=index, count=b).azimuth)
  for i in range(b):
    az = az_all[index == i]
    lo = -180.0 + i * width
    assert az.min() >= lo - 1e-3 and az.max() <= lo + width + 1e-3
    assert az.mean() == pytest.approx(lo + width / 2, abs=0.6)   # uniform in it (s.e. 0.12)
    assert np.ptp(az) > 0.99 * width
  # Static Python ints give the same angle as the traced ones.
  f = jax.jit(lambda k: camera.sample_camera(k, SPEC, 3, b).azimuth)
  key = jax.random.split(jax.random.PRNGKey(10), N)[3]
  assert float(f(key)) == pytest.approx(az_all[3] * math.pi / 180, abs=1e-5)


def test_default_azimuth_is_plain_uniform(cams):
  az = np.degrees(cams.azimuth)
  assert az.min() >= -180 - 1e-3 and az.max() <= 180 + 1e-3
  np.testing.assert_allclose(np.quantile(az, QS), -180 + 360 * QS, atol=2.0)


# --- Perturbations, recovered from c2w / position. ------------------------------

def test_position_perturbation_is_uniform_per_axis(cams):
  sph = np.stack([cams.distance * np.cos(cams.elevation) * np.cos(cams.azimuth),
                  cams.distance * np.cos(cams.elevation) * np.sin(cams.azimuth),
                  cams.distance * np.sin(cams.elevation)], -1)
  off = cams.position - sph
  np.testing.assert_allclose(cams.c2w[:, :3, 3], cams.position, atol=1e-6)
  assert np.abs(off).max() <= 0.1 + 1e-5
  np.testing.assert_allclose(off.mean(0), 0.0, atol=1e-3)            # s.e. 1.8e-4
  np.testing.assert_allclose(off.var(0), 0.01 / 3, rtol=0.03)        # U(-0.1, 0.1)
  assert cams.distance.min() >= 2.5 - 1e-5 and cams.distance.max() <= 3.0 + 1e-5


def test_target_perturbation_std(cams):
  # The target t lies on the centre ray; the ray's closest point to the origin
  # is t's component across the ray, whose two image-plane coordinates are
  # N(0, 0.2^2) up to O(|t|^2 / |pos|) terms (the camera's axes turn with t;
  # this biases the up coordinate's mean by ~0.004 at |elevation| < 45 deg and
  # more towards the pole, where the axes are set by t itself).
  keep = np.abs(cams.elevation) < math.radians(45)
  m = cams.c2w[keep, :3, :3]
  fwd = -m[..., 2]
  pos = cams.position[keep]
  closest = pos - np.sum(pos * fwd, -1, keepdims=True) * fwd
  for axis in (0, 1):   # right, up
    comp = np.sum(closest * m[..., axis], -1)
    assert comp.mean() == pytest.approx(0.0, abs=0.01)
    assert comp.std() == pytest.approx(0.2, rel=0.02)


def test_up_perturbation_std(cams):
  # right is orthogonal to the perturbed up e_z + n, so right_z = -right . n,
  # ~ N(0, 0.02^2) while the view is far from vertical (|elevation| < 45 deg).
  m = cams.c2w[:, :3, :3]
  np.testing.assert_allclose(np.einsum("nij,nik->njk", m, m), np.broadcast_to(np.eye(3), m.shape),
                             atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-5)
  keep = np.abs(cams.elevation) < math.radians(45)
  right_z = m[keep, 2, 0]
  assert right_z.mean() == pytest.approx(0.0, abs=1e-3)
  assert right_z.std() == pytest.approx(0.02, rel=0.05)


def test_no_perturbation_is_plain_look_at_origin():
  c = _draw(dataclasses.replace(NO_PERTURB, elevation_sphere_prob=0.0), n=20_000, seed=6)
  # Looks at the origin, level horizon (right _|_ e_z), position on the sphere.
  fwd = -c.c2w[:, :3, 2]
  np.testing.assert_allclose(fwd, -_unit(c.position), atol=2e-5)
  assert np.abs(c.c2w[:, 2, 0]).max() < 1e-5
  assert (c.c2w[:, 2, 1] >= -1e-6).all()        # image up never points down
  np.testing.assert_allclose(np.linalg.norm(c.position, axis=-1), c.distance, rtol=1e-5)


# --- Light: the magic3d strategy. ------------------------------------------------

def _local_frame(pos):
  z = _unit(pos)
  x = _unit(np.stack([z[:, 1], -z[:, 0], np.zeros(len(z))], -1))
  y = _unit(np.cross(z, x))
  return x, y, z


def test_magic3d_light_cone_distance_and_half_circle(cams):
  assert SPEC.light_strategy == "magic3d"
  light = cams.light_position
  d = np.linalg.norm(light, axis=-1)
  assert d.min() >= 0.8 - 1e-5 and d.max() <= 1.5 + 1e-5
  x, y, z = _local_frame(cams.position)         # from the perturbed position, as official
  ang = np.degrees(np.arccos(np.clip(np.sum(light * z, -1) / d, -1, 1)))
  assert ang.min() >= -1e-3 and ang.max() <= 60 + 1e-2
  # local elevation U(30, 90) deg -> angle to the axis U(0, 60) deg.
  np.testing.assert_allclose(np.quantile(ang, QS), 60 * QS, atol=0.6)
  # local azimuth U(0,1) pi - 2 pi in [-2 pi, -pi]: the half circle local_y >= 0.
  az = np.degrees(np.arctan2(np.sum(light * y, -1), np.sum(light * x, -1)))
  assert az.min() >= -1e-2 and az.max() <= 180 + 1e-2
  np.testing.assert_allclose(np.quantile(az, QS), 180 * QS, atol=2.0)


def test_dreamfusion_light_is_still_available():
  spec = dataclasses.replace(SPEC, light_strategy="dreamfusion")
  c = _draw(spec, n=4000, seed=7)
  d = np.linalg.norm(c.light_position, axis=-1)
  assert d.min() >= 0.8 - 1e-5 and d.max() <= 1.5 + 1e-5
  cos = np.sum(c.light_position * _unit(c.position), -1) / d
  assert cos.mean() > 0.5 and cos.min() < 0.3      # not confined to the 60 deg cone
  bad = dataclasses.replace(SPEC, light_strategy="sun")
  with pytest.raises(ValueError, match="light_strategy"):
    jax.eval_shape(lambda k: camera.sample_camera(k, bad), jax.random.PRNGKey(0))


def test_overhead_camera_has_no_nan():
  # Exactly overhead, unperturbed: the degenerate case of look_at and of the
  # magic3d local_x (the exact pole axis is tested below).
  c = _draw(dataclasses.replace(NO_PERTURB, elevation_range_deg=(90.0, 90.0)), n=256, seed=8)
  for a in jax.tree_util.tree_leaves(c):
    assert np.isfinite(a).all()
  d = np.linalg.norm(c.light_position, axis=-1)
  assert d.min() >= 0.8 - 1e-5 and d.max() <= 1.5 + 1e-5
  m = c.c2w[:, :3, :3]
  np.testing.assert_allclose(np.einsum("nij,nik->njk", m, m), np.broadcast_to(np.eye(3), m.shape),
                             atol=1e-5)


_pole_lights = jax.jit(jax.vmap(lambda k, p: camera.magic3d_light_position(k, p, SPEC),
                                in_axes=(0, None)))


@pytest.mark.parametrize("pos", [(0.0, 0.0, 3.0), (0.0, 0.0, -2.5)])
def test_magic3d_light_on_the_pole_axis(pos):
  pos = jnp.asarray(pos, jnp.float32)
  lights = np.asarray(_pole_lights(jax.random.split(jax.random.PRNGKey(9), 256), pos), np.float64)
  assert np.isfinite(lights).all()
  d = np.linalg.norm(lights, axis=-1)
  assert d.min() >= 0.8 - 1e-5 and d.max() <= 1.5 + 1e-5
  cos = lights @ np.asarray(pos / jnp.linalg.norm(pos)) / d
  assert cos.min() >= math.cos(math.radians(60)) - 1e-5


# --- recenter_camera: the official derived cameras keep c_mtx. --------------------

@pytest.mark.parametrize("scale,offset", [(0.7, (0.4, -0.3, 0.2)), (0.8, (0.2, -0.15, 0.1)),
                                          (0.7, (0.0, 0.0, 0.0)), (0.2, (0.0, 0.1, 0.7))])
def test_recenter_keeps_rotation_and_moves_centre_and_light(cams, scale, offset):
  cam = jax.tree_util.tree_map(lambda a: jnp.asarray(a[11], jnp.float32), cams)
  out = camera.recenter_camera(cam, scale, jnp.asarray(offset))
  np.testing.assert_array_equal(np.asarray(out.c2w[:3, :3]), np.asarray(cam.c2w[:3, :3]))
  np.testing.assert_array_equal(np.asarray(out.c2w[3]), [0, 0, 0, 1])
  want = scale * np.asarray(cam.position, np.float64) + np.asarray(offset)
  np.testing.assert_allclose(np.asarray(out.position), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.c2w[:3, 3]), want, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.light_position),
                             np.asarray(cam.light_position) + np.asarray(offset), atol=1e-6)
  assert float(out.distance) == pytest.approx(scale * float(cam.distance), rel=1e-6)
  for f in ("elevation", "azimuth", "fovy"):
    assert float(getattr(out, f)) == float(getattr(cam, f))
  # The old world-up argument is accepted and ignored.
  same = camera.recenter_camera(cam, scale, jnp.asarray(offset), (0.0, 0.0, 1.0))
  np.testing.assert_array_equal(np.asarray(same.c2w), np.asarray(out.c2w))


def test_recenter_batched(cams):
  c = jax.tree_util.tree_map(lambda a: jnp.asarray(a[:5], jnp.float32), cams)
  out = camera.recenter_camera(c, 0.7, jnp.array([0.1, 0.2, 0.3]))
  np.testing.assert_array_equal(np.asarray(out.c2w[:, :3, :3]), np.asarray(c.c2w[:, :3, :3]))
  np.testing.assert_allclose(np.asarray(out.c2w[:, :3, 3]),
                             0.7 * np.asarray(c.position) + np.array([0.1, 0.2, 0.3]), atol=1e-6)
