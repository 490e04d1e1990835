"""Offline loading of diffusers-format directories into frozen Flax pytrees.

Layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``, see
docs/guidance.md). Each model folder needs ``config.json`` plus either Flax
msgpack weights (``diffusion_flax_model.msgpack`` / ``flax_model.msgpack``)
or PyTorch safetensors (``diffusion_pytorch_model.safetensors`` /
``model.safetensors``, optionally sharded with an ``.index.json``).
Safetensors are parsed here with NumPy and renamed/transposed with the
diffusers / transformers PyTorch->Flax key rules, so torch is never needed.
A hub model id instead of a folder is fetched (only the files read) by
``interfusion_jax.hub`` in ``load_scene_guidance`` / ``load_scene_text``;
nothing else here touches the network.
"""
from __future__ import annotations

import pathlib
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax import hub
from interfusion_jax.guidance import core, deepfloyd, prompts, schedule, t5

from interfusion_jax.guidance.weights import (  # noqa: F401 (the file-level API, re-exported)
    COMPONENT_FILES,
    FLAX_NAMES,
    HELP,
    IF_HELP,
    LATENT_IN_CHANNELS,
    ModelTypeError,
    PIXEL_IN_CHANNELS,
    PT_NAMES,
    PathLike,
    WeightsNotFoundError,
    _FLAX_UNET_SUPPORTED,
    _check_tree,
    _diffusers_rename,
    _hashable_config,
    _index_names,
    _load_params,
    _read_json,
    _shards,
    _transformers_rename,
    _weights_file,
    check_model_dir,
    convert_pt_state_dict,
    host_params,
    iter_safetensors,
    missing_files,
    read_safetensors,
    to_device)


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


def unet_platform(sharding: Any = None) -> str:
  """The jax platform the UNet weights go to: ``sharding``'s devices, else the first device."""
  if sharding is not None and getattr(sharding, "device_set", None):
    return next(iter(sharding.device_set)).platform
  return jax.devices()[0].platform


def load_unet(root: PathLike, *, dtype: str = "float32",
              memory_efficient_attention: bool = False) -> tuple[Any, Any, dict]:
  """Loads ``root/unet`` -> (FlaxUNet2DConditionModel, params, config dict).

  ``dtype="bfloat16"`` builds the module with bf16 compute and casts params;
  "auto" resolves with ``core.resolve_unet_dtype`` for the first device.
  ``memory_efficient_attention`` uses diffusers' chunked attention (SD at
  64x64 latents has 4096-token self-attention).
  """
  from diffusers import FlaxUNet2DConditionModel
  folder = pathlib.Path(root) / "unet"
  cfg = _read_json(folder / "config.json")
  _check_unet_config(cfg, folder)
  dtype = core.resolve_unet_dtype(dtype, unet_platform())
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


def _if_blocks() -> dict:
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
  an fp32 copy on the device. The module computes in ``dtype``; "auto"
  resolves with ``core.resolve_unet_dtype`` for the target devices.
  """
  folder = pathlib.Path(root) / "unet"
  cfg = _read_json(folder / "config.json")
  check_if_unet_config(cfg, folder)
  dtype = core.resolve_unet_dtype(dtype, unet_platform(sharding))
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


def load_guidance(root: PathLike, options: core.GuidanceOptions, *, backend: str = "auto",
                  sharding: Any = None) -> tuple[Any, dict]:
  """Loads UNet (+ VAE for latent models) and the schedule -> (spec, params).

  The kind comes from the directory: a DeepFloyd IF stage-I UNet selects
  "deepfloyd_if" by itself; otherwise in_channels 4 -> "stable_diffusion",
  3 -> "pixel". Unsupported configs fail before any weights are read.

  Args:
    root: local diffusers directory.
    options: the user's guidance settings (``core.GuidanceOptions``).
    backend: "auto" | "stable_diffusion" | "pixel" | "deepfloyd_if".
    sharding: target sharding of the weights (default: the first device).

  Returns:
    (GuidanceSpec, params) with params = {"unet", "alphas_cumprod" [T],
    and "vae" for latent models}.
  """
  root = check_model_dir(root, ("unet", "scheduler"))
  kind, unet_cfg = _route(root, backend)
  if kind == "stable_diffusion":
    check_model_dir(root, ("vae",))
  dtype = core.resolve_unet_dtype(options.unet_dtype, unet_platform(sharding))
  if kind == "deepfloyd_if":
    unet, unet_params, _ = load_if_unet(root, dtype=dtype, sharding=sharding)
  else:
    unet, unet_params, _ = load_unet(
        root, dtype=dtype,
        memory_efficient_attention=bool(options.memory_efficient_attention))
  abar = load_alphas_cumprod(root)
  sched = _read_json(root / "scheduler" / "scheduler_config.json")
  params = {"unet": unet_params, "alphas_cumprod": jnp.asarray(abar)}
  extra = dict(unet=unet, unet_dtype=dtype, num_train_timesteps=int(abar.shape[0]),
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
  return core.GuidanceSpec.from_options(options, kind=kind, **extra), params


def load_scene_guidance(options: core.GuidanceOptions, prompt: prompts.PromptSpec,
                        root: PathLike | None = None, *,
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
    options: the user's guidance settings (IF reads ``text_cache_dir``, see
      ``t5.default_cache_dir``).
    prompt: the scene's prompts.
    root: directory or hub model id (default ``options.weights_dir``; an id is
      fetched into the hub cache by ``hub.resolve``).
    sharding: target sharding of the UNet weights (default: first device).

  Returns:
    (spec, params, table) with table = {"human", "head", "object",
    "interaction": [V, L, D], "uncond": [L, D]} (see prompts.embedding_table;
    IF: L = 77, D = the T5 width, 4096 for T5-XXL).
  """
  root = hub.resolve(root if root is not None else options.weights_dir, hub.DIFFUSERS,
                     what="config.guidance.weights_dir")
  root = check_model_dir(root, ("unet", "scheduler"))
  backend = options.backend if options.backend != "builtin" else "auto"
  kind, _ = _route(root, backend)
  if kind == "deepfloyd_if":
    table = load_scene_text(options, prompt, root, kind)   # T5 first, freed before the UNet
    spec, params = load_guidance(root, options, backend=backend, sharding=sharding)
    return spec, params, table
  check_model_dir(root, ("text_encoder", "tokenizer"))
  spec, params = load_guidance(root, options, backend=backend)
  return spec, params, load_scene_text(options, prompt, root, kind)


def load_scene_text(options: core.GuidanceOptions, prompt: prompts.PromptSpec, root: PathLike,
                    kind: str) -> dict:
  """The scene's prompt-embedding table from the text encoder of ``root`` only.

  ``root``: a folder or hub model id (``hub.resolve``). ``kind`` "deepfloyd_if": T5 (``t5.encode_prompts``: bf16, on-disk cache,
  freed afterwards); otherwise the CLIP tokenizer and text encoder. The
  diffusion model is not loaded (a sweep's further scenes share the first's).

  Returns:
    {"human", "head", "object", "interaction": [V, L, D], "uncond": [L, D]}.
  """
  root = pathlib.Path(hub.resolve(root, hub.DIFFUSERS, what="config.guidance.weights_dir"))
  if kind == "deepfloyd_if":
    t5.check_t5_dir(root)
    return t5.encode_prompts(root, prompt, cache_dir=options.text_cache_dir or None)
  check_model_dir(root, ("text_encoder", "tokenizer"))
  encode = prompts.clip_text_encoder(load_tokenizer(root), *load_text_encoder(root))
  return prompts.embedding_table(encode, prompt)
