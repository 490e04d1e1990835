"""Shaded multi-view renders of body poses (PAPER.md "Stage 1", step 2).

Official setup: 4 azimuths (0, 90, 180, 270 deg), camera distance 2.7,
224x224. The body is posed in its own y-up frame (facing +z), centred at its
mean vertex, and rendered with the NumPy rasterizer ``mesh_render`` (fast on
CPU). Azimuth 0 looks at the body's front.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.mesh import raster as mesh_render
from interfusion_jax.body import lbs
from interfusion_jax.body.model import BodyModel

BODY_COLOR = (0.75, 0.72, 0.68)


@dataclasses.dataclass(frozen=True)
class PoseRenderSpec:
  """Static render settings of the codebook views."""
  azimuths_deg: tuple[float, ...] = (0.0, 90.0, 180.0, 270.0)
  elevation_deg: float = 0.0
  distance: float = 2.7
  fovy_deg: float = 45.0  # a lying 1.8 m body fits the 224 px frame at 2.7 m
  height: int = 224
  width: int = 224
  max_faces: int = 8000  # vertex-clustering decimation for speed; 0 = full mesh

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def view_cameras(spec: PoseRenderSpec) -> np.ndarray:
  """OpenGL c2w [N,4,4] of the views around the origin (y up, az 0 = +z)."""
  az = np.deg2rad(np.asarray(spec.azimuths_deg, np.float64))
  el = np.deg2rad(spec.elevation_deg)
  eye = spec.distance * np.stack(
      [np.cos(el) * np.sin(az), np.full_like(az, np.sin(el)), np.cos(el) * np.cos(az)], -1)
  return np.stack([np.asarray(camera_lib.look_at(e, np.zeros(3), up=(0.0, 1.0, 0.0)))
                   for e in eye])


def decimate_mesh(vertices: np.ndarray, faces: np.ndarray, max_faces: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Vertex-clustering decimation of the rest mesh (for fast codebook renders).

  Vertices are snapped to a cubic grid; each occupied cell keeps the vertex
  nearest its mean, faces are re-indexed and degenerate / duplicate faces
  dropped. The cell size is bisected so that at most ``max_faces`` remain.

  Args:
    vertices: [V, 3] rest vertices; faces: [F, 3] int.
    max_faces: face budget (<= 0 or >= F: no decimation).

  Returns:
    keep [V'] indices of the kept vertices, faces [F', 3] indexing them.
  """
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  if max_faces <= 0 or faces.shape[0] <= max_faces:
    return np.arange(vertices.shape[0]), faces

  def cluster(cell):
    keys = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
    _, cid = np.unique(keys, axis=0, return_inverse=True)
    cid = cid.reshape(-1)
    f = cid[faces]
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    f = f[ok]
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    return cid, f[np.sort(first)]

  lo, hi = 1e-4, 0.2
  for _ in range(18):
    mid = np.sqrt(lo * hi)
    if cluster(mid)[1].shape[0] > max_faces:
      lo = mid
    else:
      hi = mid
  cid, f = cluster(hi)
  n = int(cid.max()) + 1
  mean = np.zeros((n, 3))
  np.add.at(mean, cid, vertices)
  mean /= np.bincount(cid, minlength=n)[:, None]
  dist = np.linalg.norm(vertices - mean[cid], axis=1)
  order = np.lexsort((dist, cid))
  rep = order[np.concatenate([[0], np.flatnonzero(np.diff(cid[order])) + 1])]
  used = np.unique(f)
  remap = np.full(n, -1, np.int64)
  remap[used] = np.arange(used.size)
  return rep[used], remap[f]


@jax.jit
def _pose_many(body: BodyModel, body_poses: jax.Array, orients: jax.Array) -> jax.Array:
  verts = jax.vmap(lambda p, o: lbs.pose_body(body, p, o)[0])(body_poses, orients)
  return verts - jnp.mean(verts, axis=1, keepdims=True)


def posed_vertices(body: BodyModel, body_poses: np.ndarray,
                   global_orients: Optional[np.ndarray] = None) -> np.ndarray:
  """Posed, mean-vertex-centred vertices.

  Args:
    body: a BodyModel.
    body_poses: [B, 63] axis-angle.
    global_orients: [B, 3] or None (zeros).

  Returns:
    [B, V, 3] float32.
  """
  p = np.asarray(body_poses, np.float32).reshape(-1, 63)
  o = (np.zeros((p.shape[0], 3), np.float32) if global_orients is None
       else np.asarray(global_orients, np.float32).reshape(-1, 3))
  return np.asarray(_pose_many(body, jnp.asarray(p), jnp.asarray(o)))


def render_poses(body: BodyModel, body_poses: np.ndarray,
                 global_orients: Optional[np.ndarray] = None,
                 spec: PoseRenderSpec = PoseRenderSpec(),
                 mesh: Optional[tuple[np.ndarray, np.ndarray]] = None) -> dict:
  """Renders every pose from every view of ``spec``.

  Args:
    body: a BodyModel.
    body_poses: [B, 63].
    global_orients: [B, 3] or None.
    spec: the views.
    mesh: optional precomputed ``decimate_mesh`` result (keep, faces).

  Returns:
    dict(rgb [B, N, H, W, 3] float32 in [0, 1] (white background),
         mask [B, N, H, W] bool).
  """
  verts = posed_vertices(body, body_poses, global_orients)
  keep, faces = (mesh if mesh is not None else
                 decimate_mesh(np.asarray(body.v_template), np.asarray(body.faces),
                               spec.max_faces))
  out = mesh_render.render_mesh_batch(
      verts[:, keep], faces, view_cameras(spec), spec.fovy_deg,
      spec.height, spec.width, face_colors=np.broadcast_to(
          np.asarray(BODY_COLOR, np.float32), (faces.shape[0], 3)),
      ambient=0.35, diffuse=0.65)
  return dict(rgb=out["rgb"], mask=out["mask"])


def contact_sheet(images: np.ndarray, captions: Optional[list[str]] = None,
                  cols: Optional[int] = None) -> np.ndarray:
  """Tiles images into one sheet with a thin caption bar under each.

  Args:
    images: [N, H, W, 3] float in [0, 1].
    captions: N short strings (digits, letters and '.:-' are drawn with a
      built-in 3x5 pixel font, upper-cased), or None.
    cols: columns (default: ceil(sqrt(N)) up to N).

  Returns:
    [rows * (H + bar), cols * W, 3] uint8.
  """
  images = np.asarray(images, np.float32)
  n, h, w, _ = images.shape
  cols = cols or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  bar = 14 if captions else 0
  sheet = np.full((rows * (h + bar), cols * w, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    y, x = r * (h + bar), c * w
    sheet[y:y + h, x:x + w] = np.clip(images[i] * 255 + 0.5, 0, 255).astype(np.uint8)
    sheet[y:y + h, x] = 128
    if captions:
      _draw_text(sheet, captions[i], y + h + 3, x + 3, scale=2)
  return sheet


# 3x5 bitmap font for captions (no font files needed).
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", ".": "000000000000010", ":": "000010000010000",
    "-": "000000111000000", " ": "000000000000000", "=": "000111000111000",
    "#": "101111101111101",
    "A": "010101111101101", "B": "110101110101110", "C": "111100100100111",
    "D": "110101101101110", "E": "111100111100111", "F": "111100111100100",
    "G": "111100101101111", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101111", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "111101101101101", "O": "111101101101111",
    "P": "111101111100100", "Q": "111101101111001", "R": "111101110101101",
    "S": "111100111001111", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111",
}


def _draw_text(img: np.ndarray, text: str, y: int, x: int, scale: int = 1) -> None:
  for ch in text.upper():
    glyph = _FONT.get(ch, _FONT[" "])
    for k, bit in enumerate(glyph):
      if bit == "1":
        gy, gx = divmod(k, 3)
        yy, xx = y + gy * scale, x + gx * scale
        if yy + scale <= img.shape[0] and xx + scale <= img.shape[1]:
          img[yy:yy + scale, xx:xx + scale] = 0
    x += 4 * scale
    if x + 3 * scale > img.shape[1]:
      return
