"""Tests for the codebook and pose-set file formats (malformed input -> clear errors)."""
import json

import numpy as np
import pytest

from interfusion_jax.pose import build, codebook, library, poseset


def _small_codebook(k=3, m=7, d=5, space="clip"):
  rng = np.random.default_rng(0)
  off = np.array([0, 2, 5, m])[:k + 1]
  return codebook.make_codebook(
      poses=rng.normal(size=(k, 63)), global_orients=np.zeros((k, 3)),
      embeddings=rng.normal(size=(k, d)), member_offsets=off,
      member_poses=rng.normal(size=(m, 63)), member_orients=np.zeros((m, 3)),
      member_phrases=["a"] * m, cluster_phrases=["a | b", "c", "d"][:k],
      metadata=dict(embedding_space=space, note=(1, 2)))


def test_roundtrip(tmp_path):
  cb = _small_codebook()
  cb2 = codebook.load(codebook.save(tmp_path / "x.npz", cb))
  np.testing.assert_array_equal(cb.poses, cb2.poses)
  assert cb2.metadata == cb.metadata == {"embedding_space": "clip", "note": [1, 2],
                                         "version": codebook.FORMAT_VERSION}
  assert cb2.phrases(0) == ["a", "b"] and cb2.members(1).tolist() == [2, 3, 4]
  with np.load(tmp_path / "x.npz", allow_pickle=False) as z:  # no pickles inside
    assert set(z.files) >= {"poses", "embeddings", "metadata"}


def test_builtin_codebook_is_valid_and_reproducible(tmp_path):
  cb = codebook.load()  # the shipped file
  assert cb.embedding_space == "pose" and cb.size >= 80
  assert cb.member_poses.shape[0] >= 9 * 40
  # tools/build_builtin_codebook.py is deterministic: rebuilding gives the same arrays.
  n_lib = len(library.build_library())
  ps = build.library_pose_set(cb.metadata["num_poses"] // n_lib - 1)
  assert len(ps) == cb.metadata["num_poses"]
  again = build.build_pose_codebook(ps, k=cb.metadata["k_requested"], seed=0,
                                    phrase_expansion=build.library_phrases())
  np.testing.assert_allclose(again.poses, cb.poses, atol=1e-6)
  np.testing.assert_array_equal(again.cluster_phrases, cb.cluster_phrases)


@pytest.mark.parametrize("field,value,msg", [
    ("poses", np.zeros((3, 60)), "poses has shape"),
    ("embeddings", np.zeros((2, 5)), "embeddings has shape"),
    ("member_offsets", np.array([0, 2, 2, 7]), "member_offsets"),
    ("poses", np.full((3, 63), np.nan), "NaN"),
    ("global_orients", np.zeros((3, 4)), "global_orients"),
])
def test_malformed_codebook_arrays(tmp_path, field, value, msg):
  cb = _small_codebook()
  arrays = {k: getattr(cb, k) for k in codebook._KEYS if k != "metadata"}
  arrays[field] = value
  arrays["metadata"] = np.asarray(json.dumps(cb.metadata))
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(codebook.CodebookError, match=msg):
    codebook.load(tmp_path / "bad.npz")


def test_codebook_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="pose.build"):
    codebook.load(tmp_path / "nope.npz")
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(codebook.CodebookError, match="missing arrays"):
    codebook.load(tmp_path / "other.npz")
  (tmp_path / "junk.npz").write_bytes(b"junk")
  with pytest.raises(codebook.CodebookError, match="cannot be read"):
    codebook.load(tmp_path / "junk.npz")
  with pytest.raises(codebook.CodebookError, match="embedding_space"):
    _small_codebook(space="vposer")


def test_pose_set_validation(tmp_path):
  ps = poseset.make_pose_set(np.zeros((4, 63)), phrase=list("abcd"))
  assert ps.global_orient.shape == (4, 3) and ps.betas.shape == (4, 0)
  back = poseset.load_pose_set(poseset.save_pose_set(tmp_path / "p.npz", ps))
  np.testing.assert_array_equal(back.phrase, ps.phrase)
  with pytest.raises(poseset.PoseSetError, match=r"\[N, 63\]"):
    poseset.make_pose_set(np.zeros((4, 66)))
  bad = np.zeros((4, 63))
  bad[2, 5] = np.inf
  with pytest.raises(poseset.PoseSetError, match=r"rows \[2\]"):
    poseset.make_pose_set(bad)
  with pytest.raises(poseset.PoseSetError, match="phrase"):
    poseset.make_pose_set(np.zeros((4, 63)), phrase=["a"])
  with pytest.raises(FileNotFoundError, match="import_poses"):
    poseset.load_pose_set(tmp_path / "missing.npz")
  np.savez(tmp_path / "x.npz", y=np.zeros(2))
  with pytest.raises(poseset.PoseSetError, match="body_pose"):
    poseset.load_pose_set(tmp_path / "x.npz")
