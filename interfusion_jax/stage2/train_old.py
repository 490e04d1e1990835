"""Stage 2 of InterFusion: the training step (PAPER.md Eq. 3-8) and the loop.

CLI::

    python -m interfusion_jax.train --config=configs/hoi.py[:variant] \
        --config.prompt.object="a bike" --workdir=runs/bike [--resume|--noresume]

The step is ``train_step(state, frozen, key) -> (state, metrics)``: pure,
jitted once (the step counter is traced, so schedules never retrace),
``vmap``-able over scenes, and ``pmap``-ed data-parallel over local devices
with a gradient ``pmean`` (``make_train_step(spec, axis_name="devices")``).
Each camera of the (global) batch draws its randomness from
``fold_in(key, global_camera_index)``, so 1 device with batch B and D devices
with batch B / D compute the same cameras and, after the pmean, the same update.

One camera (``camera_losses``):
  1. a random camera + light around the origin; the object (0.7 pos + c_O),
     interaction (0.8 pos + c_O / 2), human (0.7 pos) and head (0.2 pos + head
     joint) cameras derived from it (PAPER.md "Camera tracing");
  2. renders of psi_O, psi_H, the Eq. 6 composite (human gradient stopped)
     and the head close-up, with the official background augmentation;
  3. four SDS terms with view-dependent embeddings (Eq. 3 and 5);
  4. L_H^geo / L_O^geo on the human / object ray samples (Eq. 4 and 7);
  5. the orient / sparsity / opaque regularisers; total = Eq. 8.

``frozen`` = {"guidance": guidance params, "text": prompt embeddings,
"anchor": the anchor pytree}; ``state`` also carries the occupancy grid and
the camera-tracing centre c_O (it changes every ``trace_every`` steps, outside
the jitted step, and must be checkpointed).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import pathlib
import sys
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from interfusion_jax import camera as camera_lib
from interfusion_jax import checkpoint as ckpt_lib
from interfusion_jax import config_validation
from interfusion_jax import losses
from interfusion_jax import occupancy as occ_lib
from interfusion_jax import render as render_lib
from interfusion_jax import run_io
from interfusion_jax import schedules
from interfusion_jax.guidance import core as guidance_core
from interfusion_jax.guidance import prompts as prompts_lib

Params = Any
PARAM_GROUPS = ("human", "object", "bg_human", "bg_object")
RENDERS = ("object", "human", "interaction", "head")


class TrainSetupError(ValueError):
  """Something the run needs is missing or malformed (raised before compiling)."""


class TooManySkipsError(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient."""


# ----------------------------------------------------------------------------
# Static model functions (the field / background modules behind one interface).


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """Static (hashable) callables of the two fields and their backgrounds.

  field(params, x [M, 3]) -> (sigma [M], albedo [M, 3], normals [M, 3]);
  density(params, x [M, 3]) -> sigma [M]; background(params, dirs [R, 3]) -> [R, 3];
  init(key) -> {"human", "object", "bg_human", "bg_object"} parameters.
  """
  field: Callable[..., Any]
  density: Callable[..., Any]
  background: Callable[..., Any]
  init: Callable[..., Any]


def model_fns_from_config(config: ml_collections.ConfigDict) -> ModelFns:
  """ModelFns of field.py / background.py for ``config`` (shared by train/export/render)."""
  from interfusion_jax import background as bg_lib
  from interfusion_jax import field as field_lib
  fspec = field_lib.FieldSpec.from_config(config.field)
  bspec = bg_lib.BackgroundSpec.from_config(config.background)
  return _bind_model_fns(fspec, bspec)


@functools.lru_cache(maxsize=None)
def _bind_model_fns(fspec, bspec) -> ModelFns:
  from interfusion_jax import background as bg_lib
  from interfusion_jax import field as field_lib

  def field(params, x):
    return field_lib.field_forward_with_normals(params, x, fspec)

  def density(params, x):
    return field_lib.field_density(params, x, fspec)

  def background(params, dirs):
    return bg_lib.background_color(params, dirs, bspec)

  def init(key):
    kh, ko, kbh, kbo = jax.random.split(key, 4)
    return {"human": field_lib.init_field(kh, fspec), "object": field_lib.init_field(ko, fspec),
            "bg_human": bg_lib.init_background(kbh, bspec),
            "bg_object": bg_lib.init_background(kbo, bspec)}

  return ModelFns(field=field, density=density, background=background, init=init)


# ----------------------------------------------------------------------------
# Specs and state.


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """All static settings of one training step (hashable)."""
  model: ModelFns
  guidance: Any                      # guidance.core.GuidanceSpec
  render: render_lib.RenderSpec
  shading: render_lib.ShadingSpec
  camera: camera_lib.CameraSpec
  occupancy: occ_lib.OccupancySpec
  schedule: schedules.ScheduleSpec
  height: int = 64
  width: int = 64
  batch_size: int = 1                # cameras per device
  object_scale: float = 0.7
  interaction_scale: float = 0.8
  human_scale: float = 0.7
  head_scale: float = 0.2
  random_white_prob: float = 0.5
  geo_delta: float = 0.2
  geo_eta: float = 0.4
  geo_max_points: int = 80000
  geo_reduction: str = "sum"
  lambda_sds_human: float = 1.0
  lambda_geo_human: float = 1.0
  lambda_sparsity: float = 1.0
  lambda_opaque: float = 0.0
  lr_field: float = 0.01
  lr_background: float = 0.001
  b1: float = 0.9
  b2: float = 0.99
  eps: float = 1e-15
  trace_resolution: int = 64
  trace_threshold: float = 0.5
  overhead_elevation_deg: float = 60.0
  front_azimuth_deg: float = 45.0
  back_azimuth_deg: float = 135.0
  object_blob: str = "origin"

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, guidance_spec: Any,
                  model: ModelFns | None = None, num_devices: int = 1) -> "TrainSpec":
    """Builds the spec; ``batch_size`` becomes the per-device share of render.batch_size."""
    c = config
    if c.render.batch_size % num_devices:
      raise TrainSetupError(
          f"config.render.batch_size = {c.render.batch_size} is not divisible by the "
          f"{num_devices} devices used; change the batch size or the device count.")
    return cls(
        model=model or model_fns_from_config(c), guidance=guidance_spec,
        render=render_lib.RenderSpec.from_config(c),
        shading=render_lib.ShadingSpec.from_config(c),
        camera=camera_lib.CameraSpec.from_config(c),
        occupancy=occ_lib.OccupancySpec.from_config(c),
        schedule=schedules.ScheduleSpec.from_config(c),
        height=int(c.render.height), width=int(c.render.width),
        batch_size=int(c.render.batch_size) // num_devices,
        object_scale=float(c.camera.object_scale),
        interaction_scale=float(c.camera.interaction_scale),
        human_scale=float(c.camera.human_scale), head_scale=float(c.camera.head_scale),
        random_white_prob=float(c.background.random_white_prob),
        geo_delta=float(c.loss.geo_delta), geo_eta=float(c.loss.geo_eta),
        geo_max_points=int(c.loss.geo_max_points), geo_reduction=str(c.loss.geo_reduction),
        lambda_sds_human=float(c.loss.lambda_sds_human),
        lambda_geo_human=float(c.loss.lambda_geo_human),
        lambda_sparsity=float(c.loss.lambda_sparsity),
        lambda_opaque=float(c.loss.lambda_opaque),
        lr_field=float(c.optim.lr_field), lr_background=float(c.optim.lr_background),
        b1=float(c.optim.b1), b2=float(c.optim.b2), eps=float(c.optim.eps),
        trace_resolution=int(c.camera.trace_resolution),
        trace_threshold=float(c.camera.trace_threshold),
        overhead_elevation_deg=float(c.prompt.overhead_elevation_deg),
        front_azimuth_deg=float(c.prompt.front_azimuth_deg),
        back_azimuth_deg=float(c.prompt.back_azimuth_deg),
        object_blob=str(c.field.get("object_blob", "origin")))


class TrainState(NamedTuple):
  """The mutable training state (a pytree; everything is checkpointed).

  step: int32 scalar, steps done; params: {"human", "object", "bg_human",
  "bg_object"}; opt_state: optax state; occupancy: OccupancyGrid [G, G, G];
  object_center: [3] c_O; consecutive_skips, total_skips: int32 scalars.
  """
  step: jax.Array
  params: Params
  opt_state: Any
  occupancy: occ_lib.OccupancyGrid
  object_center: jax.Array
  consecutive_skips: jax.Array
  total_skips: jax.Array


def make_optimizer(spec: TrainSpec) -> optax.GradientTransformation:
  """optax Adam, lr 0.01 fields / 0.001 backgrounds, b (0.9, 0.99), eps 1e-15 (PAPER.md)."""
  adam = lambda lr: optax.adam(lr, b1=spec.b1, b2=spec.b2, eps=spec.eps)
  labels = {"human": "field", "object": "field", "bg_human": "background",
            "bg_object": "background"}
  return optax.multi_transform({"field": adam(spec.lr_field),
                                "background": adam(spec.lr_background)},
                               lambda params: {k: labels[k] for k in params})


def init_state(key: jax.Array, spec: TrainSpec, object_origin=None) -> TrainState:
  """Fresh parameters, optimizer state, occupancy grid (all occupied) and c_O.

  Args:
    key: PRNG key of the parameters.
    spec: TrainSpec. With ``spec.object_blob == "placement"`` the object field
      carries ``blob_center`` (field.with_blob_center) = ``object_origin``, and
      the human field one at the origin (the same tree for both fields, which
      ``render_views`` stacks; for the human nothing changes).
    object_origin: [3] start of the object blob and of c_O (``object_origin``
      below); None = the origin.
  """
  params = spec.model.init(key)
  origin = jnp.zeros(3, jnp.float32) if object_origin is None else jnp.asarray(
      object_origin, jnp.float32).reshape(3)
  if spec.object_blob == "placement":
    from interfusion_jax import field as field_lib
    params = dict(params, human=field_lib.with_blob_center(params["human"], jnp.zeros(3)),
                  object=field_lib.with_blob_center(params["object"], origin))
  return TrainState(step=jnp.int32(0), params=params,
                    opt_state=make_optimizer(spec).init(params),
                    occupancy=occ_lib.init_occupancy(spec.occupancy),
                    object_center=origin,
                    consecutive_skips=jnp.int32(0), total_skips=jnp.int32(0))


def object_origin(config: ml_collections.ConfigDict, anchor: Any) -> np.ndarray | None:
  """Where the object field starts (config.field.object_blob; not in the official code).

  "origin": None (the official blob at the origin, c_O = 0). "placement": the
  bounding-box centre of the built-in prior's parametric object named in
  ``config.prompt.object`` (prior.objects.object_from_text), placed against
  the anchor body by its rule (prior.placement) exactly as in the prior's
  image bank; None, with a warning, when the prompt names no library object.

  Returns:
    [3] float32 scene coordinates, or None.
  """
  if str(config.field.get("object_blob", "origin")) != "placement":
    return None
  from interfusion_jax.prior import objects, placement
  name = objects.object_from_text(str(config.prompt.object))
  if name is None:
    warnings.warn(f"config.field.object_blob='placement': the object prompt "
                  f"{str(config.prompt.object)!r} names no object of the built-in library "
                  f"({', '.join(objects.OBJECT_NAMES)}); the object blob starts at the origin.")
    return None
  v, f, j = (np.asarray(a) for a in (anchor.vertices, anchor.faces, anchor.joints))
  return objects.bbox_center(placement.place_named(name, v, f, j).mesh).astype(np.float32)


# ----------------------------------------------------------------------------
# Prompts and anchors (thin adapters over guidance/ and body/).


def view_index(elevation, azimuth, spec: TrainSpec) -> jax.Array:
  """View-dependent prompt row (guidance.prompts.view_index), chosen in jit.

  Args:
    elevation, azimuth: scalars in radians.

  Returns:
    int32 scalar (0 front, 1 side, 2 back, 3 overhead).
  """
  return prompts_lib.view_index(jnp.rad2deg(elevation), jnp.rad2deg(azimuth),
                                overhead_deg=spec.overhead_elevation_deg,
                                front_deg=spec.front_azimuth_deg,
                                back_deg=spec.back_azimuth_deg)


def prompt_embedding(text: dict, name: str, index: jax.Array) -> jax.Array:
  """The embedding [L, D] of prompt ``name`` for view ``index`` from ``text[name]`` [V, L, D]."""
  table = text[name]
  return table[jnp.minimum(index, table.shape[0] - 1)]


def anchor_head_joint(anchor: Any) -> jax.Array:
  """Head joint position [3] of the anchor body (PAPER.md Eq. 3: joint 15)."""
  return jnp.asarray(anchor.head, jnp.float32)


def anchor_samples(anchor: Any, points: jax.Array, mask: jax.Array, key: jax.Array,
                   max_points: int):
  """Up to ``max_points`` of the masked ray samples with the anchor's fields.

  Args:
    anchor: the anchor pytree.
    points: [R, N, 3] ray sample points; mask [R, N] real samples.
    key: PRNG key.
    max_points: static maximum P.

  Returns:
    (points [P, 3], inside [P] in {0, 1}, sq_dist [P], valid [P] bool).
  """
  from interfusion_jax.body import anchor as anchor_lib
  return anchor_lib.sample_anchor_fields(anchor, points.reshape(-1, 3), key, max_points,
                                         point_mask=mask.reshape(-1))


# ----------------------------------------------------------------------------
# One camera: renders and loss terms.


def derived_cameras(cam: camera_lib.Camera, object_center: jax.Array, head_joint: jax.Array,
                    spec: TrainSpec) -> dict:
  """The four official cameras from one sampled camera (PAPER.md "Camera tracing").

  object: 0.7 pos + c_O; interaction: 0.8 pos + c_O / 2; human: 0.7 pos;
  head: 0.2 pos + head joint (each looking at its offset).

  Returns:
    {"object", "interaction", "human", "head"} -> camera.Camera.
  """
  up = spec.camera.up
  rc = camera_lib.recenter_camera
  return {
      "object": rc(cam, spec.object_scale, object_center, up),
      "interaction": rc(cam, spec.interaction_scale, 0.5 * object_center, up),
      "human": rc(cam, spec.human_scale, jnp.zeros(3, jnp.float32), up),
      "head": rc(cam, spec.head_scale, head_joint, up),
  }


def _background(params: Params, dirs: jax.Array, key: jax.Array, spec: TrainSpec):
  """Official background augmentation: either field's background at random; white with p."""
  k_pick, k_white = jax.random.split(key)
  use_human = jax.random.uniform(k_pick) < 0.5
  white = jax.random.uniform(k_white) < spec.random_white_prob
  bg_h = spec.model.background(params["bg_human"], dirs)
  bg_o = spec.model.background(params["bg_object"], dirs)
  bg = jnp.where(use_human, bg_h, bg_o)
  return jnp.where(white, jnp.ones_like(bg), bg)


def render_views(params: Params, cams: dict, occupancy, key: jax.Array,
                 shading: render_lib.Shading, spec: TrainSpec) -> dict:
  """Object, human, interaction (Eq. 6) and head renders for one camera.

  The three single-field renders (human, head: psi_H; object: psi_O) are ONE
  ``vmap``-ed ``render_rays`` over stacked parameters (one trace instead of
  three, which keeps compile time down); the interaction render composites
  both fields with ``render_two_fields``.

  Returns:
    {name: render.RenderOutput} with H*W rays each.
  """
  k_bg, k_single, k_inter = jax.random.split(key, 3)
  fn = spec.model.field
  singles = ("human", "head", "object")
  rays = {n: render_lib.camera_rays(cams[n], spec.height, spec.width) for n in RENDERS}
  bgs = {n: _background(params, rays[n][1], k, spec)
         for n, k in zip(RENDERS, jax.random.split(k_bg, len(RENDERS)))}
  stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
  field_params = stack([params["human"], params["human"], params["object"]])

  def one(p, rays_o, rays_d, bg, light, k):
    sh = shading._replace(light_position=light)
    return render_lib.render_rays(fn, p, rays_o, rays_d, bg, spec.render,
                                  occupancy=occupancy, key=k, shading=sh)

  batched = jax.vmap(one)(field_params,
                          jnp.stack([rays[n][0] for n in singles]),
                          jnp.stack([rays[n][1] for n in singles]),
                          jnp.stack([bgs[n] for n in singles]),
                          jnp.stack([cams[n].light_position for n in singles]),
                          jax.random.split(k_single, len(singles)))
  outs = {n: jax.tree_util.tree_map(lambda x, i=i: x[i], batched) for i, n in enumerate(singles)}
  outs["interaction"] = render_lib.render_two_fields(
      fn, params["human"], fn, params["object"], *rays["interaction"], bgs["interaction"],
      spec.render, occupancy=occupancy, key=k_inter,
      shading=shading._replace(light_position=cams["interaction"].light_position))
  return outs


def _image(out: render_lib.RenderOutput, spec: TrainSpec) -> jax.Array:
  return out.rgb.reshape(1, spec.height, spec.width, 3)


def sds_terms(outs: dict, frozen: dict, view: jax.Array, key: jax.Array, t_max: jax.Array,
              spec: TrainSpec, direction: jax.Array | None = None) -> tuple[dict, dict]:
  """The four SDS losses (PAPER.md Eq. 3 and 5) for one camera.

  human / head use the human and head prompts; interaction / object the
  interaction and object prompts; the empty prompt is the CFG negative. The
  four ``guidance_apply`` calls are one ``vmap`` (the denoiser is traced once
  and runs as one batch of 4 x 2 CFG inputs). ``direction`` [3], the unit
  vector from each render's look-at target to its camera (the same for all
  four, since they are scaled copies of one sampled camera), reaches
  camera-conditioned backends (``GuidanceSpec.camera_conditioning``).

  Returns:
    ({name: scalar loss}, {"sds_<name>_t": timestep, "sds_<name>_grad_norm": scalar}).
  """
  text = frozen["text"]
  images = jnp.stack([_image(outs[n], spec) for n in RENDERS])            # [4, 1, H, W, 3]
  embs = jnp.stack([prompt_embedding(text, n, view)[None] for n in RENDERS])  # [4, 1, L, D]

  camera = None if direction is None else jnp.reshape(direction, (1, 3))

  def one(img, emb, k):
    return guidance_core.guidance_apply(spec.guidance, frozen["guidance"], img, emb,
                                        text["uncond"], k, t_max=t_max, camera=camera)

  loss, aux = jax.vmap(one)(images, embs, jax.random.split(key, len(RENDERS)))
  terms = {n: loss[i] for i, n in enumerate(RENDERS)}
  metrics = {}
  for i, n in enumerate(RENDERS):
    metrics[f"sds_{n}_t"] = aux["t"][i, 0].astype(jnp.float32)
    metrics[f"sds_{n}_grad_norm"] = aux["grad_norm"][i]
  return terms, metrics


def geometry_terms(params: Params, outs: dict, anchor: Any, key: jax.Array,
                   spec: TrainSpec) -> dict:
  """L_H^geo (PAPER.md Eq. 4) on the human's samples and L_O^geo (Eq. 7) on the object's.

  The densities are re-evaluated at the (at most ``geo_max_points``) selected
  ray samples, so each loss reaches only its own field.

  Returns:
    {"geo_human": scalar, "geo_object": scalar}.
  """
  k_h, k_o = jax.random.split(key)
  out_h, out_o = outs["human"], outs["object"]
  pts_h, in_h, d2_h, v_h = anchor_samples(anchor, jax.lax.stop_gradient(out_h.points),
                                          out_h.mask, k_h, spec.geo_max_points)
  pts_o, in_o, _, v_o = anchor_samples(anchor, jax.lax.stop_gradient(out_o.points),
                                       out_o.mask, k_o, spec.geo_max_points)
  sig_h = spec.model.density(params["human"], pts_h)
  sig_o = spec.model.density(params["object"], pts_o)
  return {
      "geo_human": losses.human_geometry_loss(
          sig_h, in_h, d2_h, delta=spec.geo_delta, eta=spec.geo_eta,
          reduction=spec.geo_reduction, valid=v_h),
      "geo_object": losses.object_geometry_loss(
          sig_o, in_o, delta=spec.geo_delta, reduction=spec.geo_reduction, valid=v_o),
  }


def regulariser_terms(outs: dict) -> dict:
  """PAPER.md "L_reg" on the single-field human and object renders.

  Returns:
    {"orient", "sparsity", "opaque"}: scalars summed over the two renders.
  """
  terms = {"orient": 0.0, "sparsity": 0.0, "opaque": 0.0}
  for name in ("human", "object"):
    o = outs[name]
    terms["orient"] += losses.orient_loss(o.weights, o.normals, o.dirs, o.opacity)
    terms["sparsity"] += losses.sparsity_loss(o.opacity)
    terms["opaque"] += losses.opaque_loss(o.opacity)
  return terms


def total_loss(terms: dict, weights: dict, spec: TrainSpec) -> jax.Array:
  """PAPER.md Eq. 8: L = L_SDS^H + lambda1 L_SDS^O + L_H^geo + lambda2 L_O^geo + lambda3 L_reg.

  L_SDS^H = SDS(human) + SDS(head); L_SDS^O = SDS(interaction) + lambda1 SDS(object)
  (the lambda1 ramp weights the object term, as the official code; the
  interaction term has weight 1).

  Args:
    terms: per-term scalars (sds_*, geo_*, orient, sparsity, opaque).
    weights: schedules.step_weights(...) (lambda_object_sds, lambda_object_geo,
      lambda_orient).

  Returns:
    Scalar.
  """
  return (spec.lambda_sds_human * (terms["sds_human"] + terms["sds_head"])
          + terms["sds_interaction"]
          + weights["lambda_object_sds"] * terms["sds_object"]
          + spec.lambda_geo_human * terms["geo_human"]
          + weights["lambda_object_geo"] * terms["geo_object"]
          + weights["lambda_orient"] * terms["orient"]
          + spec.lambda_sparsity * terms["sparsity"]
          + spec.lambda_opaque * terms["opaque"])


def camera_losses(params: Params, state: TrainState, frozen: dict, key: jax.Array,
                  spec: TrainSpec) -> tuple[jax.Array, dict]:
  """Eq. 8 loss for one random camera; returns (scalar, metrics dict of scalars)."""
  k_cam, k_shade, k_render, k_sds, k_geo = jax.random.split(key, 5)
  cam = camera_lib.sample_camera(k_cam, spec.camera)
  cams = derived_cameras(cam, state.object_center, anchor_head_joint(frozen["anchor"]), spec)
  ambient = schedules.ambient_only(state.step, spec.schedule.ambient_only_steps)
  shading = render_lib.sample_shading(k_shade, cam.light_position, ambient, spec.shading)
  outs = render_views(params, cams, state.occupancy, k_render, shading, spec)
  view = view_index(cam.elevation, cam.azimuth, spec)
  t_max = schedules.max_timestep_fraction(state.step, spec.schedule)
  direction = cam.position / jnp.linalg.norm(cam.position)
  sds, sds_aux = sds_terms(outs, frozen, view, k_sds, t_max, spec, direction)
  terms = {f"sds_{k}": v for k, v in sds.items()}
  terms.update(geometry_terms(params, outs, frozen["anchor"], k_geo, spec))
  terms.update(regulariser_terms(outs))
  weights = schedules.step_weights(state.step, spec.schedule)
  loss = total_loss(terms, weights, spec)
  metrics = {f"loss_{k}": v for k, v in terms.items()}
  metrics.update(weights)
  metrics.update(sds_aux)
  metrics["ambient_only"] = ambient.astype(jnp.float32)
  metrics["textureless"] = shading.textureless
  metrics["samples_dropped"] = sum(o.num_dropped for o in outs.values()).astype(jnp.float32)
  for name in RENDERS:
    metrics[f"opacity_{name}"] = jnp.mean(outs[name].opacity)
  return loss, metrics


def batch_losses(params: Params, state: TrainState, frozen: dict, key: jax.Array,
                 device_index: jax.Array, spec: TrainSpec) -> tuple[jax.Array, dict]:
  """Mean of ``camera_losses`` over this device's cameras (keys by global camera index)."""
  idx = device_index * spec.batch_size + jnp.arange(spec.batch_size)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  loss, metrics = jax.vmap(lambda k: camera_losses(params, state, frozen, k, spec))(keys)
  return jnp.mean(loss), jax.tree_util.tree_map(jnp.mean, metrics)


def _tree_all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _global_norm(tree) -> jax.Array:
  return optax.global_norm(tree)


def summed_density(params: Params, spec: TrainSpec) -> Callable[[jax.Array], jax.Array]:
  """x [N, 3] -> sigma_H + sigma_O [N], the occupancy grid's density (PAPER.md renderer)."""
  return lambda x: (spec.model.density(params["human"], x)
                    + spec.model.density(params["object"], x))


def train_step(state: TrainState, frozen: dict, key: jax.Array, *, spec: TrainSpec,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One optimisation step (PAPER.md Eq. 3-8). Pure; jit/vmap/pmap it.

  Order: occupancy update (every ``update_every`` steps, on the summed density
  of both fields, nerfacc-style before marching), the camera batch's loss and
  gradient (pmean over ``axis_name``), then Adam. A non-finite loss or gradient
  skips the update (params and optimizer state unchanged) and counts it.

  Args:
    state: TrainState (replicated when pmapped).
    frozen: {"guidance", "text", "anchor"} frozen pytrees.
    key: the step's PRNG key (the same on every device).
    spec: static TrainSpec (bind with functools.partial).
    axis_name: the pmap axis name, or None for a single device / vmap over scenes.

  Returns:
    (new state, metrics: dict of scalars incl. "loss", "skipped", "grad_norm").
  """
  k_occ, k_loss = jax.random.split(key)
  grid = occ_lib.maybe_update_occupancy(state.occupancy, summed_density(state.params, spec),
                                        k_occ, state.step, spec.occupancy)
  state = state._replace(occupancy=grid)
  device = jax.lax.axis_index(axis_name) if axis_name else jnp.int32(0)
  (loss, metrics), grads = jax.value_and_grad(batch_losses, has_aux=True)(
      state.params, state, frozen, k_loss, device, spec)
  if axis_name:
    loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), axis_name)
  finite = jnp.isfinite(loss) & _tree_all_finite(grads)
  safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
  tx = make_optimizer(spec)
  updates, new_opt = tx.update(safe_grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
  skipped = (~finite).astype(jnp.int32)
  new_state = state._replace(
      step=state.step + 1,
      params=keep(new_params, state.params),
      opt_state=keep(new_opt, state.opt_state),
      consecutive_skips=jnp.where(finite, 0, state.consecutive_skips + 1).astype(jnp.int32),
      total_skips=state.total_skips + skipped)
  metrics = dict(metrics)
  metrics.update(loss=loss, skipped=skipped.astype(jnp.float32),
                 grad_norm=jnp.where(finite, _global_norm(grads), jnp.nan),
                 occupied_fraction=occ_lib.occupied_fraction(grid))
  return new_state, metrics


def make_train_step(spec: TrainSpec, axis_name: str | None = None):
  """``train_step`` with the spec bound: (state, frozen, key) -> (state, metrics)."""
  return functools.partial(train_step, spec=spec, axis_name=axis_name)


# ----------------------------------------------------------------------------
# Camera tracing.


def object_center(params_object: Params, previous: jax.Array, spec: TrainSpec) -> jax.Array:
  """Camera tracing (PAPER.md): mean of grid points with 1 - exp(-0.2 sigma) > 0.5.

  The grid is the cell centres of a ``trace_resolution``^3 lattice over the
  scene box; if no point is occupied the previous centre is kept.

  Args:
    params_object: psi_O parameters.
    previous: [3] current c_O.
    spec: TrainSpec.

  Returns:
    [3] new c_O.
  """
  pts = occ_lib.cell_centers(spec.trace_resolution, spec.render.radius).reshape(-1, 3)
  sigma = jax.lax.map(lambda x: spec.model.density(params_object, x),
                      pts.reshape(-1, spec.trace_resolution ** 2, 3)).reshape(-1)
  occ = (1.0 - jnp.exp(-spec.geo_delta * sigma)) > spec.trace_threshold
  count = jnp.sum(occ)
  mean = jnp.sum(jnp.where(occ[:, None], pts, 0.0), axis=0) / jnp.maximum(count, 1)
  return jnp.where(count > 0, mean, previous).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Devices.


def choose_num_devices(batch_size: int, available: int | None = None) -> int:
  """The most local devices d <= available with batch_size % d == 0."""
  available = available or jax.local_device_count()
  return max(d for d in range(1, min(available, batch_size) + 1) if batch_size % d == 0)


def replicate(tree, num_devices: int):
  """Stacks ``tree`` num_devices times on a new leading axis (for pmap)."""
  return jax.tree_util.tree_map(lambda x: jnp.stack([jnp.asarray(x)] * num_devices), tree)


def unreplicate(tree):
  """The first replica of a pmapped pytree."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)


class Stepper(NamedTuple):
  """Compiled step + tracing for a device count; ``step`` maps host state to host state."""
  step: Callable
  trace: Callable
  num_devices: int


def make_stepper(spec: TrainSpec, num_devices: int) -> Stepper:
  """Jitted (1 device) or pmapped (d devices) step, and a jitted tracer."""
  trace = jax.jit(functools.partial(object_center, spec=spec))
  if num_devices == 1:
    return Stepper(jax.jit(make_train_step(spec)), trace, 1)
  pstep = jax.pmap(make_train_step(spec, axis_name="devices"), axis_name="devices",
                   in_axes=(0, 0, None))
  return Stepper(pstep, trace, num_devices)


# ----------------------------------------------------------------------------
# Evaluation renders (validation grids, turntables).


def eval_cameras(spec: TrainSpec, object_center: np.ndarray, azimuth_deg: float) -> dict:
  """Evaluation cameras at one azimuth: object around c_O, interaction around c_O / 2,
  human around the origin (eval distance / elevation / fovy of config.camera)."""
  c = spec.camera
  make = lambda target: jax.tree_util.tree_map(
      lambda x: x[0], camera_lib.orbit_cameras(1, c.eval_distance, c.eval_elevation_deg,
                                               c.eval_fovy_deg, target=target, up=c.up,
                                               azimuth_start_deg=azimuth_deg))
  oc = jnp.asarray(object_center, jnp.float32)
  return {"object": make(oc), "human": make(jnp.zeros(3)), "interaction": make(0.5 * oc)}


def render_eval(params: Params, occupancy, cams: dict, spec: TrainSpec) -> dict:
  """Albedo renders on white of the object, human and interaction scene.

  Returns:
    {name: {"rgb": [H, W, 3], "normal": [H, W, 3] display in [0, 1], "opacity": [H, W]}}.
  """
  fn = spec.model.field
  out = {}
  for name, cam in cams.items():
    rays_o, rays_d = render_lib.camera_rays(cam, spec.height, spec.width)
    bg = jnp.ones(3, jnp.float32)
    if name == "interaction":
      r = render_lib.render_two_fields(fn, params["human"], fn, params["object"], rays_o,
                                       rays_d, bg, spec.render, occupancy=occupancy)
    else:
      r = render_lib.render_rays(fn, params[name], rays_o, rays_d, bg, spec.render,
                                 occupancy=occupancy)
    img = render_lib.to_image(r, spec.height, spec.width)
    out[name] = {"rgb": img["rgb"], "opacity": img["opacity"],
                 "normal": render_lib.normals_to_image(img["normal"], img["opacity"])}
  return out


def _memo_by_identity(fn):
  """Memoises fn(spec, *args) on id(spec) (specs may hold unhashable Flax modules)."""
  cache = {}

  @functools.wraps(fn)
  def wrapped(spec, *args):
    key = (id(spec),) + args
    if key not in cache:
      cache[key] = (spec, fn(spec, *args))  # keeps spec alive so its id stays unique
    return cache[key][1]
  return wrapped


@_memo_by_identity
def _eval_fn(spec: TrainSpec):
  return jax.jit(lambda p, o, c: render_eval(p, o, c, spec))


def validation_grid(params: Params, occupancy, object_center, spec: TrainSpec,
                    azimuths=(0.0, 90.0)) -> np.ndarray:
  """uint8 grid: rows object / human / interaction (x azimuths); columns RGB, normals, opacity."""
  rows = []
  for az in azimuths:
    imgs = _eval_fn(spec)(params, occupancy, eval_cameras(spec, object_center, az))
    for name in ("object", "human", "interaction"):
      d = jax.device_get(imgs[name])
      rows.append([d["rgb"], d["normal"], d["opacity"]])
  return run_io.image_grid(rows)


def turntables(params: Params, occupancy, object_center, spec: TrainSpec,
               frames: int) -> dict:
  """{name: list of F uint8 RGB frames} for object / human / interaction (full orbit)."""
  out = {"object": [], "human": [], "interaction": []}
  for i in range(frames):
    imgs = _eval_fn(spec)(params, occupancy,
                          eval_cameras(spec, object_center, 360.0 * i / frames))
    for name in out:
      out[name].append(run_io.to_uint8(np.asarray(imgs[name]["rgb"])))
  return out


def extract_meshes(params: Params, spec: TrainSpec, resolution: int,
                   threshold: float | None = None) -> dict:
  """Marching-cubes meshes {"human", "object", "combined"} (export.Mesh, vertex colours).

  The default iso-level is the camera-tracing occupancy: 1 - exp(-delta sigma) = 0.5,
  i.e. sigma = ln 2 / delta.
  """
  from interfusion_jax import export
  level = math.log(2.0) / spec.geo_delta if threshold is None else threshold
  density = jax.jit(spec.model.density)
  albedo = jax.jit(lambda p, x: spec.model.field(p, x)[1])
  meshes = {}
  for name in ("human", "object"):
    p = params[name]
    meshes[name] = export.extract_mesh(
        lambda x, p=p: np.asarray(density(p, jnp.asarray(x))),
        lambda x, p=p: np.asarray(albedo(p, jnp.asarray(x))),
        resolution, spec.render.radius, level)
  meshes["combined"] = export.merge_meshes([meshes["human"], meshes["object"]])
  return meshes


# ----------------------------------------------------------------------------
# Setup: guidance, prompts, anchor (all before anything is compiled).


def load_guidance_and_text(config: ml_collections.ConfigDict):
  """(GuidanceSpec, guidance params, prompt embedding table) from config.guidance.

  With ``config.guidance.weights_dir`` empty (or ``backend="builtin"``) the
  built-in, low-fidelity offline prior of ``interfusion_jax.prior`` is used and
  the log says so; otherwise the local diffusers directory is loaded.

  Raises:
    TrainSetupError: when the weights directory is incomplete.
  """
  from interfusion_jax.guidance import loading
  g = config.guidance
  root = str(g.weights_dir).strip()
  if not root or g.backend == "builtin":
    from interfusion_jax.prior import assets as prior_assets
    gspec, gparams, table = prior_assets.load_builtin_guidance(config)
    logging.warning(prior_assets.NOTICE.format(n=int(gparams["bank"].shape[0])))
    return gspec, gparams, table
  try:
    loading.check_model_dir(root, ("unet", "scheduler", "text_encoder", "tokenizer"))
  except FileNotFoundError as e:
    raise TrainSetupError(f"config.guidance.weights_dir: {e}") from e
  gspec, gparams = loading.load_guidance(root, config, backend=str(g.backend))
  model, tparams = loading.load_text_encoder(root)
  tok = loading.load_tokenizer(root)
  encode = prompts_lib.clip_text_encoder(tok, model, tparams)
  table = prompts_lib.embedding_table(encode, prompts_lib.PromptSpec.from_config(config))
  return gspec, gparams, table


def load_anchor_pose(config: ml_collections.ConfigDict):
  """Stage 1: the anchor pose (config.pose.anchor_file or retrieval from T_I).

  Raises:
    TrainSetupError: for a missing or malformed anchor file.
  """
  from interfusion_jax.pose import anchor as pose_anchor
  try:
    if str(config.pose.anchor_file).strip():
      return pose_anchor.load_anchor(config.pose.anchor_file)
    return pose_anchor.retrieve_anchor(config)
  except (FileNotFoundError, ValueError) as e:
    raise TrainSetupError(f"Anchor pose: {e}") from e


def anchor_preview(anchor: Any, size: int = 256) -> np.ndarray:
  """Front and side renders of the anchor body, side by side: uint8 [size, 2 size, 3]."""
  from interfusion_jax import mesh_render
  verts = np.asarray(anchor.vertices)
  centre = 0.5 * (verts.min(0) + verts.max(0))
  views = []
  for az in (0.0, 90.0):
    cam = camera_lib.orbit_cameras(1, 3.0, 10.0, 50.0, target=centre, azimuth_start_deg=az)
    views.append(mesh_render.render_mesh(verts, np.asarray(anchor.faces),
                                         np.asarray(cam.c2w[0]), 50.0, size, size)["rgb"])
  return run_io.to_uint8(np.concatenate(views, axis=1))


def prepare_anchor(config: ml_collections.ConfigDict, paths: run_io.RunPaths | None):
  """(Anchor pytree, AnchorPose); writes anchor/anchor.npz and anchor.png into the run."""
  from interfusion_jax.body import anchor as body_anchor
  from interfusion_jax.pose import anchor as pose_anchor
  pose = load_anchor_pose(config)
  try:
    anchor = body_anchor.prepare_anchor_from_config(config, pose.body_pose, pose.global_orient)
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


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Scene:
  """Everything frozen for one run: the spec and the frozen pytree, plus stage-1 meta."""
  spec: TrainSpec
  frozen: dict
  anchor_pose: Any = None
  object_origin: Any = None          # [3] or None (train.object_origin)


def build_scene(config: ml_collections.ConfigDict, paths: run_io.RunPaths | None,
                num_devices: int = 1, guidance=None) -> Scene:
  """Loads guidance, prompts and the anchor; builds the TrainSpec.

  Args:
    guidance: optional (GuidanceSpec, params, text table) override (tests).
  """
  gspec, gparams, table = guidance if guidance is not None else load_guidance_and_text(config)
  anchor, pose = prepare_anchor(config, paths)
  spec = TrainSpec.from_config(config, gspec, num_devices=num_devices)
  return Scene(spec, {"guidance": gparams, "text": table, "anchor": anchor}, pose,
               object_origin(config, anchor))


def _put(state: TrainState, num_devices: int):
  return replicate(state, num_devices) if num_devices > 1 else jax.device_put(state)


def _host(state: TrainState, num_devices: int) -> TrainState:
  return ckpt_lib.to_host(unreplicate(state) if num_devices > 1 else state)


def _trace(state: TrainState, stepper: Stepper) -> TrainState:
  """Camera tracing on the (replicated) state: recompute c_O from psi_O."""
  if stepper.num_devices > 1:
    params_o = unreplicate(state.params["object"])
    center = stepper.trace(params_o, unreplicate(state.object_center))
    return state._replace(object_center=replicate(center, stepper.num_devices))
  return state._replace(object_center=stepper.trace(state.params["object"],
                                                    state.object_center))


@_memo_by_identity
def cached_stepper(spec: TrainSpec, num_devices: int) -> Stepper:
  """``make_stepper`` memoised per (spec, devices): one compile per process."""
  return make_stepper(spec, num_devices)


def train_loop(state: TrainState, scene: Scene, config: ml_collections.ConfigDict,
               paths: run_io.RunPaths, *, num_devices: int = 1,
               stop_after: int | None = None, progress: bool = True) -> tuple[TrainState, dict]:
  """Runs steps state.step .. config.train.steps (host state in, host state out).

  Logs metrics every log_every steps, writes validation grids every val_every
  and checkpoints every ckpt_every steps (and at the end / on Ctrl-C).
  ``stop_after`` (tests) returns after that many steps, like a killed run.

  Returns:
    (final host TrainState, info dict with "last_metrics", "interrupted", "steps_per_second").

  Raises:
    TooManySkipsError: after config.train.max_consecutive_skips non-finite steps in a row.
  """
  spec, frozen = scene.spec, scene.frozen
  tc = config.train
  stepper = cached_stepper(spec, num_devices)
  manager = ckpt_lib.make_manager(paths.checkpoints, tc.keep_checkpoints)
  writer = run_io.MetricsWriter(paths)
  base_key = jax.random.PRNGKey(int(config.seed))
  start = int(state.step)
  total = int(tc.steps)
  frozen_d = replicate(frozen, num_devices) if num_devices > 1 else frozen
  dstate = _put(state, num_devices)
  bar = run_io.Progress(total, initial=start, disable=not progress)
  last, interrupted, done = {}, False, 0
  t0 = time.perf_counter()
  step = start
  try:
    while step < total and (stop_after is None or done < stop_after):
      if schedules.trace_due(step, spec.schedule.trace_every):
        dstate = _trace(dstate, stepper)
      key = jax.random.fold_in(base_key, step)
      dstate, metrics = stepper.step(dstate, frozen_d, key)
      if num_devices > 1:
        metrics = unreplicate(metrics)
      step += 1
      done += 1
      skipped = float(metrics["skipped"]) > 0
      if skipped:
        n = int(np.asarray(unreplicate(dstate.consecutive_skips) if num_devices > 1
                           else dstate.consecutive_skips))
        warnings.warn(f"step {step - 1}: non-finite loss or gradient; update skipped "
                      f"({n} in a row).")
        if n >= tc.max_consecutive_skips:
          raise TooManySkipsError(
              f"{n} consecutive steps had a non-finite loss or gradient (step {step - 1}); "
              "aborting. Lower the learning rates or the guidance scale, or check the "
              "guidance weights. The last checkpoint holds only finite values.")
      if step % tc.log_every == 0 or step == total:
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        writer.write(step, last)
        bar.update(step, last.get("loss"), n=0)
      bar.update(step, None)
      if step % tc.val_every == 0 or step == total:
        h = _host(dstate, num_devices)
        run_io.write_png(paths.val / f"step_{step:06d}.png",
                         validation_grid(h.params, h.occupancy, h.object_center, spec))
      if step % tc.ckpt_every == 0 or step == total:
        ckpt_lib.save(manager, step, _host(dstate, num_devices))
  except KeyboardInterrupt:
    interrupted = True
    h = _host(dstate, num_devices)
    if int(h.step) > 0:
      ckpt_lib.save(manager, int(h.step), h)
    logging.warning("Interrupted at step %d; checkpoint written. Resume with --resume.",
                    int(h.step))
  finally:
    bar.close()
    writer.close()
  dt = time.perf_counter() - t0
  info = {"last_metrics": last, "interrupted": interrupted,
          "steps_per_second": done / dt if dt > 0 else 0.0, "wall_time_s": dt,
          "steps_run": done}
  return _host(dstate, num_devices), info


def write_renders(state: TrainState, spec: TrainSpec, out_dir: pathlib.Path,
                  frames: int, size: int = 0) -> dict:
  """Turntables (MP4, GIF fallback) of the interaction / human / object and multiview.png.

  Args:
    size: render size in pixels, square (``config.train.final_resolution``;
      0 = the training render size spec.height x spec.width).

  Returns:
    {output name: path}.
  """
  if size:
    spec = dataclasses.replace(spec, height=size, width=size)
  outputs = {}
  shots = turntables(state.params, state.occupancy, state.object_center, spec, frames)
  for name, fr in shots.items():
    outputs[f"turntable_{name}"] = str(run_io.write_video(out_dir / f"turntable_{name}", fr))
  n = len(shots["interaction"])
  pick = sorted(set(int(i * n / 4) for i in range(4)))
  grid = run_io.image_grid([[shots[name][i] / 255.0 for i in pick]
                            for name in ("interaction", "human", "object")])
  run_io.write_png(out_dir / "multiview.png", grid)
  outputs["multiview"] = str(out_dir / "multiview.png")
  return outputs


def write_meshes(state: TrainState, spec: TrainSpec, out_dir: pathlib.Path, resolution: int,
                 threshold: float | None = None) -> tuple[dict, dict]:
  """mesh_{human,object,combined}.{glb,obj}; returns ({file: path}, {name: Mesh})."""
  from interfusion_jax import export
  meshes = extract_meshes(state.params, spec, resolution, threshold)
  outputs = {}
  for name, mesh in meshes.items():
    for p in export.write_mesh(out_dir / f"mesh_{name}", mesh):
      outputs[p.name] = str(p)
  return outputs, meshes


def write_final_outputs(state: TrainState, scene: Scene, config: ml_collections.ConfigDict,
                        paths: run_io.RunPaths, info: dict) -> dict:
  """Turntables, multi-view grid, meshes and summary.json into <workdir>/final.

  The renders are ``config.train.final_resolution`` pixels square (0: the
  training render size).
  """
  spec = scene.spec
  outputs = write_renders(state, spec, paths.final, int(config.train.turntable_frames),
                          int(config.train.get("final_resolution", 0)))
  mesh_files, meshes = write_meshes(state, spec, paths.final, int(config.train.mesh_resolution))
  outputs.update(mesh_files)
  summary = {
      "final_losses": {k: v for k, v in info.get("last_metrics", {}).items()
                       if k.startswith("loss") or k.startswith("lambda")},
      "step": int(state.step),
      "wall_time_s": info.get("wall_time_s"),
      "steps_per_second": info.get("steps_per_second"),
      "total_skipped_steps": int(state.total_skips),
      "object_center": np.asarray(state.object_center).tolist(),
      "anchor_pose_id": anchor_id(scene.anchor_pose),
      "num_devices": info.get("num_devices", 1),
      "mesh_vertices": {k: int(len(m.vertices)) for k, m in meshes.items()},
      "outputs": outputs,
  }
  run_io.write_json(paths.summary, summary)
  return summary


def restore_or_init(config: ml_collections.ConfigDict, spec: TrainSpec,
                    paths: run_io.RunPaths, resume: bool | None,
                    origin=None) -> TrainState:
  """Fresh state, or the newest loadable checkpoint.

  resume None: resume automatically when checkpoints exist; True: a
  checkpoint must exist; False: start fresh (existing checkpoints are an error).
  origin: the fresh state's object origin (``object_origin``).
  """
  fresh = init_state(jax.random.PRNGKey(int(config.seed)), spec, origin)
  has = ckpt_lib.latest_step(paths.checkpoints) is not None
  if resume is False:
    if has:
      raise TrainSetupError(
          f"{paths.checkpoints} already holds checkpoints but --noresume was given; use "
          "--resume (or drop the flag) to continue, or choose a new --workdir.")
    return fresh
  if not has:
    if resume:
      raise TrainSetupError(f"--resume given but {paths.checkpoints} holds no checkpoint.")
    return fresh
  manager = ckpt_lib.make_manager(paths.checkpoints, config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, fresh)
  if restored is None:
    if resume:
      raise TrainSetupError(f"No loadable checkpoint in {paths.checkpoints}.")
    warnings.warn("No loadable checkpoint; starting from scratch.")
    return fresh
  step, host = restored
  print(f"Resuming from step {step} ({paths.checkpoints}).", file=sys.stderr)
  run_io.truncate_metrics(paths.metrics, step)
  return jax.tree_util.tree_map(jnp.asarray, host)


def preflight(config: ml_collections.ConfigDict, workdir: str) -> run_io.RunPaths:
  """Config validation and the work directory, before any compilation."""
  config_validation.validate(config)
  try:
    return run_io.prepare_workdir(workdir)
  except run_io.WorkdirError as e:
    raise TrainSetupError(str(e)) from e


def run(config: ml_collections.ConfigDict, workdir: str, *, resume: bool | None = None,
        guidance=None, num_devices: int | None = None, stop_after: int | None = None,
        progress: bool = True, final_outputs: bool = True) -> dict:
  """The whole stage-2 run; returns summary.json's content (or loop info if stopped early).

  Args:
    config: a validated-or-not config from configs/hoi.py (validated here).
    workdir: run directory.
    resume: None auto / True required / False fresh (see ``restore_or_init``).
    guidance: optional (GuidanceSpec, params, text table) override (tests).
    num_devices: data-parallel devices (default: the most that divide the batch).
    stop_after: stop after this many steps without final outputs (tests).
  """
  paths = preflight(config, workdir)
  nd = num_devices or choose_num_devices(int(config.render.batch_size))
  scene = build_scene(config, paths, nd, guidance)
  run_io.save_config(paths, config)
  state = restore_or_init(config, scene.spec, paths, resume, scene.object_origin)
  state, info = train_loop(state, scene, config, paths, num_devices=nd,
                           stop_after=stop_after, progress=progress)
  info["num_devices"] = nd
  info["state"] = state
  if info["interrupted"] or not final_outputs or int(state.step) < int(config.train.steps):
    return info
  summary = write_final_outputs(state, scene, config, paths, info)
  summary["state"] = state
  return summary


def load_trained(workdir: str, guidance_spec: Any = None):
  """(config, TrainSpec, host TrainState) of the latest checkpoint in a run directory.

  The guidance is not loaded (not needed to render or export).
  """
  config = run_io.load_config(workdir)
  paths = run_io.RunPaths(pathlib.Path(workdir).absolute())
  gspec = guidance_spec or guidance_core.GuidanceSpec(kind="gaussian", guidance_scale=1.0,
                                                      weighting="uniform")
  spec = TrainSpec.from_config(config, gspec, num_devices=1)
  manager = ckpt_lib.make_manager(paths.checkpoints, config.train.keep_checkpoints)
  restored = ckpt_lib.restore_latest(manager, init_state(jax.random.PRNGKey(0), spec))
  if restored is None:
    raise FileNotFoundError(f"No loadable checkpoint in {paths.checkpoints}; train first.")
  return config, spec, restored[1]


# ----------------------------------------------------------------------------
# CLI.


def enable_compilation_cache() -> None:
  """Persistent XLA compilation cache (JAX_COMPILATION_CACHE_DIR or ~/.cache/...)."""
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(
      "~/.cache/interfusion_jax/jax_cache")
  try:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  except Exception:  # pylint: disable=broad-except
    pass


def main(argv) -> int:
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  enable_compilation_cache()
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax/JAX INFO chatter off
  try:
    summary = run(FLAGS.config, FLAGS.workdir, resume=FLAGS.resume,
                  progress=FLAGS.progress)
  except (TrainSetupError, config_validation.ConfigError, TooManySkipsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if summary.get("interrupted"):
    print(f"Interrupted; checkpoint written to {FLAGS.workdir}/checkpoints. "
          "Resume with --resume.")
    return 0
  print(f"Done: {FLAGS.workdir}/final (summary.json, turntables, meshes).")
  return 0


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/hoi.py or configs/hoi.py:smoke.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (created).")
  flags.DEFINE_bool("resume", None, "Resume from the latest checkpoint (default: "
                    "automatically when the workdir has one; --noresume starts fresh).")
  flags.DEFINE_bool("progress", True, "Show the progress bar (--noprogress hides it).")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  from absl import app
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
