"""Anchor preparation: posed body -> scene coords -> occupancy / distance grids.

Once per scene (NumPy), the anchor pose is skinned, mapped into the z-up scene
(PAPER.md "Coordinates": scene = (z, x, y) of SMPL-X, the official stage 2's
``matrix_rot`` in InterGen/threestudio/systems/interfusion.py, so the body
stands upright and faces +x, the azimuth-0 "front view" camera), and turned
into two grids over the scene box [-r, r]^3 (node-aligned, R^3 nodes,
spacing 2r / (R - 1)):

* ``occupancy``: 1 inside the posed mesh, 0 outside -- exact ray parity
  along x, y and z with a majority vote (robust to small holes and to rays
  grazing edges), the indicator f(p) > 0.5 of PAPER.md Eq. 4 / 7;
* ``distance``: the unsigned point-to-mesh distance d of PAPER.md Eq. 4
  (exact point-triangle distances near the surface, dense surface samples
  elsewhere; error << one voxel).

Both are sampled in JAX by trilinear lookup. Grids are cached on disk, keyed
by the body model, the pose and the spec.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from interfusion_jax.body import lbs
from interfusion_jax.body.model import BodyModel, HEAD_JOINT, body_model_digest, load_body_model

_CACHE_VERSION = "anchor-v2"   # v2: body faces +x (scene = (z, x, y) of SMPL-X)


class AnchorError(ValueError):
  """The anchor cannot be built from these inputs."""


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
  """Static settings of anchor preparation.

  Attributes:
    resolution: grid nodes per axis (config.body.grid_resolution).
    radius: scene box half-size r (config.field.radius).
    aug_rot: rotate by -pi/6 about SMPL-X's x axis, the scene's y axis
      (config.body.aug_rot).
    aug_trans: centre at the root joint instead of the mean vertex.
    cache_dir: "" = ~/.cache/interfusion_jax/anchors; None disables caching.
    flat_hand_mean: smplx's flag for the hands (False = smplx default).
  """
  resolution: int = 128
  radius: float = 2.0
  aug_rot: bool = False
  aug_trans: bool = False
  cache_dir: Optional[str] = ""
  flat_hand_mean: bool = False


@flax.struct.dataclass
class Anchor:
  """The frozen anchor body of one scene (a pytree argument).

  Attributes:
    occupancy: [R, R, R] float32 in {0, 1}, indexed [ix, iy, iz].
    distance: [R, R, R] float32 unsigned distance to the surface (metres).
    vertices: [V, 3] posed vertices in scene coordinates (z-up).
    faces: [F, 3] int32.
    joints: [J, 3] posed joints in scene coordinates.
    head: [3] head joint (joint 15) position, for the head camera.
    radius: static scene-box half size r.
  """
  occupancy: jax.Array
  distance: jax.Array
  vertices: jax.Array
  faces: jax.Array
  joints: jax.Array
  head: jax.Array
  radius: float = flax.struct.field(pytree_node=False, default=2.0)

  @property
  def resolution(self) -> int:
    return int(self.occupancy.shape[0])

  @property
  def voxel_size(self) -> float:
    return 2.0 * self.radius / (self.resolution - 1)


# --- Placement. -------------------------------------------------------------


def rotation_x(angle: float) -> np.ndarray:
  """[3, 3] rotation by ``angle`` radians about the x axis."""
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float64)


# SMPL-X (y-up, facing +z, +x the body's left) -> z-up scene: scene = (z, x, y)
# of SMPL-X, i.e. scene_x = smpl_z, scene_y = smpl_x, scene_z = smpl_y. The
# official ``matrix_rot`` (InterGen/threestudio/systems/interfusion.py); its
# ShapeLoss maps scene points back with the inverse (utils/ops.py).
SMPL_TO_SCENE = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float64)


def scene_transform(vertices: np.ndarray, joints: np.ndarray, *,
                    aug_rot: bool, aug_trans: bool) -> tuple[np.ndarray, np.ndarray]:
  """Maps a y-up posed body into the z-up scene (PAPER.md "Coordinates").

  As in the official stage 2 (InterGen/threestudio/systems/interfusion.py):
  the body is posed with global_orient 0, or (-pi/6, 0, 0) with aug_rot (a
  rotation about SMPL-X's x axis, which is the scene's y axis: the body
  leans back by 30 deg), then SMPL-X axes are mapped into the scene by
  ``SMPL_TO_SCENE`` (``matrix_rot``: scene = (z, x, y) of SMPL-X). The body
  stands upright (+z) and faces +x, threestudio's azimuth-0 "front view"
  camera; its left is +y. The result is centred at its mean vertex
  (default) or at the root joint (aug_trans).

  Args:
    vertices: [V, 3]; joints: [J, 3] (y-up, metres).
  Returns:
    (vertices [V, 3], joints [J, 3]) in scene coordinates, float64:
    SMPL_TO_SCENE @ rotation_x(-pi/6 if aug_rot else 0) @ p, centred.
  """
  rot = SMPL_TO_SCENE @ rotation_x(-np.pi / 6 if aug_rot else 0.0)
  v = np.asarray(vertices, np.float64) @ rot.T
  j = np.asarray(joints, np.float64) @ rot.T
  centre = j[0] if aug_trans else v.mean(axis=0)
  return v - centre, j - centre


# --- Grids (NumPy). ---------------------------------------------------------


def grid_coords(resolution: int, radius: float) -> np.ndarray:
  """[R] node coordinates -r .. r of the (cubic) anchor grid."""
  return np.linspace(-radius, radius, resolution)


def _ray_parity(tris: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
  """Inside test by ray parity along ``axis`` for every grid node.

  A ray along ``axis`` through each grid column is intersected with every
  triangle whose projected bounding box covers it; a node is inside when
  an odd number of hits lies below it. Rays are shifted by a tiny
  irrational offset so no ray grazes a vertex or an edge exactly.

  Args:
    tris: [F, 3, 3] float64 triangle corners.
    axis: 0, 1 or 2.
    coords: [R] node coordinates (uniform).
  Returns:
    [R, R, R] bool, indexed [ix, iy, iz].
  """
  res = coords.shape[0]
  lo, h = coords[0], coords[1] - coords[0]
  b, c = [d for d in range(3) if d != axis]
  offset = h * np.array([1.234567e-4 * np.sqrt(2.0), 0.98765e-4 * np.sqrt(3.0)])
  p = tris[:, :, [b, c]] - offset                       # rays at node coords
  z = tris[:, :, axis]
  first = np.clip(np.ceil((p.min(axis=1) - lo) / h), 0, res).astype(np.int64)
  last = np.clip(np.floor((p.max(axis=1) - lo) / h), -1, res - 1).astype(np.int64)
  span = np.maximum(last - first + 1, 0)                # [F, 2]
  counts = span[:, 0] * span[:, 1]
  tri = np.repeat(np.arange(tris.shape[0]), counts)
  local = np.arange(tri.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
  ib = first[tri, 0] + local // np.maximum(span[tri, 1], 1)
  ic = first[tri, 1] + local % np.maximum(span[tri, 1], 1)
  q = np.stack([coords[ib], coords[ic]], axis=-1)
  a0, a1, a2 = p[tri, 0], p[tri, 1], p[tri, 2]
  cross = lambda u, v: u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
  det = cross(a1 - a0, a2 - a0)
  safe = np.where(det == 0, 1.0, det)
  w1 = cross(q - a0, a2 - a0) / safe
  w2 = cross(a1 - a0, q - a0) / safe
  w0 = 1.0 - w1 - w2
  hit = (det != 0) & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
  zhit = w0 * z[tri, 0] + w1 * z[tri, 1] + w2 * z[tri, 2]
  k = np.clip(np.ceil((zhit - lo) / h), 0, res).astype(np.int64)
  flat = (ib * res + ic) * (res + 1) + k
  toggles = np.bincount(flat[hit], minlength=res * res * (res + 1))
  parity = (np.cumsum(toggles.reshape(res, res, res + 1), axis=2)[..., :res] % 2) == 1
  order = [0, 0, 0]                                     # parity is [b, c, axis]
  order[b], order[c], order[axis] = 0, 1, 2
  return np.transpose(parity, order)


def occupancy_grid(vertices: np.ndarray, faces: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Inside/outside grid: majority vote of ray parity along x, y and z.

  Args:
    vertices: [V, 3]; faces: [F, 3]; coords: [R] node coordinates.
  Returns:
    [R, R, R] bool (True = inside the mesh).
  """
  tris = np.asarray(vertices, np.float64)[np.asarray(faces)]
  votes = sum(_ray_parity(tris, a, coords).astype(np.uint8) for a in range(3))
  return votes >= 2


def closest_point_on_triangle(points: np.ndarray, tris: np.ndarray) -> np.ndarray:
  """Exact closest point on each triangle (Ericson, RTCD 5.1.5).

  Args:
    points: [N, 3]; tris: [N, 3, 3] (one triangle per point).
  Returns:
    [N, 3] closest points.
  """
  a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
  dot = lambda u, v: np.einsum("ij,ij->i", u, v)
  ab, ac, ap = b - a, c - a, points - a
  d1, d2 = dot(ab, ap), dot(ac, ap)
  bp, cp = points - b, points - c
  d3, d4 = dot(ab, bp), dot(ac, bp)
  d5, d6 = dot(ab, cp), dot(ac, cp)
  va = d3 * d6 - d5 * d4
  vb = d5 * d2 - d1 * d6
  vc = d1 * d4 - d3 * d2
  eps = 1e-30
  # Interior by default.
  denom = va + vb + vc
  v = vb / np.where(np.abs(denom) < eps, eps, denom)
  w = vc / np.where(np.abs(denom) < eps, eps, denom)
  closest = a + ab * v[:, None] + ac * w[:, None]
  # Edge BC.
  t_bc = (d4 - d3) / np.where(np.abs((d4 - d3) + (d5 - d6)) < eps, eps, (d4 - d3) + (d5 - d6))
  sel = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
  closest = np.where(sel[:, None], b + (c - b) * t_bc[:, None], closest)
  # Edge AC.
  t_ac = d2 / np.where(np.abs(d2 - d6) < eps, eps, d2 - d6)
  sel = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
  closest = np.where(sel[:, None], a + ac * t_ac[:, None], closest)
  # Edge AB.
  t_ab = d1 / np.where(np.abs(d1 - d3) < eps, eps, d1 - d3)
  sel = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
  closest = np.where(sel[:, None], a + ab * t_ab[:, None], closest)
  # Vertex regions.
  closest = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, closest)
  closest = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, closest)
  return np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, closest)


def surface_samples(vertices: np.ndarray, faces: np.ndarray,
                    spacing: float) -> tuple[np.ndarray, np.ndarray]:
  """Mesh vertices plus barycentric-lattice points on triangles whose edges
  exceed ``spacing`` (no duplicated corners: duplicates slow KD trees).

  Args:
    vertices: [V, 3]; faces: [F, 3]; spacing: maximum lattice step.
  Returns:
    points [S, 3] and the index [S] of one triangle containing each.
  """
  tris = vertices[faces]
  owner = np.zeros(vertices.shape[0], np.int64)
  owner[faces.reshape(-1)] = np.repeat(np.arange(faces.shape[0]), 3)
  pts, ids = [vertices], [owner]
  edges = np.linalg.norm(tris - np.roll(tris, 1, axis=1), axis=-1).max(axis=1)
  steps = np.clip(np.ceil(edges / spacing), 1, 256).astype(np.int64)
  for n in np.unique(steps[steps > 1]):
    sel = np.flatnonzero(steps == n)
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    bary = np.stack([n - i - j, i, j], -1)
    bary = bary[(bary[:, 0] >= 0) & (bary.max(axis=1) < n)] / n          # no corners
    pts.append(np.einsum("lk,fkd->fld", bary, tris[sel]).reshape(-1, 3))
    ids.append(np.repeat(sel, bary.shape[0]))
  return np.concatenate(pts), np.concatenate(ids)


def distance_grid(vertices: np.ndarray, faces: np.ndarray, coords: np.ndarray,
                  *, band_voxels: float = 2.0, candidates: int = 12,
                  refine_passes: int = 2) -> np.ndarray:
  """Unsigned point-to-mesh distance at every grid node (PAPER.md Eq. 4, d).

  Nodes within ``band_voxels`` of the surface get exact point-triangle
  distances (candidate triangles from a KD tree of surface samples, step
  h / 2). Every other node takes the distance to the exact closest surface
  point of its nearest band node (a closest-point transform propagated by
  scipy's Euclidean distance transform), then refined by ``refine_passes``
  passes of neighbour propagation. Accuracy: within half a voxel of the
  exact distance (tests/test_body_anchor.py).

  Args:
    vertices: [V, 3]; faces: [F, 3]; coords: [R] node coordinates.
  Returns:
    [R, R, R] float32 distances.
  """
  from scipy import ndimage
  res = coords.shape[0]
  h = float(coords[1] - coords[0])
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  tris = vertices[faces]
  pts, tri_id = surface_samples(vertices, faces, h / 2.0)
  tree = cKDTree(pts, leafsize=32)
  nodes = np.stack(np.meshgrid(coords, coords, coords, indexing="ij"), -1).reshape(-1, 3)
  reach = band_voxels * h + h / 2.0            # sample covering radius <= h / 2
  near, _ = tree.query(nodes, k=1, distance_upper_bound=reach, workers=-1)
  band = np.flatnonzero(np.isfinite(near))
  k = min(candidates, pts.shape[0])
  _, nn = tree.query(nodes[band], k=k, workers=-1)
  cand = tri_id[nn.reshape(band.size, k)]
  rep = np.repeat(nodes[band], k, axis=0)
  cp = closest_point_on_triangle(rep, tris[cand.reshape(-1)]).reshape(band.size, k, 3)
  dist_k = np.linalg.norm(cp - nodes[band][:, None], axis=-1)
  best = dist_k.argmin(axis=1)
  closest = np.zeros((res ** 3, 3))
  closest[band] = cp[np.arange(band.size), best]
  is_band = np.zeros(res ** 3, bool)
  is_band[band] = True
  _, idx = ndimage.distance_transform_edt(~is_band.reshape(res, res, res),
                                          return_indices=True)
  src = np.ravel_multi_index(tuple(idx.reshape(3, -1)), (res, res, res))
  closest = closest[src].reshape(res, res, res, 3)
  nodes = nodes.reshape(res, res, res, 3)
  dist = np.linalg.norm(nodes - closest, axis=-1)
  for step in range(refine_passes):
    del step
    closest, dist = _propagate_closest(nodes, closest, dist)
  return dist.astype(np.float32)


def _propagate_closest(nodes: np.ndarray, closest: np.ndarray,
                       dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One pass of closest-point propagation: every node also tries the surface
  points carried by its 26 neighbours (each is a true surface point, so the
  distance can only get closer to exact).

  Args:
    nodes, closest: [R, R, R, 3]; dist: [R, R, R].
  Returns:
    updated (closest, dist).
  """
  closest, dist = closest.copy(), dist.copy()
  for dx in (-1, 0, 1):
    for dy in (-1, 0, 1):
      for dz in (-1, 0, 1):
        if dx == dy == dz == 0:
          continue
        cand = np.roll(closest, (dx, dy, dz), axis=(0, 1, 2))
        d = np.linalg.norm(nodes - cand, axis=-1)
        better = d < dist
        dist = np.where(better, d, dist)
        closest[better] = cand[better]
  return closest, dist


# --- Preparation and cache. ---------------------------------------------------


def _cache_path(spec: AnchorSpec, key: str) -> Optional[pathlib.Path]:
  if spec.cache_dir is None:
    return None
  root = spec.cache_dir or os.path.join("~", ".cache", "interfusion_jax", "anchors")
  return pathlib.Path(os.path.expanduser(root)) / f"anchor_{key[:24]}.npz"


def anchor_cache_key(body: BodyModel, body_pose: np.ndarray, global_orient: np.ndarray,
                     spec: AnchorSpec) -> str:
  """sha256 of the body model, the pose and every spec field but cache_dir."""
  h = hashlib.sha256(_CACHE_VERSION.encode())
  h.update(body_model_digest(body).encode())
  h.update(np.asarray(body_pose, np.float32).tobytes())
  h.update(np.asarray(global_orient, np.float32).tobytes())
  fields = dataclasses.asdict(spec)
  fields.pop("cache_dir")
  h.update(repr(sorted(fields.items())).encode())
  return h.hexdigest()


def build_anchor_arrays(body: BodyModel, body_pose: np.ndarray, global_orient: np.ndarray,
                        spec: AnchorSpec) -> dict[str, np.ndarray]:
  """Poses, places and voxelizes the body (no cache). Returns Anchor fields."""
  verts, joints = lbs.pose_body(body, body_pose, global_orient,
                                flat_hand_mean=spec.flat_hand_mean)
  verts, joints = scene_transform(np.asarray(verts), np.asarray(joints),
                                  aug_rot=spec.aug_rot, aug_trans=spec.aug_trans)
  extent = np.abs(verts).max()
  if extent >= spec.radius:
    raise AnchorError(
        f"The posed body reaches {extent:.2f} m from the centre but the scene "
        f"box has radius {spec.radius}; increase config.field.radius.")
  coords = grid_coords(spec.resolution, spec.radius)
  return dict(
      occupancy=occupancy_grid(verts, body.faces, coords).astype(np.float32),
      distance=distance_grid(verts, body.faces, coords),
      vertices=verts.astype(np.float32), faces=np.asarray(body.faces, np.int32),
      joints=joints.astype(np.float32), head=joints[HEAD_JOINT].astype(np.float32))


def prepare_anchor(body: BodyModel, body_pose, global_orient=None,
                   spec: AnchorSpec = AnchorSpec()) -> Anchor:
  """The anchor of a scene: posed body + occupancy / distance grids.

  Args:
    body: a loaded BodyModel.
    body_pose: [63] SMPL-X body pose (axis-angle; NumPy, concrete).
    global_orient: [3] or None (upright; the scene rotation is added).
    spec: AnchorSpec.
  Returns:
    Anchor with [R, R, R] grids (R = spec.resolution).
  Raises:
    PoseError for a wrong-length / non-finite pose; AnchorError if the
    posed body leaves the scene box.
  """
  if spec.resolution < 8:
    raise AnchorError(f"grid resolution {spec.resolution} is too small; use >= 8.")
  body_pose, global_orient = lbs.check_pose(body_pose, global_orient)
  key = anchor_cache_key(body, body_pose, global_orient, spec)
  path = _cache_path(spec, key)
  arrays = None
  if path is not None and path.exists():
    try:
      with np.load(path) as data:
        if str(data["key"]) == key:
          arrays = {k: data[k] for k in data.files if k != "key"}
          arrays["occupancy"] = arrays["occupancy"].astype(np.float32)
    except (OSError, KeyError, ValueError):
      arrays = None                                       # corrupt: rebuild
  if arrays is None:
    arrays = build_anchor_arrays(body, body_pose, global_orient, spec)
    if path is not None:
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
      stored = dict(arrays, occupancy=arrays["occupancy"].astype(np.uint8), key=key)
      np.savez_compressed(tmp, **stored)
      os.replace(tmp, path)
  return Anchor(**{k: jnp.asarray(v) for k, v in arrays.items()}, radius=spec.radius)


def prepare_anchor_from_model(model: str, gender: str, body_pose, global_orient=None,
                              spec: AnchorSpec = AnchorSpec()) -> Anchor:
  """Loads a body model and prepares its anchor (``prepare_anchor``).

  Args:
    model: "default" or the path of an SMPL-X .npz/.pkl (config.body.model).
    gender: "neutral" | "male" | "female" (config.body.gender).
    body_pose, global_orient: as for ``prepare_anchor``.
    spec: e.g. ``stage2.config.anchor_spec(run)``.
  """
  body = load_body_model(model, gender)
  return prepare_anchor(body, body_pose, global_orient, spec)


# --- JAX lookup. ---------------------------------------------------------------


def trilinear(grid: jax.Array, points: jax.Array, radius: float) -> jax.Array:
  """Trilinear lookup of a node-aligned grid over [-radius, radius]^3.

  Args:
    grid: [R, R, R] indexed [ix, iy, iz]; points: [..., 3].
  Returns:
    [...] values; points outside the box take the nearest boundary value.
  """
  res = grid.shape[0]
  u = (points + radius) * ((res - 1) / (2.0 * radius))
  u = jnp.clip(u, 0.0, res - 1.0)
  i0 = jnp.clip(jnp.floor(u).astype(jnp.int32), 0, res - 2)
  f = u - i0
  flat = grid.reshape(-1)
  out = 0.0
  for dx in (0, 1):
    for dy in (0, 1):
      for dz in (0, 1):
        idx = ((i0[..., 0] + dx) * res + i0[..., 1] + dy) * res + i0[..., 2] + dz
        w = ((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
             * (f[..., 2] if dz else 1 - f[..., 2]))
        out = out + w * flat[idx]
  return out


def anchor_inside(anchor: Anchor, points: jax.Array) -> jax.Array:
  """Indicator f(p) > 0.5 of PAPER.md Eq. 4 / 7. points [..., 3] -> [...] bool."""
  return trilinear(anchor.occupancy, points, anchor.radius) > 0.5


def anchor_sq_distance(anchor: Anchor, points: jax.Array) -> jax.Array:
  """Squared distance d^2 to the anchor surface (PAPER.md Eq. 4). [..., 3] -> [...]."""
  clamped = jnp.clip(points, -anchor.radius, anchor.radius)
  d = trilinear(anchor.distance, points, anchor.radius)
  d = d + jnp.linalg.norm(points - clamped, axis=-1)     # outside the box
  return d * d


def sample_anchor_fields(anchor: Anchor, points: jax.Array, key: jax.Array,
                         max_points: int = 80000,
                         point_mask: Optional[jax.Array] = None):
  """Draws min(N_real, N) of the real sample points uniformly at random
  without replacement (PAPER.md Eq. 4, "up to 80,000 drawn at random": the
  official ShapeLoss takes randperm(N_real)[:80000] of the render's real
  samples), with a FIXED output size N, so it jits.

  Args:
    anchor: Anchor.
    points: [..., 3] render sample points (M = prod(...) of them).
    key: PRNG key.
    max_points: N, the output size.
    point_mask: optional [...] bool, True for the real samples (False for
      padded / skipped ones); None = every point is real.
  Returns:
    points_sel [N, 3], inside [N] bool, sq_dist [N], valid [N] bool. The
    first k = min(N_real, N) rows are the drawn real points (valid True, in
    index order), the rest are padding (valid False, the origin).
  """
  flat = points.reshape(-1, 3)
  m = flat.shape[0]
  n = int(max_points)
  real = (jnp.ones((m,), bool) if point_mask is None
          else jnp.asarray(point_mask).reshape(-1).astype(bool))
  k = jnp.minimum(jnp.sum(real, dtype=jnp.int32), n)
  take = _smallest_keys(jax.random.bits(key, (m,), jnp.uint32), real, k)
  # Compaction: the taken points, in index order, go to rows 0 .. k - 1.
  row = jnp.where(take, jnp.cumsum(take, dtype=jnp.int32) - 1, n)
  idx = jnp.zeros((n,), jnp.int32).at[row].set(jnp.arange(m, dtype=jnp.int32),
                                              mode="drop")
  valid = jnp.arange(n) < k
  sel = jnp.where(valid[:, None], flat[idx], 0.0)
  return sel, anchor_inside(anchor, sel), anchor_sq_distance(anchor, sel), valid


def _smallest_keys(keys: jax.Array, real: jax.Array, k: jax.Array) -> jax.Array:
  """[M] bool: the k real entries with the smallest ``keys`` (exactly k).

  Random keys make this a uniform draw without replacement. The k-th
  smallest real key t is found by a radix select, O(M) with no sort: per
  digit (2 x 16 bits, or 4 x 8 bits for M <= 2^15, where the 2^16-bin
  histograms would dominate), a histogram of the candidates, its cumsum and
  a search fix the digit of t; ties at t (equal 32-bit keys) are broken by
  index.

  Args:
    keys: [M] uint32; real: [M] bool; k: int32 scalar, 0 <= k <= sum(real).
  """
  width = 16 if keys.shape[0] > (1 << 15) else 8
  bins = 1 << width
  t = jnp.uint32(0)
  cand, rank = real, k                     # t's digits so far match cand; rank in cand
  for shift in range(32 - width, -1, -width):
    digit = ((keys >> shift) & (bins - 1)).astype(jnp.int32)
    c = jnp.cumsum(jnp.zeros((bins,), jnp.int32).at[digit].add(cand.astype(jnp.int32)))
    d = jnp.searchsorted(c, rank, side="left").astype(jnp.int32)  # first with c >= rank
    rank = rank - jnp.where(d > 0, c[jnp.maximum(d - 1, 0)], 0)
    cand = cand & (digit == d)
    t = t | (d.astype(jnp.uint32) << shift)
  below = real & (keys < t)
  ties = real & (keys == t)
  room = k - jnp.sum(below, dtype=jnp.int32)
  return below | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= room))
