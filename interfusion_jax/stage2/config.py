"""Fail-fast validation of an InterFusion ``ConfigDict``.

``validate(config)`` runs before anything is compiled. Every problem is
reported with its dotted key, the bad value and what is allowed, e.g.::

    ConfigError: config.render.height = 0: must be a positive integer.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Iterable

import ml_collections


class ConfigError(ValueError):
  """A configuration value is invalid. The message names the key."""


def _get(cfg: ml_collections.ConfigDict, key: str) -> Any:
  node = cfg
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing; start from configs/hoi.py.")
    node = node[part]
  return node


def _positive_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0


def _nonneg_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0


def _positive(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0


def _nonneg(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0


def _prob(v) -> bool:
  return isinstance(v, numbers.Real) and 0.0 <= v <= 1.0


def _range(lo=None, hi=None, strict=False) -> Callable[[Any], bool]:
  def check(v):
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
      return False
    a, b = v
    if not all(isinstance(x, numbers.Real) for x in v) or a > b:
      return False
    if lo is not None and (a < lo if not strict else a <= lo):
      return False
    if hi is not None and (b > hi if not strict else b >= hi):
      return False
    return True
  return check


_CHOICES = {
    "field.density_bias": ("blob_magic3d", "blob_dreamfusion", "none"),
    "field.object_blob": ("origin", "placement"),
    "field.density_activation": ("softplus", "exp", "relu"),
    "field.normals": ("analytic", "finite_difference"),
    "field.compute_dtype": ("float32", "bfloat16"),
    "field.hashgrid_backend": ("jax", "ffi", "auto"),
    "background.kind": ("neural", "solid", "white"),
    "render.alpha_mode": ("sum_clamped", "union"),
    "guidance.backend": ("auto", "stable_diffusion", "pixel", "builtin"),
    "guidance.weighting": ("", "uniform", "sds", "fantasia3d"),
    "guidance.t_anneal": ("none", "linear", "hifa_sqrt"),
    "guidance.unet_dtype": ("float32", "bfloat16"),
    "pose.choose": ("best", "rank", "clip_rerank", "sample"),
    "body.gender": ("neutral", "male", "female"),
    "loss.geo_reduction": ("sum", "mean"),
    "loss.lambda_object_sds": ("official",),
    "loss.lambda_object_geo": ("official", "horse"),
}

_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "field.radius": (_positive, "must be a positive number"),
    "field.n_levels": (_positive_int, "must be a positive integer"),
    "field.n_features_per_level": (_positive_int, "must be a positive integer"),
    "field.log2_hashmap_size": (lambda v: _positive_int(v) and 8 <= v <= 24,
                                "must be an integer in [8, 24]"),
    "field.base_resolution": (_positive_int, "must be a positive integer"),
    "field.per_level_scale": (lambda v: isinstance(v, numbers.Real) and v >= 1.0,
                              "must be a number >= 1"),
    "field.mlp_width": (_positive_int, "must be a positive integer"),
    "field.mlp_hidden_layers": (_nonneg_int, "must be a non-negative integer"),
    "field.fd_eps": (_positive, "must be a positive number"),
    "render.height": (_positive_int, "must be a positive integer"),
    "render.width": (_positive_int, "must be a positive integer"),
    "render.batch_size": (_positive_int, "must be a positive integer"),
    "render.num_samples": (_positive_int, "must be a positive integer"),
    "render.sample_budget": (_nonneg_int, "must be a non-negative integer (0 = automatic)"),
    "render.field_chunks": (_positive_int, "must be a positive integer"),
    "occupancy.resolution": (_positive_int, "must be a positive integer"),
    "occupancy.update_every": (_positive_int, "must be a positive integer"),
    "occupancy.ema_decay": (_prob, "must be in [0, 1]"),
    "occupancy.threshold": (_nonneg, "must be a non-negative number"),
    "occupancy.warmup_steps": (_nonneg_int, "must be a non-negative integer"),
    "occupancy.dilate": (_nonneg_int, "must be a non-negative integer (cells)"),
    "shading.ambient_only_steps": (_nonneg_int, "must be a non-negative integer"),
    "shading.textureless_prob": (_prob, "must be in [0, 1]"),
    "background.random_white_prob": (_prob, "must be in [0, 1]"),
    "camera.distance_range": (_range(lo=0.0, strict=True), "must be (lo, hi) with 0 < lo <= hi"),
    "camera.elevation_range_deg": (_range(-90.0, 90.0), "must be (lo, hi) within [-90, 90]"),
    "camera.azimuth_range_deg": (_range(-360.0, 360.0), "must be (lo, hi) within [-360, 360]"),
    "camera.fovy_range_deg": (_range(0.0, 180.0, strict=True), "must be (lo, hi) within (0, 180)"),
    "camera.trace_every": (_positive_int, "must be a positive integer"),
    "camera.trace_resolution": (_positive_int, "must be a positive integer"),
    "guidance.t_min": (lambda v: isinstance(v, numbers.Real) and 0.0 < v < 1.0,
                       "must be in the open interval (0, 1)"),
    "guidance.t_max": (lambda v: isinstance(v, numbers.Real) and 0.0 < v < 1.0,
                       "must be in the open interval (0, 1)"),
    "guidance.grad_clip": (_nonneg, "must be >= 0 (0 disables clipping)"),
    "guidance.builtin_object_sharpness": (
        lambda v: isinstance(v, numbers.Real) and (v == -1 or v >= 1),
        "must be -1 (the built-in prior's default) or a number >= 1"),
    "guidance.sd_resolution": (_positive_int, "must be a positive integer"),
    "body.grid_resolution": (lambda v: _positive_int(v) and v >= 8, "must be an integer >= 8"),
    "pose.top_k": (_positive_int, "must be a positive integer"),
    "pose.rank": (_nonneg_int, "must be a non-negative integer"),
    "loss.geo_delta": (_positive, "must be a positive number"),
    "loss.geo_eta": (_positive, "must be a positive number"),
    "loss.geo_max_points": (_positive_int, "must be a positive integer"),
    "loss.schedule_period": (_positive_int, "must be a positive integer (steps; official 1000)"),
    "loss.lambda_sparsity": (_nonneg, "must be >= 0"),
    "loss.lambda_object_geo_scale": (_nonneg, "must be >= 0"),
    "loss.lambda_opaque": (_nonneg, "must be >= 0"),
    "optim.lr_field": (_positive, "must be a positive number"),
    "optim.lr_background": (_nonneg, "must be >= 0"),
    "optim.b1": (lambda v: isinstance(v, numbers.Real) and 0.0 <= v < 1.0, "must be in [0, 1)"),
    "optim.b2": (lambda v: isinstance(v, numbers.Real) and 0.0 <= v < 1.0, "must be in [0, 1)"),
    "optim.eps": (_nonneg, "must be >= 0"),
    "train.steps": (_positive_int, "must be a positive integer"),
    "train.log_every": (_positive_int, "must be a positive integer"),
    "train.val_every": (_positive_int, "must be a positive integer"),
    "train.ckpt_every": (_positive_int, "must be a positive integer"),
    "train.keep_checkpoints": (_positive_int, "must be a positive integer"),
    "train.max_consecutive_skips": (_positive_int, "must be a positive integer"),
    "train.final_resolution": (_nonneg_int,
                               "must be a non-negative integer (0 = the render size)"),
}

_PROMPTS = ("prompt.human", "prompt.object", "prompt.interaction")


def validate(cfg: ml_collections.ConfigDict, *, keys: Iterable[str] | None = None) -> None:
  """Checks ``cfg``; raises ``ConfigError`` naming the first bad key.

  Args:
    cfg: a config built from ``configs/hoi.py``.
    keys: optional subset of dotted keys to check (default: all known keys
      that are present in ``cfg``). Missing sections are skipped so that
      partial configs (e.g. in unit tests) can be validated.
  """
  wanted = set(keys) if keys is not None else None

  def present(key):
    try:
      _get(cfg, key)
      return wanted is None or key in wanted
    except ConfigError:
      return False

  for key, allowed in _CHOICES.items():
    if present(key):
      v = _get(cfg, key)
      if v not in allowed:
        raise ConfigError(
            f"config.{key} = {v!r}: unknown value; choose one of {list(allowed)}.")
  for key, (ok, what) in _CHECKS.items():
    if present(key):
      v = _get(cfg, key)
      if not ok(v):
        raise ConfigError(f"config.{key} = {v!r}: {what}.")
  for key in _PROMPTS:
    if present(key):
      v = _get(cfg, key)
      if not isinstance(v, str) or not v.strip():
        raise ConfigError(
            f"config.{key} is empty; give a prompt, e.g. "
            f"--config.{key}=\"...\".")
  if present("guidance.t_min") and present("guidance.t_max"):
    if cfg.guidance.t_min >= cfg.guidance.t_max:
      raise ConfigError(
          f"config.guidance.t_min = {cfg.guidance.t_min} must be below "
          f"config.guidance.t_max = {cfg.guidance.t_max}.")
  if present("render.sample_budget") and present("render.num_samples"):
    if cfg.render.sample_budget > cfg.render.num_samples:
      raise ConfigError(
          f"config.render.sample_budget = {cfg.render.sample_budget} exceeds "
          f"config.render.num_samples = {cfg.render.num_samples}.")
