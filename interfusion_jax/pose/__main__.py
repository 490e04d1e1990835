"""Text -> anchor pose file + contact sheet.

    python -m interfusion_jax.pose --text "riding a bike" --out anchor.npz \
        [--clip_dir DIR] [--codebook FILE] [--choose best|rank|clip_rerank|sample] \
        [--rank k] [--seed s] [--top_k 7] [--dedup] [--scene "a man ... riding a bike"]

Writes ``anchor.npz`` (see pose/anchor.py; ``--out`` gets ``.npz`` appended when it
lacks it, an existing directory gets ``anchor.npz`` inside; the path written is
printed) and ``anchor.png``, a contact sheet
of the k candidates (front view) with their rank and score, so a person can
pick one and re-run with ``--choose rank --rank N``.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from interfusion_jax.body import model as body_model
from interfusion_jax.pose import anchor as anchor_lib
from interfusion_jax.pose import choose as choose_lib
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.pose import codebook as codebook_lib
from interfusion_jax.pose import render
from interfusion_jax.pose import retrieval

log = logging.getLogger("interfusion_jax.pose")


def write_contact_sheet(path, body, cb: codebook_lib.Codebook,
                        cands: retrieval.Candidates, chosen: int) -> pathlib.Path:
  """Renders the candidates (front | side view) into a PNG captioned "rank score label"."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  spec = render.PoseRenderSpec(azimuths_deg=(0.0, 90.0), height=160, width=160)
  idx = cands.indices
  views = render.render_poses(body, cb.poses[idx], cb.global_orients[idx], spec)["rgb"]
  tiles = np.concatenate([views[:, 0], views[:, 1]], axis=2)  # front | side
  labels = [(cb.phrases(int(c)) or [""])[0] for c in idx]
  caps = [f"{'#' if i == chosen else ''}{i} {s:.3f} {l}"[:38]
          for i, (s, l) in enumerate(zip(cands.scores, labels))]
  sheet = render.contact_sheet(tiles, caps, cols=min(4, len(idx)))
  path = pathlib.Path(path)
  iio.imwrite(path, sheet)
  return path


def check_args(a: argparse.Namespace) -> None:
  """The flags' values, before anything loads.

  Raises:
    ValueError: naming the flag, its value and what is allowed.
  """
  if not a.text.strip():
    raise ValueError('--text is empty; give the interaction, e.g. --text "riding a bike".')
  if a.top_k < 1:
    raise ValueError(f"--top_k={a.top_k}: must be a positive integer.")
  if a.rank < 0 or (a.choose in ("rank", "sample") and a.rank >= a.top_k):
    raise ValueError(f"--rank={a.rank}: must be in [0, --top_k - 1 = {a.top_k - 1}].")
  if not 0 <= a.seed < anchor_lib.SEED_LIMIT:
    raise ValueError(f"--seed={a.seed}: must be an integer in [0, 2^32 - 1 = "
                     f"{anchor_lib.SEED_LIMIT - 1}].")
  if "{interaction}" not in a.template:
    raise ValueError(f"--template={a.template!r}: must contain {{interaction}}.")
  if not a.out.strip():
    raise ValueError("--out is empty; give the anchor file to write, e.g. --out anchor.npz.")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Exit codes: 0 written, 2 bad input (one ``error: ...`` line on stderr)."""
  p = argparse.ArgumentParser(prog="python -m interfusion_jax.pose",
                              description="Stage 1: interaction text -> anchor pose.")
  p.add_argument("--text", required=True, help='interaction T_I, e.g. "riding a bike"')
  p.add_argument("--out", default="anchor.npz")
  p.add_argument("--clip_dir", default="", help="local FlaxCLIPModel dir or hub id, e.g. "
                 "openai/clip-vit-base-patch32 ('' = built-in)")
  p.add_argument("--codebook", default="", help="codebook .npz ('' = built-in)")
  p.add_argument("--body", default="default", help="body model for renders")
  p.add_argument("--choose", default="best", choices=choose_lib.METHODS)
  p.add_argument("--rank", type=int, default=0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--top_k", type=int, default=7)
  p.add_argument("--dedup", action="store_true")
  p.add_argument("--template", default=retrieval.DEFAULT_TEMPLATE)
  p.add_argument("--scene", default="", help="full scene prompt for clip_rerank")
  p.add_argument("--no_sheet", action="store_true", help="skip the contact sheet")
  a = p.parse_args(argv)
  try:
    check_args(a)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cb = codebook_lib.load(a.codebook or None)
    clip = None
    if a.clip_dir:
      clip = clip_lib.load_clip(a.clip_dir)
    body = body_model.load_body_model(a.body) if (clip is not None or not a.no_sheet) else None
    anchor, cands = anchor_lib.find_anchor(
        cb, a.text, clip=clip, body=body, top_k=a.top_k, method=a.choose, rank=a.rank,
        seed=a.seed, use_dedup=a.dedup, template=a.template, scene_prompt=a.scene,
        codebook_name=a.codebook or "builtin")
  except (OSError, ValueError) as e:   # missing / malformed inputs
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
    return 2
  try:   # an existing directory gets DIR/anchor.npz; save_anchor adds a missing .npz
    out = anchor_lib.save_anchor(
        pathlib.Path(a.out) / "anchor.npz" if pathlib.Path(a.out).is_dir() else a.out, anchor)
  except OSError as e:
    print(f"error: --out={a.out}: cannot be written ({e.strerror or e}).", file=sys.stderr)
    return 2
  print(f"backend: {anchor.meta['backend']}; query: {anchor.meta['query']!r}")
  chosen = int(anchor.meta["position"])
  for i, (c, s, l) in enumerate(zip(cands.indices, cands.scores,
                                    anchor.meta["candidate_labels"])):
    mark = "*" if i == chosen else " "
    print(f"{mark} rank {i}: codebook {int(c):5d}  score {float(s):.4f}  {l}")
  print(f"chose: {anchor.meta['source']} -> {out}")
  if not a.no_sheet:
    try:
      sheet = write_contact_sheet(out.with_suffix(".png"), body, cb, cands, chosen)
    except OSError as e:
      print(f"error: contact sheet {out.with_suffix('.png')}: {e}", file=sys.stderr)
      return 2
    print(f"contact sheet: {sheet}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
