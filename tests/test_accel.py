"""interfusion_jax.accel: the XLA_FLAGS workaround for jaxlib's slow f32 GPU atomics."""
import itertools
import logging
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

from interfusion_jax import accel

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTION = "-nvptx-allow-ftz-atomics"

# Versions by hand from the jaxlib release notes: 0.10.2 .. 0.11.0 affected.
AFFECTED = ["0.10.2", "0.10.3", "0.11.0", "0.11.0.dev20261001", "0.10.2rc1"]
UNAFFECTED = ["0.9.2", "0.10.1", "0.11.1", "0.12.0", "1.0.0", None, "garbage"]
FLAGS = ["", "--xla_force_host_platform_device_count=4",
         "--xla_backend_extra_options=-foo=1 --xla_gpu_autotune_level=0",
         f"--xla_backend_extra_options={OPTION}",
         f"--xla_backend_extra_options=-a,{OPTION}=false"]


def last_extra_options(flags: str) -> list[str] | None:
  """Independent reading of XLA_FLAGS: the last --xla_backend_extra_options's items."""
  value = None
  for tok in shlex.split(flags):
    if tok.lstrip("-").startswith("xla_backend_extra_options="):
      value = tok.split("=", 1)[1]
  return None if value is None else [o for o in value.split(",") if o]


@pytest.mark.parametrize("version,plugin,flags,opt_out", list(itertools.product(
    AFFECTED + UNAFFECTED, [True, False], FLAGS, [True, False])))
def test_decision_table(version, plugin, flags, opt_out):
  d = accel.decide_xla_flags(version, plugin, flags, opt_out)
  before = last_extra_options(flags) or []
  already = any(o.split("=")[0] == OPTION for o in before)
  expect = (not opt_out) and plugin and version in AFFECTED and not already
  assert d.changed == expect, d.reason
  if not expect:
    assert d.xla_flags == flags
    return
  after = last_extra_options(d.xla_flags)
  assert after == before + [OPTION]              # merged, the user's options kept in order
  others = lambda f: [t for t in shlex.split(f) if "xla_backend_extra_options" not in t]
  assert others(d.xla_flags) == others(flags)    # every other flag untouched
  assert d.xla_flags.count("xla_backend_extra_options") == max(1, flags.count(
      "xla_backend_extra_options"))


def test_merge_keeps_quotes_and_last_wins():
  flags = '--xla_backend_extra_options=-x --xla_dump_to=/tmp/d --xla_backend_extra_options="-y,-z"'
  d = accel.decide_xla_flags("0.10.2", True, flags, False)
  assert d.changed
  assert d.xla_flags == ('--xla_backend_extra_options=-x --xla_dump_to=/tmp/d '
                         f'--xla_backend_extra_options="-y,-z,{OPTION}"')
  assert last_extra_options(d.xla_flags) == ["-y", "-z", OPTION]


@pytest.mark.parametrize("flags", FLAGS + [
    '--a=1 --xla_backend_extra_options="-y,-nvptx-allow-ftz-atomics" --b=2'])
def test_without_option_undoes_the_merge(flags):
  d = accel.decide_xla_flags("0.10.2", True, flags, False)
  stripped = accel.without_option(d.xla_flags)
  assert OPTION not in stripped
  assert [o for o in last_extra_options(stripped) or []] == [
      o for o in last_extra_options(flags) or [] if o.split("=")[0] != OPTION]
  if d.changed:
    assert stripped.split() == flags.split()


def test_parse_version():
  assert accel.parse_version("0.10.2") == (0, 10, 2)
  assert accel.parse_version("0.11.0.dev20261001+cuda") == (0, 11, 0)
  assert accel.parse_version(None) is None and accel.parse_version("x") is None


@pytest.fixture(autouse=True)
def _keep_process_result(monkeypatch):
  monkeypatch.setattr(accel, "_RESULT", accel._RESULT)  # restored after each test


def test_apply_sets_flag_once(monkeypatch, caplog):
  monkeypatch.setattr(accel, "installed_jaxlib_version", lambda: "0.10.2")
  monkeypatch.setattr(accel, "cuda_plugin_installed", lambda: True)
  monkeypatch.setattr(accel, "started_backends", lambda: None)
  env = {"XLA_FLAGS": "--xla_gpu_autotune_level=2"}
  with caplog.at_level(logging.INFO, logger="interfusion_jax.accel"):
    d = accel.apply_xla_workarounds(env, force=True)
    again = accel.apply_xla_workarounds(env)
  assert d.changed and again is d
  assert env["XLA_FLAGS"] == f"--xla_gpu_autotune_level=2 --xla_backend_extra_options={OPTION}"
  assert len([r for r in caplog.records if "Set XLA_FLAGS" in r.getMessage()]) == 1
  env = {"XLA_FLAGS": "", accel.OPT_OUT_ENV: "1"}
  assert not accel.apply_xla_workarounds(env, force=True).changed
  assert env["XLA_FLAGS"] == ""


def test_apply_warns_when_gpu_backend_already_started(monkeypatch, caplog):
  monkeypatch.setattr(accel, "installed_jaxlib_version", lambda: "0.11.0")
  monkeypatch.setattr(accel, "cuda_plugin_installed", lambda: True)
  monkeypatch.setattr(accel, "started_backends", lambda: {"cpu", "cuda"})
  monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "interfusion_jax.train", "--workdir=r"])
  env = {}
  with caplog.at_level(logging.INFO, logger="interfusion_jax.accel"):
    d = accel.apply_xla_workarounds(env, force=True)
  assert not d.changed and "XLA_FLAGS" not in env
  msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(msgs) == 1
  assert msgs[0].endswith(f"Rerun as: XLA_FLAGS=--xla_backend_extra_options={OPTION} "
                          "python -m interfusion_jax.train --workdir=r")
  # A CPU-only process that already started: nothing to warn about.
  monkeypatch.setattr(accel, "started_backends", lambda: {"cpu"})
  caplog.clear()
  assert not accel.apply_xla_workarounds({}, force=True).changed
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def _run(code: str, extra_path: str = "", **env) -> str:
  e = dict(os.environ, JAX_PLATFORMS="cpu", **env)
  e["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(ROOT)) if p)
  out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                       timeout=120, check=True)
  return out.stdout.strip()


def test_import_on_this_machine_changes_nothing_and_starts_no_jax():
  """This CPU-only install has no CUDA plugin: XLA_FLAGS stays as it was."""
  code = ("import os, sys, interfusion_jax\n"
          "print(repr(os.environ.get('XLA_FLAGS')), 'jax' in sys.modules)")
  assert accel.cuda_plugin_installed() is False
  assert _run(code, XLA_FLAGS="--xla_cpu_enable_fast_math=false") == (
      "'--xla_cpu_enable_fast_math=false' False")


def test_import_with_a_fake_cuda_plugin(tmp_path):
  """A findable ``jax_cuda12_plugin`` (jaxlib here is 0.10.2) makes the import set the flag,
  before jax starts: this CPU jaxlib knows the LLVM option, so jax still runs."""
  (tmp_path / "jax_cuda12_plugin").mkdir()
  (tmp_path / "jax_cuda12_plugin" / "__init__.py").write_text("")
  code = ("import os, interfusion_jax, jax, jax.numpy as jnp\n"
          "x = jnp.zeros(4).at[jnp.array([0, 0, 1])].add(1.0)\n"
          "print(os.environ['XLA_FLAGS'], x.tolist())")
  import importlib.metadata
  if accel.parse_version(importlib.metadata.version("jaxlib"))[:2] != (0, 10):
    pytest.skip("the installed jaxlib is outside the affected range")
  # A real LLVM option of the user's is kept (an unknown one would abort XLA).
  out = _run(code, str(tmp_path), XLA_FLAGS="--xla_backend_extra_options=-unroll-threshold=100")
  assert out == f"--xla_backend_extra_options=-unroll-threshold=100,{OPTION} [2.0, 1.0, 0.0, 0.0]"
  out = _run(code, str(tmp_path), XLA_FLAGS="", **{accel.OPT_OUT_ENV: "1"})
  assert out == "[2.0, 1.0, 0.0, 0.0]"
