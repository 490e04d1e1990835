"""configs/hoi.py defaults (PAPER.md tables) and fail-fast validation."""
import importlib.util
import math
import pathlib

import pytest

from interfusion_jax import config_validation as cv

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(variant="paper"):
  spec = importlib.util.spec_from_file_location("hoi_cfg", ROOT / "configs" / "hoi.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_variants_validate(variant):
  cfg = load_config(variant)
  cv.validate(cfg)
  assert cfg.variant == variant


def test_paper_defaults_match_paper_md():
  c = load_config()
  assert (c.field.n_levels, c.field.n_features_per_level, c.field.log2_hashmap_size,
          c.field.base_resolution) == (16, 2, 19, 16)
  # Finest level resolution of the official grid is ~4096.
  assert round(16 * c.field.per_level_scale**15) in range(4090, 4100)
  assert (c.field.mlp_width, c.field.mlp_hidden_layers) == (64, 1)
  assert c.field.radius == 2.0 and c.field.density_bias == "blob_magic3d"
  assert (c.render.height, c.render.width, c.render.num_samples) == (64, 64, 512)
  assert c.occupancy.resolution == 32 and c.occupancy.ema_decay == 0.95
  assert c.occupancy.update_every == 16 and c.occupancy.warmup_steps == 256
  assert tuple(c.camera.distance_range) == (2.5, 3.0)
  assert tuple(c.camera.fovy_range_deg) == (40.0, 70.0)
  assert tuple(c.camera.elevation_range_deg) == (-10.0, 90.0)
  assert (c.guidance.t_min, c.guidance.t_max) == (0.02, 0.98)
  assert (c.loss.geo_delta, c.loss.geo_eta, c.loss.geo_max_points) == (0.2, 0.4, 80000)
  assert (c.optim.lr_field, c.optim.lr_background, c.optim.b1, c.optim.b2, c.optim.eps) == (
      0.01, 0.001, 0.9, 0.99, 1e-15)
  assert c.train.steps == 10000 and c.pose.top_k == 7
  assert c.camera.trace_every == 1000
  assert math.isclose(c.camera.object_scale, 0.7) and math.isclose(c.camera.head_scale, 0.2)


@pytest.mark.parametrize("key,value,needle", [
    ("render.height", 0, "config.render.height = 0"),
    ("render.width", -4, "config.render.width"),
    ("guidance.weighting", "dreamfusion", "config.guidance.weighting"),
    ("guidance.t_min", 0.0, "config.guidance.t_min"),
    ("guidance.t_max", 1.0, "config.guidance.t_max"),
    ("field.density_bias", "blob", "config.field.density_bias"),
    ("field.object_blob", "center", "config.field.object_blob"),
    ("guidance.builtin_object_sharpness", 0.5, "config.guidance.builtin_object_sharpness"),
    ("render.alpha_mode", "max", "config.render.alpha_mode"),
    ("prompt.human", "   ", "config.prompt.human is empty"),
    ("camera.fovy_range_deg", (70.0, 40.0), "config.camera.fovy_range_deg"),
    ("train.steps", 0, "config.train.steps"),
])
def test_bad_values_name_the_key(key, value, needle):
  cfg = load_config("smoke")
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(cv.ConfigError) as e:
    cv.validate(cfg)
  assert needle in str(e.value)


def test_t_range_order():
  cfg = load_config()
  cfg.guidance.t_min, cfg.guidance.t_max = 0.6, 0.5
  with pytest.raises(cv.ConfigError, match="t_min"):
    cv.validate(cfg)


def test_unknown_variant():
  with pytest.raises(ValueError, match="smoke"):
    load_config("nope")
