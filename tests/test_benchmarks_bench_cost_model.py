"""benchmarks/bench_cost_model.py: the cumsum correction against closed forms, and
the whole script at --tiny size (the parts add up, the roofline is their quotient).

The --tiny run took 29 s and 15 s on the 2 shared CPU cores (two sittings), so
it is marked ``slow``; the other tests take under a second each."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import jaxlib
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_cost_model.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cost_model as cm  # noqa: E402


@pytest.mark.parametrize("shape,axis", [((1000,), 0), ((8, 300), 1), ((6, 50, 4), 1)])
def test_cumsum_is_charged_quadratically_and_recounted_as_a_scan(shape, axis):
  """XLA charges a cumsum of N elements along an axis of length L: N (L - 1)
  additions; ``cost`` replaces that by N (one addition per element)."""
  n, length = int(jnp.prod(jnp.array(shape))), shape[axis]
  fn, x = jax.jit(lambda x: jnp.cumsum(x, axis=axis)), jax.ShapeDtypeStruct(shape, jnp.float32)
  assert cm.reduce_window_flops(fn.lower(x).as_text()) == (n * (length - 1), n)
  c = cm.cost(fn, x)
  assert c["flops_raw"] == c["cumsum_flops_raw"] == n * (length - 1)
  assert c["flops"] == c["cumsum_elements"] == n
  assert c["bytes_io"] == 2 * 4 * n


def test_a_cumsum_function_is_charged_at_every_call():
  """JAX lowers a cumsum once into a private function called from each use (here
  three uses, one inside a vmap over 5); the cost analysis charges every call."""
  n, b = 400, 5

  def f(x, y):
    inner = jax.vmap(lambda r: jnp.cumsum(r))(y)                    # [b, n]: b n (n - 1)
    return jnp.cumsum(x) + jnp.cumsum(x * 2.0) + jnp.sum(inner, 0)  # 2 n (n - 1)

  args = (jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((b, n), jnp.float32))
  text = jax.jit(f).lower(*args).as_text()
  expected = (2 * n * (n - 1) + b * n * (n - 1), 2 * n + b * n)
  assert cm.reduce_window_flops(text) == expected
  c = cm.cost(jax.jit(f), *args)
  assert c["cumsum_flops_raw"] == expected[0] <= c["flops_raw"]
  # What is left are the elementwise ops: x * 2, two adds of [n], the sum over b.
  assert c["flops"] - c["cumsum_elements"] == pytest.approx(3 * n + (b - 1) * n, abs=2 * n)


def test_matmul_cost_is_the_closed_form():
  m, k, n = 64, 128, 96
  c = cm.cost(jax.jit(jnp.dot), jax.ShapeDtypeStruct((m, k), jnp.float32),
              jax.ShapeDtypeStruct((k, n), jnp.float32))
  assert c["flops"] == c["flops_raw"] == 2 * m * k * n
  assert c["cumsum_flops_raw"] == 0
  assert c["bytes"] == c["bytes_io"] == 4 * (m * k + k * n + m * n)


@pytest.mark.slow
def test_tiny_run_writes_the_json(tmp_path):
  out_path = tmp_path / "cost_model_tiny.json"
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(SCRIPT), "--tiny", f"--out={out_path}"], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out_path.read_text())
  assert r["variant"] == "smoke" and r["unet_dtype"] == "bfloat16"
  p = r["parts"]
  assert set(p) == {"unet", "renders", "step"}
  for part in p.values():
    assert part["flops"] > 0 and part["bytes"] >= part["bytes_io"] > 0
    assert part["flops_raw"] >= part["flops"]
    assert part["flops"] == part["flops_raw"] - part["cumsum_flops_raw"] + part["cumsum_elements"]
  # One UNet call per camera on the CFG pair of the four renders.
  assert p["unet"]["batch"] == 2 * 4 * r["render"]["cameras"]
  assert p["unet"]["cumsum_flops_raw"] == 0
  lone = r["lone_cumsum"]
  n = r["render"]["height"] * r["render"]["width"] * r["render"]["num_samples"]
  assert lone["elements"] == n and lone["flops_raw"] == lone["n_times_n_minus_1"] == n * (n - 1)
  assert lone["flops"] == n
  # The renders' cumsums are all of the step's (no other part has one).
  assert p["renders"]["cumsum_flops_raw"] == p["step"]["cumsum_flops_raw"] > 0
  # The parts add up: the step holds the UNet, the renders and a little more (Adam, grids).
  assert p["unet"]["flops"] + p["renders"]["flops"] <= p["step"]["flops"]
  assert r["other_flops"] == pytest.approx(
      p["step"]["flops"] - p["unet"]["flops"] - p["renders"]["flops"])
  assert 0 <= r["other_flops"] < 0.2 * p["step"]["flops"]
  assert [row["chip"] for row in r["roofline"]] == [c[0] for c in cm.CHIPS]
  for row, (_, peak, bw) in zip(r["roofline"], cm.CHIPS):
    for part in ("unet", "step"):
      t_c, t_m = p[part]["flops"] / peak, p[part]["bytes_io"] / bw
      assert row[part]["compute_ms"] == pytest.approx(1e3 * t_c)
      assert row[part]["memory_ms"] == pytest.approx(1e3 * t_m)
      assert row[part]["memory_unfused_ms"] == pytest.approx(1e3 * p[part]["bytes"] / bw)
      assert row[part]["max_it_s"] == pytest.approx(1 / max(t_c, t_m))
      assert row[part]["it_s_at_mfu"] == pytest.approx(r["mfu"] * peak / p[part]["flops"])
  assert (r["jax"], r["jaxlib"]) == (jax.__version__, jaxlib.__version__)
