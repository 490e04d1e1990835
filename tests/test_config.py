"""configs/hoi.py defaults (PAPER.md tables) and fail-fast validation."""
import importlib.util
import math
import pathlib

import pytest

from interfusion_jax.stage2 import config as cv

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


# --- One schema (stage2/config.py): keys <-> fields, derived specs, unknown keys.

VARIANTS = ["paper", "cpu", "quick", "smoke"]


def _flat_keys(c, prefix=""):
  keys = set()
  for k in c.keys():
    if hasattr(c[k], "keys"):
      keys |= _flat_keys(c[k], f"{prefix}{k}.")
    else:
      keys.add(prefix + k)
  return keys


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_config_key_is_a_schema_field_and_back(variant):
  import dataclasses
  cfg = load_config(variant)
  fields = set(cv.SCALARS) | {f"{name}.{f.name}" for name, cls in cv.SECTIONS.items()
                              for f in dataclasses.fields(cls)}
  keys = _flat_keys(cfg)
  assert keys - fields == set(), "config keys without a schema field"
  assert fields - keys == set(), "schema fields without a config key"
  assert set(cv.SECTIONS) == {f.name for f in dataclasses.fields(cv.RunConfig)} - set(cv.SCALARS)
  run = cv.parse(cfg)
  for key in keys:
    section, _, name = key.rpartition(".")
    got = getattr(getattr(run, section), name) if section else getattr(run, name)
    want = cfg[section][name] if section else cfg[name]
    assert got == (tuple(want) if isinstance(want, list) else want), key


def test_default_config_is_the_paper_variant():
  paper = load_config("paper")
  default = cv.default_config()
  assert _flat_keys(paper) == _flat_keys(default) | {"variant"}
  for key in _flat_keys(default):
    section, _, name = key.rpartition(".")
    a = paper[section][name] if section else paper[key]
    b = default[section][name] if section else default[key]
    assert a == b and type(a) is type(b), key


SPEC_FNS = ["hashgrid_spec", "field_spec", "background_spec", "render_spec", "shading_spec",
            "camera_spec", "occupancy_spec", "schedule_spec", "prompt_spec", "anchor_spec"]


@pytest.mark.parametrize("fn", SPEC_FNS)
def test_paper_specs_equal_the_library_defaults(fn):
  """No drift: every library-spec setting with a default gets that default from the paper config."""
  import dataclasses
  spec = getattr(cv, fn)(cv.parse(load_config("paper")))
  drift = {f.name: (getattr(spec, f.name), f.default) for f in dataclasses.fields(spec)
           if f.default is not dataclasses.MISSING and getattr(spec, f.name) != f.default}
  assert drift == {}


def test_hashgrid_backend_default_agrees():
  from interfusion_jax.nerf import hashgrid
  assert load_config().field.hashgrid_backend == hashgrid.HashGridSpec().backend == "auto"


@pytest.mark.parametrize("key,nearest", [
    ("render.heigth", "config.render.height"),
    ("nosuch.key", None),
    ("train.step", "config.train.steps"),
    ("render.radius", "config.field.radius"),
])
def test_unknown_key_names_the_nearest_valid_keys(key, nearest):
  section, name = key.split(".")
  cfg = load_config("smoke")
  if section in cfg:
    cfg[section][name] = 3
  else:
    cfg[section] = {name: 3}
  with pytest.raises(cv.ConfigError) as e:
    cv.parse(cfg)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"config.{key} is not a config key. Nearest valid keys: config.")
  named = msg.split("Nearest valid keys: ")[1].rstrip(".").split(", ")
  assert len(named) == 3 and all(k[len("config."):] in cv.valid_keys() for k in named)
  if nearest:
    assert named[0] == nearest
  with pytest.raises(cv.ConfigError) as e2:     # the command-line check, before absl
    cv.check_overrides(["--config=configs/hoi.py:smoke", f"--config.{key}=3"])
  assert str(e2.value).startswith(f"config.{key} is not a config key. Nearest valid keys: ")
  assert "\n" not in str(e2.value)


def test_check_overrides_accepts_valid_keys():
  cv.check_overrides(["--config=configs/hoi.py:cpu", "--config.render.height=32",
                      "--config.seed", "3", "--noconfig.render.skip_empty", "--workdir=x",
                      "--", "--config.not.parsed"])


def test_unknown_override_on_the_train_command_line_is_one_line(tmp_path):
  """``python -m interfusion_jax.train ... --config.render.heigth=3``: one line, exit 2."""
  import os
  import subprocess
  import sys
  proc = subprocess.run(
      [sys.executable, "-m", "interfusion_jax.train", "--config=configs/hoi.py:smoke",
       "--config.render.heigth=3", f"--workdir={tmp_path / 'run'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  out = (proc.stdout + proc.stderr).strip()
  assert proc.returncode == 2, out
  assert "Traceback" not in out
  assert out.splitlines() == [out]
  assert out.startswith("error: config.render.heigth is not a config key. "
                        "Nearest valid keys: config.render.height")
  assert not (tmp_path / "run").exists()
