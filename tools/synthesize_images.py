"""Syn-HOI image synthesis with a Flax Stable Diffusion pipeline (local weights).

    python tools/synthesize_images.py --sd_dir SD --out images/ \
        [--phrases interfusion_jax/assets/interaction_phrases.txt] [--per_phrase 3] \
        [--steps 50] [--guidance 7.5] [--seed 0] [--mode pmap|loop]

For every phrase and j in [0, per_phrase) it writes
``{phrase with spaces -> _}_{j}.png`` (the official naming, which
tools/import_poses.py parses back) from the prompt
"a photo of a person {phrase}, full body".

* Deterministic: image (phrase, j) uses the seed crc32("phrase#j") + --seed,
  whatever the device count or the order of the run.
* Resumable: existing PNGs are skipped (writes are atomic).
* Sharded: ``--mode pmap`` generates one image per local device per call
  (jit + pmap inside the diffusers pipeline); ``--mode loop`` one at a time.

SD_DIR is a diffusers directory with Flax weights: unet/, vae/, text_encoder/,
tokenizer/, scheduler/ (e.g. runwayml/stable-diffusion-v1-5, revision "flax",
saved locally). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import numpy as np  # noqa: E402

PROMPT = "a photo of a person {phrase}, full body"
DEFAULT_PHRASES = (pathlib.Path(__file__).resolve().parent.parent / "interfusion_jax" /
                   "assets" / "interaction_phrases.txt")


def read_phrases(path) -> list[str]:
  """Phrases file -> unique phrases in file order (comments/blank lines skipped)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Phrase file {str(path)!r} does not exist.")
  out = []
  for line in path.read_text().splitlines():
    s = line.strip()
    if s and not s.startswith("#") and s not in out:
      out.append(s)
  if not out:
    raise ValueError(f"Phrase file {path} has no phrases.")
  return out


def image_seed(phrase: str, j: int, base: int = 0) -> int:
  """Deterministic per-image seed."""
  return (zlib.crc32(f"{phrase}#{j}".encode()) + base) % (2 ** 31)


def image_name(phrase: str, j: int) -> str:
  return f"{phrase.replace(' ', '_')}_{j}.png"


def load_pipeline(sd_dir):
  """Builds FlaxStableDiffusionPipeline + params from a local diffusers dir."""
  d = pathlib.Path(sd_dir)
  need = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
  if not d.is_dir():
    raise FileNotFoundError(f"Stable Diffusion directory {str(d)!r} does not exist.")
  missing = [s for s in need if not (d / s).is_dir()]
  if missing:
    raise FileNotFoundError(f"{d} lacks sub-folders {missing}; expected a diffusers "
                            "layout with Flax weights.")
  from diffusers import (FlaxAutoencoderKL, FlaxDDIMScheduler,  # pylint: disable=g-import-not-at-top
                         FlaxStableDiffusionPipeline, FlaxUNet2DConditionModel)
  from transformers import CLIPTokenizer, FlaxCLIPTextModel  # pylint: disable=g-import-not-at-top
  unet, unet_p = FlaxUNet2DConditionModel.from_pretrained(str(d / "unet"), local_files_only=True)
  vae, vae_p = FlaxAutoencoderKL.from_pretrained(str(d / "vae"), local_files_only=True)
  text = FlaxCLIPTextModel.from_pretrained(str(d / "text_encoder"), local_files_only=True)
  tok = CLIPTokenizer.from_pretrained(str(d / "tokenizer"), local_files_only=True)
  sched, sched_state = FlaxDDIMScheduler.from_pretrained(str(d / "scheduler"),
                                                         local_files_only=True)
  pipe = FlaxStableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                     scheduler=sched, safety_checker=None,
                                     feature_extractor=None)
  params = dict(unet=unet_p, vae=vae_p, text_encoder=text.params, scheduler=sched_state)
  return pipe, params


def _save_png(path: pathlib.Path, img: np.ndarray) -> None:
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  tmp = path.with_name(path.name + ".tmp.png")
  iio.imwrite(tmp, np.clip(np.asarray(img) * 255 + 0.5, 0, 255).astype(np.uint8))
  os.replace(tmp, path)


def synthesize(sd_dir, phrases: list[str], out_dir, *, per_phrase: int = 3, steps: int = 50,
               guidance: float = 7.5, seed: int = 0, mode: str = "pmap",
               log=print) -> list[pathlib.Path]:
  """Generates every missing image; returns the paths written in this call."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  todo = [(p, j) for p in phrases for j in range(per_phrase)
          if not (out_dir / image_name(p, j)).is_file()]
  log(f"{len(phrases) * per_phrase - len(todo)} images exist, {len(todo)} to generate")
  if not todo:
    return []
  pipe, params = load_pipeline(sd_dir)
  written, t0 = [], time.time()
  if mode == "loop":
    for p, j in todo:
      ids = pipe.prepare_inputs([PROMPT.format(phrase=p)])
      img = pipe(ids, params, jax.random.PRNGKey(image_seed(p, j, seed)),
                 num_inference_steps=steps, guidance_scale=guidance, jit=False).images
      path = out_dir / image_name(p, j)
      _save_png(path, np.asarray(img)[0])
      written.append(path)
  elif mode == "pmap":
    from flax import jax_utils  # pylint: disable=g-import-not-at-top
    n = jax.local_device_count()
    rep = jax_utils.replicate(params)
    for s in range(0, len(todo), n):
      batch = todo[s:s + n]
      padded = batch + [batch[-1]] * (n - len(batch))
      ids = pipe.prepare_inputs([PROMPT.format(phrase=p) for p, _ in padded])
      ids = ids.reshape((n, 1) + ids.shape[1:])
      keys = jnp.stack([jax.random.PRNGKey(image_seed(p, j, seed)) for p, j in padded])
      g = jnp.full((n,), guidance, jnp.float32)
      imgs = pipe(ids, rep, keys, num_inference_steps=steps, guidance_scale=g,
                  jit=True).images
      imgs = np.asarray(imgs).reshape((n,) + imgs.shape[-3:])
      for (p, j), img in zip(batch, imgs):
        path = out_dir / image_name(p, j)
        _save_png(path, img)
        written.append(path)
      log(f"{s + len(batch)} / {len(todo)} ({(s + len(batch)) / (time.time() - t0):.2f} img/s)")
  else:
    raise ValueError(f"--mode {mode!r}: use pmap or loop.")
  return written


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sd_dir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--phrases", default=str(DEFAULT_PHRASES))
  p.add_argument("--per_phrase", type=int, default=3)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--guidance", type=float, default=7.5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--mode", default="pmap", choices=("pmap", "loop"))
  a = p.parse_args(argv)
  synthesize(a.sd_dir, read_phrases(a.phrases), a.out, per_phrase=a.per_phrase,
             steps=a.steps, guidance=a.guidance, seed=a.seed, mode=a.mode)
  return 0


if __name__ == "__main__":
  sys.exit(main())
