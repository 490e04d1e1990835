"""Parametric objects built from closed primitives (boxes, cylinders, ...).

Every generator returns a ``Mesh`` in the object's canonical frame, in metres:
x forward (the way the person faces while using the object), y left, z up, and
the origin at the object's *anchor* -- the point that the placement rule
(``placement.py``) puts against the body: the seat top of a chair, the saddle
of a bike, the centre of a ball, the deck top of a skateboard, the handle of
an umbrella. Each primitive is a closed, consistently outward-wound surface,
so an object is a union of watertight components.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from interfusion_jax.mesh.types import Mesh, concat  # noqa: F401 (the project's one mesh type)
from interfusion_jax.guidance.captions import OBJECT_NAMES, OBJECT_WORDS, TYPICAL_COLORS, object_from_text  # noqa: F401 (re-exported vocabulary)


class UnknownObjectError(ValueError):
  """A prompt or name does not map to any built-in object generator."""


def bbox_center(mesh: Mesh) -> np.ndarray:
  """[3] centre of the mesh's axis-aligned bounding box."""
  v = np.asarray(mesh.vertices)
  return 0.5 * (v.min(0) + v.max(0))


# ----------------------------------------------------------------------------
# Primitives (each closed, counter-clockwise = outward).
# ----------------------------------------------------------------------------


def _mesh(v, f) -> Mesh:
  return Mesh(np.asarray(v, np.float32), np.asarray(f, np.int32))


def transform(mesh: Mesh, rotation=None, translation=(0.0, 0.0, 0.0),
              scale: float = 1.0) -> Mesh:
  """x -> R (s x) + t applied to every vertex (R [3, 3], t [3])."""
  v = mesh.vertices.astype(np.float64) * scale
  if rotation is not None:
    v = v @ np.asarray(rotation, np.float64).T
  return _mesh(v + np.asarray(translation, np.float64), mesh.faces)


def rot_z(angle_rad: float) -> np.ndarray:
  """[3, 3] rotation about +z."""
  c, s = np.cos(angle_rad), np.sin(angle_rad)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(angle_rad: float) -> np.ndarray:
  """[3, 3] rotation about +x."""
  c, s = np.cos(angle_rad), np.sin(angle_rad)
  return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle_rad: float) -> np.ndarray:
  """[3, 3] rotation about +y."""
  c, s = np.cos(angle_rad), np.sin(angle_rad)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def box(center, size, rotation=None) -> Mesh:
  """Closed box: 8 vertices, 12 triangles.

  Args:
    center: [3] centre; size: [3] edge lengths; rotation: optional [3, 3].
  """
  h = 0.5 * np.asarray(size, np.float64)
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1)
                      for z in (-1, 1)], np.float64) * h
  # Vertex index = 4*ix + 2*iy + iz.
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6),
           (0, 2, 6, 4), (1, 5, 7, 3)]
  faces = []
  for a, b, c, d in quads:
    faces += [(a, b, c), (a, c, d)]
  return transform(_mesh(corners, faces), rotation, center)


def _frame(axis) -> np.ndarray:
  """[3, 3] orthonormal matrix whose third column is the unit ``axis``."""
  z = np.asarray(axis, np.float64)
  z = z / np.linalg.norm(z)
  a = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
  x = np.cross(a, z)
  x /= np.linalg.norm(x)
  return np.stack([x, np.cross(z, x), z], axis=1)


def cylinder(p0, p1, radius: float, n: int = 16) -> Mesh:
  """Capped cylinder from point p0 to p1 ([3] each); 2n + 2 vertices."""
  p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
  length = np.linalg.norm(p1 - p0)
  if length <= 0:
    raise ValueError("cylinder endpoints coincide; give distinct p0 and p1.")
  ang = 2 * np.pi * np.arange(n) / n
  ring = np.stack([radius * np.cos(ang), radius * np.sin(ang), np.zeros(n)], 1)
  top = ring + [0.0, 0.0, length]
  v = np.concatenate([ring, top, [[0, 0, 0], [0, 0, length]]])
  c0, c1 = 2 * n, 2 * n + 1
  f = []
  for i in range(n):
    j = (i + 1) % n
    f += [(i, j, n + j), (i, n + j, n + i), (c0, j, i), (c1, n + i, n + j)]
  return transform(_mesh(v, f), _frame(p1 - p0), p0)


def cone(base_center, apex, radius: float, n: int = 16) -> Mesh:
  """Closed cone (disk base + lateral surface); n + 2 vertices."""
  base_center = np.asarray(base_center, np.float64)
  height = np.linalg.norm(np.asarray(apex, np.float64) - base_center)
  ang = 2 * np.pi * np.arange(n) / n
  ring = np.stack([radius * np.cos(ang), radius * np.sin(ang), np.zeros(n)], 1)
  v = np.concatenate([ring, [[0, 0, 0], [0, 0, height]]])
  f = []
  for i in range(n):
    j = (i + 1) % n
    f += [(n, j, i), (i, j, n + 1)]
  return transform(_mesh(v, f), _frame(np.asarray(apex) - base_center), base_center)


def sphere(center, radius, n_lat: int = 8, n_lon: int = 16) -> Mesh:
  """UV sphere (or ellipsoid if ``radius`` is [3]); closed."""
  r = np.broadcast_to(np.asarray(radius, np.float64), (3,))
  th = np.pi * np.arange(1, n_lat) / n_lat
  ph = 2 * np.pi * np.arange(n_lon) / n_lon
  ring = np.stack([np.sin(th)[:, None] * np.cos(ph), np.sin(th)[:, None] * np.sin(ph),
                   np.cos(th)[:, None] * np.ones_like(ph)], -1).reshape(-1, 3)
  v = np.concatenate([ring, [[0, 0, 1], [0, 0, -1]]]) * r
  top, bot = len(ring), len(ring) + 1
  f = []
  idx = lambda a, b: a * n_lon + (b % n_lon)
  for j in range(n_lon):
    f.append((top, idx(0, j), idx(0, j + 1)))
    f.append((bot, idx(n_lat - 2, j + 1), idx(n_lat - 2, j)))
    for i in range(n_lat - 2):
      f += [(idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)),
            (idx(i, j), idx(i + 1, j + 1), idx(i, j + 1))]
  return transform(_mesh(v, f), None, center)


def torus(center, major: float, minor: float, axis=(0.0, 0.0, 1.0),
          n_major: int = 24, n_minor: int = 8) -> Mesh:
  """Closed torus around ``axis`` through ``center``."""
  u = 2 * np.pi * np.arange(n_major) / n_major
  w = 2 * np.pi * np.arange(n_minor) / n_minor
  uu, ww = np.meshgrid(u, w, indexing="ij")
  rr = major + minor * np.cos(ww)
  v = np.stack([rr * np.cos(uu), rr * np.sin(uu), minor * np.sin(ww)], -1).reshape(-1, 3)
  idx = lambda a, b: (a % n_major) * n_minor + (b % n_minor)
  f = []
  for a in range(n_major):
    for b in range(n_minor):
      f += [(idx(a, b), idx(a + 1, b), idx(a + 1, b + 1)),
            (idx(a, b), idx(a + 1, b + 1), idx(a, b + 1))]
  return transform(_mesh(v, f), _frame(axis), center)


# ----------------------------------------------------------------------------
# Objects (canonical frame: x forward, y left, z up, origin = anchor).
# ----------------------------------------------------------------------------


def chair() -> Mesh:
  """Chair; anchor = seat top centre (seat 0.45 m above the floor).

  Seat 0.42 m deep x 0.50 m wide (legs at its corners), back 0.5 m tall.
  """
  h, d, w, t = 0.45, 0.42, 0.50, 0.05
  parts = [box((0, 0, -t / 2), (d, w, t))]
  for x in (-1, 1):
    for y in (-1, 1):
      parts.append(box((x * (d / 2 - 0.02), y * (w / 2 - 0.02), -(h + t) / 2),
                       (0.04, 0.04, h - t)))
  parts.append(box((-d / 2 + 0.02, 0, 0.25), (0.04, w, 0.5)))
  return concat(parts)


def bench() -> Mesh:
  """Backless bench; anchor = seat top centre."""
  h, t = 0.45, 0.06
  parts = [box((0, 0, -t / 2), (0.40, 1.4, t))]
  for y in (-0.6, 0.6):
    parts.append(box((0, y, -(h + t) / 2), (0.35, 0.06, h - t)))
  return concat(parts)


def sofa() -> Mesh:
  """Sofa with back and arm rests; anchor = seat cushion top centre."""
  parts = [box((0, 0, -0.22), (0.75, 1.7, 0.44)),
           box((-0.45, 0, 0.05), (0.2, 1.7, 0.98)),
           box((0, 0.95, -0.1), (0.75, 0.2, 0.68)),
           box((0, -0.95, -0.1), (0.75, 0.2, 0.68))]
  return concat(parts)


def bicycle() -> Mesh:
  """Bicycle along x; anchor = saddle top (0.85 m above the ground)."""
  r, wb, ground = 0.33, 1.0, -0.85
  axle_z = ground + r
  rear, front = np.array([-wb / 2, 0, axle_z]), np.array([wb / 2, 0, axle_z])
  bb = np.array([-0.05, 0, axle_z - 0.02])            # bottom bracket
  seat = np.array([-0.18, 0, -0.08])
  head = np.array([0.38, 0, -0.05])
  parts = [torus(rear, r - 0.02, 0.025, axis=(0, 1, 0)),
           torus(front, r - 0.02, 0.025, axis=(0, 1, 0)),
           cylinder(rear, bb, 0.018, 8), cylinder(rear, seat, 0.018, 8),
           cylinder(bb, seat, 0.022, 8), cylinder(bb, head, 0.022, 8),
           cylinder(seat, head, 0.022, 8), cylinder(head, front, 0.02, 8),
           cylinder(head, head + [0, 0, 0.15], 0.02, 8),
           cylinder(head + [0, -0.28, 0.15], head + [0, 0.28, 0.15], 0.018, 8),
           box((-0.2, 0, -0.03), (0.26, 0.12, 0.06))]
  return concat(parts)


def motorcycle() -> Mesh:
  """Motorcycle along x; anchor = seat top (0.8 m above the ground)."""
  r, wb, ground = 0.32, 1.4, -0.8
  axle_z = ground + r
  rear, front = np.array([-wb / 2, 0, axle_z]), np.array([wb / 2, 0, axle_z])
  parts = [torus(rear, r - 0.07, 0.08, axis=(0, 1, 0)),
           torus(front, r - 0.07, 0.08, axis=(0, 1, 0)),
           box((0.1, 0, -0.28), (0.8, 0.3, 0.35)),      # engine / tank
           box((-0.2, 0, -0.06), (0.6, 0.3, 0.12)),     # seat
           cylinder(front, (0.55, 0, 0.1), 0.04, 8),    # fork
           cylinder((0.55, -0.35, 0.12), (0.55, 0.35, 0.12), 0.025, 8),
           cylinder(rear, (-0.1, 0, -0.3), 0.04, 8)]
  return concat(parts)


def horse() -> Mesh:
  """Horse along x; anchor = saddle (back top, 1.45 m above the ground)."""
  ground = -1.45
  body_z = -0.28
  parts = [sphere((0, 0, body_z), (0.75, 0.3, 0.3)),
           cylinder((0.55, 0, body_z + 0.05), (0.85, 0, body_z + 0.65), 0.14, 10),
           sphere((0.98, 0, body_z + 0.62), (0.28, 0.11, 0.12)),
           cylinder((-0.7, 0, body_z + 0.1), (-0.95, 0, body_z - 0.5), 0.05, 8)]
  for x in (-0.5, 0.5):
    for y in (-0.14, 0.14):
      parts.append(cylinder((x, y, ground), (x, y, body_z - 0.1), 0.06, 8))
  return concat(parts)


def crate() -> Mesh:
  """Cardboard box (0.4 m cube); anchor = its centre."""
  return box((0, 0, 0), (0.4, 0.4, 0.4))


def ball() -> Mesh:
  """Ball of radius 0.12 m (a basketball); anchor = its centre."""
  return sphere((0, 0, 0), 0.12, 10, 18)


def guitar() -> Mesh:
  """Acoustic guitar lying across the torso; anchor = body centre.

  The body is a pair of flattened discs along y; the neck points to +y, up.
  """
  parts = [cylinder((0, 0.0, 0), (0.1, 0.0, 0), 0.19, 20),
           cylinder((0, 0.26, 0.08), (0.1, 0.26, 0.08), 0.14, 20),
           box((0.05, 0.58, 0.25), (0.05, 0.5, 0.06), rot_x(-0.35)),
           box((0.05, 0.86, 0.36), (0.05, 0.14, 0.09), rot_x(-0.35))]
  return concat(parts)


def laptop() -> Mesh:
  """Open laptop; anchor = base centre (the screen rises at the far side)."""
  base = box((0, 0, 0), (0.24, 0.34, 0.02))
  screen = box((0.12 + 0.11 * np.sin(0.3), 0, 0.11), (0.015, 0.34, 0.23), rot_y(-0.3))
  return concat([base, screen])


def bed() -> Mesh:
  """Bed (mattress on a frame); anchor = mattress top centre."""
  parts = [box((0, 0, -0.12), (2.0, 1.4, 0.24)),
           box((0, 0, -0.38), (2.0, 1.4, 0.28)),
           box((-1.03, 0, -0.05), (0.06, 1.4, 0.9)),
           box((0.75, 0, 0.05), (0.4, 0.6, 0.1))]
  return concat(parts)


def skateboard() -> Mesh:
  """Skateboard along y (riders stand sideways); anchor = deck top centre.

  The deck is 0.1 m above the ground.
  """
  parts = [box((0, 0, -0.01), (0.21, 0.8, 0.02))]
  for y in (-0.28, 0.28):
    parts.append(box((0, y, -0.04), (0.16, 0.05, 0.04)))
    for x in (-0.08, 0.08):
      parts.append(cylinder((x - 0.02, y, -0.075), (x + 0.02, y, -0.075), 0.028, 10))
  return concat(parts)


def umbrella() -> Mesh:
  """Open umbrella; anchor = handle (the canopy is 0.75 m above it)."""
  parts = [cylinder((0, 0, 0), (0, 0, 0.85), 0.012, 8),
           cone((0, 0, 0.7), (0, 0, 0.95), 0.55, 24),
           torus((0.03, 0, 0.0), 0.03, 0.012, axis=(0, 1, 0), n_major=12, n_minor=6)]
  return concat(parts)


def table() -> Mesh:
  """Table; anchor = table top centre (0.75 m above the floor)."""
  parts = [box((0, 0, -0.02), (0.8, 1.2, 0.04))]
  for x in (-0.35, 0.35):
    for y in (-0.55, 0.55):
      parts.append(box((x, y, -0.395), (0.05, 0.05, 0.71)))
  return concat(parts)


GENERATORS: dict[str, Callable[[], Mesh]] = {
    "chair": chair, "bench": bench, "sofa": sofa, "bicycle": bicycle,
    "motorcycle": motorcycle, "horse": horse, "box": crate, "ball": ball,
    "guitar": guitar, "laptop": laptop, "bed": bed, "skateboard": skateboard,
    "umbrella": umbrella, "table": table,
}
# The caption vocabulary (object names, prompt words, typical colours) lives in
# guidance.captions; every name there has a generator here.
assert tuple(GENERATORS) == OBJECT_NAMES, "guidance.captions.OBJECT_NAMES and GENERATORS differ"


def make_object(name: str) -> Mesh:
  """Mesh of a built-in object by generator name or object word.

  Raises:
    UnknownObjectError: the name is unknown (the message lists the choices).
  """
  key = OBJECT_WORDS.get(name.lower(), name.lower())
  if key not in GENERATORS:
    raise UnknownObjectError(
        f"No built-in object for {name!r}; the built-in prior knows "
        f"{sorted(OBJECT_WORDS)}. Use real guidance weights "
        "(--config.guidance.weights_dir) for other objects.")
  return GENERATORS[key]()


def signed_volume(mesh: Mesh) -> float:
  """Signed volume (m^3) by the divergence theorem; > 0 if outward-wound."""
  v = mesh.vertices.astype(np.float64)[mesh.faces]
  return float(np.einsum("fi,fi->f", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)
