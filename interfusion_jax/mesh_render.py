"""Fast CPU triangle-mesh rasterizer (NumPy, fully vectorised).

Used to render shaded bodies and objects outside the NeRF: pose-codebook views
(stage 1), body contact sheets and the procedural scene generator. It is plain
NumPy on purpose: on a 2-core CPU a vectorised scan over all triangles of all
views at once beats a jitted scatter (see benchmarks/bench_mesh_render.py).

Algorithm (one pass over every triangle of every view):
  1. vertices -> camera space -> pixel coordinates (OpenGL c2w, pinhole);
  2. per triangle, the integer bounding box of covered pixel *centres*;
  3. every candidate pixel of every triangle is enumerated with one
     ``np.repeat`` (no Python loop over triangles or buckets);
  4. barycentric inside test at pixel centres (edges inclusive);
  5. z-buffer: a packed int64 key ``(float32 depth bits << 32) | triangle`` and
     ``np.minimum.at``; since positive float32 bit patterns sort like the
     floats, the minimum key is the nearest triangle (ties -> lowest index);
  6. perspective-correct barycentrics of the winners -> depth, normal, colour;
  7. Lambertian shading ``albedo * (ambient + diffuse * max(n.l, 0))``.

Conventions (same as ``interfusion_jax/camera.py``):
  * ``c2w`` is a 4x4 OpenGL camera-to-world matrix whose columns are right,
    up, backward (+z) and the camera position; the camera looks along -z.
  * ``fovy_deg`` is the vertical field of view; the focal length in pixels is
    ``0.5 * height / tan(fovy / 2)`` and pixels are square.
  * Pixel ``(i, j)``: row ``i`` from the top, column ``j`` from the left; its
    centre is at continuous image coordinates ``(j + 0.5, i + 0.5)``.
  * ``depth`` is the camera-space z-depth (distance along the viewing axis,
    not along the ray), ``inf`` where nothing is hit.
  * Shading is two-sided: a back-facing triangle's normal is flipped towards
    the camera. Triangles with a vertex closer than ``near`` to the camera
    plane are dropped (no clipping), as are degenerate (zero-area) ones.
"""
from __future__ import annotations

import dataclasses
import math
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
    near: triangles with any vertex at z-depth <= near are dropped.
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
  rot = c2w[..., :3, :3]
  pos = c2w[..., None, :3, 3]
  # p_cam = R^T (p - t); with row vectors: (p - t) @ R.
  return np.matmul(points - pos, rot)


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


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Unit face normals by the right-hand rule (counter-clockwise = front).

  Args:
    vertices: [..., V, 3].
    faces: [F, 3] int vertex indices.

  Returns:
    [..., F, 3] unit normals (zero for degenerate faces).
  """
  v0 = vertices[..., faces[:, 0], :]
  n = np.cross(vertices[..., faces[:, 1], :] - v0,
               vertices[..., faces[:, 2], :] - v0)
  norm = np.linalg.norm(n, axis=-1, keepdims=True)
  return n / np.maximum(norm, 1e-20)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Area-weighted unit vertex normals.

  Args:
    vertices: [V, 3].
    faces: [F, 3] int.

  Returns:
    [V, 3] unit normals (zero for unreferenced vertices).
  """
  v0 = vertices[faces[:, 0]]
  n = np.cross(vertices[faces[:, 1]] - v0, vertices[faces[:, 2]] - v0)
  acc = np.zeros_like(vertices, dtype=np.float64)
  for k in range(3):
    np.add.at(acc, faces[:, k], n)
  norm = np.linalg.norm(acc, axis=-1, keepdims=True)
  return acc / np.maximum(norm, 1e-20)


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


def _barycentric_coefficients(tx: np.ndarray, ty: np.ndarray, area2: np.ndarray
                              ) -> np.ndarray:
  """Affine screen-space barycentrics b_k(x, y) = a_k x + b_k y + c_k.

  Args:
    tx, ty: [T, 3] triangle vertex pixel coordinates.
    area2: [T] twice the signed area (non-zero).

  Returns:
    [T, 2, 3] coefficients (a, b, c) of b_0 and b_1 (b_2 = 1 - b_0 - b_1).
  """
  inv = 1.0 / area2
  out = np.empty((tx.shape[0], 2, 3), dtype=np.float64)
  for k in range(2):
    i, j = (k + 1) % 3, (k + 2) % 3
    # b_k = edge(v_i, v_j, p) / area2, edge = (xj-xi)(y-yi) - (yj-yi)(x-xi).
    out[:, k, 0] = -(ty[:, j] - ty[:, i]) * inv
    out[:, k, 1] = (tx[:, j] - tx[:, i]) * inv
    out[:, k, 2] = ((ty[:, j] - ty[:, i]) * tx[:, i]
                    - (tx[:, j] - tx[:, i]) * ty[:, i]) * inv
  return out


def rasterize(points_cam: np.ndarray, faces: np.ndarray,
              spec: RasterSpec) -> Dict[str, np.ndarray]:
  """Z-buffer rasterisation of N views at once.

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
  n_views = points_cam.shape[0]
  h, w = spec.height, spec.width
  n_faces = faces.shape[0]
  xy, z = project_to_pixels(points_cam, spec.focal, h, w)  # [N,V,2], [N,V]

  # Per (view, face) triangle data, flattened to T = N * F.
  tx = xy[:, faces, 0].reshape(-1, 3)
  ty = xy[:, faces, 1].reshape(-1, 3)
  tz = z[:, faces].reshape(-1, 3)
  area2 = ((tx[:, 1] - tx[:, 0]) * (ty[:, 2] - ty[:, 0])
           - (tx[:, 2] - tx[:, 0]) * (ty[:, 1] - ty[:, 0]))
  # In (column, row-down) pixel coordinates a counter-clockwise (front) face
  # seen from the camera has a negative signed area.
  keep = (tz.min(axis=1) > spec.near) & (area2 != 0.0)
  if spec.cull_backfaces:
    keep &= area2 < 0.0
  x0 = np.maximum(np.ceil(tx.min(axis=1) - 0.5), 0.0)
  x1 = np.minimum(np.floor(tx.max(axis=1) - 0.5), w - 1.0)
  y0 = np.maximum(np.ceil(ty.min(axis=1) - 0.5), 0.0)
  y1 = np.minimum(np.floor(ty.max(axis=1) - 0.5), h - 1.0)
  keep &= (x1 >= x0) & (y1 >= y0)
  tri = np.nonzero(keep)[0]  # indices into the T triangles

  key = np.full(n_views * h * w, _EMPTY_KEY, dtype=np.int64)
  if tri.size:
    tx, ty, tz, area2 = tx[tri], ty[tri], tz[tri], area2[tri]
    bx0 = x0[tri].astype(np.int64)
    by0 = y0[tri].astype(np.int64)
    bw = x1[tri].astype(np.int64) - bx0 + 1
    bh = y1[tri].astype(np.int64) - by0 + 1
    coef = _barycentric_coefficients(tx, ty, area2)
    inv_z = 1.0 / tz

    # Enumerate every candidate pixel of every triangle.
    counts = bw * bh
    cand = np.repeat(np.arange(tri.size), counts)
    local = np.arange(cand.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cw = bw[cand]
    px = bx0[cand] + local % cw
    py = by0[cand] + local // cw
    cx = px + 0.5
    cy = py + 0.5
    c = coef[cand]  # [C, 2, 3]
    b0 = c[:, 0, 0] * cx + c[:, 0, 1] * cy + c[:, 0, 2]
    b1 = c[:, 1, 0] * cx + c[:, 1, 1] * cy + c[:, 1, 2]
    b2 = 1.0 - b0 - b1
    inside = (b0 >= 0.0) & (b1 >= 0.0) & (b2 >= 0.0)
    cand, px, py = cand[inside], px[inside], py[inside]
    iz = inv_z[cand]
    pinv = (b0[inside] * iz[:, 0] + b1[inside] * iz[:, 1]
            + b2[inside] * iz[:, 2])
    depth = (1.0 / pinv).astype(np.float32)
    view = tri[cand] // n_faces
    pix = (view * h + py) * w + px
    packed = (depth.view(np.int32).astype(np.int64) << 32) | cand
    np.minimum.at(key, pix, packed)

  covered = key != _EMPTY_KEY
  face_id = np.full(key.shape, -1, dtype=np.int32)
  depth_img = np.full(key.shape, np.inf, dtype=np.float32)
  bary = np.zeros(key.shape + (3,), dtype=np.float64)
  back = np.zeros(key.shape, dtype=bool)
  if np.any(covered):
    pix = np.nonzero(covered)[0]
    win = (key[pix] & 0xFFFFFFFF).astype(np.int64)  # index into `tri`
    px = pix % w + 0.5
    py = (pix // w) % h + 0.5
    c = coef[win]
    b0 = c[:, 0, 0] * px + c[:, 0, 1] * py + c[:, 0, 2]
    b1 = c[:, 1, 0] * px + c[:, 1, 1] * py + c[:, 1, 2]
    b = np.stack([b0, b1, 1.0 - b0 - b1], axis=-1) * inv_z[win]
    s = b.sum(axis=-1, keepdims=True)
    bary[pix] = b / s
    depth_img[pix] = (1.0 / s[:, 0]).astype(np.float32)
    face_id[pix] = (tri[win] % n_faces).astype(np.int32)
    back[pix] = area2[win] > 0.0
  shape = (n_views, h, w)
  return dict(face_id=face_id.reshape(shape), depth=depth_img.reshape(shape),
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


def _as_c2ws(c2ws, batch: Optional[int]) -> np.ndarray:
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


# ----------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------


def _shade_views(verts: np.ndarray, faces: np.ndarray, c2w: np.ndarray,
                 raster: Dict[str, np.ndarray], vertex_colors, face_colors,
                 light_dir, ambient: float, diffuse: float, background,
                 smooth_normals: bool) -> np.ndarray:
  """Shades rasterised views of one mesh.

  Args:
    verts: [V, 3] world vertices of this mesh.
    faces: [F, 3].
    c2w: [N, 4, 4] the views' cameras.
    raster: output of ``rasterize`` for these N views.
    vertex_colors: [V, 3] or None.
    face_colors: [F, 3] or None.
    light_dir: [3] or None (None: each view's backward axis, i.e. the light
      sits at the camera).
    ambient, diffuse: shading weights.
    background: [3] colour.
    smooth_normals: interpolate vertex normals (else flat face normals).

  Returns:
    [N, H, W, 3] float32 colours.
  """
  face_id = raster["face_id"]
  n, h, w = face_id.shape
  rgb = np.empty((n, h, w, 3), dtype=np.float64)
  rgb[...] = background
  sel = face_id >= 0
  if not np.any(sel):
    return rgb.astype(np.float32)
  fid = face_id[sel]
  bary = raster["bary"][sel]  # [P, 3]
  corner = faces[fid]  # [P, 3]
  if smooth_normals:
    vn = vertex_normals(verts, faces)
    nrm = np.einsum("pk,pkc->pc", bary, vn[corner])
    nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-20)
  else:
    nrm = face_normals(verts, faces)[fid]
  nrm = np.where(raster["back"][sel][:, None], -nrm, nrm)
  if vertex_colors is not None:
    albedo = np.einsum("pk,pkc->pc", bary, vertex_colors[corner])
  elif face_colors is not None:
    albedo = face_colors[fid]
  else:
    albedo = np.broadcast_to(np.asarray(DEFAULT_ALBEDO), nrm.shape)
  if light_dir is None:
    view_idx = np.nonzero(sel)[0]
    light = c2w[view_idx, :3, 2]
    light = light / np.linalg.norm(light, axis=-1, keepdims=True)
  else:
    light = light_dir
  rgb[sel] = lambert_shade(albedo, nrm, light, ambient, diffuse)
  return rgb.astype(np.float32)


def render_mesh_batch(vertices, faces, c2ws, fovy_deg: float, height: int,
                      width: int, *, vertex_colors=None, face_colors=None,
                      light_dir=None, ambient: float = 0.3,
                      diffuse: float = 0.7,
                      background: Sequence[float] = (1.0, 1.0, 1.0),
                      smooth_normals: bool = True,
                      cull_backfaces: bool = False, near: float = 1e-3,
                      max_views_per_pass: int = 16) -> Dict[str, np.ndarray]:
  """Renders many views of one mesh, or of B meshes sharing their faces.

  Args:
    vertices: [V, 3] one mesh, or [B, V, 3] B poses of a mesh (same faces).
    faces: [F, 3] int triangle vertex indices (counter-clockwise = front).
    c2ws: [N, 4, 4] OpenGL camera-to-world matrices (shared by every mesh),
      or [B, N, 4, 4] per mesh. [3, 4] rows are accepted too.
    fovy_deg: vertical field of view in degrees.
    height, width: image size in pixels.
    vertex_colors: [V, 3] (or [B, V, 3]) albedo in [0, 1], interpolated.
    face_colors: [F, 3] (or [B, F, 3]) flat albedo. At most one of the two;
      default albedo is DEFAULT_ALBEDO.
    light_dir: [3] world direction TOWARDS a directional light; default: each
      view's backward axis c2w[:3, 2] (light at the camera).
    ambient, diffuse: Lambert weights, rgb = albedo (ambient + diffuse n.l+).
    background: [3] colour of empty pixels.
    smooth_normals: interpolate area-weighted vertex normals, else flat.
    cull_backfaces: see RasterSpec (off by default; on is faster for closed
      consistently wound meshes).
    near: triangles with a vertex at z-depth <= near are dropped.
    max_views_per_pass: views rasterised together in one vectorised pass
      (bounds memory; larger amortises Python overhead).

  Returns:
    dict with leading axes L = [N] for a [V, 3] mesh, [B, N] for [B, V, 3]:
      rgb [*L, H, W, 3] float32 in [0, 1],
      mask [*L, H, W] bool,
      depth [*L, H, W] float32 z-depth (inf where empty),
      face_id [*L, H, W] int32 (-1 where empty).
  """
  spec = RasterSpec(height=height, width=width, fovy_deg=fovy_deg, near=near,
                    cull_backfaces=cull_backfaces)
  v = _as_vertices(vertices)
  batched = v.ndim == 3
  vb = v if batched else v[None]
  n_meshes, n_verts = vb.shape[:2]
  f = _as_faces(faces, n_verts)
  c = _as_c2ws(c2ws, n_meshes if batched else None)
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
  vcol = fcol = None
  if vertex_colors is not None:
    vcol = _as_colors(vertex_colors, n_verts, "vertex_colors",
                      n_meshes if batched else None)
  if face_colors is not None:
    fcol = _as_colors(face_colors, f.shape[0], "face_colors",
                      n_meshes if batched else None)
  bg = np.asarray(background, dtype=np.float64)
  if bg.shape != (3,):
    raise MeshRenderError(f"background has shape {bg.shape}: expected [3].")
  ld = None
  if light_dir is not None:
    ld = np.asarray(light_dir, dtype=np.float64)
    norm = np.linalg.norm(ld) if ld.shape == (3,) else 0.0
    if ld.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
      raise MeshRenderError(
          f"light_dir = {light_dir!r}: expected a non-zero finite [3] vector.")
    ld = ld / norm
  if max_views_per_pass < 1:
    raise MeshRenderError("max_views_per_pass must be >= 1.")

  n_views = c.shape[1]
  h, w = height, width
  out = dict(
      rgb=np.empty((n_meshes, n_views, h, w, 3), np.float32),
      mask=np.empty((n_meshes, n_views, h, w), bool),
      depth=np.empty((n_meshes, n_views, h, w), np.float32),
      face_id=np.empty((n_meshes, n_views, h, w), np.int32))
  # Flatten (mesh, view) pairs and rasterise them in passes.
  pairs = [(b, k) for b in range(n_meshes) for k in range(n_views)]
  for start in range(0, len(pairs), max_views_per_pass):
    chunk = pairs[start:start + max_views_per_pass]
    bi = np.array([p[0] for p in chunk])
    ki = np.array([p[1] for p in chunk])
    cams = c[bi, ki]  # [n, 4, 4]
    pts = world_to_camera(vb[bi], cams)
    raster = rasterize(pts, f, spec)
    for b in np.unique(bi):
      m = bi == b
      sub = {name: arr[m] for name, arr in raster.items()}
      vc = None if vcol is None else (vcol[b] if vcol.ndim == 3 else vcol)
      fc = None if fcol is None else (fcol[b] if fcol.ndim == 3 else fcol)
      rgb = _shade_views(vb[b], f, cams[m], sub, vc, fc, ld, ambient,
                         diffuse, bg, smooth_normals)
      out["rgb"][b, ki[m]] = rgb
      out["mask"][b, ki[m]] = sub["face_id"] >= 0
      out["depth"][b, ki[m]] = sub["depth"]
      out["face_id"][b, ki[m]] = sub["face_id"]
  if not batched:
    out = {k: a[0] for k, a in out.items()}
  return out


def render_mesh(vertices, faces, c2w, fovy_deg: float, height: int,
                width: int, **kwargs) -> Dict[str, np.ndarray]:
  """Renders one view of one triangle mesh (see ``render_mesh_batch``).

  Args:
    vertices: [V, 3] world vertices.
    faces: [F, 3] int.
    c2w: [4, 4] OpenGL camera-to-world matrix.
    fovy_deg: vertical field of view in degrees.
    height, width: image size.
    **kwargs: vertex_colors [V, 3], face_colors [F, 3], light_dir [3],
      ambient, diffuse, background [3], smooth_normals, cull_backfaces, near.

  Returns:
    dict(rgb [H, W, 3] float32 in [0, 1], mask [H, W] bool,
         depth [H, W] float32 (inf where empty), face_id [H, W] int32 (-1)).
  """
  v = _as_vertices(vertices)
  if v.ndim != 2:
    raise MeshRenderError(
        f"vertices has shape {v.shape}: render_mesh takes one mesh [V, 3]; "
        "use render_mesh_batch for [B, V, 3].")
  c = _as_c2ws(c2w, None)
  if c.shape != (4, 4):
    raise MeshRenderError(
        f"c2w has shape {c.shape}: render_mesh takes one [4, 4] camera; use "
        "render_mesh_batch for several.")
  out = render_mesh_batch(v, faces, c[None], fovy_deg, height, width, **kwargs)
  return {k: a[0] for k, a in out.items()}
