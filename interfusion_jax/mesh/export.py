"""Meshes from fields: marching cubes with vertex colours -> GLB and OBJ bytes and files.

``extract_mesh`` only needs callables ``points [N, 3] -> density [N]`` and
``points [N, 3] -> rgb [N, 3]``; the command line that applies it to a run is
``python -m interfusion_jax.export`` (``interfusion_jax/export.py``).
"""
from __future__ import annotations

import json
import pathlib
import struct
from typing import Callable

import numpy as np

from interfusion_jax import fileio
from interfusion_jax.mesh.types import Mesh, concat, empty_mesh

# threestudio's default isosurface threshold for implicit volumes.
DEFAULT_THRESHOLD = 25.0


def grid_points(resolution: int, radius: float) -> np.ndarray:
  """Node coordinates of the cubic scene-box grid ``linspace(-r, r, R)`` per axis
  (mesh extraction and the evaluation metrics share it).

  Args:
    resolution: R nodes per axis; radius: box half size r.

  Returns:
    [R, R, R, 3] float32 points, indexed [ix, iy, iz].
  """
  lin = np.linspace(-radius, radius, resolution, dtype=np.float32)
  return np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), axis=-1)


def evaluate_in_chunks(fn: Callable[[np.ndarray], np.ndarray], points: np.ndarray,
                       chunk: int = 65536) -> np.ndarray:
  """Applies ``fn`` ([n, 3] -> [n, ...]) to ``points`` [N, 3] in chunks; [N, ...]."""
  outs = [np.asarray(fn(points[i:i + chunk])) for i in range(0, len(points), chunk)]
  return np.concatenate(outs, axis=0) if outs else np.zeros((0,), np.float32)


def extract_mesh(density_fn: Callable[[np.ndarray], np.ndarray],
                 color_fn: Callable[[np.ndarray], np.ndarray] | None,
                 resolution: int, radius: float,
                 threshold: float = DEFAULT_THRESHOLD) -> Mesh:
  """Marching cubes on the density sampled over [-r, r]^3.

  Args:
    density_fn: points [N, 3] -> densities [N].
    color_fn: points [N, 3] -> rgb [N, 3] in [0, 1] (None: grey).
    resolution: lattice points per axis R.
    radius: scene box half-size r.
    threshold: iso-level of the density.

  Returns:
    Mesh in world coordinates (empty if the density never crosses the level).
  """
  import mcubes  # PyMCubes
  pts = grid_points(resolution, radius)
  sigma = evaluate_in_chunks(density_fn, pts.reshape(-1, 3)).reshape(pts.shape[:3])
  sigma = np.nan_to_num(sigma.astype(np.float64), nan=0.0)
  if not (sigma.min() < threshold < sigma.max()):
    return empty_mesh()
  verts, faces = mcubes.marching_cubes(sigma, threshold)
  verts = (verts / (resolution - 1) * 2.0 - 1.0) * radius
  verts = verts.astype(np.float32)
  # mcubes' winding already makes normals point toward decreasing density (outward).
  faces = faces.astype(np.int32)
  if color_fn is None or len(verts) == 0:
    colors = np.full_like(verts, 0.7)
  else:
    colors = np.clip(evaluate_in_chunks(color_fn, verts), 0.0, 1.0).astype(np.float32)
  return Mesh(verts, np.ascontiguousarray(faces), colors)


merge_meshes = concat  # the one concatenation (mesh.types.concat)


def obj_bytes(mesh: Mesh) -> bytes:
  """Wavefront OBJ with per-vertex colours (``v x y z r g b``), 1-based faces."""
  lines = ["# interfusion_jax export"]
  lines += [f"v {v[0]:.6f} {v[1]:.6f} {v[2]:.6f} {c[0]:.4f} {c[1]:.4f} {c[2]:.4f}"
            for v, c in zip(mesh.vertices, mesh.colors)]
  lines += [f"f {f[0] + 1} {f[1] + 1} {f[2] + 1}" for f in mesh.faces]
  return ("\n".join(lines) + "\n").encode()


def _pad4(b: bytes, fill: bytes) -> bytes:
  return b + fill * ((-len(b)) % 4)


def glb_bytes(mesh: Mesh) -> bytes:
  """Binary glTF 2.0: one mesh with POSITION, COLOR_0 (float RGB) and uint32 indices.

  glTF is y-up; the z-up scene is rotated (x, y, z) -> (x, z, -y) by a node matrix
  so that viewers show it upright while the buffer keeps scene coordinates.
  """
  v = np.ascontiguousarray(mesh.vertices, np.float32)
  c = np.ascontiguousarray(mesh.colors, np.float32)
  f = np.ascontiguousarray(mesh.faces, np.uint32).reshape(-1)
  blobs = [f.tobytes(), v.tobytes(), c.tobytes()]
  offsets, buf = [], b""
  for b in blobs:
    offsets.append(len(buf))
    buf += _pad4(b, b"\x00")
  vmin = v.min(0).tolist() if len(v) else [0.0] * 3
  vmax = v.max(0).tolist() if len(v) else [0.0] * 3
  gltf = {
      "asset": {"version": "2.0", "generator": "interfusion_jax"},
      "scene": 0,
      "scenes": [{"nodes": [0]}],
      "nodes": [{"mesh": 0, "matrix": [1, 0, 0, 0, 0, 0, -1, 0, 0, 1, 0, 0, 0, 0, 0, 1]}],
      "meshes": [{"primitives": [{"attributes": {"POSITION": 1, "COLOR_0": 2},
                                  "indices": 0, "mode": 4}]}],
      "buffers": [{"byteLength": len(buf)}],
      "bufferViews": [
          {"buffer": 0, "byteOffset": offsets[0], "byteLength": len(blobs[0]), "target": 34963},
          {"buffer": 0, "byteOffset": offsets[1], "byteLength": len(blobs[1]), "target": 34962},
          {"buffer": 0, "byteOffset": offsets[2], "byteLength": len(blobs[2]), "target": 34962},
      ],
      "accessors": [
          {"bufferView": 0, "componentType": 5125, "count": int(f.size), "type": "SCALAR"},
          {"bufferView": 1, "componentType": 5126, "count": int(len(v)), "type": "VEC3",
           "min": vmin, "max": vmax},
          {"bufferView": 2, "componentType": 5126, "count": int(len(c)), "type": "VEC3"},
      ],
  }
  js = _pad4(json.dumps(gltf, separators=(",", ":")).encode(), b" ")
  total = 12 + 8 + len(js) + 8 + len(buf)
  return (struct.pack("<4sII", b"glTF", 2, total)
          + struct.pack("<I4s", len(js), b"JSON") + js
          + struct.pack("<I4s", len(buf), b"BIN\x00") + buf)


def write_mesh(stem: str | pathlib.Path, mesh: Mesh) -> list[pathlib.Path]:
  """Writes ``stem.glb`` and ``stem.obj`` atomically; returns both paths."""
  stem = pathlib.Path(stem)
  out = [stem.with_suffix(".glb"), stem.with_suffix(".obj")]
  fileio.atomic_write_bytes(out[0], glb_bytes(mesh))
  fileio.atomic_write_bytes(out[1], obj_bytes(mesh))
  return out
