"""A real kill: SIGKILL the training CLI mid-run, rerun it, and get parameters
bit-identical to an uninterrupted run (issue 6, "a run resumes after a kill").

Uses the default route (empty guidance.weights_dir -> the built-in prior), so
it also covers README's first command on the smoke config.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from interfusion_jax.stage2 import loop

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")
STEPS, EVERY, KILL_AT = 40, 4, 8


def _cmd(workdir):
  return [sys.executable, "-m", "interfusion_jax.train", "--config=configs/hoi.py:smoke",
          f"--workdir={workdir}", f"--config.train.steps={STEPS}",
          f"--config.train.ckpt_every={EVERY}", "--config.train.val_every=1000",
          "--noprogress"]


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _saved_steps(workdir):
  ckpts = pathlib.Path(workdir) / "checkpoints"
  if not ckpts.is_dir():
    return []
  return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_identical(tmp_path):
  full = tmp_path / "full"
  done = subprocess.run(_cmd(full), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 900
  while time.time() < deadline and proc.poll() is None:
    if any(s >= KILL_AT for s in _saved_steps(killed)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert max(_saved_steps(killed)) < STEPS
  assert not (killed / "final" / "summary.json").exists()

  again = subprocess.run(_cmd(killed), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (killed / "final" / "summary.json").exists()

  _, _, a = loop.load_trained(str(full))
  _, _, b = loop.load_trained(str(killed))
  assert int(a.step) == int(b.step) == STEPS
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
