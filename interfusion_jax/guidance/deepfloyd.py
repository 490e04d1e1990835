"""DeepFloyd IF stage I in Flax, and the ``deepfloyd_if`` guidance backend.

PAPER.md "Guidance model": the official InterFusion guidance is DeepFloyd
IF-I-XL (pixel space, 64x64, T5-XXL prompts, CFG 20, uniform w(t)).

``IFUNet`` is a Flax port of diffusers' PyTorch ``UNet2DConditionModel`` with
the blocks IF stage I uses (``ResnetDownsampleBlock2D``,
``SimpleCrossAttnDownBlock2D``, ``UNetMidBlock2DSimpleCrossAttn``,
``SimpleCrossAttnUpBlock2D``, ``ResnetUpsampleBlock2D``; added-KV attention,
``text_proj``, ``TextTimeEmbedding`` attention pooling, scale-shift resnets,
exact-erf gelu). Its submodule and parameter names are the PyTorch state-dict
keys after diffusers' ``rename_key`` (``down_blocks.0.resnets.1`` ->
``down_blocks_0/resnets_1``), so PyTorch safetensors map 1:1 through
``loading.convert_pt_state_dict`` with diffusers' PyTorch->Flax rules
(weights -> ``kernel`` transposed, norm weights -> ``scale``).

Internally NHWC; ``IFUNet.__call__`` takes and returns NCHW like diffusers'
Flax UNet, so ``stable_diffusion.unet_eps`` drives it. Norm statistics and
attention softmax are computed in float32 whatever the compute dtype.
Attention is ``jax.nn.dot_product_attention`` (``attention``): cuDNN's fused
kernel for bf16 on NVIDIA GPUs, XLA's elsewhere.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from interfusion_jax.guidance import stable_diffusion

Dtype = Any

# Block types this port implements (loading.py whitelists against these).
DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
MID_BLOCKS = ("UNetMidBlock2DSimpleCrossAttn",)
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
# Other UNet2DConditionModel config keys: the values this port implements
# (absent = the diffusers default, which is always in the tuple).
SUPPORTED = {
    "act_fn": ("gelu", "silu", "swish"),
    "addition_embed_type": (None, "text"),
    "encoder_hid_dim_type": (None, "text_proj"),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "time_embedding_dim": (None,),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1, 1.0),
    "mid_block_scale_factor": (1, 1.0),
    "cross_attention_norm": (None, "group_norm"),
    "only_cross_attention": (False,),
    "mid_block_only_cross_attention": (None, False),
    "center_input_sample": (False,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "class_embeddings_concat": (False,),
    "dual_cross_attention": (False,),
    "num_attention_heads": (None,),
    "attention_type": ("default",),
    "addition_time_embed_dim": (None,),
    "projection_class_embeddings_input_dim": (None,),
}
CROSS_NORM_GROUPS = 32  # Attention(cross_attention_norm_num_groups=32), fixed in diffusers
ATTN_NORM_EPS = 1e-5  # Attention(eps=1e-5): its group_norm and norm_cross
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default (TextTimeEmbedding)


def activation(name: str):
  """diffusers ``get_activation``: "gelu" is torch's exact-erf gelu."""
  if name == "gelu":
    return lambda x: jax.nn.gelu(x, approximate=False)
  if name in ("silu", "swish"):
    return jax.nn.silu
  raise ValueError(f"Unsupported activation {name!r}.")


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: int = 10000) -> jax.Array:
  """diffusers ``get_timestep_embedding``: [N] -> [N, dim] float32 sinusoids."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / (half - freq_shift))
  arg = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], -1)
  if flip_sin_to_cos:
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], -1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class GroupNorm(nn.Module):
  """torch ``GroupNorm`` on channels-last input [B, ..., C] (stats in float32).

  Statistics are over every non-batch axis and the C / groups channels of
  each group (two-pass variance); params ``scale`` [C], ``bias`` [C].
  """
  groups: int
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    g = xf.reshape(xf.shape[:-1] + (self.groups, c // self.groups))
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    mean = jnp.mean(g, axes, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axes, keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.eps)
    y = g.reshape(xf.shape) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """torch ``LayerNorm`` over the last axis (stats in float32); ``scale``, ``bias``."""
  eps: float = LAYER_NORM_EPS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)
    return (y + bias.astype(jnp.float32)).astype(self.dtype)


def _dense(features: int, name: str, dtype: Dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


def _conv(features: int, k: int, name: str, dtype: Dtype) -> nn.Conv:
  p = (k - 1) // 2
  return nn.Conv(features, (k, k), padding=((p, p), (p, p)), dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
  """diffusers ``ResnetBlock2D`` (NHWC), optionally up- or downsampling.

  ``up``: nearest x2 on both paths after norm1+act (``Upsample2D`` without
  conv); ``down``: 2x2 average pool on both paths (``Downsample2D`` without
  conv). "scale_shift": norm2(h) (1 + scale) + shift from a 2C time
  projection; "default": norm2(h + temb). A 1x1 ``conv_shortcut`` exists when
  the input channel count differs from ``out_channels``.

  Args (call): x [B, H, W, Cin]; temb [B, T].
  Returns: [B, H', W', out_channels].
  """
  out_channels: int
  groups: int
  eps: float
  act_fn: str
  time_scale_shift: str = "default"
  up: bool = False
  down: bool = False
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb):
    act = activation(self.act_fn)
    h = act(GroupNorm(self.groups, self.eps, self.dtype, name="norm1")(x))
    if self.up:
      x, h = upsample_nearest(x), upsample_nearest(h)
    elif self.down:
      x, h = avg_pool2(x), avg_pool2(h)
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    mult = 2 if self.time_scale_shift == "scale_shift" else 1
    t = _dense(mult * self.out_channels, "time_emb_proj", self.dtype)(act(temb))[:, None, None, :]
    if self.time_scale_shift == "scale_shift":
      scale, shift = jnp.split(t, 2, axis=-1)
      h = GroupNorm(self.groups, self.eps, self.dtype, name="norm2")(h) * (1 + scale) + shift
    else:
      h = GroupNorm(self.groups, self.eps, self.dtype, name="norm2")(h + t)
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(act(h))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return ((x + h) / self.output_scale_factor).astype(self.dtype)


def upsample_nearest(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], ``F.interpolate(scale_factor=2, mode="nearest")``."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, H/2, W/2, C], ``F.avg_pool2d(kernel_size=2, stride=2)``."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)).astype(x.dtype)


FUSED_DTYPES = (jnp.bfloat16, jnp.float16)  # what cuDNN's fused attention takes
ATTENTION_ENV = "INTERFUSION_JAX_ATTENTION"  # "xla" forces XLA's attention everywhere


def attention_implementation(dtype: Dtype, head_dim: int) -> str:
  """Which ``jax.nn.dot_product_attention`` implementation ``attention`` picks.

  "cudnn" (the fused flash-attention kernel) when jax's default backend is
  an NVIDIA GPU, the inputs are bf16/f16 and the head size is a multiple of
  8 up to 128; "xla" otherwise (CPU, TPU, float32) or when the environment
  variable ``INTERFUSION_JAX_ATTENTION=xla`` is set (read at trace time).
  jax 0.10.2's ``implementation=None`` always means "xla", hence the
  explicit choice.
  """
  if os.environ.get(ATTENTION_ENV, "").strip().lower() == "xla":
    return "xla"
  fused = (jnp.dtype(dtype) in [jnp.dtype(d) for d in FUSED_DTYPES]
           and head_dim % 8 == 0 and head_dim <= 128)
  if not fused:
    return "xla"
  backend = jax.extend.backend.get_backend()
  gpu = backend.platform == "gpu" and "cuda" in backend.platform_version.lower()
  return "cudnn" if gpu else "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
              implementation: str | None = None) -> jax.Array:
  """Multi-head softmax(Q K^T * scale) V with float32 logits and softmax.

  ``jax.nn.dot_product_attention``: XLA's attention (logits accumulated
  and softmax taken in float32, probabilities cast back to the input dtype
  before the P V product) or cuDNN's fused kernel on NVIDIA GPUs (float32
  softmax inside). When cuDNN rejects a shape at trace time the XLA path
  is used.

  Args:
    q: [B, T, N, H]; k, v: [B, S, N, H], all one dtype.
    scale: logit scale (default H^-1/2).
    implementation: "xla" | "cudnn" | None (``attention_implementation``).

  Returns:
    [B, T, N, H] in the input dtype.
  """
  impl = implementation or attention_implementation(q.dtype, q.shape[-1])
  if impl == "cudnn":
    try:
      return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    except (NotImplementedError, ValueError, RuntimeError):
      impl = "xla"
  return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)


class AddedKVAttention(nn.Module):
  """diffusers ``Attention`` with ``AttnAddedKVProcessor`` (NHWC), residual included.

  h = group_norm(x) over the H W tokens; text e = norm_cross(text) (GroupNorm
  over the text channels, when ``cross_attention_norm == "group_norm"``);
  K = [add_k_proj(e); to_k(h)], V = [add_v_proj(e); to_v(h)], Q = to_q(h),
  softmax(Q K^T / sqrt(head_dim)) V in heads of ``head_dim`` channels, then
  ``to_out_0`` and + x.

  Args (call): x [B, H, W, C]; text [B, L, D].
  Returns: [B, H, W, C].
  """
  head_dim: int
  groups: int
  cross_attention_norm: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, text):
    b, hh, ww, c = x.shape
    heads = c // self.head_dim
    h = GroupNorm(self.groups, ATTN_NORM_EPS, self.dtype, name="group_norm")(x.reshape(b, hh * ww, c))
    e = text.astype(self.dtype)
    if self.cross_attention_norm == "group_norm":
      e = GroupNorm(CROSS_NORM_GROUPS, ATTN_NORM_EPS, self.dtype, name="norm_cross")(e)
    q = _dense(c, "to_q", self.dtype)(h)
    k = jnp.concatenate([_dense(c, "add_k_proj", self.dtype)(e), _dense(c, "to_k", self.dtype)(h)], 1)
    v = jnp.concatenate([_dense(c, "add_v_proj", self.dtype)(e), _dense(c, "to_v", self.dtype)(h)], 1)
    split = lambda a: a.reshape(b, a.shape[1], heads, self.head_dim)
    o = attention(split(q), split(k), split(v)).reshape(b, hh * ww, c)
    o = _dense(c, "to_out_0", self.dtype)(o)
    return (o.reshape(b, hh, ww, c) + x).astype(self.dtype)


class AttentionPooling(nn.Module):
  """diffusers/IF ``AttentionPooling``: [B, L, D] -> [B, D].

  A class token mean_L(x) + ``positional_embedding`` [1, D] attends over
  [class token; x] with ``num_heads`` heads; q k scaled by dh^-1/4 each.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    dh = d // self.num_heads
    pos = self.param("positional_embedding",
                     lambda k, s: jax.random.normal(k, s, jnp.float32) / np.sqrt(d), (1, d))
    cls = jnp.mean(x.astype(jnp.float32), 1, keepdims=True).astype(self.dtype) + pos.astype(self.dtype)
    xc = jnp.concatenate([cls, x.astype(self.dtype)], 1)
    heads = lambda a: a.reshape(b, a.shape[1], self.num_heads, dh)
    scale = 1.0 / math.sqrt(math.sqrt(dh))
    q = heads(_dense(d, "q_proj", self.dtype)(cls)) * scale
    k = heads(_dense(d, "k_proj", self.dtype)(xc)) * scale
    v = heads(_dense(d, "v_proj", self.dtype)(xc))
    # One query token: a fused kernel buys nothing, so XLA's attention everywhere.
    a = attention(q, k, v, scale=1.0, implementation="xla")
    return a.reshape(b, d)


class TextTimeEmbedding(nn.Module):
  """diffusers ``TextTimeEmbedding``: norm1 -> pool -> proj -> norm2, [B, L, D] -> [B, T]."""
  time_embed_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = LayerNorm(dtype=self.dtype, name="norm1")(x)
    x = AttentionPooling(self.num_heads, self.dtype, name="pool")(x)
    x = _dense(self.time_embed_dim, "proj", self.dtype)(x)
    return LayerNorm(dtype=self.dtype, name="norm2")(x)


class DownBlock(nn.Module):
  """``ResnetDownsampleBlock2D`` (attention=False) / ``SimpleCrossAttnDownBlock2D``.

  Returns (h, residuals): one residual per resnet(+attention) and one after
  the downsampling resnet.
  """
  out_channels: int
  num_layers: int
  attention: bool
  add_downsample: bool
  groups: int
  eps: float
  act_fn: str
  time_scale_shift: str
  head_dim: int
  cross_attention_norm: str | None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, text):
    res = ()
    kw = dict(groups=self.groups, eps=self.eps, act_fn=self.act_fn,
              time_scale_shift=self.time_scale_shift, dtype=self.dtype)
    for i in range(self.num_layers):
      h = ResnetBlock(self.out_channels, name=f"resnets_{i}", **kw)(h, temb)
      if self.attention:
        h = AddedKVAttention(self.head_dim, self.groups, self.cross_attention_norm, self.dtype,
                             name=f"attentions_{i}")(h, text)
      res += (h,)
    if self.add_downsample:
      h = ResnetBlock(self.out_channels, down=True, name="downsamplers_0", **kw)(h, temb)
      res += (h,)
    return h, res


class UpBlock(nn.Module):
  """``ResnetUpsampleBlock2D`` (attention=False) / ``SimpleCrossAttnUpBlock2D``.

  Each resnet takes [h; the last remaining down residual] on channels.
  """
  out_channels: int
  num_layers: int
  attention: bool
  add_upsample: bool
  groups: int
  eps: float
  act_fn: str
  time_scale_shift: str
  head_dim: int
  cross_attention_norm: str | None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, res, temb, text):
    kw = dict(groups=self.groups, eps=self.eps, act_fn=self.act_fn,
              time_scale_shift=self.time_scale_shift, dtype=self.dtype)
    for i in range(self.num_layers):
      h = jnp.concatenate([h, res[-1].astype(h.dtype)], -1)
      res = res[:-1]
      h = ResnetBlock(self.out_channels, name=f"resnets_{i}", **kw)(h, temb)
      if self.attention:
        h = AddedKVAttention(self.head_dim, self.groups, self.cross_attention_norm, self.dtype,
                             name=f"attentions_{i}")(h, text)
    if self.add_upsample:
      h = ResnetBlock(self.out_channels, up=True, name="upsamplers_0", **kw)(h, temb)
    return h


class MidBlock(nn.Module):
  """``UNetMidBlock2DSimpleCrossAttn`` with one attention: resnet, attention, resnet."""
  groups: int
  eps: float
  act_fn: str
  time_scale_shift: str
  head_dim: int
  cross_attention_norm: str | None
  output_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, temb, text):
    c = h.shape[-1]
    kw = dict(groups=self.groups, eps=self.eps, act_fn=self.act_fn,
              time_scale_shift=self.time_scale_shift,
              output_scale_factor=self.output_scale_factor, dtype=self.dtype)
    h = ResnetBlock(c, name="resnets_0", **kw)(h, temb)
    h = AddedKVAttention(self.head_dim, self.groups, self.cross_attention_norm, self.dtype,
                         name="attentions_0")(h, text)
    return ResnetBlock(c, name="resnets_1", **kw)(h, temb)


class IFUNet(nn.Module):
  """DeepFloyd IF stage-I UNet (diffusers ``UNet2DConditionModel`` semantics).

  Build with ``IFUNet.from_config(unet_config_json_dict, dtype=...)``.

  Call: ``apply({"params": p}, sample [N, C_in, H, W], timesteps [N] or
  scalar, encoder_hidden_states [N, L, encoder_hid_dim])`` ->
  [N, out_channels, H, W] in ``dtype`` (IF-I: 6 channels, eps = first 3).
  H and W must be divisible by 2^(len(block_out_channels) - 1).
  """
  in_channels: int = 3
  out_channels: int = 6
  sample_size: int = 64
  block_out_channels: Sequence[int] = (704, 1408, 2112, 2816)
  layers_per_block: int = 3
  down_block_types: Sequence[str] = ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3
  up_block_types: Sequence[str] = ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",)
  mid_block_type: str = "UNetMidBlock2DSimpleCrossAttn"
  attention_head_dim: int = 64
  cross_attention_dim: int = 2816
  encoder_hid_dim: int | None = 4096
  addition_embed_type: str | None = "text"
  addition_embed_type_num_heads: int = 64
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  act_fn: str = "gelu"
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  resnet_time_scale_shift: str = "scale_shift"
  cross_attention_norm: str | None = "group_norm"
  mid_block_scale_factor: float = 1.0
  dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, cfg: dict, dtype: Dtype = jnp.float32) -> "IFUNet":
    """Module from a diffusers ``unet/config.json`` dict (keys it does not use are ignored).

    Call ``loading.check_if_unet_config`` first for clear errors on
    unsupported configs.
    """
    fields = {f for f in cls.__dataclass_fields__ if f not in ("parent", "name", "dtype")}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
    if isinstance(kw.get("attention_head_dim"), tuple):
      kw["attention_head_dim"] = kw["attention_head_dim"][0]
    for k in ("cross_attention_dim", "layers_per_block"):
      if isinstance(kw.get(k), tuple):
        kw[k] = kw[k][0]
    return cls(dtype=dtype, **kw)

  def init_weights(self, rng: jax.Array, text_len: int = 2) -> Any:
    """Random params (use under ``jax.eval_shape`` for the tree of shapes)."""
    s = self.sample_size
    sample = jnp.zeros((1, self.in_channels, s, s), jnp.float32)
    text = jnp.zeros((1, text_len, self.encoder_hid_dim or self.cross_attention_dim), jnp.float32)
    return self.init(rng, sample, jnp.zeros((1,), jnp.int32), text)["params"]

  @nn.compact
  def __call__(self, sample, timesteps, encoder_hidden_states):
    dt = self.dtype
    act = activation(self.act_fn)
    x = jnp.transpose(sample, (0, 2, 3, 1)).astype(dt)
    n = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(timesteps).reshape(-1), (n,))
    c0 = self.block_out_channels[0]
    temb_dim = 4 * c0
    temb = timestep_embedding(t, c0, self.flip_sin_to_cos, self.freq_shift).astype(dt)
    temb = TimestepEmbedding(temb_dim, self.act_fn, dt, name="time_embedding")(temb)
    text_raw = encoder_hidden_states.astype(dt)
    if self.addition_embed_type == "text":
      temb = temb + TextTimeEmbedding(temb_dim, self.addition_embed_type_num_heads, dt,
                                      name="add_embedding")(text_raw)
    text = text_raw
    if self.encoder_hid_dim is not None:
      text = _dense(self.cross_attention_dim, "encoder_hid_proj", dt)(text_raw)

    common = dict(groups=self.norm_num_groups, eps=self.norm_eps, act_fn=self.act_fn,
                  time_scale_shift=self.resnet_time_scale_shift, head_dim=self.attention_head_dim,
                  cross_attention_norm=self.cross_attention_norm, dtype=dt)
    h = _conv(c0, 3, "conv_in", dt)(x)
    res = (h,)
    nb = len(self.block_out_channels)
    for i, kind in enumerate(self.down_block_types):
      h, r = DownBlock(self.block_out_channels[i], self.layers_per_block,
                       attention=kind == "SimpleCrossAttnDownBlock2D",
                       add_downsample=i < nb - 1, name=f"down_blocks_{i}", **common)(h, temb, text)
      res += r
    h = MidBlock(output_scale_factor=self.mid_block_scale_factor, name="mid_block",
                 **common)(h, temb, text)
    rev = list(reversed(self.block_out_channels))
    for i, kind in enumerate(self.up_block_types):
      k = self.layers_per_block + 1
      h = UpBlock(rev[i], k, attention=kind == "SimpleCrossAttnUpBlock2D",
                  add_upsample=i < nb - 1, name=f"up_blocks_{i}", **common)(h, res[-k:], temb, text)
      res = res[:-k]
    h = act(GroupNorm(self.norm_num_groups, self.norm_eps, dt, name="conv_norm_out")(h))
    out = _conv(self.out_channels, 3, "conv_out", dt)(h)
    return jnp.transpose(out, (0, 3, 1, 2))


class TimestepEmbedding(nn.Module):
  """diffusers ``TimestepEmbedding``: linear_1 -> act -> linear_2."""
  dim: int
  act_fn: str
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = activation(self.act_fn)(_dense(self.dim, "linear_1", self.dtype)(x))
    return _dense(self.dim, "linear_2", self.dtype)(x)


# ----------------------------------------------------------------------------
# The guidance backend (kind "deepfloyd_if").
# ----------------------------------------------------------------------------
def encode(spec: Any, params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
  """Backend ``encode``: [B, H, W, 3] in [0, 1] -> [B, R, R, 3] in [-1, 1].

  Bilinear resize to ``spec.resolution`` (64 for IF-I) without antialias,
  as threestudio's ``deep_floyd_guidance.py`` (``F.interpolate(mode=
  "bilinear", align_corners=False)``), then 2x - 1. Differentiable;
  ``params`` and ``key`` are unused.
  """
  del params, key
  x = stable_diffusion.resize_images(images.astype(jnp.float32), spec.resolution)
  return x * 2.0 - 1.0


def predict_eps(spec: Any, params: Any, x_t: jax.Array, t: jax.Array,
                emb: jax.Array) -> jax.Array:
  """Backend ``predict_eps``: [N, R, R, 3], [N], [N, L, 4096] -> [N, R, R, 3] float32.

  One UNet call on the whole batch (``core.predict_cfg_pair`` stacks
  [cond; uncond]); the learned-variance output keeps its first 3 channels.
  """
  out = stable_diffusion.unet_eps(spec, params["unet"], x_t, t, emb)
  return stable_diffusion.to_eps(out, x_t, t, params["alphas_cumprod"], spec.prediction_type)
