"""T5 text encoding for DeepFloyd IF (issue 14) against transformers' PyTorch T5."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from interfusion_jax.guidance import loading, prompts, t5
import tiny_models

torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")
pytestmark = pytest.mark.torch

TEXTS = ["a photo of a man riding a bike, front view, 8K, HD", "",
         "the head of a man, " + "very " * 60 + "detailed"]  # the last one is truncated


@pytest.fixture(scope="module")
def t5_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("t5")
  return root, tiny_models.make_torch_t5(root)


def _ref_ids(folder, texts):
  """threestudio's DeepFloyd prompt processor: T5Tokenizer, max_length 77, pt tensors."""
  from transformers import T5Tokenizer
  tok = T5Tokenizer.from_pretrained(str(folder), local_files_only=True)
  out = tok(texts, padding="max_length", max_length=77, truncation=True, add_special_tokens=True,
            return_tensors="pt")
  return out.input_ids.numpy(), out.attention_mask.numpy()


@pytest.mark.parametrize("fmt", ["tokenizer.json", "spiece.model"])
def test_tokenizer_ids_equal_transformers(t5_root, tmp_path, fmt):
  root, _ = t5_root
  src = root
  if fmt == "spiece.model":  # a copy without tokenizer.json: the slow sentencepiece path
    src = tmp_path / "r"
    shutil.copytree(root / "tokenizer", src / "tokenizer")
    (src / "tokenizer" / "tokenizer.json").unlink()
  tok = t5.load_tokenizer(src)
  assert type(tok).__name__ == ("T5TokenizerFast" if fmt == "tokenizer.json" else "T5Tokenizer")
  with pytest.warns(UserWarning, match="truncated"):
    ids, mask = t5.tokenize(tok, TEXTS)
  ref_ids, ref_mask = _ref_ids(root / "tokenizer", TEXTS)
  assert ids.shape == (3, 77) and ids.dtype == np.int32
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert ids[1, 0] == 1 and mask[1].sum() == 1  # "" -> </s>, then padding


def test_flax_t5_matches_pytorch_fp32(t5_root):
  root, pt = t5_root
  names = sorted(p.name for p in (root / "text_encoder").iterdir())
  assert "model.safetensors.index.json" in names and sum("-of-" in n for n in names) > 1
  tok = t5.load_tokenizer(root)
  model, params = t5.load_encoder(root, dtype="float32")
  emb = t5.text_encoder(tok, model, params)(TEXTS[:2])
  ids, mask = _ref_ids(root / "tokenizer", TEXTS[:2])
  with torch.no_grad():
    ref = pt(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  assert emb.shape == (2, 77, tiny_models.IF_TEXT_DIM)
  assert np.max(np.abs(emb - ref)) <= 1e-5 * max(1.0, np.max(np.abs(ref)))
  # bf16 (the default): finite and close
  mb, pb = t5.load_encoder(root)
  eb = t5.text_encoder(tok, mb, pb)(TEXTS[:2])
  assert np.all(np.isfinite(eb))
  err = np.max(np.abs(eb - ref)) / np.max(np.abs(ref))
  print(f"bf16 tiny T5: max relative error {err:.3g}")
  assert err < 0.1
  t5.free(pb)
  assert all(a.is_deleted() for a in __import__("jax").tree_util.tree_leaves(pb))


def test_fp16_variant_with_its_index_name_loads(tmp_path):
  pt = tiny_models.make_torch_t5(tmp_path, seed=3, variant="fp16")
  names = sorted(p.name for p in (tmp_path / "text_encoder").iterdir())
  assert "model.safetensors.index.fp16.json" in names, names
  t5.check_t5_dir(tmp_path)
  tok = t5.load_tokenizer(tmp_path)
  model, params = t5.load_encoder(tmp_path, dtype="float32")
  emb = t5.text_encoder(tok, model, params)(TEXTS[:1])
  ids, mask = _ref_ids(tmp_path / "tokenizer", TEXTS[:1])
  with torch.no_grad():
    ref = pt.half().float()(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  assert np.max(np.abs(emb - ref.numpy())) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_relative_position_bucket_equals_pytorch():
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-90, 90)[None, :] - np.arange(0, 40)[:, None]
  for bidir in (True, False):
    ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidir,
                                                num_buckets=32, max_distance=128).numpy()
    got = np.asarray(t5.relative_position_bucket(rel, bidirectional=bidir))
    np.testing.assert_array_equal(got, ref)


def test_each_prompt_is_encoded_once_per_cache(t5_root, tmp_path):
  root, _ = t5_root
  spec = prompts.PromptSpec(human="a man", object="a bike", interaction="riding a bike")
  s1, s2 = {}, {}
  a = t5.encode_prompts(root, spec, cache_dir=tmp_path, stats=s1)
  b = t5.encode_prompts(root, spec, cache_dir=tmp_path, stats=s2)
  assert s1 == {"encoded": 17, "cached": 0} and s2 == {"encoded": 0, "cached": 17}
  assert a["human"].shape == (4, 77, tiny_models.IF_TEXT_DIM) and a["uncond"].shape == (77, 48)
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert t5.fingerprint(root) != t5.fingerprint(root, dtype="float32")
  # A negative prompt is one more cached text, and it is the "uncond" row.
  s3, s4 = {}, {}
  neg = t5.encode_prompts(root, dataclasses.replace(spec, negative="blurry"),
                          cache_dir=tmp_path, stats=s3)
  assert s3 == {"encoded": 1, "cached": 16}
  np.testing.assert_array_equal(np.asarray(neg["uncond"]),
                                t5.encode_texts(root, ["blurry"], cache_dir=tmp_path, stats=s4)[0])
  assert s4 == {"encoded": 0, "cached": 1}
  assert not np.allclose(np.asarray(neg["uncond"]), np.asarray(a["uncond"]))


def _t5_dir(tmp_path, files, cfg=None):
  root = tmp_path / "if"
  (root / "text_encoder").mkdir(parents=True)
  (root / "tokenizer").mkdir()
  (root / "text_encoder" / "config.json").write_text(json.dumps(cfg or {"model_type": "t5"}))
  for f in files:
    (root / f).write_bytes(b"")
  return root


def test_t5_folder_errors(tmp_path):
  root = _t5_dir(tmp_path / "a", ["tokenizer/spiece.model", "text_encoder/model.8bit.safetensors"])
  with pytest.raises(loading.ModelTypeError, match="8-bit.*model.safetensors.index.fp16.json"):
    t5.check_t5_dir(root)
  root = _t5_dir(tmp_path / "b", ["tokenizer/spiece.model"],
                 {"model_type": "t5", "quantization_config": {"load_in_8bit": True}})
  with pytest.raises(loading.ModelTypeError, match="8-bit"):
    t5.check_t5_dir(root)
  root = _t5_dir(tmp_path / "c", ["text_encoder/model-00001-of-00002.safetensors"])
  (root / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
      "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
  with pytest.raises(loading.WeightsNotFoundError) as e:
    t5.check_t5_dir(root)
  assert "model-00002-of-00002.safetensors" in str(e.value)
  assert "tokenizer/<one of tokenizer.json, spiece.model>" in str(e.value)
  with pytest.raises(loading.WeightsNotFoundError, match="text_encoder/config.json"):
    t5.check_t5_dir(tmp_path / "nothing")
