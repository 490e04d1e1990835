"""Drills on the run lifecycle, as a careful user or an adversary would run them
(docs/training.md, "What survives what"): a second process on a locked
workdir, a resume under another config, a corrupt newest checkpoint, SIGTERM
mid-run and while the final outputs are written, a run whose steps are all skipped; and (second part, "bad inputs") every
bad input that must end in one ``error: ...`` line and exit 2 before anything
compiles: config values, config variants, prompt files, sweep rows, weights and
anchor files, render/export/pose flags, render sizes.

Each drill asserts the exit code (or the exception a command line turns into
one), the one-line message, and that nothing of the first run was lost: its
checkpoints and config.json are byte for byte what they were. One smoke run of
the real command line (module fixture) is copied for each drill.
"""
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from safetensors.numpy import save_file

import blob_scene
import tiny_models
from blob_scene import _config, _frozen, _spec
from configs import hoi
from interfusion_jax import export as export_cli
from interfusion_jax import fileio
from interfusion_jax import render as render_cli
from interfusion_jax.guidance import weights
from interfusion_jax.pose import __main__ as pose_cli
from interfusion_jax.pose import anchor as pose_anchor
from interfusion_jax.stage2 import checkpoint as ckpt_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup as setup_lib
from interfusion_jax.stage2 import step as step_lib
from interfusion_jax.stage2 import sweep as sweep_lib
from scene_rows import PROMPTS, ROW, _base, _jsonl

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


def test_sigterm_during_the_final_outputs_keeps_the_old_ones_and_a_rerun_writes_them(run_copy):
  """A SIGTERM while final/ is being written again (a finished run, rerun: nothing to
  train, the final outputs rendered anew): exit 130 with one line, the previous final/
  and every checkpoint byte for byte, no temporary folder left; the same command then
  writes final/ without training a step."""
  before = _snapshot(run_copy, under=("checkpoints", "final"))
  metrics = (run_copy / "metrics.jsonl").read_bytes()
  proc = subprocess.Popen([sys.executable, "-m", "interfusion_jax.train",
                           f"--workdir={run_copy}", *SMOKE], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline, sent = time.time() + 600, False
  while time.time() < deadline and proc.poll() is None:
    if any(p.name.startswith(".final.tmp") for p in run_copy.iterdir()):
      proc.send_signal(signal.SIGTERM)
      sent = True
      break
    time.sleep(0.01)
  out, err = proc.communicate(timeout=300)
  assert sent, "the final outputs were never being written: " + err[-2000:]
  assert proc.returncode == 130, err[-3000:]
  line = _last_line(err)
  assert line.startswith("Interrupted") and "Run the same command" in line, line
  assert "Traceback" not in err and "Done" not in out
  assert _snapshot(run_copy, under=("checkpoints", "final")) == before
  assert not [p.name for p in run_copy.iterdir() if p.name.startswith(".final")]
  shutil.rmtree(run_copy / "final")
  again = _train(run_copy)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _last_line(again.stdout).startswith("Done:")
  assert json.loads((run_copy / "final" / "summary.json").read_text())["step"] == 12
  assert (run_copy / "metrics.jsonl").read_bytes() == metrics       # no step trained again


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


# --- bad inputs ---


def _input_env():
  return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu",
              JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                       "/tmp/interfusion_jax_test_cache"))


def _cli(module, *args):
  """(exit code, stderr) of ``python -m module args`` (absl command lines: one per process)."""
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_input_env(),
                        capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stderr


def _one_line(err: str) -> str:
  """The single ``error:`` line of a command's stderr (no traceback, nothing after it)."""
  assert "Traceback" not in err, err[-3000:]
  errors = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err[-3000:]
  return errors[0]


def _anchor_file(path, value: float) -> pathlib.Path:
  np.savez(path, body_pose=np.full(63, value, np.float32), global_orient=np.zeros(3, np.float32))
  return pathlib.Path(path)


def _weights_dir(tmp_path, case: str) -> pathlib.Path:
  """A diffusers directory (tiny pixel UNet config, scheduler) with one bad file:
  ``json`` a cut unet/config.json, ``msgpack`` / ``safetensors`` a truncated weights file."""
  root = tmp_path / f"weights_{case}"
  (root / "unet").mkdir(parents=True)
  (root / "text_encoder").mkdir()
  tiny_models._write_scheduler(root)
  (root / "tokenizer").mkdir()
  (root / "tokenizer" / "vocab.json").write_text('{"a": 0, "b": 1}')
  (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
  vocab = 2
  cfg = json.dumps(dict(tiny_models.unet_kwargs("pixel"), _class_name="UNet2DConditionModel"))
  (root / "unet" / "config.json").write_text(cfg[:20] if case == "json" else cfg)
  (root / "text_encoder" / "config.json").write_text(json.dumps(dict(
      tiny_models.text_kwargs(vocab), architectures=["CLIPTextModel"], model_type="clip_text_model")))
  for folder, name in (("unet", "diffusion_"), ("text_encoder", "")):   # both truncated
    if case in ("json", "msgpack"):
      data = serialization.msgpack_serialize({"params": {"w": np.ones(512, np.float32)}})
      (root / folder / f"{name}flax_model.msgpack").write_bytes(data[:len(data) // 2])
    else:
      f = root / folder / f"{name}pytorch_model.safetensors" if folder == "unet" else (
          root / folder / "model.safetensors")
      save_file({"w": np.ones(512, np.float32)}, str(f))
      f.write_bytes(f.read_bytes()[:300])
  return root


# Item 7: (drill id, module, flags, text the one line must hold). ``{tmp}`` is the
# test's directory; each drill trains into {tmp}/w, which must stay without a
# config.json or checkpoint.
SMOKE_VARIANT = "--config=configs/hoi.py:smoke"
TRAIN_DRILLS = [
    ("variant_typo", [SMOKE_VARIANT[:-1]], ["Unknown config variant 'smok'", "'smoke'"]),
    ("seed_2^63", [SMOKE_VARIANT, "--config.seed=9223372036854775808"], ["config.seed", "2^32"]),
    ("lr_inf", [SMOKE_VARIANT, "--config.optim.lr_field=inf"], ["config.optim.lr_field = inf"]),
    ("corrupt_unet_config", [SMOKE_VARIANT, "--config.guidance.weights_dir={weights_json}",
                             "--config.guidance.backend=auto"],
     ["unet/config.json cannot be read as a JSON file"]),
    ("extreme_anchor", [SMOKE_VARIANT, "--config.pose.anchor_file={tmp}/extreme.npz"],
     ["rotates by 1.73e+30 rad", "4 pi"]),
    ("absurd_render_size", [SMOKE_VARIANT, "--config.render.height=4096", "--config.render.width=4096"],
     ["4096 x 4096", "needs about", "GB, more than twice the"]),
]


@pytest.mark.parametrize("flags,expect", [d[1:] for d in TRAIN_DRILLS],
                         ids=[d[0] for d in TRAIN_DRILLS])
def test_train_bad_input_is_one_line_and_exit_2(tmp_path, flags, expect):
  fmt = {"tmp": tmp_path}
  for case in ("json", "msgpack", "safetensors"):
    if any(f"weights_{case}" in f for f in flags):
      fmt[f"weights_{case}"] = _weights_dir(tmp_path, case)
  _anchor_file(tmp_path / "extreme.npz", 1e30)
  work = tmp_path / "w"
  code, err = _cli("interfusion_jax.train", *[f.format(**fmt) for f in flags],
                   f"--workdir={work}", "--noprogress")
  line = _one_line(err)
  assert code == 2, err[-3000:]
  assert all(e in line for e in expect), line
  assert not (work / "config.json").exists() and not (work / "checkpoints").exists()


@pytest.mark.parametrize("case,expect", [
    ("msgpack", "diffusion_flax_model.msgpack cannot be read as Flax msgpack (ValueError"),
    ("safetensors", "diffusion_pytorch_model.safetensors cannot be read as safetensors "
                    "(SafetensorError")])
def test_truncated_weights_files_are_one_line_errors(tmp_path, case, expect):
  """Item 7: a truncated msgpack / safetensors file is a one-line ``ModelTypeError``
  naming the file; ``setup.load_guidance_and_text`` turns it into the
  ``TrainSetupError`` that the command lines print with exit 2, as the corrupt
  config.json drill above shows end to end (a subprocess per weights format
  would build the UNet's shapes first: tens of seconds each)."""
  folder = _weights_dir(tmp_path, case) / "unet"
  shapes = {"w": jax.ShapeDtypeStruct((512,), jnp.float32)}
  with pytest.raises(weights.ModelTypeError) as e:
    weights.host_params(folder, shapes, lambda k, t, flat: ((k,), t))
  assert expect in str(e.value) and "download it again" in str(e.value)
  assert "\n" not in str(e.value)


def test_sweep_row_values_are_checked_before_grouping(tmp_path):
  """Item 4: seeds out of range, anchor files with extreme finite values and scene
  names of the sweep's own files are refused with the prompt file's row and column,
  before any scene is set up (the workdir is not even created)."""
  ok = _anchor_file(tmp_path / "ok.npz", 0.1)
  bad = _anchor_file(tmp_path / "bad.npz", 1e30)
  cases = [({"seed": 2 ** 63}, "column 'seed'", "2^32"),
           ({"seed": 2 ** 32}, "column 'seed'", "4294967295"),
           ({"anchor_file": str(bad)}, "column 'anchor_file'", "rotates by"),
           ({"name": "sweep.json"}, "column 'name'", "file of the sweep directory"),
           ({"name": "INDEX.html"}, "column 'name'", "file of the sweep directory")]
  for extra, column, what in cases:
    path = _jsonl(tmp_path, [dict(ROW, name="a", anchor_file=str(ok)), dict(ROW, **extra)])
    with pytest.raises(sweep_lib.prompt_file.SweepError) as e:
      sweep_lib.preflight(config_lib.parse(hoi.get_config("smoke")), path, tmp_path / "w", 1)
    assert "row 2" in str(e.value) and column in str(e.value) and what in str(e.value), e.value
    assert "\n" not in str(e.value)
  # An anchor file of the base config (--config.pose.anchor_file) is checked as well.
  base = config_lib.override(config_lib.parse(hoi.get_config("smoke")),
                             {"pose.anchor_file": str(bad)})
  with pytest.raises(sweep_lib.prompt_file.SweepError, match="row 1 .*rotates by 1.73e"):
    sweep_lib.preflight(base, _jsonl(tmp_path, [ROW]), tmp_path / "w", 1)
  assert not (tmp_path / "w").exists()
  # The command line: one line, exit 2 (here for a prompt file that is not UTF-8).
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(json.dumps(dict(ROW, human="a man in a caf\u00e9"), ensure_ascii=False)
                  .encode("latin-1") + b"\n")
  code, err = _cli("interfusion_jax.sweep", SMOKE_VARIANT, f"--prompts={path}", f"--workdir={tmp_path / 'w'}")
  line = _one_line(err)
  assert code == 2 and "not UTF-8" in line and "line 1" in line, err[-2000:]
  assert not (tmp_path / "w").exists()


@pytest.fixture
def blob_world(monkeypatch):
  """The sweep tests' closed-form world (tests/test_stage2_sweep.py): blob field,
  Gaussian denoiser, per-prompt embeddings, a sphere anchor; a scene whose object
  prompt says "boom" fails in its anchor setup (valid input, broken setup)."""
  def anchor(config, paths):
    if "boom" in config.prompt.object:
      raise setup_lib.TrainSetupError(f"Anchor body: {config.prompt.object} exploded")
    return blob_scene._anchor(), types.SimpleNamespace(meta={"source": "t"})

  blob_scene.patch_setup(monkeypatch, anchor=anchor)
  cfg = blob_scene._config()
  cfg.train.turntable_frames = 2
  cfg.train.mesh_resolution = 8
  return cfg


def test_a_scene_whose_setup_fails_fails_alone(tmp_path, blob_world, monkeypatch):
  """Item 4: one group, its middle scene's setup fails: only that scene is marked
  failed, with its own error; --retry_failed tries it again and keeps the others."""
  rows = [dict(name=n, human="a man", object=o, interaction="holding it", seed=i)
          for i, (n, o) in enumerate([("a", "a red ball"), ("bad", "a boom box"),
                                      ("b", "a blue chair")])]
  path = _jsonl(tmp_path, rows)
  entries = sweep_lib.run_sweep(blob_world, path, tmp_path / "w", progress=False)
  status = {e["name"]: e for e in entries}
  assert [status[n]["status"] for n in ("a", "bad", "b")] == ["done", "failed", "done"]
  assert status["bad"]["error"] == "TrainSetupError: Anchor body: a boom box exploded"
  assert status["a"]["step"] == status["b"]["step"] == blob_world.train.steps
  index = json.loads((tmp_path / "w" / "sweep.json").read_text())
  assert [e["status"] for e in index["scenes"]] == ["done", "failed", "done"]
  done = {n: (tmp_path / "w" / n / "final" / "summary.json").read_bytes() for n in "ab"}
  # --retry_failed: the culprit fails again with its own error; the done scenes are kept.
  again = sweep_lib.run_sweep(blob_world, path, tmp_path / "w", progress=False,
                              retry_failed=True)
  assert [e["status"] for e in again] == ["done", "failed", "done"]
  assert again[1]["error"] == status["bad"]["error"]
  assert {n: (tmp_path / "w" / n / "final" / "summary.json").read_bytes() for n in "ab"} == done


FLOAT_KEYS = [f"{name}.{f.name}" for name, cls in config_lib.SECTIONS.items()
              for f in dataclasses.fields(cls) if isinstance(f.default, float)]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_key_refuses_non_finite_values(value):
  """Item 5: each float key of the schema, set to inf / -inf / nan, is refused in one
  line naming it (through ``parse``, the command lines' only way in)."""
  assert len(FLOAT_KEYS) > 40
  base = hoi.get_config("smoke")
  for key in FLOAT_KEYS:
    cfg = hoi.get_config("smoke")
    section, name = key.split(".")
    cfg[section][name] = value
    with pytest.raises(config_lib.ConfigError) as e:
      config_lib.parse(cfg)
    assert str(e.value).startswith(f"config.{key} = {value!r}") and "\n" not in str(e.value)
  config_lib.parse(base)


@pytest.mark.parametrize("key,value,ok", [
    ("guidance.guidance_scale", -2.0, False), ("guidance.guidance_scale", -0.5, False),
    ("guidance.guidance_scale", -1.0, True), ("guidance.guidance_scale", 0.0, True),
    ("guidance.guidance_scale", 100.0, True), ("prompt.overhead_elevation_deg", 91.0, False),
    ("prompt.front_azimuth_deg", -1.0, False), ("prompt.back_azimuth_deg", 181.0, False),
    ("seed", 2 ** 32 - 1, True), ("seed", 2 ** 32, False), ("seed", 2 ** 63, False),
    ("seed", -1, False)])
def test_out_of_range_values_are_refused(key, value, ok):
  """Items 5 and 8: a negative guidance scale other than -1 (the backend default) is
  refused, and so are seeds outside [0, 2^32) (PRNG keys hold 32 bits: seeds that
  differ by 2^32 would alias)."""
  run = config_lib.parse(hoi.get_config("smoke"))
  if ok:
    assert config_lib.to_dict(config_lib.override(run, {key: value}))
    return
  with pytest.raises(config_lib.ConfigError, match=f"^config.{key} = "):
    config_lib.override(run, {key: value})


@pytest.fixture
def run_dir(tmp_path):
  """A run directory with a config.json (render size from the smoke config) and a
  marker standing for its checkpoints: what a refused command must leave alone."""
  work = tmp_path / "run"
  paths = run_io.prepare_workdir(work)
  run_io.save_config(paths, config_lib.parse(hoi.get_config("smoke")))
  (work / "checkpoints").mkdir(exist_ok=True)
  (work / "checkpoints" / "marker").write_text("kept")
  return work


def _file_bytes(work):
  return {p: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def _huge_final_resolution(work):
  cfg = json.loads((work / "config.json").read_text())
  cfg["train"]["final_resolution"] = 100000
  (work / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("main,args,expect,prepare", [
    (render_cli.main, ["--frames=-3"], "--frames=-3: must be a positive", None),
    (render_cli.main, [], "config.train.final_resolution = 100000: a render needs about",
     _huge_final_resolution),
    (export_cli.main, ["--threshold=nan"], "--threshold=nan: must be a finite density", None),
    (export_cli.main, ["--threshold=-inf"], "--threshold=-inf: must be a finite", None),
    (export_cli.main, ["--resolution=2"], "--resolution=2: must be 0", None),
], ids=["render_frames", "render_size", "export_threshold_nan", "export_threshold_inf",
        "export_resolution"])
def test_render_and_export_refuse_bad_flags(run_dir, capsys, main, args, expect, prepare):
  """Items 7 and 8: before anything loads or compiles; the run directory is untouched."""
  if prepare:
    prepare(run_dir)
  before = _file_bytes(run_dir)
  assert main([f"--workdir={run_dir}", *args]) == 2
  line = _one_line(capsys.readouterr().err)
  assert expect in line, line
  assert _file_bytes(run_dir) == before


@pytest.mark.parametrize("args,expect", [
    (["--text", " "], "--text is empty"),
    (["--text", "riding a bike", "--seed", "4294967296"], "--seed=4294967296: must be"),
    (["--text", "riding a bike", "--top_k", "0"], "--top_k=0"),
    (["--text", "riding a bike", "--choose", "rank", "--rank", "9"], "--rank=9"),
    (["--text", "riding a bike", "--template", "a man"], "must contain {interaction}"),
    (["--text", "riding a bike", "--codebook", "{tmp}/none.npz"], "does not exist"),
    (["--text", "riding a bike", "--codebook", "{tmp}/bad.npz"], "bad.npz"),
    (["--text", "riding a bike", "--clip_dir", "{tmp}/none"], "CLIP directory"),
    (["--text", "riding a bike", "--body", "{tmp}/none.npz"], "does not exist"),
    (["--text", "riding a bike", "--choose", "clip_rerank"], "needs a CLIP model"),
    (["--text", "riding a bike", "--out", "{tmp}/bad.npz/x.npz"], "cannot be written"),
], ids=["empty_text", "seed", "top_k", "rank", "template", "codebook_missing",
        "codebook_corrupt", "clip_dir", "body", "clip_rerank", "out"])
def test_pose_errors_are_one_line_and_exit_2(tmp_path, capsys, args, expect):
  """Item 7: every error of ``python -m interfusion_jax.pose``."""
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  argv = [a.format(tmp=tmp_path) for a in args] + ([] if "--body" in args else ["--no_sheet"])
  if "--out" not in argv:
    argv += ["--out", str(tmp_path / "anchor.npz")]
  assert pose_cli.main(argv) == 2
  line = _one_line(capsys.readouterr().err)
  assert expect in line, line
  assert not (tmp_path / "anchor.npz").exists()
  assert (tmp_path / "bad.npz").read_bytes() == b"not a zip"


def test_pose_out_prints_the_path_it_wrote(tmp_path, capsys):
  """Item 8: ``--out DIR`` (no suffix) writes DIR.npz and says so; an existing
  directory gets anchor.npz inside."""
  assert pose_cli.main(["--text", "riding a bike", "--out", str(tmp_path / "a"),
                        "--no_sheet"]) == 0
  assert f"-> {tmp_path / 'a.npz'}" in capsys.readouterr().out
  assert pose_anchor.load_anchor(tmp_path / "a.npz").body_pose.shape == (63,)
  (tmp_path / "d").mkdir()
  assert pose_cli.main(["--text", "riding a bike", "--out", str(tmp_path / "d"),
                        "--no_sheet"]) == 0
  assert f"-> {tmp_path / 'd' / 'anchor.npz'}" in capsys.readouterr().out
  assert (tmp_path / "d" / "anchor.npz").is_file()


def test_memory_estimate_refuses_only_what_does_not_fit():
  """Item 7: the render-size check against a given memory: the smoke config's
  sizes pass on 1 GB, 4096 x 4096 does not; the estimate grows with the pixels, and
  the paper config (step and 512^2 final renders) passes on an 80 GB GPU."""
  run = config_lib.parse(hoi.get_config("smoke"))
  setup_lib.check_memory(run, final_size=0, limit=10 ** 9)
  paper = config_lib.parse(hoi.get_config("paper"))
  setup_lib.check_memory(paper, final_size=paper.train.final_resolution, limit=80 * 10 ** 9)
  big = config_lib.override(run, {"render.height": 4096, "render.width": 4096})
  assert setup_lib.step_memory_bytes(big) == pytest.approx(
      setup_lib.step_memory_bytes(run) * (4096 * 4096) / (run.render.height * run.render.width))
  # Cameras split over devices: 8 cameras on 4 devices need what 2 need on one.
  eight = config_lib.override(run, {"render.batch_size": 8})
  assert setup_lib.step_memory_bytes(eight, devices=4) == setup_lib.step_memory_bytes(
      config_lib.override(run, {"render.batch_size": 2}))
  assert setup_lib.step_memory_bytes(eight, devices=3) == setup_lib.step_memory_bytes(
      config_lib.override(run, {"render.batch_size": 4}), devices=1)
  with pytest.raises(setup_lib.TrainSetupError, match="4096 x 4096 .* needs about"):
    setup_lib.check_memory(big, limit=128 * 10 ** 9)
  with pytest.raises(setup_lib.TrainSetupError, match="final_resolution = 20000"):
    setup_lib.check_memory(run, final_size=20000, limit=10 ** 9)
