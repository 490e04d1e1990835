"""Offline loading of diffusers-format directories into frozen Flax pytrees.

Layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``, see
docs/guidance.md). Each model folder needs ``config.json`` plus either Flax
msgpack weights (``diffusion_flax_model.msgpack`` / ``flax_model.msgpack``)
or PyTorch safetensors (``diffusion_pytorch_model.safetensors`` /
``model.safetensors``, optionally sharded with an ``.index.json``).
Safetensors are parsed here with NumPy and renamed/transposed with the
diffusers / transformers PyTorch->Flax key rules, so torch is never needed.
Nothing here touches the network.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import warnings
from typing import Any, Callable, Iterable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from interfusion_jax.guidance import schedule

PathLike = str | os.PathLike
HELP = ("See docs/guidance.md (WORKSPACE.md, 'Diffusion weights') for the expected "
        "layout and how to download e.g. stabilityai/stable-diffusion-2-1-base once.")

FLAX_NAMES = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
PT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
            "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors")
COMPONENT_FILES = {
    "unet": ("config.json", FLAX_NAMES + PT_NAMES),
    "vae": ("config.json", FLAX_NAMES + PT_NAMES),
    "text_encoder": ("config.json", FLAX_NAMES + PT_NAMES),
    "tokenizer": ("vocab.json", ("merges.txt",)),
    "scheduler": ("scheduler_config.json", ()),
}
LATENT_IN_CHANNELS = 4
PIXEL_IN_CHANNELS = 3
# FlaxUNet2DConditionModel implements only these values of these PyTorch
# UNet2DConditionModel config keys (absent = default = fine). Numerics-only
# flags such as upcast_attention (SD 2.1-v) need no support in fp32/bf16.
_FLAX_UNET_SUPPORTED = {
    "norm_num_groups": (32,), "act_fn": ("silu",), "class_embed_type": (None,),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "addition_embed_type": (None, "text_time"), "time_embedding_type": ("positional",),
    "center_input_sample": (False,), "resnet_time_scale_shift": ("default",),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,), "time_cond_proj_dim": (None,),
    "num_class_embeds": (None,), "mid_block_only_cross_attention": (None, False),
    "reverse_transformer_layers_per_block": (None,),
}

logger = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
  """A diffusion weights directory is missing or incomplete."""


class ModelTypeError(ValueError):
  """The weights are not a model this backend can use."""


# ----------------------------------------------------------------------------
# Directory checks.
# ----------------------------------------------------------------------------
def missing_files(root: PathLike, components: Iterable[str]) -> list[str]:
  """Lists the required files absent from a diffusers directory.

  Args:
    root: the model directory.
    components: subfolder names, keys of ``COMPONENT_FILES``.

  Returns:
    sorted relative paths ("unet/config.json", "vae/<one of ...>") missing.
  """
  root = pathlib.Path(root)
  out = []
  for comp in components:
    must, any_of = COMPONENT_FILES[comp]
    if not (root / comp / must).is_file():
      out.append(f"{comp}/{must}")
    if any_of and not any((root / comp / f).is_file() for n in any_of
                          for f in (n,) + _index_names(n)):
      out.append(f"{comp}/{any_of[0]}" if len(any_of) == 1 else
                 f"{comp}/<one of {', '.join(any_of)}>")
  return out


def check_model_dir(root: PathLike, components: Iterable[str]) -> pathlib.Path:
  """Raises ``WeightsNotFoundError`` listing every missing file; returns the path."""
  if not str(root).strip():
    raise WeightsNotFoundError(
        "No diffusion weights directory given (config.guidance.weights_dir is empty). Set "
        f"--config.guidance.weights_dir to a local diffusers-format folder. {HELP}")
  root = pathlib.Path(os.path.expanduser(str(root)))
  if not root.is_dir():
    raise WeightsNotFoundError(
        f"Diffusion weights directory {str(root)!r} does not exist. Set "
        f"--config.guidance.weights_dir to a local diffusers-format folder. {HELP}")
  miss = missing_files(root, components)
  if miss:
    raise WeightsNotFoundError(
        f"Diffusion weights directory {str(root)!r} is incomplete; missing:\n  "
        + "\n  ".join(miss) + f"\n{HELP}")
  return root


def _read_json(path: pathlib.Path) -> dict:
  with open(path) as f:
    return json.load(f)


def _hashable_config(cfg: dict) -> dict:
  """JSON lists -> tuples, so modules built from it (and specs) are hashable."""
  fix = lambda v: tuple(fix(x) for x in v) if isinstance(v, list) else v
  return {k: fix(v) for k, v in cfg.items()}


# ----------------------------------------------------------------------------
# Safetensors without torch (the ``safetensors`` package's NumPy backend).
# ----------------------------------------------------------------------------
def _shards(path: pathlib.Path) -> list[pathlib.Path]:
  """The files of a .safetensors file or a sharded ``*.index*.json``."""
  if path.name.endswith(".json"):
    return [path.parent / s for s in sorted(set(_read_json(path)["weight_map"].values()))]
  return [path]


def iter_safetensors(path: PathLike) -> Iterable[tuple[str, np.ndarray]]:
  """Yields (name, array) one tensor at a time (memory-mapped, lazily read).

  Args:
    path: a ``.safetensors`` file or a sharded index (``*.safetensors.index.json``,
      ``*.safetensors.index.fp16.json``).
  """
  from safetensors import safe_open
  for shard in _shards(pathlib.Path(path)):
    with safe_open(str(shard), framework="numpy") as f:
      for name in f.keys():
        yield name, f.get_tensor(name)


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (or a sharded ``.index.json``) into NumPy.

  Uses ``safetensors.numpy`` (bf16 as ``ml_dtypes.bfloat16``), no torch.

  Returns:
    {name: array} with the file's dtypes.
  """
  from safetensors.numpy import load_file
  out = {}
  for shard in _shards(pathlib.Path(path)):
    out.update(load_file(str(shard)))
  return out


def _index_names(name: str) -> tuple[str, ...]:
  """Sharded-index names of a weights file name: ``X.safetensors.index.json``,
  and for a variant ``X.fp16.safetensors`` also ``X.safetensors.index.fp16.json``
  (the name diffusers/transformers give a sharded variant)."""
  out = (name + ".index.json",)
  stem, ext = name.rsplit(".", 1)
  if "." in stem:
    base, variant = stem.rsplit(".", 1)
    out += (f"{base}.{ext}.index.{variant}.json",)
  return out


def _weights_file(folder: pathlib.Path) -> tuple[pathlib.Path, str]:
  for n in FLAX_NAMES:
    if (folder / n).is_file():
      return folder / n, "flax"
  for n in PT_NAMES:
    for cand in (folder / n,) + tuple(folder / i for i in _index_names(n)):
      if cand.is_file():
        return cand, "pt"
  raise WeightsNotFoundError(f"No weights in {folder}; expected one of {FLAX_NAMES + PT_NAMES}. {HELP}")


# ----------------------------------------------------------------------------
# PyTorch -> Flax parameter conversion.
# ----------------------------------------------------------------------------
def _diffusers_rename(pt_key: str, tensor: np.ndarray, shapes: dict) -> tuple[tuple, np.ndarray]:
  from diffusers.models.modeling_flax_pytorch_utils import rename_key, rename_key_and_reshape_tensor
  return rename_key_and_reshape_tensor(tuple(rename_key(pt_key).split(".")), tensor, shapes)


def _transformers_rename(prefix: str) -> Callable[[str, np.ndarray, dict], tuple[tuple, np.ndarray]]:
  def fn(pt_key, tensor, shapes):
    from transformers.modeling_flax_pytorch_utils import rename_key_and_reshape_tensor
    return rename_key_and_reshape_tensor(tuple(pt_key.split(".")), tensor, shapes, prefix)
  return fn


def convert_pt_state_dict(pt_state: Any, shapes: Any,
                          rename: Callable[[str, np.ndarray, dict], tuple[tuple, np.ndarray]],
                          *, where: str = "", dtype: Any = np.float32) -> dict:
  """Maps a PyTorch state dict (NumPy arrays) onto a Flax params tree.

  Args:
    pt_state: {dotted PyTorch name: array}, or an iterable of (name, array)
      pairs (e.g. ``iter_safetensors``: one tensor in host memory at a time).
    shapes: the Flax params tree of ``jax.ShapeDtypeStruct`` (``eval_shape``).
    rename: (pt_key, tensor, flat_shapes) -> (flax key tuple, tensor), e.g.
      diffusers' rules (conv OIHW -> HWIO, linear transpose, norm scale).
    where: folder name for error messages.
    dtype: host dtype of the result (float32, or ``ml_dtypes.bfloat16`` /
      ``jnp.bfloat16`` to halve host memory); each tensor is cast as it is read.

  Returns:
    nested dict of NumPy arrays in ``dtype`` with exactly the keys of ``shapes``.
  """
  flat = traverse_util.flatten_dict(shapes)
  out = {}
  items = pt_state.items() if hasattr(pt_state, "items") else pt_state
  for pt_key, tensor in items:
    if np.asarray(tensor).dtype == np.int8 or pt_key.endswith((".SCB", ".weight_format")):
      raise ModelTypeError(
          f"Weight {pt_key} in {where} is 8-bit (bitsandbytes) quantized, which JAX cannot use. "
          "Use the full-precision or fp16 files instead (e.g. for T5: model-0000x-of-0000N."
          "safetensors + model.safetensors.index.json, or model.fp16-0000x-of-0000N.safetensors"
          " + model.safetensors.index.fp16.json).")
    tensor = np.asarray(tensor, np.float32)
    key, tensor = rename(pt_key, tensor, flat)
    if key not in flat:  # e.g. a "text_model." prefix present on one side only
      for alt in (key[1:], ("text_model",) + key):
        if alt in flat:
          key = alt
          break
    if key not in flat:
      logger.warning("Ignoring unexpected weight %s in %s", pt_key, where)
      continue
    if tuple(tensor.shape) != tuple(flat[key].shape):
      raise ModelTypeError(
          f"Weight {pt_key} in {where} has shape {tuple(tensor.shape)} but the Flax model built "
          f"from its config.json expects {tuple(flat[key].shape)}; config and weights disagree.")
    out[key] = np.ascontiguousarray(tensor.astype(dtype))
  missing = sorted(set(flat) - set(out))
  if missing:
    raise ModelTypeError(
        f"Weights in {where} lack {len(missing)} parameters the Flax model needs, e.g. "
        f"{['/'.join(k) for k in missing[:5]]}; is this the right model type?")
  return traverse_util.unflatten_dict(out)


def _check_tree(params: Any, shapes: Any, where: str) -> None:
  got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}
  if got != want:
    bad = sorted(set(got) ^ set(want))[:5] or [k for k in want if got[k] != want[k]][:5]
    raise ModelTypeError(f"Flax weights in {where} do not match its config.json (e.g. {bad}).")


def host_params(folder: pathlib.Path, shapes: Any, rename, *, dtype: Any = np.float32) -> Any:
  """Reads a model folder's weights into a host (NumPy) tree in ``dtype``.

  Safetensors are streamed tensor by tensor and cast on the host, so the
  peak host memory is the ``dtype`` tree plus one tensor; nothing touches the
  device.
  """
  path, fmt = _weights_file(folder)
  if fmt == "flax":
    params = serialization.msgpack_restore(path.read_bytes())
    if "params" in params and "params" not in shapes:
      params = params["params"]
    _check_tree(params, shapes, str(folder))
    return jax.tree_util.tree_map(lambda a: np.asarray(a).astype(dtype), params)
  return convert_pt_state_dict(iter_safetensors(path), shapes, rename, where=str(folder),
                               dtype=dtype)


def to_device(params: Any, sharding: Any = None) -> Any:
  """``jax.device_put`` of a host tree straight to ``sharding`` (default: the
  first device), keeping its dtype: cast on the host first, so a bf16 model
  never has an fp32 copy on the device."""
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.device_put(params, sharding)


def _load_params(folder: pathlib.Path, shapes: Any, rename, *, dtype: str = "float32",
                 sharding: Any = None) -> Any:
  host = host_params(folder, shapes, rename, dtype=jnp.bfloat16 if dtype == "bfloat16" else np.float32)
  return to_device(host, sharding)


# ----------------------------------------------------------------------------
# Components.
# ----------------------------------------------------------------------------
def _check_unet_config(cfg: dict, folder: pathlib.Path) -> None:
  bad = sorted({f"{k}: {t!r}" for k, v in _block_types(cfg).items() for t in v
                if t not in SD_BLOCKS[k]})
  if bad:
    raise ModelTypeError(
        f"UNet in {folder} has block types diffusers' FlaxUNet2DConditionModel does not "
        f"build ({'; '.join(bad)}); it supports {SD_BLOCKS}. DeepFloyd IF stage-I UNets load "
        "through load_guidance / load_if_unet.")
  bad = [f"{k}={cfg[k]!r}" for k, ok in _FLAX_UNET_SUPPORTED.items() if k in cfg and cfg[k] not in ok]
  if bad:
    raise ModelTypeError(
        f"UNet in {folder} uses features diffusers' FlaxUNet2DConditionModel does not implement "
        f"({', '.join(bad)}). DeepFloyd IF stage-I UNets load through load_guidance / "
        f"load_if_unet; otherwise use a Stable Diffusion 1.x/2.x checkpoint.")


def load_unet(root: PathLike, *, dtype: str = "float32",
              memory_efficient_attention: bool = False) -> tuple[Any, Any, dict]:
  """Loads ``root/unet`` -> (FlaxUNet2DConditionModel, params, config dict).

  ``dtype="bfloat16"`` builds the module with bf16 compute and casts params;
  ``memory_efficient_attention`` uses diffusers' chunked attention (SD at
  64x64 latents has 4096-token self-attention).
  """
  from diffusers import FlaxUNet2DConditionModel
  folder = pathlib.Path(root) / "unet"
  cfg = _read_json(folder / "config.json")
  _check_unet_config(cfg, folder)
  jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = FlaxUNet2DConditionModel.from_config(
        _hashable_config(cfg), dtype=jdtype, use_memory_efficient_attention=memory_efficient_attention)
  shapes = jax.eval_shape(model.init_weights, jax.random.PRNGKey(0))
  return model, _load_params(folder, shapes, _diffusers_rename, dtype=dtype), cfg


def load_vae(root: PathLike) -> tuple[Any, Any, dict]:
  """Loads ``root/vae`` -> (FlaxAutoencoderKL, params, config dict)."""
  from diffusers import FlaxAutoencoderKL
  folder = pathlib.Path(root) / "vae"
  cfg = _read_json(folder / "config.json")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = FlaxAutoencoderKL.from_config(_hashable_config(cfg))
  shapes = jax.eval_shape(model.init_weights, jax.random.PRNGKey(0))
  return model, _load_params(folder, shapes, _diffusers_rename), cfg


def load_text_encoder(root: PathLike) -> tuple[Any, Any]:
  """Loads ``root/text_encoder`` -> (FlaxCLIPTextModel without params, params)."""
  from transformers import CLIPTextConfig, FlaxCLIPTextModel
  folder = pathlib.Path(root) / "text_encoder"
  config = CLIPTextConfig.from_pretrained(str(folder), local_files_only=True)
  model = FlaxCLIPTextModel(config, _do_init=False)
  shapes = jax.eval_shape(lambda k: model.init_weights(k, (1, 1)), jax.random.PRNGKey(0))
  return model, _load_params(folder, shapes, _transformers_rename(model.base_model_prefix))


def load_tokenizer(root: PathLike) -> Any:
  """Loads ``root/tokenizer`` as a ``CLIPTokenizer`` (local files only)."""
  from transformers import CLIPTokenizer
  return CLIPTokenizer.from_pretrained(str(pathlib.Path(root) / "tokenizer"), local_files_only=True)


def load_alphas_cumprod(root: PathLike) -> np.ndarray:
  """[T] float32 abar_t from ``root/scheduler/scheduler_config.json``."""
  return schedule.alphas_cumprod_from_config(
      _read_json(pathlib.Path(root) / "scheduler" / "scheduler_config.json"))


def kind_from_unet_config(cfg: dict, requested: str = "auto") -> str:
  """Backend kind for a UNet config: in_channels 4 -> latent, 3 -> pixel.

  Raises ``ModelTypeError`` for any other input channel count or when the
  requested backend contradicts the weights.
  """
  c = cfg.get("in_channels")
  kinds = {LATENT_IN_CHANNELS: "stable_diffusion", PIXEL_IN_CHANNELS: "pixel"}
  if c not in kinds:
    raise ModelTypeError(
        f"UNet has in_channels={c}, matching neither a latent model ({LATENT_IN_CHANNELS}, "
        f"Stable Diffusion) nor a pixel model ({PIXEL_IN_CHANNELS}, DeepFloyd-IF style). "
        "Inpainting/depth/upscaler UNets cannot drive SDS; point guidance.weights_dir at a "
        "text-to-image checkpoint.")
  kind = kinds[c]
  if requested not in ("auto", kind):
    raise ModelTypeError(
        f"config.guidance.backend={requested!r} but the UNet has in_channels={c}, i.e. a "
        f"{kind!r} model; set --config.guidance.backend={kind} or auto.")
  return kind


# ----------------------------------------------------------------------------
# DeepFloyd IF stage I.
# ----------------------------------------------------------------------------
# Block types each UNet path builds (absent keys = diffusers' defaults, SD).
SD_BLOCKS = {"down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
             "mid_block_type": ("UNetMidBlock2DCrossAttn", None)}
_SD_BLOCK_DEFAULTS = {"down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                      "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                      "mid_block_type": "UNetMidBlock2DCrossAttn"}
_IF_SUPERRES_PIPELINES = ("IFSuperResolutionPipeline", "IFImg2ImgSuperResolutionPipeline",
                          "IFInpaintingSuperResolutionPipeline", "StableDiffusionUpscalePipeline")
IF_HELP = ("See docs/guidance.md, 'DeepFloyd IF', for the layout of a local IF-I-XL + T5 copy.")


def _if_blocks() -> dict:
  from interfusion_jax.guidance import deepfloyd
  return {"down_block_types": deepfloyd.DOWN_BLOCKS, "up_block_types": deepfloyd.UP_BLOCKS,
          "mid_block_type": deepfloyd.MID_BLOCKS}


def _block_types(cfg: dict) -> dict:
  out = {}
  for k, default in _SD_BLOCK_DEFAULTS.items():
    v = cfg.get(k, default)
    out[k] = tuple(v) if isinstance(v, (list, tuple)) else (v,)
  return out


def check_not_if_superres(root: PathLike, unet_cfg: dict) -> None:
  """Raises ``ModelTypeError`` for a DeepFloyd IF stage II/III (super-resolution) directory."""
  root = pathlib.Path(root)
  name = ""
  if (root / "model_index.json").is_file():
    name = str(_read_json(root / "model_index.json").get("_class_name", ""))
  superres = (name in _IF_SUPERRES_PIPELINES or (root / "image_noising_scheduler").is_dir()
              or (root / "low_res_scheduler").is_dir()
              or (unet_cfg.get("in_channels") in (6, 7)
                  and (unet_cfg.get("class_embed_type") == "timestep"
                       or unet_cfg.get("num_class_embeds") is not None)))
  if superres:
    raise ModelTypeError(
        f"{str(root)!r} is a super-resolution model (DeepFloyd IF stage II/III or an upscaler: "
        f"{name or 'in_channels=%s' % unet_cfg.get('in_channels')}); SDS guidance uses the "
        "64x64 text-to-image stage I. Point guidance.weights_dir at a local IF-I-XL-v1.0 (or "
        f"IF-I-L / IF-I-M) copy. {IF_HELP}")


def unet_family(cfg: dict, where: PathLike = "") -> str:
  """Which UNet port builds a config: "diffusers_flax" (SD-style blocks,
  diffusers' FlaxUNet2DConditionModel) or "deepfloyd_if" (``deepfloyd.IFUNet``).

  Raises ``ModelTypeError`` when a down/mid/up block type is in neither
  whitelist (no block is ever built as something else).
  """
  types = _block_types(cfg)
  ifb = _if_blocks()
  if all(t in SD_BLOCKS[k] for k, v in types.items() for t in v):
    return "diffusers_flax"
  if all(t in ifb[k] for k, v in types.items() for t in v):
    return "deepfloyd_if"
  bad = sorted({f"{k}: {t!r}" for k, v in types.items() for t in v
                if t not in SD_BLOCKS[k] and t not in ifb[k]})
  raise ModelTypeError(
      f"UNet in {where} has block types no guidance path implements"
      f" ({'; '.join(bad) or 'a mix of Stable Diffusion and DeepFloyd IF blocks'}). Supported: "
      f"Stable Diffusion {SD_BLOCKS} or DeepFloyd IF stage I {ifb}.")


def check_if_unet_config(cfg: dict, folder: PathLike = "") -> None:
  """Raises ``ModelTypeError`` unless ``deepfloyd.IFUNet`` implements this config."""
  from interfusion_jax.guidance import deepfloyd
  bad = [f"{k}={cfg[k]!r}" for k, ok in deepfloyd.SUPPORTED.items()
         if k in cfg and cfg[k] not in ok]
  if cfg.get("in_channels") != PIXEL_IN_CHANNELS:
    bad.append(f"in_channels={cfg.get('in_channels')!r} (stage I takes 3)")
  hd = cfg.get("attention_head_dim", 8)
  if isinstance(hd, (list, tuple)) and len(set(hd)) > 1:
    bad.append(f"attention_head_dim={hd!r} (one head size for all blocks)")
  for k in ("cross_attention_dim", "layers_per_block"):
    if isinstance(cfg.get(k), (list, tuple)) and len(set(cfg[k])) > 1:
      bad.append(f"{k}={cfg[k]!r} (one value for all blocks)")
  if bad:
    raise ModelTypeError(
        f"UNet in {folder} uses DeepFloyd-IF features the Flax IFUNet does not implement "
        f"({', '.join(bad)}). {IF_HELP}")


def load_if_unet(root: PathLike, *, dtype: str = "float32", sharding: Any = None
                 ) -> tuple[Any, Any, dict]:
  """Loads an IF stage-I ``root/unet`` -> (deepfloyd.IFUNet, params, config dict).

  Params are cast to ``dtype`` on the host and ``device_put`` to ``sharding``
  (default: the first device): with ``dtype="bfloat16"`` IF-I-XL never has
  an fp32 copy on the device. The module computes in ``dtype``.
  """
  from interfusion_jax.guidance import deepfloyd
  folder = pathlib.Path(root) / "unet"
  cfg = _read_json(folder / "config.json")
  check_if_unet_config(cfg, folder)
  model = deepfloyd.IFUNet.from_config(cfg, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  shapes = jax.eval_shape(model.init_weights, jax.random.PRNGKey(0))
  return model, _load_params(folder, shapes, _diffusers_rename, dtype=dtype, sharding=sharding), cfg


def _route(root: pathlib.Path, backend: str) -> tuple[str, dict]:
  """(kind, unet config) for a directory; every config error is raised here,
  before any weights are read or anything compiles."""
  unet_cfg = _read_json(root / "unet" / "config.json")
  check_not_if_superres(root, unet_cfg)
  if unet_family(unet_cfg, root / "unet") == "deepfloyd_if":
    if backend not in ("auto", "pixel", "deepfloyd_if"):
      raise ModelTypeError(
          f"config.guidance.backend={backend!r} but {str(root)!r} is a DeepFloyd IF stage-I "
          "model; set --config.guidance.backend=auto (or deepfloyd_if).")
    check_if_unet_config(unet_cfg, root / "unet")
    return "deepfloyd_if", unet_cfg
  return kind_from_unet_config(unet_cfg, backend), unet_cfg


def load_guidance(root: PathLike, config: Any, *, backend: str = "auto",
                  sharding: Any = None) -> tuple[Any, dict]:
  """Loads UNet (+ VAE for latent models) and the schedule -> (spec, params).

  The kind comes from the directory: a DeepFloyd IF stage-I UNet selects
  "deepfloyd_if" by itself; otherwise in_channels 4 -> "stable_diffusion",
  3 -> "pixel". Unsupported configs fail before any weights are read.

  Args:
    root: local diffusers directory.
    config: the full ConfigDict (reads ``config.guidance``).
    backend: "auto" | "stable_diffusion" | "pixel" | "deepfloyd_if".
    sharding: target sharding of the weights (default: the first device).

  Returns:
    (GuidanceSpec, params) with params = {"unet", "alphas_cumprod" [T],
    and "vae" for latent models}.
  """
  from interfusion_jax.guidance import core
  root = check_model_dir(root, ("unet", "scheduler"))
  kind, unet_cfg = _route(root, backend)
  if kind == "stable_diffusion":
    check_model_dir(root, ("vae",))
  g = config.guidance if "guidance" in config else config
  if kind == "deepfloyd_if":
    unet, unet_params, _ = load_if_unet(root, dtype=g.unet_dtype, sharding=sharding)
  else:
    unet, unet_params, _ = load_unet(
        root, dtype=g.unet_dtype,
        memory_efficient_attention=bool(g.get("memory_efficient_attention", False)))
  abar = load_alphas_cumprod(root)
  sched = _read_json(root / "scheduler" / "scheduler_config.json")
  params = {"unet": unet_params, "alphas_cumprod": jnp.asarray(abar)}
  extra = dict(unet=unet, num_train_timesteps=int(abar.shape[0]),
               prediction_type=sched.get("prediction_type", "epsilon"))
  if kind == "stable_diffusion":
    vae, vae_params, vae_cfg = load_vae(root)
    if vae_cfg.get("latent_channels", 4) != unet_cfg.get("in_channels"):
      raise ModelTypeError(
          f"VAE latent_channels={vae_cfg.get('latent_channels')} != UNet in_channels="
          f"{unet_cfg.get('in_channels')} in {root}.")
    params["vae"] = vae_params
    extra.update(vae=vae, scaling_factor=float(vae_cfg.get("scaling_factor", 0.18215)))
  else:
    extra.update(resolution=int(unet_cfg.get("sample_size", 64)))
  return core.GuidanceSpec.from_config(config, kind=kind, **extra), params


def load_scene_guidance(config: Any, root: PathLike | None = None, *,
                        sharding: Any = None) -> tuple[Any, dict, dict]:
  """Everything the trainer needs from a diffusers directory, once per scene.

  Stable Diffusion / pixel: loads the guidance model (``load_guidance``),
  then the CLIP tokenizer and text encoder, encodes every (prompt x view)
  plus the empty prompt and drops the text encoder.

  DeepFloyd IF stage I: checks the UNet config and the T5 folders first
  (clear errors before anything compiles), encodes the prompts with T5
  (``t5.encode_prompts``: bf16, on-disk cache, T5 freed afterwards), then
  loads the UNet, so T5 and the UNet are never on the device together.

  Args:
    config: full ConfigDict (``guidance`` and ``prompt`` sections; IF reads
      ``guidance.text_cache_dir`` if present, see ``t5.default_cache_dir``).
    root: directory (default ``config.guidance.weights_dir``).
    sharding: target sharding of the UNet weights (default: first device).

  Returns:
    (spec, params, table) with table = {"human", "head", "object",
    "interaction": [V, L, D], "uncond": [L, D]} (see prompts.embedding_table;
    IF: L = 77, D = the T5 width, 4096 for T5-XXL).
  """
  from interfusion_jax.guidance import prompts
  root = check_model_dir(root if root is not None else config.guidance.weights_dir,
                         ("unet", "scheduler"))
  backend = config.guidance.backend if config.guidance.backend != "builtin" else "auto"
  kind, _ = _route(root, backend)
  pspec = prompts.PromptSpec.from_config(config)
  if kind == "deepfloyd_if":
    from interfusion_jax.guidance import t5
    t5.check_t5_dir(root)
    table = t5.encode_prompts(root, pspec, cache_dir=config.guidance.get("text_cache_dir", "") or None)
    spec, params = load_guidance(root, config, backend=backend, sharding=sharding)
    return spec, params, table
  check_model_dir(root, ("text_encoder", "tokenizer"))
  spec, params = load_guidance(root, config, backend=backend)
  tokenizer = load_tokenizer(root)
  text_model, text_params = load_text_encoder(root)
  encode = prompts.clip_text_encoder(tokenizer, text_model, text_params)
  table = prompts.embedding_table(encode, pspec)
  return spec, params, table
