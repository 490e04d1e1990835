"""Prompt processing, view-dependent suffixes and the frozen embedding table.

PAPER.md "Prompt engineering": optional prefix ("a photo of") and quality
suffix ("8K, HD"), then the view suffix after the whole prompt
("a photo of a bike, 8K, HD, front view"); front/side/back/overhead chosen per camera
with threestudio's rule, inside jit, by indexing a [V, L, D] table that was
encoded once per scene.

Beyond the release (threestudio's prompt processor): a negative prompt
(``PromptSpec.negative``, "" by default as the release) that takes the empty
prompt's place as the unconditional embedding, and Perp-Neg's view-dependent
positive / negative embeddings with azimuth-interpolated weights
(``PerpNegSpec``, ``perp_neg_embeddings``).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

VIEWS = ("front", "side", "back", "overhead")  # table row order


class PromptError(ValueError):
  """A prompt is empty or malformed."""


@dataclasses.dataclass(frozen=True)
class PromptSpec:
  """Static prompt settings (``config.prompt``, translated by ``stage2.config.prompt_spec``)."""
  human: str
  object: str
  interaction: str
  prefix: str = "a photo of"
  suffix: str = "8K, HD"
  view_dependent: bool = True
  overhead_elevation_deg: float = 60.0
  front_azimuth_deg: float = 45.0
  back_azimuth_deg: float = 135.0
  head_template: str = "head of {human}"   # official: "a photo of head of T_H, 8K, HD"
  negative: str = ""   # the CFG unconditional prompt of all four renders ("" = the release)


def _check(text: str, what: str) -> str:
  if not isinstance(text, str) or not text.strip():
    raise PromptError(f"The {what} prompt is empty; give a non-empty text, e.g. "
                      f"--config.prompt.{what}=\"...\".")
  return " ".join(text.split())


def scene_prompts(spec: PromptSpec) -> dict[str, str]:
  """The four base prompts of a scene (PAPER.md Eq. 3-5).

  Returns:
    {"human": T_H, "head": "head of T_H", "object": T_O,
     "interaction": "T_H T_I"} (the full scene prompt).
  """
  human = _check(spec.human, "human")
  obj = _check(spec.object, "object")
  inter = _check(spec.interaction, "interaction")
  return {"human": human, "head": spec.head_template.format(human=human), "object": obj,
          "interaction": f"{human} {inter}"}


def decorate(text: str, spec: PromptSpec, view: str | None) -> str:
  """"{prefix} {text}, {suffix}, {view} view" with empty parts dropped.

  The view suffix follows the whole prompt, quality suffix included, as the
  official prompt processor appends it: "a photo of a bike, 8K, HD, front view".
  """
  text = _check(text, "given")
  parts = [f"{spec.prefix} {text}".strip() if spec.prefix else text]
  if spec.suffix:
    parts.append(spec.suffix)
  if view is not None:
    parts.append(f"{view} view")
  return ", ".join(parts)


def view_prompts(text: str, spec: PromptSpec) -> list[str]:
  """[V] decorated prompts, one per entry of ``VIEWS`` (identical if not view-dependent)."""
  if not spec.view_dependent:
    return [decorate(text, spec, None)] * len(VIEWS)
  return [decorate(text, spec, v) for v in VIEWS]


def view_index(elevation_deg: jax.Array, azimuth_deg: jax.Array, *,
               overhead_deg: float = 60.0, front_deg: float = 45.0,
               back_deg: float = 135.0) -> jax.Array:
  """threestudio view rule (PAPER.md "Prompt engineering"), jittable.

  overhead if elevation > overhead_deg; else front if |azimuth| < front_deg;
  back if |azimuth| > back_deg; side otherwise. Azimuth is wrapped to
  [-180, 180) first.

  Args:
    elevation_deg: [B] camera elevation in degrees.
    azimuth_deg: [B] camera azimuth in degrees.

  Returns:
    [B] int32 row indices into ``VIEWS`` (0 front, 1 side, 2 back, 3 overhead).
  """
  az = jnp.abs(jnp.mod(jnp.asarray(azimuth_deg, jnp.float32) + 180.0, 360.0) - 180.0)
  idx = jnp.where(az < front_deg, 0, jnp.where(az > back_deg, 2, 1))
  return jnp.where(jnp.asarray(elevation_deg) > overhead_deg, 3, idx).astype(jnp.int32)


def select_embeddings(table: jax.Array, elevation_deg: jax.Array, azimuth_deg: jax.Array,
                      spec: PromptSpec) -> jax.Array:
  """Per-camera conditioning from a [V, L, D] table, inside jit.

  Args:
    table: [V, L, D] embeddings of ``view_prompts`` (V = len(VIEWS)).
    elevation_deg, azimuth_deg: [B].

  Returns:
    [B, L, D].
  """
  idx = view_index(elevation_deg, azimuth_deg, overhead_deg=spec.overhead_elevation_deg,
                   front_deg=spec.front_azimuth_deg, back_deg=spec.back_azimuth_deg)
  return table[idx]


def tokenize(tokenizer: Any, texts: list[str]) -> np.ndarray:
  """Pads to the tokenizer limit; over-long prompts are truncated with a warning.

  Returns:
    [N, model_max_length] int32 token ids.
  """
  limit = int(tokenizer.model_max_length)
  for t in texts:
    n = len(tokenizer(t, truncation=False)["input_ids"])
    if n > limit:
      warnings.warn(f"Prompt {t!r} has {n} tokens, over the text encoder's limit of {limit}; "
                    "it is truncated.", stacklevel=2)
  ids = tokenizer(texts, padding="max_length", max_length=limit, truncation=True,
                  return_tensors="np")["input_ids"]
  return np.asarray(ids, np.int32)


def clip_text_encoder(tokenizer: Any, model: Any, params: Any) -> Callable[[list[str]], jax.Array]:
  """Text -> embeddings with a CLIPTokenizer + FlaxCLIPTextModel.

  Returns:
    fn(texts: list[str]) -> [N, L, D] float32 ``last_hidden_state`` (the
    conditioning Stable Diffusion uses).
  """
  @jax.jit
  def run(ids):
    return model(ids, params=params).last_hidden_state

  def encode(texts):
    return run(jnp.asarray(tokenize(tokenizer, list(texts)))).astype(jnp.float32)
  return encode


def embedding_table(encode: Callable[[list[str]], jax.Array], spec: PromptSpec) -> dict[str, jax.Array]:
  """Encodes every (prompt x view) and the negative prompt once per scene.

  Args:
    encode: texts -> [N, L, D] (e.g. ``clip_text_encoder``).
    spec: prompt settings; ``spec.negative`` (as written, undecorated, like
      threestudio's ``negative_prompt``; "" = the empty prompt) is encoded as
      "uncond".

  Returns:
    {"human", "head", "object", "interaction": [V, L, D], "uncond": [L, D]},
    frozen (stop-gradient) arrays to pass as pytree arguments.
  """
  base = scene_prompts(spec)
  names = list(base)
  texts = [t for n in names for t in view_prompts(base[n], spec)] + [spec.negative]
  emb = jax.lax.stop_gradient(jnp.asarray(encode(texts)))
  v = len(VIEWS)
  table = {n: emb[i * v:(i + 1) * v] for i, n in enumerate(names)}
  table["uncond"] = emb[-1]
  return table


# ----------------------------------------------------------------------------
# Perp-Neg (threestudio ``get_text_embeddings_perp_neg``; not in the release).
# ----------------------------------------------------------------------------
Decay = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class PerpNegSpec:
  """Perp-Neg's negative-weight curves f(r) = a exp(-b r) + c, as (a, b, c)
  (threestudio's ``perp_neg_f_*`` and their defaults).

  Attributes:
    f_sb: weight of the side negative between side (r = 1) and back (r = 0).
    f_fsb: weight of the front negative between side and back.
    f_fs: weight of the front negative between side (r = 0) and front (r = 1).
    f_sf: weight of the side negative between front and side, at 1 - r.
  """
  f_sb: Decay = (1.0, 0.5, -0.606)
  f_fsb: Decay = (1.0, 0.5, 0.967)
  f_fs: Decay = (4.0, 0.5, -2.426)
  f_sf: Decay = (4.0, 0.5, -2.426)


def shifted_exponential_decay(abc: Decay, r: jax.Array) -> jax.Array:
  """a exp(-b r) + c for ``abc`` = (a, b, c) (threestudio ``shifted_expotional_decay``)."""
  a, b, c = abc
  return a * jnp.exp(-b * r) + c


def perp_neg_embeddings(table: jax.Array, uncond: jax.Array, view: jax.Array,
                        azimuth_deg: jax.Array, spec: PerpNegSpec
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Perp-Neg's positive embedding, its two negative embeddings and their
  weights for one camera (threestudio ``get_text_embeddings_perp_neg``), jittable.

  With az the azimuth wrapped to [-180, 180):
    * overhead (``view`` == 3): positive = the overhead row; negatives =
      ``uncond`` twice with weight 0;
    * |az| < 90: r = 1 - |az| / 90; positive = r front + (1 - r) side;
      negatives (front, side) with weights (-f_fs(r), -f_sf(1 - r));
    * else: r = 2 - |az| / 90; positive = r side + (1 - r) back;
      negatives (side, front) with weights (-f_sb(r), -f_fsb(r)).

  Args:
    table: [V, L, D] view rows in ``VIEWS`` order (front, side, back, overhead).
    uncond: [L, D] the unconditional (negative-prompt) embedding.
    view: int scalar, the camera's ``view_index``.
    azimuth_deg: scalar camera azimuth in degrees.
    spec: the weight curves.

  Returns:
    (positive [L, D], negatives [2, L, D], weights [2] float32).
  """
  front, side, back, overhead = (table[i] for i in range(4))
  az = jnp.abs(jnp.mod(jnp.asarray(azimuth_deg, jnp.float32) + 180.0, 360.0) - 180.0)
  is_front = az < 90.0
  r = jnp.where(is_front, 1.0 - az / 90.0, 2.0 - az / 90.0)
  f = lambda abc, x: shifted_exponential_decay(abc, x)
  pos = jnp.where(is_front, r * front + (1.0 - r) * side, r * side + (1.0 - r) * back)
  negs = jnp.where(is_front, jnp.stack([front, side]), jnp.stack([side, front]))
  weights = jnp.where(is_front, jnp.stack([-f(spec.f_fs, r), -f(spec.f_sf, 1.0 - r)]),
                      jnp.stack([-f(spec.f_sb, r), -f(spec.f_fsb, r)]))
  top = view == 3
  pos = jnp.where(top, overhead, pos)
  negs = jnp.where(top, jnp.stack([uncond, uncond]).astype(negs.dtype), negs)
  weights = jnp.where(top, 0.0, weights).astype(jnp.float32)
  return pos, negs, weights
