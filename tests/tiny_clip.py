"""A tiny random FlaxCLIPModel saved in the real on-disk format (tests only).

``make_tiny_clip(path)`` writes config.json + flax_model.msgpack (via
save_pretrained), a byte-level CLIP BPE tokenizer (vocab.json, merges.txt)
with a small hand-written vocabulary, and preprocessor_config.json.
"""
import json
import pathlib


def _bytes_to_unicode():
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


def write_tiny_tokenizer(path: pathlib.Path) -> int:
  """Writes vocab.json/merges.txt; returns the vocabulary size."""
  chars = _bytes_to_unicode()
  vocab = {}
  for c in chars:
    vocab[c] = len(vocab)
  for c in chars:
    vocab[c + "</w>"] = len(vocab)
  merges = [("r", "i"), ("ri", "d"), ("a", "n"), ("i", "n"), ("in", "g</w>")]
  for a, b in merges:
    vocab[a + b] = len(vocab)
  vocab["<|startoftext|>"] = len(vocab)
  vocab["<|endoftext|>"] = len(vocab)
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text(
      "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  (path / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "CLIPTokenizer", "model_max_length": 32,
      "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
      "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
  return len(vocab)


def tiny_clip_config(vocab_size: int, image_size: int = 32, projection_dim: int = 16):
  """The ``transformers.CLIPConfig`` of the tiny test CLIP (1 layer, width 32)."""
  from transformers import CLIPConfig
  return CLIPConfig(
      text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=32, bos_token_id=vocab_size - 2,
                       eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, image_size=image_size, patch_size=8),
      projection_dim=projection_dim)


def make_tiny_clip(path, image_size: int = 32, projection_dim: int = 16, seed: int = 0):
  """Creates a tiny random CLIP model directory at ``path``; returns the path."""
  from transformers import FlaxCLIPModel
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  vocab_size = write_tiny_tokenizer(path)
  cfg = tiny_clip_config(vocab_size, image_size, projection_dim)
  # Random parameters filled in NumPy from the traced shapes (running the
  # Flax initialiser compiles for ~40 s on a loaded CPU).
  import jax
  import numpy as np
  model = FlaxCLIPModel(cfg, _do_init=False)
  shapes = jax.eval_shape(lambda k: model.init_weights(k, model.input_shape),
                          jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "logit_scale":
      return np.full(leaf.shape, np.log(1 / 0.07), np.float32)
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name == "bias":
      return np.zeros(leaf.shape, np.float32)
    return (rng.normal(size=leaf.shape) * 0.05).astype(np.float32)
  params = jax.tree_util.tree_map_with_path(fill, shapes)
  model.save_pretrained(str(path), params=params)
  (path / "preprocessor_config.json").write_text(json.dumps({
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711], "crop_size": image_size}))
  return path
