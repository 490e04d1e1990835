"""Body-model loading: file formats, chumpy-free SMPL, the default body, errors."""
import pickle
import sys

import numpy as np
import pytest

from interfusion_jax.body import lbs, model, poses
from tests.body_fixtures import random_model_arrays, write_chumpy_smpl_pkl


def test_smpl_chumpy_pkl_loads_without_chumpy(tmp_path):
  raw = random_model_arrays(0, 24)
  path = tmp_path / "SMPL_NEUTRAL.pkl"
  write_chumpy_smpl_pkl(path, raw)
  assert "chumpy" not in sys.modules
  with pytest.raises(ModuleNotFoundError):    # a plain unpickler needs chumpy
    with open(path, "rb") as f:
      pickle.load(f, encoding="latin1")
  body = model.load_body_model(path)
  assert "chumpy" not in sys.modules and body.kind == "smpl"
  np.testing.assert_allclose(body.v_template, raw["v_template"], rtol=1e-6)
  np.testing.assert_allclose(body.j_regressor, raw["J_regressor"], rtol=1e-6)   # was sparse
  np.testing.assert_allclose(body.shapedirs, raw["shapedirs"][:, :, :10], rtol=1e-6)
  assert body.parents == tuple([-1] + list(np.asarray(raw["kintree_table"][0][1:])))


@pytest.mark.parametrize("ext", ["npz", "pkl"])
def test_smplx_formats_and_directory_resolution(tmp_path, ext):
  raw = random_model_arrays(1, 55)
  path = tmp_path / f"SMPLX_MALE.{ext}"
  if ext == "npz":
    np.savez(path, **raw)
  else:
    with open(path, "wb") as f:
      pickle.dump(raw, f, protocol=2)
  body = model.load_body_model(str(tmp_path), gender="male")
  assert body.kind == "smplx" and body.num_joints == 55 and body.num_betas == 10
  np.testing.assert_allclose(body.hands_mean[:45], raw["hands_meanl"], rtol=1e-6)
  assert body.posedirs.shape == (486, 3 * raw["v_template"].shape[0])


def test_missing_files_name_the_path_and_workspace(tmp_path):
  with pytest.raises(model.BodyModelNotFoundError, match="WORKSPACE.md") as e:
    model.load_body_model(str(tmp_path / "nope" / "SMPLX_NEUTRAL.npz"))
  assert "nope/SMPLX_NEUTRAL.npz" in str(e.value)
  with pytest.raises(model.BodyModelNotFoundError, match="SMPLX_FEMALE"):
    model.load_body_model(str(tmp_path), gender="female")


def test_malformed_files_are_rejected(tmp_path):
  raw = random_model_arrays(2, 55)
  del raw["weights"]
  path = tmp_path / "bad.npz"
  np.savez(path, **raw)
  with pytest.raises(model.BodyModelError, match="weights"):
    model.load_body_model(path)
  raw = random_model_arrays(2, 55)
  raw["J_regressor"] = raw["J_regressor"][:, :-1]
  np.savez(path, **raw)
  with pytest.raises(model.BodyModelError, match="J_regressor"):
    model.load_body_model(path)
  with pytest.raises(model.BodyModelError, match="extension"):
    model.load_body_model(__file__)


def test_default_body_is_a_t_posed_closed_smplx_body():
  body = model.load_body_model("default")
  assert body.kind == "smplx" and body.num_joints == 55
  v, f = np.asarray(body.v_template), np.asarray(body.faces)
  assert 3000 <= v.shape[0] <= 20000
  height = v[:, 1].max() - v[:, 1].min()
  assert 1.6 < height < 1.8
  np.testing.assert_allclose(body.lbs_weights.sum(1), 1.0, atol=1e-5)
  # Watertight, consistently oriented: each directed edge exactly once.
  e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  assert len({tuple(x) for x in e}) == len(e)
  assert {tuple(x) for x in e} == {(b, a) for a, b in e}
  j = body.j_regressor @ body.v_template
  # T-pose: shoulder, elbow and wrist on a horizontal line along +-x.
  for shoulder, elbow, wrist, sign in ((16, 18, 20, 1), (17, 19, 21, -1)):
    arm = j[wrist] - j[shoulder]
    assert sign * arm[0] > 0.4 and np.abs(arm[1:]).max() < 0.02
    assert sign * (j[elbow] - j[shoulder])[0] > 0.2
  assert j[15, 1] > j[12, 1] > j[9, 1] > j[0, 1] > j[4, 1] > j[7, 1]   # head..ankle
  assert j[1, 0] > 0 > j[2, 0]                                          # +x is left


def test_default_body_bends_at_the_knee_only_below():
  body = model.load_body_model("default")
  pose = np.zeros(63, np.float32)
  pose[3 * 3] = 1.5                                  # left knee (joint 4), +x
  v0, j0 = lbs.pose_body(body, np.zeros(63, np.float32))
  v1, j1 = lbs.pose_body(body, pose)
  moved = np.linalg.norm(np.asarray(v1) - np.asarray(v0), axis=1) > 1e-4
  mid_thigh = 0.5 * (j0[1, 1] + j0[4, 1])
  assert np.asarray(v0)[moved, 1].max() < mid_thigh         # only the lower thigh and below
  assert (np.asarray(body.lbs_weights)[moved][:, [4, 7, 10]].sum(1) > 0).all()
  assert j1[7, 2] < j0[7, 2] - 0.3                          # ankle swings backwards
  np.testing.assert_allclose(j1[:4], j0[:4], atol=1e-6)


def test_demo_poses_are_valid():
  assert len(poses.DEMO_POSES) == 10
  for bp, go in poses.DEMO_POSES.values():
    lbs.check_pose(bp, go)
