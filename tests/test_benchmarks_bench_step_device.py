"""benchmarks/bench_step_device.py: the CPU refusal, and the whole script at --tiny size."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jaxlib
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_step_device.py"
OPTION = "-nvptx-allow-ftz-atomics"


def _run(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_refuses_on_cpu_in_one_line():
  out = _run("--points=64", "--fine_rows=64", "--reps=1", "--out=/nonexistent/x.json")
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "--tiny" in lines[0] and "cpu" in lines[0]


def test_scatter_rows_are_skewed_like_a_hash_grid():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  import bench_step_device as b
  rows, total = b.scatter_rows(262144, 2 ** 19)   # the default: the step's contention
  assert rows.shape == (262144 * 8,) and rows.min() >= 0
  assert rows.max() < total == 17 ** 3 + 2 ** 19
  counts = np.bincount(rows, minlength=total)
  coarse, fine = counts[:17 ** 3], counts[17 ** 3:]
  assert coarse.sum() == fine.sum() == 262144 * 4   # half the updates on the coarse level
  assert coarse.sum() / np.count_nonzero(coarse) > 1000   # few rows, > 1000 updates each
  assert fine.max() < 50                                  # the fine level: nearly distinct


@pytest.mark.slow
def test_tiny_run_writes_the_json(tmp_path):
  out_path = tmp_path / "step_device_tiny.json"
  out = _run("--tiny", f"--out={out_path}")
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out_path.read_text())
  assert r["platform"] == "cpu" and r["steps_per_s"] > 0 and r["compile_s"] > 0
  assert r["loss_finite"] and r["samples_dropped"]["total"] >= 0
  assert r["unet"]["flops_per_call"] > 0 and r["unet"]["mfu"] is None   # no peak for a CPU
  assert r["unet"]["dtype"] == "float32"                                 # "auto" on the CPU
  assert (r["jax"], r["jaxlib"]) == (jax.__version__, jaxlib.__version__)
  assert r["xla_flags"] == os.environ.get("XLA_FLAGS", "")
  s = r["scatter_add"]
  assert OPTION not in s["without_flag"]["xla_flags"] and s["without_flag"]["ms"] > 0
  assert s["without_flag"]["updates"] == 4096 * 8
  if "skipped" not in s["with_flag"]:   # jaxlib 0.10.2 - 0.11.0: the option is known on CPU too
    assert s["with_flag"]["xla_flags"].endswith(f"--xla_backend_extra_options={OPTION}")
    assert s["slowdown_without_flag"] > 0
