"""Prompt processing, threestudio view rule, embedding table, tokenizer limit."""
import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.guidance import prompts
from interfusion_jax.stage2 import config as config_lib
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
  spec = config_lib.prompt_spec(config_lib.parse(hoi.get_config()))
  base = prompts.scene_prompts(spec)
  # riding_a_bike.yaml:64-70 without "a photo of" and ", 8K, HD"
  assert base["head"] == "head of a man with a full beard wearing a flannel shirt"
  assert base["interaction"] == "a man with a full beard wearing a flannel shirt riding a bike"
  v = prompts.view_prompts(base["object"], spec)
  assert v == [f"a photo of a bike, 8K, HD, {d} view" for d in prompts.VIEWS]
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
  assert seen[9] == "a photo of a bike, 8K, HD, side view"
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


# --------------------------------------------------------------------------
# The official wording (release 45fe45d, e.g. InterGen/configs/interfusion-if/
# riding_a_bike.yaml lines 61-70, and threestudio's prompt processor, which
# appends ", <view> view" after the whole prompt).

_BIKE_OFFICIAL = {   # the release's four prompts of the bike scene, verbatim
    "object": "a photo of a bike, 8K, HD",
    "human": "a photo of a man with a full beard wearing a flannel shirt, 8K, HD",
    "interaction": "a photo of a man with a full beard wearing a flannel shirt riding a bike, 8K, HD",
    "head": "a photo of head of a man with a full beard wearing a flannel shirt, 8K, HD",
}


def test_exact_official_prompt_strings():
  spec = config_lib.prompt_spec(config_lib.parse(hoi.get_config("riding_a_bike")))
  base = prompts.scene_prompts(spec)
  for name, official in _BIKE_OFFICIAL.items():
    assert prompts.decorate(base[name], spec, None) == official
    assert prompts.view_prompts(base[name], spec) == [f"{official}, {v} view" for v in prompts.VIEWS]
  assert prompts.decorate("a bike", spec, "front") == "a photo of a bike, 8K, HD, front view"
  assert prompts.decorate("a bike", dataclasses.replace(spec, suffix=""), "back") == (
      "a photo of a bike, back view")
  assert prompts.decorate("a bike", dataclasses.replace(spec, prefix=""), "side") == (
      "a bike, 8K, HD, side view")


def _old_caption(text, view, prefix="a photo of", suffix="8K, HD"):
  """The wording before the official one: "{prefix} {text}, {view} view, {suffix}"."""
  parts = [f"{prefix} {text}"] + ([f"{view} view"] if view else []) + [suffix]
  return ", ".join(parts)


def _old_scene_texts(spec):
  base = prompts.scene_prompts(spec)
  return dict(base, head="the head of " + base["human"])


_VARIANTS = ["paper", "cpu", "quick", "smoke"] + sorted(hoi.SCENES)


def test_builtin_prior_reads_the_new_wording_as_the_old():
  """The built-in prior's parse of each trainer prompt x view in the official
  wording equals its parse of the old wording, and its embedding table is
  bitwise the table of the old wording, for every variant and scene preset."""
  from interfusion_jax.guidance import builtin
  from interfusion_jax.prior import assets
  for variant in _VARIANTS:
    cfg = hoi.get_config(variant)
    spec = config_lib.prompt_spec(config_lib.parse(cfg))
    base, old = prompts.scene_prompts(spec), _old_scene_texts(spec)
    for name in base:
      for view in (None,) + prompts.VIEWS:
        new = prompts.decorate(base[name], spec, view)
        assert builtin.parse_caption(new) == builtin.parse_caption(_old_caption(old[name], view)), (
            variant, new)
    table = assets.builtin_text_table(config_lib.prompt_spec(config_lib.parse(cfg)))
    for name in base:
      want = builtin.embed_captions([_old_caption(old[name], v) for v in prompts.VIEWS])
      np.testing.assert_array_equal(np.asarray(table[name]), want)


def test_builtin_prior_reads_every_bank_caption_in_the_new_wording():
  """Each caption of the shipped prior bank (old or official wording) written
  in the official wording parses to the same factors, and those are the
  image's stored attributes where the caption names them."""
  import re
  from interfusion_jax.guidance import builtin
  from interfusion_jax.prior import assets
  bank = np.load(assets.SHIPPED_PATH)
  spec = prompts.PromptSpec(human="x", object="y", interaction="z")
  views = "front|side|back|overhead"
  rx = re.compile(rf"^a photo of (.*?)(?:, ({views}) view)?, 8K, HD(?:, ({views}) view)?$")
  seen = {}
  for cap, attr in zip(bank["captions"].tolist(), bank["attrs"]):
    if cap in seen:
      continue
    m = rx.match(cap)
    assert m, cap
    text, view = m.group(1), m.group(2) or m.group(3)
    if text.startswith("the head of "):
      text = text[len("the "):]
    new = prompts.decorate(text, spec, view)
    assert "the head of" not in new and (view is None or new.endswith(f", 8K, HD, {view} view"))
    parsed = builtin.parse_caption(new)
    assert parsed == builtin.parse_caption(cap), (cap, new)
    got = builtin.attributes_of(parsed)
    named = got >= 0
    np.testing.assert_array_equal(got[named], np.asarray(attr)[named])
    seen[cap] = new
  assert len(seen) > 1000 and any(c.startswith(("a photo of the head of", "a photo of head of"))
                                  for c in seen)


# ----------------------------------------------------------------------------
# Negative prompt and Perp-Neg (threestudio's prompt processor, transcribed).
# ----------------------------------------------------------------------------


def test_negative_prompt_is_encoded_as_written_into_the_uncond_row():
  seen = []

  def fake_encode(texts):
    seen.extend(texts)
    return jnp.asarray([[[float(len(t)), float(i)]] for i, t in enumerate(texts)])

  spec = prompts.PromptSpec(human="a man", object="a bike", interaction="riding a bike",
                            negative="blurry, low quality")
  table = prompts.embedding_table(fake_encode, spec)
  assert seen[-1] == "blurry, low quality" and len(seen) == 17   # undecorated, one call
  np.testing.assert_array_equal(table["uncond"], [[len("blurry, low quality"), 16]])
  assert prompts.PromptSpec(human="a", object="b", interaction="c").negative == ""


# threestudio's defaults, as written in prompt_processors/base.py.
TS_F = {"sb": (1, 0.5, -0.606), "fsb": (1, 0.5, +0.967), "fs": (4, 0.5, -2.426),
        "sf": (4, 0.5, -2.426)}


def _ts_perp_neg(vd, uncond, elev, azim):
  """NumPy transcription of threestudio ``get_text_embeddings_perp_neg`` for one
  camera; ``vd`` rows in threestudio's order (side, front, back, overhead)."""
  f = lambda abc, r: abc[0] * np.exp(-abc[1] * r) + abc[2]
  idx = _ref_view(elev, azim)
  idx = {0: 1, 1: 0, 2: 2, 3: 3}[idx]            # ours (front, side, ...) -> threestudio's
  side, front, back, overhead = vd
  azi = (azim + 180) % 360 - 180
  if idx == 3:
    return overhead, [uncond, uncond], [0.0, 0.0]
  if abs(azi) < 90:
    r = 1 - abs(azi) / 90
    return (r * front + (1 - r) * side, [front, side],
            [-f(TS_F["fs"], r), -f(TS_F["sf"], 1 - r)])
  r = 2.0 - abs(azi) / 90
  return r * side + (1 - r) * back, [side, front], [-f(TS_F["sb"], r), -f(TS_F["fsb"], r)]


def test_perp_neg_embeddings_match_threestudio():
  rng = np.random.default_rng(0)
  table = rng.standard_normal((4, 3, 5)).astype(np.float32)   # ours: front, side, back, overhead
  uncond = rng.standard_normal((3, 5)).astype(np.float32)
  ts_rows = table[[1, 0, 2, 3]]
  fn = jax.jit(jax.vmap(lambda v, a: prompts.perp_neg_embeddings(
      jnp.asarray(table), jnp.asarray(uncond), v, a, prompts.PerpNegSpec()), (0, 0)))
  elev = np.array([0.0, 20.0, 59.0, 61.0, -20.0] * 11, np.float32)
  azim = np.repeat(np.array([-180, -135, -100, -90, -45, 0, 30, 89.9, 90, 170, 359],
                            np.float32), 5)
  pos, negs, w = fn(prompts.view_index(elev, azim), azim)
  assert pos.shape == (55, 3, 5) and negs.shape == (55, 2, 3, 5) and w.shape == (55, 2)
  for i, (e, a) in enumerate(zip(elev, azim)):
    p_ref, n_ref, w_ref = _ts_perp_neg(ts_rows, uncond, float(e), float(a))
    np.testing.assert_allclose(pos[i], p_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(negs[i], np.stack(n_ref), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(w[i], w_ref, rtol=1e-5, atol=1e-6)
  # The curves vanish where the negative is the positive itself (threestudio's f(1) = 0).
  np.testing.assert_allclose(w[elev.tolist().index(0.0) + 5 * 5], [0.0, -1.574], atol=1e-3)
