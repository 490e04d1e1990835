"""CLIP text/image features from a local FlaxCLIPModel directory.

Used by the codebook build (image embeddings of pose renders), the CLIP
retrieval (text embedding of the query) and the CLIP re-rank. Everything is
read from a local directory (``save_pretrained`` layout: config.json,
flax_model.msgpack, tokenizer files); a hub model id (``openai/clip-vit-base-patch32``)
is fetched once into the hub cache by ``interfusion_jax.hub`` (only those files).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax import hub

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
log = logging.getLogger(__name__)


class ClipDirError(FileNotFoundError):
  """The CLIP directory is missing or incomplete."""


@dataclasses.dataclass(frozen=True)
class ClipBundle:
  """A loaded CLIP model.

  Attributes:
    model: transformers.FlaxCLIPModel (loaded with _do_init=False).
    params: its parameters (pytree).
    tokenizer: the matching CLIP tokenizer.
    image_size: model input resolution (pixels).
    mean, std: [3] image normalisation.
    name: the directory it was loaded from.
  """
  model: Any
  params: Any
  tokenizer: Any
  image_size: int
  mean: tuple
  std: tuple
  name: str
  image_fn: Any = None  # jit(params, pixel_values [N,3,S,S]) -> [N, D]
  text_fn: Any = None   # jit(params, input_ids, attention_mask) -> [T, D]

  @property
  def dim(self) -> int:
    return int(self.model.config.projection_dim)


def load_clip(clip_dir: str | os.PathLike) -> ClipBundle:
  """Loads FlaxCLIPModel + tokenizer from a local directory or a hub model id.

  Raises:
    ClipDirError: the directory is missing, or lacks config/weights/tokenizer.
    hub.HubError: an id that cannot be fetched (or is not cached when offline).
  """
  d = pathlib.Path(hub.resolve(str(clip_dir), hub.CLIP, what="CLIP weights")).expanduser()
  if not d.is_dir():
    raise ClipDirError(
        f"CLIP directory {str(d)!r} does not exist. Point config.pose.clip_dir "
        "(or --clip_dir) at a local copy of e.g. openai/clip-vit-base-patch32 "
        "saved with save_pretrained, or leave it empty for the built-in "
        "retrieval.")
  if not (d / "config.json").is_file():
    raise ClipDirError(f"CLIP directory {str(d)!r} has no config.json; it must be "
                       "a save_pretrained directory of a CLIP model.")
  if not (d / "flax_model.msgpack").is_file():
    raise ClipDirError(
        f"CLIP directory {str(d)!r} has no Flax weights (flax_model.msgpack). "
        "Convert PyTorch weights once, where torch is installed: "
        "FlaxCLIPModel.from_pretrained(DIR, from_pt=True).save_pretrained(DIR).")
  if not any((d / t).is_file() for t in ("tokenizer.json", "vocab.json")):
    raise ClipDirError(f"CLIP directory {str(d)!r} has no tokenizer "
                       "(tokenizer.json or vocab.json + merges.txt).")
  from transformers import AutoTokenizer, FlaxCLIPModel  # pylint: disable=g-import-not-at-top
  model, params = FlaxCLIPModel.from_pretrained(str(d), local_files_only=True,
                                                _do_init=False)
  tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
  mean, std = _OPENAI_MEAN, _OPENAI_STD
  pp = d / "preprocessor_config.json"
  if pp.is_file():
    cfg = json.loads(pp.read_text())
    mean = tuple(cfg.get("image_mean", mean))
    std = tuple(cfg.get("image_std", std))
  image_fn = jax.jit(lambda p, x: model.get_image_features(pixel_values=x, params=p))
  text_fn = jax.jit(lambda p, i, m: model.get_text_features(input_ids=i, attention_mask=m,
                                                            params=p))
  return ClipBundle(model=model, params=params, tokenizer=tok,
                    image_size=int(model.config.vision_config.image_size),
                    mean=mean, std=std, name=str(d), image_fn=image_fn, text_fn=text_fn)


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def text_features(clip: ClipBundle, texts: Sequence[str]) -> np.ndarray:
  """Unit-norm CLIP text embeddings.

  Args:
    clip: a loaded ClipBundle.
    texts: T strings.

  Returns:
    [T, D] float32.
  """
  max_len = int(clip.model.config.text_config.max_position_embeddings)
  enc = clip.tokenizer(list(texts), padding="max_length", truncation=True,
                       max_length=max_len, return_tensors="np")
  feats = clip.text_fn(clip.params, enc["input_ids"], enc["attention_mask"])
  return _unit(np.asarray(feats, np.float32))


def preprocess_images(clip: ClipBundle, images: np.ndarray) -> jnp.ndarray:
  """[N,H,W,3] images in [0,1] -> [N,3,S,S] normalised CLIP pixel values."""
  x = jnp.asarray(images, jnp.float32)
  s = clip.image_size
  if x.shape[1:3] != (s, s):
    x = jax.image.resize(x, (x.shape[0], s, s, 3), method="bilinear", antialias=True)
  x = (x - jnp.asarray(clip.mean)) / jnp.asarray(clip.std)
  return jnp.transpose(x, (0, 3, 1, 2))


def image_features(clip: ClipBundle, images: np.ndarray, batch: int = 32) -> np.ndarray:
  """Unit-norm CLIP image embeddings.

  Args:
    clip: a loaded ClipBundle.
    images: [N, H, W, 3] float in [0, 1] (resized to the model resolution).
    batch: images per forward pass.

  Returns:
    [N, D] float32.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images has shape {images.shape}, expected [N, H, W, 3].")
  n = images.shape[0]
  bs = min(batch, 1 << max(n - 1, 0).bit_length())  # few distinct shapes -> few compiles
  out = []
  for i in range(0, n, bs):
    chunk = images[i:i + bs]
    m = chunk.shape[0]
    if m < bs:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - m, 0)], 0)
    px = preprocess_images(clip, chunk)
    out.append(np.asarray(clip.image_fn(clip.params, px), np.float32)[:m])
  return _unit(np.concatenate(out, 0)) if out else np.zeros((0, clip.dim), np.float32)
