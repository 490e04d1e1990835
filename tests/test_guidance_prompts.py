"""Prompt processing, threestudio view rule, embedding table, tokenizer limit."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.guidance import prompts
import tiny_models


def _ref_view(elev, azim):
  """threestudio: later conditions override earlier (side, front, back, overhead)."""
  a = (azim + 180.0) % 360.0 - 180.0
  idx = 1
  if -45.0 < a < 45.0:
    idx = 0
  if a > 135.0 or a < -135.0:
    idx = 2
  if elev > 60.0:
    idx = 3
  return idx


def test_view_index_matches_threestudio_rule():
  elev = np.array([-10, 0, 30, 59.9, 60.0, 60.1, 89.0] * 9, np.float32)
  azim = np.repeat(np.array([-180, -136, -135, -44.9, 0, 45, 90, 170, 300], np.float32), 7)
  got = jax.jit(prompts.view_index)(elev, azim)
  want = [_ref_view(float(e), float(a)) for e, a in zip(elev, azim)]
  np.testing.assert_array_equal(got, want)


def test_scene_prompts_and_decoration():
  spec = prompts.PromptSpec.from_config(hoi.get_config())
  base = prompts.scene_prompts(spec)
  assert base["head"] == "the head of a man wearing a WORLD lettered T-shirt"
  assert base["interaction"] == "a man wearing a WORLD lettered T-shirt riding a bike"
  v = prompts.view_prompts(base["object"], spec)
  assert v == [f"a photo of a bike, {d} view, 8K, HD" for d in prompts.VIEWS]
  plain = prompts.PromptSpec(human="x", object="y", interaction="z", prefix="", suffix="",
                             view_dependent=False)
  assert prompts.view_prompts("a bike", plain) == ["a bike"] * 4


@pytest.mark.parametrize("field", ["human", "object", "interaction"])
def test_empty_prompt_rejected(field):
  kw = dict(human="a man", object="a bike", interaction="riding a bike")
  kw[field] = "  "
  with pytest.raises(prompts.PromptError, match=field):
    prompts.scene_prompts(prompts.PromptSpec(**kw))


def test_embedding_table_and_select_inside_jit():
  spec = prompts.PromptSpec(human="a man", object="a bike", interaction="riding a bike")
  seen = []

  def fake_encode(texts):
    seen.extend(texts)
    return jnp.asarray([[[float(len(t)), float(i)]] for i, t in enumerate(texts)])

  table = prompts.embedding_table(fake_encode, spec)
  assert set(table) == {"human", "head", "object", "interaction", "uncond"}
  assert table["object"].shape == (4, 1, 2) and table["uncond"].shape == (1, 2)
  assert seen[-1] == "" and len(seen) == 17  # 4 prompts x 4 views + empty, one call
  assert seen[9] == "a photo of a bike, side view, 8K, HD"
  sel = jax.jit(lambda tb, e, a: prompts.select_embeddings(tb, e, a, spec))(
      table["object"], jnp.array([0.0, 10.0, 70.0, 0.0]), jnp.array([10.0, 100.0, 0.0, 180.0]))
  np.testing.assert_array_equal(sel[:, 0, 1], [8, 9, 11, 10])  # front, side, overhead, back


def test_tokenizer_truncates_long_prompts_with_warning(tmp_path):
  tiny_models.write_tokenizer(tmp_path)
  from transformers import CLIPTokenizer
  tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    short = prompts.tokenize(tok, ["a cat"])
  assert short.shape == (1, tiny_models.MAX_TOKENS)
  long = "a very long prompt about a man riding a bike " * 3
  with pytest.warns(UserWarning, match="truncated"):
    ids = prompts.tokenize(tok, [long])
  assert ids.shape == (1, tiny_models.MAX_TOKENS)
  full = tok(long)["input_ids"]
  assert len(full) > tiny_models.MAX_TOKENS
  np.testing.assert_array_equal(ids[0, :-1], full[:tiny_models.MAX_TOKENS - 1])
  assert ids[0, -1] == tok.eos_token_id
