"""Tests for built-in text retrieval, de-duplication, choice and anchor files."""
import logging

import numpy as np
import pytest

from configs import hoi
from interfusion_jax.pose import anchor, choose, codebook, retrieval, text_match
from interfusion_jax.stage2 import config as config_lib

# (query, expected label of the top-1 codebook cluster)
REQUIRED = [
    ("a man riding a bike", "riding a bike"),
    ("a woman sitting on a chair", "sitting on a chair"),
    ("a person playing the guitar", "playing the guitar"),
    ("someone lifting a heavy box", "lifting a box"),
]
PARAPHRASES = [  # none of these strings is a library phrase
    ("a cyclist pedalling along on his bicycle", "riding a bike"),
    ("a guy on a motorbike", "riding a motorcycle"),
    ("a girl riding a pony", "riding a horse"),
    ("relaxing on a comfy couch", "sitting on a sofa"),
    ("a kid kicking a football", "kicking a ball"),
    ("a man chatting on his cellphone", "talking on a phone"),
    ("sipping tea from a mug", "drinking from a cup"),
    ("a woman strolling with her puppy on a leash", "walking a dog"),
    ("hurling a baseball", "throwing a ball"),
    ("a boy on a longboard", "riding a skateboard"),
    ("a man sleeping on a mattress", "lying on a bed"),
    ("pushing a trolley in a supermarket", "pushing a cart"),
    ("a lady reading a novel", "reading a book"),
    ("typing on a notebook computer", "typing on a laptop"),
    ("a person hauling a crate", "carrying a box"),
    ("a man holding a parasol", "holding an umbrella"),
    ("someone fiddling on a fiddle", "playing the violin"),
    ("playing tennis with a racquet", "swinging a tennis racket"),
]


@pytest.fixture(scope="module")
def builtin():
  return codebook.load()


@pytest.mark.parametrize("query,label", REQUIRED + PARAPHRASES)
def test_builtin_retrieval_matches_interaction(builtin, query, label):
  assert not any(query == p for i in range(builtin.size) for p in builtin.phrases(i))
  c = retrieval.retrieve(builtin, query, k=7)
  assert c.backend == "builtin"
  assert builtin.phrases(int(c.indices[0]))[0] == label
  assert np.all(np.diff(c.scores) <= 1e-7)  # sorted best first


def test_builtin_retrieval_is_deterministic_and_logs(builtin, caplog):
  with caplog.at_level(logging.INFO):
    a = retrieval.retrieve(builtin, "a man riding a bike", k=7)
  b = retrieval.retrieve(builtin, "a man riding a bike", k=7)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.scores, b.scores)
  assert "backend: builtin" in caplog.text


def test_unmatched_text_falls_back_to_standing(builtin, caplog):
  with caplog.at_level(logging.WARNING):
    c = retrieval.retrieve(builtin, "a man juggling knives", k=3)
  assert "falling back" in caplog.text
  assert builtin.phrases(int(c.indices[0]))[0] == "standing"


def test_tokenizer_lemmas_and_synonyms():
  assert text_match.tokenize("A man rode bicycles") == ["ride", "bike"]
  assert text_match.tokenize("sitting on the couch") == ["sit", "sofa"]
  assert text_match.normalize_token("the") == ""


@pytest.mark.parametrize("text", ["", "   ", "a the of", None])
def test_empty_text_is_a_clear_error(builtin, text):
  with pytest.raises(text_match.EmptyTextError, match="interaction"):
    retrieval.retrieve(builtin, text, k=3)


def test_tfidf_similarity_matches_numpy_reference():
  docs = ["riding a bike", "riding a horse", "holding a box"]
  got = text_match.similarity("riding a bicycle", docs)
  # Reference: smoothed idf, sublinear tf, l2 norm, over tokens + bigrams.
  toks = [text_match._analyzer(d) for d in docs]
  vocab = sorted({t for d in toks for t in d})
  n = len(docs)
  df = np.array([sum(t in d for d in toks) for t in vocab])
  idf = np.log((1 + n) / (1 + df)) + 1

  def vec(ts):
    tf = np.array([ts.count(t) for t in vocab], float)
    v = np.where(tf > 0, 1 + np.log(np.maximum(tf, 1)), 0) * idf
    return v / np.linalg.norm(v)
  q = vec(text_match._analyzer("riding a bicycle"))
  ref = np.array([vec(t) @ q for t in toks])
  np.testing.assert_allclose(got, ref, atol=1e-9)
  assert got[0] == pytest.approx(1.0)


def test_ranked_breaks_ties_by_index():
  np.testing.assert_array_equal(retrieval.ranked([0.5, 0.9, 0.5, 0.9]), [1, 3, 0, 2])


def test_clip_scores_are_cosines():
  rng = np.random.default_rng(0)
  t, e = rng.normal(size=8), rng.normal(size=(5, 8))
  ref = e @ t / np.linalg.norm(e, axis=1) / np.linalg.norm(t)
  np.testing.assert_allclose(retrieval.clip_scores(t, e), ref, atol=1e-12)


def test_dedup_removes_near_identical_poses():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(4, 63)) * 0.5
  # Each base pose followed by two copies with mean |diff| ~0.03 (< 0.07).
  poses = np.concatenate([np.stack([b, b + 0.03, b - 0.03]) for b in base])
  order = np.arange(len(poses))
  kept = retrieval.dedup(order, poses)
  np.testing.assert_array_equal(kept, [0, 3, 6, 9])
  # A copy whose mean |diff| is above the threshold survives.
  poses[1] = poses[0] + 0.08
  np.testing.assert_array_equal(retrieval.dedup(order, poses), [0, 1, 3, 6, 9])
  # Only the first pre_k entries are considered.
  assert retrieval.dedup(order, poses, pre_k=2).tolist() == [0, 1]
  # Through top_k: near-duplicates never make it into the top-k.
  scores = -np.arange(len(poses), dtype=float)
  assert retrieval.top_k(scores, 3, poses, use_dedup=True).tolist() == [0, 1, 3]


def test_choose_methods(builtin):
  c = retrieval.retrieve(builtin, "riding a horse", k=5)
  best = choose.choose(builtin, c, "best")
  np.testing.assert_array_equal(best.body_pose, builtin.poses[c.indices[0]])
  r2 = choose.choose(builtin, c, "rank", rank=2)
  assert r2.cluster == c.indices[2] and r2.position == 2
  s1 = choose.choose(builtin, c, "sample", seed=7)
  s2 = choose.choose(builtin, c, "sample", seed=7)
  assert s1.member == s2.member and s1.member in builtin.members(s1.cluster)
  np.testing.assert_array_equal(s1.body_pose, builtin.member_poses[s1.member])
  members = {choose.choose(builtin, c, "sample", seed=s).member for s in range(20)}
  assert len(members) > 1  # sampling gives diversity inside the cluster
  rr = choose.choose(builtin, c, "clip_rerank", rerank_scores=np.array([0, 0, 0, 1.0, 0]))
  assert rr.position == 3 and rr.cluster == c.indices[3]
  with pytest.raises(choose.ChoiceError, match="rank = 9"):
    choose.choose(builtin, c, "rank", rank=9)
  with pytest.raises(choose.ChoiceError, match="CLIP"):
    choose.choose(builtin, c, "clip_rerank")
  with pytest.raises(choose.ChoiceError, match="unknown"):
    choose.choose(builtin, c, "gpt4v")


def test_retrieve_anchor_builtin_and_anchor_file(tmp_path, caplog):
  cfg = hoi.get_config("smoke")
  cfg.prompt.interaction = "sitting on a bench"
  with caplog.at_level(logging.INFO):
    a = anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  assert "builtin" in caplog.text
  assert a.body_pose.shape == (63,) and a.global_orient.shape == (3,)
  assert a.meta["backend"] == "builtin" and a.meta["source"] == "sitting on a bench"
  assert len(a.meta["candidate_scores"]) == cfg.pose.top_k
  path = anchor.save_anchor(tmp_path / "a.npz", a)
  cfg.pose.anchor_file = str(path)
  b = anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  np.testing.assert_array_equal(a.body_pose, b.body_pose)
  assert b.meta["text"] == "sitting on a bench" and b.meta["backend"] == "builtin"
  assert b.meta["candidate_indices"] == a.meta["candidate_indices"]
  cfg.pose.anchor_file = ""
  cfg.pose.choose, cfg.pose.rank = "rank", 1
  c = anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  assert c.meta["position"] == 1 and c.meta["cluster"] == a.meta["candidate_indices"][1]
  cfg.pose.choose = "clip_rerank"
  with pytest.raises(choose.ChoiceError, match="clip_dir"):
    anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))


def test_anchor_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="anchor_file"):
    anchor.load_anchor(tmp_path / "missing.npz")
  np.savez(tmp_path / "bad.npz", body_pose=np.zeros(60))
  with pytest.raises(anchor.AnchorFileError, match="63"):
    anchor.load_anchor(tmp_path / "bad.npz")
  np.savez(tmp_path / "nopose.npz", x=np.zeros(3))
  with pytest.raises(anchor.AnchorFileError, match="body_pose"):
    anchor.load_anchor(tmp_path / "nopose.npz")
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(anchor.AnchorFileError):
    anchor.load_anchor(tmp_path / "junk.npz")
  np.savez(tmp_path / "hand.npz", body_pose=np.full(63, 0.1))  # by hand: orient optional
  a = anchor.load_anchor(tmp_path / "hand.npz")
  np.testing.assert_array_equal(a.global_orient, np.zeros(3))


def test_missing_clip_dir_is_a_clear_error(tmp_path):
  cfg = hoi.get_config("smoke")
  cfg.pose.clip_dir = str(tmp_path / "no_clip")
  from interfusion_jax.pose import clip as clip_lib
  with pytest.raises(clip_lib.ClipDirError, match="does not exist"):
    anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(clip_lib.ClipDirError, match="config.json"):
    clip_lib.load_clip(tmp_path / "empty")
  (tmp_path / "empty" / "config.json").write_text("{}")
  (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
  with pytest.raises(clip_lib.ClipDirError, match="from_pt=True"):
    clip_lib.load_clip(tmp_path / "empty")
