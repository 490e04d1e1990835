"""Tests for interfusion_jax.nerf.camera against closed-form geometry."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.nerf import camera
from interfusion_jax.stage2 import config as config_lib


def _np(x):
  return np.asarray(x, np.float64)


@pytest.mark.parametrize("eye,target", [
    ((3.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, -2.0, 0.7), (0.3, 0.1, -0.2)),
    ((0.0, 0.0, 3.0), (0.0, 0.0, 0.0)),    # looking straight down (degenerate up)
    ((0.0, 0.0, -2.0), (0.0, 0.0, 0.5)),   # looking straight up
])
def test_look_at_orthonormal_and_aims_at_target(eye, target):
  m = _np(camera.look_at(jnp.array(eye), jnp.array(target)))
  assert m.shape == (4, 4)
  r = m[:3, :3]
  np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-6)
  assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(m[:3, 3], eye, atol=1e-6)
  np.testing.assert_allclose(m[3], [0, 0, 0, 1])
  fwd = np.subtract(target, eye)
  fwd /= np.linalg.norm(fwd)
  np.testing.assert_allclose(-m[:3, 2], fwd, atol=1e-6)   # looks along -z


def test_look_at_keeps_world_up_upright():
  m = _np(camera.look_at(jnp.array([2.0, 1.0, 0.5]), jnp.zeros(3)))
  right, up = m[:3, 0], m[:3, 1]
  assert abs(right[2]) < 1e-6          # horizon stays horizontal
  assert up[2] > 0                      # image up points to +z


def test_spherical_position_closed_form():
  d, el, az = 2.7, 0.3, -1.1
  p = _np(camera.spherical_position(d, el, az))
  np.testing.assert_allclose(
      p, [d * math.cos(el) * math.cos(az), d * math.cos(el) * math.sin(az),
          d * math.sin(el)], rtol=1e-6)
  np.testing.assert_allclose(_np(camera.spherical_position(1.0, 0.0, 0.0)), [1, 0, 0],
                             atol=1e-7)


def test_centre_ray_hits_target_and_fovy_geometry():
  h, w, fovy = 33, 41, math.radians(55.0)   # odd sizes: a pixel sits at the centre
  eye, target = np.array([1.5, -2.0, 1.0]), np.array([0.2, 0.3, -0.1])
  c2w = camera.look_at(jnp.array(eye), jnp.array(target))
  o, d = camera.pinhole_rays(c2w, fovy, h, w)
  o, d = _np(o), _np(d)
  assert o.shape == d.shape == (h, w, 3)
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(o, np.broadcast_to(eye, o.shape), atol=1e-6)
  fwd = (target - eye) / np.linalg.norm(target - eye)
  np.testing.assert_allclose(d[h // 2, w // 2], fwd, atol=1e-6)
  # Pixel-centre angles: tan(angle) = (offset in px) / f, f = H / (2 tan(fovy/2)).
  f = h / (2.0 * math.tan(fovy / 2))
  ang_top = math.acos(np.clip(d[0, w // 2] @ fwd, -1, 1))
  assert ang_top == pytest.approx(math.atan((h / 2 - 0.5) / f), abs=1e-5)
  ang_right = math.acos(np.clip(d[h // 2, -1] @ fwd, -1, 1))
  assert ang_right == pytest.approx(math.atan((w / 2 - 0.5) / f), abs=1e-5)
  # Row 0 is the image top: it leans towards camera-up; column 0 to the left.
  m = _np(c2w)
  assert d[0, w // 2] @ m[:3, 1] > 0 and d[h // 2, 0] @ m[:3, 0] < 0


def test_sampled_cameras_respect_ranges():
  # The official perturbations off (tests/test_nerf_camera_official.py checks them),
  # so the position is the sampled spherical one and the camera aims at 0.
  spec = dataclasses.replace(config_lib.camera_spec(config_lib.parse(hoi.get_config())),
                             camera_perturb=0.0, center_perturb=0.0, up_perturb=0.0)
  cams = jax.jit(jax.vmap(lambda k: camera.sample_camera(k, spec)))(
      jax.random.split(jax.random.PRNGKey(0), 512))
  pos = _np(cams.position)
  dist = np.linalg.norm(pos, axis=-1)
  assert dist.min() >= 2.5 - 1e-5 and dist.max() <= 3.0 + 1e-5
  np.testing.assert_allclose(dist, _np(cams.distance), rtol=1e-5)
  el = np.degrees(np.arcsin(pos[:, 2] / dist))
  assert el.min() >= -30 - 1e-3 and el.max() <= 90 + 1e-3
  np.testing.assert_allclose(el, np.degrees(_np(cams.elevation)), atol=1e-3)
  az = np.degrees(np.arctan2(pos[:, 1], pos[:, 0]))
  np.testing.assert_allclose(np.cos(np.radians(az)), np.cos(_np(cams.azimuth)), atol=1e-4)
  fovy = np.degrees(_np(cams.fovy))
  assert fovy.min() >= 40 - 1e-4 and fovy.max() <= 70 + 1e-4
  # The spread covers the ranges (not a constant).
  assert np.ptp(az) > 300 and np.ptp(el) > 80 and np.ptp(fovy) > 25
  light_d = np.linalg.norm(_np(cams.light_position), axis=-1)
  assert light_d.min() >= 0.8 - 1e-5 and light_d.max() <= 1.5 + 1e-5
  # magic3d light (official scene configs): within 60 deg of the camera direction.
  cos = np.sum(_np(cams.light_position) * pos, -1) / (light_d * dist)
  assert cos.min() >= 0.5 - 1e-5
  # Every c2w looks at the origin.
  fwd = -_np(cams.c2w)[:, :3, 2]
  np.testing.assert_allclose(fwd, -pos / dist[:, None], atol=1e-5)


def test_recenter_camera_official_offsets():
  spec = camera.CameraSpec()
  cam = camera.sample_camera(jax.random.PRNGKey(3), spec)
  c_o = jnp.array([0.4, -0.3, 0.2])
  obj = camera.recenter_camera(cam, 0.7, c_o)
  np.testing.assert_allclose(_np(obj.position), 0.7 * _np(cam.position) + _np(c_o), atol=1e-6)
  # The official derived cameras keep the sampled rotation (c_mtx).
  np.testing.assert_array_equal(_np(obj.c2w)[:3, :3], _np(cam.c2w)[:3, :3])
  assert float(obj.distance) == pytest.approx(0.7 * float(cam.distance), rel=1e-6)
  assert float(obj.fovy) == float(cam.fovy)


def test_orbit_cameras():
  cams = camera.orbit_cameras(8, 2.0, 15.0, 70.0, target=(0.1, 0.0, 0.2))
  assert cams.c2w.shape == (8, 4, 4)
  rel = _np(cams.position) - np.array([0.1, 0.0, 0.2])
  np.testing.assert_allclose(np.linalg.norm(rel, axis=-1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(np.degrees(np.arcsin(rel[:, 2] / 2.0)), 15.0, atol=1e-4)
  az = np.degrees(np.unwrap(np.arctan2(rel[:, 1], rel[:, 0])))
  np.testing.assert_allclose(np.diff(az), 45.0, atol=1e-3)
  spec = config_lib.camera_spec(config_lib.parse(hoi.get_config()))
  ev = camera.eval_orbit(4, spec)
  np.testing.assert_allclose(np.linalg.norm(_np(ev.position), axis=-1), 2.0, rtol=1e-6)
  np.testing.assert_allclose(np.degrees(_np(ev.fovy)), 70.0, rtol=1e-6)


def test_jittable():
  spec = camera.CameraSpec()
  f = jax.jit(lambda k: camera.sample_camera(k, spec))
  a, b = f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(1))
  assert not np.allclose(_np(a.c2w), _np(b.c2w))
  rays = jax.jit(camera.pinhole_rays, static_argnums=(2, 3))(a.c2w, a.fovy, 8, 6)
  assert rays[0].shape == (8, 6, 3)
