"""Tests for the stage-1 data tools: import_poses, filter_persons, synthesize_images."""
import json
import pathlib
import sys

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tools"))

import filter_persons  # noqa: E402
import import_poses  # noqa: E402
import synthesize_images  # noqa: E402
import tiny_clip  # noqa: E402
from interfusion_jax.pose import poseset  # noqa: E402

PHRASES = pathlib.Path(__file__).resolve().parent.parent / "interfusion_jax" / "assets" / \
    "interaction_phrases.txt"


def _rot6d(mats):
  """Official layout: the 3x2 matrix of the first two columns, row-major."""
  return mats[..., :, :2].reshape(mats.shape[:-2] + (6,))


def test_interaction_phrases_file():
  phrases = synthesize_images.read_phrases(PHRASES)
  assert len(phrases) >= 245 and len(set(phrases)) == len(phrases)
  for p in phrases:
    verb, rest = p.split(" ", 1)
    assert verb.endswith("ing"), p
    assert any(w in rest.split() for w in ("a", "an", "the")), p  # "verb-ing a/an/the object"


def test_rot6d_to_matrix_matches_rotations():
  rots = Rotation.random(50, random_state=0)
  m = rots.as_matrix()
  np.testing.assert_allclose(import_poses.rot6d_to_matrix(_rot6d(m)), m, atol=1e-10)
  # Non-orthonormal input is Gram-Schmidt'ed: scaling the columns changes nothing.
  x = _rot6d(m).reshape(50, 3, 2) * np.array([2.0, 0.5])
  np.testing.assert_allclose(import_poses.rot6d_to_matrix(x.reshape(50, 6)), m, atol=1e-10)
  np.testing.assert_allclose(import_poses.matrix_to_axis_angle(m), rots.as_rotvec(), atol=1e-8)


@pytest.mark.torch
def test_rot6d_matches_official_torch_code():
  torch = pytest.importorskip("torch")
  from torch.nn import functional as F

  def official(x):  # PoseGen/utils.py rot6d_to_rotation_matrix
    x = x.view(-1, 3, 2)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)
  x = np.random.default_rng(0).normal(size=(30, 6))
  np.testing.assert_allclose(import_poses.rot6d_to_matrix(x),
                             official(torch.tensor(x)).numpy(), atol=1e-10)


def _write_official(path, rotvecs, orient, as_torch=False):
  pose6 = _rot6d(Rotation.from_rotvec(rotvecs).as_matrix())[None]  # [1, 21, 6]
  or6 = _rot6d(Rotation.from_rotvec(orient[None]).as_matrix())[None]  # [1, 1, 6]
  d = dict(betas=np.arange(10.0)[None], pose=pose6, orient=or6, trans=np.zeros(3))
  if as_torch:
    import torch
    d = {k: torch.tensor(v, requires_grad=True) for k, v in d.items()}
  np.save(path, d, allow_pickle=True)


def test_import_official_smpl_npy(tmp_path):
  rng = np.random.default_rng(0)
  rv = rng.normal(size=(2, 21, 3)) * 0.5
  ori = rng.normal(size=(2, 3)) * 0.5
  _write_official(tmp_path / "riding_a_bike_0_smpl.npy", rv[0], ori[0])
  _write_official(tmp_path / "sitting_on_a_chair_12_smpl.npy", rv[1], ori[1])
  out = tmp_path / "set.npz"
  assert import_poses.main([str(tmp_path), "--out", str(out)]) == 0
  ps = poseset.load_pose_set(out)
  order = np.argsort(ps.source)
  assert ps.phrase[order].tolist() == ["riding a bike", "sitting on a chair"]
  np.testing.assert_allclose(ps.body_pose[order], rv.reshape(2, 63), atol=1e-5)
  # Only the 63-D body pose is kept (official): the estimator's root orientation is dropped.
  np.testing.assert_array_equal(ps.global_orient, np.zeros((2, 3)))
  np.testing.assert_allclose(ps.betas[0], np.arange(10.0))
  kept = tmp_path / "kept.npz"
  inputs = [str(tmp_path / "riding_a_bike_0_smpl.npy"), str(tmp_path / "sitting_on_a_chair_12_smpl.npy")]
  assert import_poses.main(inputs + ["--out", str(kept), "--keep_orient"]) == 0
  ps_kept = poseset.load_pose_set(kept)
  order = np.argsort(ps_kept.source)
  np.testing.assert_allclose(ps_kept.global_orient[order], ori, atol=1e-5)
  np.testing.assert_allclose(ps_kept.body_pose[order], rv.reshape(2, 63), atol=1e-5)


def test_imported_poses_reach_the_codebook_upright(tmp_path):
  """An estimator root orientation that turns the body upside down (pi about x)
  is dropped on import, so the codebook built from the set holds zero
  orientations and its key pose stands upright: the neck (joint 12) above the
  pelvis (joint 0) along the body frame's +y."""
  from interfusion_jax.body import lbs
  from interfusion_jax.body import model as body_model
  from interfusion_jax.pose import build
  rv = np.random.default_rng(4).normal(size=(21, 3)) * 0.05   # near the rest pose
  _write_official(tmp_path / "standing_0_smpl.npy", rv, np.array([np.pi, 0.0, 0.0]))
  ps = import_poses.import_poses([str(tmp_path)])
  cb = build.build_pose_codebook(ps, k=1)
  np.testing.assert_array_equal(cb.global_orients, np.zeros((1, 3)))
  np.testing.assert_array_equal(cb.member_orients, np.zeros((1, 3)))
  np.testing.assert_allclose(cb.poses[0], rv.reshape(63), atol=1e-5)
  body = body_model.load_body_model("default")
  _, j = lbs.pose_body(body, np.asarray(cb.poses[0], np.float32),
                       np.asarray(cb.global_orients[0], np.float32))
  j = np.asarray(j)
  assert j[12, 1] - j[0, 1] > 0.2                     # upright
  kept = import_poses.import_poses([str(tmp_path)], keep_orient=True)
  _, jk = lbs.pose_body(body, np.asarray(kept.body_pose[0], np.float32),
                        np.asarray(kept.global_orient[0], np.float32))
  assert np.asarray(jk)[12, 1] - np.asarray(jk)[0, 1] < -0.2   # the file's own: upside down


@pytest.mark.torch
def test_import_official_with_torch_tensors(tmp_path):
  pytest.importorskip("torch")
  rv = np.random.default_rng(1).normal(size=(21, 3)) * 0.4
  _write_official(tmp_path / "x_0_smpl.npy", rv, np.zeros(3), as_torch=True)
  ps = import_poses.import_poses([str(tmp_path)])
  np.testing.assert_allclose(ps.body_pose[0], rv.reshape(63), atol=1e-5)


def test_import_amass(tmp_path):
  rng = np.random.default_rng(0)
  poses = rng.normal(size=(10, 156)) * 0.3
  d = tmp_path / "jumping_jacks"
  d.mkdir()
  np.savez(d / "seq.npz", poses=poses, betas=np.ones(16), trans=np.zeros((10, 3)))
  np.savez(tmp_path / "b.npz", pose_body=poses[:4, 3:66], root_orient=poses[:4, :3])
  ps = import_poses.import_poses([str(d / "seq.npz")], stride=3)
  assert len(ps) == 4 and ps.phrase[0] == "jumping jacks"
  np.testing.assert_allclose(ps.body_pose, poses[::3, 3:66], atol=1e-6)
  np.testing.assert_array_equal(ps.global_orient, np.zeros((4, 3)))   # root orientation dropped
  kept = import_poses.import_poses([str(d / "seq.npz")], stride=3, keep_orient=True)
  np.testing.assert_allclose(kept.global_orient, poses[::3, :3], atol=1e-6)
  assert ps.betas.shape == (4, 10)
  ps2 = import_poses.import_poses([str(tmp_path / "b.npz")], phrase="dancing")
  np.testing.assert_allclose(ps2.body_pose, poses[:4, 3:66], atol=1e-6)
  assert set(ps2.phrase) == {"dancing"}


def test_import_malformed_files(tmp_path):
  np.save(tmp_path / "a_0_smpl.npy", dict(pose=np.zeros((1, 20, 6)), orient=np.zeros(6)))
  with pytest.raises(import_poses.PoseFileError, match="21 joints x 6D"):
    import_poses.import_poses([str(tmp_path / "a_0_smpl.npy")])
  np.save(tmp_path / "b_0_smpl.npy", np.zeros(5))
  with pytest.raises(import_poses.PoseFileError, match="pickled dict"):
    import_poses.import_poses([str(tmp_path / "b_0_smpl.npy")])
  np.save(tmp_path / "c_0_smpl.npy", dict(pose=np.zeros((1, 21, 6))))
  with pytest.raises(import_poses.PoseFileError, match="missing fields"):
    import_poses.import_poses([str(tmp_path / "c_0_smpl.npy")])
  bad = np.zeros((1, 21, 6))
  bad[0, 3, 1] = np.nan
  np.save(tmp_path / "d_0_smpl.npy", dict(pose=bad, orient=np.zeros(6)))
  with pytest.raises(import_poses.PoseFileError, match="NaN"):
    import_poses.import_poses([str(tmp_path / "d_0_smpl.npy")])
  np.savez(tmp_path / "e.npz", x=np.zeros(3))
  with pytest.raises(import_poses.PoseFileError, match="AMASS"):
    import_poses.import_poses([str(tmp_path / "e.npz")])
  np.savez(tmp_path / "f.npz", poses=np.zeros((5, 30)))
  with pytest.raises(import_poses.PoseFileError, match=">= 66"):
    import_poses.import_poses([str(tmp_path / "f.npz")])
  (tmp_path / "g_0_smpl.npy").write_bytes(b"garbage")
  with pytest.raises(import_poses.PoseFileError, match="cannot be read"):
    import_poses.import_poses([str(tmp_path / "g_0_smpl.npy")])
  with pytest.raises(FileNotFoundError):
    import_poses.import_poses([str(tmp_path / "missing")])
  # --skip_bad keeps going and imports the good ones.
  good = tmp_path / "good"
  good.mkdir()
  _write_official(good / "ok_0_smpl.npy", np.zeros((21, 3)), np.zeros(3))
  ps = import_poses.import_poses([str(tmp_path / "a_0_smpl.npy"), str(good)], skip_bad=True)
  assert len(ps) == 1


def test_phrase_from_name():
  assert import_poses.phrase_from_name("riding_a_bike_3_smpl") == "riding a bike"
  assert import_poses.phrase_from_name("holding_a_cup_smpl") == "holding a cup"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
  return tiny_clip.make_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_filter_persons_manifest(clip_dir, tmp_path):
  import imageio.v3 as iio
  d = tmp_path / "imgs"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    iio.imwrite(d / f"x_{i}.png", (rng.random((48, 40, 3)) * 255).astype(np.uint8))
  (d / "broken.png").write_bytes(b"no png")
  man = tmp_path / "manifest.jsonl"
  assert filter_persons.main(["--clip_dir", str(clip_dir), "--images", str(d), "--manifest",
                              str(man), "--threshold", "0.0"]) == 0
  rows = [json.loads(l) for l in man.read_text().splitlines()]
  assert len(rows) == 4
  by = {pathlib.Path(r["image"]).name: r for r in rows}
  assert not by["broken.png"]["kept"] and "unreadable" in by["broken.png"]["reason"]
  for r in rows:
    if r["image"].endswith("broken.png"):
      continue
    person_wins = r["top"] == filter_persons.PERSON
    assert r["kept"] == person_wins  # threshold 0: kept iff the person prompt wins
    assert 0.0 <= r["p_person"] <= 1.0 and r["reason"]
  # A threshold above 1 keeps nothing, and says why.
  rows = filter_persons.filter_images(clip_dir, sorted(d.glob("x_*.png")), man, threshold=1.01)
  assert not any(r["kept"] for r in rows)
  assert all("threshold" in r["reason"] or "scores higher" in r["reason"] for r in rows)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    filter_persons.filter_images(tmp_path / "no_clip", [], man)


def test_person_probabilities_are_a_softmax(clip_dir):
  from interfusion_jax.pose import clip as clip_lib
  clip = clip_lib.load_clip(clip_dir)
  imgs = np.random.default_rng(0).random((2, 32, 32, 3))
  p, prompts = filter_persons.person_probabilities(clip, imgs)
  assert p.shape == (2, len(prompts)) and prompts[0] == filter_persons.PERSON
  txt = clip_lib.text_features(clip, list(prompts))
  img = clip_lib.image_features(clip, imgs)
  logits = np.exp(np.asarray(clip.params["logit_scale"])) * img @ txt.T
  ref = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(p, ref / ref.sum(1, keepdims=True), atol=1e-5)


class _FakePipe:
  """Stands in for FlaxStableDiffusionPipeline: the image encodes the key."""

  def prepare_inputs(self, prompts):
    return np.array([[len(p), sum(map(ord, p)) % 997] for p in prompts])

  def __call__(self, ids, params, keys, num_inference_steps, guidance_scale, jit):
    keys = np.asarray(keys).astype(np.uint64)
    flat = keys.reshape(-1, 2)
    imgs = np.stack([np.random.default_rng(int(k[0]) * 2 ** 32 + int(k[1])).random((4, 4, 3))
                     for k in flat])
    shape = keys.shape[:-1] + (1,) if jit else (flat.shape[0],)
    return type("Out", (), {"images": imgs.reshape(shape + (4, 4, 3))})()


def test_synthesize_deterministic_resumable_sharded(tmp_path, monkeypatch):
  monkeypatch.setattr(synthesize_images, "load_pipeline", lambda d: (_FakePipe(), {}))
  phrases = ["riding a bike", "sitting on a chair", "holding a box"]
  w1 = synthesize_images.synthesize("sd", phrases, tmp_path / "a", per_phrase=2, mode="loop",
                                    log=lambda *_: None)
  assert len(w1) == 6
  assert (tmp_path / "a" / "riding_a_bike_1.png").is_file()
  # Resumable: nothing left to do; a deleted image is regenerated identically.
  assert synthesize_images.synthesize("sd", phrases, tmp_path / "a", per_phrase=2,
                                      log=lambda *_: None) == []
  import imageio.v3 as iio
  before = iio.imread(tmp_path / "a" / "holding_a_box_0.png")
  (tmp_path / "a" / "holding_a_box_0.png").unlink()
  w2 = synthesize_images.synthesize("sd", phrases, tmp_path / "a", per_phrase=2, mode="pmap",
                                    log=lambda *_: None)
  assert [p.name for p in w2] == ["holding_a_box_0.png"]
  np.testing.assert_array_equal(iio.imread(tmp_path / "a" / "holding_a_box_0.png"), before)
  # Sharded over the 4 host devices (with padding): same images as the loop.
  w3 = synthesize_images.synthesize("sd", phrases, tmp_path / "b", per_phrase=2, mode="pmap",
                                    log=lambda *_: None)
  assert len(w3) == 6
  for p in w3:
    np.testing.assert_array_equal(iio.imread(p), iio.imread(tmp_path / "a" / p.name))
  assert synthesize_images.image_seed("a", 0) != synthesize_images.image_seed("a", 1)
  assert synthesize_images.image_seed("a", 0) == synthesize_images.image_seed("a", 0)


@pytest.mark.slow
def test_synthesize_with_tiny_flax_stable_diffusion(tmp_path):
  import tiny_models
  import imageio.v3 as iio
  sd = tiny_models.make_flax_guidance_dir(tmp_path / "sd")
  w = synthesize_images.synthesize(sd, ["riding a bike", "holding a box"], tmp_path / "out",
                                   per_phrase=2, steps=1, mode="pmap", log=lambda *_: None)
  assert len(w) == 4
  imgs = [iio.imread(p) for p in w]
  assert imgs[0].shape == (16, 16, 3) and imgs[0].dtype == np.uint8
  assert not np.array_equal(imgs[0], imgs[1])  # different seeds, different images
  with pytest.raises(FileNotFoundError, match="lacks sub-folders"):
    synthesize_images.load_pipeline(tmp_path)
