"""Drops synthesized images with no person in them (CLIP zero-shot).

    python tools/filter_persons.py --clip_dir CLIP --images images/ \
        --manifest manifest.jsonl [--threshold 0.5]

Each image is scored against "a photo of a person" and alternatives
(objects, animals, scenes without people); softmax over CLIP's scaled cosine
similarities. An image is kept when the person prompt wins and its
probability is >= --threshold. The manifest has one JSON line per image:
{"image", "kept", "p_person", "top", "reason"}; the kept list feeds the body
estimator (e.g. ICON + PIXIE), whose ``*_smpl.npy`` go to
tools/import_poses.py.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from interfusion_jax.pose import clip as clip_lib  # noqa: E402

PERSON = "a photo of a person"
ALTERNATIVES = ("a photo of an object", "a photo of an animal", "a photo of a landscape",
                "a photo of an empty room", "a photo of a vehicle", "a blank image")
_EXT = (".png", ".jpg", ".jpeg", ".webp")


def load_square(path: pathlib.Path) -> np.ndarray:
  """Image file -> centre-cropped square float [S, S, 3] in [0, 1]."""
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  img = np.asarray(iio.imread(path))
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, -1)
  img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
  h, w = img.shape[:2]
  s = min(h, w)
  y, x = (h - s) // 2, (w - s) // 2
  return img[y:y + s, x:x + s]


def person_probabilities(clip, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Zero-shot probabilities.

  Args:
    clip: ClipBundle; images: [N, S, S, 3] in [0, 1].

  Returns:
    probs [N, 1 + A] (column 0 = person), and the prompts [1 + A].
  """
  prompts = np.asarray((PERSON,) + ALTERNATIVES)
  txt = clip_lib.text_features(clip, list(prompts))
  img = clip_lib.image_features(clip, images)
  scale = float(np.exp(np.asarray(clip.params["logit_scale"])))
  logits = scale * img @ txt.T
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  return p / p.sum(1, keepdims=True), prompts


def filter_images(clip_dir, image_paths, manifest, threshold: float = 0.5,
                  batch: int = 32) -> list[dict]:
  """Scores every image and writes the manifest (JSON lines). Returns its rows."""
  clip = clip_lib.load_clip(clip_dir)
  rows = []
  paths = [pathlib.Path(p) for p in image_paths]
  for s in range(0, len(paths), batch):
    chunk, imgs = [], []
    for p in paths[s:s + batch]:
      try:
        imgs.append(load_square(p))
        chunk.append(p)
      except Exception as e:  # pylint: disable=broad-except
        rows.append(dict(image=str(p), kept=False, p_person=0.0, top="",
                         reason=f"unreadable image: {e}"))
    if not chunk:
      continue
    size = clip.image_size
    import jax  # pylint: disable=g-import-not-at-top
    arr = np.stack([np.asarray(jax.image.resize(i, (size, size, 3), "bilinear", antialias=True))
                    for i in imgs])
    probs, prompts = person_probabilities(clip, arr)
    for p, pr in zip(chunk, probs):
      top = int(np.argmax(pr))
      kept = top == 0 and pr[0] >= threshold
      if kept:
        reason = f"person prompt wins with p = {pr[0]:.3f} >= {threshold}"
      elif top != 0:
        reason = f"{prompts[top]!r} scores higher than the person prompt"
      else:
        reason = f"person p = {pr[0]:.3f} < threshold {threshold}"
      rows.append(dict(image=str(p), kept=bool(kept), p_person=float(pr[0]),
                       top=str(prompts[top]), reason=reason))
  manifest = pathlib.Path(manifest)
  manifest.parent.mkdir(parents=True, exist_ok=True)
  manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--clip_dir", required=True)
  p.add_argument("--images", required=True, help="directory of images")
  p.add_argument("--manifest", required=True)
  p.add_argument("--threshold", type=float, default=0.5)
  a = p.parse_args(argv)
  d = pathlib.Path(a.images)
  if not d.is_dir():
    raise FileNotFoundError(f"Image directory {str(d)!r} does not exist.")
  paths = sorted(q for q in d.rglob("*") if q.suffix.lower() in _EXT)
  rows = filter_images(a.clip_dir, paths, a.manifest, a.threshold)
  print(f"kept {sum(r['kept'] for r in rows)} / {len(rows)} images -> {a.manifest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
