"""Rules placing a built-in object against a posed body (not inside it).

A rule picks a target point on the posed body from its SMPL-X joints and
vertices (under the pelvis, between the legs, in the hands, under the feet),
turns the object to face the way the body faces, puts the object's anchor
(see ``objects.py``) on the target and then slides it along the rule's push
direction to the smallest offset at which it touches the body without
entering it. Inputs are z-up scene coordinates in metres.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from interfusion_jax.body import anchor
from interfusion_jax.prior import objects

# SMPL-X joint ids (55-joint layout; the first 22 are shared with SMPL).
PELVIS, L_HIP, R_HIP = 0, 1, 2
L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 4, 5, 7, 8
HEAD = 15
L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 18, 19, 20, 21

RULES = ("under_pelvis", "between_legs", "in_hands", "in_right_hand", "under_feet")

OBJECT_RULES: dict[str, str] = {
    "chair": "under_pelvis", "bench": "under_pelvis", "sofa": "under_pelvis",
    "bed": "under_pelvis", "bicycle": "between_legs",
    "motorcycle": "between_legs", "horse": "between_legs", "box": "in_hands",
    "ball": "in_hands", "guitar": "in_hands", "laptop": "in_hands",
    "table": "in_hands", "umbrella": "in_right_hand",
    "skateboard": "under_feet",
}


class PlacementError(ValueError):
  """Bad input to a placement rule."""


class Placement(NamedTuple):
  """A placed object.

  mesh: the object in scene coordinates; rotation [3, 3] and translation [3]
  map canonical object coordinates to the scene; penetration: fraction of
  object surface samples inside the body; gap: distance (m) from the object
  surface samples to the nearest body vertex; rule: the rule used.
  """
  mesh: objects.Mesh
  rotation: np.ndarray
  translation: np.ndarray
  penetration: float
  gap: float
  rule: str


def body_frame(joints: np.ndarray) -> np.ndarray:
  """The body's heading frame from its hips (z-up scene).

  Args:
    joints: [J >= 22, 3] posed SMPL-X joints.

  Returns:
    [3, 3] rotation whose columns are (forward, left, up): left points from
    the right hip to the left hip (flattened to the ground plane), up = +z
    and forward = left x up.
  """
  joints = _check_joints(joints)
  left = joints[L_HIP] - joints[R_HIP]
  left[2] = 0.0
  n = np.linalg.norm(left)
  if n < 1e-6:
    raise PlacementError("The hips coincide in the ground plane; cannot tell "
                         "which way the body faces.")
  left /= n
  up = np.array([0.0, 0.0, 1.0])
  return np.stack([np.cross(left, up), left, up], axis=1)


def _check_joints(joints) -> np.ndarray:
  j = np.array(joints, np.float64)
  if j.ndim != 2 or j.shape[1] != 3 or j.shape[0] < 22:
    raise PlacementError(f"joints has shape {j.shape}: expected [J >= 22, 3] "
                         "SMPL/SMPL-X joints in z-up scene coordinates.")
  return j


def hand_centers(joints: np.ndarray) -> np.ndarray:
  """[2, 3] left and right palm centres: 8 cm past the wrist along the forearm."""
  out = []
  for e, w in ((L_ELBOW, L_WRIST), (R_ELBOW, R_WRIST)):
    d = joints[w] - joints[e]
    out.append(joints[w] + 0.08 * d / max(np.linalg.norm(d), 1e-6))
  return np.stack(out)


def target_and_push(rule: str, vertices: np.ndarray, joints: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Where a rule puts the object's anchor and which way it slides out.

  Args:
    rule: one of RULES.
    vertices: [V, 3] posed body vertices.
    joints: [J, 3] posed joints.

  Returns:
    (target [3], push [3] unit direction away from the body).
  """
  frame = body_frame(joints)
  fwd, down = frame[:, 0], np.array([0.0, 0.0, -1.0])
  pelvis = joints[PELVIS]
  horiz = np.linalg.norm(vertices[:, :2] - pelvis[:2], axis=1)
  if rule == "under_pelvis":
    near = vertices[(horiz < 0.12) & (vertices[:, 2] < pelvis[2])]
    z = near[:, 2].min() if len(near) else pelvis[2] - 0.1
    return np.array([pelvis[0], pelvis[1], z]) + 0.04 * fwd, down
  if rule == "between_legs":
    near = vertices[(horiz < 0.05) & (vertices[:, 2] < pelvis[2])]
    z = near[:, 2].min() if len(near) else pelvis[2] - 0.1
    return np.array([pelvis[0], pelvis[1], z]), down
  if rule == "in_hands":
    return hand_centers(joints).mean(0), fwd
  if rule == "in_right_hand":
    return hand_centers(joints)[1], fwd
  if rule == "under_feet":
    mid = 0.5 * (joints[L_ANKLE] + joints[R_ANKLE])
    return np.array([mid[0], mid[1], vertices[:, 2].min()]), down
  raise PlacementError(f"Unknown placement rule {rule!r}; choose one of {list(RULES)}.")


def winding_number(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                   chunk: int = 400_000) -> np.ndarray:
  """Generalised winding number of a triangle mesh (Jacobson et al. 2013).

  w(p) = sum_f Omega_f(p) / (4 pi), with the solid angle of Van Oosterom &
  Strackee. w >= 1 inside a union of closed outward-wound surfaces, 0 outside.
  Exact but O(P F): used for checks, not in the placement search.

  Args:
    points: [P, 3] query points.
    vertices: [V, 3]; faces: [F, 3].

  Returns:
    [P] winding numbers.
  """
  pts = np.asarray(points, np.float64)
  tri = np.asarray(vertices, np.float64)[np.asarray(faces)]   # [F, 3, 3]
  out = np.zeros(len(pts))
  step = max(1, chunk // max(len(tri), 1))
  for s in range(0, len(pts), step):
    d = tri[None] - pts[s:s + step, None, None]              # [p, F, 3, 3]
    a, b, c = d[..., 0, :], d[..., 1, :], d[..., 2, :]
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    num = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    den = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc
           + np.einsum("pfi,pfi->pf", b, c) * la + np.einsum("pfi,pfi->pf", c, a) * lb)
    out[s:s + step] = 2.0 * np.arctan2(num, den).sum(-1) / (4.0 * np.pi)
  return out


def inside_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """[P] bool: winding number > 0.5 (exact for unions of closed meshes)."""
  return winding_number(points, vertices, faces) > 0.5


class Occupancy(NamedTuple):
  """A cubic inside/outside voxel grid of a mesh.

  grid [R, R, R] bool indexed [ix, iy, iz] at nodes centre + linspace(-r, r, R)
  per axis; centre [3]; radius r.
  """
  grid: np.ndarray
  centre: np.ndarray
  radius: float


def components(faces: np.ndarray, num_vertices: int) -> list[np.ndarray]:
  """Face index arrays of the connected components of a mesh."""
  f = np.asarray(faces)
  rows = np.repeat(f[:, 0], 2)
  cols = f[:, 1:].reshape(-1)
  adj = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_vertices, num_vertices))
  _, label = connected_components(adj, directed=False)
  face_label = label[f[:, 0]]
  return [np.nonzero(face_label == k)[0] for k in np.unique(face_label)]


def occupancy(vertices: np.ndarray, faces: np.ndarray, resolution: int = 96,
              margin: float = 0.03) -> Occupancy:
  """Voxelises a union of closed meshes (ray parity per connected component, OR).

  Uses ``body.anchor.occupancy_grid`` (majority vote of x/y/z ray parity) on
  each component so that overlapping primitives stay inside.

  Args:
    vertices: [V, 3]; faces: [F, 3]; resolution: R; margin: metres of
      padding around the bounding box.

  Returns:
    Occupancy.
  """
  v = np.asarray(vertices, np.float64)
  f = np.asarray(faces)
  lo, hi = v.min(0), v.max(0)
  centre = 0.5 * (lo + hi)
  radius = float(0.5 * (hi - lo).max() + margin)
  h = 2.0 * radius / (resolution - 1)
  grid = np.zeros((resolution,) * 3, bool)
  local = v - centre + radius                       # node i sits at i * h
  for comp in components(f, len(v)):
    cv = local[np.unique(f[comp])]
    i0 = np.maximum(np.floor(cv.min(0) / h).astype(int) - 1, 0)
    i1 = np.minimum(np.ceil(cv.max(0) / h).astype(int) + 1, resolution - 1)
    n = int((i1 - i0).max()) + 1
    # Each component is voxelised on its own small cube of nodes.
    sub = anchor.occupancy_grid(local - i0 * h, f[comp], h * np.arange(n))
    ext = i1 - i0 + 1
    grid[i0[0]:i1[0] + 1, i0[1]:i1[1] + 1, i0[2]:i1[2] + 1] |= sub[:ext[0], :ext[1], :ext[2]]
  return Occupancy(grid, centre, radius)


def occupied(occ: Occupancy, points: np.ndarray) -> np.ndarray:
  """[P] bool: nearest grid node of each point is inside (False off the grid)."""
  res = occ.grid.shape[0]
  h = 2.0 * occ.radius / (res - 1)
  idx = np.rint((np.asarray(points) - occ.centre + occ.radius) / h).astype(np.int64)
  ok = np.all((idx >= 0) & (idx < res), axis=1)
  out = np.zeros(len(idx), bool)
  i = idx[ok]
  out[ok] = occ.grid[i[:, 0], i[:, 1], i[:, 2]]
  return out


def interior_points(occ: Occupancy, max_points: int = 3000, seed: int = 0) -> np.ndarray:
  """[P, 3] up to ``max_points`` occupied grid nodes (volume samples)."""
  res = occ.grid.shape[0]
  idx = np.argwhere(occ.grid)
  if len(idx) > max_points:
    idx = idx[np.random.default_rng(seed).choice(len(idx), max_points, replace=False)]
  h = 2.0 * occ.radius / (res - 1)
  return idx * h - occ.radius + occ.centre


def surface_samples(mesh: objects.Mesh, num: int = 600, seed: int = 0) -> np.ndarray:
  """[V + num, 3]: the vertices plus area-weighted random surface points."""
  v = mesh.vertices.astype(np.float64)
  tri = v[mesh.faces]
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
  rng = np.random.default_rng(seed)
  f = rng.choice(len(tri), size=num, p=area / area.sum())
  r1, r2 = rng.random(num), rng.random(num)
  s = np.sqrt(r1)
  bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
  return np.concatenate([v, np.einsum("pk,pki->pi", bary, tri[f])])


class BodyQuery(NamedTuple):
  """Precomputed body queries: occupancy grid + KD-tree of the vertices."""
  occ: Occupancy
  tree: cKDTree


def body_query(vertices: np.ndarray, faces: np.ndarray, resolution: int = 128) -> BodyQuery:
  """Builds the body's occupancy grid (~1.7 cm voxels) and vertex KD-tree."""
  return BodyQuery(occupancy(vertices, faces, resolution), cKDTree(np.asarray(vertices)))


def place_object(mesh: objects.Mesh, rule: str, vertices: np.ndarray,
                 faces: np.ndarray, joints: np.ndarray, *,
                 query: BodyQuery | None = None,
                 max_penetration: float = 0.002, contact: float = 0.02,
                 push_range=(-0.1, 0.6), slide_range=(0.0, 0.25),
                 step: float = 0.01) -> Placement:
  """Places an object against the body by a rule (see module docstring).

  The object is turned to the body's heading and its anchor put on the
  rule's target; then it is moved by d1 * push + d2 * slide (slide = the
  body's backward direction for "under_pelvis", so a chair back clears the
  back; no slide otherwise) to the offset, in order of |d1| + |d2|, that is
  penetration-free (fraction of the object's surface + volume samples
  inside the body <= ``max_penetration``) and touching (gap <= ``contact``);
  if none touches, the free offset with the smallest gap.

  Args:
    mesh: the object in its canonical frame (``objects.make_object``).
    rule: one of RULES.
    vertices: [V, 3] posed body; faces: [F, 3]; joints: [J, 3].
    query: precomputed ``body_query`` (built if None).

  Returns:
    Placement.
  """
  joints = _check_joints(joints)
  vertices = np.asarray(vertices, np.float64)
  rot = body_frame(joints)
  target, push = target_and_push(rule, vertices, joints)
  slide = -rot[:, 0] if rule == "under_pelvis" else np.zeros(3)
  q = query if query is not None else body_query(vertices, faces)
  canon_occ = occupancy(mesh.vertices, mesh.faces, 48, margin=0.01)
  local = np.concatenate([surface_samples(mesh), interior_points(canon_occ)])
  samples = local @ rot.T + target
  d1 = np.arange(push_range[0], push_range[1] + 1e-9, step)
  d2 = (np.arange(slide_range[0], slide_range[1] + 1e-9, 2 * step)
        if rule == "under_pelvis" else np.zeros(1))
  grid = np.stack(np.meshgrid(d1, d2, indexing="ij"), -1).reshape(-1, 2)
  grid = grid[np.argsort(np.abs(grid).sum(1), kind="stable")]
  best = None
  for a, c in grid:
    shift = a * push + c * slide
    inside = occupied(q.occ, samples + shift)
    pen = float(inside.mean())
    if pen > max_penetration:
      continue
    gap = float(q.tree.query(samples[~inside] + shift)[0].min())
    if gap <= contact:
      best = (shift, pen, gap)
      break
    if best is None or gap < best[2]:
      best = (shift, pen, gap)
  if best is None:
    raise PlacementError(
        f"Could not place the object by rule {rule!r} without penetrating the "
        "body; the pose may not suit this object.")
  shift, pen, gap = best
  trans = target + shift
  return Placement(objects.transform(mesh, rot, trans), rot, trans, pen, gap, rule)


def place_named(object_name: str, vertices: np.ndarray, faces: np.ndarray,
                joints: np.ndarray, *, query: BodyQuery | None = None) -> Placement:
  """A built-in object (``objects.make_object``) placed by its ``default_rule``.

  This is how the prior's bank, the shape diagnostic of ``evaluate`` and the
  trainer's ``object_origin`` place the object a prompt names.

  Args:
    object_name: a key of ``objects.GENERATORS``.
    vertices: [V, 3] posed body; faces: [F, 3]; joints: [J, 3].
    query: precomputed ``body_query`` (built if None).

  Returns:
    Placement.
  """
  return place_object(objects.make_object(object_name), default_rule(object_name),
                      vertices, faces, joints, query=query)


def penetration_fraction(placed: objects.Mesh, vertices: np.ndarray, faces: np.ndarray,
                         resolution: int = 64, max_points: int = 2000) -> float:
  """Fraction of the placed object's volume (grid nodes) inside the body.

  Exact winding-number inside test of the object's occupied voxels against
  the body mesh (slow; for checks and tests).
  """
  pts = interior_points(occupancy(placed.vertices, placed.faces, resolution), max_points)
  pts = np.concatenate([pts, surface_samples(placed, 400, seed=1)])
  return float(inside_mesh(pts, vertices, faces).mean())


def default_rule(object_name: str) -> str:
  """The placement rule of a built-in object (see OBJECT_RULES)."""
  if object_name not in OBJECT_RULES:
    raise PlacementError(f"No placement rule for object {object_name!r}; "
                         f"known objects: {sorted(OBJECT_RULES)}.")
  return OBJECT_RULES[object_name]
