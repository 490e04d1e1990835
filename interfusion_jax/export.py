"""Export a run's fields as meshes (GLB + OBJ, and UV-textured) from its newest checkpoint.

    python -m interfusion_jax.export --workdir=runs/x [--resolution=128] [--threshold=T]
        [--texture_size=1024] [--out=DIR]

Marching cubes at the NeRF-occupancy 0.5 level by default
(``stage2.outputs.write_meshes``; the mesh library is ``mesh/export.py``). Bad
flags and a run directory without a loadable config or checkpoint end in one
``error: ...`` line and exit 2, before anything compiles.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs


def check_args(args) -> None:
  """The flags' values, before anything loads.

  Raises:
    ValueError: naming the flag: ``--resolution`` neither 0 (the config's) nor
      >= 4; a ``--threshold`` that is not a finite positive density; a
      ``--texture_size`` neither 0 nor >= 8.
  """
  if args.resolution != 0 and args.resolution < 4:
    raise ValueError(f"--resolution={args.resolution}: must be 0 (config.train.mesh_resolution) "
                     "or an integer >= 4.")
  if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold > 0):
    raise ValueError(f"--threshold={args.threshold}: must be a finite density > 0 (default "
                     "ln2 / config.loss.geo_delta).")
  size = getattr(args, "texture_size", None)
  if size is not None and (size < 0 or 0 < size < 8):
    raise ValueError(f"--texture_size={size}: must be 0 (no textured meshes) or at least 8 "
                     "texels.")


def main(argv=None) -> int:
  """Writes mesh_{human,object,combined}.{glb,obj} and mesh_*_textured.{obj,mtl,png,glb};
  returns the exit code."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run directory of interfusion_jax.train")
  parser.add_argument("--resolution", type=int, default=0,
                      help="marching-cubes lattice size (default config.train.mesh_resolution)")
  parser.add_argument("--threshold", type=float, default=None,
                      help="density iso-level (default ln2 / config.loss.geo_delta)")
  parser.add_argument("--texture_size", type=int, default=None,
                      help="side of the baked texture of the UV-textured meshes, 0: none "
                           "(default config.train.texture_size)")
  parser.add_argument("--out", default="", help="output directory (default <workdir>/final)")
  args = parser.parse_args(argv)
  try:
    check_args(args)
    config, spec, state = loop.load_trained(args.workdir)
  except (OSError, ValueError) as e:   # ConfigError, a corrupt config.json or checkpoint
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2
  print(loop.describe_checkpoint(args.workdir, state))
  out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "final")
  out.mkdir(parents=True, exist_ok=True)
  res = args.resolution or int(config.train.mesh_resolution)
  size = int(config.train.texture_size) if args.texture_size is None else args.texture_size
  files, meshes = outputs.write_meshes(state, spec, out, res, args.threshold, size)
  for name, m in meshes.items():
    print(f"{name}: {len(m.vertices)} vertices, {len(m.faces)} faces")
  print("\n".join(sorted(files.values())))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
