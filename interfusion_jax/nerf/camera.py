"""Cameras: look-at, pinhole rays, random training cameras, orbits.

Conventions (see docs/rendering.md):

* The scene is z-up.
* Camera-to-world matrices ``c2w`` [4, 4] follow OpenGL: the columns are
  (right, up, backward, position); the camera looks along its local -z.
* ``spherical_position`` uses the threestudio convention: azimuth 0 is the +x
  axis (the "front view"), elevation is measured from the xy plane.

Everything is jittable and takes explicit PRNG keys.
"""
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

_EPS = 1e-8


def _normalize(v: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  return v / jnp.maximum(jnp.linalg.norm(v, axis=axis, keepdims=True), _EPS)


def spherical_position(distance, elevation_rad, azimuth_rad) -> jnp.ndarray:
  """z-up spherical -> Cartesian camera position.

  Args:
    distance, elevation_rad, azimuth_rad: scalars (or broadcastable arrays [...]).

  Returns:
    [..., 3]: (d cos(el) cos(az), d cos(el) sin(az), d sin(el)).
  """
  d = jnp.asarray(distance, jnp.float32)
  el = jnp.asarray(elevation_rad, jnp.float32)
  az = jnp.asarray(azimuth_rad, jnp.float32)
  return jnp.stack(
      [d * jnp.cos(el) * jnp.cos(az), d * jnp.cos(el) * jnp.sin(az),
       d * jnp.sin(el)], axis=-1)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> jnp.ndarray:
  """OpenGL camera-to-world matrix of a camera at ``eye`` looking at ``target``.

  When the viewing direction is (anti)parallel to ``up`` (e.g. elevation 90
  deg) "right" falls back to an axis orthogonal to the viewing direction, so
  the matrix stays orthonormal.

  Args:
    eye: [3] camera position.
    target: [3] point the camera looks at.
    up: [3] world up vector (z-up scene by default).

  Returns:
    c2w [4, 4] float32 with columns (right, up, backward, eye); the camera
    looks along -backward, i.e. towards ``target``.
  """
  eye = jnp.asarray(eye, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  up = jnp.broadcast_to(jnp.asarray(up, jnp.float32), eye.shape)
  backward = _normalize(eye - target)
  right = jnp.cross(up, backward)
  norm = jnp.linalg.norm(right, axis=-1, keepdims=True)
  # Degenerate (looking along up): pick any axis orthogonal to ``backward``.
  alt_axis = jnp.where(jnp.abs(backward[..., :1]) < 0.9,
                       jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0]))
  alt = jnp.cross(alt_axis, backward)
  right = jnp.where(norm > 1e-6, right, alt)
  right = _normalize(right)
  cam_up = jnp.cross(backward, right)
  rot = jnp.stack([right, cam_up, backward, eye], axis=-1)  # [..., 3, 4]
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], jnp.float32),
                            rot.shape[:-2] + (1, 4))
  return jnp.concatenate([rot, bottom], axis=-2)


def focal_from_fovy(fovy_rad, height: int) -> jnp.ndarray:
  """Pinhole focal length in pixels: f = H / (2 tan(fovy / 2)). Scalar."""
  return 0.5 * height / jnp.tan(0.5 * jnp.asarray(fovy_rad, jnp.float32))


def pinhole_rays(c2w, fovy_rad, height: int, width: int):
  """World-space rays through pixel centres of a pinhole camera.

  Args:
    c2w: [4, 4] (or [3, 4]) OpenGL camera-to-world matrix.
    fovy_rad: scalar vertical field of view in radians.
    height, width: static image size.

  Returns:
    (origins [H, W, 3], dirs [H, W, 3] unit length). Row 0 is the top of the
    image (+camera-up), column 0 the left (-camera-right).
  """
  c2w = jnp.asarray(c2w, jnp.float32)
  focal = focal_from_fovy(fovy_rad, height)
  j, i = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5,
                      jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij")
  dirs_cam = jnp.stack([(i - 0.5 * width) / focal,
                        -(j - 0.5 * height) / focal,
                        -jnp.ones_like(i)], axis=-1)  # [H, W, 3]
  dirs = _normalize(dirs_cam @ c2w[:3, :3].T)
  origins = jnp.broadcast_to(c2w[:3, 3], dirs.shape)
  return origins, dirs


class Camera(NamedTuple):
  """One camera (or a batch, with a leading axis on every field).

  c2w [4, 4]; position [3] (== c2w[:3, 3]); elevation, azimuth, fovy in
  radians (scalars); distance scalar; light_position [3].
  """
  c2w: jnp.ndarray
  position: jnp.ndarray
  elevation: jnp.ndarray
  azimuth: jnp.ndarray
  distance: jnp.ndarray
  fovy: jnp.ndarray
  light_position: jnp.ndarray


LIGHT_STRATEGIES = ("magic3d", "dreamfusion")


@dataclasses.dataclass(frozen=True)
class CameraSpec:
  """Static camera settings (config.camera + the light part of config.shading).

  Defaults follow the official release (InterFusion's own threestudio copy,
  ``InterGen/threestudio/data/uncond.py``, and the scene configs'
  ``light_sample_strategy: magic3d``).

  Attributes:
    elevation_sphere_prob: probability that a camera's elevation is drawn
      uniformly on the sphere (asin inverse-CDF over the range) rather than
      uniformly in degrees; 0 = always uniform in degrees.
    camera_perturb: position += U(-p, p) per axis (0 disables).
    center_perturb: look-at target = N(0, p^2) per axis (0 disables).
    up_perturb: up = ``up`` + N(0, p^2) per axis (0 disables).
    light_strategy: "magic3d" (official scene configs) or "dreamfusion"
      (``light_position_perturb`` around the camera direction).
  """
  distance_range: tuple[float, float] = (2.5, 3.0)
  elevation_range_deg: tuple[float, float] = (-30.0, 90.0)
  elevation_sphere_prob: float = 0.5
  azimuth_range_deg: tuple[float, float] = (-180.0, 180.0)
  fovy_range_deg: tuple[float, float] = (40.0, 70.0)
  camera_perturb: float = 0.1
  center_perturb: float = 0.2
  up_perturb: float = 0.02
  light_strategy: str = "magic3d"
  light_distance_range: tuple[float, float] = (0.8, 1.5)
  light_position_perturb: float = 1.0   # dreamfusion light only
  eval_distance: float = 2.0
  eval_fovy_deg: float = 70.0
  eval_elevation_deg: float = 10.0   # official (threestudio data/uncond.py)
  up: tuple[float, float, float] = (0.0, 0.0, 1.0)


def _uniform(key, lo, hi):
  return jax.random.uniform(key, (), jnp.float32, lo, hi)


def dreamfusion_light_position(key, position, spec: CameraSpec) -> jnp.ndarray:
  """DreamFusion light: direction near the camera's, random distance.

  light = normalize(position + N(0, perturb^2 I)) * U(light_distance_range).

  Args:
    key: PRNG key.
    position: [3] camera position (relative to what the camera looks at).
    spec: camera spec.

  Returns:
    [3] light position.
  """
  k_dir, k_dist = jax.random.split(key)
  noise = jax.random.normal(k_dir, (3,)) * spec.light_position_perturb
  direction = _normalize(position + noise)
  return direction * _uniform(k_dist, *spec.light_distance_range)


def magic3d_light_position(key, position, spec: CameraSpec) -> jnp.ndarray:
  """Magic3D light: within 60 deg of the camera's direction, random distance.

  In the frame local_z = normalize(position), local_x = normalize((z_y, -z_x,
  0)), local_y = normalize(local_z x local_x), the light sits at distance
  U(light_distance_range), local elevation U(pi/6, pi/2) and local azimuth
  U(0, 1) * pi - 2 pi, i.e. in [-2 pi, -pi] as the official code writes it (its
  comment says [-pi, pi]): only the half circle with local_y >= 0. local_x
  is the camera's left and local_y (about) its image-down direction, so the
  light sits on the lower side of the view axis. When the
  camera is straight above or below the origin (local_x undefined) local_x
  falls back to +x, so the result is never NaN.

  Args:
    key: PRNG key.
    position: [3] camera position (relative to what the camera looks at).
    spec: camera spec.

  Returns:
    [3] light position.
  """
  k_dist, k_az, k_el = jax.random.split(key, 3)
  local_z = _normalize(position)
  raw_x = jnp.stack([local_z[1], -local_z[0], jnp.zeros_like(local_z[0])])
  norm_x = jnp.linalg.norm(raw_x)
  ok = norm_x > 1e-7
  local_x = jnp.where(ok, raw_x / jnp.where(ok, norm_x, 1.0),
                      jnp.array([1.0, 0.0, 0.0], jnp.float32))
  local_y = _normalize(jnp.cross(local_z, local_x))
  rot = jnp.stack([local_x, local_y, local_z], axis=-1)   # columns
  dist = _uniform(k_dist, *spec.light_distance_range)
  az = jax.random.uniform(k_az, (), jnp.float32) * jnp.pi - 2.0 * jnp.pi
  el = jax.random.uniform(k_el, (), jnp.float32) * jnp.pi / 3.0 + jnp.pi / 6.0
  return rot @ spherical_position(dist, el, az)


def sample_light_position(key, position, spec: CameraSpec) -> jnp.ndarray:
  """The training light by ``spec.light_strategy`` ("magic3d" | "dreamfusion").

  Args:
    key: PRNG key.
    position: [3] (perturbed) camera position, as the official code uses.
    spec: camera spec.

  Returns:
    [3] light position.
  """
  if spec.light_strategy == "magic3d":
    return magic3d_light_position(key, position, spec)
  if spec.light_strategy == "dreamfusion":
    return dreamfusion_light_position(key, position, spec)
  raise ValueError(f"light_strategy = {spec.light_strategy!r}: choose one of "
                   f"{list(LIGHT_STRATEGIES)}.")


def sample_elevation(key, spec: CameraSpec) -> jnp.ndarray:
  """Elevation in radians: the official mixture over ``elevation_range_deg``.

  With probability ``elevation_sphere_prob`` uniform on the sphere,
  asin(2 (u (p1 - p0) + p0) - 1) with p = (range + 90) / 180; otherwise
  uniform in degrees. As officially written p is linear in degrees, so the
  sphere draw covers [asin(2 p0 - 1), asin(2 p1 - 1)]: for (-30, 90) deg it
  never goes below asin(-1/3) = -19.47 deg.
  """
  k_pick, k_u = jax.random.split(key)
  lo, hi = spec.elevation_range_deg
  u = jax.random.uniform(k_u, (), jnp.float32)
  in_deg = jnp.deg2rad(u * (hi - lo) + lo)
  p0, p1 = (lo + 90.0) / 180.0, (hi + 90.0) / 180.0
  on_sphere = jnp.arcsin(jnp.clip(2.0 * (u * (p1 - p0) + p0) - 1.0, -1.0, 1.0))
  sphere = jax.random.uniform(k_pick, (), jnp.float32) < spec.elevation_sphere_prob
  return jnp.where(sphere, on_sphere, in_deg)


def sample_camera(key, spec: CameraSpec, index=0, count=1) -> Camera:
  """A random training camera around the origin (PAPER.md "cameras").

  As the official ``RandomCameraIterableDataset.collate``: distance ~
  U(distance_range); elevation by ``sample_elevation``; azimuth stratified
  over a batch (batch_uniform_azimuth): (u + index) / count * (hi - lo) + lo,
  so camera ``index`` of ``count`` lies in its own 1/count of the range
  (index 0, count 1: plain uniform); fovy ~ U(fovy_range). The spherical
  position is then perturbed by U(+-camera_perturb) per axis, the camera
  looks at N(0, center_perturb^2) with up ``up`` + N(0, up_perturb^2), and
  the light is drawn from the perturbed position (``sample_light_position``).

  Args:
    key: PRNG key.
    spec: camera spec.
    index, count: this camera's slot in its batch (static or traced).

  Returns:
    Camera with scalar angles (radians) and [3] / [4, 4] arrays; elevation
    and azimuth are the sampled angles (they pick the view prompt), distance
    the sampled distance, position (== c2w[:3, 3]) the perturbed position.
  """
  kd, ke, ka, kf, kl, kp, kc, ku = jax.random.split(key, 8)
  dist = _uniform(kd, *spec.distance_range)
  elev = sample_elevation(ke, spec)
  lo, hi = spec.azimuth_range_deg
  u = jax.random.uniform(ka, (), jnp.float32)
  index = jnp.asarray(index, jnp.float32)
  count = jnp.asarray(count, jnp.float32)
  azim = jnp.deg2rad((u + index) / count * (hi - lo) + lo)
  fovy = jnp.deg2rad(_uniform(kf, *spec.fovy_range_deg))
  pos = spherical_position(dist, elev, azim)
  pos = pos + jax.random.uniform(kp, (3,), jnp.float32, -1.0, 1.0) * spec.camera_perturb
  target = jax.random.normal(kc, (3,), jnp.float32) * spec.center_perturb
  up = (jnp.asarray(spec.up, jnp.float32)
        + jax.random.normal(ku, (3,), jnp.float32) * spec.up_perturb)
  return Camera(c2w=look_at(pos, target, up), position=pos,
                elevation=elev, azimuth=azim, distance=dist, fovy=fovy,
                light_position=sample_light_position(kl, pos, spec))


def recenter_camera(camera: Camera, scale, offset, up=None) -> Camera:
  """Camera tracing: centre = scale * pos + offset, same rotation.

  PAPER.md "Camera tracing" (object: 0.7 pos + c_O; interaction:
  0.8 pos + c_O / 2; human: 0.7 pos; head: 0.2 pos + head joint). As the
  official system (``forward``: c2w = [c_mtx | new centre]) the sampled
  camera's rotation is kept: its centre ray, which went through the sampled
  look-at target t, now goes through scale * t + offset (``offset`` itself
  when the target is not perturbed). The light is
  moved by the same offset; angles and fovy are unchanged; ``distance``
  becomes scale * distance.

  Args:
    camera: a Camera (unbatched, or with leading axes) sampled around the origin.
    scale: scalar.
    offset: [3] the new centre of the orbit.
    up: unused (kept for callers that pass the world up).

  Returns:
    The re-centred Camera.
  """
  del up
  offset = jnp.asarray(offset, jnp.float32)
  pos = scale * camera.position + offset
  return camera._replace(
      c2w=camera.c2w.at[..., :3, 3].set(pos), position=pos,
      distance=scale * camera.distance,
      light_position=camera.light_position + offset)


def orbit_cameras(num_views: int, distance, elevation_deg, fovy_deg,
                  target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0),
                  azimuth_start_deg: float = 0.0) -> Camera:
  """Fixed turntable cameras at evenly spaced azimuths.

  Args:
    num_views: static number of views V.
    distance, elevation_deg, fovy_deg: scalars.
    target: [3] orbit centre.
    up: world up.
    azimuth_start_deg: azimuth of view 0.

  Returns:
    Camera with a leading axis V on every field; the light sits at the camera.
  """
  target = jnp.asarray(target, jnp.float32)
  azim = jnp.deg2rad(azimuth_start_deg + 360.0 * jnp.arange(num_views) / num_views)
  elev = jnp.full((num_views,), jnp.deg2rad(elevation_deg), jnp.float32)
  dist = jnp.full((num_views,), distance, jnp.float32)
  pos = spherical_position(dist, elev, azim) + target
  c2w = jax.vmap(lambda p: look_at(p, target, up))(pos)
  fovy = jnp.full((num_views,), jnp.deg2rad(fovy_deg), jnp.float32)
  return Camera(c2w=c2w, position=pos, elevation=elev, azimuth=azim.astype(jnp.float32),
                distance=dist, fovy=fovy, light_position=pos)


def eval_orbit(num_views: int, spec: CameraSpec, target=(0.0, 0.0, 0.0)) -> Camera:
  """Turntable at the spec's evaluation distance / elevation / fovy. See orbit_cameras."""
  return orbit_cameras(num_views, spec.eval_distance, spec.eval_elevation_deg,
                       spec.eval_fovy_deg, target=target, up=spec.up)
