"""Re-render a run from its newest checkpoint: turntables (MP4 / GIF) and a multi-view grid.

    python -m interfusion_jax.render --workdir=runs/x [--frames=60] [--out=DIR]

The renders are ``config.train.final_resolution`` pixels square, like the
run's own final outputs (``stage2.outputs.write_renders``).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs


def main(argv=None) -> int:
  """Renders the latest checkpoint of a run directory; returns the exit code."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run directory of interfusion_jax.train")
  parser.add_argument("--frames", type=int, default=0,
                      help="turntable frames (default config.train.turntable_frames)")
  parser.add_argument("--out", default="", help="output directory (default <workdir>/renders)")
  args = parser.parse_args(argv)
  try:
    config, spec, state = loop.load_trained(args.workdir)
  except (FileNotFoundError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(loop.describe_checkpoint(args.workdir, state))
  out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "renders")
  out.mkdir(parents=True, exist_ok=True)
  files = outputs.write_renders(state, spec, out,
                                args.frames or int(config.train.turntable_frames),
                                int(config.train.final_resolution))
  print("\n".join(sorted(files.values())))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
