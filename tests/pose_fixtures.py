"""A capsule "mannequin" in the SMPL-X layout (tests only; no licence needed).

Approximate SMPL-X rest joints (y up, facing +z, metres) with a cylinder per
bone, rigidly skinned to the bone's parent joint, plus one hidden vertex per
joint so the joint regressor is exact. It poses with the real LBS code, so
pose semantics (which way a limb goes) can be checked by rendering.
"""
from __future__ import annotations

import numpy as np

SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                 17, 18, 19, 15, 15, 15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20,
                 34, 35, 20, 37, 38, 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49,
                 50, 21, 52, 53]
_BODY_JOINTS = np.array([
    (0, 0.93, 0), (0.06, 0.84, 0), (-0.06, 0.84, 0), (0, 1.04, -0.01),
    (0.10, 0.47, 0.0), (-0.10, 0.47, 0.0), (0, 1.17, 0.0), (0.09, 0.07, -0.04),
    (-0.09, 0.07, -0.04), (0, 1.22, 0.02), (0.11, 0.02, 0.1), (-0.11, 0.02, 0.1),
    (0, 1.44, -0.01), (0.07, 1.36, 0.0), (-0.07, 1.36, 0.0), (0, 1.53, 0.03),
    (0.17, 1.38, -0.01), (-0.17, 1.38, -0.01), (0.43, 1.38, -0.03),
    (-0.43, 1.38, -0.03), (0.68, 1.38, -0.02), (-0.68, 1.38, -0.02)])
# (parent joint, child point, radius) segments; the segment moves with parent.
_RADIUS = {0: 0.13, 1: 0.075, 2: 0.075, 3: 0.13, 4: 0.055, 5: 0.055, 6: 0.14, 7: 0.04,
           8: 0.04, 9: 0.13, 12: 0.05, 13: 0.05, 14: 0.05, 16: 0.05, 17: 0.05,
           18: 0.04, 19: 0.04}


def _cylinder(a, b, r, sides=10, rings=4):
  a, b = np.asarray(a, float), np.asarray(b, float)
  d = b - a
  length = np.linalg.norm(d)
  d = d / length
  t = np.cross(d, [0, 0, 1.0]) if abs(d[2]) < 0.9 else np.cross(d, [1.0, 0, 0])
  t /= np.linalg.norm(t)
  u = np.cross(d, t)
  ang = np.linspace(0, 2 * np.pi, sides, endpoint=False)
  verts = []
  for s in np.linspace(0, 1, rings):
    c = a + d * length * s
    verts += [c + r * (np.cos(q) * t + np.sin(q) * u) for q in ang]
  verts += [a, b]
  faces = []
  for k in range(rings - 1):
    for i in range(sides):
      p0, p1 = k * sides + i, k * sides + (i + 1) % sides
      faces += [(p0, p1, p1 + sides), (p0, p1 + sides, p0 + sides)]
  ca, cb = rings * sides, rings * sides + 1
  for i in range(sides):
    faces += [(ca, (i + 1) % sides, i)]
    base = (rings - 1) * sides
    faces += [(cb, base + i, base + (i + 1) % sides)]
  return np.array(verts), np.array(faces)


def _sphere(c, r, n=10):
  verts, faces = [], []
  th = np.linspace(0, np.pi, n)
  ph = np.linspace(0, 2 * np.pi, n, endpoint=False)
  for a in th:
    for b in ph:
      verts.append(np.asarray(c) + r * np.array([np.sin(a) * np.cos(b), np.cos(a),
                                                  np.sin(a) * np.sin(b)]))
  for i in range(n - 1):
    for j in range(n):
      p0, p1 = i * n + j, i * n + (j + 1) % n
      faces += [(p0, p1 + n, p1), (p0, p0 + n, p1 + n)]
  return np.array(verts), np.array(faces)


def capsule_body_arrays() -> dict:
  """smplx-style arrays (v_template, f, weights, J_regressor, ...) of the mannequin."""
  joints = np.zeros((55, 3))
  joints[:22] = _BODY_JOINTS
  for j in range(22, 55):  # face and hand joints sit at their parent
    joints[j] = joints[SMPLX_PARENTS[j]]
  parts = []  # (verts, faces, joint)
  for child in range(1, 22):
    par = SMPLX_PARENTS[child]
    if par in _RADIUS:
      parts.append(_cylinder(joints[par], joints[child], _RADIUS[par]) + (par,))
  for w, e in ((20, 18), (21, 19)):  # hands
    d = joints[w] - joints[e]
    parts.append(_cylinder(joints[w], joints[w] + 0.6 * d, 0.045) + (w,))
  for ank, foot in ((7, 10), (8, 11)):
    parts.append(_cylinder(joints[ank], joints[foot] + [0, 0, 0.06], 0.045) + (ank,))
  parts.append(_sphere(joints[15] + [0, 0.08, 0.01], 0.11) + (15,))
  verts, faces, weights, off = [], [], [], 0
  for v, f, j in parts:
    verts.append(v)
    faces.append(f + off)
    weights += [j] * len(v)
    off += len(v)
  verts.append(joints)  # hidden joint vertices (exact regressor)
  weights += list(range(55))
  v = np.concatenate(verts)
  jv = np.arange(off, off + 55)
  nv = v.shape[0]
  w = np.zeros((nv, 55))
  w[np.arange(nv), weights] = 1.0
  jreg = np.zeros((55, nv))
  jreg[np.arange(55), jv] = 1.0
  kintree = np.zeros((2, 55), np.int64)
  kintree[0] = SMPLX_PARENTS
  kintree[0, 0] = 4294967295
  kintree[1] = np.arange(55)
  return dict(v_template=v.astype(np.float32), f=np.concatenate(faces).astype(np.uint32),
              weights=w.astype(np.float32), J_regressor=jreg.astype(np.float32),
              kintree_table=kintree, shapedirs=np.zeros((nv, 3, 10), np.float32),
              posedirs=np.zeros((nv, 3, 9 * 54), np.float32))


def capsule_body():
  """The mannequin as a BodyModel."""
  from interfusion_jax.body.model import body_model_from_arrays
  return body_model_from_arrays(capsule_body_arrays(), name="capsule mannequin")
