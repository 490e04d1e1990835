"""Stage-2 body orientation (PAPER.md "Coordinates"): upright, facing +x.

Official stage 2 (InterGen/threestudio/systems/interfusion.py): global_orient
0 (aug_rot: (-pi/6, 0, 0)), then scene = (z, x, y) of SMPL-X (``matrix_rot``).
Everything is checked from the body's own joints against hand-built NumPy.
"""
import numpy as np
import pytest

from interfusion_jax.body import anchor, model
from interfusion_jax.prior import mannequin, placement

PELVIS, L_HIP, R_HIP, L_ANKLE, R_ANKLE, SPINE3, L_FOOT, R_FOOT, NECK, HEAD = (
    0, 1, 2, 7, 8, 9, 10, 11, 12, 15)
C30, S30 = np.cos(np.pi / 6), np.sin(np.pi / 6)
# scene = (z, x, y) of SMPL-X, written out by hand.
PERM = np.array([[0.0, 0.0, 1.0],
                 [1.0, 0.0, 0.0],
                 [0.0, 1.0, 0.0]])
# -pi/6 about SMPL-X's x axis: [[1, 0, 0], [0, cos, -sin], [0, sin, cos]] at -30 deg.
RX_M30 = np.array([[1.0, 0.0, 0.0],
                   [0.0, C30, S30],
                   [0.0, -S30, C30]])
# -pi/6 about the scene's y axis: [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]] at -30 deg.
RY_M30 = np.array([[C30, 0.0, -S30],
                   [0.0, 1.0, 0.0],
                   [S30, 0.0, C30]])


def _anchor_joints(**spec):
  body = model.load_body_model("default", "neutral")
  anc = anchor.prepare_anchor(body, np.zeros(63), None,
                              anchor.AnchorSpec(resolution=16, cache_dir=None, **spec))
  return np.asarray(anc.joints, np.float64), np.asarray(anc.vertices, np.float64)


@pytest.fixture(scope="module")
def plain():
  return _anchor_joints()


def _flat_cos(v, target=(1.0, 0.0, 0.0)):
  v = np.array(v, np.float64)
  v[..., 2] = 0.0
  return v @ np.asarray(target) / np.linalg.norm(v, axis=-1)


def _check_faces_plus_x(j):
  forward = np.cross(j[L_HIP] - j[R_HIP], [0.0, 0.0, 1.0])      # left x up
  assert _flat_cos(forward) > 0.99
  assert _flat_cos(j[L_HIP] - j[R_HIP], (0.0, 1.0, 0.0)) > 0.99  # left is +y
  for ankle, foot in ((L_ANKLE, L_FOOT), (R_ANKLE, R_FOOT)):      # toes point forward
    assert _flat_cos(j[foot] - j[ankle]) > 0.9
  assert int(np.argmax(j[:22, 2])) == HEAD                         # head on top (+z)
  assert j[HEAD, 2] > j[NECK, 2] > j[SPINE3, 2] > j[PELVIS, 2] > j[L_ANKLE, 2]
  # prior.placement's heading (from the hips); the mannequin's hips are 2 deg off.
  np.testing.assert_allclose(placement.body_frame(j)[:, 0], [1.0, 0.0, 0.0], atol=0.05)


def test_scene_transform_is_the_official_permutation():
  rng = np.random.default_rng(0)
  v, j = rng.normal(size=(50, 3)), rng.normal(size=(22, 3))
  for aug_rot, rot in ((False, PERM), (True, PERM @ RX_M30)):
    for aug_trans in (False, True):
      gv, gj = anchor.scene_transform(v, j, aug_rot=aug_rot, aug_trans=aug_trans)
      wv, wj = v @ rot.T, j @ rot.T
      centre = wj[0] if aug_trans else wv.mean(0)
      np.testing.assert_allclose(gv, wv - centre, atol=1e-12)
      np.testing.assert_allclose(gj, wj - centre, atol=1e-12)
  # Component by component: scene_x = smpl_z, scene_y = smpl_x, scene_z = smpl_y.
  gv, _ = anchor.scene_transform(v, j, aug_rot=False, aug_trans=False)
  np.testing.assert_allclose(gv, (v - v.mean(0))[:, [2, 0, 1]], atol=1e-12)
  np.testing.assert_allclose(anchor.SMPL_TO_SCENE, PERM)


def test_default_body_anchor_faces_plus_x(plain):
  j, v = plain
  _check_faces_plus_x(j)
  np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)


def test_aug_rot_leans_back_30_degrees_about_scene_y(plain):
  j, v = plain
  rj, rv = _anchor_joints(aug_rot=True)
  # Rx(-pi/6) in SMPL-X is Ry(-pi/6) in the scene; both bodies are centred at
  # their mean vertex, so they differ by that rotation alone.
  np.testing.assert_allclose(rj, j @ RY_M30.T, atol=2e-5)
  np.testing.assert_allclose(rv, v @ RY_M30.T, atol=2e-5)
  # The spine (pelvis -> neck) tilts from +z towards -x (backwards) by 30 deg.
  tilt = lambda s: np.degrees(np.arctan2(s[0], s[2]))
  assert abs(j[NECK, 1] - j[PELVIS, 1]) < 1e-5                    # spine in the xz plane
  np.testing.assert_allclose(tilt(rj[NECK] - rj[PELVIS]) - tilt(j[NECK] - j[PELVIS]),
                             -30.0, atol=1e-3)
  assert tilt(rj[NECK] - rj[PELVIS]) < -20.0
  forward = np.cross(rj[L_HIP] - rj[R_HIP], [0.0, 0.0, 1.0])      # still faces +x
  assert _flat_cos(forward) > 0.99


def test_aug_trans_centres_the_root_and_keeps_the_heading(plain):
  j, _ = plain
  tj, _ = _anchor_joints(aug_trans=True)
  np.testing.assert_allclose(tj[PELVIS], 0.0, atol=1e-6)
  np.testing.assert_allclose(tj - tj[PELVIS], j - j[PELVIS], atol=1e-5)


def test_mannequin_faces_plus_x():
  body = mannequin.posed_mannequin(np.zeros(63))
  _check_faces_plus_x(body.joints)
  np.testing.assert_allclose(mannequin.to_scene(np.eye(3)), PERM.T)   # rows: images of e_i
