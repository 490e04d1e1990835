"""CLIP score (Flax, evaluation.clip_score) vs transformers' PyTorch CLIP, and R-precision by hand."""
import pathlib
import sys

import numpy as np
import pytest

from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.evaluation import clip_score

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import clip_reference  # noqa: E402  pylint: disable=g-import-not-at-top

PROMPT = "a man riding a bike"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return clip_reference.make_clip_dir(tmp_path_factory.mktemp("clip"), image_size=32)


def _renders(n, size, seed=0):
  """Smooth render-like images: a coloured blob on white, [n, size, size, 3] in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] / size
  out = []
  for _ in range(n):
    c = rng.uniform(0.2, 0.8, 2)
    mask = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / 0.03)[..., None]
    out.append(1.0 - mask * (1.0 - rng.uniform(0, 1, 3)) + 0.02 * rng.normal(size=(size, size, 3)))
  return np.clip(np.stack(out), 0, 1).astype(np.float32)


@pytest.mark.parametrize("size", [32, 48])
def test_clip_score_matches_pytorch_transformers(clip_dir, size):
  """At the model's input size (no resampling) and at 48 px (bilinear antialiased resize)."""
  images = _renders(5, size)
  ours = clip_score.clip_score(clip_lib.load_clip(clip_dir), images, PROMPT)
  ref = clip_reference.scores(clip_reference.load(clip_dir), images, [PROMPT])[:, 0]
  np.testing.assert_allclose(ours["per_view"], ref, atol=1e-5)
  assert ours["score"] == pytest.approx(ref.mean(), abs=1e-5)
  assert np.ptp(ref) > 1e-3          # the views really differ


def test_prompt_score_matrix_matches_pytorch(clip_dir):
  clip = clip_lib.load_clip(clip_dir)
  prompts = ["a man riding a bike", "a woman sitting on a chair", "a kid holding a ball"]
  scenes = [_renders(3, 32, seed=s) for s in range(2)]
  feats = [clip_lib.image_features(clip, im) for im in scenes]
  ours = clip_score.prompt_score_matrix(clip, feats, prompts)
  ref_model = clip_reference.load(clip_dir)
  ref = np.stack([clip_reference.scores(ref_model, im, prompts).mean(0) for im in scenes])
  assert ours.shape == (2, 3)
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_r_precision_hand_computed():
  # scene 0: own prompt 0 scores 0.30 > 0.20, 0.10 -> hit
  # scene 1: own prompt 1 scores 0.24 < 0.31 (prompt 2) -> miss
  # scene 2: own prompt 2 ties prompt 0 at 0.20 -> miss (ties are misses)
  # scene 3: shares prompt 0 with scene 0; 0.33 > 0.32, 0.05 -> hit
  scores = np.array([[0.30, 0.20, 0.10],
                     [0.25, 0.24, 0.31],
                     [0.20, 0.15, 0.20],
                     [0.33, 0.32, 0.05]])
  assert clip_score.r_precision(scores, [0, 1, 2, 0]) == pytest.approx(2 / 4)
  assert clip_score.r_precision(scores[:1], [0]) == 1.0
  assert clip_score.r_precision(scores[1:2], [2]) == 1.0


def test_r_precision_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2 distinct prompts"):
    clip_score.r_precision(np.ones((2, 1)), [0, 0])
  with pytest.raises(ValueError, match="out of range"):
    clip_score.r_precision(np.ones((1, 2)), [2])
  with pytest.raises(ValueError, match="S = len"):
    clip_score.r_precision(np.ones((2, 2)), [0])


def test_scene_prompts_follow_the_guidance_rule():
  import ml_collections
  cfg = ml_collections.ConfigDict({"prompt": {"human": " a man ", "object": "a bike",
                                              "interaction": "riding a bike"}})
  assert clip_score.scene_prompts(cfg.prompt) == {"interaction": "a man riding a bike",
                                                  "human": "a man", "object": "a bike"}
  with pytest.raises(ValueError, match="at least 1 view"):
    clip_score.ClipScoreSpec(views=0)
