"""stage2/setup.py: the object's starting place and the persistent compilation cache.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import setup as setup_lib


def test_object_origin_puts_the_named_object_where_the_prior_places_it():
  import types
  import warnings as _w
  from interfusion_jax.pose import library
  from interfusion_jax.prior import mannequin
  poses, orients, labels, _ = library.library_arrays()
  i = labels.index("sitting on a chair")
  body = mannequin.posed_mannequin(poses[i], orients[i])
  anchor = types.SimpleNamespace(vertices=body.vertices, faces=body.faces, joints=body.joints)
  cfg = hoi.get_config("cpu")
  assert cfg.field.object_blob == "placement"
  assert hoi.get_config("paper").field.object_blob == "origin"
  cfg.prompt.object = "a blue chair"
  o = setup_lib.object_origin(cfg, anchor)
  pelvis = np.asarray(body.joints)[0]
  # "under the pelvis": below it, within a chair's half-depth horizontally.
  assert o.shape == (3,) and o[2] < pelvis[2] - 0.1
  assert np.linalg.norm(o[:2] - pelvis[:2]) < 0.4
  cfg.prompt.object = "a spaceship"
  with pytest.warns(UserWarning, match="names no object of the built-in library"):
    assert setup_lib.object_origin(cfg, anchor) is None
  cfg.field.object_blob = "origin"
  with _w.catch_warnings():
    _w.simplefilter("error")
    assert setup_lib.object_origin(cfg, anchor) is None


def test_compilation_cache_keeps_small_programs(tmp_path):
  """enable_compilation_cache caches every program (JAX's default skips those that
  compile in under 1 s): a tiny jitted function leaves an entry, and a second
  process loads it instead of compiling. Subprocesses: the cache is set up once
  per process."""
  code = ("import jax, jax.numpy as jnp\n"
          "from interfusion_jax.stage2 import setup\n"
          "setup.enable_compilation_cache()\n"
          "print(float(jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.float32(0.5))))\n")
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
             JAX_LOG_COMPILES="1", XLA_FLAGS="")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = [subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                         text=True, timeout=120, check=True) for _ in range(2)]
  expected = math.sin(0.5) * 3.0 + 1.0
  assert all(abs(float(r.stdout.split()[-1]) - expected) < 1e-6 for r in runs)
  assert list((tmp_path / "cache").glob("jit__lambda*")), "no cache entry for a small program"
  assert "cache hit" not in runs[0].stderr and "cache hit for 'jit__lambda" in runs[1].stderr


# --- No silent stand-in (guidance), the release's anchor orientation and pose query. ---

from interfusion_jax.pose import anchor as pose_anchor  # noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402


@pytest.mark.parametrize("variant", ["paper"] + sorted(hoi.SCENES))
def test_paper_and_presets_without_weights_stop_in_one_line(variant):
  run = config_lib.parse(hoi.get_config(variant))
  with pytest.raises(setup_lib.TrainSetupError) as e:
    setup_lib.load_guidance_and_text(run)
  msg = str(e.value)
  assert "\n" not in msg
  assert "--config.guidance.weights_dir=" in msg and "--config.guidance.backend=builtin" in msg


def test_builtin_and_weights_together_stop_and_explicit_builtin_runs():
  run = config_lib.override(config_lib.parse(hoi.get_config("smoke")),
                            {"guidance.weights_dir": "/models/if"})
  with pytest.raises(setup_lib.TrainSetupError, match="backend=auto"):
    setup_lib.load_guidance_and_text(run)
  run = config_lib.override(config_lib.parse(hoi.get_config("riding_a_bike")),
                            {"guidance.backend": "builtin"})
  gspec, _, table = setup_lib.load_guidance_and_text(run)
  assert gspec.kind == "builtin" and "interaction" in table


def test_train_cli_stops_a_preset_without_weights_before_compiling(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1", XLA_FLAGS="",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-m", "interfusion_jax.train",
                         "--config=configs/hoi.py:riding_a_bike", f"--workdir={tmp_path / 'w'}"],
                        cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "guidance.weights_dir" in errors[0], proc.stderr[-2000:]
  assert "Compiling" not in proc.stderr and "Finished XLA compilation" not in proc.stderr


LYING = np.array([np.pi / 2, 0.0, 0.0], np.float32)   # +90 deg about SMPL-X x: lying down


@pytest.fixture(scope="module")
def lying_anchor_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("anchor") / "lying.npz"
  pose_anchor.save_anchor(path, pose_anchor.AnchorPose(np.zeros(63, np.float32), LYING, {}))
  return path


@pytest.mark.parametrize("keep", [False, True])
def test_anchor_is_upright_unless_keep_root_orient(lying_anchor_file, tmp_path, keep):
  """The release poses every anchor with global_orient 0 (interfusion.py:44-45): a pose
  carrying +90 deg still stands (head 0.5 m above the pelvis along the scene's up axis,
  SMPL-X y -> scene z); body.keep_root_orient lays it down."""
  run = config_lib.override(config_lib.parse(hoi.get_config("smoke")), {
      "pose.anchor_file": str(lying_anchor_file), "body.keep_root_orient": keep,
      "body.cache_dir": str(tmp_path / "anchors")})
  anchor, pose = setup_lib.prepare_anchor(run, None)
  np.testing.assert_allclose(pose.global_orient, LYING)     # the pose is kept as given
  j = np.asarray(anchor.joints)
  rise = float(j[15, 2] - j[0, 2])                           # head joint 15 over pelvis 0
  if keep:
    assert abs(rise) < 0.15, rise
  else:
    assert rise > 0.4, rise


def test_pose_query_replaces_the_interaction_for_retrieval():
  base = config_lib.parse(hoi.get_config("pushing_a_shopping_cart"))
  assert base.prompt.interaction == "carrying a shopping cart"
  got = setup_lib.load_anchor_pose(base)
  want = setup_lib.load_anchor_pose(config_lib.override(
      base, {"pose.query": "", "prompt.interaction": "pushing a shopping cart"}))
  assert got.meta["text"] == "pushing a shopping cart"
  np.testing.assert_array_equal(got.body_pose, want.body_pose)
  plain = setup_lib.load_anchor_pose(config_lib.override(base, {"pose.query": ""}))
  assert plain.meta["text"] == "carrying a shopping cart"
