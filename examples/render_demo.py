r"""Renderer demo: a turntable of a randomly initialised two-field scene.

An example of the renderer library on its own (``nerf/``), not a command of
the package. Usage (from the repository root)::

  python examples/render_demo.py --workdir=runs/demo
  python examples/render_demo.py --workdir=runs/demo \
      --config=configs/hoi.py:smoke --num_frames=8

The "human" field is a freshly initialised hash-grid field (its blob density
bias makes a ball at the origin), the "object" field a second one shifted by
``--object_offset`` and shrunk by ``--object_scale``; their albedos are tinted
(warm / blue) so the Eq. 6 composite is visible. Both fields are marched on
shared samples with occupancy-grid empty-space skipping and composited with
``render.render_two_fields``. Writes ``frames/frame_XXX.png`` (RGB | normals |
opacity) and ``turntable.gif`` into the workdir.
"""
import dataclasses
import os
import pathlib
import sys
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from interfusion_jax.nerf import background as bg_lib
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.nerf import field as field_lib
from interfusion_jax.nerf import occupancy as occ_lib
from interfusion_jax.nerf import render
from interfusion_jax.stage2 import run_io

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "hoi.py")

HUMAN_TINT = (1.0, 0.62, 0.45)
OBJECT_TINT = (0.25, 0.5, 1.0)


def tinted_field_fn(spec: field_lib.FieldSpec, tint, offset=(0.0, 0.0, 0.0),
                    scale: float = 1.0):
  """A render.FieldFn for a field placed at ``offset``, shrunk by ``scale``, tinted.

  sigma'(x) = sigma((x - offset) / scale); albedo' = 0.35 albedo + 0.65 tint.

  Returns:
    (params, x [M, 3]) -> (sigma [M], albedo [M, 3], normals [M, 3]).
  """
  offset = np.asarray(offset, np.float32)
  tint = np.asarray(tint, np.float32)

  def fn(params, x):
    sigma, albedo, normals = field_lib.field_forward_with_normals(
        params, (x - offset) / scale, spec)
    return sigma, 0.35 * albedo + 0.65 * tint, normals

  return fn


def render_turntable(cfg: ml_collections.ConfigDict, workdir, num_frames: int,
                     object_offset=(0.8, 0.0, 0.0), object_scale: float = 0.6,
                     progress: bool = True) -> dict:
  """Renders and writes the demo turntable.

  Args:
    cfg: a configs/hoi.py config (validated here).
    workdir: output directory (created).
    num_frames: number of turntable views F.
    object_offset: [3] object field position.
    object_scale: object field size relative to the human field.
    progress: show a tqdm bar.

  Returns:
    dict(frames=[F paths], gif=path, rgb=[F, H, W, 3] float array,
    opacity=[F, H, W]).
  """
  run = config_lib.parse(cfg)
  out_dir = pathlib.Path(workdir)
  (out_dir / "frames").mkdir(parents=True, exist_ok=True)
  fspec = config_lib.field_spec(run)
  rspec = config_lib.render_spec(run)
  ospec = config_lib.occupancy_spec(run)
  cspec = config_lib.camera_spec(run)
  bspec = config_lib.background_spec(run)
  key = jax.random.PRNGKey(cfg.seed)
  kh, ko, kb, kg = jax.random.split(key, 4)
  params_h = field_lib.init_field(kh, fspec)
  params_o = field_lib.init_field(ko, fspec)
  params_bg = bg_lib.init_background(kb, bspec)
  human_fn = tinted_field_fn(fspec, HUMAN_TINT)
  object_fn = tinted_field_fn(fspec, OBJECT_TINT, object_offset, object_scale)

  # Occupancy grid on the SUMMED density of both fields (a few EMA updates).
  density = lambda x: human_fn(params_h, x)[0] + object_fn(params_o, x)[0]
  grid_spec = dataclasses.replace(ospec, warmup_steps=0)
  update = jax.jit(lambda g, k: occ_lib.update_occupancy(g, density, k, 0, grid_spec))
  grid = occ_lib.init_occupancy(grid_spec)
  for k in jax.random.split(kg, 4):
    grid = update(grid, k)

  h, w = int(cfg.render.height), int(cfg.render.width)
  target = 0.5 * np.asarray(object_offset, np.float32)
  cams = camera_lib.eval_orbit(num_frames, cspec, target=target)

  @jax.jit
  def render_view(cam, grid):
    rays_o, rays_d = render.camera_rays(cam, h, w)
    bg = bg_lib.background_color(params_bg, rays_d, bspec)
    shading = render.Shading(cam.light_position, jnp.float32(cfg.shading.ambient_light),
                             jnp.float32(cfg.shading.diffuse_light), jnp.float32(0.0))
    out = render.render_two_fields(human_fn, params_h, object_fn, params_o, rays_o,
                                   rays_d, bg, rspec, occupancy=grid, shading=shading)
    img = render.to_image(out, h, w)
    normal = render.normals_to_image(img["normal"], img["opacity"])
    return img["rgb"], normal, img["opacity"], out.num_dropped

  frames, rgbs, opacities, tiles = [], [], [], []
  views = range(num_frames)
  if progress:
    from tqdm import tqdm
    views = tqdm(views, desc="render", unit="view")
  for i in views:
    cam = jax.tree.map(lambda a: a[i], cams)
    rgb, normal, opacity, _ = jax.device_get(render_view(cam, grid))
    tile = run_io.image_grid([[rgb, normal, opacity]], pad=1)
    path = out_dir / "frames" / f"frame_{i:03d}.png"
    run_io.write_png(path, tile)
    frames.append(path)
    tiles.append(tile)
    rgbs.append(rgb)
    opacities.append(opacity)
  import imageio.v3 as iio
  gif = out_dir / "turntable.gif"
  run_io.atomic_write_bytes(gif, iio.imwrite("<bytes>", np.stack(tiles), extension=".gif",
                                             duration=100, loop=0))
  return dict(frames=frames, gif=gif, rgb=np.stack(rgbs), opacity=np.stack(opacities))


FLAGS = flags.FLAGS
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG + ":cpu",
    "Config file (configs/hoi.py[:paper|cpu|smoke]) with dotted overrides.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Output directory.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 0, "Views (0 = config.train.turntable_frames).")
_OFFSET = flags.DEFINE_list("object_offset", ["0.8", "0.0", "0.0"], "Object field position x,y,z.")
_SCALE = flags.DEFINE_float("object_scale", 0.6, "Object field size relative to the human's.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  offset = tuple(float(v) for v in _OFFSET.value)
  if len(offset) != 3:
    raise app.UsageError(f"--object_offset needs 3 numbers x,y,z, got {_OFFSET.value}.")
  n = _NUM_FRAMES.value or int(cfg.train.turntable_frames)
  res = render_turntable(cfg, _WORKDIR.value, n, offset, _SCALE.value)
  print(f"wrote {len(res['frames'])} frames to {pathlib.Path(_WORKDIR.value) / 'frames'} "
        f"and {res['gif']}")


if __name__ == "__main__":
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  config_lib.exit_on_bad_overrides(sys.argv[1:])
  app.run(main)
