"""configs/hoi.py defaults (PAPER.md tables) and fail-fast validation."""
import importlib.util
import math
import pathlib

import pytest

from interfusion_jax.stage2 import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(variant="paper"):
  spec = importlib.util.spec_from_file_location("hoi_cfg", ROOT / "configs" / "hoi.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("variant", ["paper", "cpu", "smoke"])
def test_variants_validate(variant):
  cfg = load_config(variant)
  config_lib.parse(cfg)
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
  assert tuple(c.camera.elevation_range_deg) == (-30.0, 90.0)   # InterFusion's threestudio copy
  assert c.camera.elevation_sphere_prob == 0.5
  assert (c.camera.camera_perturb, c.camera.center_perturb, c.camera.up_perturb) == (0.1, 0.2, 0.02)
  assert c.shading.light_strategy == "magic3d" and tuple(c.shading.light_distance_range) == (0.8, 1.5)
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
    ("camera.elevation_sphere_prob", 1.5, "config.camera.elevation_sphere_prob = 1.5: must be in"),
    ("camera.camera_perturb", -0.1, "config.camera.camera_perturb = -0.1: must be >= 0"),
    ("camera.center_perturb", -0.2, "config.camera.center_perturb = -0.2: must be >= 0"),
    ("camera.up_perturb", -1.0, "config.camera.up_perturb = -1.0: must be >= 0"),
    ("shading.light_strategy", "sun", "config.shading.light_strategy = 'sun': unknown value"),
    ("train.steps", 0, "config.train.steps"),
    ("guidance.perp_neg_f_sb", (1.0, 0.5), "config.guidance.perp_neg_f_sb = (1.0, 0.5): must be three"),
    ("train.texture_size", 4, "config.train.texture_size = 4: must be 0 (off) or an integer >= 8"),
])
def test_bad_values_name_the_key(key, value, needle):
  cfg = load_config("smoke")
  section, name = key.split(".")
  cfg[section][name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.parse(cfg)
  assert needle in str(e.value)


def test_t_range_order():
  cfg = load_config()
  cfg.guidance.t_min, cfg.guidance.t_max = 0.6, 0.5
  with pytest.raises(config_lib.ConfigError, match="t_min"):
    config_lib.parse(cfg)


def test_perp_neg_needs_view_dependent_prompts():
  cfg = load_config("smoke")
  cfg.guidance.perp_neg, cfg.prompt.view_dependent = True, False
  with pytest.raises(config_lib.ConfigError, match="config.guidance.perp_neg = True needs "
                     "config.prompt.view_dependent = True"):
    config_lib.parse(cfg)


@pytest.mark.parametrize("variant", ["paper", "cpu", "quick", "smoke", "riding_a_bike",
                                     "riding_a_horse"])
def test_negative_prompt_and_perp_neg_are_off_as_in_the_release(variant):
  """The release: the empty unconditional prompt and no Perp-Neg; switched on, the
  curves are threestudio's defaults (prompt_processors/base.py)."""
  c = load_config(variant)
  run = config_lib.parse(c)
  assert run.prompt.negative == "" and config_lib.prompt_spec(run).negative == ""
  assert run.guidance.perp_neg is False and config_lib.perp_neg_spec(run) is None
  c.guidance.perp_neg = True
  pn = config_lib.perp_neg_spec(config_lib.parse(c))
  assert (pn.f_sb, pn.f_fsb, pn.f_fs, pn.f_sf) == (
      (1, 0.5, -0.606), (1, 0.5, 0.967), (4, 0.5, -2.426), (4, 0.5, -2.426))


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
  fields = set(config_lib.SCALARS) | {f"{name}.{f.name}" for name, cls in config_lib.SECTIONS.items()
                              for f in dataclasses.fields(cls)}
  keys = _flat_keys(cfg)
  assert keys - fields == set(), "config keys without a schema field"
  assert fields - keys == set(), "schema fields without a config key"
  assert set(config_lib.SECTIONS) == {f.name for f in dataclasses.fields(config_lib.RunConfig)} - set(config_lib.SCALARS)
  run = config_lib.parse(cfg)
  for key in keys:
    section, _, name = key.rpartition(".")
    got = getattr(getattr(run, section), name) if section else getattr(run, name)
    want = cfg[section][name] if section else cfg[name]
    assert got == (tuple(want) if isinstance(want, list) else want), key


def test_default_config_is_the_paper_variant():
  paper = load_config("paper")
  default = config_lib.default_config()
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
  spec = getattr(config_lib, fn)(config_lib.parse(load_config("paper")))
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
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.parse(cfg)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"config.{key} is not a config key. Nearest valid keys: config.")
  named = msg.split("Nearest valid keys: ")[1].rstrip(".").split(", ")
  assert len(named) == 3 and all(k[len("config."):] in config_lib.valid_keys() for k in named)
  if nearest:
    assert named[0] == nearest
  with pytest.raises(config_lib.ConfigError) as e2:     # the command-line check, before absl
    config_lib.check_overrides(["--config=configs/hoi.py:smoke", f"--config.{key}=3"])
  assert str(e2.value).startswith(f"config.{key} is not a config key. Nearest valid keys: ")
  assert "\n" not in str(e2.value)


def test_check_overrides_accepts_valid_keys():
  config_lib.check_overrides(["--config=configs/hoi.py:cpu", "--config.render.height=32",
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


# --- Official settings adopted for `paper`, kept out of the offline variants.


def test_paper_eval_and_test_video_are_official():
  """Release 45fe45d: riding_a_bike.yaml lines 12-13 (eval distance 2.0, fovy 70),
  threestudio data/uncond.py lines 32-33, 37 and 50 (512x512, 180 test views,
  elevation 10), diffuse shading in eval (materials/diffuse_with_point_light_material.py)."""
  c = load_config("paper")
  assert (c.camera.eval_elevation_deg, c.camera.eval_distance, c.camera.eval_fovy_deg) == (
      10.0, 2.0, 70.0)
  assert c.camera.eval_shading == "diffuse"
  assert (c.train.turntable_frames, c.train.final_resolution) == (180, 512)
  assert tuple(c.loss.shape_weights) == (0.001, 0.01, 0.1)


@pytest.mark.parametrize("variant,frames,size", [("cpu", 24, 128), ("quick", 24, 128),
                                                 ("smoke", 4, 0)])
def test_offline_variants_keep_their_settings(variant, frames, size):
  """The values cpu / quick / smoke had before the official ones were adopted
  (their bars, tests/test_evaluation_metrics_bars.py, were measured with them)."""
  c = load_config(variant)
  assert tuple(c.loss.shape_weights) == (0.01, 0.1, 0.1)
  assert c.loss.lambda_object_geo == "official"
  assert (c.camera.eval_elevation_deg, c.camera.eval_distance, c.camera.eval_fovy_deg) == (
      15.0, 2.0, 70.0)
  assert c.camera.eval_shading == "albedo"
  assert (c.train.turntable_frames, c.train.final_resolution) == (frames, size)


def _scenes_module():
  spec = importlib.util.spec_from_file_location("scenes_table", ROOT / "configs" / "scenes.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


# The eleven official scene configs (InterGen/configs/interfusion-if/*.yaml at
# 45fe45d), written out here by hand as the independent reference:
# (T_O, T_H, T_I, top_N rank, aug_rot, aug_trans, distance range, shape_weights).
_OFFICIAL = {
    "riding_a_bike": ("a bike", "a man with a full beard wearing a flannel shirt",
                      "riding a bike", 0, False, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "riding_a_horse": ("a horse", "a man in a paisley waistcoat and bowler hat",
                       "riding a horse", 1, False, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "riding_a_motorcycle": ("a motorcycle", "a man with blond hair wearing a brown leather jacket",
                            "riding a motorcycle", 4, False, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "sitting_on_a_chair": ("a chair", "a person in a military uniform", "sitting on a chair", 3,
                           True, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "sitting_on_a_sofa": ("a sofa", "an elderly man wearing a beige suit", "sitting on a sofa", 3,
                          True, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "playing_the_guitar": ("a guitar", "a man in a quilted gilet and moleskin trousers",
                           "playing the guitar", 1, False, False, (2.5, 3.0), (0.001, 0.01, 0.1)),
    "playing_the_saxophone": ("a saxophone", "a man in a velvet smoking jacket and silk pajama pants",
                              "playing the saxophone", 2, False, False, (2.5, 3.0), (0.01, 0.1, 0.1)),
    "reading_a_laptop": ("a laptop", "a security guard", "reading a laptop", 0, False, False,
                         (2.0, 2.7), (0.001, 0.01, 0.1)),
    "carrying_a_backpack": ("a backpack", "a person in a fleece pullover and hiking pants",
                            "carrying a backpack", 4, False, False, (2.5, 3.0), (0.01, 0.1, 0.1)),
    "jumping_a_skateboard": ("a skateboard", "a person in a cropped hoodie and bike shorts",
                             "jumping a skateboard", 1, False, True, (2.5, 3.0), (0.01, 0.1, 0.1)),
    "pushing_a_shopping_cart": ("a shopping cart", "a man in a puffer jacket and wool beanie",
                                "carrying a shopping cart", 1, False, False, (2.5, 3.0),
                                (0.001, 0.01, 0.1)),
}


def test_scene_table_equals_the_official_configs():
  table = _scenes_module().SCENES
  assert set(table) == set(_OFFICIAL)
  for name, (obj, human, inter, rank, rot, trans, dist, w) in _OFFICIAL.items():
    row = table[name]
    assert (row["object"], row["human"], row["interaction"], row["pose_rank"], row["aug_rot"],
            row["aug_trans"], tuple(row["distance_range"]), tuple(row["shape_weights"])) == (
                obj, human, inter, rank, rot, trans, dist, w), name
    assert not (row["aug_rot"] and row["aug_trans"])   # the release allows at most one


@pytest.mark.parametrize("name", sorted(_OFFICIAL))
def test_scene_preset_resolves_validates_and_equals_its_row(name):
  row = _scenes_module().SCENES[name]
  c = load_config(name)
  run = config_lib.parse(c)
  assert c.variant == name
  assert (run.prompt.human, run.prompt.object, run.prompt.interaction) == (
      row["human"], row["object"], row["interaction"])
  assert (run.pose.choose, run.pose.rank) == ("rank", row["pose_rank"])
  # The release's pose files: .../<name>/top_N.npy; only the shopping cart's names
  # another interaction than its prompt (pushing_a_shopping_cart.yaml:17 vs :67).
  assert run.pose.query == ("pushing a shopping cart" if name == "pushing_a_shopping_cart"
                            else "")
  assert config_lib.anchor_query(run).query == run.pose.query
  assert run.pose.rank < run.pose.top_k
  assert (run.body.aug_rot, run.body.aug_trans) == (row["aug_rot"], row["aug_trans"])
  assert run.camera.distance_range == tuple(row["distance_range"])
  assert run.loss.shape_weights == tuple(row["shape_weights"])
  assert config_lib.schedule_spec(run).shape_weights == tuple(row["shape_weights"])
  # Everything else is the paper variant's.
  paper = load_config("paper")
  set_by_row = {"prompt.human", "prompt.object", "prompt.interaction", "pose.choose", "pose.rank",
                "pose.query", "body.aug_rot", "body.aug_trans", "camera.distance_range", "loss.shape_weights",
                "variant"}
  for key in _flat_keys(paper) - set_by_row:
    section, _, k = key.rpartition(".")
    a = c[section][k] if section else c[k]
    b = paper[section][k] if section else paper[k]
    assert a == b, key


def test_scene_presets_run_by_name_on_the_command_line():
  config_lib.check_overrides(["--config=configs/hoi.py:riding_a_bike", "--config.loss.shape_weights",
                      "(0.01, 0.1, 0.1)"])
  with pytest.raises(ValueError, match="riding_a_bike"):
    load_config("riding_a_unicycle")


def test_paper_follows_riding_a_bike_and_only_offline_variants_default_to_builtin():
  """paper's T_H is riding_a_bike.yaml's (line 64: "a photo of a man with a full beard
  wearing a flannel shirt, 8K, HD"); the offline variants keep the default run's prompt
  and the built-in prior, paper and the presets have no guidance without weights."""
  assert load_config("paper").prompt.human == "a man with a full beard wearing a flannel shirt"
  for v in ("cpu", "quick", "smoke"):
    c = load_config(v)
    assert (c.guidance.backend, c.prompt.human) == ("builtin", "a man wearing a WORLD lettered T-shirt")
  for v in ["paper"] + sorted(_OFFICIAL):
    assert load_config(v).guidance.backend == "auto", v
  run = config_lib.parse(load_config("paper"))
  assert run.body.keep_root_orient is False and run.pose.query == ""
