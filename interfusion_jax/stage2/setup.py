"""Everything a run needs before its first step, loaded before anything compiles.

``build_scene(run, paths) -> Scene`` (``run``: the parsed ``config.RunConfig``): the guidance model and prompt
embeddings (``load_guidance_and_text``), the stage-1 anchor pose and body
(``prepare_anchor``), the object's starting place (``object_origin``) and the
static ``TrainSpec`` (``train_spec``). Errors in any of them raise
``TrainSetupError`` with a message that says what to fix.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from typing import Any

import jax
import numpy as np

from interfusion_jax.body import anchor as body_anchor
from interfusion_jax.guidance import captions
from interfusion_jax.guidance import loading
from interfusion_jax.mesh import raster
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import model as model_lib
from interfusion_jax.pose import anchor as pose_anchor
from interfusion_jax.prior import assets as prior_assets
from interfusion_jax.prior import objects, placement
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import step as step_lib


class TrainSetupError(ValueError):
  """Something the run needs is missing or malformed (raised before compiling)."""


def enable_compilation_cache() -> None:
  """The persistent XLA compilation cache of the command lines (JAX_COMPILATION_CACHE_DIR,
  default ~/.cache/interfusion_jax/jax_cache): a repeated or resumed run starts faster.

  Every program is cached, the ~115 small eager ones of the setup included (JAX's
  default skips programs that compile in under 1 s; their compiles add up to a
  few seconds per start)."""
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(
      "~/.cache/interfusion_jax/jax_cache")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# ----------------------------------------------------------------------------
# Memory estimates (checked before compiling: an absurd render size is refused in
# one line instead of failing after minutes of compiling on a huge allocation).

# Bytes per ray sample, fitted to XLA's memory analysis of the step and of the eval
# render compiled on CPU for the smoke and cpu variants (benchmarks/bench_memory.py,
# benchmarks/results/memory.json): a part per sample of the ray (positions,
# weights, compositing) plus a part per evaluated sample and field feature
# (hash-grid features and MLP activations of both fields, finite-difference normals).
STEP_BYTES_PER_SAMPLE = 250.0     # the four renders of a camera, forward and backward
STEP_BYTES_PER_FEATURE = 180.0
EVAL_BYTES_PER_SAMPLE = 250.0     # the three eval renders, forward only
EVAL_BYTES_PER_FEATURE = 32.0
# An eval render evaluates this many rays at a time (outputs.render_eval); what it
# holds for every pixel: rgb, opacity and normals of the three renders, and their
# images (float32, twice over).
EVAL_CHUNK_RAYS = 1 << 14
EVAL_BYTES_PER_PIXEL = 3 * 7 * 4 * 2
# A size is refused only when its estimate exceeds this many times the memory: the
# fit comes from CPU compiles, and a GPU or TPU compiler may fuse more.
MEMORY_MARGIN = 2.0


def _features(run: config_lib.RunConfig) -> int:
  """Per-point activations of one field: hash-grid features plus MLP units."""
  f = run.field
  return f.n_levels * f.n_features_per_level + f.mlp_width * (f.mlp_hidden_layers + 1)


def _evaluated(run: config_lib.RunConfig) -> int:
  """Field evaluations per ray (config.render.sample_budget; 0: num_samples // 8)."""
  r = run.render
  return r.sample_budget or max(1, r.num_samples // 8)


def step_memory_bytes(run: config_lib.RunConfig, devices: int = 1) -> int:
  """An estimate of the training step's peak memory per device for the render size (bytes).

  ``height x width`` rays for each of the cameras a device renders (the
  ``batch_size`` cameras are split over the largest number of the ``devices``
  that divides it, as the loop shards them), ``num_samples`` samples each, the
  four renders of a camera, forward and backward; the diffusion model is not
  counted (its size does not depend on the render size).
  """
  r = run.render
  shards = max(d for d in range(1, max(1, devices) + 1) if r.batch_size % d == 0)
  rays = r.height * r.width * (r.batch_size // shards)
  per_ray = (r.num_samples * STEP_BYTES_PER_SAMPLE
             + _evaluated(run) * _features(run) * STEP_BYTES_PER_FEATURE)
  return int(rays * per_ray)


def render_memory_bytes(run: config_lib.RunConfig, size: int) -> int:
  """An estimate of one eval render's peak memory at ``size`` x ``size`` pixels (bytes):
  one chunk of ``EVAL_CHUNK_RAYS`` rays through the fields plus the images; the
  turntables and multiview of ``render`` / the final outputs render one view at a time."""
  r = run.render
  per_ray = (r.num_samples * EVAL_BYTES_PER_SAMPLE
             + _evaluated(run) * _features(run) * EVAL_BYTES_PER_FEATURE)
  pixels = size * size
  return int(min(pixels, EVAL_CHUNK_RAYS) * per_ray + pixels * EVAL_BYTES_PER_PIXEL)


def memory_limit_bytes() -> int | None:
  """Memory of the first device (its allocator's limit), or the host's RAM on CPU;
  None when neither is known."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(stats["bytes_limit"])
  except Exception:  # pylint: disable=broad-except  # backends without memory_stats
    pass
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (ValueError, OSError, AttributeError):
    return None


def _gb(n: float) -> str:
  return f"{n / 1e9:.3g} GB"


def check_memory(run: config_lib.RunConfig, final_size: int | None = None,
                 limit: int | None = None) -> None:
  """Refuses render sizes whose estimated memory exceeds ``MEMORY_MARGIN`` times the
  device's, before compiling.

  Args:
    final_size: also check an eval render of this many pixels square
      (``config.train.final_resolution``, 0 = the render size; None: not checked).
    limit: bytes available (default ``memory_limit_bytes()``; None: nothing checked).

  Raises:
    TrainSetupError: naming the keys, the estimate and the memory available.
  """
  limit = memory_limit_bytes() if limit is None else limit
  if not limit:
    return
  r = run.render
  need = step_memory_bytes(run, jax.local_device_count())
  if need > MEMORY_MARGIN * limit:
    raise TrainSetupError(
        f"config.render.height x width = {r.height} x {r.width} (batch_size {r.batch_size}, "
        f"num_samples {r.num_samples}): the training step needs about {_gb(need)}, more than "
        f"twice the {_gb(limit)} this device has; lower the render size or num_samples.")
  if final_size is not None:
    size = final_size or max(r.height, r.width)
    need = render_memory_bytes(run, size)
    if need > MEMORY_MARGIN * limit:
      raise TrainSetupError(
          f"config.train.final_resolution = {size}: a render needs about {_gb(need)}, more "
          f"than twice the {_gb(limit)} this device has; lower config.train.final_resolution.")


def model_fns(run: config_lib.RunConfig) -> model_lib.ModelFns:
  """The hash-grid fields and backgrounds of ``run`` (shared by train, render, export)."""
  return model_lib.bind(config_lib.field_spec(run), config_lib.background_spec(run))


def train_spec(run: config_lib.RunConfig, guidance_spec: Any,
               model: model_lib.ModelFns | None = None) -> step_lib.TrainSpec:
  """The static TrainSpec of a parsed config and a guidance spec.

  Args:
    model: optional ModelFns override (tests use closed-form fields).
  """
  p, c = run.prompt, run.camera
  return step_lib.TrainSpec(
      model=model or model_fns(run), guidance=guidance_spec,
      render=config_lib.render_spec(run), shading=config_lib.shading_spec(run),
      camera=config_lib.camera_spec(run), occupancy=config_lib.occupancy_spec(run),
      schedule=config_lib.schedule_spec(run),
      loss=run.loss, optim=run.optim,
      settings=step_lib.StepSettings(
          height=run.render.height, width=run.render.width, batch_size=run.render.batch_size,
          object_scale=c.object_scale, interaction_scale=c.interaction_scale,
          human_scale=c.human_scale, head_scale=c.head_scale,
          trace_resolution=c.trace_resolution, trace_threshold=c.trace_threshold,
          eval_shading=c.eval_shading, random_white_prob=run.background.random_white_prob,
          object_blob=run.field.object_blob),
      views=(float(p.overhead_elevation_deg), float(p.front_azimuth_deg),
             float(p.back_azimuth_deg)),
      perp_neg=config_lib.perp_neg_spec(run))


def spec_key(spec: step_lib.TrainSpec) -> Any:
  """A memo key of a spec: the spec itself when hashable (equal specs share one
  compiled program), else its identity (a spec holding an unhashable module)."""
  try:
    hash(spec)
    return spec
  except TypeError:
    return ("id", id(spec))


def object_origin(config: config_lib.RunConfig, anchor: Any) -> np.ndarray | None:
  """Where the object field starts (config.field.object_blob; not in the official code).

  "origin": None (the official blob at the origin, c_O = 0). "placement": the
  bounding-box centre of the built-in prior's parametric object named in
  ``config.prompt.object``, placed against the anchor body by its rule
  (prior.placement) exactly as in the prior's image bank; None, with a
  warning, when the prompt names no library object.

  Returns:
    [3] float32 scene coordinates, or None.
  """
  if str(config.field.object_blob) != "placement":
    return None
  name = captions.object_from_text(str(config.prompt.object))
  if name is None:
    warnings.warn(f"config.field.object_blob='placement': the object prompt "
                  f"{str(config.prompt.object)!r} names no object of the built-in library "
                  f"({', '.join(captions.OBJECT_NAMES)}); the object blob starts at the origin.")
    return None
  v, f, j = (np.asarray(a) for a in (anchor.vertices, anchor.faces, anchor.joints))
  return objects.bbox_center(placement.place_named(name, v, f, j).mesh).astype(np.float32)


NO_WEIGHTS = (
    "config.guidance.weights_dir is empty, so this run has no diffusion model (the paper "
    "guides with DeepFloyd IF): set --config.guidance.weights_dir=DeepFloyd/IF-I-XL-v1.0 (a "
    "hub id; accept its licence on huggingface.co and set HF_TOKEN) or a local diffusers "
    "folder, or add --config.guidance.backend=builtin for the low-fidelity built-in offline "
    "prior.")
BOTH_GIVEN = (
    "config.guidance.backend=builtin (the built-in offline prior; the cpu, quick and smoke "
    "default) would ignore config.guidance.weights_dir={root!r}: add "
    "--config.guidance.backend=auto to train with those weights, or drop weights_dir.")


def check_guidance_choice(config: config_lib.RunConfig) -> None:
  """The guidance is chosen explicitly: ``backend="builtin"`` without weights, or
  weights (a folder or hub id) with any other backend. Nothing is ever substituted.

  Raises:
    TrainSetupError: ``NO_WEIGHTS`` or ``BOTH_GIVEN``, one line.
  """
  root = str(config.guidance.weights_dir).strip()
  if str(config.guidance.backend) == "builtin":
    if root:
      raise TrainSetupError(BOTH_GIVEN.format(root=root))
  elif not root:
    raise TrainSetupError(NO_WEIGHTS)


def load_guidance_and_text(config: config_lib.RunConfig):
  """(GuidanceSpec, guidance params, prompt embedding table) from config.guidance.

  ``backend="builtin"`` (the cpu / quick / smoke default) uses the built-in,
  low-fidelity offline prior and the log says so; any other backend loads
  ``weights_dir`` (a local diffusers folder or a hub model id, see
  ``guidance.loading.load_scene_guidance``). Nothing is ever substituted:
  an empty ``weights_dir`` without ``backend="builtin"``, or both given, stop
  here, before anything compiles.

  Raises:
    TrainSetupError: no weights, builtin with weights, or weights that cannot be
      found, fetched or read (an incomplete directory, another model, a corrupt
      file: a config.json that is not JSON, a truncated msgpack / safetensors file).
  """
  check_guidance_choice(config)
  g, prompt = config_lib.guidance_options(config), config_lib.prompt_spec(config)
  root = str(g.weights_dir).strip()
  if g.backend == "builtin":
    gspec, gparams, table = prior_assets.load_builtin_guidance(g, prompt)
    logging.warning(prior_assets.NOTICE.format(n=int(gparams["bank"].shape[0])))
    return gspec, gparams, table
  try:
    return loading.load_scene_guidance(g, prompt, root)
  except (FileNotFoundError, loading.ModelTypeError) as e:
    raise TrainSetupError(f"config.guidance.weights_dir: {e}") from e


def text_table(config: config_lib.RunConfig, guidance_kind: str) -> dict:
  """The prompt-embedding table of one scene under an already chosen guidance backend.

  Only the text encoder is loaded (the built-in captions, T5 for DeepFloyd IF
  with its on-disk cache, CLIP for Stable Diffusion / pixel UNets), never the
  diffusion model again.
  """
  prompt = config_lib.prompt_spec(config)
  if guidance_kind == "builtin":
    return prior_assets.builtin_text_table(prompt)
  g = config_lib.guidance_options(config)
  try:
    return loading.load_scene_text(g, prompt, str(g.weights_dir).strip(), guidance_kind)
  except (FileNotFoundError, loading.ModelTypeError) as e:
    raise TrainSetupError(f"config.guidance.weights_dir: {e}") from e


def load_anchor_pose(config: config_lib.RunConfig) -> pose_anchor.AnchorPose:
  """Stage 1: the anchor pose (config.pose.anchor_file or retrieval from T_I).

  Raises:
    TrainSetupError: for a missing or malformed anchor file.
  """
  try:
    if str(config.pose.anchor_file).strip():
      return pose_anchor.load_anchor(config.pose.anchor_file)
    return pose_anchor.retrieve_anchor(config_lib.anchor_query(config))
  except (FileNotFoundError, ValueError) as e:
    raise TrainSetupError(f"Anchor pose: {e}") from e


def check_inputs(config: config_lib.RunConfig) -> None:
  """What a scene's setup can check before loading anything: the guidance choice
  (``check_guidance_choice``), the render sizes against the device's memory
  (``check_memory``) and the anchor file, if one is given.

  Raises:
    TrainSetupError: naming the key and the problem.
  """
  check_guidance_choice(config)
  check_memory(config, final_size=int(config.train.final_resolution))
  if str(config.pose.anchor_file).strip():
    load_anchor_pose(config)


def anchor_preview(anchor: Any, size: int = 256) -> np.ndarray:
  """Front and side renders of the anchor body, side by side: uint8 [size, 2 size, 3]."""
  verts = np.asarray(anchor.vertices)
  centre = 0.5 * (verts.min(0) + verts.max(0))
  views = []
  for az in (0.0, 90.0):
    cam = camera_lib.orbit_cameras(1, 3.0, 10.0, 50.0, target=centre, azimuth_start_deg=az)
    views.append(raster.render_mesh(verts, np.asarray(anchor.faces),
                                    np.asarray(cam.c2w[0]), 50.0, size, size)["rgb"])
  return run_io.to_uint8(np.concatenate(views, axis=1))


def prepare_anchor(config: config_lib.RunConfig, paths: run_io.RunPaths | None):
  """(Anchor pytree, AnchorPose); writes anchor/anchor.npz and anchor.png into the run.

  The body is posed with root orientation 0, as the release poses every anchor,
  unless ``config.body.keep_root_orient`` keeps the pose's own ``global_orient``;
  anchor.npz keeps the pose as retrieved either way."""
  pose = load_anchor_pose(config)
  try:
    anchor = body_anchor.prepare_anchor_from_model(
        str(config.body.model), str(config.body.gender), pose.body_pose,
        pose.global_orient if config.body.keep_root_orient else None,   # None: upright
        config_lib.anchor_spec(config))
  except (FileNotFoundError, ValueError) as e:
    raise TrainSetupError(f"Anchor body (config.body.model={config.body.model!r}): {e}") from e
  if paths is not None:
    tmp = paths.anchor_dir / ".anchor.tmp.npz"
    pose_anchor.save_anchor(tmp, pose)
    os.replace(tmp, paths.anchor_dir / "anchor.npz")
    try:
      run_io.write_png(paths.anchor_dir / "anchor.png", anchor_preview(anchor))
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(f"Could not render the anchor preview ({e}).")
  return anchor, pose


def anchor_id(pose) -> str:
  """A short id of the anchor pose for summary.json (source / file)."""
  meta = getattr(pose, "meta", {}) or {}
  for key in ("source", "anchor_file", "label"):
    if key in meta:
      return str(meta[key])
  return "unknown"


@dataclasses.dataclass
class Scene:
  """Everything frozen for one run: the spec and the frozen pytree, plus stage-1 meta."""
  spec: step_lib.TrainSpec
  frozen: dict
  anchor_pose: Any = None
  object_origin: Any = None          # [3] or None (``object_origin``)


def build_scene(config: config_lib.RunConfig, paths: run_io.RunPaths | None,
                guidance=None, shared: Scene | None = None) -> Scene:
  """Loads guidance, prompts and the anchor; builds the TrainSpec.

  Args:
    guidance: optional (GuidanceSpec, params, text table) override (tests).
    shared: a scene already built with the same guidance (a sweep's first):
      its guidance spec and params are reused, only this scene's prompt table
      is encoded.

  Raises:
    TrainSetupError: first of all for what ``check_inputs`` checks, then for
      bad weights or anchors.
  """
  check_inputs(config)
  if shared is not None:
    gspec, gparams = shared.spec.guidance, shared.frozen["guidance"]
    table = text_table(config, gspec.kind)
  else:
    gspec, gparams, table = guidance if guidance is not None else load_guidance_and_text(config)
  anchor, pose = prepare_anchor(config, paths)
  spec = train_spec(config, gspec, model=shared.spec.model if shared is not None else None)
  return Scene(spec, {"guidance": gparams, "text": table, "anchor": anchor}, pose,
               object_origin(config, anchor))

