"""The full training step on an accelerator with the IF-I-XL UNet: one command.

    python benchmarks/bench_step_device.py [--variant riding_a_bike] [--steps 20]

Writes benchmarks/results/step_device.json:

* the f32 table scatter-add at the step's contention, timed in two fresh
  processes, without and with ``--xla_backend_extra_options=-nvptx-allow-ftz-atomics``
  (``interfusion_jax.accel``; XLA reads the flag only when its backend
  starts, hence the processes);
* steps/s of ``--steps`` training steps of the scene preset (the first is a
  warm-up and not timed), compile time of the step, peak device memory,
  occupied samples dropped by the sample budget (``samples_dropped``);
* UNet MFU: FLOPs of one compiled UNet call at the step's batch (XLA's cost
  analysis) / its measured time / the chip's peak dense bf16 FLOP/s (table
  ``PEAK_BF16``), and the same FLOPs x calls per step / step time;
* jax / jaxlib versions and the XLA_FLAGS in force.

Guidance is DeepFloyd IF-I-XL with random weights (no download; built as
``bench_guidance_device.py`` does) in the ``unet_dtype="auto"`` dtype (bf16
on GPU/TPU), and random T5-shaped prompt embeddings [4 views, 77, 4096].
On a CPU-only machine it refuses (exit 2) unless ``--tiny``: the ``smoke``
variant with the tests' tiny IF UNet, 2 steps, a small scatter, written to
``step_device_tiny.json`` (checks the script, measures nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform as platform_lib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

# Before jax starts a backend: sets the atomics workaround where it applies.
from interfusion_jax import accel  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from interfusion_jax.stage2 import config as config_lib  # noqa: E402

# Peak dense bf16 FLOP/s by device-kind substring (first match wins), from the
# vendors' data sheets (without sparsity).
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
             ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12))
TEXT_TOKENS = 77


def guidance_parts(cfg: config_lib.RunConfig, tiny: bool, platform: str, seed: int = 0,
                   abstract: bool = False) -> dict:
  """DeepFloyd IF guidance of a parsed config with random weights, or their shapes.

  Args:
    cfg: the parsed config (its ``guidance`` section gives the spec's options
      and ``unet_dtype``).
    tiny: the tests' tiny IF UNet instead of IF-I-XL.
    platform: where the step will run ("cpu", "cuda", "tpu"): resolves
      ``unet_dtype="auto"`` (bf16 on GPU/TPU, f32 on the CPU).
    abstract: ``jax.ShapeDtypeStruct`` leaves instead of arrays (nothing of
      the UNet's size is allocated; for lowering and cost analysis).

  Returns:
    {"spec": GuidanceSpec, "params": {"unet", "alphas_cumprod" [1000]},
     "table": {"human", "head", "object", "interaction": [4, 77, D],
     "uncond": [77, D]}, "model": IFUNet, "resolution", "text_dim",
     "unet_dtype": "float32" | "bfloat16"}.
  """
  from bench_guidance_device import XL, random_host_params
  from interfusion_jax.guidance import core, deepfloyd, loading, prompts, schedule

  if tiny:
    import tiny_models
    unet_cfg, text_dim = tiny_models.if_unet_kwargs(), tiny_models.IF_TEXT_DIM
  else:
    unet_cfg, text_dim = XL, 4096
  dtype = core.resolve_unet_dtype(cfg.guidance.unet_dtype, platform)
  jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  model = deepfloyd.IFUNet.from_config(dict(unet_cfg), dtype=jdtype)
  shapes = jax.eval_shape(model.init_weights, jax.random.PRNGKey(seed))
  abar = schedule.alphas_cumprod_from_config(
      {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000})  # IF-I's schedule
  res = int(unet_cfg["sample_size"])
  gspec = core.GuidanceSpec.from_options(
      config_lib.guidance_options(cfg), kind="deepfloyd_if", unet=model, unet_dtype=dtype,
      resolution=res, num_train_timesteps=int(abar.shape[0]))
  views = len(prompts.VIEWS)
  if abstract:
    unet_params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jdtype), shapes)
    emb = lambda *s: jax.ShapeDtypeStruct(s, jdtype)
    abar = jax.ShapeDtypeStruct(abar.shape, jnp.float32)
  else:
    unet_params = loading.to_device(random_host_params(shapes, jdtype, seed))
    rng = np.random.default_rng(seed)
    emb = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32), jdtype)
    abar = jnp.asarray(abar)
  table = {n: emb(views, TEXT_TOKENS, text_dim) for n in ("human", "head", "object", "interaction")}
  table["uncond"] = emb(TEXT_TOKENS, text_dim)
  return {"spec": gspec, "params": {"unet": unet_params, "alphas_cumprod": abar},
          "table": table, "model": model, "resolution": res, "text_dim": text_dim,
          "unet_dtype": dtype}


def abstract_anchor(cfg: config_lib.RunConfig):
  """The anchor of a parsed config as ``jax.ShapeDtypeStruct`` leaves (no grids built).

  Grids [R, R, R] f32 (R = the config's anchor resolution), the body model's
  vertices [V, 3], faces [F, 3] int32, joints [J, 3] and the head [3].
  """
  from interfusion_jax.body import anchor as anchor_lib
  from interfusion_jax.body import model as body_model

  spec = config_lib.anchor_spec(cfg)
  body = body_model.load_body_model(str(cfg.body.model), str(cfg.body.gender))
  r, f32 = int(spec.resolution), jnp.float32
  sds = jax.ShapeDtypeStruct
  return anchor_lib.Anchor(
      occupancy=sds((r, r, r), f32), distance=sds((r, r, r), f32),
      vertices=sds(tuple(body.v_template.shape), f32),
      faces=sds(tuple(body.faces.shape), jnp.int32),
      joints=sds((body.num_joints, 3), f32), head=sds((3,), f32), radius=spec.radius)


def abstract_step(variant: str = "riding_a_bike", tiny: bool = False, platform: str = "cuda",
                  overrides: dict | None = None, seed: int = 0) -> dict:
  """The training step of a scene preset on abstract inputs (for export and cost analysis).

  Nothing of IF-I-XL size is allocated: the UNet parameters come from
  ``jax.eval_shape(model.init_weights, key)``, the prompt table and the anchor
  are ``jax.ShapeDtypeStruct``s, the state is ``jax.eval_shape`` of
  ``step.init_state``.

  Args:
    variant: ``configs/hoi.py`` variant; ``tiny`` uses "smoke" and the tiny UNet.
    platform: the target platform ("cuda", "tpu", "cpu"): the UNet dtype.
    overrides: dotted config keys to set (``{"field.hashgrid_backend": "jax"}``).

  Returns:
    {"spec": TrainSpec, "state": abstract TrainState, "frozen": abstract
     {"guidance", "text", "anchor"}, "key": abstract PRNG key, "config",
     "guidance": ``guidance_parts``' dict (abstract)}.
  """
  from configs import hoi
  from interfusion_jax.stage2 import setup as setup_lib
  from interfusion_jax.stage2 import step as step_lib

  cfg = config_lib.parse(hoi.get_config("smoke" if tiny else variant))
  if overrides:
    cfg = config_lib.override(cfg, overrides)
  g = guidance_parts(cfg, tiny, platform, seed, abstract=True)
  spec = setup_lib.train_spec(cfg, g["spec"])
  key = jax.eval_shape(lambda: jax.random.PRNGKey(seed))
  state = jax.eval_shape(lambda k: step_lib.init_state(k, spec), key)
  frozen = {"guidance": g["params"], "text": g["table"], "anchor": abstract_anchor(cfg)}
  return {"spec": spec, "state": state, "frozen": frozen, "key": key, "config": cfg,
          "guidance": g}


def build_step(variant: str, tiny: bool, seed: int = 0) -> dict:
  """Everything one training step needs, built through the stage-2 setup API.

  With ``guidance_parts`` and ``abstract_step``, the only code that knows how
  a scene, its guidance and the step are put together (adapt here when that
  API changes).

  Args:
    variant: ``configs/hoi.py`` variant (a scene preset); ``tiny`` uses "smoke".
    tiny: the tests' tiny IF UNet instead of IF-I-XL.

  Returns:
    {"step": jitted (state, frozen, key) -> (state, metrics), "state", "frozen",
     "config", "unet": (module, params), "unet_batch": UNet inputs per call,
     "unet_calls_per_step", "resolution", "text_dim", "unet_dtype", "what"}.
  """
  from configs import hoi
  from interfusion_jax.stage2 import setup as setup_lib
  from interfusion_jax.stage2 import step as step_lib

  cfg = config_lib.parse(hoi.get_config("smoke" if tiny else variant))
  g = guidance_parts(cfg, tiny, jax.devices()[0].platform, seed)
  scene = setup_lib.build_scene(cfg, None, guidance=(g["spec"], g["params"], g["table"]))
  state = step_lib.init_state(jax.random.PRNGKey(seed), scene.spec, scene.object_origin)
  cameras = int(cfg.render.batch_size)
  n_renders = len(step_lib.RENDERS)
  dtype = g["unet_dtype"]
  return {"step": jax.jit(step_lib.make_train_step(scene.spec), donate_argnums=(0,)),
          "state": state, "frozen": scene.frozen, "config": cfg,
          "unet": (g["model"], g["params"]["unet"]),
          # Per camera, one UNet call on the renders x the CFG pair (step.sds_terms).
          "unet_batch": 2 * n_renders, "unet_calls_per_step": cameras,
          "resolution": g["resolution"], "text_dim": g["text_dim"], "unet_dtype": dtype,
          "what": ("tiny IF UNet (tests/tiny_models.py)" if tiny else "IF-I-XL UNet")
                  + f", random {dtype} weights, variant {cfg.variant!r}"}


# ----------------------------------------------------------------------------
# The scatter-add probe (run in a child process per XLA_FLAGS value).
# ----------------------------------------------------------------------------
def scatter_rows(points: int, fine_rows: int, seed: int = 0) -> tuple[np.ndarray, int]:
  """Row indices of a hash-grid-like table gradient: [points * 8] int32, total rows.

  Half the points hit the coarsest level (a dense 16^3-cell grid, 17^3
  vertex rows: hundreds of updates per row), half a hashed fine level
  (``fine_rows`` rows: mostly distinct); each point updates its cell's 8
  corners. Points lie in the central half of the box, as ray samples near
  the scene do.
  """
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.25, 0.75, (points, 3))
  corners = np.array([[(c >> i) & 1 for i in range(3)] for c in range(8)])
  coarse = points // 2
  cell = np.floor(x[:coarse] * 16).astype(np.int64)[:, None, :] + corners   # [P, 8, 3]
  r = 17
  rows_c = cell[..., 0] + r * cell[..., 1] + r * r * cell[..., 2]
  cell = np.floor(x[coarse:] * 4096).astype(np.uint64)[:, None, :] + corners.astype(np.uint64)
  primes = np.array([1, 2654435761, 805459861], np.uint64)
  h = (cell[..., 0] * primes[0]) ^ (cell[..., 1] * primes[1]) ^ (cell[..., 2] * primes[2])
  rows_f = r ** 3 + (h % np.uint64(fine_rows)).astype(np.int64)
  rows = np.concatenate([rows_c.reshape(-1), rows_f.reshape(-1)]).astype(np.int32)
  return rows, r ** 3 + fine_rows


def scatter_child(points: int, fine_rows: int, reps: int) -> dict:
  """Times ``table.at[rows].add(updates)`` (f32 [rows, 2]) in this process."""
  rows, total = scatter_rows(points, fine_rows)
  upd = np.random.default_rng(1).standard_normal((rows.shape[0], 2)).astype(np.float32)
  f = jax.jit(lambda t, r, u: t.at[r].add(u))
  table = jnp.zeros((total, 2), jnp.float32)
  r, u = jnp.asarray(rows), jnp.asarray(upd)
  jax.block_until_ready(f(table, r, u))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(table, r, u))
    times.append(time.perf_counter() - t0)
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device": dev.device_kind, "updates": int(rows.shape[0]),
          "table_rows": int(total), "ms": round(1e3 * float(np.median(times)), 4),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run_scatter_child(flags: str, points: int, fine_rows: int, reps: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=flags)
  env[accel.OPT_OUT_ENV] = "1"  # exactly these flags
  out = subprocess.run([sys.executable, __file__, "--scatter_child", f"--points={points}",
                        f"--fine_rows={fine_rows}", f"--reps={reps}"],
                       env=env, capture_output=True, text=True, timeout=600)
  if out.returncode:
    return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1],
            "xla_flags": flags}
  return json.loads(out.stdout.strip().splitlines()[-1])


def scatter_flags() -> tuple[str, accel.Decision]:
  """XLA_FLAGS for the probe: (without the workaround, the decision adding it).

  The decision is forced as if a CUDA plugin were installed; it adds nothing
  when the installed jaxlib is outside the range that knows and needs the
  option (an unknown LLVM option aborts XLA), and the "with" run is skipped.
  """
  without = accel.without_option(os.environ.get("XLA_FLAGS", ""))
  return without, accel.decide_xla_flags(accel.installed_jaxlib_version(), True, without, False)


def scatter_with(probe: dict, decision: accel.Decision, points: int, fine_rows: int,
                 reps: int) -> dict:
  """Adds the "with_flag" run (and the ratio) to ``probe`` (which has "without_flag")."""
  if not decision.changed:
    probe["with_flag"] = {"skipped": decision.reason}
    return probe
  probe["with_flag"] = run_scatter_child(decision.xla_flags, points, fine_rows, reps)
  a, b = probe["without_flag"].get("ms"), probe["with_flag"].get("ms")
  if a and b:
    probe["slowdown_without_flag"] = round(a / b, 2)
  return probe


# ----------------------------------------------------------------------------
def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_BF16:
    if name.lower() in device_kind.lower():
      return flops
  return None


def unet_cost(b: dict, reps: int) -> dict:
  """FLOPs (XLA cost analysis) and time of one UNet call at the step's batch."""
  model, params = b["unet"]
  n, res = b["unet_batch"], b["resolution"]
  dt = model.dtype
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, 3, res, res)), dt)
  t = jnp.asarray(rng.integers(20, 980, n))
  e = jnp.asarray(rng.standard_normal((n, TEXT_TOKENS, b["text_dim"])), dt)
  compiled = jax.jit(model.apply).lower({"params": params}, x, t, e).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0)) or None
  jax.block_until_ready(compiled({"params": params}, x, t, e))
  t0 = time.perf_counter()
  for _ in range(reps):
    out = compiled({"params": params}, x, t, e)
  jax.block_until_ready(out)
  return {"flops": flops, "s": (time.perf_counter() - t0) / reps}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variant", default="riding_a_bike", help="configs/hoi.py scene preset")
  ap.add_argument("--steps", type=int, default=20, help="training steps (the first is warm-up)")
  ap.add_argument("--tiny", action="store_true", help="smoke variant, tiny UNet, 2 steps (CPU)")
  ap.add_argument("--out", default="", help="JSON path (default benchmarks/results/"
                  "step_device.json, step_device_tiny.json with --tiny)")
  ap.add_argument("--scatter_child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--points", type=int, default=262144)
  ap.add_argument("--fine_rows", type=int, default=2 ** 19)
  ap.add_argument("--reps", type=int, default=10)
  args = ap.parse_args(argv)
  if args.scatter_child:
    print(json.dumps(scatter_child(args.points, args.fine_rows, args.reps)))
    return 0
  if args.tiny:
    args.steps, args.points, args.fine_rows, args.reps = 2, 4096, 2 ** 12, 2
  # The probe first: its processes must start their backends while this one
  # holds no device memory (jax preallocates most of a GPU).
  without, with_decision = scatter_flags()
  scatter = {"without_flag": run_scatter_child(without, args.points, args.fine_rows, args.reps)}
  plat = scatter["without_flag"].get("platform")
  if plat in (None, "cpu") and not args.tiny:
    print("bench_step_device: no GPU/TPU (jax runs on "
          f"{plat or 'nothing: ' + scatter['without_flag'].get('error', '?')}); "
          "use --tiny to check the script on the CPU.", file=sys.stderr)
    return 2
  scatter = scatter_with(scatter, with_decision, args.points, args.fine_rows, args.reps)
  dev = jax.devices()[0]
  b = build_step(args.variant, args.tiny)
  state, frozen = b["state"], b["frozen"]
  keys = [jax.random.fold_in(jax.random.PRNGKey(1), i) for i in range(args.steps)]
  t0 = time.perf_counter()
  compiled = b["step"].lower(state, frozen, keys[0]).compile()
  compile_s = time.perf_counter() - t0
  state, m = compiled(state, frozen, keys[0])  # warm-up
  jax.block_until_ready(state)
  metrics = []
  t0 = time.perf_counter()
  for k in keys[1:]:
    state, m = compiled(state, frozen, k)
    metrics.append(m)
  jax.block_until_ready(state)
  timed = max(len(keys) - 1, 1)
  step_s = (time.perf_counter() - t0) / timed if len(keys) > 1 else float("nan")
  dropped = [float(m["samples_dropped"]) for m in metrics]
  loss = [float(m["loss"]) for m in metrics]
  unet = unet_cost(b, args.reps)
  peak = peak_flops(dev.device_kind)
  flops = unet["flops"]
  stats = dev.memory_stats() or {}
  import jaxlib
  result = {
      "what": b["what"] + f", {args.steps} steps (first untimed), "
              f"UNet batch {b['unet_batch']} x {b['unet_calls_per_step']} per step",
      "device": dev.device_kind, "platform": dev.platform, "host": platform_lib.node(),
      "steps_per_s": round(1.0 / step_s, 4) if step_s == step_s else None,
      "step_ms": round(1e3 * step_s, 2) if step_s == step_s else None,
      "compile_s": round(compile_s, 2),
      "peak_device_bytes": stats.get("peak_bytes_in_use"),
      "samples_dropped": {"total": sum(dropped), "max_per_step": max(dropped, default=0.0)},
      "loss_finite": bool(np.all(np.isfinite(loss))),
      "unet": {"dtype": b["unet_dtype"], "flops_per_call": flops,
               "ms_per_call": round(1e3 * unet["s"], 3),
               "peak_bf16_flops": peak,
               "mfu": round(flops / unet["s"] / peak, 4) if flops and peak else None,
               "mfu_of_step": (round(flops * b["unet_calls_per_step"] / step_s / peak, 4)
                               if flops and peak and step_s == step_s else None)},
      "scatter_add": scatter,
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "xla_workaround": accel.apply_xla_workarounds().reason,
  }
  out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" /
                     ("step_device_tiny.json" if args.tiny else "step_device.json"))
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
