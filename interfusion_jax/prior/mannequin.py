"""A procedural stand-in body: SMPL-X skeleton + capsules (no body-model file).

Used by tests and as a fallback of the scene generator when the default body
asset is missing. Forward kinematics applies a 63-D SMPL-X body pose
(21 x axis-angle, the pose library's layout) to an approximate SMPL-X neutral
rest skeleton (y-up, metres); the mesh is a union of closed primitives
(spheres at joints, cylinders along bones, a torso and a head). The posed
mannequin is mapped into the z-up scene like the anchor body (``to_scene``:
upright, facing +x).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from interfusion_jax.prior import objects

# Approximate SMPL-X neutral rest joints (y-up, facing +z), first 22 joints.
REST_JOINTS = np.array([
    [0.000, 0.000, 0.000], [0.058, -0.082, -0.018], [-0.060, -0.091, -0.014],
    [0.004, 0.124, -0.038], [0.102, -0.463, -0.010], [-0.106, -0.468, -0.014],
    [0.008, 0.262, -0.024], [0.087, -0.870, -0.052], [-0.090, -0.875, -0.052],
    [0.006, 0.317, 0.002], [0.121, -0.930, 0.075], [-0.116, -0.930, 0.080],
    [-0.002, 0.528, -0.030], [0.079, 0.435, -0.010], [-0.082, 0.434, -0.016],
    [0.005, 0.640, 0.020], [0.171, 0.474, -0.024], [-0.173, 0.476, -0.030],
    [0.430, 0.450, -0.050], [-0.430, 0.450, -0.050], [0.680, 0.460, -0.050],
    [-0.680, 0.460, -0.050]])
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
# (joint a, joint b, radius) capsules.
_BONES = ((1, 4, 0.075), (2, 5, 0.075), (4, 7, 0.05), (5, 8, 0.05), (7, 10, 0.04),
          (8, 11, 0.04), (12, 15, 0.05), (16, 18, 0.045), (17, 19, 0.045),
          (18, 20, 0.035), (19, 21, 0.035), (13, 16, 0.05), (14, 17, 0.05))


class PosedBody(NamedTuple):
  """A posed body in z-up scene coordinates.

  vertices [V, 3]; faces [F, 3]; joints [J >= 22, 3] (SMPL-X order).
  """
  vertices: np.ndarray
  faces: np.ndarray
  joints: np.ndarray


def forward_kinematics(body_pose: np.ndarray, global_orient=None) -> np.ndarray:
  """Posed joints [22, 3] (y-up) of the rest skeleton under a 63-D pose.

  Args:
    body_pose: [63] axis-angle of joints 1..21.
    global_orient: [3] axis-angle of the root (default identity).
  """
  pose = np.concatenate([np.zeros(3) if global_orient is None else np.asarray(global_orient),
                         np.asarray(body_pose, np.float64).reshape(63)]).reshape(22, 3)
  rots = [None] * 22
  pos = np.zeros((22, 3))
  for j in range(22):
    local = Rotation.from_rotvec(pose[j])
    p = PARENTS[j]
    if p < 0:
      rots[j], pos[j] = local, REST_JOINTS[j]
    else:
      rots[j] = rots[p] * local
      pos[j] = pos[p] + rots[p].apply(REST_JOINTS[j] - REST_JOINTS[p])
  return pos


def mannequin_mesh(joints: np.ndarray) -> objects.Mesh:
  """Closed-primitive body around posed joints [22, 3] (any frame)."""
  j = np.asarray(joints, np.float64)
  parts = [objects.sphere(j[15] + 0.06 * _unit(j[15] - j[12]), 0.1, 8, 12)]
  for a, b, r in _BONES:
    parts.append(objects.cylinder(j[a], j[b], r, 10))
    parts.append(objects.sphere(j[b], r, 5, 10))
  # Torso: a chain of fat cylinders pelvis -> spine -> neck, hips bar.
  for a, b, r in ((0, 3, 0.13), (3, 6, 0.13), (6, 9, 0.14), (9, 12, 0.12), (1, 2, 0.08)):
    parts.append(objects.cylinder(j[a], j[b], r, 12))
  for k in (0, 1, 2, 20, 21):
    parts.append(objects.sphere(j[k], 0.08 if k < 3 else 0.045, 5, 10))
  return objects.concat(parts)


def _unit(v):
  return v / max(np.linalg.norm(v), 1e-9)


def to_scene(points: np.ndarray) -> np.ndarray:
  """y-up -> z-up scene frame as for the anchor body: scene = (z, x, y) of
  SMPL-X (``body.anchor.SMPL_TO_SCENE``), so the mannequin stands upright
  and faces +x."""
  rot = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
  return np.asarray(points, np.float64) @ rot.T


def posed_mannequin(body_pose: np.ndarray, global_orient=None) -> PosedBody:
  """The mannequin posed and moved into the z-up scene, centred at its mean vertex."""
  joints = to_scene(forward_kinematics(body_pose, global_orient))
  mesh = mannequin_mesh(joints)
  centre = mesh.vertices.astype(np.float64).mean(0)
  return PosedBody(mesh.vertices - centre, mesh.faces, joints - centre)
