"""Colour vocabulary of the built-in prior: words -> RGB, prompt parsing, hue.

The procedural scene generator paints clothing and objects with these colours
and the caption conditioning (``denoiser.py``) reads them back from prompts,
so "a man in a red shirt" and "a blue chair" both map to palette entries.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

# Albedo (linear-ish sRGB in [0, 1]) of every colour word of the vocabulary.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.50, 0.08),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.12, 0.70, 0.18),
    "cyan": (0.10, 0.75, 0.80),
    "blue": (0.12, 0.25, 0.90),
    "purple": (0.55, 0.15, 0.80),
    "pink": (0.95, 0.45, 0.70),
    "brown": (0.50, 0.30, 0.12),
    "black": (0.08, 0.08, 0.08),
    "white": (0.95, 0.95, 0.95),
    "gray": (0.50, 0.50, 0.50),
}
# Synonyms -> vocabulary word.
SYNONYMS: dict[str, str] = {
    "grey": "gray", "silver": "gray", "golden": "yellow", "gold": "yellow",
    "navy": "blue", "violet": "purple", "magenta": "pink", "crimson": "red",
    "scarlet": "red", "teal": "cyan", "turquoise": "cyan", "lime": "green",
    "beige": "brown", "tan": "brown", "wooden": "brown",
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
# Colours with a well-defined hue (used by hue checks and factorial banks).
CHROMATIC: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan",
                              "blue", "purple", "pink")

HUMAN_WORDS = ("man", "woman", "person", "boy", "girl", "child", "kid", "guy",
               "lady", "people", "human", "player", "rider", "someone",
               "athlete", "astronaut", "soldier", "chef", "knight", "doctor", "policeman",
               "firefighter", "superhero", "ninja", "cowboy", "clown", "pirate", "wizard",
               "king", "queen", "student", "teacher", "worker", "farmer", "skater",
               "cyclist", "musician", "guitarist", "businessman", "businesswoman")
CLOTHING_WORDS = ("shirt", "t-shirt", "tshirt", "tee", "jacket", "coat",
                  "hoodie", "sweater", "dress", "suit", "pants", "trousers",
                  "jeans", "shorts", "skirt", "clothes", "outfit", "uniform",
                  "top", "vest", "hat", "cap", "shoes", "costume", "robe")


# Words that end a colour's noun phrase ("a man in red holding a ball").
_BREAKS = frozenset(("with", "on", "in", "at", "and", "while", "near", "by", "of",
                     "under", "behind", "beside", "next", "to", "from", "into"))


class ColorError(ValueError):
  """An unknown colour name was requested."""


def tokenize(text: str) -> list[str]:
  """Lower-case word tokens of a prompt ("T-shirt" stays one token)."""
  return re.findall(r"[a-z][a-z\-']*", text.lower())


def canonical_color(word: str) -> Optional[str]:
  """Vocabulary colour of a word ("grey" -> "gray"), or None if not a colour."""
  w = word.lower()
  if w in COLORS:
    return w
  return SYNONYMS.get(w)


def color_rgb(name: str) -> np.ndarray:
  """[3] float32 albedo of a colour word (synonyms allowed).

  Raises:
    ColorError: the word is not in the vocabulary.
  """
  c = canonical_color(name)
  if c is None:
    raise ColorError(f"Unknown colour {name!r}; use one of {list(COLORS)} "
                     f"(or a synonym: {sorted(SYNONYMS)}).")
  return np.asarray(COLORS[c], np.float32)


def parse_colors(text: str, object_words: Sequence[str] = ()) -> dict:
  """Assigns the colour words of a prompt to the human's clothing or the object.

  Rule: a colour word belongs to the first noun after it (within 4 tokens,
  not crossing a preposition or an -ing verb) that is an object word
  (-> object) or a clothing/human word (-> human); a
  colour right after a clothing/human word with no noun after it ("a man in
  red") goes to the human; otherwise to the object if the prompt names an
  object, else to the human.

  Args:
    text: one prompt.
    object_words: words naming objects (see ``objects.OBJECT_WORDS``).

  Returns:
    dict(human=<colour or None>, object=<colour or None>); the first colour
    found for each role wins.
  """
  toks = tokenize(text)
  objs = set(w.lower() for w in object_words)
  is_obj = lambda w: w in objs or w.rstrip("s") in objs
  is_hum = lambda w: w in HUMAN_WORDS or w in CLOTHING_WORDS
  out = {"human": None, "object": None}
  for i, w in enumerate(toks):
    c = canonical_color(w)
    if c is None:
      continue
    role = None
    for nxt in toks[i + 1:i + 5]:
      if canonical_color(nxt) is not None:
        continue
      if nxt in _BREAKS or nxt.endswith("ing"):
        break
      if is_obj(nxt):
        role = "object"
        break
      if is_hum(nxt):
        role = "human"
        break
    if role is None:
      before = toks[max(0, i - 3):i]
      if any(is_hum(b) for b in before):
        role = "human"
      elif any(is_obj(t) for t in toks):
        role = "object"
      else:
        role = "human"
    if out[role] is None:
      out[role] = c
  return out


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
  """HSV of RGB colours; hue in degrees [0, 360).

  Args:
    rgb: [..., 3] in [0, 1].

  Returns:
    [..., 3] (hue_deg, saturation, value).
  """
  rgb = np.asarray(rgb, np.float64)
  mx, mn = rgb.max(-1), rgb.min(-1)
  d = mx - mn
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  safe = np.where(d > 0, d, 1.0)
  h = np.where(mx == r, ((g - b) / safe) % 6.0,
               np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h = np.where(d > 0, h * 60.0, 0.0) % 360.0
  s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
  return np.stack([h, s, mx], -1)


def mean_hue(rgb: np.ndarray, min_saturation: float = 0.2) -> float:
  """Circular mean hue (degrees) of the saturated pixels of an image.

  Args:
    rgb: [..., 3] colours in [0, 1].
    min_saturation: pixels below this saturation (greys) are ignored.

  Returns:
    hue in [0, 360), or NaN if no pixel is saturated enough.
  """
  hsv = rgb_to_hsv(np.asarray(rgb).reshape(-1, 3))
  sel = hsv[:, 1] >= min_saturation
  if not np.any(sel):
    return float("nan")
  a = np.deg2rad(hsv[sel, 0])
  w = hsv[sel, 1]
  return float(np.rad2deg(np.arctan2((w * np.sin(a)).sum(), (w * np.cos(a)).sum())) % 360.0)


def hue_distance(a_deg: float, b_deg: float) -> float:
  """Absolute circular difference of two hues in degrees, in [0, 180]."""
  d = abs(a_deg - b_deg) % 360.0
  return min(d, 360.0 - d)


def color_hue(name: str) -> float:
  """Hue (degrees) of a vocabulary colour."""
  return float(rgb_to_hsv(color_rgb(name))[0])


# ---------------------------------------------------------------------------
# Object vocabulary: the built-in prior's object types and their prompt words.

OBJECT_NAMES: tuple[str, ...] = (
    "chair", "bench", "sofa", "bicycle", "motorcycle", "horse", "box", "ball",
    "guitar", "laptop", "bed", "skateboard", "umbrella", "table")

# The colour an object prompt that names no colour stands for
# (guidance.builtin.parse_caption). A text-to-image model draws "a bike" in
# some typical colour; the built-in prior's bank has every object in every
# colour, so without this a colourless prompt averages all colours and the
# object field drifts to whichever is nearest. White is avoided: on the white
# background an object would vanish.
TYPICAL_COLORS: dict[str, str] = {
    "chair": "brown", "bench": "brown", "sofa": "gray", "bicycle": "red",
    "motorcycle": "black", "horse": "brown", "box": "brown", "ball": "orange",
    "guitar": "brown", "laptop": "gray", "bed": "blue", "skateboard": "brown",
    "umbrella": "black", "table": "brown",
}

# Words (and synonyms) in prompts -> generator name.
OBJECT_WORDS: dict[str, str] = {
    "chair": "chair", "armchair": "chair", "stool": "chair", "seat": "chair",
    "bench": "bench", "sofa": "sofa", "couch": "sofa",
    "bike": "bicycle", "bicycle": "bicycle", "cycle": "bicycle",
    "motorcycle": "motorcycle", "motorbike": "motorcycle", "scooter": "motorcycle",
    "moped": "motorcycle", "horse": "horse", "pony": "horse",
    "box": "box", "crate": "box", "package": "box", "parcel": "box", "cardboard": "box",
    "ball": "ball", "basketball": "ball", "football": "ball", "soccer": "ball",
    "volleyball": "ball", "guitar": "guitar", "laptop": "laptop",
    "computer": "laptop", "notebook": "laptop", "bed": "bed",
    "skateboard": "skateboard", "longboard": "skateboard", "umbrella": "umbrella",
    "parasol": "umbrella", "table": "table", "desk": "table",
}


def object_from_text(text: str) -> Optional[str]:
  """Generator name of the first object word in a prompt, or None.

  "riding a bike" -> "bicycle"; plurals are accepted ("balls").
  """
  for w in tokenize(text):
    for cand in (w, w[:-1] if w.endswith("s") else w, w[:-2] if w.endswith("es") else w):
      if cand in OBJECT_WORDS:
        return OBJECT_WORDS[cand]
  return None
