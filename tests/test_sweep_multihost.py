"""A sweep over two processes (jax.distributed on CPU, gloo; 2 host devices each) as
``python -m interfusion_jax.sweep`` runs it on two hosts, with a kill in the middle:
4 smoke scenes. Process 1 is SIGKILLed once it has set up its scenes (its host
dies while it compiles; process 0 goes on alone) and process 0 right after its
first checkpoint; then the same command runs again on both and finishes. So
process 1's scenes start again from nothing and process 0's resume from step 2.
Checked: every run directory and the index, equality with single runs within
1e-5, and bit-identical final parameters against an uninterrupted sweep of the
same layout.

The references run in a process of its own (tests/sweep_reference.py, 2 host
devices) beside the sweep: the single runs during the first launch, the
uninterrupted sweep groups during the second. A process's group is one compiled
program on its 2 local devices whether it runs under jax.distributed or not, so
the reference is the computation the sweep would have done without the kill, and
with the same device count its program has process 0's persistent-cache key
(loaded, not compiled). JAX writes that cache from process 0 only, so process 1
compiles its program again when it restarts.

Every process compiles for speed of compilation (``FAST_COMPILE``: LLVM -O0
without its expensive passes, XLA's older CPU fusion emitters): the smoke step
compiles about 3x faster and runs about 3x slower, which pays for 4 steps. The
comparisons stay like for like because all programs of the test use the flags.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import run_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")
# XLA flags of every process: compile fast (4 steps run; see the module docstring).
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
STEPS, EVERY = 4, 2
COMPARE_AT = 2      # the single runs are compared with the sweep at this step
OVERRIDES = {"train.steps": STEPS, "train.ckpt_every": EVERY, "train.val_every": 1000,
             "train.keep_checkpoints": STEPS // EVERY,
             "train.log_every": 2, "train.turntable_frames": 2, "train.mesh_resolution": 8}
# Four colour scenes of the built-in prior (configs/sweeps/colors4.jsonl).
SCENES = [json.loads(line) for line in
          (ROOT / "configs" / "sweeps" / "colors4.jsonl").read_text().splitlines()]
GROUPS = ([0, 2], [1, 3])   # each process's scenes (round-robin assignment)


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env():
  """Every process of the test: CPU, 2 host devices, one persistent compilation cache."""
  return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=CACHE,
              XLA_FLAGS="--xla_force_host_platform_device_count=2 " + FAST_COMPILE)


def _popen(args, log=None):
  """A Python subprocess of the test; its output is piped, or written to ``log``."""
  out = open(log, "w") if log else subprocess.PIPE   # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(),
                          stdout=out, stderr=subprocess.STDOUT, text=True)
  proc.log = log
  return proc


def _launch(prompts, workdir):
  port = _free_port()
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  return [_popen(["-m", "interfusion_jax.sweep", "--config=configs/hoi.py:smoke",
                  f"--prompts={prompts}", f"--workdir={workdir}", *flags,
                  f"--coordinator_address=localhost:{port}", "--num_processes=2",
                  f"--process_id={i}"])
          for i in range(2)]


def _wait(procs, timeout=900):
  outs = [p.communicate(timeout=timeout)[0] or "" for p in procs]
  for p, out in zip(procs, outs):
    if p.returncode and not out and p.stdout is None:   # its output went to a log file
      out = pathlib.Path(p.log).read_text()
    assert p.returncode == 0, out[-3000:]
  return outs


def _saved(workdir, names):
  """The finished checkpoint steps of the scenes ``names``."""
  return [int(p.name) for n in names
          for p in (pathlib.Path(workdir) / n / "checkpoints").glob("*") if p.name.isdigit()]


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]


def _reference(out_dir, kind, name):
  """(step, leaves) a reference of tests/sweep_reference.py wrote."""
  with np.load(out_dir / f"{kind}_{name}.npz") as z:
    return int(z["step"]), [z[f"leaf_{i}"] for i in range(len(z.files) - 1)]


def _params_at(workdir, name, step):
  """The scene's parameters in its checkpoint at ``step`` (all are kept)."""
  _, _, latest = loop.load_trained(str(pathlib.Path(workdir) / name))
  manager = ckpt_lib.make_manager(pathlib.Path(workdir) / name / "checkpoints", STEPS // EVERY)
  got, state = ckpt_lib.restore_latest(manager, latest, max_step=step)
  assert got == int(state.step) == step
  return _leaves(state)


@pytest.mark.slow
def test_two_processes_killed_and_resumed_index_equivalence_and_bitwise(tmp_path, request):
  prompts = tmp_path / "scenes.jsonl"
  prompts.write_text("".join(json.dumps(s) + "\n" for s in SCENES))
  work = tmp_path / "sweep"

  refs = tmp_path / "refs"
  spec = tmp_path / "refs.json"
  spec.write_text(json.dumps({"overrides": OVERRIDES, "scenes": SCENES,
                              "groups": GROUPS, "compare_at": COMPARE_AT}))
  # The references: the single runs at once, beside the first launch; the
  # uninterrupted groups once process 0 has compiled (and cached) its group
  # program, i.e. after its first checkpoint. (Output to a file: nothing reads a
  # pipe until the end.)
  go = tmp_path / "go"
  helper = _popen(["tests/sweep_reference.py", str(spec), str(refs), str(go)],
                  log=tmp_path / "references.log")
  request.addfinalizer(lambda: helper.poll() is None and helper.kill())

  # Process 1 dies once its scenes are set up (config.json is written just before
  # the step compiles); process 0 goes on and dies right after its first
  # checkpoint. Then the same command runs again.
  procs = _launch(prompts, work)
  mine = [[SCENES[i]["name"] for i in g] for g in GROUPS]
  deadline = time.time() + 900
  killed_1 = False
  while time.time() < deadline and procs[0].poll() is None:
    if not killed_1 and all((work / n / "config.json").is_file() for n in mine[1]):
      procs[1].send_signal(signal.SIGKILL)
      killed_1 = True
    if any(EVERY <= s < STEPS for s in _saved(work, mine[0])):
      procs[0].send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  for p in procs:
    p.wait(timeout=60)
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2, \
      f"the sweep ended before the kill: {procs[0].communicate()[0][-3000:]}"
  assert not _saved(work, mine[1]), "process 1 checkpointed before it was killed"
  assert not any((work / s["name"] / "final" / "summary.json").exists() for s in SCENES)

  # The sweep resumes while the uninterrupted groups are trained beside it.
  go.touch()
  outs = _wait(_launch(prompts, work) + [helper])
  assert "Sweep: 4 done" in outs[0] and "Sweep:" not in outs[1]   # process 0 logs
  # One progress bar, process 0's, counts both processes' scenes x steps.
  assert f"| {4 * STEPS}/{4 * STEPS} [" in outs[0] and "train:" not in outs[1], outs[0][-2000:]

  # Every run directory is a single run's; the index names them all.
  for s in SCENES:
    paths = run_io.RunPaths(work / s["name"])
    assert paths.config.is_file() and paths.summary.is_file()
    assert json.loads(paths.summary.read_text())["step"] == STEPS
    assert [r["step"] for r in run_io.read_metrics(paths.metrics)] == list(range(2, STEPS + 1, 2))
    assert run_io.load_config(paths.root).prompt.object == s["object"]
  index = json.loads((work / "sweep.json").read_text())
  assert index["state"] == "finished" and index["num_processes"] == 2
  assert [(e["name"], e["status"], e["step"], e["process"]) for e in index["scenes"]] == [
      (s["name"], "done", STEPS, i % 2) for i, s in enumerate(SCENES)]
  assert all(np.isfinite(e["final_metrics"]["loss"]) for e in index["scenes"])
  csv_lines = (work / "sweep.csv").read_text().splitlines()
  assert len(csv_lines) == 5 and csv_lines[1].startswith(f"chair,done,{STEPS},{STEPS},")

  for s in SCENES:
    # Bitwise: the scene's group trained uninterrupted on 2 devices, as its process does.
    _, _, got = loop.load_trained(str(work / s["name"]))
    step, ref = _reference(refs, "sweep", s["name"])
    assert int(got.step) == step == STEPS
    for x, y in zip(_leaves(got), ref, strict=True):
      np.testing.assert_array_equal(x, y, err_msg=s["name"])
    # Scene i equals a single run of its prompts and seed (one device) within 1e-5
    # after COMPARE_AT steps: only float reassociation differs between the vmapped,
    # sharded program and the single run's (docs/sweeps.md has the measured figures).
    step, single = _reference(refs, "single", s["name"])
    assert step == COMPARE_AT
    diff = max(float(np.max(np.abs(a - b)))
               for a, b in zip(_params_at(work, s["name"], COMPARE_AT), single, strict=True))
    assert diff <= 1e-5, (s["name"], diff)
