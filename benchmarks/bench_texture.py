"""Benchmark of the UV-textured mesh export (interfusion_jax/mesh/texture.py) on CPU.

Workload: the marching-cubes surface of a bumpy sphere (radius 0.6, cosine
bumps) on an R^3 lattice over [-1, 1]^3 (R = 128: train.mesh_resolution's
default), baked at S x S (S = 1024: train.texture_size's default) from a
closed-form colour field, so the numbers are the exporter's own cost (the
field query of a real run adds one jitted hash-grid pass over the baked
texels, in chunks of 65536). Stages timed separately: xatlas unwrap, the
texel footprint (texel_coverage), the whole bake (unwrap + footprint + colour
query + dilation) and the writes (PNG, MTL, OBJ, GLB through trimesh).

Usage: PYTHONPATH=. python benchmarks/bench_texture.py [--resolution=128] [--size=1024]
Writes benchmarks/results/texture.json.
"""
import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np

from interfusion_jax.mesh import export, texture


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--out", default="benchmarks/results/texture.json")
  args = parser.parse_args()

  def density(p):
    r = np.linalg.norm(p, axis=-1)
    return 100.0 * (0.6 + 0.03 * np.cos(9 * p[:, 0]) * np.cos(7 * p[:, 1]) - r)

  color = lambda p: 0.5 + 0.4 * np.sin(3.0 * p + np.array([0.0, 1.0, 2.0]))
  mesh = export.extract_mesh(density, color, args.resolution, 1.0, threshold=0.0)
  t0 = time.perf_counter()
  _, faces, uvs = texture.unwrap(mesh, args.size)
  t1 = time.perf_counter()
  texture.texel_coverage(uvs, faces, args.size)          # includes its one compilation
  t2 = time.perf_counter()
  texture.texel_coverage(uvs, faces, args.size)
  t3 = time.perf_counter()
  tm = texture.bake(mesh, color, args.size)
  t4 = time.perf_counter()
  with tempfile.TemporaryDirectory() as d:
    paths = texture.write_textured_mesh(pathlib.Path(d) / "m", tm)
    t5 = time.perf_counter()
    sizes = {p.suffix: p.stat().st_size for p in paths}
  err = np.abs(texture.sample(tm.texture, tm.uvs) - color(tm.vertices)).max(-1)
  result = {
      "workload": {"mesh_resolution": args.resolution, "texture_size": args.size,
                   "faces": int(len(mesh.faces)), "vertices": int(len(mesh.vertices)),
                   "textured_vertices": int(len(tm.vertices)),
                   "textured_faces": int(len(tm.faces))},
      "seconds": {"xatlas_unwrap": round(t1 - t0, 2),
                  "texel_coverage_first_call": round(t2 - t1, 2),
                  "texel_coverage": round(t3 - t2, 2),
                  "bake_total": round(t4 - t3, 2), "write_files": round(t5 - t4, 2)},
      "file_bytes": sizes,
      "vertex_error": {"max": float(err.max()), "p99": float(np.quantile(err, 0.99)),
                       "mean": float(err.mean())},
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version()},
  }
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
