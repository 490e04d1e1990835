"""Can the built-in prior alone give ONE object field its named shape?

    PYTHONPATH=. python benchmarks/bench_prior_shape.py --object chair --color blue \
        [--sharpness 20] [--camera-kappa 8] [--steps 300] [--image out.png]

An isolation experiment, not the trainer: one object field (the ``cpu``
variant's field, 32x32 renders, 64 dense samples per ray, white background)
is optimised by object SDS with the built-in prior plus the ``cpu`` sparsity
term, from cameras of the ``cpu`` distribution aimed at the centre of the
object placed against its library pose (as in the prior's bank). No human, no
interaction render, no geometric loss, no camera tracing. It then reports the
object field's volume, its IoU with every parametric object placed by its
rule (``metrics.object_shape_match`` semantics) and writes 4 views at 96x96.
Results are appended to benchmarks/results/prior_shape.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import hoi  # noqa: E402
from interfusion_jax.nerf import camera as camera_lib# noqa: E402
from interfusion_jax.stage2 import setup as setup_lib  # noqa: E402
from interfusion_jax.stage2 import step as train  # noqa: E402
from interfusion_jax.evaluation import metrics
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import config as config_lib  # noqa: E402
from interfusion_jax.nerf import render as render_lib# noqa: E402
from interfusion_jax.guidance import core  # noqa: E402
from interfusion_jax.prior import assets, objects, placement, scenes  # noqa: E402


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--object", default="chair", choices=sorted(scenes.INTERACTIONS))
  ap.add_argument("--color", default="", help="colour word ('' = none)")
  ap.add_argument("--sharpness", type=float, default=20.0)
  ap.add_argument("--camera-kappa", type=float, default=8.0)
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--sparsity", type=float, default=10.0)
  ap.add_argument("--image", default="")
  ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prior_shape.json"))
  args = ap.parse_args(argv)

  cfg = hoi.get_config("cpu")
  word = scenes.INTERACTIONS[args.object][2]
  cfg.prompt.object = f"a {args.color} {word}" if args.color else f"a {word}"
  model = setup_lib.model_fns(config_lib.parse(cfg))
  rspec = render_lib.RenderSpec(radius=float(cfg.field.radius), num_samples=64,
                                sample_budget=64, skip_empty=False)
  camspec = config_lib.camera_spec(config_lib.parse(cfg))
  body_model = assets._body_model("default")  # pylint: disable=protected-access
  pose, orient = assets._library_pose(scenes.INTERACTIONS[args.object][0])  # pylint: disable=protected-access
  body = scenes.posed_body(body_model, pose, orient)
  placed = placement.place_named(args.object, body.vertices, body.faces, body.joints).mesh
  centre = jnp.asarray(objects.bbox_center(placed), jnp.float32)
  gspec, gparams, table = assets.load_builtin_guidance(config_lib.guidance_options(config_lib.parse(cfg)), config_lib.prompt_spec(config_lib.parse(cfg)), progress=False)
  gparams = dict(gparams, camera_kappa=jnp.float32(args.camera_kappa),
                 sharpness=jnp.float32(args.sharpness),
                 object_sharpness=jnp.float32(args.sharpness))
  gspec = dataclasses.replace(gspec, camera_conditioning=args.camera_kappa > 0)
  tspec = setup_lib.train_spec(config_lib.parse(cfg), gspec)
  params = model.init(jax.random.PRNGKey(0))["object"]
  opt = optax.adam(float(cfg.optim.lr_field), b1=float(cfg.optim.b1), b2=float(cfg.optim.b2),
                   eps=float(cfg.optim.eps))

  def loss_fn(p, key):
    kc, kg = jax.random.split(key)
    cam = camera_lib.sample_camera(kc, camspec)
    c = camera_lib.recenter_camera(cam, float(cfg.camera.object_scale), centre)
    o, d = render_lib.camera_rays(c, 32, 32)
    out = render_lib.render_rays(model.field, p, o, d, jnp.ones(3), rspec)
    emb = train.prompt_embedding(table, "object",
                                 train.camera_view_index(cam.elevation, cam.azimuth, tspec))[None]
    sds, _ = core.guidance_apply(gspec, gparams, out.rgb.reshape(1, 32, 32, 3), emb,
                                 table["uncond"], kg,
                                 camera=(cam.position / jnp.linalg.norm(cam.position))[None])
    return sds + args.sparsity * jnp.mean(jnp.sqrt(out.opacity ** 2 + 0.01))

  @jax.jit
  def step(p, st, key):
    g = jax.grad(loss_fn)(p, key)
    up, st = opt.update(g, st, p)
    return optax.apply_updates(p, up), st

  st = opt.init(params)
  t0 = time.perf_counter()
  for i in range(args.steps):
    params, st = step(params, st, jax.random.PRNGKey(i))
  jax.block_until_ready(params)
  train_s = time.perf_counter() - t0

  res, radius = 96, float(cfg.field.radius)
  sigma = metrics.density_grid(jax.jit(lambda x: model.density(params, x)), res, radius)
  mask = metrics.occupied(sigma)
  ious = metrics.object_shape_match(sigma, body.vertices, body.faces, body.joints, radius)
  best = max(ious, key=ious.get)
  row = dict(object=args.object, color=args.color, sharpness=args.sharpness,
             camera_kappa=args.camera_kappa, steps=args.steps, train_s=round(train_s, 1),
             volume_litres=round(metrics.volume_litres(mask, metrics.voxel_size(res, radius)), 1),
             named_iou=round(ious[args.object], 3), best=best, best_iou=round(ious[best], 3))
  print(json.dumps(row))
  if args.image:
    views = []
    for az in (0.0, 90.0, 180.0, 270.0):
      cam = jax.tree_util.tree_map(lambda a: a[0], camera_lib.orbit_cameras(
          1, 1.6, 20.0, 60.0, target=tuple(np.asarray(centre)), azimuth_start_deg=az))
      o, d = render_lib.camera_rays(cam, 96, 96)
      views.append(np.asarray(render_lib.render_rays(model.field, params, o, d, jnp.ones(3),
                                                     rspec).rgb.reshape(96, 96, 3)))
    run_io.write_png(pathlib.Path(args.image), run_io.image_grid([views]))
  out = pathlib.Path(args.out)
  rows = json.loads(out.read_text()) if out.exists() else []
  rows.append(row)
  run_io.write_json(out, rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
