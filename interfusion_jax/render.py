"""Re-render a run from its newest checkpoint: turntables (MP4 / GIF) and a multi-view grid.

    python -m interfusion_jax.render --workdir=runs/x [--frames=60] [--out=DIR]

The renders are ``config.train.final_resolution`` pixels square, like the
run's own final outputs (``stage2.outputs.write_renders``). Bad flags, a run
directory without a loadable config or checkpoint, and a size whose estimated
memory exceeds the device's (``stage2.setup.check_memory``) end in one
``error: ...`` line and exit 2, before anything compiles.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import outputs
from interfusion_jax.stage2 import run_io
from interfusion_jax.stage2 import setup


def main(argv=None) -> int:
  """Renders the latest checkpoint of a run directory; returns the exit code."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a run directory of interfusion_jax.train")
  parser.add_argument("--frames", type=int, default=0,
                      help="turntable frames (default config.train.turntable_frames)")
  parser.add_argument("--out", default="", help="output directory (default <workdir>/renders)")
  args = parser.parse_args(argv)
  try:
    if args.frames < 0:
      raise ValueError(f"--frames={args.frames}: must be a positive number of turntable frames "
                       "(0 or absent: config.train.turntable_frames).")
    saved = run_io.load_config(args.workdir)
    setup.check_memory(saved, final_size=int(saved.train.final_resolution))
    config, spec, state = loop.load_trained(args.workdir)
  except (OSError, ValueError) as e:   # ConfigError, TrainSetupError, a corrupt file
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2
  print(loop.describe_checkpoint(args.workdir, state))
  out = pathlib.Path(args.out or pathlib.Path(args.workdir) / "renders")
  out.mkdir(parents=True, exist_ok=True)
  files, _ = outputs.write_renders(state, spec, out,
                                   args.frames or int(config.train.turntable_frames),
                                   int(config.train.final_resolution))
  print("\n".join(sorted(files.values())))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
