"""T5 text encoding for DeepFloyd IF, offline, with an on-disk embedding cache.

PAPER.md "Guidance model": IF-I is conditioned on T5-XXL (v1.1) encoder
states. As threestudio's DeepFloyd prompt processor: the T5 tokenizer pads or
truncates every prompt to 77 tokens (``</s>`` appended), and the encoder runs
with the attention mask; the conditioning is its ``last_hidden_state``
[77, 4096] (padded positions included).

* Weights: ``root/text_encoder`` (``config.json`` + ``model.safetensors``,
  sharded ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``,
  the fp16 variant's ``model.fp16-*.safetensors`` +
  ``model.safetensors.index.fp16.json``, or ``flax_model.msgpack``), read
  through ``loading``'s safetensors path into transformers'
  ``FlaxT5EncoderModel(_do_init=False)``: never a random init. Cast to bf16
  on the host; computed in bf16 (fp16 overflows in T5).
* Tokenizer: ``root/tokenizer`` with ``tokenizer.json`` (fast) or
  ``spiece.model`` (needs the ``sentencepiece`` package).
* Cache: one ``.npy`` per (model fingerprint, text) under ``cache_dir``, so a
  run or a sweep encodes each prompt once; T5 is loaded only when some
  prompt is missing and its device arrays are deleted afterwards.

transformers 4.57.6's ``FlaxT5Attention._relative_position_bucket`` calls
``jnp.clip(x, a_max=...)``, which jax >= 0.8 rejects; ``_fix_flax_t5`` swaps
in an equivalent (``jnp.minimum``) on the class at load time, in this
process only (site-packages untouched).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.guidance import prompts
from interfusion_jax.guidance import weights as loading

PathLike = str | os.PathLike
MAX_LENGTH = 77  # threestudio's DeepFloyd prompt processor
CACHE_VERSION = "t5-v1"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
_TOKENIZER_AUX = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_WEIGHT_NAMES = ("flax_model.msgpack", "model.safetensors", "model.fp16.safetensors")


# ----------------------------------------------------------------------------
# Directory checks.
# ----------------------------------------------------------------------------
def _weights(folder: pathlib.Path) -> tuple[pathlib.Path | None, list[str]]:
  """(usable weights file or index, missing shard names of the first index found)."""
  for n in _WEIGHT_NAMES:
    if (folder / n).is_file():
      return folder / n, []
    for idx in loading._index_names(n):
      if (folder / idx).is_file():
        shards = sorted(set(loading._read_json(folder / idx)["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        return (None if missing else folder / idx), [f"{folder.name}/{s} (listed in {idx})"
                                                     for s in missing]
  return None, []


def check_t5_dir(root: PathLike) -> None:
  """Raises a clear error unless ``root`` has a usable T5 encoder + tokenizer.

  ``loading.WeightsNotFoundError`` lists every missing file (config, weights,
  shards named by an index, tokenizer); ``loading.ModelTypeError`` for the
  8-bit bitsandbytes variant or a non-T5 ``text_encoder``.
  """
  root = pathlib.Path(root)
  te, tok = root / "text_encoder", root / "tokenizer"
  missing = []
  if not (te / "config.json").is_file():
    missing.append("text_encoder/config.json")
  else:
    cfg = loading._read_json(te / "config.json")
    if cfg.get("quantization_config") or cfg.get("load_in_8bit"):
      raise loading.ModelTypeError(_EIGHT_BIT.format(where=te / "config.json"))
    if cfg.get("model_type") not in (None, "t5"):
      raise loading.ModelTypeError(
          f"{te} holds a {cfg.get('model_type')!r} model; DeepFloyd IF needs the T5 encoder "
          f"(T5EncoderModel, t5-v1_1-xxl). {loading.IF_HELP}")
  path, shards = _weights(te) if te.is_dir() else (None, [])
  if path is None:
    eight = sorted(p.name for p in te.glob("*8bit*")) if te.is_dir() else []
    if eight and not shards:
      raise loading.ModelTypeError(_EIGHT_BIT.format(where=f"{te} ({', '.join(eight)})"))
    missing += shards or [
        "text_encoder/<one of model.safetensors, model.safetensors.index.json + its shards, "
        "model.fp16.safetensors, model.safetensors.index.fp16.json + its shards, "
        "flax_model.msgpack>"]
  elif "8bit" in path.name:
    raise loading.ModelTypeError(_EIGHT_BIT.format(where=path))
  if not any((tok / n).is_file() for n in TOKENIZER_FILES):
    missing.append("tokenizer/<one of tokenizer.json, spiece.model>")
  if missing:
    raise loading.WeightsNotFoundError(
        f"DeepFloyd IF directory {str(root)!r} has no complete T5 text encoder; missing:\n  "
        + "\n  ".join(missing) + f"\n{loading.IF_HELP}")


_EIGHT_BIT = ("The T5 text encoder at {where} is the 8-bit bitsandbytes variant, which only "
              "runs in PyTorch with CUDA. Use the full-precision files (text_encoder/"
              "model-0000k-of-0000n.safetensors + model.safetensors.index.json) or the fp16 "
              "ones (text_encoder/model.fp16-0000k-of-0000n.safetensors + "
              "model.safetensors.index.fp16.json) instead.")


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------
def load_tokenizer(root: PathLike) -> Any:
  """``root/tokenizer`` -> T5TokenizerFast (tokenizer.json) or T5Tokenizer (spiece.model)."""
  folder = pathlib.Path(root) / "tokenizer"
  from transformers import T5Tokenizer, T5TokenizerFast
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if (folder / "tokenizer.json").is_file():
      return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    try:
      return T5Tokenizer.from_pretrained(str(folder), local_files_only=True)
    except ImportError as e:  # sentencepiece missing
      raise ImportError(f"{folder} has only spiece.model, which needs the sentencepiece package "
                        "(pip install sentencepiece), or add a tokenizer.json.") from e


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = MAX_LENGTH
             ) -> tuple[np.ndarray, np.ndarray]:
  """Pads / truncates to ``max_length`` with ``</s>``, as threestudio (a warning on truncation).

  Returns:
    (ids, mask): [N, max_length] int32 each.
  """
  texts = list(texts)
  for t in texts:
    n = len(tokenizer(t, add_special_tokens=True)["input_ids"])
    if n > max_length:
      warnings.warn(f"Prompt {t!r} has {n} T5 tokens, over {max_length}; it is truncated.",
                    stacklevel=2)
  out = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                  add_special_tokens=True, return_tensors="np")
  return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32)


# ----------------------------------------------------------------------------
# Encoder.
# ----------------------------------------------------------------------------
def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
  """T5's relative-position buckets (transformers' rule, with ``jnp.minimum``).

  Args:
    relative_position: int array (memory - query positions).

  Returns:
    int32 bucket ids of the same shape.
  """
  buckets = 0
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  large = max_exact + (jnp.log(relative_position / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact))
  large = jnp.minimum(large, num_buckets - 1)
  return (buckets + jnp.where(is_small, relative_position, large)).astype("i4")


def _fix_flax_t5() -> None:
  from transformers.models.t5 import modeling_flax_t5 as m
  m.FlaxT5Attention._relative_position_bucket = staticmethod(relative_position_bucket)


def load_encoder(root: PathLike, *, dtype: str = "bfloat16", sharding: Any = None
                 ) -> tuple[Any, Any]:
  """``root/text_encoder`` -> (FlaxT5EncoderModel without params, params).

  Params are cast to ``dtype`` on the host, then ``device_put`` to
  ``sharding`` (default: first device); the module computes in ``dtype``.
  """
  from transformers import FlaxT5EncoderModel, T5Config
  _fix_flax_t5()
  folder = pathlib.Path(root) / "text_encoder"
  config = T5Config.from_pretrained(str(folder), local_files_only=True)
  jd = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  model = FlaxT5EncoderModel(config, _do_init=False, dtype=jd)
  shapes = jax.eval_shape(lambda k: model.init_weights(k, (1, 1)), jax.random.PRNGKey(0))
  params = loading._load_params(folder, shapes, loading._transformers_rename(model.base_model_prefix),
                                dtype=dtype, sharding=sharding)
  return model, params


def text_encoder(tokenizer: Any, model: Any, params: Any, max_length: int = MAX_LENGTH
                 ) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> [N, max_length, D] float32 ``last_hidden_state`` (masked attention)."""
  @jax.jit
  def run(params, ids, mask):
    return model(ids, attention_mask=mask, params=params).last_hidden_state.astype(jnp.float32)

  def encode(texts):
    ids, mask = tokenize(tokenizer, texts, max_length)
    return np.asarray(run(params, ids, mask))
  return encode


def free(params: Any) -> None:
  """Deletes the device buffers of a params tree (T5 before training starts)."""
  for a in jax.tree_util.tree_leaves(params):
    if isinstance(a, jax.Array) and not a.is_deleted():
      a.delete()


# ----------------------------------------------------------------------------
# Cache.
# ----------------------------------------------------------------------------
def default_cache_dir() -> pathlib.Path:
  """``$INTERFUSION_TEXT_CACHE`` or ``~/.cache/interfusion_jax/text_embeddings``."""
  env = os.environ.get("INTERFUSION_TEXT_CACHE", "")
  return pathlib.Path(env or os.path.expanduser("~/.cache/interfusion_jax/text_embeddings"))


def fingerprint(root: PathLike, dtype: str = "bfloat16", max_length: int = MAX_LENGTH) -> str:
  """Hex id of a T5 copy: config and tokenizer bytes, weight file names and
  sizes, compute dtype and token length (weights are not read: 19 GB)."""
  root = pathlib.Path(root)
  h = hashlib.sha256(f"{CACHE_VERSION}|{dtype}|{max_length}".encode())
  te, tok = root / "text_encoder", root / "tokenizer"
  h.update((te / "config.json").read_bytes())
  for n in TOKENIZER_FILES + _TOKENIZER_AUX:
    if (tok / n).is_file():
      h.update(n.encode() + (tok / n).read_bytes())
  for p in sorted(te.iterdir()):
    if p.is_file() and p.suffix in (".safetensors", ".msgpack", ".json"):
      h.update(f"{p.name}:{p.stat().st_size}".encode())
  return h.hexdigest()[:24]


def _cache_file(folder: pathlib.Path, text: str) -> pathlib.Path:
  return folder / (hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] + ".npy")


def encode_texts(root: PathLike, texts: Sequence[str], *, cache_dir: PathLike | None = None,
                 dtype: str = "bfloat16", max_length: int = MAX_LENGTH,
                 stats: dict | None = None) -> np.ndarray:
  """T5 embeddings of ``texts``, each encoded at most once per cache.

  Cached texts are read from ``cache_dir/<fingerprint>/<sha256(text)>.npy``;
  the rest are encoded in one batch (T5 loaded, used, and its device arrays
  deleted) and written there.

  Args:
    root: IF directory (``text_encoder/``, ``tokenizer/``).
    texts: N prompts.
    cache_dir: default ``default_cache_dir()``.
    dtype: T5 compute dtype ("bfloat16"; "float32" for tests).
    stats: optional dict; "encoded" and "cached" counts are added to it.

  Returns:
    [N, max_length, D] float32.
  """
  check_t5_dir(root)
  folder = pathlib.Path(cache_dir or default_cache_dir()) / fingerprint(root, dtype, max_length)
  texts = list(texts)
  out: dict[str, np.ndarray] = {}
  for t in set(texts):
    f = _cache_file(folder, t)
    if f.is_file():
      out[t] = np.load(f)
  todo = sorted(set(texts) - set(out))
  if todo:
    tokenizer = load_tokenizer(root)
    model, params = load_encoder(root, dtype=dtype)
    emb = text_encoder(tokenizer, model, params, max_length)(todo)
    free(params)
    folder.mkdir(parents=True, exist_ok=True)
    for t, e in zip(todo, emb):
      out[t] = e
      tmp = folder / f".{os.getpid()}.tmp.npy"
      np.save(tmp, e)
      os.replace(tmp, _cache_file(folder, t))
    (folder / "model.json").write_text(json.dumps({"root": str(pathlib.Path(root).resolve()),
                                                   "dtype": dtype, "max_length": max_length}))
  if stats is not None:
    stats["encoded"] = stats.get("encoded", 0) + len(todo)
    stats["cached"] = stats.get("cached", 0) + len(set(texts)) - len(todo)
  return np.stack([out[t] for t in texts])


def encode_prompts(root: PathLike, spec: prompts.PromptSpec, *, cache_dir: PathLike | None = None,
                   dtype: str = "bfloat16", stats: dict | None = None) -> dict[str, jax.Array]:
  """The scene's embedding table from T5 (same layout as ``prompts.embedding_table``).

  Returns:
    {"human", "head", "object", "interaction": [V, 77, D], "uncond": [77, D]}
    float32 (D = 4096 for T5-XXL).
  """
  return prompts.embedding_table(
      lambda texts: encode_texts(root, texts, cache_dir=cache_dir, dtype=dtype, stats=stats), spec)
