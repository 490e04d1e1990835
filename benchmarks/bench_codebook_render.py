"""Codebook render throughput: poses/s for 4 views at 224x224 on CPU.

    PYTHONPATH=. python benchmarks/bench_codebook_render.py [--poses 32]

Compares, in one run on the same poses:
  * ours: batched jit(vmap) posing + one batched ``render_mesh_batch`` call
    (``pose.render.render_poses``), full mesh and decimated (max_faces 8000);
  * naive: per pose, un-jitted ``lbs.pose_body`` then one ``render_mesh``
    call per view.
Reports wall-clock poses/s and CPU-time poses/s (1 / process CPU seconds per
pose: what one free core achieves; the shared CI machine is often loaded).
Writes benchmarks/results/codebook_render.json.
"""
import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np


def _timed(fn):
  w0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - w0, time.process_time() - c0


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--poses", type=int, default=32)
  p.add_argument("--naive_poses", type=int, default=4)
  a = p.parse_args()
  from interfusion_jax.mesh import raster as mesh_render
  from interfusion_jax.body import lbs, model
  from interfusion_jax.pose import build, render
  body = model.load_body_model("default")
  ps = build.library_pose_set(1)
  idx = np.linspace(0, len(ps) - 1, a.poses).astype(int)
  poses, orients = ps.body_pose[idx], ps.global_orient[idx]
  results = {}
  load0 = os.getloadavg()
  for name, max_faces in (("ours_full_mesh", 0), ("ours_decimated_8000", 8000)):
    spec = render.PoseRenderSpec(max_faces=max_faces)
    mesh = render.decimate_mesh(body.v_template, body.faces, max_faces)
    render.render_poses(body, poses, orients, spec, mesh)  # warm-up (jit)
    _, wall, cpu = _timed(lambda: render.render_poses(body, poses, orients, spec, mesh))
    results[name] = dict(faces=int(mesh[1].shape[0]), poses_per_s_wall=a.poses / wall,
                         poses_per_s_cpu=a.poses / cpu)
  spec = render.PoseRenderSpec(max_faces=0)
  cams = render.view_cameras(spec)
  faces = np.asarray(body.faces)

  def naive():
    for i in range(a.naive_poses):
      v = np.asarray(lbs.pose_body(body, poses[i], orients[i])[0])
      v = v - v.mean(0)
      for c in cams:
        mesh_render.render_mesh(v, faces, c, spec.fovy_deg, spec.height, spec.width)
  naive()
  _, wall, cpu = _timed(naive)
  results["naive_per_pose_per_view"] = dict(faces=int(faces.shape[0]),
                                            poses_per_s_wall=a.naive_poses / wall,
                                            poses_per_s_cpu=a.naive_poses / cpu)
  base = results["naive_per_pose_per_view"]
  for r in results.values():
    r["speedup_vs_naive_wall"] = r["poses_per_s_wall"] / base["poses_per_s_wall"]
    r["speedup_vs_naive_cpu"] = r["poses_per_s_cpu"] / base["poses_per_s_cpu"]
  out = dict(
      bar=">= 20 poses/s (4 views, 224x224, CPU)",
      views=list(spec.azimuths_deg), size=[spec.height, spec.width], body="default",
      num_poses=a.poses, machine=dict(cpus=os.cpu_count(), python=platform.python_version(),
                                      load_average_before=load0,
                                      load_average_after=os.getloadavg()),
      note=("wall-clock numbers depend on other processes (see load averages); "
            "poses_per_s_cpu = poses / process CPU seconds"),
      results=results)
  path = pathlib.Path(__file__).parent / "results" / "codebook_render.json"
  path.write_text(json.dumps(out, indent=2))
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
