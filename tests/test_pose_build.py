"""End-to-end stage 1 with a tiny random FlaxCLIPModel: build -> query -> choose -> anchor."""
import logging
import pathlib
import warnings

import numpy as np
import pytest

import pose_fixtures
import tiny_clip
from configs import hoi
from interfusion_jax.pose import (anchor, build, choose, clip as clip_lib, codebook, library,
                                  poseset, render, retrieval)
from interfusion_jax.pose import __main__ as pose_cli
from interfusion_jax.stage2 import config as config_lib

SPEC = render.PoseRenderSpec(height=64, width=64)  # 4 views, distance 2.7
DOCS_IMAGES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "images"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return tiny_clip.make_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
  return clip_lib.load_clip(clip_dir)


@pytest.fixture(scope="module")
def body():
  return pose_fixtures.capsule_body()


@pytest.fixture(scope="module")
def body_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("body") / "mannequin.npz"
  np.savez(path, **pose_fixtures.capsule_body_arrays())
  return path


@pytest.fixture(scope="module")
def small_set():
  ps = build.library_pose_set(augment_per_pose=1)
  labels = ["riding a bike", "sitting on a chair", "playing the guitar", "lifting a box",
            "lying on a bed", "kicking a ball", "standing", "holding an umbrella"]
  sel = np.flatnonzero(np.isin(ps.phrase, labels))
  return poseset.make_pose_set(ps.body_pose[sel], ps.global_orient[sel], phrase=ps.phrase[sel])


@pytest.fixture(scope="module")
def clip_codebook(small_set, body, clip, tmp_path_factory):
  cache = tmp_path_factory.mktemp("cache")
  cb = build.build_clip_codebook(small_set, body, clip, k=6, spec=SPEC, use_orient=True,
                                 cache_dir=cache, chunk=5, body_name="mannequin")
  return cb, cache


@pytest.mark.slow  # its fixtures build the tiny CLIP and the codebook (~30 s)
def test_build_shapes_and_metadata(clip_codebook, small_set, clip, tmp_path):
  cb, _ = clip_codebook
  n = len(small_set)
  assert cb.size == 6 and cb.poses.shape == (6, 63) and cb.global_orients.shape == (6, 3)
  assert cb.embeddings.shape == (6, clip.dim)
  np.testing.assert_allclose(np.linalg.norm(cb.embeddings, axis=1), 1.0, atol=1e-5)
  assert cb.member_offsets[-1] == n and cb.member_poses.shape == (n, 63)
  for k in range(cb.size):  # the key pose is one of its cluster's members
    mem = cb.members(k)
    assert np.any(np.all(np.isclose(cb.member_poses[mem], cb.poses[k]), axis=1))
    assert set(cb.member_phrases[mem]) == set(cb.phrases(k))
  m = cb.metadata
  assert m["embedding_space"] == "clip" and m["clip_model"] == clip.name
  assert m["body_model"] == "mannequin" and m["render"]["azimuths_deg"] == [0, 90, 180, 270]
  assert m["render"]["distance"] == 2.7 and m["k"] == 6 and m["num_poses"] == n
  path = codebook.save(tmp_path / "cb.npz", cb)
  cb2 = codebook.load(path)
  for key in ("poses", "embeddings", "member_offsets", "member_phrases", "cluster_phrases"):
    np.testing.assert_array_equal(getattr(cb, key), getattr(cb2, key))
  assert cb2.metadata == cb.metadata


def test_embeddings_are_view_averages(small_set, body, clip):
  """Pose embedding = normalised mean of the per-view CLIP image embeddings."""
  p, o = small_set.body_pose[:2], small_set.global_orient[:2]
  got = build.embed_poses(body, clip, p, o, SPEC)
  views = render.render_poses(body, p, o, SPEC)["rgb"]
  ref = []
  for v in views:
    f = clip_lib.image_features(clip, v)
    m = f.mean(0)
    ref.append(m / np.linalg.norm(m))
  np.testing.assert_allclose(got, np.stack(ref), atol=1e-5)


def test_build_resumes_from_cache(clip_codebook, small_set, body, clip, monkeypatch):
  cb, cache = clip_codebook
  (key_dir,) = [d for d in cache.iterdir() if d.is_dir()]
  chunks = sorted(key_dir.glob("emb_*.npy"))
  assert len(chunks) == int(np.ceil(len(small_set) / 5))
  chunks[1].unlink()  # simulate an interrupted build
  calls = []
  real = render.render_poses

  def counting(*args, **kw):
    calls.append(args[1].shape[0])
    return real(*args, **kw)
  monkeypatch.setattr(render, "render_poses", counting)
  cb2 = build.build_clip_codebook(small_set, body, clip, k=6, spec=SPEC, use_orient=True,
                                  cache_dir=cache, chunk=5, body_name="mannequin")
  assert calls == [5]  # only the missing chunk is rendered again
  np.testing.assert_allclose(cb2.embeddings, cb.embeddings, atol=1e-6)
  np.testing.assert_array_equal(cb2.member_offsets, cb.member_offsets)


def test_kmeans_determinism_and_k_capping():
  rng = np.random.default_rng(0)
  x = np.concatenate([rng.normal(c, 0.1, size=(20, 5)) for c in (0, 3, 6)])
  l1, c1 = build.kmeans(x, 3, seed=0)
  l2, c2 = build.kmeans(x, 3, seed=0)
  np.testing.assert_array_equal(l1, l2)
  np.testing.assert_array_equal(c1, c2)
  # Three well separated blobs are recovered exactly.
  assert all(len(set(l1[i * 20:(i + 1) * 20])) == 1 for i in range(3))
  with pytest.warns(build.ClusterCountWarning, match="only 60 poses"):
    l3, c3 = build.kmeans(x, 100, seed=0)
  assert c3.shape == (60, 5) and sorted(l3.tolist()) == list(range(60))
  with pytest.raises(ValueError, match=">= 1"):
    build.kmeans(x, 0)


def test_pose_codebook_k_larger_than_poses_warns(small_set):
  with pytest.warns(build.ClusterCountWarning):
    cb = build.build_pose_codebook(small_set, k=10_000)
  assert cb.size == len(small_set) and cb.embedding_space == "pose"


def test_clip_query_choose_anchor(clip_codebook, clip, body, tmp_path):
  cb, _ = clip_codebook
  c = retrieval.retrieve(cb, "riding a bike", clip=clip, k=7)
  assert c.backend == "clip" and c.query == "a rendered 3d man is riding a bike"
  assert c.indices.shape == (cb.size,)  # k capped at K = 6
  t = clip_lib.text_features(clip, [c.query])[0]
  ref = cb.embeddings @ t / np.linalg.norm(cb.embeddings, axis=1)
  np.testing.assert_allclose(c.scores, np.sort(ref)[::-1], atol=1e-5)
  a, cands = anchor.find_anchor(cb, "riding a bike", clip=clip, body=body, top_k=3,
                                method="clip_rerank", scene_prompt="a man riding a bike",
                                spec=SPEC)
  rer = choose.clip_rerank_scores(clip, body, cb.poses[cands.indices],
                                  cb.global_orients[cands.indices], "a man riding a bike", SPEC)
  np.testing.assert_allclose(a.meta["rerank_scores"], rer, atol=1e-5)
  assert a.meta["position"] == int(np.argmax(rer))
  assert a.meta["source"] == f"codebook index {a.meta['cluster']}"
  path = anchor.save_anchor(tmp_path / "anchor.npz", a)
  b = anchor.load_anchor(path)
  assert b.body_pose.shape == (63,) and b.global_orient.shape == (3,)
  assert b.meta["backend"] == "clip" and b.meta["text"] == "riding a bike"
  assert len(b.meta["candidate_scores"]) == 3


def test_clip_on_pose_space_codebook_embeds_on_the_fly(small_set, clip, body):
  cb = build.build_pose_codebook(small_set, k=4)
  c = retrieval.retrieve(cb, "sitting on a chair", clip=clip, body=body, k=3, spec=SPEC)
  emb = build.embed_poses(body, clip, cb.poses, cb.global_orients, SPEC)
  t = clip_lib.text_features(clip, [c.query])[0]
  np.testing.assert_allclose(c.scores, np.sort(emb @ t)[::-1][:3], atol=1e-5)


def test_retrieve_anchor_uses_clip_when_configured(clip_codebook, clip_dir, body_file,
                                                   tmp_path, caplog):
  cb, _ = clip_codebook
  cfg = hoi.get_config("smoke")
  cfg.pose.clip_dir = str(clip_dir)
  cfg.pose.codebook = str(codebook.save(tmp_path / "cb.npz", cb))
  cfg.body.model = str(body_file)
  cfg.pose.choose, cfg.pose.dedup = "sample", True
  with caplog.at_level(logging.INFO):
    a = anchor.retrieve_anchor(config_lib.anchor_query(config_lib.parse(cfg)))
  assert "backend: clip" in caplog.text
  assert a.meta["backend"] == "clip" and a.meta["member"] >= 0
  assert a.meta["query"] == "a rendered 3d man is riding a bike"


def test_cli_writes_anchor_and_contact_sheet(clip_codebook, clip_dir, body_file, tmp_path,
                                             capsys):
  import imageio.v3 as iio
  cb, _ = clip_codebook
  cbp = codebook.save(tmp_path / "cb.npz", cb)
  out = tmp_path / "anchor.npz"
  assert pose_cli.main(["--text", "riding a bike", "--out", str(out), "--clip_dir",
                        str(clip_dir), "--codebook", str(cbp), "--body", str(body_file),
                        "--choose", "rank", "--rank", "2", "--top_k", "4"]) == 0
  a = anchor.load_anchor(out)
  assert a.meta["backend"] == "clip" and a.meta["position"] == 2
  assert a.meta["cluster"] == a.meta["candidate_indices"][2]
  sheet = iio.imread(out.with_suffix(".png"))
  assert sheet.ndim == 3 and sheet.shape[1] == 4 * 320  # 4 candidates x (front | side)
  assert "rank 2" in capsys.readouterr().out
  # The built-in path (no CLIP) works the same way.
  out2 = tmp_path / "builtin.npz"
  assert pose_cli.main(["--text", "a man riding a bicycle", "--out", str(out2), "--body",
                        str(body_file)]) == 0
  b = anchor.load_anchor(out2)
  assert b.meta["backend"] == "builtin" and b.meta["source"] == "riding a bike"


def test_default_body_renders_a_recognisable_body():
  """Silhouette area and bounding box of the codebook views of the default body."""
  import imageio.v3 as iio
  from interfusion_jax.body import model
  try:
    body = model.load_body_model("default")
  except FileNotFoundError:
    pytest.skip("default body asset not built")
  lib = {p.label: p for p in library.build_library()}
  names = ["standing", "sitting on a chair", "riding a bike", "lying on a bed"]
  poses = np.stack([lib[n].body_pose for n in names])
  orients = np.stack([lib[n].global_orient for n in names])
  spec = render.PoseRenderSpec()  # the official 4 views, 224x224
  out = render.render_poses(body, poses, orients, spec)
  mask = out["mask"]
  assert mask.shape == (4, 4, 224, 224)
  area = mask.mean(axis=(2, 3))  # [pose, view]
  assert np.all(area > 0.02) and np.all(area < 0.4)

  def bbox(m):
    ys, xs = np.nonzero(m)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
  h, w = bbox(mask[0, 0])  # standing, front: tall and narrow, ~1.7 m at 2.7 m
  expect_h = 224 * 1.7 / (2 * 2.7 * np.tan(np.deg2rad(spec.fovy_deg / 2)))
  assert 0.8 * expect_h < h < 1.15 * expect_h and w < 0.5 * h
  h_side, w_side = bbox(mask[1, 1])  # sitting, side view: shorter, deeper
  assert h_side < 0.85 * h and w_side > 1.5 * bbox(mask[0, 1])[1]
  h_lie, w_lie = bbox(mask[3, 1])  # lying, side view: wide and flat
  assert w_lie > 2.5 * h_lie
  # Front/back views of standing are mirror-symmetric silhouettes.
  assert (mask[0, 0] & mask[0, 2][:, ::-1]).sum() / (mask[0, 0] | mask[0, 2][:, ::-1]).sum() > 0.8
  rows = [np.concatenate(list(out["rgb"][i]), axis=1) for i in range(4)]
  DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
  iio.imwrite(DOCS_IMAGES / "pose_codebook_views.png",
              (np.concatenate(rows, 0) * 255 + 0.5).astype(np.uint8))
