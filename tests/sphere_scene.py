"""A closed-form opaque sphere and the eval-render spec around it (tests of
``stage2/outputs.py``'s eval renders)."""
import types

import jax.numpy as jnp

from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import render as render_lib

ALBEDO = jnp.array([0.8, 0.4, 0.2], jnp.float32)
RADIUS = 0.5


def _sphere(params, x):
  """An opaque sphere of radius 0.5 at the origin, constant albedo, exact normals."""
  r = jnp.linalg.norm(x, axis=-1)
  sigma = jnp.where(r < RADIUS, 200.0, 0.0)
  normals = x / jnp.maximum(r[:, None], 1e-9)
  return sigma, jnp.broadcast_to(ALBEDO, x.shape), normals


def _spec(mode, size=33):
  return types.SimpleNamespace(
      model=types.SimpleNamespace(field=_sphere), height=size, width=size,
      render=render_lib.RenderSpec(radius=1.0, num_samples=256, sample_budget=256,
                                   skip_empty=False),
      shading=render_lib.ShadingSpec(),
      settings=types.SimpleNamespace(eval_shading=mode))


def _cams(distance=2.0):
  cam = camera_lib.orbit_cameras(1, distance, 0.0, 40.0)
  one = type(cam)(*[a[0] for a in cam])
  return {"object": one, "human": one}
