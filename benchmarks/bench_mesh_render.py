"""Benchmark of interfusion_jax.mesh.raster on the pose-codebook workload.

Workload (PAPER.md stage 1): a ~10k-vertex / ~20k-face body, 4 azimuths
(0/90/180/270 deg) at distance 2.7, 224x224, shaded. Bar: >= 20 poses/s
(80 views/s) on a 2-core CPU.

The body is a proxy built from ellipsoids (torso, head, arms, legs) with the
same vertex/face counts as a SMPL-X-sized mesh, so the benchmark needs no
body-model files. Measured in the same run:
  * fast   -- ``render_mesh_batch`` (vectorised NumPy, all views at once);
  * naive  -- an obviously-correct reference: a Python loop over triangles,
              each testing the pixel centres of its bounding box and updating
              a z-buffer (the classic scalar rasterizer, vectorised only over
              one triangle's pixels);
  * jax    -- a jitted JAX alternative with static shapes (fixed 4x4 pixel
              window per triangle + scatter-min z-buffer; triangles larger
              than the window are simply skipped, so it is a lower bound on a
              complete JAX implementation's time).

Usage: PYTHONPATH=. python benchmarks/bench_mesh_render.py [--mesh body.npz]
Writes benchmarks/results/mesh_render.json and
docs/images/mesh_render_example.png.
"""
import argparse
import json
import math
import os
import platform
import time

import numpy as np

from interfusion_jax.mesh import raster as mr


def icosphere(subdivisions: int):
  """Unit icosphere: (vertices [V, 3], faces [F, 3]), outward CCW faces."""
  t = (1.0 + 5.0 ** 0.5) / 2.0
  verts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t],
           [0, 1, t], [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1],
           [-t, 0, -1], [-t, 0, 1]]
  faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
           [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
           [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
           [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
  verts = [np.asarray(v, float) / np.linalg.norm(v) for v in verts]
  for _ in range(subdivisions):
    cache, new_faces = {}, []
    for a, b, c in faces:
      mids = []
      for i, j in ((a, b), (b, c), (c, a)):
        k = (min(i, j), max(i, j))
        if k not in cache:
          m = verts[i] + verts[j]
          verts.append(m / np.linalg.norm(m))
          cache[k] = len(verts) - 1
        mids.append(cache[k])
      ab, bc, ca = mids
      new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    faces = new_faces
  return np.array(verts), np.array(faces)


def body_proxy():
  """A ~1.7 m z-up 'body' of ellipsoids: ~9.6k vertices, ~19k faces."""
  parts = [  # (subdivisions, centre, radii)
      (4, (0.0, 0.0, 0.25), (0.17, 0.11, 0.32)),     # torso
      (3, (0.0, 0.0, 0.72), (0.09, 0.10, 0.12)),     # head
      (4, (0.0, -0.1, -0.45), (0.07, 0.07, 0.42)),   # left leg
      (4, (0.0, 0.1, -0.45), (0.07, 0.07, 0.42)),    # right leg
      (3, (0.05, -0.3, 0.3), (0.05, 0.05, 0.30)),    # left arm
      (3, (0.05, 0.3, 0.3), (0.05, 0.05, 0.30)),     # right arm
  ]
  verts, faces, offset = [], [], 0
  for sub, centre, radii in parts:
    v, f = icosphere(sub)
    verts.append(v * np.asarray(radii) + np.asarray(centre))
    faces.append(f + offset)
    offset += v.shape[0]
  return np.concatenate(verts), np.concatenate(faces)


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
  """OpenGL c2w [4, 4] (independent of interfusion_jax.nerf.camera, by hand)."""
  eye = np.asarray(eye, float)
  back = eye - np.asarray(target, float)
  back /= np.linalg.norm(back)
  right = np.cross(up, back)
  right /= np.linalg.norm(right)
  c2w = np.eye(4)
  c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = (
      right, np.cross(back, right), back, eye)
  return c2w


def codebook_cameras(distance=2.7):
  """[4, 4, 4] c2w at azimuths 0/90/180/270 deg, elevation 0, z-up."""
  return np.stack([look_at([distance * math.cos(a), distance * math.sin(a),
                            0.0], [0.0, 0.0, 0.0])
                   for a in np.radians([0.0, 90.0, 180.0, 270.0])])


def torus(major=0.6, minor=0.25, n_major=96, n_minor=48):
  """Torus around the z axis: (vertices [V, 3], faces [F, 3]) outward CCW."""
  u, v = np.meshgrid(np.linspace(0, 2 * np.pi, n_major, endpoint=False),
                     np.linspace(0, 2 * np.pi, n_minor, endpoint=False),
                     indexing="ij")
  r = major + minor * np.cos(v)
  verts = np.stack([r * np.cos(u), r * np.sin(u), minor * np.sin(v)],
                   -1).reshape(-1, 3)
  i, j = np.meshgrid(np.arange(n_major), np.arange(n_minor), indexing="ij")
  a = i * n_minor + j
  b = ((i + 1) % n_major) * n_minor + j
  c = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
  d = i * n_minor + (j + 1) % n_minor
  faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                          np.stack([a, c, d], -1).reshape(-1, 3)])
  return verts, faces


def write_example(path):
  """Shaded torus + icosphere from 4 azimuths, written as a 2x2 PNG grid."""
  import imageio.v3 as iio
  tv, tf = torus()
  sv, sf = icosphere(4)
  sv = sv * 0.35 + np.array([0.0, 0.0, 0.55])
  verts = np.concatenate([tv, sv])
  faces = np.concatenate([tf, sf + tv.shape[0]])
  hue = np.arctan2(verts[:, 1], verts[:, 0])
  colors = 0.5 + 0.45 * np.stack([np.cos(hue), np.cos(hue - 2.1),
                                  np.cos(hue + 2.1)], -1)
  colors[tv.shape[0]:] = (0.85, 0.85, 0.8)
  cams = np.stack([look_at([2.4 * math.cos(a), 2.4 * math.sin(a), 1.2],
                           [0.0, 0.0, 0.1]) for a in np.radians(
                               [30.0, 120.0, 210.0, 300.0])])
  out = mr.render_mesh_batch(verts, faces, cams, 45.0, 256, 256,
                             vertex_colors=colors,
                             light_dir=(0.4, -0.3, 1.0),
                             background=(0.95, 0.95, 1.0), supersample=2)
  img = out["rgb"].reshape(2, 2, 256, 256, 3).transpose(0, 2, 1, 3, 4)
  img = (np.clip(img.reshape(512, 512, 3), 0, 1) * 255).astype(np.uint8)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  iio.imwrite(path, img)


def naive_render(verts, faces, c2w, fovy_deg, h, w):
  """Reference: Python loop over triangles, bbox pixel test, z-buffer.

  Returns (face_id [H, W], depth [H, W]).
  """
  f = 0.5 * h / math.tan(math.radians(fovy_deg) / 2)
  cam = (verts - c2w[:3, 3]) @ c2w[:3, :3]
  z = -cam[:, 2]
  sx = w / 2 + f * cam[:, 0] / z
  sy = h / 2 - f * cam[:, 1] / z
  zbuf = np.full((h, w), np.inf)
  fid = np.full((h, w), -1)
  for k, (a, b, c) in enumerate(faces):
    if min(z[a], z[b], z[c]) <= 1e-3:
      continue
    xa, xb, xc, ya, yb, yc = sx[a], sx[b], sx[c], sy[a], sy[b], sy[c]
    area = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
    if area == 0:
      continue
    j0 = max(math.ceil(min(xa, xb, xc) - 0.5), 0)
    j1 = min(math.floor(max(xa, xb, xc) - 0.5), w - 1)
    i0 = max(math.ceil(min(ya, yb, yc) - 0.5), 0)
    i1 = min(math.floor(max(ya, yb, yc) - 0.5), h - 1)
    if j1 < j0 or i1 < i0:
      continue
    py, px = np.mgrid[i0:i1 + 1, j0:j1 + 1] + 0.5
    l0 = ((xc - xb) * (py - yb) - (yc - yb) * (px - xb)) / area
    l1 = ((xa - xc) * (py - yc) - (ya - yc) * (px - xc)) / area
    l2 = 1.0 - l0 - l1
    ins = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    d = 1.0 / (l0 / z[a] + l1 / z[b] + l2 / z[c])
    win = zbuf[i0:i1 + 1, j0:j1 + 1]
    upd = ins & (d < win)
    win[upd] = d[upd]
    fid[i0:i1 + 1, j0:j1 + 1][upd] = k
  return fid, zbuf


def jax_window_render(verts, faces, c2ws, fovy_deg, h, w, window=4):
  """Timing-only JAX alternative: static 4x4 windows + scatter-min z-buffer."""
  import jax
  import jax.numpy as jnp

  f = 0.5 * h / math.tan(math.radians(fovy_deg) / 2)
  oy, ox = np.mgrid[0:window, 0:window].reshape(2, -1)

  @jax.jit
  def render(v, c2w):
    cam = (v - c2w[:3, 3]) @ c2w[:3, :3]
    z = -cam[:, 2]
    sx = w / 2 + f * cam[:, 0] / z
    sy = h / 2 - f * cam[:, 1] / z
    x, y, zz = sx[faces], sy[faces], z[faces]  # [F, 3]
    area = ((x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0])
            - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0]))
    j0 = jnp.ceil(x.min(1) - 0.5)
    i0 = jnp.ceil(y.min(1) - 0.5)
    px = j0[:, None] + ox[None] + 0.5
    py = i0[:, None] + oy[None] + 0.5

    def edge(a, b):
      return ((x[:, b, None] - x[:, a, None]) * (py - y[:, a, None])
              - (y[:, b, None] - y[:, a, None]) * (px - x[:, a, None]))

    l0 = edge(1, 2) / area[:, None]
    l1 = edge(2, 0) / area[:, None]
    l2 = 1.0 - l0 - l1
    d = 1.0 / (l0 / zz[:, 0, None] + l1 / zz[:, 1, None] + l2 / zz[:, 2, None])
    ok = ((l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (px < w) & (py < h)
          & (zz.min(1) > 1e-3)[:, None])
    pix = jnp.where(ok, (py - 0.5) * w + (px - 0.5), h * w).astype(jnp.int32)
    key = jnp.where(ok, d, jnp.inf)
    zbuf = jnp.full(h * w + 1, jnp.inf).at[pix.ravel()].min(key.ravel())
    return zbuf[:-1].reshape(h, w)

  batched = jax.jit(jax.vmap(render, in_axes=(None, 0)))
  v = jnp.asarray(verts, jnp.float32)
  c = jnp.asarray(c2ws, jnp.float32)
  batched(v, c).block_until_ready()
  return lambda: batched(v, c).block_until_ready()


def timeit(fn, min_time=2.0, min_reps=3):
  """(wall seconds, process CPU seconds) per call. CPU time is robust to
  other processes sharing the machine; wall time is what a user sees."""
  reps, start, cpu = 0, time.perf_counter(), time.process_time()
  while reps < min_reps or time.perf_counter() - start < min_time:
    fn()
    reps += 1
  return ((time.perf_counter() - start) / reps,
          (time.process_time() - cpu) / reps)


def bench_workload(verts, faces, n_poses=8, h=224, w=224):
  """Times render_mesh_batch on n_poses jittered poses x 4 codebook views."""
  cams = codebook_cameras()
  rng = np.random.default_rng(0)
  scale = 0.005 * np.ptp(verts, axis=0).max()
  poses = verts[None] + rng.normal(scale=scale, size=(n_poses,) + verts.shape)
  runs = {}
  for fovy in (60.0, 40.0):
    for cull in (False, True):
      for threads in (1, 2):
        t, cpu = timeit(lambda: mr.render_mesh_batch(
            poses, faces, cams, fovy, h, w, cull_backfaces=cull,
            num_threads=threads))
        out = mr.render_mesh_batch(poses[:1], faces, cams, fovy, h, w)
        name = f"fovy{int(fovy)}_cull{int(cull)}_threads{threads}"
        runs[name] = dict(
            poses_per_s=n_poses / t, views_per_s=4 * n_poses / t,
            cpu_ms_per_view=1e3 * cpu / (4 * n_poses),
            views_per_cpu_s=4 * n_poses / cpu,
            covered_pixel_fraction=float(out["mask"].mean()))
        print(name, runs[name])
  return dict(vertices=int(verts.shape[0]), faces=int(faces.shape[0]),
              views_per_pose=4, height=h, width=w, distance=2.7, runs=runs)


def load_mesh(path):
  """(vertices [V, 3], faces [F, 3]) from an .npz with v/f or vertices/faces
  (or SMPL-style v_template/f) arrays, centred at the mean vertex."""
  data = np.load(path, allow_pickle=False)
  keys = [("vertices", "faces"), ("v", "f"), ("v_template", "f")]
  for kv, kf in keys:
    if kv in data and kf in data:
      v = np.asarray(data[kv], np.float64).reshape(-1, 3)
      return v - v.mean(axis=0), np.asarray(data[kf], np.int64)
  raise ValueError(f"{path}: expected arrays {keys}, found {list(data)}.")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mesh", action="append", default=[],
                      help="extra body mesh .npz (z-up) to benchmark, "
                           "e.g. an exported default body")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  write_example(os.path.join(root, "docs", "images",
                             "mesh_render_example.png"))
  verts, faces = body_proxy()
  h = w = 224
  cams = codebook_cameras()
  results = dict(
      bar="pose codebook: >= 20 poses/s = 80 views/s (4 views, 224x224)",
      machine=dict(cpus=os.cpu_count(), python=platform.python_version(),
                   numpy=np.__version__, load_average_before=os.getloadavg()),
      note=("views_per_s is wall-clock and depends on other processes on the "
            "machine (see load averages); views_per_cpu_s = 1 / CPU time is "
            "what one free core achieves"),
      workloads={"body_proxy": bench_workload(verts, faces)})
  for path in args.mesh:
    results["workloads"][os.path.basename(path)] = bench_workload(
        *load_mesh(path))

  fovy = 60.0
  t_naive, cpu_naive = timeit(
      lambda: naive_render(verts, faces, cams[0], fovy, h, w),
      min_time=0.0, min_reps=1)
  ref_f, ref_z = naive_render(verts, faces, cams[0], fovy, h, w)
  fast = mr.render_mesh(verts, faces, cams[0], fovy, h, w)
  both = (ref_f >= 0) & fast["mask"]
  results["naive_reference"] = dict(
      seconds_per_view=t_naive, cpu_ms_per_view=1e3 * cpu_naive,
      face_id_agreement_with_fast=float(np.mean(ref_f == fast["face_id"])),
      max_rel_depth_difference=float(np.max(
          np.abs(fast["depth"][both] - ref_z[both]) / ref_z[both])))
  fast_cpu = results["workloads"]["body_proxy"]["runs"][
      "fovy60_cull0_threads1"]["cpu_ms_per_view"]
  results["cpu_speedup_fast_vs_naive"] = 1e3 * cpu_naive / fast_cpu
  print("naive", results["naive_reference"], "speedup",
        results["cpu_speedup_fast_vs_naive"])

  try:
    jax_fn = jax_window_render(verts, faces, cams, fovy, h, w)
    t_jax, cpu_jax = timeit(jax_fn)
    results["jax_window_alternative"] = dict(
        seconds_per_view=t_jax / 4, cpu_ms_per_view=1e3 * cpu_jax / 4,
        cpu_ratio_jax_over_fast=(1e3 * cpu_jax / 4) / fast_cpu,
        note="z-buffer only (no shading, no fallback): triangles larger "
             "than 4x4 px are skipped, so a lower bound for a complete JAX "
             "rasterizer")
    print("jax", results["jax_window_alternative"])
  except ImportError:
    pass
  results["machine"]["load_average_after"] = os.getloadavg()

  os.makedirs(os.path.join(os.path.dirname(__file__), "results"),
              exist_ok=True)
  path = os.path.join(os.path.dirname(__file__), "results", "mesh_render.json")
  with open(path, "w") as fh:
    json.dump(results, fh, indent=2)
  print("wrote", path)


if __name__ == "__main__":
  main()
