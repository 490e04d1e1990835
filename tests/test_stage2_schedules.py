"""Schedules equal their PAPER.md definitions at boundary steps."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import schedules

BOUNDARY_STEPS = [0, 1, 999, 1000, 1001, 1999, 2000, 2001, 2500, 4999, 5000, 5001,
                  7999, 8000, 8001, 8999, 9000, 9001, 9999, 10000]


def _paper_lambda1(step):
  return math.floor(step / 1000) / 10


def _paper_lambda2(step, ends, shoulders, middle):
  # Literal transcription of PAPER.md's if/elif chain.
  if step < 1000 or step > 9000:
    return ends
  if step < 2000 or step > 8000:
    return shoulders
  return middle


@pytest.mark.parametrize("step", BOUNDARY_STEPS)
def test_lambda1(step):
  assert float(schedules.lambda_object_sds(step)) == pytest.approx(_paper_lambda1(step))


@pytest.mark.parametrize("step", BOUNDARY_STEPS)
def test_lambda2_official_and_horse(step):
  # official levels (0.001, 0.01, 0.1) by default; "horse" is that fixed level set.
  assert float(schedules.lambda_object_geo(step)) == pytest.approx(
      _paper_lambda2(step, 0.001, 0.01, 0.1))
  assert float(schedules.lambda_object_geo(step, "horse")) == pytest.approx(
      _paper_lambda2(step, 0.001, 0.01, 0.1))
  assert float(schedules.lambda_object_geo(step, "horse", shape_weights=(0.01, 0.1, 0.1))) == (
      pytest.approx(_paper_lambda2(step, 0.001, 0.01, 0.1)))


@pytest.mark.parametrize("levels", [(0.001, 0.01, 0.1), (0.01, 0.1, 0.1), (0.3, 0.02, 0.5)])
@pytest.mark.parametrize("step", BOUNDARY_STEPS)
def test_lambda2_follows_shape_weights(step, levels):
  """lambda2 with any levels equals the closed form, eagerly, jitted and via the config."""
  assert float(schedules.lambda_object_geo(step, shape_weights=levels)) == pytest.approx(
      _paper_lambda2(step, *levels))
  c = hoi.get_config("paper")
  c.loss.shape_weights = levels
  spec = config_lib.schedule_spec(config_lib.parse(c))
  assert spec.shape_weights == levels
  traced = jax.jit(lambda s: schedules.step_weights(s, spec))(jnp.asarray(step, jnp.int32))
  assert float(traced["lambda_object_geo"]) == pytest.approx(_paper_lambda2(step, *levels))


@pytest.mark.parametrize("variant,levels,period", [
    ("paper", (0.001, 0.01, 0.1), 1000),   # official shape_weights
    ("cpu", (0.01, 0.1, 0.1), 40),         # the level set the offline variants keep
    ("quick", (0.01, 0.1, 0.1), 40),
    ("smoke", (0.01, 0.1, 0.1), 1000),
])
def test_variant_lambda2_levels(variant, levels, period):
  c = hoi.get_config(variant)
  assert tuple(c.loss.shape_weights) == levels and c.loss.lambda_object_geo == "official"
  spec = config_lib.schedule_spec(config_lib.parse(c))
  scale = c.loss.lambda_object_geo_scale
  for step in range(0, 10 * period + 1, max(1, period // 8)):
    w = schedules.step_weights(jnp.asarray(step), spec)
    assert float(w["lambda_object_geo"]) == pytest.approx(
        scale * _paper_lambda2(step * 1000 // period, *levels)), step


def test_shape_weights_validation():
  for bad in [(0.1, 0.2), (0.1, -0.2, 0.3), ("a", 0.1, 0.1)]:
    c = hoi.get_config("smoke")
    c.loss.shape_weights = bad
    with pytest.raises(config_lib.ConfigError, match="config.loss.shape_weights"):
      config_lib.parse(c)


def test_lambda2_bad_variant():
  with pytest.raises(ValueError, match="lambda_object_geo"):
    schedules.lambda_object_geo(0, "zebra")


@pytest.mark.parametrize("step", BOUNDARY_STEPS)
def test_orient_ramp(step):
  expected = 10.0 + (1000.0 - 10.0) * min(step, 5000) / 5000
  assert float(schedules.lambda_orient(step)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("step", BOUNDARY_STEPS)
def test_ambient_and_switches(step):
  assert bool(schedules.ambient_only(step)) == (step < 2001)
  assert schedules.trace_due(step) == (step % 1000 == 0)


def test_traced_equals_python():
  spec = config_lib.schedule_spec(config_lib.parse(hoi.get_config()))
  steps = jnp.asarray(BOUNDARY_STEPS, jnp.int32)
  traced = jax.jit(jax.vmap(lambda s: schedules.step_weights(s, spec)))(steps)
  for i, s in enumerate(BOUNDARY_STEPS):
    eager = schedules.step_weights(s, spec)
    for k in eager:
      np.testing.assert_allclose(traced[k][i], eager[k], rtol=1e-6)


def test_timestep_anneal():
  cfg = hoi.get_config()
  run = config_lib.parse(cfg)
  spec, t_max = config_lib.schedule_spec(run), config_lib.guidance_options(run).t_max
  assert float(schedules.max_timestep_fraction(7000, spec, t_max)) == pytest.approx(0.98)
  lin = spec.__class__(**{**spec.__dict__, "t_anneal": "linear"})
  assert float(schedules.max_timestep_fraction(5000, lin, t_max)) == pytest.approx(0.98 + (0.5 - 0.98) * 0.5)
  hifa = spec.__class__(**{**spec.__dict__, "t_anneal": "hifa_sqrt"})
  assert float(schedules.max_timestep_fraction(2500, hifa, t_max)) == pytest.approx(
      0.98 + (0.5 - 0.98) * math.sqrt(0.25), rel=1e-6)


@pytest.mark.parametrize("step", [0, 39, 40, 41, 79, 80, 200, 320, 321, 360, 361, 399])
def test_schedule_period_compresses_lambda1_lambda2(step):
  """loss.schedule_period = 40 maps step s to the official schedule at s * 1000 / 40."""
  assert float(schedules.lambda_object_sds(step, period=40)) == pytest.approx(
      math.floor(step / 40) / 10)
  assert float(schedules.lambda_object_geo(step, "horse", period=40)) == pytest.approx(
      _paper_lambda2(step * 25, 0.001, 0.01, 0.1))
  c = hoi.get_config("paper")
  assert c.loss.schedule_period == 1000           # the official default is untouched
  c.loss.schedule_period = 40
  spec = config_lib.schedule_spec(config_lib.parse(c))
  w = schedules.step_weights(jnp.asarray(step), spec)
  assert float(w["lambda_object_sds"]) == pytest.approx(math.floor(step / 40) / 10)


@pytest.mark.parametrize("step", [0, 999, 1000, 5000, 9500])
def test_object_geo_scale_multiplies_lambda2(step):
  c = hoi.get_config("paper")
  assert c.loss.lambda_object_geo_scale == 1.0    # official: no scaling
  base = schedules.step_weights(jnp.asarray(step), config_lib.schedule_spec(config_lib.parse(c)))
  c.loss.lambda_object_geo_scale = 4.0
  w = schedules.step_weights(jnp.asarray(step), config_lib.schedule_spec(config_lib.parse(c)))
  assert float(base["lambda_object_geo"]) == pytest.approx(_paper_lambda2(step, 0.001, 0.01, 0.1))
  assert float(w["lambda_object_geo"]) == pytest.approx(4.0 * _paper_lambda2(step, 0.001, 0.01, 0.1))
  assert float(w["lambda_object_sds"]) == float(base["lambda_object_sds"])
