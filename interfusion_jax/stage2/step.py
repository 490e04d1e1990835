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
     (``render_views``): each on its own occupancy grid (``GRID_OF``), with its
     own shading draw (one per field inside the composite) and its field's
     background (``augmented_background``), as the official renderers;
  3. four SDS terms with view-dependent embeddings (``sds_terms``), combined
     by Eq. 3 (``human_sds``) and Eq. 5 (``object_sds``);
  4. L_H^geo and L_O^geo (Eq. 4 and 7, ``geometry_terms``);
  5. L_reg (``regulariser_terms``); the total is Eq. 8 (``total_loss``).

Then the optimiser: Adam (``make_optimizer``); a non-finite loss or gradient
skips the update and counts it.

Inputs:
  state: ``TrainState`` (params, Adam state, three occupancy grids, c_O, counters);
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
# The official renderers' occupancy grids (PAPER.md renderer row): the object
# render's on sigma_O, the human and head renders' on sigma_H, the
# interaction render's on sigma_H + sigma_O.
GRIDS = ("object", "human", "interaction")
GRID_OF = {"object": "object", "human": "human", "head": "human", "interaction": "interaction"}


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Config settings that the step reads as they are (built by ``setup.train_spec``;
  their defaults are the config schema's, written once there).

  Attributes:
    height, width: render size in pixels; batch_size: cameras per step
      (config.render).
    object_scale, interaction_scale, human_scale, head_scale: camera tracing,
      centre = scale * pos + offset (config.camera).
    trace_resolution, trace_threshold: the grid and occupancy threshold of the
      object centre's tracing (config.camera).
    eval_shading: "albedo" | "diffuse" shading of the eval renders (config.camera).
    random_white_prob: probability of a white background (config.background).
    object_blob: "origin" | "placement", where the object field starts (config.field).
  """
  height: int
  width: int
  batch_size: int
  object_scale: float
  interaction_scale: float
  human_scale: float
  head_scale: float
  trace_resolution: int
  trace_threshold: float
  eval_shading: str
  random_white_prob: float
  object_blob: str


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """All static settings of one training step (hashable; a jit static argument).

  Attributes:
    model: the two fields' and backgrounds' pure functions (nerf.model.ModelFns).
    guidance: guidance.core.GuidanceSpec of the diffusion backend.
    render, shading, camera, occupancy, schedule: the library specs derived
      from the config (stage2.config.*_spec).
    loss, optim: config.loss (Eq. 8 weights, geometric losses) and config.optim
      (Adam), as they are.
    settings: the other config settings the step reads (``StepSettings``).
    views: the view-dependent prompt rule (overhead elevation, front and back
      azimuth thresholds, degrees).
    camera_sharding: optional ``NamedSharding`` of the camera batch axis (the
      loop sets it to shard a single run's cameras over devices; None = let
      XLA choose).
    perp_neg: Perp-Neg's weight curves (guidance.prompts.PerpNegSpec) when
      config.guidance.perp_neg is on; None (the release) = plain CFG.
  """
  model: model_lib.ModelFns
  guidance: Any
  render: render_lib.RenderSpec
  shading: render_lib.ShadingSpec
  camera: camera_lib.CameraSpec
  occupancy: occ_lib.OccupancySpec
  schedule: schedules.ScheduleSpec
  loss: config_lib.LossConfig
  optim: config_lib.OptimConfig
  settings: StepSettings
  views: tuple[float, float, float] = (60.0, 45.0, 135.0)
  camera_sharding: Any = None
  perp_neg: prompts_lib.PerpNegSpec | None = None

  @property
  def height(self) -> int:
    return self.settings.height

  @property
  def width(self) -> int:
    return self.settings.width


class TrainState(NamedTuple):
  """The mutable training state (a pytree; everything is checkpointed).

  step: int32 scalar, steps done; params: {"human", "object", "bg_human",
  "bg_object"}; opt_state: optax state; occupancy: {grid name (``GRIDS``):
  OccupancyGrid [G, G, G]}; object_center: [3] c_O; consecutive_skips,
  total_skips: int32 scalars.
  """
  step: jax.Array
  params: Params
  opt_state: Any
  occupancy: dict
  object_center: jax.Array
  consecutive_skips: jax.Array
  total_skips: jax.Array


def make_optimizer(spec: TrainSpec) -> optax.GradientTransformation:
  """Adam with lr_field for both fields and lr_background for both backgrounds (PAPER.md)."""
  o = spec.optim
  adam = lambda lr: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  labels = {"human": "field", "object": "field", "bg_human": "background",
            "bg_object": "background"}
  return optax.multi_transform({"field": adam(o.lr_field), "background": adam(o.lr_background)},
                               lambda params: {k: labels[k] for k in params})


def init_state(key: jax.Array, spec: TrainSpec, object_origin=None) -> TrainState:
  """Fresh parameters, optimizer state, occupancy grids (all occupied) and c_O.

  Args:
    key: PRNG key of the parameters.
    spec: TrainSpec. With ``settings.object_blob == "placement"`` the
      object field carries ``blob_center`` = ``object_origin`` (gradient
      stopped), and the human field one at the origin (the same tree for both
      fields, which ``render_views`` stacks).
    object_origin: [3] start of the object blob and of c_O; None = the origin.
  """
  params = spec.model.init(key)
  origin = jnp.zeros(3, jnp.float32) if object_origin is None else jnp.asarray(
      object_origin, jnp.float32).reshape(3)
  if spec.settings.object_blob == "placement":
    params = model_lib.with_blob_centers(params, origin)
  return TrainState(step=jnp.int32(0), params=params,
                    opt_state=make_optimizer(spec).init(params),
                    occupancy={g: occ_lib.init_occupancy(spec.occupancy) for g in GRIDS},
                    object_center=origin,
                    consecutive_skips=jnp.int32(0), total_skips=jnp.int32(0))


def legacy_targets(fresh: TrainState) -> list:
  """Older checkpoint layouts and their conversion to ``TrainState`` (for
  ``checkpoint.restore_latest(legacy=...)``): a state with ONE occupancy grid
  (before the three official grids) restores into every grid.
  """
  single = fresh._replace(occupancy=fresh.occupancy["interaction"])
  return [(single, lambda s: s._replace(occupancy={g: s.occupancy for g in GRIDS}))]


# ----------------------------------------------------------------------------
# 1. Cameras.


def camera_view_index(elevation_rad, azimuth_rad, spec: TrainSpec) -> jax.Array:
  """View-dependent prompt row (0 front, 1 side, 2 back, 3 overhead) of a sampled
  camera, whose angles are in radians (``prompts.view_index`` takes degrees), by
  the thresholds of ``spec.views``.

  Returns:
    int32 scalar.
  """
  overhead, front, back = spec.views
  return prompts_lib.view_index(jnp.rad2deg(elevation_rad), jnp.rad2deg(azimuth_rad),
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
  c, up = spec.settings, spec.camera.up
  rc = camera_lib.recenter_camera
  return {
      "object": rc(cam, c.object_scale, object_center, up),
      "interaction": rc(cam, c.interaction_scale, 0.5 * object_center, up),
      "human": rc(cam, c.human_scale, jnp.zeros(3, jnp.float32), up),
      "head": rc(cam, c.head_scale, head_joint, up),
  }


# ----------------------------------------------------------------------------
# 2. Renders.


def occupancy_grid_for(occupancy, name: str):
  """Looks up the occupancy grid that render ``name`` marches (``GRID_OF``) in the
  state's ``occupancy`` dict; a single grid (no dict) serves all renders."""
  return occupancy[GRID_OF[name]] if isinstance(occupancy, dict) else occupancy


def augmented_background(params: Params, dirs: jax.Array, key: jax.Array,
                         spec: TrainSpec, name: str) -> jax.Array:
  """Official background augmentation of render ``name``; pure white with p.

  The object render uses the object field's background, the human and head
  renders the human field's, the interaction render either at random (the
  official renderers); each is white with probability
  ``background.random_white_prob``.

  Args:
    dirs: [R, 3] ray directions.
    name: one of ``RENDERS``.

  Returns:
    [R, 3] background colours.
  """
  k_pick, k_white = jax.random.split(key)
  if name == "interaction":
    use_human = jax.random.uniform(k_pick) < 0.5
  else:
    use_human = jnp.asarray(name in ("human", "head"))
  white = jax.random.uniform(k_white) < spec.settings.random_white_prob
  bg = jnp.where(use_human, spec.model.background(params["bg_human"], dirs),
                 spec.model.background(params["bg_object"], dirs))
  return jnp.where(white, jnp.ones_like(bg), bg)


def render_views(params: Params, cams: dict, occupancy, key: jax.Array,
                 shadings: dict, spec: TrainSpec) -> dict:
  """Object, human, head and interaction (Eq. 6) renders for one camera.

  The three single-field renders (human, head: psi_H; object: psi_O) are one
  ``vmap``-ed ``render_rays`` over stacked parameters and grids (one trace
  instead of three); the interaction render composites both fields with
  ``nerf.render.render_two_fields``.

  Args:
    occupancy: {grid: OccupancyGrid} (``GRIDS``), or one grid for all renders.
    shadings: {"object", "human", "head", "interaction_human",
      "interaction_object"} -> nerf.render.Shading (light positions are taken
      from each render's camera).

  Returns:
    {name: nerf.render.RenderOutput} with H*W rays each.
  """
  k_bg, k_single, k_inter = jax.random.split(key, 3)
  fn, h, w = spec.model.field, spec.height, spec.width
  singles = ("human", "head", "object")
  rays = {n: render_lib.camera_rays(cams[n], h, w) for n in RENDERS}
  bgs = {n: augmented_background(params, rays[n][1], k, spec, n)
         for n, k in zip(RENDERS, jax.random.split(k_bg, len(RENDERS)))}
  stack = lambda xs: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
  field_params = stack([params["human"], params["human"], params["object"]])
  grids = stack([occupancy_grid_for(occupancy, n) for n in singles])
  lit = lambda name, cam: shadings[name]._replace(light_position=cams[cam].light_position)

  def one(p, grid, rays_o, rays_d, bg, shading, k):
    return render_lib.render_rays(fn, p, rays_o, rays_d, bg, spec.render, occupancy=grid,
                                  key=k, shading=shading)

  batched = jax.vmap(one)(field_params, grids,
                          jnp.stack([rays[n][0] for n in singles]),
                          jnp.stack([rays[n][1] for n in singles]),
                          jnp.stack([bgs[n] for n in singles]),
                          stack([lit(n, n) for n in singles]),
                          jax.random.split(k_single, len(singles)))
  outs = {n: jax.tree_util.tree_map(lambda x, i=i: x[i], batched) for i, n in enumerate(singles)}
  outs["interaction"] = render_lib.render_two_fields(
      fn, params["human"], fn, params["object"], *rays["interaction"], bgs["interaction"],
      spec.render, occupancy=occupancy_grid_for(occupancy, "interaction"), key=k_inter,
      shading=lit("interaction_human", "interaction"),
      shading_o=lit("interaction_object", "interaction"))
  return outs


SHADED = ("object", "human", "head", "interaction_human", "interaction_object")


def sample_shadings(key: jax.Array, ambient_only: jax.Array, spec: TrainSpec) -> dict:
  """One official shading draw per render, and per field inside the interaction render.

  Returns:
    {name in ``SHADED``: nerf.render.Shading} (light positions are filled in
    by ``render_views``).
  """
  keys = jax.random.split(key, len(SHADED))
  return {n: render_lib.sample_shading(k, jnp.zeros(3, jnp.float32), ambient_only, spec.shading)
          for n, k in zip(SHADED, keys)}


# ----------------------------------------------------------------------------
# 3. Score distillation.


def sds_terms(outs: dict, frozen: dict, view: jax.Array, key: jax.Array, t_max: jax.Array,
              spec: TrainSpec, direction: jax.Array | None = None,
              azimuth_deg: jax.Array | None = None) -> tuple[dict, dict]:
  """The four SDS losses of one camera, one per render, in one batched guidance call.

  human / head use the human and head prompts; interaction / object the
  interaction and object prompts; ``text["uncond"]`` (the negative prompt,
  "" by default) is the CFG unconditional branch of all four. The four
  ``guidance_apply`` calls are one ``vmap`` (the denoiser is traced once and
  runs as one batch of 4 x 2 CFG inputs). ``direction`` [3] (the unit vector
  from each render's look-at target to its camera, the same for all four)
  reaches camera-conditioned backends.

  With ``spec.perp_neg`` each render's positive embedding, two view negatives
  and their weights come from ``prompts.perp_neg_embeddings`` at the camera's
  ``azimuth_deg`` (required then), and the one batch grows to 4 x 4 inputs.

  Returns:
    ({name: scalar SDS loss}, {"sds_<name>_t", "sds_<name>_grad_norm": scalars}).
  """
  text = frozen["text"]
  images = jnp.stack([outs[n].rgb.reshape(1, spec.height, spec.width, 3) for n in RENDERS])
  camera = None if direction is None else jnp.reshape(direction, (1, 3))
  keys = jax.random.split(key, len(RENDERS))
  if spec.perp_neg is None:
    embs = jnp.stack([prompt_embedding(text, n, view)[None] for n in RENDERS])  # [4, 1, L, D]

    def one(img, emb, k):
      return guidance_core.guidance_apply(spec.guidance, frozen["guidance"], img, emb,
                                          text["uncond"], k, t_max=t_max, camera=camera)

    loss, aux = jax.vmap(one)(images, embs, keys)
  else:
    if azimuth_deg is None:
      raise ValueError("sds_terms: Perp-Neg (spec.perp_neg) needs the camera's azimuth_deg.")
    pos, negs, weights = (jnp.stack(x) for x in zip(*[
        prompts_lib.perp_neg_embeddings(text[n], text["uncond"], view, azimuth_deg,
                                        spec.perp_neg) for n in RENDERS]))

    def one_pn(img, emb, neg, w, k):
      return guidance_core.guidance_apply(spec.guidance, frozen["guidance"], img, emb[None],
                                          text["uncond"], k, t_max=t_max, camera=camera,
                                          neg_emb=neg[None], neg_weights=w[None])

    loss, aux = jax.vmap(one_pn)(images, pos, negs, weights, keys)
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


def real_samples(out: render_lib.RenderOutput, spec: TrainSpec) -> tuple[jax.Array, jax.Array]:
  """The render's real samples (``out.mask``: kept by skipping and pruning), packed.

  At most R * render.sample_budget samples are real when skipping empty space,
  so they are packed into that many rows first (R * N without skipping).

  Returns:
    (points [P, 3] (gradient stopped), valid [P] bool; the first
    sum(out.mask) rows are the real samples in ray order).
  """
  mask = out.mask.reshape(-1)
  rays = out.mask.shape[0]
  size = min(mask.shape[0], rays * spec.render.sample_budget) if spec.render.skip_empty \
      else mask.shape[0]
  (flat,) = jnp.nonzero(mask, size=size, fill_value=0)
  valid = jnp.arange(size) < jnp.sum(mask)
  return jax.lax.stop_gradient(out.points).reshape(-1, 3)[flat], valid


def geometry_terms(params: Params, outs: dict, anchor: Any, key: jax.Array,
                   spec: TrainSpec) -> tuple[dict, dict]:
  """L_H^geo (stage2.losses.human_geometry_loss) on the human render's samples and
  L_O^geo (stage2.losses.object_geometry_loss) on the object render's samples.

  Each loss draws min(N_real, ``loss.geo_max_points``) of its render's real
  samples at random (``real_samples``, ``body.anchor.sample_anchor_fields``;
  official ShapeLoss); the densities are re-evaluated there, so each loss
  reaches only its own field.

  Returns:
    ({"geo_human", "geo_object"}: scalars,
     {"geo_points_human", "geo_points_object"}: float32 point counts).
  """
  l = spec.loss
  k_h, k_o = jax.random.split(key)

  def samples(out, k):
    pts, real = real_samples(out, spec)
    return anchor_lib.sample_anchor_fields(anchor, pts, k, l.geo_max_points, point_mask=real)

  pts_h, in_h, d2_h, v_h = samples(outs["human"], k_h)
  pts_o, in_o, _, v_o = samples(outs["object"], k_o)
  sig_h = spec.model.density(params["human"], pts_h)
  sig_o = spec.model.density(params["object"], pts_o)
  terms = {
      "geo_human": losses.human_geometry_loss(sig_h, in_h, d2_h, delta=l.geo_delta,
                                              eta=l.geo_eta, reduction=l.geo_reduction,
                                              valid=v_h),
      "geo_object": losses.object_geometry_loss(sig_o, in_o, delta=l.geo_delta,
                                                reduction=l.geo_reduction, valid=v_o),
  }
  counts = {"geo_points_human": jnp.sum(v_h).astype(jnp.float32),
            "geo_points_object": jnp.sum(v_o).astype(jnp.float32)}
  return terms, counts


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
  l = spec.loss
  return (l.lambda_sds_human * human_sds(terms)
          + object_sds(terms, weights["lambda_object_sds"])
          + l.lambda_geo_human * terms["geo_human"]
          + weights["lambda_object_geo"] * terms["geo_object"]
          + weights["lambda_orient"] * terms["orient"]
          + l.lambda_sparsity * terms["sparsity"]
          + l.lambda_opaque * terms["opaque"])


def camera_losses(params: Params, state: TrainState, frozen: dict, key: jax.Array,
                  spec: TrainSpec, index: jax.Array | int = 0) -> tuple[jax.Array, dict]:
  """Eq. 8 loss for camera ``index`` of the global batch (its azimuth stratum).

  Returns:
    (scalar, metrics dict of scalars).
  """
  k_cam, k_shade, k_render, k_sds, k_geo = jax.random.split(key, 5)
  cam = camera_lib.sample_camera(k_cam, spec.camera, index=index,
                                 count=spec.settings.batch_size)
  head = jnp.asarray(frozen["anchor"].head, jnp.float32)   # joint 15 (Eq. 3's head render)
  cams = derived_cameras(cam, state.object_center, head, spec)
  ambient = schedules.ambient_only(state.step, spec.schedule.ambient_only_steps)
  shadings = sample_shadings(k_shade, ambient, spec)
  outs = render_views(params, cams, state.occupancy, k_render, shadings, spec)
  view = camera_view_index(cam.elevation, cam.azimuth, spec)
  t_max = schedules.max_timestep_fraction(state.step, spec.schedule, spec.guidance.t_max)
  direction = cam.position / jnp.linalg.norm(cam.position)
  sds, sds_aux = sds_terms(outs, frozen, view, k_sds, t_max, spec, direction,
                           jnp.rad2deg(cam.azimuth))
  terms = {f"sds_{k}": v for k, v in sds.items()}
  geo, geo_counts = geometry_terms(params, outs, frozen["anchor"], k_geo, spec)
  terms.update(geo)
  terms.update(regulariser_terms(outs))
  weights = schedules.step_weights(state.step, spec.schedule)
  loss = total_loss(terms, weights, spec)
  metrics = {f"loss_{k}": v for k, v in terms.items()}
  metrics.update(weights)
  metrics.update(sds_aux)
  metrics.update(geo_counts)
  metrics["ambient_only"] = ambient.astype(jnp.float32)
  modes = jnp.stack([render_lib.shading_mode(shadings[n]) for n in SHADED])
  for i, mode in enumerate(("albedo", "textureless", "diffuse")):
    metrics[f"shading_{mode}"] = jnp.mean((modes == i).astype(jnp.float32))
  metrics["samples_dropped"] = sum(o.num_dropped for o in outs.values()).astype(jnp.float32)
  # the worst render (each has its own R * budget slots): what a grown budget must fit
  metrics["samples_dropped_max"] = jnp.max(jnp.stack(
      [o.num_dropped for o in outs.values()])).astype(jnp.float32)
  metrics["sample_budget"] = jnp.float32(spec.render.sample_budget)
  metrics["samples_pruned"] = sum(o.num_pruned for o in outs.values()).astype(jnp.float32)
  for name in RENDERS:
    metrics[f"opacity_{name}"] = jnp.mean(outs[name].opacity)
  return loss, metrics


# Metrics reduced by max (not mean) over cameras and devices.
MAX_METRICS = ("samples_dropped_max",)


def batch_losses(params: Params, state: TrainState, frozen: dict, key: jax.Array,
                 first_camera: jax.Array, num_cameras: int,
                 spec: TrainSpec) -> tuple[jax.Array, dict]:
  """Mean of ``camera_losses`` over cameras first_camera .. first_camera + num_cameras - 1
  (the ``MAX_METRICS`` by max)."""
  idx = first_camera + jnp.arange(num_cameras)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
  if spec.camera_sharding is not None:
    keys = jax.lax.with_sharding_constraint(keys, spec.camera_sharding)
  loss, metrics = jax.vmap(lambda k, i: camera_losses(params, state, frozen, k, spec, i))(
      keys, idx)
  return jnp.mean(loss), {k: jnp.max(v) if k in MAX_METRICS else jnp.mean(v)
                          for k, v in metrics.items()}


def grid_density(params: Params, name: str, spec: TrainSpec):
  """x [N, 3] -> the density [N] of occupancy grid ``name`` (PAPER.md renderer row):
  sigma_O ("object"), sigma_H ("human"), sigma_H + sigma_O ("interaction")."""
  density = spec.model.density
  if name == "object":
    return lambda x: density(params["object"], x)
  if name == "human":
    return lambda x: density(params["human"], x)
  return lambda x: density(params["human"], x) + density(params["object"], x)


def update_grids(state: TrainState, key: jax.Array, spec: TrainSpec) -> dict:
  """Every ``occupancy.update_every`` steps, each grid's EMA update on its own density."""
  return {g: occ_lib.maybe_update_occupancy(state.occupancy[g],
                                            grid_density(state.params, g, spec),
                                            jax.random.fold_in(key, i), state.step,
                                            spec.occupancy)
          for i, g in enumerate(GRIDS)}


# ----------------------------------------------------------------------------
# The step.


def train_step(state: TrainState, frozen: dict, key: jax.Array, *, spec: TrainSpec,
               axis_name: str | None = None, num_shards: int = 1) -> tuple[TrainState, dict]:
  """One optimisation step (PAPER.md Eq. 3-8). Pure; jit, vmap or pmap it.

  Order: occupancy updates (every ``update_every`` steps, each grid on its own
  density, ``update_grids``, before marching), the camera batch's loss and gradient
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
  grids = update_grids(state, k_occ, spec)
  state = state._replace(occupancy=grids)
  per_shard = spec.settings.batch_size // num_shards
  first = (jax.lax.axis_index(axis_name) * per_shard) if axis_name else jnp.int32(0)
  (loss, metrics), grads = jax.value_and_grad(batch_losses, has_aux=True)(
      state.params, state, frozen, k_loss, first, per_shard, spec)
  if axis_name:
    worst = {k: jax.lax.pmax(metrics[k], axis_name) for k in MAX_METRICS}
    loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), axis_name)
    metrics = dict(metrics, **worst)
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
                 occupied_fraction=occ_lib.occupied_fraction(grids["interaction"]),
                 **{f"occupied_fraction_{g}": occ_lib.occupied_fraction(grids[g])
                    for g in ("object", "human")})
  return new_state, metrics


def make_train_step(spec: TrainSpec, axis_name: str | None = None, num_shards: int = 1):
  """``train_step`` with the spec bound: (state, frozen, key) -> (state, metrics).

  ``axis_name`` / ``num_shards``: for ``jax.pmap`` over ``num_shards`` devices
  (render.batch_size must divide by it); leave them unset for ``jax.jit``.
  """
  if spec.settings.batch_size % num_shards:
    raise ValueError(f"config.render.batch_size = {spec.settings.batch_size} is not "
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
  res = spec.settings.trace_resolution
  pts = occ_lib.cell_centers(res, spec.render.radius).reshape(-1, 3)
  sigma = jax.lax.map(lambda x: spec.model.density(params_object, x),
                      pts.reshape(-1, res ** 2, 3)).reshape(-1)
  occ = losses.nerf_occupancy(sigma, spec.loss.geo_delta) > \
      spec.settings.trace_threshold
  count = jnp.sum(occ)
  mean = jnp.sum(jnp.where(occ[:, None], pts, 0.0), axis=0) / jnp.maximum(count, 1)
  return jnp.where(count > 0, mean, previous).astype(jnp.float32)
