"""Drills on the run lifecycle, as a careful user or an adversary would run them
(docs/training.md, "What survives what"): a second process on a locked
workdir, a resume under another config, a corrupt newest checkpoint, SIGTERM
mid-run, a run whose steps are all skipped.

Each drill asserts the exit code (or the exception a command line turns into
one), the one-line message, and that nothing of the first run was lost: its
checkpoints and config.json are byte for byte what they were. One smoke run of
the real command line (module fixture) is copied for each drill.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from blob_scene import _config, _frozen, _spec
from interfusion_jax import export as export_cli
from interfusion_jax import fileio
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib
from interfusion_jax.stage2 import sweep as sweep_lib
from scene_rows import PROMPTS, _base, _jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")
# The smoke run of every drill: 12 steps, checkpoints at 4, 8, 12; small final outputs.
SMOKE = ["--config=configs/hoi.py:smoke", "--noprogress", "--config.train.val_every=1000",
         "--config.train.final_resolution=8", "--config.train.turntable_frames=2",
         "--config.train.mesh_resolution=8"]


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _train(workdir, *extra, timeout=600):
  return subprocess.run([sys.executable, "-m", "interfusion_jax.train", f"--workdir={workdir}",
                         *SMOKE, *extra], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=timeout)


def _last_line(text):
  lines = [l for l in text.splitlines() if l.strip()]
  return lines[-1] if lines else ""


def _snapshot(workdir, under=("checkpoints",), files=("config.json",)):
  """{relative path: sha256} of config.json and every file under checkpoints/."""
  root = pathlib.Path(workdir)
  paths = [root / f for f in files] + [p for d in under for p in sorted((root / d).rglob("*"))
                                       if p.is_file()]
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  work = tmp_path_factory.mktemp("drills") / "run"
  done = _train(work)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _last_line(done.stdout).startswith("Done:")
  return work


@pytest.fixture
def run_copy(trained, tmp_path):
  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


def test_a_second_process_on_a_locked_workdir_stops_at_once(run_copy, tmp_path):
  """Outcome 1: the lock names its holder, dies with it (SIGKILL), and a sweep locks
  its own directory and each of its scenes."""
  before = _snapshot(run_copy)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from interfusion_jax import fileio\n"
       "with fileio.hold_lock(sys.argv[1], 'drill holder'):\n"
       "  print('locked', flush=True); time.sleep(600)", str(run_copy)],
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.perf_counter()
    second = _train(run_copy, "--config.seed=1")
    assert second.returncode == 2, second.stderr[-2000:]
    line = _last_line(second.stderr)
    assert line.startswith("error: ") and f"pid {holder.pid} on host" in line, line
    assert "drill holder" in line and "started" in line
    assert "Traceback" not in second.stderr
    assert time.perf_counter() - t0 < 120      # nothing trained or compiled
  finally:
    holder.kill()
    holder.wait(timeout=30)
  assert holder.returncode == -signal.SIGKILL
  assert _snapshot(run_copy) == before
  with fileio.hold_lock(run_copy, "after the holder's SIGKILL"):   # no stale lock
    pass
  # A sweep: a scene directory held by another process stops it before anything loads.
  prompts = _jsonl(tmp_path, [dict(p, name=f"s{i}") for i, p in enumerate(PROMPTS)])
  with fileio.hold_lock(tmp_path / "sweep" / "s1", "a train on a sweep scene"):
    with pytest.raises(setup_lib.TrainSetupError, match="in use by another process"):
      sweep_lib.run_sweep(_base(), prompts, tmp_path / "sweep", progress=False)
  assert not (tmp_path / "sweep" / "s0" / "config.json").exists()
  with fileio.hold_lock(tmp_path / "sweep", "another sweep"):
    with pytest.raises(setup_lib.TrainSetupError, match="another sweep"):
      sweep_lib.run_sweep(_base(), prompts, tmp_path / "sweep", progress=False)


def test_resume_under_another_config_is_refused(run_copy):
  """Outcome 2: differing keys outside the allow-list are listed; nothing is written."""
  before = _snapshot(run_copy)
  proc = _train(run_copy, "--config.field.mlp_width=32", "--config.prompt.object=a chair",
                "--config.train.steps=20")   # train.steps alone would be allowed
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = _last_line(proc.stderr)
  assert line.startswith("error: ") and "Traceback" not in proc.stderr
  assert "field.mlp_width (16 -> 32)" in line and "prompt.object" in line, line
  assert "train.steps" not in line
  assert "old values" in line and "new --workdir" in line
  assert _snapshot(run_copy) == before
  assert set(run_io.RESUMABLE_CHANGES) >= {"train.steps", "train.log_every"}


def test_a_corrupt_checkpoint_is_moved_aside_and_written_again(run_copy, capsys):
  """Outcome 3 (+ item 8: cumulative training time, no Orbax "Event loop is closed"):
  the corrupt newest step goes to checkpoints/corrupt-12/, the run resumes from 8,
  writes 12 again, and export says which step it uses."""
  keep = _snapshot(run_copy, under=("checkpoints/4", "checkpoints/8"))
  data = sorted((run_copy / "checkpoints" / "12").rglob("d/*"))
  assert data
  for f in data:
    f.write_bytes(f.read_bytes()[:10])
  corrupt = _snapshot(run_copy, under=("checkpoints/12",), files=())
  t8 = run_io.read_train_time(run_io.RunPaths(run_copy), 8)
  assert t8 > 0
  shutil.rmtree(run_copy / "final")

  proc = _train(run_copy)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Resuming from step 8" in proc.stderr and "moved aside" in proc.stderr
  assert "Event loop is closed" not in proc.stderr
  assert _last_line(proc.stdout).startswith("Done:")
  steps = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
  assert steps == ["12", "4", "8", "corrupt-12"]
  assert _snapshot(run_copy, under=("checkpoints/corrupt-12",), files=()) == {
      k.replace("checkpoints/12", "checkpoints/corrupt-12"): v for k, v in corrupt.items()}
  assert _snapshot(run_copy, under=("checkpoints/4", "checkpoints/8")) == keep
  _, _, state = loop.load_trained(str(run_copy))
  assert int(state.step) == 12                     # the rewritten step restores
  summary = json.loads((run_copy / "final" / "summary.json").read_text())
  assert summary["wall_time_s"] > t8 + 0.5 * summary["session_wall_time_s"]
  assert summary["steps_per_second"] == pytest.approx(12 / summary["wall_time_s"])

  assert export_cli.main([f"--workdir={run_copy}", "--resolution=6",
                          f"--out={run_copy / 'exported'}"]) == 0
  assert f"Using checkpoint step 12 of {run_copy / 'checkpoints'}." in capsys.readouterr().out


@pytest.mark.slow
def test_sigterm_finishes_the_step_and_writes_a_checkpoint(tmp_path):
  """Outcome 6: SIGTERM mid-run (no checkpoint due for 1000 steps) ends with a
  checkpoint at the step reached, one line, exit 130 and no final/ outputs.
  (Same step program as test_train_kill.py, steps=40, so the two share one
  compilation through the persistent cache; slow: that compilation.)"""
  work = tmp_path / "run"
  proc = subprocess.Popen([sys.executable, "-m", "interfusion_jax.train", f"--workdir={work}",
                           *SMOKE, "--config.train.steps=40", "--config.train.ckpt_every=1000"],
                          cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if (work / "metrics.jsonl").is_file() and (work / "metrics.jsonl").stat().st_size:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 130, err[-3000:]
  line = _last_line(err)
  assert line.startswith("Interrupted by SIGTERM at step ") and "Run the same command" in line
  at = int(line.split("at step ")[1].split(";")[0])
  assert 2 <= at < 40
  assert ckpt_lib.latest_step(work / "checkpoints") == at
  assert sorted(p.name for p in (work / "checkpoints").iterdir()) == [str(at)]
  assert [r["step"] for r in run_io.read_metrics(work / "metrics.jsonl")][-1] <= at
  assert not any((work / "final").iterdir()) and "Done" not in out
  assert not [p for p in work.iterdir() if p.name.startswith(".final")]


def test_a_run_with_all_steps_skipped_fails(tmp_path):
  """Outcome 5 (second half): every step non-finite but never max_consecutive_skips
  in a row: the run fails at its last step with a clear message (train: exit 2),
  a sweep scene is marked failed; no final outputs, the checkpoints finite."""
  cfg = _config()
  cfg.train.max_consecutive_skips = 1000
  spec = _spec()
  scene = setup_lib.Scene(spec, _frozen(nan_anchor=True), None)
  paths = run_io.prepare_workdir(tmp_path / "run")
  group = loop.single_group(scene, config_lib.parse(cfg), paths)
  fresh = step_lib.init_state(jax.random.PRNGKey(0), spec)
  steps = int(cfg.train.steps)
  with pytest.warns(UserWarning, match="non-finite"):
    with pytest.raises(loop.TooManySkipsError,
                       match=rf"^{steps} of {steps} steps had a non-finite .* limit is 25%"):
      loop.train_loop([fresh], group, progress=False)
  assert not paths.summary.exists()
  assert ckpt_lib.latest_step(paths.checkpoints) == steps
  in_memory = loop.single_group(scene, config_lib.parse(cfg), None)
  with pytest.warns(UserWarning):
    (_, info) = loop.train_loop([fresh], in_memory, progress=False, isolate_failures=True)
  assert info["failed"] == [True] and "were skipped" in info["failure"][0]
