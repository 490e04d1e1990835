"""The whole stage-2 training step of InterFusion (PAPER.md Eq. 3-8), and nothing else.

``train_step(state, frozen, key, *, spec) -> (state, metrics)`` is pure: no
file I/O, no globals. It is jitted once (the step counter is traced, so the
schedules never retrace), ``vmap``s over scenes (prompt sweeps) and, with
``axis_name``, ``pmap``s data-parallel over devices with a gradient ``pmean``.
Camera ``c`` of the global batch draws its randomness from
``fold_in(key, c)``, so one device with batch B and D devices with B / D
cameras each compute the same cameras and, after the mean, the same update.

One camera (``camera_losses``), in order:
  1. a random camera and light around the origin; the object, interaction,
     human and head cameras derived from it (``derived_cameras``, PAPER.md
     "Camera tracing");
  2. renders of psi_O, psi_H, the head close-up and the Eq. 6 composite
     (``render_views``), with the official background augmentation;
  3. four SDS terms with view-dependent embeddings (``sds_terms``), combined
     by Eq. 3 (``human_sds``) and Eq. 5 (``object_sds``);
  4. L_H^geo and L_O^geo (Eq. 4 and 7, ``geometry_terms``);
  5. L_reg (``regulariser_terms``); the total is Eq. 8 (``total_loss``).

Then the optimiser: Adam (``make_optimizer``); a non-finite loss or gradient
skips the update and counts it.

Inputs:
  state: ``TrainState`` (params, Adam state, occupancy grid, c_O, counters);
  frozen: {"guidance": diffusion params, "text": {name: [V, L, D]} prompt
    embeddings, "anchor": body.anchor.Anchor} — frozen pytree arguments;
  key: the step's PRNG key; spec: the static ``TrainSpec``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from interfusion_jax.body import anchor as anchor_lib
from interfusion_jax.guidance import core as guidance_core
from interfusion_jax.guidance import prompts as prompts_lib
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import model as model_lib
from interfusion_jax.nerf import occupancy as occ_lib
from interfusion_jax.nerf import render as render_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import losses
from interfusion_jax.stage2 import schedules

Params = Any
RENDERS = ("object", "human", "interaction", "head")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """All static settings of one training step (hashable; a jit static argument).

  Attributes:
    model: the two fields' and backgrounds' pure functions (nerf.model.ModelFns).
    guidance: guidance.core.GuidanceSpec of the diffusion backend.
    render, shading, camera, occupancy, schedule: the library specs derived
      from the config (stage2.config.*_spec).
    sections: the config sections the step reads directly (image size and
      camera batch, camera tracing scales, background augmentation, loss
      weights, Adam, the object blob mode), unchanged from the config.
    views: the view-dependent prompt rule (overhead elevation, front and back
      azimuth thresholds, degrees).
    camera_sharding: optional ``NamedSharding`` of the camera batch axis (the
      loop sets it to shard a single run's cameras over devices; None = let
      XLA choose).
  """
  model: model_lib.ModelFns
  guidance: Any
  render: render_lib.RenderSpec
  shading: render_lib.ShadingSpec
  camera: camera_lib.CameraSpec
  occupancy: occ_lib.OccupancySpec
  schedule: schedules.ScheduleSpec
  sections: "StepSections"
  views: tuple[float, float, float] = (60.0, 45.0, 135.0)
  camera_sharding: Any = None

  @property
  def height(self) -> int:
    return self.sections.render.height

  @property
  def width(self) -> int:
    return self.sections.render.width


@dataclasses.dataclass(frozen=True)
class StepSections:
  """The config sections that the step reads as they are (stage2.config)."""
  render: config_lib.RenderConfig
  camera: config_lib.CameraConfig
  background: config_lib.BackgroundConfig
  loss: config_lib.LossConfig
  optim: config_lib.OptimConfig
  field: config_lib.FieldConfig


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
  """Adam with lr_field for both fields and lr_background for both backgrounds (PAPER.md)."""
  o = spec.sections.optim
  adam = lambda lr: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  labels = {"human": "field", "object": "field", "bg_human": "background",
            "bg_object": "background"}
  return optax.multi_transform({"field": adam(o.lr_field), "background": adam(o.lr_background)},
                               lambda params: {k: labels[k] for k in params})


def init_state(key: jax.Array, spec: TrainSpec, object_origin=None) -> TrainState:
  """Fresh parameters, optimizer state, occupancy grid (all occupied) and c_O.

  Args:
    key: PRNG key of the parameters.
    spec: TrainSpec. With ``sections.field.object_blob == "placement"`` the
      object field carries ``blob_center`` = ``object_origin`` (gradient
      stopped), and the human field one at the origin (the same tree for both
      fields, which ``render_views`` stacks).
    object_origin: [3] start of the object blob and of c_O; None = the origin.
  """
  params = spec.model.init(key)
  origin = jnp.zeros(3, jnp.float32) if object_origin is None else jnp.asarray(
      object_origin, jnp.float32).reshape(3)
  if spec.sections.field.object_blob == "placement":
    params = model_lib.with_blob_centers(params, origin)
  return TrainState(step=jnp.int32(0), params=params,
                    opt_state=make_optimizer(spec).init(params),
                    occupancy=occ_lib.init_occupancy(spec.occupancy),
                    object_center=origin,
                    consecutive_skips=jnp.int32(0), total_skips=jnp.int32(0))


# ----------------------------------------------------------------------------
# 1. Cameras.


def view_index(elevation, azimuth, spec: TrainSpec) -> jax.Array:
  """View-dependent prompt row (0 front, 1 side, 2 back, 3 overhead); radians in.

  Returns:
    int32 scalar.
  """
  overhead, front, back = spec.views
  return prompts_lib.view_index(jnp.rad2deg(elevation), jnp.rad2deg(azimuth),
                                overhead_deg=overhead, front_deg=front, back_deg=back)


def prompt_embedding(text: dict, name: str, index: jax.Array) -> jax.Array:
  """The embedding [L, D] of prompt ``name`` for view ``index`` from ``text[name]`` [V, L, D]."""
  table = text[name]
  return table[jnp.minimum(index, table.shape[0] - 1)]


def derived_cameras(cam: camera_lib.Camera, object_center: jax.Array, head_joint: jax.Array,
                    spec: TrainSpec) -> dict:
  """The four official cameras from one sampled camera (PAPER.md "Camera tracing").

  object: 0.7 pos + c_O; interaction: 0.8 pos + c_O / 2; human: 0.7 pos;
  head: 0.2 pos + head joint (each looking at its offset).

  Returns:
    {"object", "interaction", "human", "head"} -> camera.Camera.
  """
  c, up = spec.sections.camera, spec.camera.up
  rc = camera_lib.recenter_camera
  return {
      "object": rc(cam, c.object_scale, object_center, up),
      "interaction": rc(cam, c.interaction_scale, 0.5 * object_center, up),
      "human": rc(cam, c.human_scale, jnp.zeros(3, jnp.float32), up),
      "head": rc(cam, c.head_scale, head_joint, up),
  }


# ----------------------------------------------------------------------------
# 2. Renders.


def augmented_background(params: Params, dirs: jax.Array, key: jax.Array,
                         spec: TrainSpec) -> jax.Array:
  """Official background augmentation: either field's background at random; white with p.

  Args:
    dirs: [R, 3] ray directions.

  Returns:
    [R, 3] background colours.
  """
  k_pick, k_white = jax.random.split(key)
  use_human = jax.random.uniform(k_pick) < 0.5
  white = jax.random.uniform(k_white) < spec.sections.background.random_white_prob
  bg = jnp.where(use_human, spec.model.background(params["bg_human"], dirs),
                 spec.model.background(params["bg_object"], dirs))
  return jnp.where(white, jnp.ones_like(bg), bg)


def render_views(params: Params, cams: dict, occupancy, key: jax.Array,
                 shading: render_lib.Shading, spec: TrainSpec) -> dict:
  """Object, human, head and interaction (Eq. 6) renders for one camera.

  The three single-field renders (human, head: psi_H; object: psi_O) are one
  ``vmap``-ed ``render_rays`` over stacked parameters (one trace instead of
  three); the interaction render composites both fields with
  ``nerf.render.render_two_fields``.

  Returns:
    {name: nerf.render.RenderOutput} with H*W rays each.
  """
  k_bg, k_single, k_inter = jax.random.split(key, 3)
  fn, h, w = spec.model.field, spec.height, spec.width
  singles = ("human", "head", "object")
  rays = {n: render_lib.camera_rays(cams[n], h, w) for n in RENDERS}
  bgs = {n: augmented_background(params, rays[n][1], k, spec)
         for n, k in zip(RENDERS, jax.random.split(k_bg, len(RENDERS)))}
  stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
  field_params = stack([params["human"], params["human"], params["object"]])

  def one(p, rays_o, rays_d, bg, light, k):
    return render_lib.render_rays(fn, p, rays_o, rays_d, bg, spec.render, occupancy=occupancy,
                                  key=k, shading=shading._replace(light_position=light))

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


# ----------------------------------------------------------------------------
# 3. Score distillation.


def sds_terms(outs: dict, frozen: dict, view: jax.Array, key: jax.Array, t_max: jax.Array,
              spec: TrainSpec, direction: jax.Array | None = None) -> tuple[dict, dict]:
  """The four SDS losses of one camera, one per render, in one batched guidance call.

  human / head use the human and head prompts; interaction / object the
  interaction and object prompts; the empty prompt is the CFG negative. The
  four ``guidance_apply`` calls are one ``vmap`` (the denoiser is traced once
  and runs as one batch of 4 x 2 CFG inputs). ``direction`` [3] (the unit
  vector from each render's look-at target to its camera, the same for all
  four) reaches camera-conditioned backends.

  Returns:
    ({name: scalar SDS loss}, {"sds_<name>_t", "sds_<name>_grad_norm": scalars}).
  """
  text = frozen["text"]
  images = jnp.stack([outs[n].rgb.reshape(1, spec.height, spec.width, 3) for n in RENDERS])
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


def human_sds(terms: dict) -> jax.Array:
  """PAPER.md Eq. 3: L_SDS^H = SDS(x^H; y^H) + SDS(x^{H,h}; y^{H,h}) (human + head renders).

  Implements PAPER.md Eq. 3.
  """
  return terms["sds_human"] + terms["sds_head"]


def object_sds(terms: dict, lambda_object: jax.Array) -> jax.Array:
  """PAPER.md Eq. 5: L_SDS^O = SDS(x^I; y^I) + lambda1 SDS(x^O; y^O).

  Implements PAPER.md Eq. 5.

  The interaction render reaches only psi_O (the human's alpha and colour are
  stop-gradded in Eq. 6); as in the official code, the lambda1 ramp weights
  the object render's term and the interaction term has weight 1.
  """
  return terms["sds_interaction"] + lambda_object * terms["sds_object"]


# ----------------------------------------------------------------------------
# 4. Geometry and regularisers.


def geometry_terms(params: Params, outs: dict, anchor: Any, key: jax.Array,
                   spec: TrainSpec) -> dict:
  """L_H^geo (stage2.losses.human_geometry_loss) on the human render's samples and
  L_O^geo (stage2.losses.object_geometry_loss) on the object render's samples.

  At most ``loss.geo_max_points`` real ray samples are drawn; the densities are
  re-evaluated there, so each loss reaches only its own field.

  Returns:
    {"geo_human": scalar, "geo_object": scalar}.
  """
  l = spec.sections.loss
  k_h, k_o = jax.random.split(key)

  def samples(out, k):
    pts = jax.lax.stop_gradient(out.points).reshape(-1, 3)
    return anchor_lib.sample_anchor_fields(anchor, pts, k, l.geo_max_points,
                                           point_mask=out.mask.reshape(-1))

  pts_h, in_h, d2_h, v_h = samples(outs["human"], k_h)
  pts_o, in_o, _, v_o = samples(outs["object"], k_o)
  sig_h = spec.model.density(params["human"], pts_h)
  sig_o = spec.model.density(params["object"], pts_o)
  return {
      "geo_human": losses.human_geometry_loss(sig_h, in_h, d2_h, delta=l.geo_delta,
                                              eta=l.geo_eta, reduction=l.geo_reduction,
                                              valid=v_h),
      "geo_object": losses.object_geometry_loss(sig_o, in_o, delta=l.geo_delta,
                                                reduction=l.geo_reduction, valid=v_o),
  }


def regulariser_terms(outs: dict) -> dict:
  """L_reg's three terms (stage2.losses) on the single-field human and object renders.

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


# ----------------------------------------------------------------------------
# 5. The total.


def total_loss(terms: dict, weights: dict, spec: TrainSpec) -> jax.Array:
  """PAPER.md Eq. 8: L = L_SDS^H + lambda1 L_SDS^O + L_H^geo + lambda2 L_O^geo + lambda3 L_reg.

  Implements PAPER.md Eq. 8.

  L_SDS^H is Eq. 3 (``human_sds``) and the lambda1-weighted object part is
  Eq. 5 (``object_sds``); lambda3 L_reg = lambda_orient orient + lambda_sparsity
  sparsity + lambda_opaque opaque.

  Args:
    terms: per-term scalars (sds_*, geo_*, orient, sparsity, opaque).
    weights: schedules.step_weights(...) (lambda_object_sds, lambda_object_geo,
      lambda_orient).

  Returns:
    Scalar.
  """
  l = spec.sections.loss
  return (l.lambda_sds_human * human_sds(terms)
          + object_sds(terms, weights["lambda_object_sds"])
          + l.lambda_geo_human * terms["geo_human"]
          + weights["lambda_object_geo"] * terms["geo_object"]
          + weights["lambda_orient"] * terms["orient"]
          + l.lambda_sparsity * terms["sparsity"]
          + l.lambda_opaque * terms["opaque"])


def camera_losses(params: Params, state: TrainState, frozen: dict, key: jax.Array,
                  spec: TrainSpec) -> tuple[jax.Array, dict]:
  """Eq. 8 loss for one random camera; returns (scalar, metrics dict of scalars)."""
  k_cam, k_shade, k_render, k_sds, k_geo = jax.random.split(key, 5)
  cam = camera_lib.sample_camera(k_cam, spec.camera)
  head = jnp.asarray(frozen["anchor"].head, jnp.float32)   # joint 15 (Eq. 3's head render)
  cams = derived_cameras(cam, state.object_center, head, spec)
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
                 first_camera: jax.Array, num_cameras: int,
                 spec: TrainSpec) -> tuple[jax.Array, dict]:
  """Mean of ``camera_losses`` over cameras first_camera .. first_camera + num_cameras - 1."""
  idx = first_camera + jnp.arange(num_cameras)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  if spec.camera_sharding is not None:
    keys = jax.lax.with_sharding_constraint(keys, spec.camera_sharding)
  loss, metrics = jax.vmap(lambda k: camera_losses(params, state, frozen, k, spec))(keys)
  return jnp.mean(loss), jax.tree_util.tree_map(jnp.mean, metrics)


def summed_density(params: Params, spec: TrainSpec):
  """x [N, 3] -> sigma_H + sigma_O [N], the occupancy grid's density (PAPER.md renderer)."""
  return lambda x: (spec.model.density(params["human"], x)
                    + spec.model.density(params["object"], x))


# ----------------------------------------------------------------------------
# The step.


def train_step(state: TrainState, frozen: dict, key: jax.Array, *, spec: TrainSpec,
               axis_name: str | None = None, num_shards: int = 1) -> tuple[TrainState, dict]:
  """One optimisation step (PAPER.md Eq. 3-8). Pure; jit, vmap or pmap it.

  Order: occupancy update (every ``update_every`` steps, on the summed density
  of both fields, before marching), the camera batch's loss and gradient
  (``pmean`` over ``axis_name``), then Adam. A non-finite loss or gradient
  skips the update (params and optimizer state unchanged) and counts it.

  Args:
    state: TrainState (one replica per device when pmapped).
    frozen: {"guidance", "text", "anchor"} frozen pytrees.
    key: the step's PRNG key (the same on every device).
    spec: static TrainSpec (bind with ``make_train_step``).
    axis_name: the pmap axis name, or None (jit, possibly sharded, or vmap).
    num_shards: devices along ``axis_name``; each takes render.batch_size /
      num_shards cameras.

  Returns:
    (new state, metrics: dict of scalars incl. "loss", "skipped", "grad_norm").
  """
  k_occ, k_loss = jax.random.split(key)
  grid = occ_lib.maybe_update_occupancy(state.occupancy, summed_density(state.params, spec),
                                        k_occ, state.step, spec.occupancy)
  state = state._replace(occupancy=grid)
  per_shard = spec.sections.render.batch_size // num_shards
  first = (jax.lax.axis_index(axis_name) * per_shard) if axis_name else jnp.int32(0)
  (loss, metrics), grads = jax.value_and_grad(batch_losses, has_aux=True)(
      state.params, state, frozen, k_loss, first, per_shard, spec)
  if axis_name:
    loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), axis_name)
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
  safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
  updates, new_opt = make_optimizer(spec).update(safe_grads, state.opt_state, state.params)
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
                 grad_norm=jnp.where(finite, optax.global_norm(grads), jnp.nan),
                 occupied_fraction=occ_lib.occupied_fraction(grid))
  return new_state, metrics


def make_train_step(spec: TrainSpec, axis_name: str | None = None, num_shards: int = 1):
  """``train_step`` with the spec bound: (state, frozen, key) -> (state, metrics).

  ``axis_name`` / ``num_shards``: for ``jax.pmap`` over ``num_shards`` devices
  (render.batch_size must divide by it); leave them unset for ``jax.jit``.
  """
  if spec.sections.render.batch_size % num_shards:
    raise ValueError(f"config.render.batch_size = {spec.sections.render.batch_size} is not "
                     f"divisible by the {num_shards} devices of the pmap.")
  return functools.partial(train_step, spec=spec, axis_name=axis_name, num_shards=num_shards)


# ----------------------------------------------------------------------------
# Camera tracing (between steps, every camera.trace_every steps).


def object_center(params_object: Params, previous: jax.Array, spec: TrainSpec) -> jax.Array:
  """Camera tracing (PAPER.md): c_O = mean of lattice points whose NeRF occupancy > 0.5.

  The lattice is the cell centres of a ``camera.trace_resolution``^3 grid over
  the scene box; the occupancy is ``losses.nerf_occupancy``. If no point is
  occupied the previous centre is kept.

  Args:
    params_object: psi_O parameters.
    previous: [3] current c_O.

  Returns:
    [3] new c_O.
  """
  res = spec.sections.camera.trace_resolution
  pts = occ_lib.cell_centers(res, spec.render.radius).reshape(-1, 3)
  sigma = jax.lax.map(lambda x: spec.model.density(params_object, x),
                      pts.reshape(-1, res ** 2, 3)).reshape(-1)
  occ = losses.nerf_occupancy(sigma, spec.sections.loss.geo_delta) > \
      spec.sections.camera.trace_threshold
  count = jnp.sum(occ)
  mean = jnp.sum(jnp.where(occ[:, None], pts, 0.0), axis=0) / jnp.maximum(count, 1)
  return jnp.where(count > 0, mean, previous).astype(jnp.float32)
