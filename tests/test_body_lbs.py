"""LBS / FK: conformance with the smplx package and closed-form checks."""
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.body import lbs, model
from tests.body_fixtures import random_model_arrays, write_chumpy_smpl_pkl


def _rotvec_to_matrix_np(v):
  theta = np.linalg.norm(v)
  if theta < 1e-12:
    return np.eye(3)
  k = v / theta
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def test_axis_angle_matches_scipy_rotation():
  from scipy.spatial.transform import Rotation
  v = np.random.default_rng(0).normal(size=(20, 3))
  np.testing.assert_allclose(lbs.axis_angle_to_matrix(jnp.asarray(v, jnp.float32)),
                             Rotation.from_rotvec(v).as_matrix(), atol=2e-6)


def test_zero_pose_is_template_and_root_rotation_is_rigid():
  raw = random_model_arrays(1, 55)
  raw["posedirs"] *= 0  # irrelevant for a rigid check; keep it exact
  body = model.body_model_from_arrays(raw)
  zero = np.zeros(63, np.float32)
  v, j = lbs.pose_body(body, zero, flat_hand_mean=True)
  np.testing.assert_allclose(v, raw["v_template"], atol=1e-6)
  np.testing.assert_allclose(j, raw["J_regressor"] @ raw["v_template"], atol=1e-6)
  go = np.array([0.3, -1.1, 0.5])
  v2, j2 = lbs.pose_body(body, zero, go, flat_hand_mean=True)
  r = _rotvec_to_matrix_np(go)
  root = j[0]
  np.testing.assert_allclose(v2, (np.asarray(v) - root) @ r.T + root, atol=1e-5)


def test_single_joint_bend_moves_only_its_subtree():
  raw = random_model_arrays(2, 55)
  raw["posedirs"] *= 0
  # Hard skinning: each vertex follows one joint.
  owner = np.arange(raw["weights"].shape[0]) % 55
  raw["weights"] = np.eye(55)[owner]
  body = model.body_model_from_arrays(raw)
  pose = np.zeros(63, np.float32)
  pose[3 * (4 - 1):3 * 4] = [0.9, 0.0, 0.0]   # joint 4 = left knee
  v, j = lbs.pose_body(body, pose, flat_hand_mean=True)
  j_rest = raw["J_regressor"] @ raw["v_template"]
  r = _rotvec_to_matrix_np(np.array([0.9, 0, 0]))
  subtree = {4, 7, 10}
  for vi, o in enumerate(owner):
    want = raw["v_template"][vi]
    if o in subtree:
      want = r @ (want - j_rest[4]) + j_rest[4]
    np.testing.assert_allclose(v[vi], want, atol=1e-5)


def test_pose_errors_are_clear():
  with pytest.raises(lbs.PoseError, match="63"):
    lbs.check_pose(np.zeros(69))
  bad = np.zeros(63)
  bad[5] = np.nan
  with pytest.raises(lbs.PoseError, match="NaN"):
    lbs.check_pose(bad)
  with pytest.raises(lbs.PoseError, match="global_orient"):
    lbs.check_pose(np.zeros(63), np.zeros(4))


def _smplx_reference(smplx_model, torch, body_pose, go, transl, betas, lh, rh):
  t = lambda a: torch.tensor(np.asarray(a, np.float32)[None])
  kwargs = dict(body_pose=t(body_pose), global_orient=t(go), transl=t(transl),
                betas=t(betas))
  if lh is not None:
    kwargs.update(left_hand_pose=t(lh), right_hand_pose=t(rh))
  with torch.no_grad():
    out = smplx_model(**kwargs)
  return out.vertices[0].numpy(), out.joints[0].numpy()


def _smplx_kwargs(torch):
  return dict(use_pca=False, num_betas=10, batch_size=1, dtype=torch.float32)


@pytest.mark.torch
@pytest.mark.parametrize("fmt", ["smplx_npz", "smplx_pkl", "smpl_chumpy_pkl"])
def test_matches_smplx_package(tmp_path, fmt):
  torch = pytest.importorskip("torch")
  smplx = pytest.importorskip("smplx")
  num_joints = 24 if fmt.startswith("smpl_") else 55
  raw = random_model_arrays(3, num_joints)
  if fmt == "smplx_npz":
    path = tmp_path / "SMPLX_NEUTRAL.npz"
    np.savez(path, **raw)
    ref = smplx.SMPLX(str(path), ext="npz", **_smplx_kwargs(torch))
  elif fmt == "smplx_pkl":
    path = tmp_path / "SMPLX_NEUTRAL.pkl"
    with open(path, "wb") as f:
      pickle.dump(raw, f, protocol=2)
    ref = smplx.SMPLX(str(path), ext="pkl", **_smplx_kwargs(torch))
  else:
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    write_chumpy_smpl_pkl(path, raw)
    struct = smplx.utils.Struct(**raw)   # smplx reads the same plain arrays
    ref = smplx.SMPL(str(path), data_struct=struct, num_betas=10,
                     dtype=torch.float32)
  # Our tiny mesh has no SMPL-X keypoint vertices: point smplx's extra joints at 0.
  n_extra = ref.vertex_joint_selector.extra_joints_idxs.shape[0]
  ref.vertex_joint_selector.extra_joints_idxs = torch.zeros(n_extra, dtype=torch.long)

  body = model.load_body_model(path)
  assert body.num_joints == num_joints
  rng = np.random.default_rng(7)
  pose_fn = jax.jit(lambda b, bp, go, tr, be, lh, rh: lbs.pose_body(
      b, bp, go, betas=be, transl=tr, left_hand_pose=lh, right_hand_pose=rh))
  for _ in range(3):
    bp = rng.normal(size=63) * 0.5
    go = rng.normal(size=3)
    tr = rng.normal(size=3)
    be = rng.normal(size=10)
    if num_joints == 55:
      lh, rh = rng.normal(size=45) * 0.3, rng.normal(size=45) * 0.3
      v_ref, j_ref = _smplx_reference(ref, torch, bp, go, tr, be, lh, rh)
      v, j = pose_fn(body, bp, go, tr, be, lh, rh)
    else:
      v_ref, j_ref = _smplx_reference(ref, torch, np.concatenate([bp, np.zeros(6)]),
                                      go, tr, be, None, None)
      v, j = pose_fn(body, bp, go, tr, be, None, None)
    np.testing.assert_allclose(v, v_ref, atol=1e-5)
    np.testing.assert_allclose(j, j_ref[:num_joints], atol=1e-5)
