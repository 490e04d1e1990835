"""The training step's physical limit: FLOPs and bytes from XLA's cost analysis.

    python benchmarks/bench_cost_model.py [--variant riding_a_bike] [--tiny]

Writes benchmarks/results/cost_model.json (``cost_model_tiny.json`` with
``--tiny``: the smoke variant and the tests' tiny IF UNet; checks the script,
seconds on a CPU). Nothing runs and nothing of IF-I-XL size is allocated: each
part is lowered on abstract inputs (``bench_step_device.abstract_step``) and
``jax.stages.Lowered.cost_analysis()`` reads the lowered HLO module, before
any backend optimisation. Three parts:

* ``unet``: one IF UNet forward (``model.apply``) at the step's batch:
  2 (the CFG pair) x 4 renders x ``render.batch_size`` cameras, in the dtype
  ``unet_dtype="auto"`` gives on a GPU/TPU (bf16). The SDS gradient stops at
  the UNet's output, so the step runs it forward only.
* ``renders``: the four renders of every camera (``step.render_views``),
  forward and backward, with the geometry and regulariser terms
  (``step.geometry_terms``, ``step.regulariser_terms``); the SDS loss is
  replaced by the sum of the renders' pixels (the SDS pull-back is linear in
  the pixels: the same backward work), so no UNet is in it.
* ``step``: the whole ``step.train_step`` (occupancy update, the above, Adam).

The hash grid is lowered with ``field.hashgrid_backend=jax`` (the GPU/TPU
path: XLA sees a custom call's FLOPs as zero).

How cumsums are counted. JAX 0.10.2 lowers ``cumsum`` to a ``reduce_window``
whose window spans the whole axis; the HLO cost analysis counts it as
N (N - 1) additions for N elements (XLA rewrites it to a scan later, in the
backend). ``reduce_window_flops`` reads every reduce-window of the lowered
text and gives what the cost analysis charges for it: output elements x
(window size - 1). Each part reports ``flops_raw`` (XLA's number),
``cumsum_flops_raw`` (the reduce-windows' share of it), and ``flops`` =
``flops_raw - cumsum_flops_raw + cumsum_elements`` (a scan: one addition per
element). ``bytes`` is XLA's "bytes accessed" of the unfused module (every op
reads its operands and writes its result: an upper bound on the traffic);
``bytes_io`` is the compulsory traffic (arguments read once, results written
once: for the UNet its 4.3 G bf16 weights; a lower bound).

The ``roofline`` section divides the UNet and the step by the peak dense bf16
FLOP/s and the memory bandwidth of ``CHIPS``: the compute-bound time, the
memory-bound times of ``bytes_io`` and of ``bytes``, the step rate the larger
of the compute-bound and ``bytes_io`` times allows, and the rate at 40 % MFU.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_step_device  # noqa: E402

# (name, peak dense bf16 FLOP/s, memory bandwidth bytes/s), vendors' data sheets.
CHIPS = (("H100 SXM", 989e12, 3.35e12), ("H200", 989e12, 4.8e12), ("A100 SXM", 312e12, 2.0e12),
         ("TPU v5p", 459e12, 2.76e12), ("TPU v5e", 197e12, 0.82e12))
MFU = 0.4
GRID = {"field.hashgrid_backend": "jax"}


# ----------------------------------------------------------------------------
# Counting.


def _dims(type_text: str) -> tuple[int, ...]:
  """``tensor<8x1000xf32>`` -> (8, 1000); ``tensor<f32>`` -> ()."""
  inner = type_text[len("tensor<"):-1]
  return tuple(int(d) for d in inner.split("x")[:-1])


def reduce_window_flops(hlo_text: str) -> tuple[float, float]:
  """What the HLO cost analysis charges the reduce-windows of a StableHLO module.

  Each ``stablehlo.reduce_window`` costs output elements x (window elements
  - 1) (one reducer application per extra window element; every cumsum of
  JAX 0.10.2 is one, with a window as long as its axis). A function is
  charged once per ``call`` of it (JAX lowers each cumsum into a private
  function and calls it from every use), starting from ``@main``, as the
  cost analysis charges a called computation at each call site.

  Returns:
    (flops, output elements) of the module's reduce-windows, calls expanded.
  """
  own: dict = {}      # function -> [flops, elements]
  calls: dict = {}    # function -> callee names, one per call site
  lines = hlo_text.splitlines()
  func = None
  for i, line in enumerate(lines):
    head = re.match(r"\s*func\.func\s+(?:public\s+|private\s+)?@([\w.$-]+)\(", line)
    if head:
      func = head.group(1)
      own[func], calls[func] = [0.0, 0.0], []
      continue
    if func is None:
      continue
    calls[func] += re.findall(r"(?:func\.)?call @([\w.$-]+)\(", line)
    if '"stablehlo.reduce_window"(' not in line:
      continue
    window = re.search(r"window_dimensions = array<i64: ([\d, ]+)>", line)
    size = math.prod(int(w) for w in window.group(1).split(",")) if window else 1
    for sig in lines[i + 1:]:
      if sig.lstrip().startswith("})"):
        result = re.findall(r"tensor<[^<>]*>", sig.split("->", 1)[1])[0]
        n = math.prod(_dims(result))
        own[func][0] += n * (size - 1)
        own[func][1] += n
        break
  memo: dict = {}

  def total(name: str) -> tuple[float, float]:
    if name not in memo:
      f, e = own.get(name, (0.0, 0.0))
      for callee in calls.get(name, ()):
        cf, ce = total(callee)
        f, e = f + cf, e + ce
      memo[name] = (f, e)
    return memo[name]

  return total("main")


def nbytes(tree) -> int:
  """Bytes of a pytree of arrays or ``jax.ShapeDtypeStruct``s."""
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def cost(fn, *args) -> dict:
  """XLA's cost analysis of jitted ``fn`` lowered on abstract ``args``, with its
  cumsums counted as scans, and its compulsory traffic ``bytes_io`` (every
  argument read once, every result written once)."""
  lowered = fn.lower(*args)
  c = lowered.cost_analysis()
  c = c[0] if isinstance(c, (list, tuple)) else c
  raw, nbytes_ = float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0))
  rw_flops, rw_elements = reduce_window_flops(lowered.as_text())
  return {"flops": raw - rw_flops + rw_elements, "flops_raw": raw,
          "cumsum_flops_raw": rw_flops, "cumsum_elements": rw_elements, "bytes": nbytes_,
          "bytes_io": float(nbytes(args) + nbytes(jax.eval_shape(fn, *args))),
          "transcendentals": float(c.get("transcendentals", 0.0))}


# ----------------------------------------------------------------------------
# The parts.


def unet_input_shapes(a: dict) -> tuple:
  """Abstract (params, x, t, emb) of one UNet call at the step's batch."""
  g = a["guidance"]
  model, res = g["model"], g["resolution"]
  from interfusion_jax.stage2 import step as step_lib
  batch = 2 * len(step_lib.RENDERS) * int(a["config"].render.batch_size)
  sds = jax.ShapeDtypeStruct
  return ({"params": a["frozen"]["guidance"]["unet"]},
          sds((batch, 3, res, res), model.dtype), sds((batch,), jnp.int32),
          sds((batch, bench_step_device.TEXT_TOKENS, g["text_dim"]), model.dtype))


def renders_loss(params, state, anchor, key, spec):
  """The renders, geometry and regularisers of every camera of a step, no UNet:
  mean over cameras of (sum of the four renders' pixels + geometry + L_reg)."""
  from interfusion_jax.nerf import camera as camera_lib
  from interfusion_jax.stage2 import schedules
  from interfusion_jax.stage2 import step as step_lib

  def one(k, index):
    k_cam, k_shade, k_render, k_geo = jax.random.split(k, 4)
    cam = camera_lib.sample_camera(k_cam, spec.camera, index=index,
                                   count=spec.settings.batch_size)
    head = jnp.asarray(anchor.head, jnp.float32)
    cams = step_lib.derived_cameras(cam, state.object_center, head, spec)
    ambient = schedules.ambient_only(state.step, spec.schedule.ambient_only_steps)
    shadings = step_lib.sample_shadings(k_shade, ambient, spec)
    outs = step_lib.render_views(params, cams, state.occupancy, k_render, shadings, spec)
    geo, _ = step_lib.geometry_terms(params, outs, anchor, k_geo, spec)
    reg = step_lib.regulariser_terms(outs)
    return (sum(jnp.sum(outs[n].rgb) for n in step_lib.RENDERS)
            + sum(geo.values()) + sum(reg.values()))

  cameras = jnp.arange(spec.settings.batch_size)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(cameras)
  return jnp.mean(jax.vmap(one)(keys, cameras))


def lone_cumsum(n: int) -> dict:
  """What the cost analysis charges one ``cumsum`` of ``n`` float32 (the
  renderer's size: rays x samples), beside the closed form n (n - 1)."""
  c = cost(jax.jit(jnp.cumsum), jax.ShapeDtypeStruct((n,), jnp.float32))
  return {"elements": n, "flops_raw": c["flops_raw"], "n_times_n_minus_1": float(n * (n - 1)),
          "flops": c["flops"]}


def measure(variant: str, tiny: bool) -> dict:
  """Cost of the three parts, lowered for a GPU (bf16 UNet)."""
  from interfusion_jax.stage2 import step as step_lib

  a = bench_step_device.abstract_step(variant, tiny=tiny, platform="cuda", overrides=GRID)
  spec, state, frozen, key = a["spec"], a["state"], a["frozen"], a["key"]
  model = a["guidance"]["model"]
  parts, seconds = {}, {}
  t0 = time.perf_counter()
  parts["unet"] = cost(jax.jit(model.apply), *unet_input_shapes(a))
  seconds["unet"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  grad = jax.jit(jax.value_and_grad(lambda p, s, an, k: renders_loss(p, s, an, k, spec)))
  parts["renders"] = cost(grad, state.params, state, frozen["anchor"], key)
  seconds["renders"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  parts["step"] = cost(jax.jit(step_lib.make_train_step(spec)), state, frozen, key)
  seconds["step"] = time.perf_counter() - t0
  cfg = a["config"]
  batch = 2 * len(step_lib.RENDERS) * int(cfg.render.batch_size)
  parts["unet"]["batch"] = batch
  n_params = sum(math.prod(s.shape) for s in jax.tree_util.tree_leaves(frozen["guidance"]["unet"]))
  rays_samples = int(cfg.render.height) * int(cfg.render.width) * int(cfg.render.num_samples)
  return {"parts": parts, "lone_cumsum": lone_cumsum(rays_samples), "lower_s": {k: round(v, 2) for k, v in seconds.items()},
          "unet_params": n_params, "unet_dtype": a["guidance"]["unet_dtype"],
          "variant": cfg.variant,
          "render": {"height": cfg.render.height, "width": cfg.render.width,
                     "cameras": int(cfg.render.batch_size),
                     "num_samples": int(cfg.render.num_samples)}}


def roofline(parts: dict) -> list:
  """Per chip, for the UNet and the step: the compute-bound time (FLOPs / peak),
  the memory-bound time of the compulsory traffic (``bytes_io`` / bandwidth)
  and of the unfused module (``bytes`` / bandwidth, an upper bound), the step
  rate the larger of the first two allows, and the rate at ``MFU`` of the peak."""
  rows = []
  for name, peak, bw in CHIPS:
    row = {"chip": name, "peak_bf16_flops": peak, "bandwidth_bytes_s": bw}
    for part in ("unet", "step"):
      p = parts[part]
      tc, tm = p["flops"] / peak, p["bytes_io"] / bw
      row[part] = {"compute_ms": tc * 1e3, "memory_ms": tm * 1e3,
                   "memory_unfused_ms": p["bytes"] / bw * 1e3,
                   "max_it_s": 1.0 / max(tc, tm), "it_s_at_mfu": MFU * peak / p["flops"]}
    rows.append(row)
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variant", default="riding_a_bike", help="configs/hoi.py scene preset")
  ap.add_argument("--tiny", action="store_true", help="smoke variant and tiny UNet (seconds)")
  ap.add_argument("--out", default="", help="JSON path (default benchmarks/results/"
                  "cost_model.json, cost_model_tiny.json with --tiny)")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  m = measure(args.variant, args.tiny)
  import jaxlib
  p = m["parts"]
  result = {
      "what": ("tiny IF UNet (tests/tiny_models.py), smoke variant" if args.tiny
               else f"IF-I-XL UNet, variant {m['variant']!r}")
              + f", lowered for cuda on abstract inputs, hash grid 'jax'; UNet batch "
              f"{p['unet']['batch']} in {m['unet_dtype']}",
      "counting": "XLA cost analysis of the lowered (unoptimised) HLO; flops = flops_raw - "
                  "cumsum_flops_raw + cumsum_elements (reduce-window cumsums as scans); bytes "
                  "= 'bytes accessed' of the unfused module (upper bound); bytes_io = arguments + "
                  "results (lower bound); cumsum functions charged per call",
      **{k: v for k, v in m.items() if k != "parts"},
      "parts": p,
      "other_flops": p["step"]["flops"] - p["unet"]["flops"] - p["renders"]["flops"],
      "unet_share_of_step": p["unet"]["flops"] / p["step"]["flops"],
      "mfu": MFU,
      "roofline": roofline(p),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "wall_s": round(time.perf_counter() - t0, 1),
  }
  out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" /
                     ("cost_model_tiny.json" if args.tiny else "cost_model.json"))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
