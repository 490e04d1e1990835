"""Benchmark of the full stage-2 training step (PAPER.md defaults, tiny UNet).

Measures, in ONE run on this machine (ratios are the result; absolute times
depend on the host):
  * one full step at the paper's default config (hash grid 2^19 x 16 levels,
    64x64, 512 samples per ray, empty-space skipping) with a tiny random
    pixel-space UNet in the real diffusers format, and its breakdown: the four
    renders (forward + backward of the render alone) vs the four CFG guidance
    calls (forward + backward to the images);
  * step time vs render resolution (32 / 64 / 128) and vs samples per ray
    (128 / 256 / 512);
  * full step with empty-space skipping vs dense sampling (naive reference);
  * full step and the four guidance calls with Perp-Neg (config.guidance.
    perp_neg: 4 x 4 denoiser inputs per camera) against without (4 x 2);
  * step time vs the per-ray sample budget (``--parts=budget``): the fixed
    starting budget against the sizes a run grows it to when occupied
    samples overflow it (stage2/budget.py), and the compile each growth costs.

Usage: PYTHONPATH=. python benchmarks/bench_step.py [--quick] [--parts=...] [--perp_neg_only]
Writes benchmarks/results/step.json (--out; ``--perp_neg_only``: only the Perp-Neg
rows, to benchmarks/results/step_perp_neg.json).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import hoi  # noqa: E402
from interfusion_jax.stage2 import setup as setup_lib  # noqa: E402
from interfusion_jax.stage2 import step as train  # noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402


def _time(fn, *args, repeats=3):
  out = fn(*args)
  jax.block_until_ready(out)            # compile + first run
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeats


def _time_pair(fa, fb, repeats):
  """Median seconds of ``fa()`` and ``fb()``, compiled first, then timed interleaved
  (a, b, a, b, ...) so the machine's other load hits both alike."""
  jax.block_until_ready(fa())
  jax.block_until_ready(fb())
  ta, tb = [], []
  for _ in range(repeats):
    for f, out in ((fa, ta), (fb, tb)):
      t0 = time.perf_counter()
      jax.block_until_ready(f())
      out.append(time.perf_counter() - t0)
  return float(np.median(ta)), float(np.median(tb))


def perp_neg_rows(base_cfg, pn_cfg, guidance, repeats):
  """Step and guidance-call (fwd + bwd of the four SDS terms) times without and
  with Perp-Neg, each pair timed interleaved in this run."""
  out = {}
  steps, guides = [], []
  for cfg in (base_cfg, pn_cfg):
    spec, frozen = _scene(cfg, guidance)
    state = train.init_state(jax.random.PRNGKey(0), spec)
    step = jax.jit(train.make_train_step(spec))
    steps.append(lambda step=step, state=state, frozen=frozen:
                 step(state, frozen, jax.random.PRNGKey(1))[0])
    key = jax.random.PRNGKey(2)
    images = jax.random.uniform(key, (4, spec.height, spec.width, 3))

    @jax.jit
    def guide(imgs, spec=spec, frozen=frozen):
      def f(x):
        outs = {n: type("O", (), {"rgb": x[i].reshape(-1, 3)})()
                for i, n in enumerate(train.RENDERS)}
        terms, _ = train.sds_terms(outs, frozen, jnp.int32(0), key, jnp.float32(0.98), spec,
                                   azimuth_deg=jnp.float32(30.0))
        return sum(terms.values())
      return jax.grad(f)(imgs)
    guides.append(lambda guide=guide, images=images: guide(images))
  t_s, t_s_pn = _time_pair(*steps, repeats)
  t_g, t_g_pn = _time_pair(*guides, repeats)
  out.update(step_s=t_s, perp_neg_step_s=t_s_pn, step_ratio=t_s_pn / t_s,
             guidance_fwd_bwd_s=t_g, perp_neg_guidance_fwd_bwd_s=t_g_pn,
             guidance_ratio=t_g_pn / t_g, repeats_interleaved=repeats,
             unet_batch_per_camera={"without": 8, "with_perp_neg": 16})
  return out


def _scene(cfg, guidance):
  from interfusion_jax.body import anchor as body_anchor
  from interfusion_jax.pose import anchor as pose_anchor
  pose = pose_anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  anchor = body_anchor.prepare_anchor_from_model(
      cfg.body.model, cfg.body.gender, pose.body_pose, pose.global_orient,
      config_lib.anchor_spec(config_lib.parse(cfg)))
  gspec, gparams, table = guidance
  spec = setup_lib.train_spec(config_lib.parse(cfg), gspec)
  return spec, {"guidance": gparams, "text": table, "anchor": anchor}


def step_time(cfg, guidance, repeats):
  spec, frozen = _scene(cfg, guidance)
  state = train.init_state(jax.random.PRNGKey(0), spec)
  step = jax.jit(train.make_train_step(spec))
  # Advance past warm-up so the occupancy grid reflects the fields.
  key = jax.random.PRNGKey(1)
  f = lambda s: step(s, frozen, key)[0]
  return _time(f, state, repeats=repeats), spec, frozen, state


def breakdown(spec, frozen, state, repeats):
  from interfusion_jax.nerf import camera as camera_lib
  key = jax.random.PRNGKey(2)
  cam = camera_lib.sample_camera(key, spec.camera)
  cams = train.derived_cameras(cam, state.object_center, frozen["anchor"].head, spec)
  shading = train.sample_shadings(key, jnp.bool_(True), spec)

  @jax.jit
  def renders(params):
    def f(p):
      outs = train.render_views(p, cams, state.occupancy, key, shading, spec)
      return sum(jnp.sum(o.rgb) for o in outs.values())
    return jax.grad(f)(params)

  images = jax.random.uniform(key, (4, spec.height, spec.width, 3))

  @jax.jit
  def guidance(imgs):
    def f(x):
      outs = {n: type("O", (), {"rgb": x[i].reshape(-1, 3)})() for i, n in enumerate(train.RENDERS)}
      terms, _ = train.sds_terms(outs, frozen, jnp.int32(0), key, jnp.float32(0.98), spec,
                                 azimuth_deg=jnp.float32(30.0))
      return sum(terms.values())
    return jax.grad(f)(imgs)

  return _time(renders, state.params, repeats=repeats), _time(guidance, images, repeats=repeats)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true", help="fewer variants / repeats")
  parser.add_argument("--base", default="paper",
                      help="config variant to start from (paper needs > 14 GB RAM on CPU)")
  parser.add_argument("--resolutions", default="32,64,128")
  parser.add_argument("--samples", default="128,256,512")
  parser.add_argument("--field_chunks", type=int, default=0,
                      help="config.render.field_chunks (0 = the variant's value); 8 cuts "
                           "render memory ~6x, which the paper variant needs on a 24 GB CPU host")
  parser.add_argument("--perp_neg_only", action="store_true",
                      help="only the base step and the Perp-Neg rows")
  parser.add_argument("--parts", default="base,breakdown,dense,resolution,samples,budget",
                      help="comma list of: base, breakdown, dense, resolution, samples, budget")
  parser.add_argument("--budgets", default="",
                      help="per-ray sample budgets of the budget part (default: the "
                           "variant's starting budget, x2, x4)")
  parser.add_argument("--budget_resolution", type=int, default=0,
                      help="render size of the budget part (0 = the variant's)")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  args.out = args.out or str(ROOT / "benchmarks" / "results" /
                             ("step_perp_neg.json" if args.perp_neg_only else "step.json"))
  jax.config.update("jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/interfusion_jax/jax_cache"))
  import tiny_models
  from interfusion_jax.guidance import loading, prompts
  tmp = tempfile.mkdtemp()
  gdir = tiny_models.make_flax_guidance_dir(pathlib.Path(tmp) / "g", kind="pixel")
  base = hoi.get_config(args.base)
  base.guidance.weights_dir = str(gdir)
  gspec, gparams = loading.load_guidance(gdir, config_lib.guidance_options(config_lib.parse(base)))
  model, tparams = loading.load_text_encoder(gdir)
  encode = prompts.clip_text_encoder(loading.load_tokenizer(gdir), model, tparams)
  table = prompts.embedding_table(encode, config_lib.prompt_spec(config_lib.parse(base)))
  guidance = (gspec, gparams, table)
  repeats = 1 if args.quick else 3
  results = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
             "load_average_at_start": os.getloadavg()[0], "repeats": repeats,
             "guidance": "tiny random pixel UNet (tests/tiny_models.py), 8x8 input"}

  def variant(**changes):
    cfg = hoi.get_config(args.base)
    cfg.guidance.weights_dir = str(gdir)
    if args.field_chunks:
      cfg.render.field_chunks = args.field_chunks
    for k, v in changes.items():
      sec, key = k.split("__")
      cfg[sec][key] = v
    return cfg

  base_cfg = variant()
  results["base_variant"] = args.base
  results["field_chunks"] = int(base_cfg.render.field_chunks)
  results["base_resolution"] = base_cfg.render.height
  results["base_samples_per_ray"] = base_cfg.render.num_samples
  if args.perp_neg_only:
    results["perp_neg"] = perp_neg_rows(base_cfg, variant(guidance__perp_neg=True), guidance,
                                        max(5, repeats))
    _dump(args.out, results)
    print(json.dumps(results, indent=2))
    return
  parts = set(args.parts.split(","))
  if "budget" in parts:
    results["budget"] = budget_part(args, variant, guidance, repeats, results, args.out)
    _dump(args.out, results)
  if not parts & {"base", "breakdown", "dense", "resolution", "samples"}:
    print(json.dumps(results, indent=2))
    return
  t_default, spec, frozen, state = step_time(base_cfg, guidance, repeats)
  results["base_step_s"] = t_default
  _dump(args.out, results)
  t_r, t_g = breakdown(spec, frozen, state, repeats)
  results["breakdown_s"] = {"renders_fwd_bwd": t_r, "guidance_fwd_bwd": t_g,
                            "renders_over_guidance": t_r / t_g}
  _dump(args.out, results)
  results["perp_neg"] = perp_neg_rows(base_cfg, variant(guidance__perp_neg=True), guidance,
                                      max(5, repeats))
  _dump(args.out, results)
  t_dense = step_time(variant(render__skip_empty=False), guidance, repeats)[0]
  results["dense_step_s"] = t_dense
  results["skip_over_dense"] = t_default / t_dense
  _dump(args.out, results)
  res = {str(base_cfg.render.height): t_default}
  for r in [int(x) for x in args.resolutions.split(",")]:
    if str(r) not in res:
      res[str(r)] = step_time(variant(render__height=r, render__width=r), guidance, repeats)[0]
    results["step_s_vs_resolution"] = res
    results["step_ratio_vs_resolution"] = {k: v / t_default for k, v in res.items()}
    _dump(args.out, results)
  samples = {str(base_cfg.render.num_samples): t_default}
  for n in [int(x) for x in args.samples.split(",")]:
    if str(n) not in samples:
      samples[str(n)] = step_time(variant(render__num_samples=n), guidance, repeats)[0]
    results["step_s_vs_samples_per_ray"] = samples
    results["step_ratio_vs_samples_per_ray"] = {k: v / t_default for k, v in samples.items()}
    _dump(args.out, results)
  print(json.dumps(results, indent=2))


def budget_part(args, variant, guidance, repeats, results, out):
  """Step time at the fixed starting budget and at the sizes growth reaches (x2, x4),
  each compiled once (the cost of one growth: that compile)."""
  size = {}
  if args.budget_resolution:
    size = dict(render__height=args.budget_resolution, render__width=args.budget_resolution)
  start = config_lib.start_budget(config_lib.parse(variant()).render)
  budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [
      start, 2 * start, 4 * start]
  part = {"resolution": args.budget_resolution or variant().render.height,
          "start_budget": start, "step_s": {}, "compile_and_first_step_s": {},
          "samples_dropped": {}}
  for b in budgets:
    cfg = variant(render__sample_budget=b, render__budget_growth="fixed", **size)
    spec, frozen = _scene(cfg, guidance)
    state = train.init_state(jax.random.PRNGKey(0), spec)
    step = jax.jit(train.make_train_step(spec))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    new, metrics = step(state, frozen, key)
    jax.block_until_ready(new)
    part["compile_and_first_step_s"][str(b)] = time.perf_counter() - t0
    part["samples_dropped"][str(b)] = float(metrics["samples_dropped"])
    part["step_s"][str(b)] = _time(lambda s: step(s, frozen, key)[0], state, repeats=repeats)
    part["step_ratio_vs_start"] = {k: v / part["step_s"][str(start)]
                                   for k, v in part["step_s"].items()}
    results["budget"] = part
    _dump(out, results)
  return part


def _dump(path, results):
  """Writes the results so far (the run may be long; partial results survive)."""
  pathlib.Path(path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  main()
