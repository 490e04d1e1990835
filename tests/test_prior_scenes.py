"""Tests for interfusion_jax/prior/scenes.py: clothing, captions, renders."""
import dataclasses
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from interfusion_jax.pose import library
from interfusion_jax.prior import mannequin, placement, scenes
from interfusion_jax.guidance import captions as colors
from interfusion_jax.stage2 import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config():
  spec = importlib.util.spec_from_file_location("hoi", ROOT / "configs" / "hoi.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _body(label):
  poses, orients, labels, _ = library.library_arrays()
  i = labels.index(label)
  return mannequin.posed_mannequin(poses[i], orients[i])


@pytest.fixture(scope="module")
def chair_scene():
  run = config_lib.parse(_config())
  spec = scenes.SceneSpec.from_specs(config_lib.camera_spec(run), config_lib.prompt_spec(run),
                                     resolution=32)
  body = _body("sitting on a chair")
  q = placement.body_query(body.vertices, body.faces, 48)
  return spec, scenes.make_scene(spec, body, "chair", "red", "blue", query=q)


def test_clothing_labels_by_body_part():
  body = _body("standing")
  lab = scenes.clothing_labels(body.vertices, body.joints)
  j = body.joints
  nearest = lambda p: lab[np.argmin(np.linalg.norm(body.vertices - p, axis=1))]
  assert nearest(j[15] + [0, 0, 0.15]) == scenes.SKIN      # top of the head
  assert nearest(j[6]) == scenes.SHIRT                     # chest
  assert nearest(0.5 * (j[4] + j[7])) == scenes.PANTS      # shin
  assert nearest(j[10]) == scenes.SHOES                    # foot
  assert nearest(j[20]) == scenes.SKIN                     # wrist / hand
  cols = scenes.body_colors(lab, "green")
  assert colors.hue_distance(colors.mean_hue(cols[lab == scenes.SHIRT]),
                             colors.color_hue("green")) < 1


def test_captions_match_the_trainer_templates(chair_scene):
  spec, scene = chair_scene
  assert scenes.caption(scene, "interaction", "front", spec) == (
      "a photo of a man in a red shirt sitting on a chair, 8K, HD, front view")
  assert scenes.caption(scene, "head", "side", spec) == (
      "a photo of head of a man in a red shirt, 8K, HD, side view")
  assert scenes.caption(scene, "object", "back", spec) == "a photo of a blue chair, 8K, HD, back view"
  assert scenes.caption(scene, "human", "overhead", spec) == (
      "a photo of a man in a red shirt, 8K, HD, overhead view")
  plain = dataclasses.replace(spec, prompts=dataclasses.replace(
      spec.prompts, view_dependent=False, prefix="", suffix=""))
  assert scenes.caption(scene, "object", "back", plain) == "a blue chair"


def test_view_names_follow_the_threestudio_rule():
  spec = scenes.SceneSpec()
  cams = scenes.sample_cameras(jax.random.PRNGKey(3), 64, spec)
  el, az = np.rad2deg(cams.elevation), np.rad2deg(cams.azimuth)
  az = (az + 180.0) % 360.0 - 180.0
  want = np.where(el > 60, "overhead", np.where(np.abs(az) < 45, "front",
                                                np.where(np.abs(az) > 135, "back", "side")))
  assert scenes.view_names(cams, spec) == list(want)
  assert set(want) >= {"front", "side", "back"}


def test_renders_show_the_right_things_in_the_right_colours(chair_scene):
  spec, scene = chair_scene
  cams = scenes.sample_cameras(jax.random.PRNGKey(0), 4, spec)
  white = np.ones(3)
  out = {k: scenes.render(scene, k, cams, spec) for k in scenes.KINDS}
  for k, imgs in out.items():
    assert imgs.shape == (4, 32, 32, 3) and imgs.min() >= 0 and imgs.max() <= 1
  fg = lambda im: np.abs(im - white).sum(-1) > 0.05
  blue, red = colors.color_hue("blue"), colors.color_hue("red")
  for im in out["object"]:
    assert fg(im).any()
    assert colors.hue_distance(colors.mean_hue(im[fg(im)]), blue) < 30
    # The camera aims at the object's centre: its pixels surround the centre.
    ys, xs = np.nonzero(fg(im))
    assert abs(ys.mean() - 15.5) < 8 and abs(xs.mean() - 15.5) < 8
  for im in out["human"]:
    assert colors.hue_distance(colors.mean_hue(im[fg(im)], 0.4), red) < 30
  inter = out["interaction"].reshape(-1, 3)
  hues = colors.rgb_to_hsv(inter)
  sat = hues[:, 1] > 0.4
  assert (np.array([colors.hue_distance(h, blue) for h in hues[sat, 0]]) < 30).any()
  assert (np.array([colors.hue_distance(h, red) for h in hues[sat, 0]]) < 30).any()
  # Head close-ups: the head (at the look-at point) covers the centre pixel.
  assert all(fg(im)[14:18, 14:18].all() for im in out["head"])
  assert fg(out["head"]).mean() > fg(out["human"]).mean()
