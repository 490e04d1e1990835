"""Every step-dependent weight and switch of stage 2, written once.

Each schedule is a pure function of the (possibly traced) integer ``step``
and works both on Python ints (returns a Python/NumPy scalar) and inside
``jax.jit`` (returns a 0-d array). PAPER.md "Total loss, Eq. 8", "Official
field, renderer and optimizer defaults" and "Camera tracing".

* ``lambda_object_sds``: lambda1 = floor(step / 1000) / 10.
* ``lambda_object_geo``: lambda2, the official piecewise schedule over the
  levels ``shape_weights`` (w0, w1, w2).
* ``lambda_orient``: linear ramp 10 -> 1000 over steps 0..5000.
* ``ambient_only``: ambient-only shading while step < 2001.
* (the occupancy-grid update every 16 steps and its warm-up live in
  ``occupancy.maybe_update_occupancy``, which the step calls.)
* ``trace_due``: camera tracing (c_O) every 1000 steps.
* ``max_timestep_fraction``: optional t_max annealing of the SDS timestep.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from interfusion_jax.guidance import sds

# The official shape_weights default (riding_a_bike.yaml and 7 more of the 11
# scene configs): lambda2 = (w0, w1, w2) = (ends, shoulders, middle).
OFFICIAL_SHAPE_WEIGHTS = (0.001, 0.01, 0.1)
# lambda_object_geo variants: "official" reads its levels from shape_weights
# (config.loss.shape_weights); "horse" is a fixed level set, kept for older
# command lines (it equals OFFICIAL_SHAPE_WEIGHTS).
_LAMBDA2_FIXED = {"horse": (0.001, 0.01, 0.1)}
LAMBDA2_VARIANTS = ("official", "horse")


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """Static schedule settings (config.loss / shading / occupancy / camera / guidance)."""
  lambda_object_geo: str = "official"
  shape_weights: tuple[float, float, float] = OFFICIAL_SHAPE_WEIGHTS
  object_geo_scale: float = 1.0
  period: int = 1000
  orient_start: float = 10.0
  orient_end: float = 1000.0
  orient_ramp_steps: int = 5000
  ambient_only_steps: int = 2001
  trace_every: int = 1000
  t_anneal: str = "none"
  t_anneal_end: float = 0.5
  total_steps: int = 10000


def lambda_object_sds(step: Any, period: int = 1000) -> Any:
  """lambda1 of PAPER.md Eq. 8 (object SDS): ``floor(step / 1000) / 10``.

  Args:
    step: integer step, Python int or 0-d int array.
    period: the official 1000 (config.loss.schedule_period); a shorter run
      compresses the schedule with ``floor(step / period) / 10``.

  Returns:
    A 0-d float32 array.
  """
  return jnp.floor_divide(jnp.asarray(step, jnp.int32), int(period)).astype(jnp.float32) / 10.0


def lambda_object_geo(step: Any, variant: str = "official", period: int = 1000,
                      shape_weights: tuple = OFFICIAL_SHAPE_WEIGHTS) -> Any:
  """lambda2 of PAPER.md Eq. 8 (object geometry), the official piecewise schedule.

  With levels (w0, w1, w2): w0 if step < 1000 or step > 9000; else w1 if
  step < 2000 or step > 8000; else w2.

  Args:
    step: integer step (Python int or 0-d int array).
    variant: "official" (levels = ``shape_weights``) or "horse" (the fixed
      levels (0.001, 0.01, 0.1), whatever ``shape_weights`` says)
      (config.loss.lambda_object_geo).
    period: the official 1000 (config.loss.schedule_period); the boundaries
      1000 / 2000 / 8000 / 9000 become 1, 2, 8, 9 x period.
    shape_weights: the three levels (w0, w1, w2) (config.loss.shape_weights;
      official default (0.001, 0.01, 0.1)).

  Returns:
    A 0-d float32 array.
  """
  if variant not in LAMBDA2_VARIANTS:
    raise ValueError(f"lambda_object_geo variant {variant!r} is unknown; choose one of "
                     f"{list(LAMBDA2_VARIANTS)} (config.loss.lambda_object_geo).")
  levels = _LAMBDA2_FIXED.get(variant, shape_weights)
  if len(levels) != 3:
    raise ValueError(f"shape_weights = {levels!r}: need three levels (w0, w1, w2) "
                     "(config.loss.shape_weights).")
  ends, shoulders, middle = (float(w) for w in levels)
  s = jnp.asarray(step, jnp.int32)
  p = int(period)
  return jnp.where((s < p) | (s > 9 * p), ends,
                   jnp.where((s < 2 * p) | (s > 8 * p), shoulders, middle)).astype(jnp.float32)


def lambda_orient(step: Any, start: float = 10.0, end: float = 1000.0,
                  ramp_steps: int = 5000) -> Any:
  """Orient-loss weight (PAPER.md "L_reg"): linear start -> end over [0, ramp_steps].

  Args:
    step: integer step.
    start, end: weights at step 0 and at ``ramp_steps`` (and after).
    ramp_steps: ramp length; 0 means ``end`` from the start.

  Returns:
    A 0-d float32 array.
  """
  s = jnp.asarray(step, jnp.float32)
  frac = jnp.clip(s / max(ramp_steps, 1), 0.0, 1.0) if ramp_steps > 0 else 1.0
  return jnp.asarray(start + (end - start) * frac, jnp.float32)


def ambient_only(step: Any, ambient_only_steps: int = 2001) -> Any:
  """Ambient-only shading while ``step < ambient_only_steps`` (official 2001). 0-d bool."""
  return jnp.asarray(step, jnp.int32) < ambient_only_steps


def trace_due(step: int, every: int = 1000) -> bool:
  """Camera tracing (PAPER.md "Camera tracing"): recompute c_O when step % every == 0."""
  return int(step) % int(every) == 0


def max_timestep_fraction(step: Any, spec: ScheduleSpec, t_max: float) -> Any:
  """Upper end of the SDS timestep range U[t_min, t_max] (PAPER.md "SDS").

  InterFusion does no annealing ("none": constant t_max); "linear" and
  "hifa_sqrt" anneal t_max -> t_anneal_end over the run. The formula is
  written once, in ``guidance.sds.anneal_t_max``; this only binds the config.

  Args:
    step: integer step.
    spec: the schedule spec.
    t_max: the start value, the guidance spec's ``t_max`` (config.guidance.t_max;
      its one road into the step).

  Returns:
    A 0-d float32 array in (0, 1).
  """
  return jnp.asarray(sds.anneal_t_max(step, spec.total_steps, t_max,
                                      spec.t_anneal_end, spec.t_anneal), jnp.float32)


def step_weights(step: Any, spec: ScheduleSpec) -> dict[str, Any]:
  """All loss weights at ``step`` as a dict of 0-d float32 arrays (for logging)."""
  return {
      "lambda_object_sds": lambda_object_sds(step, spec.period),
      "lambda_object_geo": spec.object_geo_scale * lambda_object_geo(
          step, spec.lambda_object_geo, spec.period, spec.shape_weights),
      "lambda_orient": lambda_orient(step, spec.orient_start, spec.orient_end,
                                     spec.orient_ramp_steps),
  }
