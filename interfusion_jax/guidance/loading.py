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
    if any_of and not any((root / comp / n).is_file() or (root / comp / (n + ".index.json")).is_file()
                          for n in any_of):
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
# Safetensors without torch.
# ----------------------------------------------------------------------------
def _st_dtype(name: str) -> np.dtype:
  import ml_dtypes  # shipped with jax
  table = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
  if name not in table:
    raise ValueError(f"Unsupported safetensors dtype {name!r}.")
  return np.dtype(table[name])


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (or a sharded ``.index.json``) into NumPy.

  Implements the safetensors format directly (8-byte header length, JSON
  header, raw little-endian buffer) so bf16/fp16/fp32 all load without torch.

  Returns:
    {name: array} with the file's dtypes (bf16 as ``ml_dtypes.bfloat16``).
  """
  path = pathlib.Path(path)
  if path.name.endswith(".index.json"):
    out = {}
    for shard in sorted(set(_read_json(path)["weight_map"].values())):
      out.update(read_safetensors(path.parent / shard))
    return out
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    buf = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    lo, hi = info["data_offsets"]
    arr = np.frombuffer(buf, dtype=_st_dtype(info["dtype"]), count=(hi - lo) // _st_dtype(info["dtype"]).itemsize,
                        offset=lo)
    out[name] = arr.reshape(info["shape"])
  return out


def _weights_file(folder: pathlib.Path) -> tuple[pathlib.Path, str]:
  for n in FLAX_NAMES:
    if (folder / n).is_file():
      return folder / n, "flax"
  for n in PT_NAMES:
    for cand in (folder / n, folder / (n + ".index.json")):
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


def convert_pt_state_dict(pt_state: dict[str, np.ndarray], shapes: Any,
                          rename: Callable[[str, np.ndarray, dict], tuple[tuple, np.ndarray]],
                          *, where: str = "") -> dict:
  """Maps a PyTorch state dict (NumPy arrays) onto a Flax params tree.

  Args:
    pt_state: {dotted PyTorch name: array}.
    shapes: the Flax params tree of ``jax.ShapeDtypeStruct`` (``eval_shape``).
    rename: (pt_key, tensor, flat_shapes) -> (flax key tuple, tensor), e.g.
      diffusers' rules (conv OIHW -> HWIO, linear transpose, norm scale).
    where: folder name for error messages.

  Returns:
    nested dict of float32 NumPy arrays with exactly the keys of ``shapes``.
  """
  flat = traverse_util.flatten_dict(shapes)
  out = {}
  for pt_key, tensor in pt_state.items():
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
    out[key] = np.ascontiguousarray(tensor)
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


def _load_params(folder: pathlib.Path, shapes: Any, rename) -> Any:
  path, fmt = _weights_file(folder)
  if fmt == "flax":
    params = serialization.msgpack_restore(path.read_bytes())
    if "params" in params and "params" not in shapes:
      params = params["params"]
    _check_tree(params, shapes, str(folder))
  else:
    params = convert_pt_state_dict(read_safetensors(path), shapes, rename, where=str(folder))
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


# ----------------------------------------------------------------------------
# Components.
# ----------------------------------------------------------------------------
def _check_unet_config(cfg: dict, folder: pathlib.Path) -> None:
  bad = [f"{k}={cfg[k]!r}" for k, ok in _FLAX_UNET_SUPPORTED.items() if k in cfg and cfg[k] not in ok]
  if bad:
    raise ModelTypeError(
        f"UNet in {folder} uses features diffusers' FlaxUNet2DConditionModel does not implement "
        f"({', '.join(bad)}). DeepFloyd IF-I needs a Flax port (plug it in as GuidanceSpec.unet); "
        f"otherwise use a Stable Diffusion 1.x/2.x checkpoint.")


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
  params = _load_params(folder, shapes, _diffusers_rename)
  if dtype == "bfloat16":
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
  return model, params, cfg


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


def load_guidance(root: PathLike, config: Any, *, backend: str = "auto") -> tuple[Any, dict]:
  """Loads UNet (+ VAE for latent models) and the schedule -> (spec, params).

  Args:
    root: local diffusers directory.
    config: the full ConfigDict (reads ``config.guidance``).
    backend: "auto" | "stable_diffusion" | "pixel".

  Returns:
    (GuidanceSpec, params) with params = {"unet", "alphas_cumprod" [T],
    and "vae" for latent models}.
  """
  from interfusion_jax.guidance import core
  root = check_model_dir(root, ("unet", "scheduler"))
  unet_cfg = _read_json(root / "unet" / "config.json")
  kind = kind_from_unet_config(unet_cfg, backend)
  if kind == "stable_diffusion":
    check_model_dir(root, ("vae",))
  g = config.guidance if "guidance" in config else config
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


def load_scene_guidance(config: Any, root: PathLike | None = None) -> tuple[Any, dict, dict]:
  """Everything the trainer needs from a diffusers directory, once per scene.

  Loads the guidance model (``load_guidance``), then the tokenizer and CLIP
  text encoder, encodes every (prompt x view) plus the empty prompt and
  drops the text encoder.

  Args:
    config: full ConfigDict (``guidance`` and ``prompt`` sections).
    root: directory (default ``config.guidance.weights_dir``).

  Returns:
    (spec, params, table) with table = {"human", "head", "object",
    "interaction": [V, L, D], "uncond": [L, D]} (see prompts.embedding_table).
  """
  from interfusion_jax.guidance import prompts
  root = check_model_dir(root if root is not None else config.guidance.weights_dir,
                         ("unet", "scheduler", "text_encoder", "tokenizer"))
  backend = config.guidance.backend if config.guidance.backend != "builtin" else "auto"
  spec, params = load_guidance(root, config, backend=backend)
  tokenizer = load_tokenizer(root)
  text_model, text_params = load_text_encoder(root)
  encode = prompts.clip_text_encoder(tokenizer, text_model, text_params)
  table = prompts.embedding_table(encode, prompts.PromptSpec.from_config(config))
  return spec, params, table
