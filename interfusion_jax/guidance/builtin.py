"""The built-in offline prior: a closed-form, caption-conditioned denoiser.

The prior is the exact minimum-mean-square-error denoiser of a *smoothed
empirical distribution* over a bank of rendered HOI images (``scenes.py``):

    x0 ~ sum_i pi_i(y) N(m_i, s^2 I),      x_t = a x0 + b eps,
    a = sqrt(abar_t), b = sqrt(1 - abar_t),

where m_i are the bank images (in [-1, 1]), s is the smoothing width and the
prior weights pi_i(y) come from the caption y. Its noise prediction
E[eps | x_t] = (x_t - a E[x0 | x_t]) / b is what SDS needs (PAPER.md "Score
distillation"); classifier-free guidance runs against the empty caption,
whose weights are uniform over the whole bank.

Captions are mapped to a *factorised* conditioning: one probability vector per
factor (render kind, view, clothing colour, object type, object colour).
A factor the caption does not mention is uniform. An image's prior weight is
a product over factors of ``(1 - mix) q_f[attr] + mix / n_f`` so that colour /
object combinations missing from the bank still get the images that match
most factors. The embedding is a plain [1, D] float vector; the trainer
builds it offline with ``embed_caption`` for any prompt.

Camera conditioning (optional, like the camera-conditioned priors of
Zero-1-to-3 and MVDream): the trainer may append the unit direction from the
render's look-at target to its camera (``CAMERA_DIMS`` = 3 numbers) to the
embedding. Each bank image stores the same direction for its own camera, and
its prior weight gains a von Mises-Fisher factor exp(kappa d_i . d). A zero
direction switches the factor off. The four view words ("front/side/back/
overhead view") only sort a camera into one of four wide classes, so without
this factor the target of e.g. "a bike, side view" is the mean of bikes seen
from anywhere within 90 degrees of azimuth and 70 of elevation, and the object
field gets a colour and a rough extent but no shape.

Backend protocol (``guidance/core.py``): ``encode`` and ``predict_eps``.
Recommended guidance scale: ``DEFAULT_GUIDANCE_SCALE`` with "uniform" weighting.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.guidance import captions as colors
from interfusion_jax.guidance import captions as objects
from interfusion_jax.guidance import schedule

KINDS = ("human", "object", "interaction", "head")
VIEWS = ("front", "side", "back", "overhead")
FACTORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kind", KINDS),
    ("view", VIEWS),
    ("human_color", colors.COLOR_NAMES),
    ("object", objects.OBJECT_NAMES),
    ("object_color", colors.COLOR_NAMES),
)
FACTOR_SIZES = tuple(len(v) for _, v in FACTORS)
EMBED_DIM = int(sum(FACTOR_SIZES))      # caption factors
CAMERA_DIMS = 3                          # optional camera direction after them
NOT_APPLICABLE = -1   # attribute value of e.g. the object colour of a human render
DEFAULT_GUIDANCE_SCALE = 10.0
DEFAULT_WEIGHTING = "uniform"


@dataclasses.dataclass(frozen=True)
class PriorSpec:
  """Static settings of the prior (stored next to the bank).

  Attributes:
    smoothing: s, std of the Gaussian around each bank image ([-1, 1] units).
    temperature: tau >= 1 divides the likelihood term of the posterior over
      bank images (tau = 1: the exact posterior of the smoothed model). In
      D = 3072 pixel dimensions the exact posterior is a hard nearest
      neighbour that ignores the caption; tau = 100 lets the caption weights
      compete with the image distance (tests/test_guidance_builtin.py checks
      that SDS then reaches the requested hue).
    mix: the per-factor floor of the caption weights (0 = hard matching).
    view_mix: the floor of the view factor (views are coarse and the bank
      has few images per (colour, view), so the view only tilts the weights).
    camera_kappa: concentration kappa of the camera-direction factor
      exp(kappa d_i . d) (0 = off). 8 gives weights 0.34 / 0.02 / 3e-4 at
      30 / 60 / 90 degrees from the render's direction (before sharpening).
    sharpness: lambda >= 1 multiplies log pi_i(y), the whole conditioning
      (caption factors and camera factor), i.e. pi_i(y)^lambda. At small t
      the image term ||x_t - a m_i||^2 / (2 v tau) spreads the bank over
      hundreds of nats while the conditioning spans tens, so without
      sharpening each view is pulled toward whichever bank image is nearest
      in pixels, whatever its camera. This lambda applies to human and head
      captions (default 1, so the human stays on its anchor). Figures behind
      both defaults: docs/evaluation.md, "Measurement notes moved from the
      code".
    object_sharpness: lambda for object and interaction captions: the
      effective lambda of a caption is sharpness + (object_sharpness -
      sharpness) (q_object + q_interaction), q its render-kind distribution
      (the empty caption: halfway). Human and head renders keep
      ``sharpness``, so the human is not pulled toward bank poses other than
      the anchor, while the object's views follow their cameras. (The
      interaction render's gradient does not reach the human field, Eq. 6.)
      Default 20.
    beta_schedule / beta_start / beta_end / num_train_timesteps: the DDPM
      schedule whose abar_t the denoiser (and SDS) use.
  """
  smoothing: float = 0.05
  temperature: float = 100.0
  mix: float = 0.01
  view_mix: float = 0.5
  camera_kappa: float = 8.0
  sharpness: float = 1.0
  object_sharpness: float = 20.0
  beta_schedule: str = "linear"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_train_timesteps: int = 1000

  def __post_init__(self):
    if (self.smoothing < 0 or self.temperature < 1.0 or not 0.0 <= self.mix <= 1.0
        or not 0.0 <= self.view_mix <= 1.0 or self.camera_kappa < 0
        or self.sharpness < 1.0 or self.object_sharpness < 1.0):
      raise ValueError(
          f"PriorSpec(smoothing={self.smoothing}, temperature={self.temperature}, "
          f"mix={self.mix}, view_mix={self.view_mix}, camera_kappa={self.camera_kappa}, "
          f"sharpness={self.sharpness}, object_sharpness={self.object_sharpness}): need "
          "smoothing >= 0, temperature >= 1, 0 <= mix, view_mix <= 1, camera_kappa >= 0, "
          "sharpness, object_sharpness >= 1.")


# ----------------------------------------------------------------------------
# Captions -> conditioning.
# ----------------------------------------------------------------------------


def parse_caption(caption: str) -> dict[str, Optional[str]]:
  """Reads the factors a caption names (None = not mentioned).

  kind: "head" if it contains "head of"; "interaction" if it names a
  person and an object; "object" if only an object; "human" if only a person
  (or clothing); None for the empty caption. view: "front"/"side"/"back"/
  "overhead" from "<view> view". Colours follow ``colors.parse_colors``; an
  object caption (kind "object") that names no colour gets the object's
  ``objects.TYPICAL_COLORS`` entry (interaction captions keep the object
  colour open: they must not contradict a coloured object prompt).

  Args:
    caption: the full prompt as the trainer builds it (prefix, prompt, view
      suffix, quality suffix in any order).

  Returns:
    dict with keys kind, view, human_color, object, object_color.
  """
  text = caption.lower()
  toks = colors.tokenize(text)
  obj = objects.object_from_text(text)
  has_human = any(t in colors.HUMAN_WORDS or t in colors.CLOTHING_WORDS
                  or t.rstrip("s") in colors.HUMAN_WORDS for t in toks)
  if "head of" in text:
    kind = "head"
  elif obj and has_human:
    kind = "interaction"
  elif obj:
    kind = "object"
  else:
    kind = "human" if has_human else None
  view = None
  for v in VIEWS:
    if f"{v} view" in text:
      view = v
  cols = colors.parse_colors(text, tuple(objects.OBJECT_WORDS))
  if kind in ("human", "head"):
    human_color = cols["human"] or cols["object"]
    object_color = None
  elif kind == "object":
    human_color, object_color = None, (cols["object"] or cols["human"]
                                       or objects.TYPICAL_COLORS.get(obj))
  else:
    human_color, object_color = cols["human"], cols["object"]
  return dict(kind=kind, view=view, human_color=human_color,
              object=obj if kind in ("object", "interaction") else None,
              object_color=object_color)


def embed_factors(factors: dict[str, Optional[str]]) -> np.ndarray:
  """[1, EMBED_DIM] float32: one-hot per named factor, uniform otherwise."""
  parts = []
  for name, values in FACTORS:
    v = factors.get(name)
    if v is None:
      parts.append(np.full(len(values), 1.0 / len(values), np.float32))
    else:
      if v not in values:
        raise ValueError(f"Factor {name} = {v!r} is not one of {list(values)}.")
      parts.append(np.eye(len(values), dtype=np.float32)[values.index(v)])
  return np.concatenate(parts)[None]


def embed_caption(caption: str) -> np.ndarray:
  """A caption's conditioning embedding [1, EMBED_DIM] (the trainer's ``emb``).

  The empty caption "" gives the unconditional embedding (all uniform).
  """
  return embed_factors(parse_caption(caption))


def embed_captions(captions: Sequence[str]) -> np.ndarray:
  """[N, 1, EMBED_DIM] embeddings of several captions."""
  return np.stack([embed_caption(c) for c in captions])


def attributes_of(factors: dict[str, Optional[str]]) -> np.ndarray:
  """[len(FACTORS)] int32 attribute indices of a bank image (-1 = n/a)."""
  out = []
  for name, values in FACTORS:
    v = factors.get(name)
    out.append(NOT_APPLICABLE if v is None else values.index(v))
  return np.asarray(out, np.int32)


def log_prior_weights(attrs: jax.Array, emb: jax.Array, mix: float | jax.Array,
                      view_mix: float | jax.Array | None = None,
                      dirs: jax.Array | None = None,
                      camera_kappa: float | jax.Array = 0.0) -> jax.Array:
  """log pi_i(y): the caption's factorised weights over the bank images.

  log pi_i = sum_f log((1 - mix_f) q_f[attr_if] + mix_f / n_f)
             + kappa d_i . d,
  where q_f is the caption's distribution over factor f and mix_f = ``mix``
  except for the view factor (``view_mix``, softer: views are coarse); an
  attribute -1 (not applicable) scores the factor's mean 1 / n_f. The last
  term is the camera factor (module docstring): d = emb[..., EMBED_DIM:
  EMBED_DIM + 3] when the embedding carries it (else, or for d = 0, no
  term), d_i = ``dirs[i]``. Unnormalised.

  Args:
    attrs: [N, F] int attribute indices of the bank images.
    emb: [..., EMBED_DIM] caption embeddings, or [..., EMBED_DIM + 3] with
      the camera direction appended.
    mix: floor mixing weight; view_mix: that of the view factor (None = mix).
    dirs: [N, 3] unit camera directions of the bank images (None: no camera
      factor).
    camera_kappa: kappa.

  Returns:
    [..., N] unnormalised log weights.
  """
  total, start = 0.0, 0
  for f, (name, _) in enumerate(FACTORS):
    n = FACTOR_SIZES[f]
    m = view_mix if (name == "view" and view_mix is not None) else mix
    q = emb[..., start:start + n]                               # [..., n]
    a = attrs[:, f]
    qa = jnp.take(q, jnp.maximum(a, 0), axis=-1)                # [..., N]
    qa = jnp.where(a >= 0, qa, 1.0 / n)
    total = total + jnp.log((1.0 - m) * qa + m / n)
    start += n
  if dirs is not None and emb.shape[-1] >= EMBED_DIM + CAMERA_DIMS:
    d = emb[..., EMBED_DIM:EMBED_DIM + CAMERA_DIMS]
    total = total + camera_kappa * (d @ jnp.asarray(dirs, emb.dtype).T)
  return total


# ----------------------------------------------------------------------------
# The denoiser.
# ----------------------------------------------------------------------------


def posterior_mean(x_t: jax.Array, a: jax.Array, b: jax.Array, bank: jax.Array,
                   log_prior: jax.Array, smoothing: float | jax.Array,
                   temperature: float | jax.Array = 1.0) -> jax.Array:
  """E[x0 | x_t] under the smoothed empirical distribution (module docstring).

  With v = a^2 s^2 + b^2: r_i = softmax_i(log pi_i - ||x_t - a m_i||^2 / (2 v tau))
  and E[x0 | x_t] = sum_i r_i (m_i + (a s^2 / v)(x_t - a m_i)). For s = 0,
  tau = 1 this is the exact posterior mean of the empirical distribution.

  Args:
    x_t: [B, D] flattened noisy images.
    a, b: [B] sqrt(abar_t), sqrt(1 - abar_t).
    bank: [N, D] flattened bank images m_i.
    log_prior: [B, N] log pi_i (unnormalised).
    smoothing: s; temperature: tau.

  Returns:
    [B, D] posterior means.
  """
  var = jnp.square(a * smoothing) + jnp.square(b)                       # [B]
  d2 = (jnp.sum(jnp.square(x_t), -1, keepdims=True)
        - 2.0 * a[:, None] * (x_t @ bank.T)
        + jnp.square(a)[:, None] * jnp.sum(jnp.square(bank), -1)[None])   # [B, N]
  logits = log_prior - d2 / (2.0 * var[:, None] * temperature)
  r = jax.nn.softmax(logits, axis=-1)
  mbar = r @ bank                                                        # [B, D]
  k = (a * jnp.square(smoothing) / var)[:, None]
  return mbar + k * (x_t - a[:, None] * mbar)


def caption_sharpness(emb: jax.Array, sharpness: float | jax.Array,
                      object_sharpness: float | jax.Array | None = None) -> jax.Array:
  """lambda(y) per caption (``PriorSpec.object_sharpness``): [B, E] -> [B].

  sharpness + (object_sharpness - sharpness) (q_object + q_interaction), with
  q the caption's render-kind factor (the first ``len(KINDS)`` numbers).
  """
  if object_sharpness is None:
    return jnp.broadcast_to(jnp.asarray(sharpness, jnp.float32), emb.shape[:1])
  q = emb[:, KINDS.index("object")] + emb[:, KINDS.index("interaction")]
  return sharpness + (object_sharpness - sharpness) * q


def denoise_eps(x_t: jax.Array, t: jax.Array, alphas_cumprod: jax.Array,
                bank: jax.Array, attrs: jax.Array, emb: jax.Array, *,
                smoothing: float | jax.Array, temperature: float | jax.Array,
                mix: float | jax.Array, view_mix: float | jax.Array | None = None,
                dirs: jax.Array | None = None,
                camera_kappa: float | jax.Array = 0.0,
                sharpness: float | jax.Array = 1.0,
                object_sharpness: float | jax.Array | None = None) -> jax.Array:
  """E[eps | x_t, y] = (x_t - a E[x0 | x_t, y]) / b, with pi_i(y)^lambda(y).

  Args:
    x_t: [B, R, R, 3] noisy images ([-1, 1] scale).
    t: [B] int timesteps.
    alphas_cumprod: [T].
    bank: [N, R, R, 3] bank images in [-1, 1].
    attrs: [N, F] bank attributes.
    emb: [B, 1, E] (or [B, E]) caption embeddings, E = EMBED_DIM or
      EMBED_DIM + CAMERA_DIMS (camera direction appended).
    dirs, camera_kappa: the camera factor (``log_prior_weights``).
    sharpness: lambda, multiplies the log prior weights (``PriorSpec``).
    object_sharpness: lambda of object / interaction captions (None = sharpness).

  Returns:
    [B, R, R, 3] noise prediction.
  """
  bsz = x_t.shape[0]
  abar = jnp.asarray(alphas_cumprod, jnp.float32)[t]
  a, b = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  flat = x_t.reshape(bsz, -1).astype(jnp.float32)
  bank_flat = bank.reshape(bank.shape[0], -1).astype(jnp.float32)
  e = emb.reshape(bsz, -1).astype(jnp.float32)
  lam = caption_sharpness(e, sharpness, object_sharpness)
  lp = lam[:, None] * log_prior_weights(attrs, e, mix, view_mix, dirs, camera_kappa)
  x0 = posterior_mean(flat, a, b, bank_flat, lp, smoothing, temperature)
  return ((flat - a[:, None] * x0) / b[:, None]).reshape(x_t.shape)


# ----------------------------------------------------------------------------
# Guidance backend protocol (guidance/core.py BACKENDS["builtin"]).
# ----------------------------------------------------------------------------


def encode(spec: Any, params: Any, images: jax.Array, key: jax.Array) -> jax.Array:
  """Renders [B, H, W, 3] in [0, 1] -> [B, R, R, 3] in [-1, 1] at the bank size.

  Antialiased (area-like) resize, differentiable. ``spec``/``key`` unused.
  """
  del spec, key
  r = params["bank"].shape[1]
  b, h, w, c = images.shape
  x = images.astype(jnp.float32)
  if (h, w) != (r, r):
    x = jax.image.resize(x, (b, r, r, c), method="linear", antialias=True)
  return x * 2.0 - 1.0


def predict_eps(spec: Any, params: Any, x_t: jax.Array, t: jax.Array,
                emb: jax.Array) -> jax.Array:
  """Backend ``predict_eps``: [N, R, R, 3], [N], [N, 1, E] -> [N, R, R, 3].

  ``params``: dict(alphas_cumprod [T], bank [N, R, R, 3] in [-1, 1], attrs
  [N, F] int32, dirs [N, 3], smoothing [], temperature [], mix [],
  view_mix [], camera_kappa [], sharpness [], object_sharpness []) -- see
  ``make_params``. E = EMBED_DIM, or
  EMBED_DIM + CAMERA_DIMS when the trainer appends the camera direction
  (``GuidanceSpec.camera_conditioning``).
  """
  del spec
  return denoise_eps(x_t, t, params["alphas_cumprod"], params["bank"], params["attrs"],
                     emb, smoothing=params["smoothing"], temperature=params["temperature"],
                     mix=params["mix"], view_mix=params["view_mix"],
                     dirs=params["dirs"], camera_kappa=params["camera_kappa"],
                     sharpness=params["sharpness"],
                     object_sharpness=params.get("object_sharpness"))


def alphas_cumprod(spec: PriorSpec) -> np.ndarray:
  """[T] float32 abar_t of the prior's DDPM schedule."""
  return schedule.alphas_cumprod_from_config(dict(
      beta_schedule=spec.beta_schedule, beta_start=spec.beta_start,
      beta_end=spec.beta_end, num_train_timesteps=spec.num_train_timesteps))


def make_params(images_uint8: np.ndarray, attrs: np.ndarray,
                spec: PriorSpec = PriorSpec(), dirs: np.ndarray | None = None) -> dict:
  """The prior's params pytree from a bank.

  Args:
    images_uint8: [N, R, R, 3] uint8 bank images.
    attrs: [N, F] int attributes (``attributes_of``).
    spec: PriorSpec.
    dirs: [N, 3] unit camera directions of the images (None: zeros, i.e. the
      camera factor never applies).

  Returns:
    dict(alphas_cumprod [T], bank [N, R, R, 3] float32 in [-1, 1], attrs
    [N, F] int32, dirs [N, 3] float32, smoothing, temperature, mix,
    view_mix, camera_kappa, sharpness, object_sharpness float32 scalars).
  """
  images_uint8 = np.asarray(images_uint8)
  if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
    raise ValueError(f"bank images have shape {images_uint8.shape} / dtype "
                     f"{images_uint8.dtype}: expected uint8 [N, R, R, 3].")
  attrs = np.asarray(attrs, np.int32)
  if attrs.shape != (images_uint8.shape[0], len(FACTORS)):
    raise ValueError(f"attrs has shape {attrs.shape}: expected "
                     f"[{images_uint8.shape[0]}, {len(FACTORS)}].")
  n = images_uint8.shape[0]
  dirs = np.zeros((n, CAMERA_DIMS), np.float32) if dirs is None else np.asarray(dirs, np.float32)
  if dirs.shape != (n, CAMERA_DIMS):
    raise ValueError(f"dirs has shape {dirs.shape}: expected [{n}, {CAMERA_DIMS}] "
                     "(the unit camera direction of each bank image).")
  return dict(
      alphas_cumprod=jnp.asarray(alphas_cumprod(spec)),
      bank=jnp.asarray(images_uint8.astype(np.float32) / 127.5 - 1.0),
      attrs=jnp.asarray(attrs),
      dirs=jnp.asarray(dirs),
      smoothing=jnp.float32(spec.smoothing),
      temperature=jnp.float32(spec.temperature),
      mix=jnp.float32(spec.mix),
      view_mix=jnp.float32(spec.view_mix),
      camera_kappa=jnp.float32(spec.camera_kappa),
      sharpness=jnp.float32(spec.sharpness),
      object_sharpness=jnp.float32(spec.object_sharpness))
