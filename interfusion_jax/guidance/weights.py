"""Reading weights from disk: diffusers / transformers folders, Flax msgpack or PyTorch
safetensors (single or sharded, fp16 index names), converted to Flax trees on the host.

The low level under ``loading`` (the models) and ``t5`` (the IF text encoder): file
discovery, ``safetensors`` reading, PyTorch -> Flax key renaming, tree checks, host-side
dtype casts and the device transfer. Errors name the missing or wrong file.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util


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
        f"Diffusion weights directory {str(root)!r} is incomplete; missing: "
        + "; ".join(miss) + f". {HELP}")
  return root


def _corrupt(path: PathLike, what: str, e: BaseException) -> ModelTypeError:
  """The one-line error for a weights-directory file that exists but cannot be read."""
  detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
  return ModelTypeError(f"{path} cannot be read as {what} ({type(e).__name__}: {detail}); "
                        "the file is truncated or corrupt: download it again.")


def _read_json(path: pathlib.Path) -> dict:
  """A JSON object file of a model directory.

  Raises:
    FileNotFoundError (or another OSError) when it cannot be opened;
    ModelTypeError when it is not UTF-8 JSON holding an object.
  """
  with open(path, "rb") as f:
    data = f.read()
  try:
    out = json.loads(data.decode("utf-8"))
  except ValueError as e:   # JSONDecodeError and UnicodeDecodeError
    raise _corrupt(path, "a JSON file", e) from None
  if not isinstance(out, dict):
    raise ModelTypeError(f"{path} holds a JSON {type(out).__name__}, not an object; "
                         "the file is corrupt: download it again.")
  return out


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
    try:
      with safe_open(str(shard), framework="numpy") as f:
        names = list(f.keys())
        for name in names:
          tensor = f.get_tensor(name)
          yield name, tensor
    except (FileNotFoundError, ModelTypeError):
      raise
    except Exception as e:  # pylint: disable=broad-except  # SafetensorError, truncation
      raise _corrupt(shard, "safetensors", e) from None


def read_safetensors(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a .safetensors file (or a sharded ``.index.json``) into NumPy.

  Uses ``safetensors.numpy`` (bf16 as ``ml_dtypes.bfloat16``), no torch.

  Returns:
    {name: array} with the file's dtypes.
  """
  from safetensors.numpy import load_file
  out = {}
  for shard in _shards(pathlib.Path(path)):
    try:
      out.update(load_file(str(shard)))
    except FileNotFoundError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # SafetensorError, truncation
      raise _corrupt(shard, "safetensors", e) from None
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
    try:
      params = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # pylint: disable=broad-except  # msgpack's errors, truncation
      raise _corrupt(path, "Flax msgpack", e) from None
    if not isinstance(params, dict):
      raise _corrupt(path, "Flax msgpack", TypeError(f"holds a {type(params).__name__}"))
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


IF_HELP = ("See docs/guidance.md, 'DeepFloyd IF', for the layout of a local IF-I-XL + T5 copy.")
