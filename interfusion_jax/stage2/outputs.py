"""What a run shows: validation grids, turntables, the multi-view grid, meshes, summary.json.

Evaluation renders are on white, albedo-only or diffuse-shaded with the light
at the camera (``config.camera.eval_shading``), at the eval camera of
``config.camera`` (distance, elevation, fovy), around c_O for the object,
c_O / 2 for the interaction scene and the origin for the human.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax import fileio
from interfusion_jax.mesh import export as mesh_export
from interfusion_jax.mesh import texture as mesh_texture
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import render as render_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib

Params = dict


def eval_cameras(spec: step_lib.TrainSpec, object_center, azimuth_deg: float) -> dict:
  """Evaluation cameras at one azimuth: {"object", "human", "interaction"} -> Camera."""
  c = spec.camera
  make = lambda target: jax.tree_util.tree_map(
      lambda x: x[0], camera_lib.orbit_cameras(1, c.eval_distance, c.eval_elevation_deg,
                                               c.eval_fovy_deg, target=target, up=c.up,
                                               azimuth_start_deg=azimuth_deg))
  oc = jnp.asarray(object_center, jnp.float32)
  return {"object": make(oc), "human": make(jnp.zeros(3)), "interaction": make(0.5 * oc)}


def eval_shading(cam, spec: step_lib.TrainSpec):
  """The eval renders' shading (``config.camera.eval_shading``).

  "albedo": None (plain albedo). "diffuse": the official test render,
  ambient_light + diffuse_light * max(0, n . l) times the albedo
  (``config.shading``), with the point light at the camera's position.
  """
  if spec.settings.eval_shading != "diffuse":
    return None
  s = spec.shading
  return render_lib.Shading(jnp.asarray(cam.light_position, jnp.float32),
                            jnp.float32(s.ambient_light), jnp.float32(s.diffuse_light),
                            jnp.float32(0.0))


def render_eval(params: Params, occupancy, cams: dict, spec: step_lib.TrainSpec,
                chunk: int | None = None) -> dict:
  """Renders on white of the object, human and interaction scene, shaded by
  ``eval_shading`` (albedo, or diffuse with the light at the camera); each on
  its own occupancy grid (``step.occupancy_grid_for``; ``occupancy`` is the state's
  {grid: OccupancyGrid} or one grid for all).

  The rays go through the fields ``chunk`` at a time (default
  ``setup.EVAL_CHUNK_RAYS``; ``jax.lax.map``), so the peak memory is one
  chunk's whatever the image size (the paper's 512^2 final renders at 512
  samples a ray would otherwise hold ~10^8 samples at once). The sample budget
  applies per chunk; while nothing is dropped the images do not depend on it.
  The last chunk is padded with rays that miss the scene box, which take no
  samples, so the padding never takes a real ray's budget.

  Returns:
    {name: {"rgb": [H, W, 3], "normal": [H, W, 3] display in [0, 1], "opacity": [H, W],
    "samples_dropped": int32 scalar, occupied samples the sample budget left out
    (0 when every occupied sample was evaluated)}}.
  """
  fn, h, w = spec.model.field, spec.height, spec.width
  chunk = int(chunk or setup_lib.EVAL_CHUNK_RAYS)
  out = {}
  for name, cam in cams.items():
    rays_o, rays_d = render_lib.camera_rays(cam, h, w)
    bg = jnp.ones(3, jnp.float32)
    shading = eval_shading(cam, spec)
    grid = step_lib.occupancy_grid_for(occupancy, name)

    def render(o, d, name=name, shading=shading, grid=grid):
      if name == "interaction":
        r = render_lib.render_two_fields(fn, params["human"], fn, params["object"], o, d, bg,
                                         spec.render, occupancy=grid, shading=shading)
      else:
        r = render_lib.render_rays(fn, params[name], o, d, bg, spec.render, occupancy=grid,
                                   shading=shading)
      return (r.rgb, r.opacity, r.normal), r.num_dropped

    (rgb, opacity, normal), dropped = _in_chunks(render, rays_o, rays_d, chunk,
                                                 spec.render.radius)
    rgb, opacity = rgb.reshape(h, w, 3), opacity.reshape(h, w)
    out[name] = {"rgb": rgb, "opacity": opacity,
                 "normal": render_lib.normals_to_image(normal.reshape(h, w, 3), opacity),
                 "samples_dropped": dropped}
  return out


def _in_chunks(fn, rays_o: jax.Array, rays_d: jax.Array, chunk: int, radius: float
               ) -> tuple[tuple, jax.Array]:
  """``fn(rays_o, rays_d)`` over ``chunk`` rays at a time.

  ``fn`` returns (per-ray outputs [R, ...], a per-chunk count). The last chunk
  is padded with rays that start outside the box [-radius, radius]^3 and point
  away from it (no samples, nothing evaluated or dropped); their outputs are
  cut off.

  Returns:
    (per-ray outputs [n, ...], the counts summed over the chunks).
  """
  n = rays_o.shape[0]
  c = max(1, min(chunk, n))
  pad = (-n) % c
  away = lambda a, v: jnp.concatenate([a, jnp.full((pad, 3), v, a.dtype)]).reshape(-1, c, 3)
  outs, counts = jax.lax.map(lambda od: fn(*od),
                             (away(rays_o, 4.0 * radius), away(rays_d, 1.0)))
  return tuple(x.reshape(-1, *x.shape[2:])[:n] for x in outs), jnp.sum(counts)


def warn_dropped(what: str, dropped: dict, spec: step_lib.TrainSpec) -> None:
  """Logs one warning when eval renders left occupied samples out ({render: count})."""
  total = sum(int(v) for v in dropped.values())
  if total <= 0:
    return
  per = ", ".join(f"{k} {int(v)}" for k, v in dropped.items() if int(v))
  logging.warning(
      "%s left out %d occupied ray samples (%s): more than the %d samples per ray on average "
      "that the sample budget holds (of render.num_samples = %d, where nothing is left out); "
      "those rays render without them. A larger config.render.sample_budget avoids it.",
      what, total, per, spec.render.sample_budget, spec.render.num_samples)


_EVAL_FNS: dict = {}


def eval_fn(spec: step_lib.TrainSpec):
  """``render_eval`` jitted for one spec, memoised by ``setup.spec_key``, so each
  spec compiles once per process."""
  key = setup_lib.spec_key(spec)
  if key not in _EVAL_FNS:
    _EVAL_FNS[key] = (spec, jax.jit(lambda p, o, c: render_eval(p, o, c, spec)))
  return _EVAL_FNS[key][1]


def at_size(spec: step_lib.TrainSpec, size: int) -> step_lib.TrainSpec:
  """``spec`` rendering ``size`` x ``size`` pixels (0: unchanged)."""
  if not size:
    return spec
  return dataclasses.replace(
      spec, settings=dataclasses.replace(spec.settings, height=size, width=size))


def validation_grid(params: Params, occupancy, object_center, spec: step_lib.TrainSpec,
                    azimuths=(0.0, 90.0)) -> np.ndarray:
  """uint8 grid: rows object / human / interaction (x azimuths); columns RGB, normals, opacity."""
  rows, dropped = [], dict.fromkeys(("object", "human", "interaction"), 0)
  for az in azimuths:
    imgs = eval_fn(spec)(params, occupancy, eval_cameras(spec, object_center, az))
    for name in dropped:
      d = jax.device_get(imgs[name])
      rows.append([d["rgb"], d["normal"], d["opacity"]])
      dropped[name] += int(d["samples_dropped"])
  warn_dropped("The validation renders", dropped, spec)
  return run_io.image_grid(rows)


def turntables(params: Params, occupancy, object_center, spec: step_lib.TrainSpec,
               frames: int) -> tuple[dict, dict]:
  """({name: list of F uint8 RGB frames}, {name: occupied samples left out over the
  frames}) for object / human / interaction (full orbit)."""
  out = {"object": [], "human": [], "interaction": []}
  dropped = dict.fromkeys(out, 0)
  for i in range(frames):
    imgs = eval_fn(spec)(params, occupancy, eval_cameras(spec, object_center, 360.0 * i / frames))
    for name in out:
      out[name].append(run_io.to_uint8(np.asarray(imgs[name]["rgb"])))
      dropped[name] += int(imgs[name]["samples_dropped"])
  return out, dropped


def extract_meshes(params: Params, spec: step_lib.TrainSpec, resolution: int,
                   threshold: float | None = None) -> dict:
  """Marching-cubes meshes {"human", "object", "combined"} (mesh.export.Mesh, vertex colours).

  The default iso-level is the camera-tracing level, NeRF occupancy
  1 - exp(-delta sigma) = 0.5, i.e. sigma = ln 2 / delta.
  """
  delta = spec.loss.geo_delta
  level = math.log(2.0) / delta if threshold is None else threshold
  density = jax.jit(spec.model.density)
  albedo = albedo_fns(params, spec)
  meshes = {}
  for name in ("human", "object"):
    p = params[name]
    meshes[name] = mesh_export.extract_mesh(
        lambda x, p=p: np.asarray(density(p, jnp.asarray(x))), albedo[name],
        resolution, spec.render.radius, level)
  meshes["combined"] = mesh_export.merge_meshes([meshes["human"], meshes["object"]])
  return meshes


def albedo_fns(params: Params, spec: step_lib.TrainSpec) -> dict:
  """{"human", "object"}: host points [N, 3] -> albedo [N, 3] of that field (one jitted
  field for both)."""
  albedo = jax.jit(lambda p, x: spec.model.field(p, x)[1])
  return {name: (lambda x, p=params[name]: np.asarray(albedo(p, jnp.asarray(x))))
          for name in ("human", "object")}


def write_renders(state: step_lib.TrainState, spec: step_lib.TrainSpec, out_dir: pathlib.Path,
                  frames: int, size: int = 0) -> tuple[dict, dict]:
  """Turntables (MP4, GIF fallback) of the interaction / human / object and multiview.png.

  Occupied samples the sample budget left out are counted and, if any, logged
  in one warning (``warn_dropped``).

  Args:
    size: render size in pixels, square (``config.train.final_resolution``;
      0 = the training render size).

  Returns:
    ({output name: path}, {render: occupied samples left out over the frames}).
  """
  spec = at_size(spec, size)
  outputs = {}
  shots, dropped = turntables(state.params, state.occupancy, state.object_center, spec, frames)
  warn_dropped(f"The {frames} turntable frames", dropped, spec)
  for name, fr in shots.items():
    outputs[f"turntable_{name}"] = str(run_io.write_video(out_dir / f"turntable_{name}", fr))
  n = len(shots["interaction"])
  pick = sorted(set(int(i * n / 4) for i in range(4)))
  grid = run_io.image_grid([[shots[name][i] / 255.0 for i in pick]
                            for name in ("interaction", "human", "object")])
  run_io.write_png(out_dir / "multiview.png", grid)
  outputs["multiview"] = str(out_dir / "multiview.png")
  return outputs, dropped


def write_meshes(state: step_lib.TrainState, spec: step_lib.TrainSpec, out_dir: pathlib.Path,
                 resolution: int, threshold: float | None = None,
                 texture_size: int = 0) -> tuple[dict, dict]:
  """mesh_{human,object,combined}.{glb,obj} (vertex colours) and, when ``texture_size``,
  the UV-textured mesh_{human,object,combined}_textured.{obj,mtl,png,glb}
  (``mesh.texture.write_textured_meshes``); returns ({file: path}, {name: Mesh})."""
  meshes = extract_meshes(state.params, spec, resolution, threshold)
  outputs = {}
  for name, mesh in meshes.items():
    for p in mesh_export.write_mesh(out_dir / f"mesh_{name}", mesh):
      outputs[p.name] = str(p)
  outputs.update(mesh_texture.write_textured_meshes(
      out_dir, meshes, albedo_fns(state.params, spec), texture_size))
  return outputs, meshes


def write_final_outputs(state: step_lib.TrainState, scene: setup_lib.Scene,
                        config: config_lib.RunConfig, paths: run_io.RunPaths,
                        info: dict) -> dict:
  """Turntables, multi-view grid, meshes and summary.json into <workdir>/final.

  summary.json's ``outputs.report`` names <workdir>/report.html, which the command
  lines write next from these files (``evaluation.report.refresh_reports``).

  The renders are ``config.train.final_resolution`` pixels square (0: the
  training render size).

  The folder is written whole, as a temporary sibling renamed into place
  (``fileio.atomic_directory``): an error or signal meanwhile leaves the
  previous final/ as it was, never a half-written one.

  summary.json's ``wall_time_s`` is the training time over every session of
  the run (``info["train_time_s"]``, else this session's ``wall_time_s``) and
  ``steps_per_second`` is ``step / wall_time_s``; ``session_wall_time_s`` is
  the last session's loop time.
  """
  spec = scene.spec
  with fileio.atomic_directory(paths.final) as tmp:
    outputs, dropped = write_renders(state, spec, tmp, int(config.train.turntable_frames),
                                     int(config.train.final_resolution))
    info = dict(info, final_renders_samples_dropped=dropped)
    mesh_files, meshes = write_meshes(state, spec, tmp, int(config.train.mesh_resolution),
                                      texture_size=int(config.train.texture_size))
    outputs.update(mesh_files)
    outputs = {k: str(paths.final / pathlib.Path(v).name) for k, v in outputs.items()}
    summary = _summary(state, scene, info, outputs, meshes)
    outputs["report"] = str(paths.root / "report.html")
    run_io.write_json(tmp / paths.summary.name, summary)
  return summary


def _summary(state, scene, info: dict, outputs: dict, meshes: dict) -> dict:
  train_time = info.get("train_time_s", info.get("wall_time_s"))
  train_time = float(train_time) if train_time is not None else None
  return {
      "final_losses": {k: v for k, v in info.get("last_metrics", {}).items()
                       if k.startswith("loss") or k.startswith("lambda")},
      "step": int(state.step),
      "wall_time_s": train_time,
      "session_wall_time_s": info.get("wall_time_s"),
      "steps_per_second": (int(state.step) / train_time if train_time else
                           info.get("steps_per_second")),
      "total_skipped_steps": int(state.total_skips),
      "object_center": np.asarray(state.object_center).tolist(),
      "anchor_pose_id": setup_lib.anchor_id(scene.anchor_pose),
      "num_devices": info.get("num_devices", 1),
      # the largest samples_dropped of a step, and the per-ray budget used (budget.py)
      "samples_dropped_peak": (info.get("sample_budget") or {}).get("samples_dropped_peak"),
      "sample_budget": info.get("sample_budget"),
      # occupied samples the final renders (every turntable frame) left out, per render
      "final_renders_samples_dropped": info.get("final_renders_samples_dropped"),
      "mesh_vertices": {k: int(len(m.vertices)) for k, m in meshes.items()},
      "outputs": outputs,
  }
