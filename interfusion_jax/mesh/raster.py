"""Fast CPU triangle-mesh rasterizer (NumPy, fully vectorised).

Used to render shaded bodies and objects outside the NeRF: pose-codebook views
(stage 1), body contact sheets and the procedural scene generator. It is plain
NumPy (no compile step, exact float64 coverage tests); see
benchmarks/bench_mesh_render.py for its speed against a naive rasterizer and a
jitted JAX alternative.

Algorithm (one vectorised pass over every triangle of several views):
  1. vertices -> camera space -> pixel coordinates (OpenGL c2w, pinhole);
     triangles crossing the near plane are clipped (``clip_near``);
  2. per triangle, the integer bounding box of covered pixel *centres*;
  3. triangles with small boxes are grouped by box shape and tested with
     broadcasting over a fixed window; large boxes are enumerated with
     ``np.repeat`` (no Python loop over triangles);
  4. barycentric inside test at pixel centres (edges inclusive);
  5. z-buffer: a packed int64 key ``(float32 depth bits << 32) | fragment``
     and ``np.minimum.at``; since positive float32 bit patterns sort like the
     floats, the minimum key is the nearest fragment (ties -> lowest index);
  6. perspective-correct barycentrics of the winners -> depth, normal, colour;
  7. Lambertian shading ``albedo * (ambient + diffuse * max(n.l, 0))``.

Conventions (same as ``interfusion_jax/nerf/camera.py``):
  * ``c2w`` is a 4x4 OpenGL camera-to-world matrix whose columns are right,
    up, backward (+z) and the camera position; the camera looks along -z.
  * ``fovy_deg`` is the vertical field of view; the focal length in pixels is
    ``0.5 * height / tan(fovy / 2)`` and pixels are square.
  * Pixel ``(i, j)``: row ``i`` from the top, column ``j`` from the left; its
    centre is at continuous image coordinates ``(j + 0.5, i + 0.5)``.
  * ``depth`` is the camera-space z-depth (distance along the viewing axis,
    not along the ray), ``inf`` where nothing is hit.
  * Shading is two-sided: a back-facing triangle's normal is flipped towards
    the camera. Geometry closer than ``near`` (z-depth) is clipped away;
    degenerate (zero-area) triangles are skipped.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import numbers
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

_EMPTY_KEY = np.iinfo(np.int64).max
DEFAULT_ALBEDO = (0.8, 0.8, 0.8)


class MeshRenderError(ValueError):
  """Invalid input to the mesh renderer; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class RasterSpec:
  """Static rasterisation settings.

  Attributes:
    height: image height in pixels.
    width: image width in pixels.
    fovy_deg: vertical field of view in degrees, in (0, 180).
    near: near clipping depth: geometry at z-depth <= near is clipped away
      (triangles are cut at 2 * near).
    cull_backfaces: drop triangles whose front (counter-clockwise winding,
      right-hand normal) faces away from the camera. Faster for closed,
      consistently wound meshes; leave False for open or badly wound meshes.
  """
  height: int
  width: int
  fovy_deg: float
  near: float = 1e-3
  cull_backfaces: bool = False

  def __post_init__(self):
    for name in ("height", "width"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise MeshRenderError(f"{name} = {v!r}: must be a positive integer.")
    if not (0.0 < float(self.fovy_deg) < 180.0):
      raise MeshRenderError(
          f"fovy_deg = {self.fovy_deg!r}: must be in (0, 180) degrees "
          "(vertical field of view).")
    if not float(self.near) > 0.0:
      raise MeshRenderError(f"near = {self.near!r}: must be > 0.")

  @property
  def focal(self) -> float:
    """Focal length in pixels (vertical fov, square pixels)."""
    return focal_length_px(self.fovy_deg, self.height)


# ----------------------------------------------------------------------------
# Geometry helpers.
# ----------------------------------------------------------------------------


def focal_length_px(fovy_deg: float, height: int) -> float:
  """Pinhole focal length in pixels: 0.5 * height / tan(fovy / 2)."""
  return 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)


def world_to_camera(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
  """Maps world points into camera space (OpenGL: camera looks along -z).

  Args:
    points: [..., P, 3] world points.
    c2w: [..., 4, 4] camera-to-world matrices; leading axes broadcast against
      those of ``points``.

  Returns:
    [..., P, 3] camera-space points: x right, y up, z backward.
  """
  points, c2w = np.asarray(points), np.asarray(c2w)
  lead = np.broadcast_shapes(points.shape[:-2], c2w.shape[:-2])
  pts = np.broadcast_to(points, lead + points.shape[-2:]).reshape(
      (-1,) + points.shape[-2:])
  cams = np.broadcast_to(c2w, lead + (4, 4)).reshape(-1, 4, 4)
  # p_cam = R^T (p - t); with row vectors: p @ R - t @ R. A loop of 2D
  # matmuls is much faster than a batched [3, 3] matmul or einsum.
  out = np.stack([p @ c[:3, :3] - c[:3, 3] @ c[:3, :3]
                  for p, c in zip(pts, cams)])
  return out.reshape(lead + points.shape[-2:])


def project_to_pixels(points_cam: np.ndarray, focal: float, height: int,
                      width: int) -> Tuple[np.ndarray, np.ndarray]:
  """Perspective projection of camera-space points to continuous pixel coords.

  Args:
    points_cam: [..., 3] camera-space points (looking along -z).
    focal: focal length in pixels.
    height: image height.
    width: image width.

  Returns:
    (xy [..., 2] continuous (column, row) coordinates, pixel (i, j) has its
    centre at (j + 0.5, i + 0.5); depth [...] z-depth = -z_cam).
  """
  depth = -points_cam[..., 2]
  safe = np.where(np.abs(depth) > 1e-12, depth, 1e-12)
  x = 0.5 * width + focal * points_cam[..., 0] / safe
  y = 0.5 * height - focal * points_cam[..., 1] / safe
  return np.stack([x, y], axis=-1), depth


def _corner_indices(faces: np.ndarray, n_meshes: int, n_verts: int
                    ) -> np.ndarray:
  """[3, M * F] indices of every face corner into M stacked vertex sets."""
  offset = (np.arange(n_meshes) * n_verts)[None, :, None]
  return (faces.T[:, None, :] + offset).reshape(3, -1)


def _area_normals(vt: np.ndarray, corners: np.ndarray) -> np.ndarray:
  """Cross products (v1 - v0) x (v2 - v0), component-major.

  Args:
    vt: [3, P] vertex coordinates (x, y, z rows).
    corners: [3, T] corner indices into P.

  Returns:
    [3, T] face normals with length = 2 * area.
  """
  vt = np.ascontiguousarray(vt)
  v0, v1, v2 = (np.take(vt, c, axis=1) for c in corners)  # fast 2D gather
  ax, ay, az = v1 - v0
  bx, by, bz = v2 - v0
  return np.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx])


def _unit_columns(n: np.ndarray) -> np.ndarray:
  """[3, T] vectors scaled to unit length (zero stays zero), as [T, 3]."""
  inv = 1.0 / np.maximum(np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]),
                         1e-20)
  return (n * inv).T


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Unit face normals by the right-hand rule (counter-clockwise = front).

  Args:
    vertices: [..., V, 3].
    faces: [F, 3] int vertex indices.

  Returns:
    [..., F, 3] unit normals (zero for degenerate faces).
  """
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  lead, nv = vertices.shape[:-2], vertices.shape[-2]
  vt = vertices.reshape(-1, 3).T
  m = vt.shape[1] // max(nv, 1)
  n = _area_normals(vt, _corner_indices(faces, m, nv))
  return _unit_columns(n).reshape(lead + (faces.shape[0], 3))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals.

  Args:
    vertices: [..., V, 3].
    faces: [F, 3] int.

  Returns:
    [..., V, 3] unit normals (zero for unreferenced vertices).
  """
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  lead, nv = vertices.shape[:-2], vertices.shape[-2]
  vt = vertices.reshape(-1, 3).T
  m = vt.shape[1] // max(nv, 1)
  corners = _corner_indices(faces, m, nv)
  n = _area_normals(vt, corners)
  # Scatter-add each face normal to its 3 corners: one bincount per axis.
  idx = corners.ravel()
  acc = np.stack([np.bincount(idx, weights=np.tile(n[c], 3), minlength=m * nv)
                  for c in range(3)])
  return _unit_columns(acc).reshape(lead + (nv, 3))


def lambert_shade(albedo: np.ndarray, normals: np.ndarray,
                  light_dir: np.ndarray, ambient: float,
                  diffuse: float) -> np.ndarray:
  """Lambertian shading: albedo * (ambient + diffuse * max(n . l, 0)), in [0,1].

  Args:
    albedo: [..., 3] colours.
    normals: [..., 3] unit normals.
    light_dir: [..., 3] unit directions towards the light (broadcastable).
    ambient: ambient term.
    diffuse: diffuse weight.

  Returns:
    [..., 3] shaded colours clipped to [0, 1].
  """
  ndotl = np.maximum(np.sum(normals * light_dir, axis=-1, keepdims=True), 0.0)
  return np.clip(albedo * (ambient + diffuse * ndotl), 0.0, 1.0)


# ----------------------------------------------------------------------------
# Rasterisation core.
# ----------------------------------------------------------------------------


def _min3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  return np.minimum(np.minimum(a, b), c)


def _max3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  return np.maximum(np.maximum(a, b), c)


def clip_near(corners: np.ndarray, near: float
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Clips camera-space triangles against the plane z-depth = near.

  Every triangle must have at least one vertex in front (depth > near) and
  one not. The kept part is a triangle (two vertices behind) or a quad split
  into two triangles (one vertex behind); winding is preserved.

  Args:
    corners: [S, 3, 3] camera-space corners (looking along -z).
    near: clipping depth.

  Returns:
    (sub [S2, 3, 3] camera-space corners of the kept triangles,
     parent [S2] index into S,
     bmap [S2, 3, 3]: row k = barycentrics of sub-corner k in its parent).
  """
  s = corners.shape[0]
  depth = -corners[..., 2]  # [S, 3]
  behind = depth <= near
  one = behind.sum(axis=1) == 1
  # The "odd" corner: the only one behind (one) or the only one in front.
  k = np.where(one, np.argmax(behind, axis=1), np.argmin(behind, axis=1))
  rows = np.arange(s)
  ia, ib, ic = k, (k + 1) % 3, (k + 2) % 3
  a, b, c = corners[rows, ia], corners[rows, ib], corners[rows, ic]
  da, db, dc = depth[rows, ia], depth[rows, ib], depth[rows, ic]
  eye = np.eye(3)
  ea, eb, ec = eye[ia], eye[ib], eye[ic]
  sab = ((near - da) / (db - da))[:, None]
  sac = ((near - da) / (dc - da))[:, None]
  p, q = a + sab * (b - a), a + sac * (c - a)
  bp, bq = ea + sab * (eb - ea), ea + sac * (ec - ea)
  o = np.flatnonzero(one)  # quad p, b, c, q -> (p, b, c), (p, c, q)
  t = np.flatnonzero(~one)  # triangle a, p, q
  sub = np.concatenate([np.stack([p[o], b[o], c[o]], 1),
                        np.stack([p[o], c[o], q[o]], 1),
                        np.stack([a[t], p[t], q[t]], 1)])
  bmap = np.concatenate([np.stack([bp[o], eb[o], ec[o]], 1),
                         np.stack([bp[o], ec[o], bq[o]], 1),
                         np.stack([ea[t], bp[t], bq[t]], 1)])
  return sub, np.concatenate([o, o, t]), bmap


def _covered_centre_range(a: np.ndarray, b: np.ndarray, c: np.ndarray,
                          size: int) -> tuple[np.ndarray, np.ndarray]:
  """Per triangle [T], the first and last pixel index (as floats, clamped to
  [0, size-1]) whose centre i + 0.5 lies within [min(a,b,c), max(a,b,c)].
  In place where possible: fewer temporaries on this hot path."""
  lo = np.minimum(a, b)
  np.minimum(lo, c, out=lo)
  lo -= 0.5
  np.ceil(lo, out=lo)
  np.maximum(lo, 0.0, out=lo)
  hi = np.maximum(a, b)
  np.maximum(hi, c, out=hi)
  hi -= 0.5
  np.floor(hi, out=hi)
  np.minimum(hi, size - 1.0, out=hi)
  return lo, hi


def _triangle_setup(points_cam: np.ndarray, faces: np.ndarray,
                    spec: RasterSpec) -> Dict[str, np.ndarray]:
  """Projects every (view, face) triangle and keeps those covering a pixel.

  Args:
    points_cam: [N, V, 3] camera-space vertices, one vertex set per view.
    faces: [F, 3] int.
    spec: static settings.

  Returns:
    dict over T candidate triangles: owner [T] int64 index of the (view,
    face) pair (view * F + face) each comes from; bx0, by0, bw, bh [T] int64
    bounding box of covered pixel centres (bw = 0 for dropped ones); ox, oy
    [T] offset of the first box pixel centre from vertex 0; a0, b0, a1, b1
    [T] screen gradients of the barycentrics l0, l1 (l0 = 1, l1 = 0 at
    vertex 0); iz [3, T] inverse vertex z-depths; back [T] bool. Triangles
    crossing the near plane are replaced by their clipped parts, appended
    from index n_plain on, with bmap [T - n_plain, 3, 3] (see ``clip_near``;
    None when nothing was clipped).
  """
  n, nv = points_cam.shape[:2]
  h, w = spec.height, spec.width
  pts = points_cam.reshape(-1, 3)
  xy, z = project_to_pixels(pts, spec.focal, h, w)
  xs = np.ascontiguousarray(xy[:, 0])
  ys = np.ascontiguousarray(xy[:, 1])
  # Global vertex indices of every (view, face) corner: [3, N * F].
  g = _corner_indices(faces, n, nv)
  x0, x1, x2 = xs[g[0]], xs[g[1]], xs[g[2]]
  y0, y1, y2 = ys[g[0]], ys[g[1]], ys[g[2]]
  z0, z1, z2 = z[g[0]], z[g[1]], z[g[2]]
  zmin = _min3(z0, z1, z2)
  # Twice the signed area in (column, row-down) coordinates: a counter-
  # clockwise (front) face seen from the camera has a negative area.
  area2 = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
  valid = _front_and_nondegenerate(area2, zmin, spec)
  owner = np.flatnonzero(valid)
  # Triangles crossing the near plane are replaced by their clipped parts
  # (clipped at 2 * near so the parts pass the depth > near test below).
  crossing = np.flatnonzero((zmin <= spec.near)
                            & (_max3(z0, z1, z2) > 2.0 * spec.near))
  if owner.size < 0.75 * area2.size or crossing.size:
    # Drop invalid triangles now when that saves work (e.g. back faces).
    x0, x1, x2, y0, y1, y2, z0, z1, z2, area2 = (
        a[owner] for a in (x0, x1, x2, y0, y1, y2, z0, z1, z2, area2))
    valid = np.ones(owner.size, bool)
  else:
    owner = np.arange(area2.size)
  n_plain, bmap = owner.size, None
  if crossing.size:
    sub, parent, bmap = clip_near(
        np.stack([pts[g[k, crossing]] for k in range(3)], 1), 2.0 * spec.near)
    sxy, sz = project_to_pixels(sub, spec.focal, h, w)  # [S2, 3, 2], [S2, 3]
    sarea2 = ((sxy[:, 1, 0] - sxy[:, 0, 0]) * (sxy[:, 2, 1] - sxy[:, 0, 1])
              - (sxy[:, 2, 0] - sxy[:, 0, 0]) * (sxy[:, 1, 1] - sxy[:, 0, 1]))
    svalid = _front_and_nondegenerate(sarea2, sz.min(axis=1), spec)
    x0, x1, x2, y0, y1, y2, z0, z1, z2, area2, valid = (
        np.concatenate([a, extra]) for a, extra in zip(
            (x0, x1, x2, y0, y1, y2, z0, z1, z2, area2, valid),
            (sxy[:, 0, 0], sxy[:, 1, 0], sxy[:, 2, 0], sxy[:, 0, 1],
             sxy[:, 1, 1], sxy[:, 2, 1], sz[:, 0], sz[:, 1], sz[:, 2],
             sarea2, svalid)))
    owner = np.concatenate([owner, crossing[parent]])
  # Bounding boxes of covered pixel centres.
  bx0, bx1 = _covered_centre_range(x0, x1, x2, w)
  by0, by1 = _covered_centre_range(y0, y1, y2, h)
  keep = (bx1 >= bx0) & (by1 >= by0) & valid
  # Dropped triangles are not compacted: they get an empty box (bw = 0) and
  # are never enumerated.
  inv = np.where(keep, area2, 1.0)
  np.divide(1.0, inv, out=inv)
  iz = np.stack([z0, z1, z2])
  iz[:, ~keep] = 1.0
  np.divide(1.0, iz, out=iz)
  bw = bx1 - bx0
  bw += 1.0
  bw[~keep] = 0.0
  bh = by1 - by0
  bh += 1.0
  ox = bx0 + 0.5
  ox -= x0
  oy = by0 + 0.5
  oy -= y0
  return dict(
      owner=owner, n_plain=n_plain, bmap=bmap,
      bx0=bx0.astype(np.int64), by0=by0.astype(np.int64),
      bw=bw.astype(np.int64), bh=bh.astype(np.int64), ox=ox, oy=oy,
      a0=_scaled_difference(y1, y2, inv), b0=_scaled_difference(x2, x1, inv),
      a1=_scaled_difference(y2, y0, inv), b1=_scaled_difference(x0, x2, inv),
      iz=iz, back=area2 > 0.0)


def _front_and_nondegenerate(area2: np.ndarray, zmin: np.ndarray,
                             spec: RasterSpec) -> np.ndarray:
  """[T] bool: in front of the near plane, non-degenerate (and front-facing
  when culling back faces)."""
  valid = (area2 < 0.0) if spec.cull_backfaces else (area2 != 0.0)
  valid &= zmin > spec.near
  return valid


def _scaled_difference(a: np.ndarray, b: np.ndarray, s: np.ndarray
                       ) -> np.ndarray:
  """(a - b) * s with one temporary."""
  out = a - b
  out *= s
  return out


def _inside_window(t: Dict[str, np.ndarray], sel, col: np.ndarray,
                   row: np.ndarray):
  """Barycentric inside test of triangles ``sel`` at box offsets (col, row).

  Args:
    t: output of ``_triangle_setup``.
    sel: slice or [G] index array selecting triangles.
    col, row: [G, K] or [K] integer pixel offsets inside each box.

  Returns:
    (g [P] positions in ``sel`` of inside fragments, k [P] their offset
    index, l0 [P], l1 [P] screen-space barycentrics).
  """
  dx = t["ox"][sel][:, None] + col
  dy = t["oy"][sel][:, None] + row
  l0 = 1.0 + t["a0"][sel][:, None] * dx + t["b0"][sel][:, None] * dy
  l1 = t["a1"][sel][:, None] * dx + t["b1"][sel][:, None] * dy
  inside = (l0 >= 0.0) & (l1 >= 0.0) & (l0 + l1 <= 1.0)
  g, k = np.nonzero(inside)
  return g, k, l0[g, k], l1[g, k]


def _runs(sorted_keys: np.ndarray):
  """(start, end) of each run of equal values in a sorted [n] array."""
  starts = np.flatnonzero(np.diff(sorted_keys, prepend=-1))
  return zip(starts, np.append(starts[1:], sorted_keys.size))


def _enumerate_fragments(t: Dict[str, np.ndarray], max_window: int = 16,
                         max_candidates: int = 1 << 22):
  """Every (triangle, pixel centre) pair with the centre inside the triangle.

  Triangles whose bounding box has at most ``max_window`` pixels are grouped
  by box shape and tested with broadcasting (no per-candidate gathers);
  larger ones enumerate their boxes with ``np.repeat``.

  Args:
    t: output of ``_triangle_setup`` (T triangles).
    max_window: largest box (in pixels) handled by the grouped path.
    max_candidates: large boxes are enumerated in chunks of about this many
      pixels (one box may exceed it).

  Returns:
    (idx [P] triangle index into t, px [P], py [P] pixel column/row,
    l0 [P], l1 [P] screen-space barycentrics).
  """
  if not 1 <= max_window <= 128:
    raise MeshRenderError(f"max_window = {max_window}: must be in [1, 128].")
  bw, bh = t["bw"], t["bh"]
  counts = bw * bh
  small = np.flatnonzero((counts <= max_window) & (counts > 0))
  # int16 codes: numpy's stable sort is then an O(n) radix sort.
  code = (bw[small] * (max_window + 1) + bh[small]).astype(np.int16)
  order = np.argsort(code, kind="stable")
  small, code = small[order], code[order]
  # Triangle attributes in group order, so that each group is a slice.
  ts = {k: t[k][small] for k in ("ox", "oy", "a0", "b0", "a1", "b1")}
  parts = []
  for s, e in _runs(code):
    gw, gh = divmod(int(code[s]), max_window + 1)
    col = np.tile(np.arange(gw), gh)
    row = np.repeat(np.arange(gh), gw)
    g, k, l0, l1 = _inside_window(ts, slice(s, e), col, row)
    parts.append((small[s + g], col[k], row[k], l0, l1))
  big = np.flatnonzero(counts > max_window)
  # Large boxes in chunks of about max_candidates pixels (bounded memory).
  chunk = np.cumsum(counts[big]) // max_candidates
  for lo, hi in _runs(chunk):
    sel = big[lo:hi]
    c = counts[sel]
    rep = np.repeat(np.arange(sel.size), c)
    local = np.arange(rep.size) - np.repeat(np.cumsum(c) - c, c)
    row, col = np.divmod(local, bw[sel][rep])
    idx = sel[rep]
    g, _, l0, l1 = _inside_window(t, idx, col[:, None], row[:, None])
    parts.append((idx[g], col[g], row[g], l0, l1))
  if not parts:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty, np.zeros(0), np.zeros(0)
  idx, col, row, l0, l1 = (np.concatenate(p) for p in zip(*parts))
  return idx, t["bx0"][idx] + col, t["by0"][idx] + row, l0, l1


def rasterize_fragments(points_cam: np.ndarray, faces: np.ndarray,
                        spec: RasterSpec) -> Dict[str, np.ndarray]:
  """Z-buffer rasterisation of N views at once; returns visible fragments.

  One vectorised pass over the N * F (view, triangle) pairs: the pixel
  centres inside each triangle's bounding box are tested with screen-space
  barycentrics (edges inclusive), and the nearest fragment per pixel is found
  with a packed ``(float32 depth bits << 32) | fragment`` int64 key and
  ``np.minimum.at`` (positive float bit patterns sort like the floats).

  Args:
    points_cam: [N, V, 3] camera-space vertices, one vertex set per view.
    faces: [F, 3] int vertex indices shared by all views.
    spec: static settings.

  Returns:
    dict of the P covered pixels (sorted by ``pixel``):
      pixel [P] int64 flat index into [N, H, W],
      face [P] int64 face index,
      bary [P, 3] float64 perspective-correct barycentrics (sum to 1),
      depth [P] float32 camera z-depth,
      back [P] bool, True where the visible triangle is back-facing.
  """
  n = points_cam.shape[0]
  h, w = spec.height, spec.width
  nf = faces.shape[0]
  t = _triangle_setup(points_cam, faces, spec)
  idx, px, py, l0, l1 = _enumerate_fragments(t)
  iz = np.take(t["iz"], idx, axis=1)  # [3, P]
  depth = perspective_depth((l0, l1, 1.0 - l0 - l1), iz)
  owner = t["owner"][idx]  # the (view, face) pair of each fragment
  pixel = ((owner // nf) * h + py) * w + px

  key = np.full(n * h * w, _EMPTY_KEY, dtype=np.int64)
  packed = depth.astype(np.float32).view(np.int32).astype(np.int64) << 32
  np.minimum.at(key, pixel, packed | np.arange(idx.size))

  pixel = np.flatnonzero(key != _EMPTY_KEY)
  win = key[pixel] & 0xFFFFFFFF
  l0, l1 = l0[win], l1[win]
  b = np.stack([l0, l1, 1.0 - l0 - l1], axis=-1) * np.take(iz, win, axis=1).T
  inv_depth = b[:, 0] + b[:, 1] + b[:, 2]
  b /= inv_depth[:, None]
  tri = idx[win]
  if t["bmap"] is not None:
    sub = np.flatnonzero(tri >= t["n_plain"])
    b[sub] = np.einsum("pk,pkj->pj", b[sub],
                       t["bmap"][tri[sub] - t["n_plain"]])
  return dict(pixel=pixel, face=owner[win] % nf, bary=b,
              depth=(1.0 / inv_depth).astype(np.float32), back=t["back"][tri])


def perspective_depth(bary_screen, inv_z) -> np.ndarray:
  """Perspective-correct depth: 1 / sum_k b_k / z_k (screen barycentrics).

  Args:
    bary_screen: 3-tuple of [P] screen-space barycentrics.
    inv_z: 3-tuple of [P] inverse vertex z-depths.

  Returns:
    [P] z-depth of the surface point seen through each pixel.
  """
  return 1.0 / (bary_screen[0] * inv_z[0] + bary_screen[1] * inv_z[1]
                + bary_screen[2] * inv_z[2])


def rasterize(points_cam: np.ndarray, faces: np.ndarray,
              spec: RasterSpec) -> Dict[str, np.ndarray]:
  """Z-buffer rasterisation of N views at once, as images.

  Args:
    points_cam: [N, V, 3] camera-space vertices, one vertex set per view.
    faces: [F, 3] int vertex indices shared by all views.
    spec: static settings.

  Returns:
    dict with
      face_id [N, H, W] int32 (-1 where empty),
      depth [N, H, W] float32 z-depth (inf where empty),
      bary [N, H, W, 3] float64 perspective-correct barycentrics (0 if empty),
      back [N, H, W] bool, True where the visible triangle is back-facing.
  """
  n = points_cam.shape[0]
  shape = (n, spec.height, spec.width)
  frag = rasterize_fragments(points_cam, faces, spec)
  size = n * spec.height * spec.width
  face_id = np.full(size, -1, dtype=np.int32)
  depth = np.full(size, np.inf, dtype=np.float32)
  bary = np.zeros((size, 3), dtype=np.float64)
  back = np.zeros(size, dtype=bool)
  p = frag["pixel"]
  face_id[p] = frag["face"]
  depth[p] = frag["depth"]
  bary[p] = frag["bary"]
  back[p] = frag["back"]
  return dict(face_id=face_id.reshape(shape), depth=depth.reshape(shape),
              bary=bary.reshape(shape + (3,)), back=back.reshape(shape))


# ----------------------------------------------------------------------------
# Input checking.
# ----------------------------------------------------------------------------


def _as_vertices(vertices) -> np.ndarray:
  v = np.asarray(vertices, dtype=np.float64)
  if v.ndim not in (2, 3) or v.shape[-1] != 3:
    raise MeshRenderError(
        f"vertices has shape {v.shape}: expected [V, 3] or [B, V, 3].")
  if not np.all(np.isfinite(v)):
    raise MeshRenderError("vertices contain NaN or inf; fix the mesh first.")
  return v


def _as_faces(faces, n_vertices: int) -> np.ndarray:
  f = np.asarray(faces)
  if f.ndim != 2 or f.shape[1] != 3:
    raise MeshRenderError(f"faces has shape {f.shape}: expected [F, 3] "
                          "triangle vertex indices (triangulate quads first).")
  if f.size and not np.issubdtype(f.dtype, np.integer):
    raise MeshRenderError(f"faces has dtype {f.dtype}: expected integers.")
  f = f.astype(np.int64)
  if f.size and (f.min() < 0 or f.max() >= n_vertices):
    raise MeshRenderError(
        f"faces index vertices in [{f.min()}, {f.max()}] but there are only "
        f"{n_vertices} vertices (indices must be 0-based and < V).")
  return f


def _as_c2ws(c2ws) -> np.ndarray:
  c = np.asarray(c2ws, dtype=np.float64)
  ok = c.ndim >= 2 and c.shape[-2:] in ((4, 4), (3, 4))
  if not ok or c.ndim > 4:
    raise MeshRenderError(
        f"camera matrix has shape {c.shape}: expected [4, 4] (or [3, 4]) "
        "camera-to-world, [N, 4, 4] for N views or [B, N, 4, 4] per mesh.")
  if not np.all(np.isfinite(c)):
    raise MeshRenderError("camera matrix contains NaN or inf.")
  if c.shape[-2] == 3:
    bottom = np.broadcast_to([0.0, 0.0, 0.0, 1.0], c.shape[:-2] + (1, 4))
    c = np.concatenate([c, bottom], axis=-2)
  return c


def _as_colors(colors, n: int, name: str, batch: Optional[int]) -> np.ndarray:
  col = np.asarray(colors, dtype=np.float64)
  shapes = [(n, 3)] + ([(batch, n, 3)] if batch is not None else [])
  if col.shape not in shapes:
    raise MeshRenderError(
        f"{name} has shape {col.shape}: expected one of {shapes}.")
  if not np.all(np.isfinite(col)):
    raise MeshRenderError(f"{name} contain NaN or inf.")
  return col


def _as_lighting(light_dir, light_position, ambient, diffuse, background
                ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray],
                           np.ndarray]:
  """Checks shading arguments: (unit light_dir | None, light_position |
  None, background [3])."""
  for name, value in (("ambient", ambient), ("diffuse", diffuse)):
    if not (isinstance(value, numbers.Real) and math.isfinite(value)):
      raise MeshRenderError(f"{name} = {value!r}: must be a finite number.")
  bg = np.asarray(background, dtype=np.float64)
  if bg.shape != (3,) or not np.all(np.isfinite(bg)):
    raise MeshRenderError(
        f"background = {background!r}: expected 3 finite numbers (RGB).")
  if light_dir is not None and light_position is not None:
    raise MeshRenderError("pass light_dir or light_position, not both.")
  ld = lp = None
  if light_dir is not None:
    ld = np.asarray(light_dir, dtype=np.float64)
    norm = np.linalg.norm(ld) if ld.shape == (3,) else 0.0
    if ld.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
      raise MeshRenderError(
          f"light_dir = {light_dir!r}: expected a non-zero finite [3] vector.")
    ld = ld / norm
  if light_position is not None:
    lp = np.asarray(light_position, dtype=np.float64)
    if lp.shape != (3,) or not np.all(np.isfinite(lp)):
      raise MeshRenderError(f"light_position = {light_position!r}: expected "
                            "a finite [3] world position.")
  return ld, lp, bg


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def _interpolate(values: np.ndarray, corners: np.ndarray,
                 bary: np.ndarray) -> np.ndarray:
  """sum_k bary[:, k] * values[corners[:, k]]: [P, 3] from [M, C], [P, 3]."""
  return (bary[:, 0:1] * values[corners[:, 0]]
          + bary[:, 1:2] * values[corners[:, 1]]
          + bary[:, 2:3] * values[corners[:, 2]])


def shade_fragments(frag: Dict[str, np.ndarray], verts: np.ndarray,
                    faces: np.ndarray, mesh_of_view: np.ndarray,
                    view_light: np.ndarray, albedo_table: Optional[np.ndarray],
                    per_vertex: bool, ambient: float, diffuse: float,
                    smooth_normals: bool, hw: int,
                    light_position: Optional[np.ndarray] = None
                    ) -> np.ndarray:
  """Lambertian colours of rasterised fragments.

  Args:
    frag: output of ``rasterize_fragments`` for n views.
    verts: [M, V, 3] world vertices of the meshes these views show.
    faces: [F, 3].
    mesh_of_view: [n] int, which of the M meshes each view shows.
    view_light: [n, 3] unit direction towards a directional light, per view
      (ignored when light_position is given).
    albedo_table: [M, V, 3] (per_vertex) or [M, F, 3] colours, or None for
      DEFAULT_ALBEDO.
    per_vertex: whether albedo_table is indexed by vertex.
    ambient, diffuse: shading weights.
    smooth_normals: interpolate vertex normals (else flat face normals).
    hw: H * W, to recover each fragment's view from its flat pixel index.
    light_position: [3] world position of a point light, or None.

  Returns:
    [P, 3] float64 colours in [0, 1].
  """
  m, nv = verts.shape[:2]
  nf = faces.shape[0]
  view = frag["pixel"] // hw
  mesh = mesh_of_view[view]
  face = frag["face"]
  gface = mesh * nf + face
  corners = faces[face] + (mesh * nv)[:, None]  # [P, 3] into M * V
  if smooth_normals:
    nrm = _interpolate(vertex_normals(verts, faces).reshape(-1, 3), corners,
                       frag["bary"])
    nrm = _unit_columns(nrm.T)
  else:
    nrm = face_normals(verts, faces).reshape(-1, 3)[gface]
  nrm = np.where(frag["back"][:, None], -nrm, nrm)
  if albedo_table is None:
    albedo = np.asarray(DEFAULT_ALBEDO, dtype=np.float64)
  elif per_vertex:
    albedo = _interpolate(albedo_table.reshape(-1, 3), corners, frag["bary"])
  else:
    albedo = albedo_table.reshape(-1, 3)[gface]
  if light_position is None:
    light = view_light[view]
  else:
    surface = _interpolate(verts.reshape(-1, 3), corners, frag["bary"])
    light = _unit_columns((light_position - surface).T)
  return lambert_shade(albedo, nrm, light, ambient, diffuse)


def render_mesh_batch(vertices, faces, c2ws, fovy_deg: float, height: int,
                      width: int, *, vertex_colors=None, face_colors=None,
                      light_dir=None, light_position=None,
                      ambient: float = 0.3,
                      diffuse: float = 0.7,
                      background: Sequence[float] = (1.0, 1.0, 1.0),
                      smooth_normals: bool = True,
                      cull_backfaces: bool = False, near: float = 1e-3,
                      supersample: int = 1, max_views_per_pass: int = 4,
                      num_threads: int = 1) -> Dict[str, np.ndarray]:
  """Renders many views of one mesh, or of B meshes sharing their faces.

  Args:
    vertices: [V, 3] one mesh, or [B, V, 3] B poses of a mesh (same faces).
    faces: [F, 3] int triangle vertex indices (counter-clockwise = front).
    c2ws: [N, 4, 4] OpenGL camera-to-world matrices (shared by every mesh),
      or [B, N, 4, 4] per mesh. [.., 3, 4] matrices are accepted too.
    fovy_deg: vertical field of view in degrees.
    height, width: image size in pixels.
    vertex_colors: [V, 3] (or [B, V, 3]) albedo in [0, 1], interpolated.
    face_colors: [F, 3] (or [B, F, 3]) flat albedo. At most one of the two;
      the default albedo is DEFAULT_ALBEDO.
    light_dir: [3] world direction TOWARDS a directional light; default: each
      view's backward axis c2w[:3, 2] (light at the camera).
    light_position: [3] world position of a point light instead (the
      NeRF material's light); at most one of light_dir / light_position.
    ambient, diffuse: Lambert weights, rgb = albedo (ambient + diffuse n.l+).
    background: [3] colour of empty pixels.
    smooth_normals: interpolate area-weighted vertex normals, else flat.
    cull_backfaces: see RasterSpec (off by default; on is faster for closed,
      consistently wound meshes such as SMPL-X bodies, docs/mesh_render.md).
    near: near clipping depth (see RasterSpec).
    supersample: s > 1 renders s x s samples per pixel and box-filters them
      (anti-aliasing, s^2 times the work); see ``downsample``.
    max_views_per_pass: views rasterised together in one vectorised pass
      (bounds memory; more amortises Python overhead).
    num_threads: render passes concurrently in this many threads (NumPy
      releases the GIL, so 2 threads use both cores of a 2-core CPU).

  Returns:
    dict with leading axes L = [N] for a [V, 3] mesh, [B, N] for [B, V, 3]:
      rgb [*L, H, W, 3] float32 in [0, 1],
      mask [*L, H, W] bool,
      depth [*L, H, W] float32 z-depth (inf where empty),
      face_id [*L, H, W] int32 (-1 where empty).
  """
  if (isinstance(supersample, bool)
      or not isinstance(supersample, numbers.Integral) or supersample < 1):
    raise MeshRenderError(
        f"supersample = {supersample!r}: must be a positive integer.")
  spec = RasterSpec(height=height, width=width, fovy_deg=fovy_deg, near=near,
                    cull_backfaces=cull_backfaces)
  spec = dataclasses.replace(spec, height=height * int(supersample),
                             width=width * int(supersample))
  v = _as_vertices(vertices)
  batched = v.ndim == 3
  vb = v if batched else v[None]
  n_meshes, n_verts = vb.shape[:2]
  f = _as_faces(faces, n_verts)
  c = _as_c2ws(c2ws)
  if c.ndim == 2:
    c = c[None]
  if c.ndim == 3:
    c = np.broadcast_to(c, (n_meshes,) + c.shape)
  elif not batched or c.shape[0] != n_meshes:
    raise MeshRenderError(
        f"c2ws has shape {c.shape}: per-mesh cameras [B, N, 4, 4] need "
        f"vertices [B, V, 3] with the same B (got vertices {v.shape}).")
  if vertex_colors is not None and face_colors is not None:
    raise MeshRenderError("pass vertex_colors or face_colors, not both.")
  table, per_vertex = None, False
  if vertex_colors is not None:
    table = _as_colors(vertex_colors, n_verts, "vertex_colors",
                       n_meshes if batched else None)
    per_vertex = True
  elif face_colors is not None:
    table = _as_colors(face_colors, f.shape[0], "face_colors",
                       n_meshes if batched else None)
  if table is not None:
    table = np.broadcast_to(table, (n_meshes,) + table.shape[-2:])
  ld, lp, bg = _as_lighting(light_dir, light_position, ambient, diffuse,
                            background)
  if num_threads < 1:
    raise MeshRenderError(f"num_threads = {num_threads}: must be >= 1.")
  if max_views_per_pass < 1:
    raise MeshRenderError(
        f"max_views_per_pass = {max_views_per_pass}: must be >= 1.")

  n_views = c.shape[1]
  h, w = spec.height, spec.width
  total = n_meshes * n_views
  cams = c.reshape(total, 4, 4)
  mesh_of = np.repeat(np.arange(n_meshes), n_views)
  rgb = np.empty((total, h * w, 3), np.float32)
  rgb[...] = bg
  depth = np.full((total, h * w), np.inf, np.float32)
  face_id = np.full((total, h * w), -1, np.int32)

  def render_pass(start: int) -> None:
    sl = slice(start, min(start + max_views_per_pass, total))
    meshes, local_mesh = np.unique(mesh_of[sl], return_inverse=True)
    pts = world_to_camera(vb[mesh_of[sl]], cams[sl])
    frag = rasterize_fragments(pts, f, spec)
    if ld is None:
      light = cams[sl, :3, 2]
      light = light / np.linalg.norm(light, axis=-1, keepdims=True)
    else:
      light = np.broadcast_to(ld, (sl.stop - start, 3))
    colors = shade_fragments(
        frag, vb[meshes], f, local_mesh, light,
        None if table is None else table[meshes], per_vertex, ambient,
        diffuse, smooth_normals, h * w, lp)
    pix = frag["pixel"]
    rgb[sl].reshape(-1, 3)[pix] = colors
    depth[sl].reshape(-1)[pix] = frag["depth"]
    face_id[sl].reshape(-1)[pix] = frag["face"]

  starts = range(0, total, max_views_per_pass)
  if num_threads > 1 and len(starts) > 1:
    # NumPy releases the GIL inside its kernels, so passes overlap.
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      list(pool.map(render_pass, starts))
  else:
    for start in starts:
      render_pass(start)
  out = dict(rgb=rgb.reshape(total, h, w, 3), mask=face_id.reshape(
      total, h, w) >= 0, depth=depth.reshape(total, h, w),
             face_id=face_id.reshape(total, h, w))
  if supersample > 1:
    out = downsample(out, int(supersample))
  lead = (n_meshes, n_views) if batched else (n_views,)
  return {k: a.reshape(lead + a.shape[1:]) for k, a in out.items()}


def downsample(images: Dict[str, np.ndarray], factor: int
               ) -> Dict[str, np.ndarray]:
  """Box-filters supersampled renders (anti-aliasing).

  Args:
    images: dict(rgb [N, s H, s W, 3], mask [N, s H, s W], depth, face_id).
    factor: s.

  Returns:
    dict with [N, H, W] images: rgb = block mean; mask = coverage >= 1/2;
    depth = nearest sample of the block (inf if none); face_id = the face of
    that nearest sample (-1 if none).
  """
  n, sh, sw = images["mask"].shape
  h, w, s = sh // factor, sw // factor, factor

  def blocks(a):  # [N, sH, sW, ...] -> [N, H, W, s * s, ...]
    a = a.reshape((n, h, s, w, s) + a.shape[3:])
    return np.moveaxis(a, 2, 3).reshape((n, h, w, s * s) + a.shape[5:])

  depth = blocks(images["depth"])
  nearest = np.argmin(depth, axis=-1)[..., None]
  return dict(
      rgb=blocks(images["rgb"]).mean(axis=3).astype(np.float32),
      mask=blocks(images["mask"]).mean(axis=3) >= 0.5,
      depth=np.take_along_axis(depth, nearest, -1)[..., 0],
      face_id=np.take_along_axis(blocks(images["face_id"]), nearest,
                                 -1)[..., 0])


def render_mesh(vertices, faces, c2w, fovy_deg: float, height: int,
                width: int, **kwargs) -> Dict[str, np.ndarray]:
  """Renders one view of one triangle mesh (see ``render_mesh_batch``).

  Args:
    vertices: [V, 3] world vertices.
    faces: [F, 3] int.
    c2w: [4, 4] OpenGL camera-to-world matrix.
    fovy_deg: vertical field of view in degrees.
    height, width: image size.
    **kwargs: vertex_colors [V, 3], face_colors [F, 3], light_dir [3] or
      light_position [3],
      ambient, diffuse, background [3], smooth_normals, cull_backfaces, near,
      supersample.

  Returns:
    dict(rgb [H, W, 3] float32 in [0, 1], mask [H, W] bool,
         depth [H, W] float32 (inf where empty), face_id [H, W] int32 (-1)).
  """
  v = _as_vertices(vertices)
  if v.ndim != 2:
    raise MeshRenderError(
        f"vertices has shape {v.shape}: render_mesh takes one mesh [V, 3]; "
        "use render_mesh_batch for [B, V, 3].")
  c = _as_c2ws(c2w)
  if c.shape != (4, 4):
    raise MeshRenderError(
        f"c2w has shape {c.shape}: render_mesh takes one [4, 4] camera; use "
        "render_mesh_batch for several.")
  out = render_mesh_batch(v, faces, c[None], fovy_deg, height, width, **kwargs)
  return {k: a[0] for k, a in out.items()}
