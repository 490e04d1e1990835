"""Tiny random diffusion models saved in the real diffusers on-disk format.

Reusable by any test that needs "a guidance model directory":

* ``make_flax_guidance_dir(path, kind)`` -- no torch; Flax msgpack weights
  (``diffusion_flax_model.msgpack`` / ``flax_model.msgpack``).
* ``make_torch_guidance_dir(path, kind)`` -- needs torch; PyTorch
  safetensors via ``save_pretrained`` (``diffusion_pytorch_model.safetensors``).

``kind`` is "latent" (4-channel UNet + VAE) or "pixel" (3-channel in,
6-channel learned-variance out, IF-style). Both also write a tiny CLIP text
encoder, a CLIP tokenizer from a hand-written char-level vocab, and a DDPM
``scheduler_config.json``.
"""
from __future__ import annotations

import json
import pathlib
import string

TEXT_DIM = 32
MAX_TOKENS = 77
UNET_SAMPLE = 8
VAE_RES = 16  # 2 VAE blocks -> factor 2 -> 8x8 latents = UNET_SAMPLE

SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


def unet_kwargs(kind: str) -> dict:
  c = 4 if kind == "latent" else 3
  return dict(sample_size=UNET_SAMPLE, in_channels=c, out_channels=c if kind == "latent" else 2 * c,
              layers_per_block=1, block_out_channels=(32, 64),
              down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
              cross_attention_dim=TEXT_DIM, attention_head_dim=4)


def vae_kwargs(n_blocks: int = 2) -> dict:
  return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n_blocks,
              up_block_types=("UpDecoderBlock2D",) * n_blocks,
              block_out_channels=(32, 32, 64, 64)[:n_blocks], latent_channels=4,
              layers_per_block=1, norm_num_groups=32, sample_size=VAE_RES)


def text_kwargs(vocab_size: int) -> dict:
  return dict(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=37,
              num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
              bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def write_tokenizer(folder: pathlib.Path) -> int:
  """A char-level CLIP BPE vocab (no merges) written by hand; returns vocab size."""
  folder.mkdir(parents=True, exist_ok=True)
  chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
  tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
  (folder / "merges.txt").write_text("#version: 0.2\n")
  from transformers import CLIPTokenizer
  tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                      model_max_length=MAX_TOKENS, pad_token="<|endoftext|>")
  tok.save_pretrained(str(folder))
  return len(tokens)


def _write_scheduler(root: pathlib.Path) -> None:
  (root / "scheduler").mkdir(parents=True, exist_ok=True)
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))


def make_torch_guidance_dir(path, kind: str = "latent", seed: int = 0) -> pathlib.Path:
  """Tiny random PyTorch models saved with ``save_pretrained`` (safetensors)."""
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel
  root = pathlib.Path(path)
  torch.manual_seed(seed)
  vocab = write_tokenizer(root / "tokenizer")
  unet = UNet2DConditionModel(**unet_kwargs(kind))
  _randomize(unet, torch)
  unet.save_pretrained(str(root / "unet"), safe_serialization=True)
  if kind == "latent":
    vae = AutoencoderKL(**vae_kwargs())
    _randomize(vae, torch)
    vae.save_pretrained(str(root / "vae"), safe_serialization=True)
  CLIPTextModel(CLIPTextConfig(**text_kwargs(vocab))).save_pretrained(
      str(root / "text_encoder"), safe_serialization=True)
  _write_scheduler(root)
  return root


def _randomize(model, torch) -> None:
  """diffusers zero-inits some output convs; randomize so every weight matters."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))


def random_params(shapes, seed: int = 0, scale: float = 0.05):
  """Random params for an ``eval_shape`` tree without compiling ``init``.

  Norm scales are 1 + noise, everything else scale * N(0, 1).
  """
  import numpy as np
  from flax import traverse_util
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(shapes)
  out = {k: ((k[-1] == "scale") + scale * rng.standard_normal(v.shape)).astype(np.float32)
         for k, v in flat.items()}
  return traverse_util.unflatten_dict(out)


def make_flax_guidance_dir(path, kind: str = "latent", seed: int = 0) -> pathlib.Path:
  """Tiny random Flax models saved with ``save_pretrained`` (msgpack); no torch."""
  import jax
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  root = pathlib.Path(path)
  key = jax.random.PRNGKey(seed)
  vocab = write_tokenizer(root / "tokenizer")
  unet = FlaxUNet2DConditionModel(**unet_kwargs(kind))
  unet.save_pretrained(str(root / "unet"),
                       params=random_params(jax.eval_shape(unet.init_weights, key), seed))
  if kind == "latent":
    vae = FlaxAutoencoderKL(**vae_kwargs())
    vae.save_pretrained(str(root / "vae"),
                        params=random_params(jax.eval_shape(vae.init_weights, key), seed + 1))
  text = FlaxCLIPTextModel(CLIPTextConfig(**text_kwargs(vocab)), _do_init=False)
  shapes = jax.eval_shape(lambda k: text.init_weights(k, (1, 1)), key)
  text.save_pretrained(str(root / "text_encoder"), params=random_params(shapes, seed + 2))
  _write_scheduler(root)
  return root


# ----------------------------------------------------------------------------
# DeepFloyd IF-I-like models (issue 14).
# ----------------------------------------------------------------------------
IF_SAMPLE = 16
IF_TEXT_DIM = 48  # encoder_hid_dim: the (tiny) T5 width
IF_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2",
                "num_train_timesteps": 1000, "prediction_type": "epsilon",
                "variance_type": "learned_range", "thresholding": True}


def if_unet_kwargs() -> dict:
  """Every IF-I-XL feature at toy size (block types, added-KV attention with
  group-norm over the text channels, text_proj, attention pooling, scale-shift
  resnets, gelu, eps 1e-5, 3 -> 6 channels); 4 levels on 16x16."""
  return dict(sample_size=IF_SAMPLE, in_channels=3, out_channels=6, layers_per_block=1,
              block_out_channels=(32, 64, 64, 96),
              down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
              up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=16,
              cross_attention_dim=64, encoder_hid_dim=IF_TEXT_DIM, encoder_hid_dim_type="text_proj",
              addition_embed_type="text", addition_embed_type_num_heads=4,
              resnet_time_scale_shift="scale_shift", act_fn="gelu", norm_eps=1e-5,
              cross_attention_norm="group_norm")


def make_torch_if_unet(folder, seed: int = 0):
  """A tiny random IF-like PyTorch UNet saved with ``save_pretrained`` (safetensors).

  Every weight is perturbed away from its init (zero-init convs, unit norm
  scales, zero biases). Returns the torch module (eval mode).
  """
  import torch
  from diffusers import UNet2DConditionModel
  torch.manual_seed(seed)
  unet = UNet2DConditionModel(**if_unet_kwargs())
  _randomize(unet, torch)
  unet.save_pretrained(str(folder), safe_serialization=True)
  return unet.eval()


T5_CORPUS = ["a photo of a man riding a bike, front view, 8K, HD",
             "a photo of the head of a man, side view", "a photo of a red chair, back view",
             "a woman sitting on a sofa, overhead view", "a person playing the guitar",
             "a photo of a dog", "the quick brown fox jumps over the lazy dog"] * 4


def write_t5_tokenizer(folder: pathlib.Path, vocab_size: int = 50) -> int:
  """A tiny T5 sentencepiece (unigram) tokenizer trained offline: ``spiece.model``
  + ``tokenizer_config.json`` (T5Tokenizer) and its converted ``tokenizer.json``
  (T5TokenizerFast) in ``folder``. Needs ``sentencepiece``. Returns len(tokenizer)."""
  import io
  import sentencepiece as spm
  from transformers import T5Tokenizer, T5TokenizerFast
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(T5_CORPUS), model_writer=buf,
                                 vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1,
                                 unk_id=2, bos_id=-1, minloglevel=2)
  (folder / "spiece.model").write_bytes(buf.getvalue())
  slow = T5Tokenizer(str(folder / "spiece.model"), extra_ids=10, legacy=True)
  slow.save_pretrained(str(folder))
  fast = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
  fast.save_pretrained(str(folder))
  return len(slow)


def t5_kwargs(vocab_size: int) -> dict:
  """t5-v1_1 style (gated-gelu, untied lm head) at toy size, width IF_TEXT_DIM."""
  return dict(vocab_size=vocab_size, d_model=IF_TEXT_DIM, d_kv=8, d_ff=40, num_layers=2,
              num_heads=6, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=True,
              dropout_rate=0.0, layer_norm_epsilon=1e-6)


def make_torch_t5(root, seed: int = 0, *, variant: str | None = None,
                  max_shard_size: str = "20KB"):
  """A tiny random T5EncoderModel in the real IF layout under ``root``:
  ``tokenizer/`` (``write_t5_tokenizer``) and ``text_encoder/`` saved with
  ``save_pretrained`` in sharded safetensors (``variant="fp16"``: fp16 weights,
  ``model.safetensors.index.fp16.json``). Returns the torch module (fp32, eval)."""
  import torch
  from transformers import T5Config, T5EncoderModel
  root = pathlib.Path(root)
  vocab = write_t5_tokenizer(root / "tokenizer")
  torch.manual_seed(seed)
  model = T5EncoderModel(T5Config(**t5_kwargs(vocab))).eval()
  _randomize(model, torch)
  if variant == "fp16":
    import copy
    copy.deepcopy(model).half().save_pretrained(str(root / "text_encoder"), variant="fp16",
                                                max_shard_size=max_shard_size, safe_serialization=True)
  else:
    model.save_pretrained(str(root / "text_encoder"), max_shard_size=max_shard_size,
                          safe_serialization=True)
  return model


def make_torch_if_dir(path, seed: int = 0, **t5_kw) -> pathlib.Path:
  """A tiny IF-I directory: ``unet/`` (make_torch_if_unet), ``text_encoder/`` +
  ``tokenizer/`` (make_torch_t5), ``scheduler/`` and ``model_index.json``."""
  root = pathlib.Path(path)
  make_torch_if_unet(root / "unet", seed)
  make_torch_t5(root, seed + 1, **t5_kw)
  (root / "scheduler").mkdir(parents=True, exist_ok=True)
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(IF_SCHEDULER))
  (root / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))
  return root
