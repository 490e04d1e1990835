"""Rebuilds the built-in prior's image bank deterministically.

    PYTHONPATH=. python tools/build_prior.py                 # -> interfusion_jax/assets/prior_bank.npz
    PYTHONPATH=. python tools/build_prior.py --out /tmp/bank.npz --sheet /tmp/bank.png

Renders every colour x object x render-kind combination of ``BankSpec``
(see interfusion_jax/prior/assets.py) with the default body, and writes a
compressed uint8 .npz (a few hundred kB). Same code, same bank: cameras come
from a fixed seed. ``--sheet`` also writes a contact sheet of random entries.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from interfusion_jax.prior import assets  # noqa: E402


def contact_sheet(images: np.ndarray, cols: int = 16, seed: int = 0, rows: int = 8) -> np.ndarray:
  """[rows * R, cols * R, 3] uint8 grid of random bank images."""
  idx = np.random.default_rng(seed).choice(len(images), min(len(images), rows * cols),
                                           replace=False)
  imgs = images[idx]
  pad = rows * cols - len(imgs)
  if pad:
    imgs = np.concatenate([imgs, np.full((pad,) + imgs.shape[1:], 255, np.uint8)])
  r = imgs.shape[1]
  return imgs.reshape(rows, cols, r, r, 3).transpose(0, 2, 1, 3, 4).reshape(rows * r, cols * r, 3)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=str(assets.SHIPPED_PATH), help="output .npz")
  ap.add_argument("--resolution", type=int, default=assets.BankSpec.resolution)
  ap.add_argument("--body", default="default", choices=("default", "mannequin"))
  ap.add_argument("--sheet", default="", help="optional contact-sheet PNG")
  args = ap.parse_args(argv)
  spec = assets.BankSpec(resolution=args.resolution, body=args.body)
  t0 = time.time()
  bank = assets.build_bank(spec, progress=True)
  path = assets.save_bank(args.out, bank)
  print(f"wrote {path}: {len(bank['images'])} images {bank['images'].shape[1:]} "
        f"({path.stat().st_size / 1e6:.2f} MB) in {time.time() - t0:.0f} s; meta {bank['meta']}")
  if args.sheet:
    import imageio.v2 as imageio
    imageio.imwrite(args.sheet, contact_sheet(bank["images"]))
    print(f"wrote {args.sheet}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
