"""Anchor preparation time at 128^3 (bar: < 60 s on 2 cores), vs naive methods.

    PYTHONPATH=. python benchmarks/bench_anchor.py [--resolution 128]

Measures, in one run, for the default body in the "sitting" pose:
  * ours: ``prepare_anchor`` without cache (posing + 3-axis ray-parity
    occupancy + exact-band / closest-point-propagated distance), with its
    parts timed separately, and the cache-hit load time;
  * naive references, timed on a random subset of grid nodes and
    extrapolated to all R^3 nodes: generalized winding numbers over every
    triangle (occupancy) and brute-force exact point-to-every-triangle
    distance.
Reports wall-clock and process CPU seconds (the shared machine is often
loaded). Writes benchmarks/results/anchor.json.
"""
import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np


def _timed(fn):
  w0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w0, time.process_time() - c0


def _winding(points, tris):
  r = tris[None] - points[:, None, None, :]
  a, b, c = r[..., 0, :], r[..., 1, :], r[..., 2, :]
  la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
  det = np.einsum("...i,...i", a, np.cross(b, c))
  den = (la * lb * lc + np.einsum("...i,...i", a, b) * lc
         + np.einsum("...i,...i", b, c) * la + np.einsum("...i,...i", c, a) * lb)
  return np.arctan2(det, den).sum(-1) / (2 * np.pi)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--resolution", type=int, default=128)
  p.add_argument("--naive_nodes", type=int, default=64)
  a = p.parse_args()
  from interfusion_jax.body import anchor, lbs, model, poses
  body = model.load_body_model("default")
  bp, go = poses.DEMO_POSES["sitting"]
  res = a.resolution
  with tempfile.TemporaryDirectory() as tmp:
    spec = anchor.AnchorSpec(resolution=res, cache_dir=tmp)
    anc, wall, cpu = _timed(lambda: anchor.prepare_anchor(body, bp, go, spec))
    _, wall_hit, _ = _timed(lambda: anchor.prepare_anchor(body, bp, go, spec))
  verts, joints = lbs.pose_body(body, bp, go)
  verts, _ = anchor.scene_transform(np.asarray(verts), np.asarray(joints),
                                    aug_rot=False, aug_trans=False)
  coords = anchor.grid_coords(res, spec.radius)
  faces = np.asarray(body.faces)
  _, w_occ, _ = _timed(lambda: anchor.occupancy_grid(verts, faces, coords))
  _, w_dist, _ = _timed(lambda: anchor.distance_grid(verts, faces, coords))

  rng = np.random.default_rng(0)
  nodes = coords[rng.integers(0, res, size=(a.naive_nodes, 3))]
  tris = verts[faces]
  _, w_wind, _ = _timed(lambda: np.concatenate(
      [_winding(nodes[i:i + 16], tris) for i in range(0, len(nodes), 16)]))
  def brute():
    return np.array([np.linalg.norm(anchor.closest_point_on_triangle(
        np.repeat(q[None], len(tris), 0), tris) - q, axis=1).min() for q in nodes])
  _, w_brute, _ = _timed(brute)
  scale = res ** 3 / a.naive_nodes
  naive_occ, naive_dist = w_wind * scale, w_brute * scale
  out = dict(
      resolution=res, vertices=int(verts.shape[0]), faces=int(faces.shape[0]),
      prepare_wall_s=round(wall, 2), prepare_cpu_s=round(cpu, 2),
      cache_hit_wall_s=round(wall_hit, 3),
      occupancy_wall_s=round(w_occ, 2), distance_wall_s=round(w_dist, 2),
      naive_winding_occupancy_wall_s_extrapolated=round(naive_occ, 1),
      naive_bruteforce_distance_wall_s_extrapolated=round(naive_dist, 1),
      occupancy_speedup_vs_winding=round(naive_occ / w_occ, 1),
      distance_speedup_vs_bruteforce=round(naive_dist / w_dist, 1),
      bar_s=60.0, meets_bar=bool(wall < 60.0),
      load_average=os.getloadavg()[0], cpus=os.cpu_count(),
      machine=platform.machine(), python=platform.python_version())
  path = pathlib.Path(__file__).parent / "results" / "anchor.json"
  path.parent.mkdir(exist_ok=True)
  path.write_text(json.dumps(out, indent=2) + "\n")
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
