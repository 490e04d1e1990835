"""UV-textured meshes: an xatlas UV atlas, an albedo texture baked from a field, OBJ/MTL/PNG + GLB.

The textured exports beside the vertex-colour ones (``mesh/export.py``), as
threestudio's exporter writes them: ``bake`` unwraps a marching-cubes mesh with
xatlas, finds for every texel centre within ``REACH`` texels of a UV triangle
the closest point of the nearest one (inside: the texel's own barycentrics),
lifts it to the 3D surface point by those barycentrics, queries the field's
albedo there in fixed-size chunks (one compilation of a jitted field) and
dilates the charts into the remaining texels (each takes the value of its
nearest baked texel), so bilinear and mip-mapped lookups at the chart borders
never reach background. ``write_textured_mesh`` writes ``stem.obj`` +
``stem.mtl`` + ``stem.png`` and ``stem.glb`` (texture embedded) with trimesh.

UV convention (Wavefront OBJ, as trimesh stores UVs): u to the right, v up;
texel (i, j) of an [H, W] texture (row i from the top) has its centre at
uv = ((j + 0.5) / W, 1 - (i + 0.5) / H). glTF's v points down: trimesh flips
it when writing a GLB. A border of ``BORDER`` texels is kept free of charts so
that lookups never wrap to the opposite edge (glTF's default sampler repeats).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
import xatlas

from interfusion_jax import fileio
from interfusion_jax.mesh import export as mesh_export
from interfusion_jax.mesh.types import Mesh

DEFAULT_SIZE = 1024
BORDER = 2          # texels left free of charts at the texture's edges
# xatlas padding between charts, in atlas texels: more than twice the baking reach, so a
# texel a bilinear lookup in one chart reads is nearer that chart than any other.
PADDING = 4
REACH = 1.5         # texels outside a chart baked from its nearest triangle
# glTF is y-up; the scene is z-up: (x, y, z) -> (x, z, -y), as mesh.export.glb_bytes.
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], np.float64)


class TexturedMesh(NamedTuple):
  """A UV-mapped mesh: vertices [V, 3] float32, faces [F, 3] int32, uvs [V, 2] float32 in
  [0, 1] (OBJ convention, v up), texture [H, W, 3] uint8 (row 0 at the top)."""
  vertices: np.ndarray
  faces: np.ndarray
  uvs: np.ndarray
  texture: np.ndarray


class TextureError(ValueError):
  """Invalid input to the texture baker; the message says what to fix."""


def unwrap(mesh: Mesh, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """xatlas UV atlas of ``mesh`` for a ``size`` x ``size`` texture.

  Vertices on chart seams are split (``vmapping``); faces keep their order, less the
  slivers xatlas leaves unmapped (near-zero area: it returns them with three equal
  UVs), which are dropped: on a 128^3 marching-cubes surface 344 of 54.6k faces,
  4e-6 of its area, each under 0.002 of the median face.

  Returns:
    (vmapping [V'] int64 index of each new vertex in ``mesh.vertices``,
     faces [F', 3] int32 into the new vertices (F' <= F), uvs [V', 2] float32 in
     [BORDER / size, 1 - BORDER / size]).

  Raises:
    TextureError: an empty mesh, or a size too small for the border.
  """
  if len(mesh.faces) == 0:
    raise TextureError("unwrap: the mesh has no faces (an empty field has no texture).")
  if size < 4 * BORDER:
    raise TextureError(f"texture size {size}: must be at least {4 * BORDER} texels.")
  atlas = xatlas.Atlas()
  atlas.add_mesh(np.ascontiguousarray(mesh.vertices, np.float32),
                 np.ascontiguousarray(mesh.faces, np.uint32))
  pack = xatlas.PackOptions()
  pack.resolution = int(size)        # texels_per_unit 0: one atlas of about this size
  pack.padding = PADDING
  pack.bilinear = True
  atlas.generate(xatlas.ChartOptions(), pack)
  vmapping, faces, uvs = (np.asarray(a) for a in atlas[0])
  # Slivers xatlas cannot chart (near-zero area) come back with all three UVs equal
  # (at the origin): drop them and the vertices only they use.
  tri = uvs[faces]
  mapped = ~(np.all(tri[:, 1] == tri[:, 0], -1) & np.all(tri[:, 2] == tri[:, 0], -1))
  faces = faces[mapped]
  used, faces = np.unique(faces, return_inverse=True)
  uvs = (BORDER + uvs[used].astype(np.float64) * (size - 2 * BORDER)) / size
  return (vmapping[used].astype(np.int64), faces.reshape(-1, 3).astype(np.int32),
          uvs.astype(np.float32))


def _closest_barycentrics(p, a, b, c):
  """Closest point of 2D triangles (a, b, c) [P, 2] to points p [P, 2] (jnp or np).

  Returns (bary [P, 3] of the closest point, distance [P]); distance 0 inside
  (edges inclusive). Degenerate triangles are handled through their edges.
  """
  e1, e2, d = b - a, c - a, p - a
  det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
  safe = jnp.where(det == 0.0, 1.0, det)
  l1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / safe
  l2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / safe
  inside = (det != 0.0) & (l1 >= 0.0) & (l2 >= 0.0) & (l1 + l2 <= 1.0)
  bary = jnp.stack([1.0 - l1 - l2, l1, l2], -1)
  best = jnp.where(inside, 0.0, jnp.inf)
  corners = (a, b, c)
  for i, j in ((0, 1), (1, 2), (2, 0)):
    s, v = corners[i], corners[j] - corners[i]
    t = jnp.clip(jnp.sum((p - s) * v, -1) / jnp.maximum(jnp.sum(v * v, -1), 1e-30), 0.0, 1.0)
    dist = jnp.sqrt(jnp.sum((s + t[:, None] * v - p) ** 2, -1))
    better = dist < best
    best = jnp.where(better, dist, best)
    edge = jnp.stack([jnp.where(k == i, 1.0 - t, jnp.where(k == j, t, 0.0)) for k in range(3)], -1)
    bary = jnp.where(better[:, None], edge, bary)
  return bary, best


@functools.partial(jax.jit, static_argnames=("size",))
def _nearest_in_block(col, row, corners, valid, size: int):
  """Per texel of [size * size], the nearest of a block of (texel, triangle) candidates.

  Args:
    col, row: [N] int32 texel of each candidate; corners: [N, 3, 2] float32 its UV
    triangle in texel coordinates; valid: [N] bool (False: padding).

  Returns:
    (distance [size * size], inf where no candidate; winner [size * size] int32
     candidate index, N where none; bary [N, 3], distance [N] of every candidate).
  """
  p = jnp.stack([col + 0.5, row + 0.5], -1).astype(jnp.float32)
  bary, dist = _closest_barycentrics(p, corners[:, 0], corners[:, 1], corners[:, 2])
  dist = jnp.where(valid, dist, jnp.inf)
  texel = row * size + col
  best = jax.ops.segment_min(dist, texel, num_segments=size * size)
  n = dist.shape[0]
  idx = jnp.where((dist == best[texel]) & jnp.isfinite(dist), jnp.arange(n), n)
  winner = jax.ops.segment_min(idx, texel, num_segments=size * size)
  return best, winner, bary, dist


def texel_coverage(uvs: np.ndarray, faces: np.ndarray, size: int, reach: float = REACH,
                   block: int = 1 << 22) -> dict:
  """The texel centres of a ``size`` x ``size`` texture within ``reach`` texels of a UV
  triangle, each with the closest point of its nearest triangle.

  Texel centres inside a triangle (edges inclusive) get that triangle at
  distance 0; centres just outside get the closest point of the nearest
  triangle, so that every texel a bilinear lookup inside a chart reads is baked
  from that chart, even for slivers too thin to cover a texel centre. Each
  triangle's bounding box grown by ``reach`` is enumerated (NumPy), the
  distances and the nearest candidate per texel are one jitted JAX program over
  blocks of ``block`` candidates (padded to a power of two: few compilations).

  Returns:
    dict of the P texels reached: texel [P] int64 flat index into [size, size]
    (row-major, row 0 at the top), face [P] int64, bary [P, 3] float64 of the
    closest point (summing to 1), distance [P] in texels.
  """
  # Continuous texel coordinates: centre of texel (i, j) at (j + 0.5, i + 0.5).
  uv = np.asarray(uvs, np.float64)
  xy = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], -1)
  tri = xy[np.asarray(faces, np.int64)].astype(np.float32)                 # [F, 3, 2]
  lo = np.clip(np.ceil(tri.min(1) - reach - 0.5), 0, size - 1).astype(np.int64)
  hi = np.clip(np.floor(tri.max(1) + reach - 0.5), 0, size - 1).astype(np.int64)
  counts = np.prod(np.maximum(hi - lo + 1, 0), axis=1)
  ends = np.cumsum(counts)
  best = np.full(size * size, np.inf)
  face = np.full(size * size, -1, np.int64)
  bary = np.zeros((size * size, 3))
  f0 = 0
  while f0 < len(tri):   # blocks of triangles with at most ``block`` candidates (or one)
    before = ends[f0 - 1] if f0 else 0
    f1 = max(f0 + 1, int(np.searchsorted(ends, before + block, "right")))
    n = counts[f0:f1]
    total = int(n.sum())
    owner = np.repeat(np.arange(f0, f1), n)
    local = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    nx = hi[owner, 0] - lo[owner, 0] + 1
    col, row = lo[owner, 0] + local % nx, lo[owner, 1] + local // nx
    padded = 1 << max(total - 1, 0).bit_length()
    pad = lambda x: np.concatenate([x, np.zeros((padded - total,) + x.shape[1:], x.dtype)])
    d_texel, win, b, d = jax.device_get(_nearest_in_block(
        jnp.asarray(pad(col), jnp.int32), jnp.asarray(pad(row), jnp.int32),
        jnp.asarray(pad(tri[owner])), jnp.asarray(np.arange(padded) < total), size))
    better = np.flatnonzero((d_texel <= reach) & (d_texel < best))
    w = np.asarray(win)[better]
    best[better], face[better], bary[better] = d_texel[better], owner[w], np.asarray(b)[w]
    f0 = f1
  hit = np.flatnonzero(face >= 0)
  b = bary[hit] / np.sum(bary[hit], -1, keepdims=True)
  return {"texel": hit, "face": face[hit], "bary": b, "distance": best[hit]}


def dilate(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
  """Fills every uncovered texel with the value of its nearest covered texel
  (Euclidean, ``scipy.ndimage.distance_transform_edt``).

  Args:
    texture: [H, W, C]; covered: [H, W] bool, at least one True.

  Returns:
    [H, W, C], equal to ``texture`` where ``covered``.
  """
  if not covered.any():
    raise TextureError("dilate: no texel is covered by the atlas.")
  _, (ii, jj) = scipy.ndimage.distance_transform_edt(~covered, return_indices=True)
  return texture[ii, jj]


def _padded_chunks(fn: Callable[[np.ndarray], np.ndarray], points: np.ndarray,
                   chunk: int) -> np.ndarray:
  """``fn`` over ``points`` [P, 3] in chunks of one fixed size (the last one padded),
  so a jitted ``fn`` compiles once; [P, ...]."""
  n = len(points)
  chunk = max(1, min(chunk, 1 << max(n - 1, 0).bit_length()))
  pad = np.zeros(((-n) % chunk, 3), points.dtype)
  out = mesh_export.evaluate_in_chunks(fn, np.concatenate([points, pad]), chunk)
  return out[:n]


def bake(mesh: Mesh, color_fn: Callable[[np.ndarray], np.ndarray],
         size: int = DEFAULT_SIZE, chunk: int = 65536) -> TexturedMesh:
  """UV-unwraps ``mesh`` and bakes ``color_fn`` at its surface into a texture.

  Args:
    mesh: a non-empty triangle mesh in world coordinates (colours unused).
    color_fn: points [N, 3] float32 -> albedo [N, 3] in [0, 1].
    size: texture size S (S x S texels).
    chunk: points per ``color_fn`` call (every call gets exactly this many,
      or the next power of two above the texel count when fewer).

  Returns:
    TexturedMesh with the split vertices, the faces, the atlas UVs and the
    dilated S x S uint8 texture: texel centres inside a UV triangle hold
    ``color_fn`` at the barycentric 3D point of that triangle, those within
    ``REACH`` texels of one ``color_fn`` at the closest point of the nearest.
  """
  vmapping, faces, uvs = unwrap(mesh, size)
  verts = np.asarray(mesh.vertices, np.float32)[vmapping]
  cov = texel_coverage(uvs, faces, size)
  corners = verts[faces[cov["face"]]].astype(np.float64)          # [P, 3, 3]
  points = np.einsum("pk,pkd->pd", cov["bary"], corners).astype(np.float32)
  albedo = np.clip(np.asarray(_padded_chunks(color_fn, points, chunk), np.float64), 0.0, 1.0)
  texture = np.zeros((size * size, 3), np.float64)
  covered = np.zeros(size * size, bool)
  texture[cov["texel"]] = albedo
  covered[cov["texel"]] = True
  texture = dilate(texture.reshape(size, size, 3), covered.reshape(size, size))
  texture = np.round(texture * 255.0).astype(np.uint8)
  return TexturedMesh(verts, faces, uvs, texture)


def side_by_side(meshes: Sequence[TexturedMesh]) -> TexturedMesh:
  """One textured mesh of several with equal texture heights: the textures side by side
  (part k in columns [k W, (k + 1) W)), the UVs remapped into their part, faces offset."""
  if not meshes:
    raise TextureError("side_by_side: no meshes.")
  heights = {m.texture.shape[0] for m in meshes}
  if len(heights) != 1:
    raise TextureError(f"side_by_side: texture heights differ ({sorted(heights)}).")
  widths = np.cumsum([0] + [m.texture.shape[1] for m in meshes])
  total = widths[-1]
  uvs = [np.stack([(widths[k] + m.uvs[:, 0] * m.texture.shape[1]) / total, m.uvs[:, 1]], -1)
         for k, m in enumerate(meshes)]
  offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
  return TexturedMesh(np.concatenate([m.vertices for m in meshes]).astype(np.float32),
                      np.concatenate([m.faces + o for m, o in zip(meshes, offsets)]).astype(
                          np.int32),
                      np.concatenate(uvs).astype(np.float32),
                      np.concatenate([m.texture for m in meshes], axis=1))


def sample(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
  """Bilinear lookup of ``texture`` [H, W, C] uint8 at ``uvs`` [N, 2] (OBJ convention,
  clamped at the edges); [N, C] float64 in [0, 1]."""
  h, w = texture.shape[:2]
  x = np.clip(uvs[:, 0] * w - 0.5, 0.0, w - 1.0)
  y = np.clip((1.0 - uvs[:, 1]) * h - 0.5, 0.0, h - 1.0)
  x0 = np.minimum(np.floor(x).astype(np.int64), w - 2 if w > 1 else 0)
  y0 = np.minimum(np.floor(y).astype(np.int64), h - 2 if h > 1 else 0)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
  t = texture.astype(np.float64) / 255.0
  return ((1 - fy) * ((1 - fx) * t[y0, x0] + fx * t[y0, x1])
          + fy * ((1 - fx) * t[y1, x0] + fx * t[y1, x1]))


def _trimesh(mesh: TexturedMesh, material):
  import trimesh  # heavy import, only when writing
  return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False,
                         visual=trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material))


def textured_files(stem: str, mesh: TexturedMesh) -> dict[str, bytes]:
  """{file name: bytes} of ``stem``.obj / .mtl / .png (the MTL's ``map_Kd`` names the PNG,
  diffuse colour white so the texture shows unscaled) and ``stem``.glb (PBR base colour
  texture embedded, metallic 0, roughness 1; node matrix z-up -> y-up)."""
  import trimesh  # heavy import, only when writing
  from PIL import Image
  image = Image.fromarray(np.ascontiguousarray(mesh.texture, np.uint8))
  white, black = [255, 255, 255, 255], [0, 0, 0, 255]
  simple = trimesh.visual.material.SimpleMaterial(image=image, name=stem, diffuse=white,
                                                  ambient=white, specular=black)
  text, extra = trimesh.exchange.obj.export_obj(
      _trimesh(mesh, simple), include_normals=False, include_color=False, include_texture=True,
      return_texture=True, mtl_name=f"{stem}.mtl", header="interfusion_jax textured export")
  files = {f"{stem}.obj": text.encode(), **extra}
  pbr = trimesh.visual.material.PBRMaterial(name=stem, baseColorTexture=image,
                                            metallicFactor=0.0, roughnessFactor=1.0)
  scene = trimesh.Scene()
  scene.add_geometry(_trimesh(mesh, pbr), node_name=stem, geom_name=stem,
                     transform=Z_UP_TO_Y_UP)
  files[f"{stem}.glb"] = scene.export(file_type="glb")
  return files


def write_textured_mesh(stem: str | pathlib.Path, mesh: TexturedMesh) -> list[pathlib.Path]:
  """Writes ``stem``.{png,mtl,obj,glb} atomically (each file, the PNG first); returns the
  paths."""
  stem = pathlib.Path(stem)
  files = textured_files(stem.name, mesh)
  order = sorted(files, key=lambda n: [".png", ".mtl", ".obj", ".glb"].index(
      pathlib.Path(n).suffix))
  out = []
  for name in order:
    fileio.atomic_write_bytes(stem.parent / name, files[name])
    out.append(stem.parent / name)
  return out


def write_textured_meshes(out_dir: str | pathlib.Path, meshes: dict,
                          color_fns: dict, size: int = DEFAULT_SIZE) -> dict[str, str]:
  """Textured meshes of the fields and of the scene into ``out_dir``:
  ``mesh_<name>_textured.{obj,mtl,png,glb}`` for each ``name`` of ``color_fns``
  ({"human", "object"}: points -> albedo) whose mesh in ``meshes`` is not
  empty, and ``mesh_combined_textured.*`` with their textures side by side
  (2 S x S for two fields).

  Returns:
    {file name: path}; empty when ``size`` is 0 or every mesh is empty.
  """
  out_dir = pathlib.Path(out_dir)
  if not size:
    return {}
  baked = {name: bake(meshes[name], fn, int(size)) for name, fn in color_fns.items()
           if len(meshes[name].faces)}
  if baked:
    baked["combined"] = side_by_side(list(baked.values()))
  files = {}
  for name, tm in baked.items():
    for p in write_textured_mesh(out_dir / f"mesh_{name}_textured", tm):
      files[p.name] = str(p)
  return files
