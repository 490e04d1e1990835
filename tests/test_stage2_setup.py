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
