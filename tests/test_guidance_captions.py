"""Tests for interfusion_jax/prior/colors.py."""
import colorsys

import numpy as np
import pytest

from interfusion_jax.prior import objects
from interfusion_jax.guidance import captions as colors

# Conventional hue of each chromatic word (degrees), +- 25.
EXPECTED_HUE = {"red": 0, "orange": 30, "yellow": 55, "green": 125, "cyan": 185,
                "blue": 228, "purple": 275, "pink": 330}


@pytest.mark.parametrize("name", colors.CHROMATIC)
def test_chromatic_colours_have_their_conventional_hue(name):
  rgb = colors.color_rgb(name)
  h, s, v = colorsys.rgb_to_hsv(*rgb)
  assert colors.hue_distance(h * 360, EXPECTED_HUE[name]) < 25
  assert s > 0.45 and v > 0.5


def test_rgb_to_hsv_matches_colorsys():
  rng = np.random.default_rng(0)
  rgb = rng.random((200, 3))
  ours = colors.rgb_to_hsv(rgb)
  ref = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
  np.testing.assert_allclose(ours[:, 0], ref[:, 0] * 360, atol=1e-6)
  np.testing.assert_allclose(ours[:, 1:], ref[:, 1:], atol=1e-9)


def test_mean_hue_is_circular_and_ignores_greys():
  red_lo = np.array(colorsys.hsv_to_rgb(350 / 360, 0.9, 0.9))
  red_hi = np.array(colorsys.hsv_to_rgb(10 / 360, 0.9, 0.9))
  grey = np.array([0.5, 0.5, 0.5])
  img = np.stack([red_lo, red_hi, grey, grey, grey])
  assert colors.hue_distance(colors.mean_hue(img), 0.0) < 1e-6
  assert np.isnan(colors.mean_hue(np.stack([grey, grey])))
  assert colors.hue_distance(350, 10) == pytest.approx(20)


@pytest.mark.parametrize("text, human, obj", [
    ("a man in a red shirt riding a blue bike", "red", "blue"),
    ("a blue chair", None, "blue"),
    ("a woman wearing a green dress sitting on a yellow sofa", "green", "yellow"),
    ("a man in red holding a ball", "red", None),
    ("a grey couch", None, "gray"),
    ("a man wearing a WORLD lettered T-shirt", None, None),
    ("a purple T-shirt man playing a guitar", "purple", None),
])
def test_parse_colors_assigns_roles(text, human, obj):
  out = colors.parse_colors(text, tuple(objects.OBJECT_WORDS))
  assert out == {"human": human, "object": obj}


def test_unknown_colour_is_a_clear_error():
  with pytest.raises(colors.ColorError, match="Unknown colour"):
    colors.color_rgb("octarine")
