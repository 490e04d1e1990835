"""Hash-encoding throughput: ours vs the naive jnp reference, in one run.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_hashgrid.py [--points 262144] [--reps 7]

Measures points/s at the default spec (configs/hoi.py "paper" field) for
forward and forward+backward (gradient of sum(encode^2) w.r.t. the tables),
for ``interfusion_jax.nerf.hashgrid.hash_encode`` and
``benchmarks/naive_hashgrid.naive_hash_encode``; plus a breakdown of ours
(index+weights, gather, backward scatter); plus the density field with
analytic normals (``field.field_forward_with_normals`` inside a loss on sigma,
albedo and normals, value and gradient w.r.t. all parameters) with our
encoding against the same field on the naive encoding (autodiff of the plain
gather formula, at every order), on ``--field_points`` points. Variants are
timed interleaved (round-robin, best of ``reps``) so that load from other
processes hits all of them alike; ratios are what to read. Writes
benchmarks/results/hashgrid.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.naive_hashgrid import naive_hash_encode  # noqa: E402
from interfusion_jax.nerf import field  # noqa: E402
from interfusion_jax.nerf import hashgrid  # noqa: E402


def _interleaved_best(fns: dict, args: dict, reps: int) -> dict:
  """Best wall time (s) of each jitted fn, timed round-robin."""
  for k, f in fns.items():
    jax.block_until_ready(f(*args[k]))  # compile + warm
  times = {k: [] for k in fns}
  for _ in range(reps):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(*args[k]))
      times[k].append(time.perf_counter() - t)
  return {k: (min(v), float(np.median(v))) for k, v in times.items()}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--points", type=int, default=2**18)
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument("--field_points", type=int, default=2**16)
  ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__),
                                                "results", "hashgrid.json"))
  a = ap.parse_args(argv)

  spec = hashgrid.HashGridSpec(backend="jax")  # official defaults, pure JAX ("ours")
  n = a.points
  params = hashgrid.init_hashgrid(jax.random.PRNGKey(0), spec)
  params = {"table": params["table"] * 1e3}  # non-trivial values
  x = jax.random.uniform(jax.random.PRNGKey(1), (n, 3), jnp.float32)
  g = jax.random.normal(jax.random.PRNGKey(2), (n, spec.n_levels, spec.n_features_per_level))

  def loss(enc):
    return lambda p, x: jnp.sum(enc(p, x, spec) ** 2)

  def index_weights(x):
    """Stage 1: rows [N, L, 8] (global) and weights [N, L, 8], materialised."""
    return hashgrid.corners(x, spec)

  def gather_interp(table, rows, w):
    """Stage 2: gathers + weighted sum from precomputed rows/weights."""
    return jnp.einsum("nlc,nlcf->nlf", w, table.at[rows].get(mode="promise_in_bounds"))

  def scatter(rows, upd):
    """Stage 3: scatter-add of precomputed updates into the table."""
    return jnp.zeros((spec.total_rows, spec.n_features_per_level)).at[rows].add(
        upd, mode="promise_in_bounds")

  fns = {
      "naive_fwd": jax.jit(lambda p, x: naive_hash_encode(p, x, spec)),
      "ours_fwd": jax.jit(lambda p, x: hashgrid.hash_encode(p, x, spec)),
      "naive_fwd_bwd": jax.jit(jax.value_and_grad(loss(naive_hash_encode))),
      "ours_fwd_bwd": jax.jit(jax.value_and_grad(loss(hashgrid.hash_encode))),
      "stage_index_weights": jax.jit(index_weights),
      "stage_gather_interp": jax.jit(gather_interp),
      "stage_scatter": jax.jit(scatter),
      "ours_table_grad_scatter": jax.jit(
          lambda g, x: hashgrid._splat_jnp(g, x, spec)),  # pylint: disable=protected-access
  }
  spec_ffi = dataclasses.replace(spec, backend="ffi")
  has_ffi = hashgrid.ffi_kernel_available()
  if has_ffi:
    enc_ffi = lambda p, x, _: hashgrid.hash_encode(p, x, spec_ffi)
    fns["ffi_fwd"] = jax.jit(lambda p, x: enc_ffi(p, x, None))
    fns["ffi_fwd_bwd"] = jax.jit(jax.value_and_grad(loss(enc_ffi)))
    fns["ffi_table_grad"] = jax.jit(
        lambda g, x: hashgrid._splat_ffi(g, x, spec_ffi))  # pylint: disable=protected-access

  # The density field with analytic normals: ours vs the naive encoding.
  fspec = field.FieldSpec(grid=spec)
  fparams = field.init_field(jax.random.PRNGKey(3), fspec)
  fparams["grid"] = {"table": fparams["grid"]["table"] * 1e3}
  xf = jax.random.uniform(jax.random.PRNGKey(4), (a.field_points, 3), jnp.float32, -1.0, 1.0)

  def normals_loss(fs):
    def loss(p, x):
      sigma, albedo, normals = field.field_forward_with_normals(p, x, fs)
      return (jnp.sum(sigma) + jnp.sum(albedo * jnp.array([1.0, 0.5, 0.25]))
              + jnp.sum(normals * jnp.array([1.0, -2.0, 0.5])))
    return jax.value_and_grad(loss)

  fns["field_normals_ours"] = jax.jit(normals_loss(fspec))
  hash_encode = hashgrid.hash_encode
  hashgrid.hash_encode = naive_hash_encode  # the field traces the naive encoding
  try:
    fns["field_normals_naive"] = jax.jit(normals_loss(fspec)).lower(fparams, xf).compile()
  finally:
    hashgrid.hash_encode = hash_encode
  if has_ffi:
    fns["field_normals_ffi"] = jax.jit(normals_loss(dataclasses.replace(fspec, grid=spec_ffi)))
  args = {k: (params, x) for k in fns}
  for k in fns:
    if k.startswith("field_normals"):
      args[k] = (fparams, xf)
  rows, w = jax.jit(index_weights)(x)
  upd = w[..., None] * g[:, :, None, :]
  args["stage_index_weights"] = (x,)
  args["stage_gather_interp"] = (params["table"], rows, w)
  args["stage_scatter"] = (rows, upd)
  gl = jnp.transpose(g, (1, 0, 2))  # level-major [L, N, F], as the backward takes it
  args["ours_table_grad_scatter"] = (gl, x)
  if has_ffi:
    args["ffi_table_grad"] = (gl, x)

  # Correctness in the same run (values and table gradient).
  f_ours = np.asarray(fns["ours_fwd"](params, x))
  f_naive = np.asarray(fns["naive_fwd"](params, x))
  g_ours = np.asarray(fns["ours_fwd_bwd"](params, x)[1]["table"])
  g_naive = np.asarray(fns["naive_fwd_bwd"](params, x)[1]["table"])
  diffs = {"fwd": float(np.abs(f_ours - f_naive).max()),
           "table_grad": float(np.abs(g_ours - g_naive).max()),
           "table_grad_scale": float(np.abs(g_naive).max())}
  fo, fn_ = fns["field_normals_ours"](fparams, xf), fns["field_normals_naive"](fparams, xf)
  diffs["field_normals_loss_rel"] = float(abs(fo[0] - fn_[0]) / abs(fn_[0]))
  diffs["field_normals_table_grad"] = float(np.abs(
      np.asarray(fo[1]["grid"]["table"]) - np.asarray(fn_[1]["grid"]["table"])).max())
  diffs["field_normals_table_grad_scale"] = float(np.abs(np.asarray(fn_[1]["grid"]["table"])).max())
  if has_ffi:
    diffs["ffi_fwd"] = float(np.abs(np.asarray(fns["ffi_fwd"](params, x)) - f_naive).max())
    diffs["ffi_table_grad"] = float(np.abs(
        np.asarray(fns["ffi_fwd_bwd"](params, x)[1]["table"]) - g_naive).max())

  # Trace + lower + compile time of the jitted functions (caches cleared first).
  compile_s = {}
  for k in ("naive_fwd", "ours_fwd", "naive_fwd_bwd", "ours_fwd_bwd"):
    jax.clear_caches()
    t0 = time.perf_counter()
    fns[k].lower(*args[k]).compile()
    compile_s[k] = time.perf_counter() - t0

  t = _interleaved_best(fns, args, a.reps)
  best = {k: v[0] for k, v in t.items()}
  pts = lambda k: n / best[k]
  res = {
      "spec": {"n_levels": spec.n_levels, "F": spec.n_features_per_level,
               "log2_hashmap_size": spec.log2_hashmap_size,
               "base_resolution": spec.base_resolution,
               "per_level_scale": spec.per_level_scale,
               "dense_levels": int(sum(spec.dense))},
      "points": n,
      "reps": a.reps,
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "loadavg_1min": os.getloadavg()[0], "jax": jax.__version__},
      "points_per_s": {k: pts(k) for k in best if k.endswith(("_fwd", "_fwd_bwd"))},
      "ratio_fwd": best["naive_fwd"] / best["ours_fwd"],
      "ratio_fwd_bwd": best["naive_fwd_bwd"] / best["ours_fwd_bwd"],
      "ffi_kernel_available": has_ffi,
      "ratio_fwd_ffi": best["naive_fwd"] / best["ffi_fwd"] if has_ffi else None,
      "ratio_fwd_bwd_ffi": best["naive_fwd_bwd"] / best["ffi_fwd_bwd"] if has_ffi else None,
      "field_points": a.field_points,
      "ratio_field_normals_fwd_bwd": best["field_normals_naive"] / best["field_normals_ours"],
      "ratio_field_normals_fwd_bwd_ffi": (best["field_normals_naive"] / best["field_normals_ffi"]
                                          if has_ffi else None),
      "breakdown_ms": {
          "ours_fwd_total": 1e3 * best["ours_fwd"],
          "stage_index_weights (materialised)": 1e3 * best["stage_index_weights"],
          "stage_gather_interp (precomputed rows)": 1e3 * best["stage_gather_interp"],
          "stage_scatter_add (precomputed updates, 128/pt)": 1e3 * best["stage_scatter"],
          "ours_table_grad (jax backward, level-major: index recompute + one scatter per dense/hashed block)":
              1e3 * best["ours_table_grad_scatter"],
          "ours_fwd_bwd_total": 1e3 * best["ours_fwd_bwd"],
          "naive_fwd_total": 1e3 * best["naive_fwd"],
          "naive_fwd_bwd_total": 1e3 * best["naive_fwd_bwd"],
          "field_normals_fwd_bwd_ours": 1e3 * best["field_normals_ours"],
          "field_normals_fwd_bwd_naive": 1e3 * best["field_normals_naive"],
          **({"field_normals_fwd_bwd_ffi": 1e3 * best["field_normals_ffi"]} if has_ffi else {}),
          **({"ffi_fwd_total": 1e3 * best["ffi_fwd"],
              "ffi_table_grad": 1e3 * best["ffi_table_grad"],
              "ffi_fwd_bwd_total": 1e3 * best["ffi_fwd_bwd"]} if has_ffi else {}),
      },
      "median_ms": {k: 1e3 * v[1] for k, v in t.items()},
      "max_abs_diff_vs_naive": diffs,
      "trace_and_compile_s": compile_s,
  }
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(res, f, indent=2)
  print(json.dumps(res, indent=2))
  return res


if __name__ == "__main__":
  main()
