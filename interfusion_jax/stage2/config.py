"""The config schema: one frozen spec dataclass per config section.

``configs/hoi.py`` builds its ``ConfigDict`` from ``default_config()`` and
changes a few values per variant; ``parse(config)`` turns any such
``ConfigDict`` (with command-line overrides applied) into a ``RunConfig`` of
section specs, checking every value where its field is declared::

    config.render.height            <->  RenderConfig.height
    config.loss.geo_eta             <->  LossConfig.geo_eta

Contract:
  * every key of a config section is a field of that section's dataclass and
    every field is a key (``tests/test_stage2_config.py`` checks both directions);
  * each default is written once: here, or (for a setting that a library
    spec also has) on the library spec, which the field's default reads;
  * a bad value raises ``ConfigError`` naming the key, the value and what is
    allowed; an unknown key raises ``ConfigError`` naming the key and the
    nearest valid keys.

The command line parses its config once; everything below receives the
``RunConfig`` or specs derived from it. The library specs that the pure
functions and loaders take (``nerf.render.RenderSpec``,
``nerf.camera.CameraSpec``, ``guidance.core.GuidanceOptions``,
``guidance.prompts.PromptSpec``, ``pose.anchor.AnchorQuery``, ...) are derived
from a ``RunConfig`` by the functions at the end of this module, the only
place where config sections are translated into library settings.
``override`` sets dotted keys of a ``RunConfig`` (checked like the file's);
``to_dict`` gives the plain dicts of ``config.json``.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import numbers
import pathlib
import sys
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from interfusion_jax.body import anchor as anchor_lib
from interfusion_jax.guidance import core as guidance_core
from interfusion_jax.guidance import prompts as prompts_lib
from interfusion_jax.nerf import background as bg_lib
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.nerf import field as field_lib
from interfusion_jax.nerf import hashgrid
from interfusion_jax.nerf import occupancy as occ_lib
from interfusion_jax.nerf import render as render_lib
from interfusion_jax.pose import anchor as pose_anchor
from interfusion_jax.stage2 import budget as budget_lib
from interfusion_jax.stage2 import schedules


class ConfigError(ValueError):
  """A configuration value or key is invalid. The message names the key."""


# ----------------------------------------------------------------------------
# Value checks (each returns True when the value is allowed).


def _int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(v) -> bool:
  return _int(v) and v > 0


def nonneg_int(v) -> bool:
  return _int(v) and v >= 0


def _real(v) -> bool:
  """A finite real number (never inf, -inf or NaN: no float key accepts them)."""
  if not isinstance(v, numbers.Real) or isinstance(v, bool):
    return False
  return isinstance(v, numbers.Integral) or math.isfinite(v)


def positive(v) -> bool:
  return _real(v) and v > 0


def nonneg(v) -> bool:
  return _real(v) and v >= 0


def prob(v) -> bool:
  return _real(v) and 0.0 <= v <= 1.0


def boolean(v) -> bool:
  return isinstance(v, bool)


def text(v) -> bool:
  return isinstance(v, str)


def nonempty_text(v) -> bool:
  return isinstance(v, str) and bool(v.strip())


def real_range(lo=None, hi=None, strict=False) -> Callable[[Any], bool]:
  """A (a, b) pair of numbers with a <= b inside [lo, hi] ((lo, hi) if strict)."""
  def check(v):
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(_real(x) for x in v)):
      return False
    a, b = v
    if a > b:
      return False
    if lo is not None and (a <= lo if strict else a < lo):
      return False
    if hi is not None and (b >= hi if strict else b > hi):
      return False
    return True
  return check


def triple(v) -> bool:
  return isinstance(v, (tuple, list)) and len(v) == 3 and all(_real(x) for x in v)


def setting(default, check: Callable[[Any], bool] | None = None, what: str = "",
            choices: tuple | None = None):
  """A section field: its default, and either ``choices`` or a ``check`` with its message."""
  return dataclasses.field(default=default,
                           metadata={"check": check, "what": what, "choices": choices})


def _lib_default(spec_cls, name: str):
  """The default of field ``name`` of a library spec (so it is written once, there)."""
  return {f.name: f.default for f in dataclasses.fields(spec_cls)}[name]


_HG = hashgrid.HashGridSpec
_FS = field_lib.FieldSpec
_BG = bg_lib.BackgroundSpec
_RS = render_lib.RenderSpec
_SS = render_lib.ShadingSpec
_CS = camera_lib.CameraSpec
_OS = occ_lib.OccupancySpec
_SCH = schedules.ScheduleSpec
_PS = prompts_lib.PromptSpec
_AS = anchor_lib.AnchorSpec
_GO = guidance_core.GuidanceOptions
_AQ = pose_anchor.AnchorQuery
_PN = prompts_lib.PerpNegSpec

_POS_INT = (positive_int, "must be a positive integer")
_NONNEG_INT = (nonneg_int, "must be a non-negative integer")
_POS = (positive, "must be a positive number")
_NONNEG = (nonneg, "must be >= 0")
_PROB = (prob, "must be in [0, 1]")
_BOOL = (boolean, "must be True or False")
_TEXT = (text, "must be a string")


# ----------------------------------------------------------------------------
# The sections.


@dataclasses.dataclass(frozen=True)
class _Section:
  """Base: checks every field against its ``setting`` metadata on construction."""

  SECTION = ""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, list):  # ConfigDict tuples may arrive as lists
        object.__setattr__(self, f.name, tuple(v))
        v = tuple(v)
      choices, check, what = f.metadata.get("choices"), f.metadata.get("check"), f.metadata.get("what")
      key = f"config.{self.SECTION}.{f.name}"
      if choices is not None and v not in choices:
        raise ConfigError(f"{key} = {v!r}: unknown value; choose one of {list(choices)}.")
      if check is not None and not check(v):
        raise ConfigError(f"{key} = {v!r}: {what}.")
    self.check()

  def check(self) -> None:
    """Checks across fields of the section (override)."""


@dataclasses.dataclass(frozen=True)
class PromptConfig(_Section):
  """config.prompt: T_H, T_O, T_I and the prompt decoration (guidance.prompts)."""
  SECTION = "prompt"
  # riding_a_bike.yaml's T_H, the scene ``paper`` follows (the offline variants keep
  # the default run's "a man wearing a WORLD lettered T-shirt").
  human: str = setting("a man with a full beard wearing a flannel shirt")   # checked in check()
  object: str = setting("a bike")
  interaction: str = setting("riding a bike")
  prefix: str = setting(_lib_default(_PS, "prefix"), *_TEXT)   # "" disables
  suffix: str = setting(_lib_default(_PS, "suffix"), *_TEXT)   # "" disables
  view_dependent: bool = setting(_lib_default(_PS, "view_dependent"), *_BOOL)
  # view-dependent prompts: overhead above this elevation; |azimuth| < front: front,
  # > back: back, else side (guidance.prompts.view_index; azimuths in [0, 180])
  overhead_elevation_deg: float = setting(_lib_default(_PS, "overhead_elevation_deg"),
                                          lambda v: _real(v) and -90 <= v <= 90,
                                          "must be in [-90, 90] (degrees)")
  front_azimuth_deg: float = setting(_lib_default(_PS, "front_azimuth_deg"),
                                     lambda v: _real(v) and 0 <= v <= 180,
                                     "must be in [0, 180] (degrees)")
  back_azimuth_deg: float = setting(_lib_default(_PS, "back_azimuth_deg"),
                                    lambda v: _real(v) and 0 <= v <= 180,
                                    "must be in [0, 180] (degrees)")
  head_template: str = setting(_lib_default(_PS, "head_template"),
                               lambda v: isinstance(v, str) and "{human}" in v,
                               "must be a string containing {human}")
  # the CFG unconditional prompt of all four SDS terms ("" = the release's empty prompt)
  negative: str = setting(_lib_default(_PS, "negative"), *_TEXT)

  def check(self):
    if self.front_azimuth_deg > self.back_azimuth_deg:
      raise ConfigError(f"config.prompt.front_azimuth_deg = {self.front_azimuth_deg} must not "
                        f"exceed config.prompt.back_azimuth_deg = {self.back_azimuth_deg}.")
    for name in ("human", "object", "interaction"):
      if not nonempty_text(getattr(self, name)):
        raise ConfigError(f"config.prompt.{name} is empty; give a prompt, e.g. "
                          f"--config.prompt.{name}=\"...\".")


@dataclasses.dataclass(frozen=True)
class FieldConfig(_Section):
  """config.field: both fields psi_H and psi_O (nerf.hashgrid, nerf.field)."""
  SECTION = "field"
  radius: float = setting(_lib_default(_FS, "radius"), *_POS)   # scene box [-r, r]^3
  n_levels: int = setting(_lib_default(_HG, "n_levels"), *_POS_INT)
  n_features_per_level: int = setting(_lib_default(_HG, "n_features_per_level"), *_POS_INT)
  log2_hashmap_size: int = setting(_lib_default(_HG, "log2_hashmap_size"),
                                   lambda v: positive_int(v) and 8 <= v <= 24,
                                   "must be an integer in [8, 24]")
  base_resolution: int = setting(_lib_default(_HG, "base_resolution"), *_POS_INT)
  per_level_scale: float = setting(_lib_default(_HG, "per_level_scale"),
                                   lambda v: _real(v) and v >= 1.0, "must be a number >= 1")
  mlp_width: int = setting(_lib_default(_FS, "mlp_width"), *_POS_INT)
  mlp_hidden_layers: int = setting(_lib_default(_FS, "mlp_hidden_layers"), *_NONNEG_INT)
  density_bias: str = setting(_lib_default(_FS, "density_bias"),
                              choices=field_lib.DENSITY_BIASES)
  density_blob_scale: float = setting(_lib_default(_FS, "blob_scale"), _real, "must be a number")
  density_blob_std: float = setting(_lib_default(_FS, "blob_std"), *_POS)
  # Where the object field's density blob starts: origin (official) | placement
  # (where the built-in prior's placement rule puts the object named in
  # prompt.object against the anchor body; c_O starts there too).
  object_blob: str = setting("origin", choices=("origin", "placement"))
  density_activation: str = setting(_lib_default(_FS, "density_activation"),
                                    choices=field_lib.DENSITY_ACTIVATIONS)
  normals: str = setting(_lib_default(_FS, "normals"), choices=field_lib.NORMAL_MODES)
  fd_eps: float = setting(_lib_default(_FS, "fd_eps"), *_POS)
  compute_dtype: str = setting(_lib_default(_FS, "compute_dtype"),
                               choices=tuple(field_lib.COMPUTE_DTYPES))
  # auto: the C++ jax.ffi kernel on CPU when it builds, else pure JAX | jax | ffi
  hashgrid_backend: str = setting(_lib_default(_HG, "backend"), choices=hashgrid.BACKENDS)
  # how the jnp path forms the dense levels' table gradient: scatter |
  # sorted_segment_sum | one_hot_matmul (scatter-free; for TPU), docs/performance.md
  hashgrid_table_grad: str = setting(_lib_default(_HG, "table_grad"),
                                     choices=hashgrid.TABLE_GRADS)


@dataclasses.dataclass(frozen=True)
class BackgroundConfig(_Section):
  """config.background: the neural environment map (nerf.background)."""
  SECTION = "background"
  kind: str = setting(_lib_default(_BG, "kind"), choices=bg_lib.KINDS)
  sh_degree: int = setting(_lib_default(_BG, "sh_degree"), choices=(1, 2, 3, 4))
  mlp_width: int = setting(_lib_default(_BG, "mlp_width"), *_POS_INT)
  mlp_hidden_layers: int = setting(_lib_default(_BG, "mlp_hidden_layers"), *_NONNEG_INT)
  solid_color: tuple = setting(_lib_default(_BG, "solid_color"), triple, "must be an RGB triple")
  random_white_prob: float = setting(0.5, *_PROB)  # official background augmentation


@dataclasses.dataclass(frozen=True)
class RenderConfig(_Section):
  """config.render: image size, camera batch and ray marching (nerf.render)."""
  SECTION = "render"
  height: int = setting(64, *_POS_INT)
  width: int = setting(64, *_POS_INT)
  batch_size: int = setting(1, *_POS_INT)            # cameras per step (global batch)
  # samples per ray; step = sqrt(3) * 2r / N
  num_samples: int = setting(_lib_default(_RS, "num_samples"), *_POS_INT)
  skip_empty: bool = setting(_lib_default(_RS, "skip_empty"), *_BOOL)  # occupancy-grid skipping
  # avg field evals per ray; 0 = automatic (num_samples // 8)
  sample_budget: int = setting(0, nonneg_int, "must be a non-negative integer (0 = automatic)")
  alpha_mode: str = setting(_lib_default(_RS, "alpha_mode"), choices=render_lib.ALPHA_MODES)
  stop_human_grad: bool = setting(_lib_default(_RS, "stop_human_grad"), *_BOOL)  # Eq. 6 truncation
  composite_eps: float = setting(_lib_default(_RS, "composite_eps"), *_POS)
  # >1: evaluate fields in rematerialised chunks (less memory)
  field_chunks: int = setting(_lib_default(_RS, "field_chunks"), *_POS_INT)
  # Official pruning: drop samples with alpha < min(this, mean grid occupancy) ...
  alpha_threshold: float = setting(_lib_default(_RS, "alpha_threshold"),
                                   lambda v: _real(v) and 0 <= v < 1, "must be in [0, 1)")
  # ... and every sample after the transmittance fell below this (0 = off)
  early_stop_eps: float = setting(_lib_default(_RS, "early_stop_eps"),
                                  lambda v: _real(v) and 0 <= v < 1, "must be in [0, 1)")

  # grow: a step that drops occupied samples grows the budget (re-jit, logged) up to
  # max_sample_budget, so every occupied sample is evaluated as in the release;
  # fixed: one compile, overflow dropped and counted (samples_dropped)
  budget_growth: str = setting("grow", choices=budget_lib.MODES)
  # per-ray cap of a grown budget; 0 = num_samples (then nothing can be dropped)
  max_sample_budget: int = setting(0, nonneg_int,
                                   "must be a non-negative integer (0 = num_samples)")

  def check(self):
    if self.sample_budget > self.num_samples:
      raise ConfigError(f"config.render.sample_budget = {self.sample_budget} exceeds "
                        f"config.render.num_samples = {self.num_samples}.")
    if self.max_sample_budget > self.num_samples:
      raise ConfigError(f"config.render.max_sample_budget = {self.max_sample_budget} exceeds "
                        f"config.render.num_samples = {self.num_samples}; 0 means num_samples.")
    if 0 < self.max_sample_budget < start_budget(self):
      raise ConfigError(f"config.render.max_sample_budget = {self.max_sample_budget} is below "
                        f"the starting budget {start_budget(self)} (config.render.sample_budget"
                        "; 0 = num_samples // 8); raise it or set it to 0 (= num_samples).")


@dataclasses.dataclass(frozen=True)
class OccupancyConfig(_Section):
  """config.occupancy: the empty-space-skipping grid (nerf.occupancy)."""
  SECTION = "occupancy"
  resolution: int = setting(_lib_default(_OS, "resolution"), *_POS_INT)
  update_every: int = setting(_lib_default(_OS, "update_every"), *_POS_INT)
  ema_decay: float = setting(_lib_default(_OS, "ema_decay"), *_PROB)
  threshold: float = setting(_lib_default(_OS, "threshold"), nonneg,
                             "must be a non-negative number")
  warmup_steps: int = setting(_lib_default(_OS, "warmup_steps"), *_NONNEG_INT)
  # cells; 1 keeps low-density fringes (not official)
  dilate: int = setting(_lib_default(_OS, "dilate"), nonneg_int,
                        "must be a non-negative integer (cells)")


@dataclasses.dataclass(frozen=True)
class ShadingConfig(_Section):
  """config.shading: albedo / textureless / diffuse shading and the light."""
  SECTION = "shading"
  # albedo (ambient) only while step < this
  ambient_only_steps: int = setting(_lib_default(_SCH, "ambient_only_steps"), *_NONNEG_INT)
  ambient_light: float = setting(_lib_default(_SS, "ambient_light"), *_NONNEG)
  diffuse_light: float = setting(_lib_default(_SS, "diffuse_light"), *_NONNEG)
  soft: bool = setting(_lib_default(_SS, "soft"), *_BOOL)
  # after ambient_only_steps: shaded (textureless or diffuse) with this
  # probability, else albedo (official 0.75)
  diffuse_prob: float = setting(_lib_default(_SS, "diffuse_prob"), *_PROB)
  # grey "textureless" shading with this probability, after ambient_only_steps
  textureless_prob: float = setting(_lib_default(_SS, "textureless_prob"), *_PROB)
  light_distance_range: tuple = setting(_lib_default(_CS, "light_distance_range"),
                                        real_range(lo=0.0), "must be (lo, hi) with 0 <= lo <= hi")
  # magic3d (official scene configs: within 60 deg of the view axis) | dreamfusion
  light_strategy: str = setting(_lib_default(_CS, "light_strategy"),
                                choices=camera_lib.LIGHT_STRATEGIES)
  light_position_perturb: float = setting(_lib_default(_CS, "light_position_perturb"), *_NONNEG)


@dataclasses.dataclass(frozen=True)
class CameraConfig(_Section):
  """config.camera: training and eval cameras, and camera tracing."""
  SECTION = "camera"
  distance_range: tuple = setting(_lib_default(_CS, "distance_range"),
                                  real_range(lo=0.0, strict=True),
                                  "must be (lo, hi) with 0 < lo <= hi")
  elevation_range_deg: tuple = setting(_lib_default(_CS, "elevation_range_deg"),
                                       real_range(-90.0, 90.0), "must be (lo, hi) within [-90, 90]")
  # P(elevation uniform on the sphere) vs uniform in degrees (official 0.5)
  elevation_sphere_prob: float = setting(_lib_default(_CS, "elevation_sphere_prob"), *_PROB)
  azimuth_range_deg: tuple = setting(_lib_default(_CS, "azimuth_range_deg"),
                                     real_range(-360.0, 360.0),
                                     "must be (lo, hi) within [-360, 360]")
  fovy_range_deg: tuple = setting(_lib_default(_CS, "fovy_range_deg"),
                                  real_range(0.0, 180.0, strict=True),
                                  "must be (lo, hi) within (0, 180)")
  # Official perturbations: position U(+-p) per axis, look-at target N(0, p^2),
  # up N(0, p^2); 0 disables each.
  camera_perturb: float = setting(_lib_default(_CS, "camera_perturb"), *_NONNEG)
  center_perturb: float = setting(_lib_default(_CS, "center_perturb"), *_NONNEG)
  up_perturb: float = setting(_lib_default(_CS, "up_perturb"), *_NONNEG)
  eval_distance: float = setting(_lib_default(_CS, "eval_distance"), *_POS)
  eval_fovy_deg: float = setting(_lib_default(_CS, "eval_fovy_deg"),
                                 lambda v: _real(v) and 0 < v < 180, "must be in (0, 180)")
  eval_elevation_deg: float = setting(_lib_default(_CS, "eval_elevation_deg"),
                                      lambda v: _real(v) and -90 <= v <= 90,
                                      "must be in [-90, 90]")
  # Shading of the eval renders (validation grids, turntables, multiview):
  # albedo | diffuse = the official test render: ambient_light + diffuse_light
  # * max(0, n . l) times the albedo, the light at the camera, on white.
  eval_shading: str = setting("diffuse", choices=("albedo", "diffuse"))
  up: tuple = setting(_lib_default(_CS, "up"), triple, "must be a 3-vector")  # z-up scene
  # Camera tracing: centre = scale * pos + offset (PAPER.md "Camera tracing").
  object_scale: float = setting(0.7, *_POS)
  interaction_scale: float = setting(0.8, *_POS)
  human_scale: float = setting(0.7, *_POS)
  head_scale: float = setting(0.2, *_POS)
  trace_every: int = setting(_lib_default(_SCH, "trace_every"), *_POS_INT)
  trace_threshold: float = setting(0.5, *_PROB)
  trace_resolution: int = setting(128, *_POS_INT)   # official: the 128 tet grid


@dataclasses.dataclass(frozen=True)
class GuidanceConfig(_Section):
  """config.guidance: the diffusion model and SDS (guidance/)."""
  SECTION = "guidance"
  # auto: from the weights (an IF stage-I model -> deepfloyd_if; a UNet with 4 input
  # channels -> stable_diffusion, 3 -> pixel); "builtin": the built-in offline prior, which
  # only cpu / quick / smoke choose by default (an empty weights_dir stops any other run).
  backend: str = setting(_lib_default(_GO, "backend"), choices=("auto", "stable_diffusion", "pixel", "deepfloyd_if",
                                          "builtin"))
  weights_dir: str = setting(_lib_default(_GO, "weights_dir"), *_TEXT)      # local diffusers folder or hub id (DeepFloyd/IF-I-XL-v1.0)
  # Built-in prior only: lambda of object / interaction captions
  # (guidance.builtin.PriorSpec.object_sharpness; -1 = its default).
  builtin_object_sharpness: float = setting(
      _lib_default(_GO, "builtin_object_sharpness"), lambda v: _real(v) and (v == -1 or v >= 1),
      "must be -1 (the built-in prior's default) or a number >= 1")
  # < 0: the backend default (Stable Diffusion 100, pixel 20)
  # -1: the backend default (Stable Diffusion 100, pixel 20, IF 20); else a scale >= 0
  guidance_scale: float = setting(_lib_default(_GO, "guidance_scale"),
                                  lambda v: _real(v) and (v == -1 or v >= 0),
                                  "must be -1 (the backend default) or a number >= 0")
  weighting: str = setting(_lib_default(_GO, "weighting"), choices=("", "uniform", "sds", "fantasia3d"))  # "" = backend default
  t_min: float = setting(_lib_default(guidance_core.GuidanceSpec, "t_min"),
                         lambda v: _real(v) and 0.0 < v < 1.0, "must be in the open interval (0, 1)")
  t_max: float = setting(_lib_default(guidance_core.GuidanceSpec, "t_max"),
                         lambda v: _real(v) and 0.0 < v < 1.0, "must be in the open interval (0, 1)")
  t_anneal: str = setting(_lib_default(_SCH, "t_anneal"), choices=("none", "linear", "hifa_sqrt"))
  t_anneal_end: float = setting(_lib_default(_SCH, "t_anneal_end"),
                                lambda v: _real(v) and 0.0 < v < 1.0,
                                "must be in the open interval (0, 1)")  # final t_max when annealing
  grad_clip: float = setting(_lib_default(guidance_core.GuidanceSpec, "grad_clip"), nonneg,
                             "must be >= 0 (0 disables clipping)")
  unet_dtype: str = setting(_lib_default(guidance_core.GuidanceSpec, "unet_dtype"),
                            choices=guidance_core.UNET_DTYPES)  # auto: bf16 on GPU/TPU
  vae_remat: bool = setting(_lib_default(guidance_core.GuidanceSpec, "vae_remat"), *_BOOL)
  memory_efficient_attention: bool = setting(_lib_default(_GO, "memory_efficient_attention"), *_BOOL)  # chunked UNet attention
  # DeepFloyd IF: where T5 prompt embeddings are cached ("" = $INTERFUSION_TEXT_CACHE
  # or ~/.cache/interfusion_jax/text_embeddings); each prompt is encoded once.
  text_cache_dir: str = setting(_lib_default(_GO, "text_cache_dir"), *_TEXT)
  sd_resolution: int = setting(_lib_default(_GO, "sd_resolution"), *_POS_INT)
  # Perp-Neg (threestudio; not in the release): view negatives with the
  # azimuth-interpolated weights f(r) = a exp(-b r) + c, (a, b, c) per curve.
  perp_neg: bool = setting(False, *_BOOL)
  perp_neg_f_sb: tuple = setting(_lib_default(_PN, "f_sb"), triple, "must be three numbers (a, b, c)")
  perp_neg_f_fsb: tuple = setting(_lib_default(_PN, "f_fsb"), triple, "must be three numbers (a, b, c)")
  perp_neg_f_fs: tuple = setting(_lib_default(_PN, "f_fs"), triple, "must be three numbers (a, b, c)")
  perp_neg_f_sf: tuple = setting(_lib_default(_PN, "f_sf"), triple, "must be three numbers (a, b, c)")

  def check(self):
    if self.t_min >= self.t_max:
      raise ConfigError(f"config.guidance.t_min = {self.t_min} must be below "
                        f"config.guidance.t_max = {self.t_max}.")


@dataclasses.dataclass(frozen=True)
class BodyConfig(_Section):
  """config.body: the anchor body (body/)."""
  SECTION = "body"
  model: str = setting("default", nonempty_text,
                       "must be 'default' or the path of an SMPL-X .npz/.pkl")
  gender: str = setting("neutral", choices=("neutral", "male", "female"))
  aug_rot: bool = setting(_lib_default(_AS, "aug_rot"), *_BOOL)       # -pi/6 about x
  aug_trans: bool = setting(_lib_default(_AS, "aug_trans"), *_BOOL)   # root-centred, not mean vertex
  grid_resolution: int = setting(_lib_default(_AS, "resolution"),
                                 lambda v: positive_int(v) and v >= 8, "must be an integer >= 8")
  cache_dir: str = setting(_lib_default(_AS, "cache_dir"), *_TEXT)   # "" = ~/.cache/interfusion_jax/anchors
  # False: the anchor is posed with root orientation 0 (upright), as the release does
  # with every pose; True keeps the retrieved / loaded pose's own global_orient.
  keep_root_orient: bool = setting(False, *_BOOL)


@dataclasses.dataclass(frozen=True)
class PoseConfig(_Section):
  """config.pose: stage 1, the anchor pose (pose/)."""
  SECTION = "pose"
  anchor_file: str = setting(_lib_default(_AQ, "anchor_file"), *_TEXT)     # use this anchor .npz instead of retrieval
  codebook: str = setting(_lib_default(_AQ, "codebook"), *_TEXT)        # "" = built-in library codebook
  clip_dir: str = setting(_lib_default(_AQ, "clip_dir"), *_TEXT)        # local FlaxCLIP folder or hub id ("" = built-in retrieval)
  query: str = setting(_lib_default(_AQ, "query"), *_TEXT)              # the pose's text ("" = prompt.interaction)
  top_k: int = setting(_lib_default(_AQ, "top_k"), *_POS_INT)
  choose: str = setting(_lib_default(_AQ, "choose"), choices=("best", "rank", "clip_rerank", "sample"))
  rank: int = setting(_lib_default(_AQ, "rank"), *_NONNEG_INT)
  dedup: bool = setting(_lib_default(_AQ, "dedup"), *_BOOL)
  query_template: str = setting(_lib_default(_AQ, "query_template"),
                                lambda v: isinstance(v, str) and "{interaction}" in v,
                                "must be a string containing {interaction}")


@dataclasses.dataclass(frozen=True)
class LossConfig(_Section):
  """config.loss: Eq. 8 weights and the geometric losses (stage2.losses, schedules)."""
  SECTION = "loss"
  geo_delta: float = setting(0.2, *_POS)              # occupancy = 1 - exp(-delta * sigma)
  geo_eta: float = setting(0.4, *_POS)                # proximal-surface width
  geo_max_points: int = setting(80000, *_POS_INT)
  geo_reduction: str = setting("sum", choices=("sum", "mean"))
  lambda_sds_human: float = setting(1.0, *_NONNEG)
  lambda_geo_human: float = setting(1.0, *_NONNEG)
  lambda_object_sds: str = setting("official", choices=("official",))  # floor(step/1000)/10
  # official: the piecewise lambda2 over the levels shape_weights; horse: the
  # fixed levels (0.001, 0.01, 0.1) whatever shape_weights says (older runs).
  lambda_object_geo: str = setting(_lib_default(_SCH, "lambda_object_geo"),
                                   choices=schedules.LAMBDA2_VARIANTS)
  # lambda2 levels (w0, w1, w2): w0 if step < 1 or > 9 periods, w1 if < 2 or
  # > 8 periods, else w2 (period = schedule_period); official [0.001, 0.01, 0.1].
  shape_weights: tuple = setting(_lib_default(_SCH, "shape_weights"),
                                 lambda v: triple(v) and all(x >= 0 for x in v),
                                 "must be three non-negative numbers (w0, w1, w2)")
  # multiplies the lambda2 schedule (not official; 1 = official)
  lambda_object_geo_scale: float = setting(_lib_default(_SCH, "object_geo_scale"), *_NONNEG)
  schedule_period: int = setting(_lib_default(_SCH, "period"), positive_int,
                                 "must be a positive integer (steps; official 1000)")
  lambda_orient_start: float = setting(_lib_default(_SCH, "orient_start"), *_NONNEG)
  lambda_orient_end: float = setting(_lib_default(_SCH, "orient_end"), *_NONNEG)
  lambda_orient_ramp_steps: int = setting(_lib_default(_SCH, "orient_ramp_steps"), *_NONNEG_INT)
  lambda_sparsity: float = setting(1.0, *_NONNEG)
  lambda_opaque: float = setting(0.0, *_NONNEG)


@dataclasses.dataclass(frozen=True)
class OptimConfig(_Section):
  """config.optim: Adam (PAPER.md optimizer row)."""
  SECTION = "optim"
  lr_field: float = setting(0.01, *_POS)
  lr_background: float = setting(0.001, *_NONNEG)
  b1: float = setting(0.9, lambda v: _real(v) and 0.0 <= v < 1.0, "must be in [0, 1)")
  b2: float = setting(0.99, lambda v: _real(v) and 0.0 <= v < 1.0, "must be in [0, 1)")
  eps: float = setting(1e-15, *_NONNEG)


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
  """config.train: the loop and its outputs."""
  SECTION = "train"
  steps: int = setting(_lib_default(_SCH, "total_steps"), *_POS_INT)
  log_every: int = setting(10, *_POS_INT)
  val_every: int = setting(1000, *_POS_INT)
  ckpt_every: int = setting(1000, *_POS_INT)
  keep_checkpoints: int = setting(3, *_POS_INT)
  max_consecutive_skips: int = setting(20, *_POS_INT)
  # views of the final turntables; official test video: 180 views
  turntable_frames: int = setting(180, *_POS_INT)
  mesh_resolution: int = setting(128, lambda v: positive_int(v) and v >= 4,
                                 "must be an integer >= 4")
  # side of the baked albedo texture of the UV-textured meshes (mesh/texture.py); 0 = no
  # textured meshes (the vertex-colour ones are always written)
  texture_size: int = setting(1024, lambda v: nonneg_int(v) and (v == 0 or v >= 8),
                              "must be 0 (off) or an integer >= 8")
  # size of the final turntables / multiview (0 = render size); official 512
  final_resolution: int = setting(512, nonneg_int,
                                  "must be a non-negative integer (0 = the render size)")


SECTIONS: dict[str, type] = {
    "prompt": PromptConfig, "field": FieldConfig, "background": BackgroundConfig,
    "render": RenderConfig, "occupancy": OccupancyConfig, "shading": ShadingConfig,
    "camera": CameraConfig, "guidance": GuidanceConfig, "body": BodyConfig,
    "pose": PoseConfig, "loss": LossConfig, "optim": OptimConfig, "train": TrainConfig,
}
SEED_LIMIT = pose_anchor.SEED_LIMIT   # 0 <= seed < 2^32: no two seeds alias
SCALARS = {"seed": (lambda v: nonneg_int(v) and v < SEED_LIMIT,
                    f"must be an integer in [0, 2^32 - 1 = {SEED_LIMIT - 1}]"),
           "variant": (text, "must be a string")}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole parsed config: ``seed``, ``variant`` and one spec per section."""
  seed: int
  variant: str
  prompt: PromptConfig
  field: FieldConfig
  background: BackgroundConfig
  render: RenderConfig
  occupancy: OccupancyConfig
  shading: ShadingConfig
  camera: CameraConfig
  guidance: GuidanceConfig
  body: BodyConfig
  pose: PoseConfig
  loss: LossConfig
  optim: OptimConfig
  train: TrainConfig

  def __post_init__(self):
    if self.guidance.perp_neg and not self.prompt.view_dependent:
      raise ConfigError("config.guidance.perp_neg = True needs config.prompt.view_dependent = "
                        "True (its negatives are the other views' prompts).")


def valid_keys() -> list[str]:
  """Every dotted key of the schema, e.g. "render.height"."""
  keys = list(SCALARS)
  for name, cls in SECTIONS.items():
    keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
  return keys


def nearest_keys(key: str, n: int = 3) -> list[str]:
  """The ``n`` valid dotted keys nearest to ``key`` (always ``n`` of them).

  A key of the same name in another section comes first (``render.radius`` ->
  ``field.radius``); then the most similar keys of the key's section, or of
  the whole schema when the section itself is unknown.
  """
  keys = valid_keys()
  section, name = key.split(".")[0], key.rsplit(".", 1)[-1]
  same_name = [k for k in keys if k.rsplit(".", 1)[-1] == name and k != key]
  pool = [k for k in keys if k.startswith(section + ".")] if section in SECTIONS else keys
  similar = difflib.get_close_matches(key, pool, n=n + len(same_name), cutoff=0.0)
  return (same_name + [k for k in similar if k not in same_name])[:n]


def unknown_key_error(key: str) -> ConfigError:
  """The one-line error for an unknown dotted key, naming the nearest valid keys."""
  key = key[len("config."):] if key.startswith("config.") else key
  near = ", ".join(f"config.{k}" for k in nearest_keys(key))
  return ConfigError(f"config.{key} is not a config key. Nearest valid keys: {near}.")


def default_config() -> ml_collections.ConfigDict:
  """The official defaults (``configs/hoi.py:paper``) as a ``ConfigDict``."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  for name, cls in SECTIONS.items():
    c[name] = ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(cls)})
  return c


def parse(cfg: ml_collections.ConfigDict | RunConfig) -> RunConfig:
  """Checks every key and value of ``cfg`` and returns its ``RunConfig``.

  A key missing from a section takes the field's default (e.g. a config saved
  by an older run).

  Raises:
    ConfigError: naming the first unknown key (with the nearest valid keys),
      missing section or bad value.
  """
  if isinstance(cfg, RunConfig):
    return cfg
  for key in cfg.keys():
    if key not in SECTIONS and key not in SCALARS:
      sub = cfg[key]
      if isinstance(sub, (ml_collections.ConfigDict, dict)) and len(sub):
        key = f"{key}.{next(iter(sub.keys()))}"   # name the key as it was written
      raise unknown_key_error(str(key))
  sections = {}
  for name, cls in SECTIONS.items():
    if name not in cfg:
      raise ConfigError(f"config.{name} is missing; start from configs/hoi.py.")
    sec = cfg[name]
    if not isinstance(sec, (ml_collections.ConfigDict, dict)):
      raise ConfigError(f"config.{name} = {sec!r}: must be a section (start from configs/hoi.py).")
    names = {f.name for f in dataclasses.fields(cls)}
    for key in sec.keys():
      if key not in names:
        raise unknown_key_error(f"{name}.{key}")
    sections[name] = cls(**{k: sec[k] for k in sec.keys()})
  scalars = {"seed": cfg.get("seed", 0), "variant": cfg.get("variant", "custom")}
  for k, v in scalars.items():
    _check_scalar(k, v)
  return RunConfig(**scalars, **sections)


def _check_scalar(key: str, value) -> None:
  ok, what = SCALARS[key]
  if not ok(value):
    raise ConfigError(f"config.{key} = {value!r}: {what}.")


def to_dict(run: RunConfig) -> dict:
  """``run`` as nested plain dicts (config.json; ``parse`` reads it back)."""
  return {"seed": run.seed, "variant": run.variant,
          **{name: dataclasses.asdict(getattr(run, name)) for name in SECTIONS}}


def override(run: RunConfig, values: Mapping[str, Any]) -> RunConfig:
  """``run`` with dotted keys (``"prompt.human"``, ``"seed"``) set, each value checked.

  Raises:
    ConfigError: naming an unknown key or a bad value.
  """
  scalars, sections = {}, {}
  for key, v in values.items():
    if key in SCALARS:
      _check_scalar(key, v)
      scalars[key] = v
      continue
    name, _, field = key.partition(".")
    if name not in SECTIONS or field not in {f.name for f in dataclasses.fields(SECTIONS[name])}:
      raise unknown_key_error(key)
    sections.setdefault(name, {})[field] = v
  return dataclasses.replace(
      run, **scalars,
      **{name: dataclasses.replace(getattr(run, name), **kw) for name, kw in sections.items()})


def check_overrides(argv: Iterable[str], flag: str = "config") -> None:
  """Rejects unknown ``--config.a.b=...`` keys of a command line, before absl parses it.

  Reads ``--config.k=v``, ``--config.k v``, ``-config.k=v`` and ``--noconfig.k``
  (absl's spellings), up to a bare ``--``. The config file itself is checked
  first (``check_config_file``).

  Raises:
    ConfigError: naming a bad config file or variant, or the first unknown key
      and the nearest valid keys.
  """
  argv = list(argv)
  check_config_file(argv, flag)
  valid = set(valid_keys())
  prefixes = tuple(f"{dashes}{no}{flag}." for dashes in ("--", "-") for no in ("", "no"))
  for arg in argv:
    if arg == "--":
      break
    prefix = next((p for p in prefixes if arg.startswith(p)), None)
    if prefix is None:
      continue
    key = arg[len(prefix):].split("=", 1)[0]
    if key not in valid:
      raise unknown_key_error(key)


def _flag_values(argv: list[str], flag: str) -> list[str]:
  """The values of ``--flag=V`` / ``--flag V`` (one or two dashes) in ``argv``, up to ``--``."""
  out = []
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{flag}="):
        out.append(arg.split("=", 1)[1])
      elif arg == f"{dashes}{flag}" and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def check_config_file(argv: Iterable[str], flag: str = "config") -> None:
  """Loads the ``--config=FILE[:variant]`` of a command line as absl will, before it does.

  A missing file, a file that fails to run or a variant that ``get_config``
  rejects (``configs/hoi.py:smok``; its message lists the valid variants)
  become one ``ConfigError`` line here instead of absl's traceback.

  Raises:
    ConfigError: naming the flag value and the file's own message.
  """
  for value in _flag_values(list(argv), flag):
    path, _, variant = value.partition(":")
    if not pathlib.Path(path).is_file():
      raise ConfigError(f"--{flag}={value}: no config file {path!r}; give e.g. "
                        f"--{flag}=configs/hoi.py:smoke.")
    try:
      spec = importlib.util.spec_from_file_location("_interfusion_config_check", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      module.get_config(*([variant] if variant else []))
    except Exception as e:  # pylint: disable=broad-except
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise ConfigError(f"--{flag}={value}: {first}") from None


def exit_on_bad_overrides(argv: Iterable[str], flag: str = "config") -> None:
  """``check_overrides`` for a command line's ``main``: prints one line and exits 2.

  Call it before ``app.run`` so an unknown key never reaches absl (whose
  ``KeyError`` would end in a traceback)::

      error: config.render.heigth is not a config key. Nearest valid keys: ...
  """
  try:
    check_overrides(argv, flag)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None


# ----------------------------------------------------------------------------
# Library specs derived from a RunConfig (the one translation of sections).


def hashgrid_spec(run: RunConfig) -> hashgrid.HashGridSpec:
  f = run.field
  return hashgrid.HashGridSpec(
      n_levels=f.n_levels, n_features_per_level=f.n_features_per_level,
      log2_hashmap_size=f.log2_hashmap_size, base_resolution=f.base_resolution,
      per_level_scale=float(f.per_level_scale), backend=f.hashgrid_backend,
      table_grad=f.hashgrid_table_grad)


def field_spec(run: RunConfig) -> field_lib.FieldSpec:
  f = run.field
  return field_lib.FieldSpec(
      grid=hashgrid_spec(run), radius=float(f.radius), mlp_width=f.mlp_width,
      mlp_hidden_layers=f.mlp_hidden_layers, density_bias=f.density_bias,
      blob_scale=float(f.density_blob_scale), blob_std=float(f.density_blob_std),
      density_activation=f.density_activation, normals=f.normals, fd_eps=float(f.fd_eps),
      compute_dtype=f.compute_dtype)


def background_spec(run: RunConfig) -> bg_lib.BackgroundSpec:
  b = run.background
  return bg_lib.BackgroundSpec(kind=b.kind, sh_degree=b.sh_degree, mlp_width=b.mlp_width,
                               mlp_hidden_layers=b.mlp_hidden_layers,
                               solid_color=tuple(float(c) for c in b.solid_color))


def start_budget(render: RenderConfig) -> int:
  """The starting per-ray sample budget: render.sample_budget, 0 -> num_samples // 8."""
  return render.sample_budget or max(1, render.num_samples // 8)


def render_spec(run: RunConfig) -> render_lib.RenderSpec:
  """The renderer's spec at the starting budget (``start_budget``)."""
  r = run.render
  return render_lib.RenderSpec(
      radius=float(run.field.radius), num_samples=r.num_samples,
      sample_budget=start_budget(r), skip_empty=r.skip_empty,
      alpha_mode=r.alpha_mode, stop_human_grad=r.stop_human_grad,
      composite_eps=float(r.composite_eps), field_chunks=r.field_chunks,
      alpha_threshold=float(r.alpha_threshold), early_stop_eps=float(r.early_stop_eps))


def budget_policy(run: RunConfig) -> budget_lib.BudgetPolicy:
  """How the loop treats a full sample budget (render.budget_growth, max_sample_budget)."""
  r = run.render
  return budget_lib.BudgetPolicy(mode=r.budget_growth,
                                 maximum=r.max_sample_budget or r.num_samples)


def shading_spec(run: RunConfig) -> render_lib.ShadingSpec:
  s = run.shading
  return render_lib.ShadingSpec(ambient_light=float(s.ambient_light),
                                diffuse_light=float(s.diffuse_light), soft=s.soft,
                                diffuse_prob=float(s.diffuse_prob),
                                textureless_prob=float(s.textureless_prob))


def camera_spec(run: RunConfig) -> camera_lib.CameraSpec:
  c, s = run.camera, run.shading
  pair = lambda v: (float(v[0]), float(v[1]))
  return camera_lib.CameraSpec(
      distance_range=pair(c.distance_range), elevation_range_deg=pair(c.elevation_range_deg),
      azimuth_range_deg=pair(c.azimuth_range_deg), fovy_range_deg=pair(c.fovy_range_deg),
      elevation_sphere_prob=float(c.elevation_sphere_prob),
      camera_perturb=float(c.camera_perturb), center_perturb=float(c.center_perturb),
      up_perturb=float(c.up_perturb), light_strategy=str(s.light_strategy),
      light_distance_range=pair(s.light_distance_range),
      light_position_perturb=float(s.light_position_perturb),
      eval_distance=float(c.eval_distance), eval_fovy_deg=float(c.eval_fovy_deg),
      eval_elevation_deg=float(c.eval_elevation_deg), up=tuple(float(u) for u in c.up))


def occupancy_spec(run: RunConfig) -> occ_lib.OccupancySpec:
  o, r = run.occupancy, float(run.field.radius)
  return occ_lib.OccupancySpec(
      resolution=o.resolution, radius=r, ema_decay=float(o.ema_decay),
      threshold=float(o.threshold), warmup_steps=o.warmup_steps, update_every=o.update_every,
      dilate=o.dilate, render_step=math.sqrt(3.0) * 2.0 * r / run.render.num_samples)


def schedule_spec(run: RunConfig) -> schedules.ScheduleSpec:
  l = run.loss
  return schedules.ScheduleSpec(
      lambda_object_geo=l.lambda_object_geo,
      shape_weights=tuple(float(w) for w in l.shape_weights),
      object_geo_scale=float(l.lambda_object_geo_scale),
      period=l.schedule_period, orient_start=float(l.lambda_orient_start),
      orient_end=float(l.lambda_orient_end), orient_ramp_steps=l.lambda_orient_ramp_steps,
      ambient_only_steps=run.shading.ambient_only_steps, trace_every=run.camera.trace_every,
      t_anneal=run.guidance.t_anneal,
      t_anneal_end=float(run.guidance.t_anneal_end), total_steps=run.train.steps)


def prompt_spec(run: RunConfig) -> prompts_lib.PromptSpec:
  return prompts_lib.PromptSpec(**dataclasses.asdict(run.prompt))


def perp_neg_spec(run: RunConfig) -> prompts_lib.PerpNegSpec | None:
  """Perp-Neg's weight curves when config.guidance.perp_neg is on, else None (plain CFG)."""
  g = run.guidance
  if not g.perp_neg:
    return None
  return prompts_lib.PerpNegSpec(
      f_sb=tuple(map(float, g.perp_neg_f_sb)), f_fsb=tuple(map(float, g.perp_neg_f_fsb)),
      f_fs=tuple(map(float, g.perp_neg_f_fs)), f_sf=tuple(map(float, g.perp_neg_f_sf)))


def anchor_spec(run: RunConfig) -> anchor_lib.AnchorSpec:
  b = run.body
  return anchor_lib.AnchorSpec(resolution=b.grid_resolution, radius=float(run.field.radius),
                               aug_rot=b.aug_rot, aug_trans=b.aug_trans, cache_dir=b.cache_dir)


def guidance_options(run: RunConfig) -> guidance_core.GuidanceOptions:
  """The user's guidance settings (t_anneal / t_anneal_end go to ``schedule_spec``)."""
  g = dataclasses.asdict(run.guidance)
  return guidance_core.GuidanceOptions(**{f.name: g[f.name] for f in
                                          dataclasses.fields(guidance_core.GuidanceOptions)})


def anchor_query(run: RunConfig) -> pose_anchor.AnchorQuery:
  """Stage 1's query: config.pose, the scene's prompts, body and seed."""
  return pose_anchor.AnchorQuery(
      interaction=run.prompt.interaction, human=run.prompt.human,
      body_model=run.body.model, body_gender=run.body.gender, seed=int(run.seed),
      **dataclasses.asdict(run.pose))
