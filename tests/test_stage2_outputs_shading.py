"""config.camera.eval_shading: the eval renders' albedo or official diffuse shading."""
import numpy as np

from interfusion_jax.nerf import render as render_lib
from interfusion_jax.stage2 import outputs
from sphere_scene import ALBEDO, RADIUS, _cams, _spec


def test_eval_shading_values():
  cam = _cams()["object"]
  assert outputs.eval_shading(cam, _spec("albedo")) is None
  s = outputs.eval_shading(cam, _spec("diffuse"))
  np.testing.assert_allclose(np.asarray(s.light_position), np.asarray(cam.position))
  assert (float(s.ambient), float(s.diffuse), float(s.textureless)) == (
      np.float32(0.1), np.float32(0.9), 0.0)


def test_diffuse_eval_render_is_lambert_with_the_light_at_the_camera():
  """Pixel colour = albedo * (0.1 + 0.9 max(0, n . l)) with l towards the camera
  (at distance 2 the light direction differs from the view direction by a few
  degrees only); the albedo mode gives the albedo; the background is white."""
  size = 33
  cams = _cams()
  flat = outputs.render_eval({"object": {}, "human": {}}, None, cams, _spec("albedo", size))
  lit = outputs.render_eval({"object": {}, "human": {}}, None, cams, _spec("diffuse", size))
  opacity = np.asarray(lit["object"]["opacity"])
  rgb_flat, rgb_lit = np.asarray(flat["object"]["rgb"]), np.asarray(lit["object"]["rgb"])
  inside = opacity > 0.999
  assert inside.sum() > 50 and (opacity < 1e-3).sum() > 50
  np.testing.assert_allclose(rgb_flat[inside], np.broadcast_to(ALBEDO, rgb_flat[inside].shape),
                             atol=1e-3)
  np.testing.assert_allclose(rgb_lit[opacity < 1e-3], 1.0, atol=1e-3)      # white
  # Reference: first hit of each pixel's ray with the sphere, Lambert at that point.
  cam = cams["object"]
  rays_o, rays_d = render_lib.camera_rays(cam, size, size)
  o = np.asarray(rays_o).reshape(-1, 3)
  d = np.asarray(rays_d).reshape(-1, 3)
  d = d / np.linalg.norm(d, axis=-1, keepdims=True)
  b = np.sum(o * d, -1)
  disc = b * b - (np.sum(o * o, -1) - RADIUS ** 2)
  t = -b - np.sqrt(np.maximum(disc, 0.0))
  p = o + t[:, None] * d
  n = p / np.linalg.norm(p, axis=-1, keepdims=True)
  to_light = np.asarray(cam.position)[None] - p
  to_light /= np.linalg.norm(to_light, axis=-1, keepdims=True)
  want = np.asarray(ALBEDO)[None] * (0.1 + 0.9 * np.maximum(np.sum(n * to_light, -1), 0.0))[:, None]
  core = (inside.reshape(-1)) & (disc > 0.05)          # away from the silhouette
  np.testing.assert_allclose(rgb_lit.reshape(-1, 3)[core], want[core], atol=0.03)
  red = rgb_lit.reshape(-1, 3)[core, 0]
  assert red.min() < 0.8 * float(ALBEDO[0]) and red.max() > 0.95 * float(ALBEDO[0])  # limb darker
