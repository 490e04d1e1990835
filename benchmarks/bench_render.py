"""Renderer benchmarks -> benchmarks/results/render.json.

1. Empty-space skipping on a sparse analytic scene (two sharp balls, <= 10%
   of the box), 64x64, against dense 512-sample marching (the naive
   reference) measured in the same run: fraction of field evaluations, PSNR
   of skipped vs dense, and wall time.
   Bars: evaluations <= 20% of dense, PSNR >= 40 dB.
2. One forward+backward interaction render (two fields, Eq. 6) of 64x64 at
   the default (paper) field config: compile time, step time, peak memory
   (XLA memory_analysis of the compiled step and process max RSS).

Usage: PYTHONPATH=. python benchmarks/bench_render.py [--quick]
"""
import argparse
import dataclasses
import json
import math
import os
import pathlib
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import hoi  # noqa: E402
from interfusion_jax.nerf import camera# noqa: E402
from interfusion_jax.nerf import field as field_lib# noqa: E402
from interfusion_jax.nerf import occupancy as occ# noqa: E402
from interfusion_jax.nerf import render# noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "render.json"

STEEP = 100.0
BALLS = ((-0.3, 0.0, 0.0, 0.9), (0.8, 0.3, -0.2, 0.5))  # (cx, cy, cz, radius)


def sparse_scene(params, x):
  """Two sharp balls with a spatially varying albedo. x [M, 3] -> sigma, albedo, normals."""
  del params
  sigma = jnp.zeros(x.shape[:1])
  normals = jnp.zeros_like(x)
  for cx, cy, cz, r in BALLS:
    d = x - jnp.array([cx, cy, cz])
    dist = jnp.linalg.norm(d, axis=-1)
    s = 50.0 * jax.nn.sigmoid((r - dist) * STEEP)
    normals = normals + s[:, None] * d / jnp.maximum(dist, 1e-3)[:, None]
    sigma = sigma + s
  albedo = 0.5 + 0.5 * jnp.sin(jnp.stack([3 * x[:, 0], 4 * x[:, 1] + 1, 5 * x[:, 2] + 2], -1))
  normals = normals / jnp.maximum(jnp.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
  return sigma, albedo, normals


def _time(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / repeats


def bench_skipping(num_views: int, size: int, budget: int, dilate: int = 0) -> dict:
  spec_dense = render.RenderSpec(num_samples=512, sample_budget=512)
  spec_skip = render.RenderSpec(num_samples=512, sample_budget=budget)
  ospec = occ.OccupancySpec(resolution=32, render_step=spec_dense.step, dilate=dilate)
  grid = occ.init_occupancy(ospec)
  density = lambda x: sparse_scene(None, x)[0]
  upd = jax.jit(lambda g, k, s: occ.update_occupancy(g, density, k, s, ospec))
  for i in range(16):  # what 256 training steps of updates (every 16) would do
    grid = upd(grid, jax.random.PRNGKey(i), 16 * i)
  vol = sum(4.0 / 3.0 * math.pi * b[3] ** 3 for b in BALLS) / (4.0 ** 3)

  cams = camera.orbit_cameras(num_views, 2.7, 20.0, 50.0, azimuth_start_deg=10.0)
  bg = jnp.ones(3)

  def make(spec, use_grid):
    def f(cam, grid):
      o, d = render.camera_rays(cam, size, size)
      sh = render.Shading(cam.light_position, jnp.float32(0.3), jnp.float32(0.7),
                          jnp.float32(0.0))
      out = render.render_rays(sparse_scene, None, o, d, bg, spec,
                               occupancy=grid if use_grid else None, shading=sh)
      return out.rgb, out.num_evaluated, jnp.sum(out.mask), out.num_dropped
    return jax.jit(f)

  dense_fn, skip_fn = make(spec_dense, False), make(spec_skip, True)
  psnrs, evals, occupied, dropped, t_dense, t_skip = [], [], [], [], 0.0, 0.0
  for v in range(num_views):
    cam = jax.tree.map(lambda a: a[v], cams)
    rgb_d, n_dense, _, _ = dense_fn(cam, grid)
    rgb_s, n_skip, n_occ, n_drop = skip_fn(cam, grid)
    mse = float(jnp.mean((rgb_d - rgb_s) ** 2))
    psnrs.append(-10.0 * math.log10(max(mse, 1e-20)))
    evals.append(float(n_skip) / float(n_dense))
    occupied.append(float(n_occ) / float(n_dense))
    dropped.append(int(n_drop))
    if v == 0:
      t_dense = _time(dense_fn, cam, grid)
      t_skip = _time(skip_fn, cam, grid)
  return dict(
      scene="two sharp balls (analytic), %dx%d, %d views, 512 samples/ray" % (
          size, size, num_views),
      occupancy_dilate_cells=dilate,
      object_volume_fraction_of_box=vol,
      occupied_cell_fraction=float(occ.occupied_fraction(grid)),
      sample_budget_per_ray=budget,
      field_evaluations_fraction_vs_dense=float(np.max(evals)),
      occupied_samples_fraction_vs_dense=float(np.mean(occupied)),
      dropped_occupied_samples=int(np.max(dropped)),
      psnr_skip_vs_dense_db_min=float(np.min(psnrs)),
      psnr_skip_vs_dense_db_mean=float(np.mean(psnrs)),
      time_dense_s=t_dense, time_skip_s=t_skip,
      speedup_vs_dense=t_dense / t_skip,
      bars=dict(evaluations_le_0_20=bool(np.max(evals) <= 0.20),
                psnr_ge_40=bool(np.min(psnrs) >= 40.0)))


def bench_forward_backward(cfg, repeats: int, chunks: int = 1) -> dict:
  cfg = cfg.copy_and_resolve_references()
  cfg.render.field_chunks = chunks
  run = config_lib.parse(cfg)
  fspec = config_lib.field_spec(run)
  rspec = config_lib.render_spec(run)
  ospec = config_lib.occupancy_spec(run)
  h, w = int(cfg.render.height), int(cfg.render.width)
  fn = lambda p, x: field_lib.field_forward_with_normals(p, x, fspec)
  kh, ko = jax.random.split(jax.random.PRNGKey(0))
  ph, po = field_lib.init_field(kh, fspec), field_lib.init_field(ko, fspec)
  density = lambda x: (field_lib.field_density(ph, x, fspec)
                       + field_lib.field_density(po, x - jnp.array([0.6, 0.0, 0.0]), fspec))
  grid = jax.jit(lambda k: occ.update_occupancy(occ.init_occupancy(ospec), density, k, 0, ospec))(
      jax.random.PRNGKey(1))
  obj_fn = lambda p, x: fn(p, x - jnp.array([0.6, 0.0, 0.0]))
  cam = camera.sample_camera(jax.random.PRNGKey(2), config_lib.camera_spec(run))

  def loss(ph, po, grid, key):
    o, d = render.camera_rays(cam, h, w)
    sh = render.Shading(cam.light_position, jnp.float32(0.1), jnp.float32(0.9), jnp.float32(0.0))
    out = render.render_two_fields(fn, ph, obj_fn, po, o, d, jnp.ones(3), rspec,
                                   occupancy=grid, key=key, shading=sh)
    orient = jnp.sum(jax.lax.stop_gradient(out.weights)
                     * jnp.maximum(jnp.sum(out.normals * out.dirs[:, None], -1), 0) ** 2)
    return jnp.mean(out.rgb) + 1e-3 * orient + jnp.mean(jnp.sqrt(out.opacity ** 2 + 0.01))

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  key = jax.random.PRNGKey(3)
  t0 = time.perf_counter()
  compiled = step.lower(ph, po, grid, key).compile()
  t_compile = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  t_step = _time(compiled, ph, po, grid, key, repeats=repeats)
  res = dict(
      config="paper field config (16 levels, 2^19 table, 64x1 MLP), %dx%d, %d samples, "
             "budget %d/ray, analytic normals, field_chunks %d, loss: rgb + orient + sparsity" % (
          h, w, rspec.num_samples, rspec.sample_budget, chunks),
      compile_s=t_compile, forward_backward_s=t_step,
      occupied_cell_fraction=float(occ.occupied_fraction(grid)),
      field_points_per_field=int(h * w * rspec.sample_budget),
      max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
  if mem is not None:
    res.update(xla_temp_mb=mem.temp_size_in_bytes / 2**20,
               xla_argument_mb=mem.argument_size_in_bytes / 2**20,
               xla_output_mb=mem.output_size_in_bytes / 2**20)
  return res


def bench_skipping_real_field(cfg, repeats: int) -> dict:
  """Forward render of the randomly initialised two-field scene: dense vs skipped."""
  run = config_lib.parse(cfg)
  fspec = config_lib.field_spec(run)
  # Same chunk size (131k points) for both, so the dense reference fits in memory.
  rspec = dataclasses.replace(config_lib.render_spec(run), field_chunks=2)
  dense_spec = render.RenderSpec(num_samples=rspec.num_samples, sample_budget=rspec.num_samples,
                                 field_chunks=16)
  ospec = config_lib.occupancy_spec(run)
  h, w = int(cfg.render.height), int(cfg.render.width)
  shift = jnp.array([0.6, 0.0, 0.0])
  fn = lambda p, x: field_lib.field_forward_with_normals(p, x, fspec)
  obj_fn = lambda p, x: fn(p, x - shift)
  kh, ko = jax.random.split(jax.random.PRNGKey(0))
  ph, po = field_lib.init_field(kh, fspec), field_lib.init_field(ko, fspec)
  density = lambda x: (field_lib.field_density(ph, x, fspec)
                       + field_lib.field_density(po, x - shift, fspec))
  grid = jax.jit(lambda k: occ.update_occupancy(occ.init_occupancy(ospec), density, k, 0, ospec))(
      jax.random.PRNGKey(1))
  cam = camera.sample_camera(jax.random.PRNGKey(2), config_lib.camera_spec(run))

  def make(spec, use_grid):
    def f(ph, po, grid):
      o, d = render.camera_rays(cam, h, w)
      out = render.render_two_fields(fn, ph, obj_fn, po, o, d, jnp.ones(3), spec,
                                     occupancy=grid if use_grid else None)
      return out.rgb, out.num_dropped
    return jax.jit(f)

  dense_fn, skip_fn = make(dense_spec, False), make(rspec, True)
  rgb_d, _ = dense_fn(ph, po, grid)
  rgb_s, dropped = skip_fn(ph, po, grid)
  mse = float(jnp.mean((rgb_d - rgb_s) ** 2))
  t_dense = _time(dense_fn, ph, po, grid, repeats=repeats)
  t_skip = _time(skip_fn, ph, po, grid, repeats=repeats)
  return dict(scene="random-init two-field scene (paper field config), %dx%d, forward only, "
                    "fields evaluated in chunks of 131k points" % (h, w),
              occupied_cell_fraction=float(occ.occupied_fraction(grid)),
              sample_budget_per_ray=rspec.sample_budget,
              field_evaluations_fraction_vs_dense=rspec.sample_budget / rspec.num_samples,
              dropped_occupied_samples=int(dropped),
              psnr_skip_vs_dense_db=-10.0 * math.log10(max(mse, 1e-20)),
              time_dense_s=t_dense, time_skip_s=t_skip, speedup_vs_dense=t_dense / t_skip)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="fewer views / repeats")
  ap.add_argument("--budget", type=int, default=0, help="per-ray budget (0 = config auto)")
  ap.add_argument("--parts", default="analytic,real,fb",
                  help="comma list of analytic,real,fb; results merge into the JSON")
  args = ap.parse_args()
  parts = set(args.parts.split(","))
  cfg = hoi.get_config()
  budget = args.budget or config_lib.render_spec(config_lib.parse(cfg)).sample_budget
  out = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
  out.update(device=str(jax.devices()[0]), jax=jax.__version__, cpu_count=os.cpu_count())
  if not isinstance(out.get("load_average_at_start"), dict):
    out["load_average_at_start"] = {"analytic,fb": out.get("load_average_at_start")}
  out["load_average_at_start"][args.parts] = os.getloadavg()
  views = 2 if args.quick else 4
  if "analytic" in parts:
    out["empty_space_skipping"] = bench_skipping(views, 64, budget)
    print(json.dumps(out["empty_space_skipping"], indent=1))
    # Dilation marks ~1.7x more samples as occupied: give it a ~20% budget.
    out["empty_space_skipping_dilate1"] = bench_skipping(views, 64, 100, dilate=1)
    print(json.dumps(out["empty_space_skipping_dilate1"], indent=1))
  if "real" in parts:
    out["empty_space_skipping_real_field"] = bench_skipping_real_field(cfg, 1 if args.quick else 3)
    print(json.dumps(out["empty_space_skipping_real_field"], indent=1))
  if "fb" in parts:
    for chunks in (1, 8):
      name = "forward_backward_two_field_64x64" + ("" if chunks == 1 else "_chunks%d" % chunks)
      out[name] = bench_forward_backward(cfg, 1 if args.quick else 2, chunks)
      out[name]["note"] = "max_rss_mb is the process-wide peak so far"
      print(json.dumps(out[name], indent=1))
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(out, indent=1) + "\n")
  print("wrote", RESULTS)


if __name__ == "__main__":
  main()
