"""Tests for interfusion_jax.pose.library (hand-authored key poses)."""
import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import pose_fixtures
from interfusion_jax.body import lbs
from interfusion_jax.pose import library

# SMPL-X joint ids (full skeleton, 0 = pelvis).
PELVIS, L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 0, 1, 2, 4, 5, 7, 8
HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 15, 16, 17, 18, 19, 20, 21


@pytest.fixture(scope="module")
def body():
  return pose_fixtures.capsule_body()


_pose_jit = jax.jit(lambda body, bp, go: lbs.pose_body(body, bp, go)[1])


def _joints(body, bp, go=None):
  go = np.zeros(3, np.float32) if go is None else go
  return np.asarray(_pose_jit(body, np.asarray(bp, np.float32), np.asarray(go, np.float32)))


def _dir(j, a, b):
  d = j[b] - j[a]
  return d / np.linalg.norm(d)


def test_library_size_and_shapes():
  lib = library.build_library()
  assert len(lib) >= 40
  labels = [p.label for p in lib]
  assert len(set(labels)) == len(labels)
  for p in lib:
    assert p.body_pose.shape == (63,) and p.global_orient.shape == (3,)
    assert np.all(np.isfinite(p.body_pose))
    assert np.abs(p.body_pose).max() < np.pi + 1e-5
    assert p.phrases[0] == p.label


@pytest.mark.parametrize("required", [
    "sitting on a chair", "sitting on a sofa", "sitting on a bench", "riding a bike",
    "riding a motorcycle", "riding a horse", "holding a box", "lifting a box",
    "carrying a box", "playing the guitar", "playing the violin", "reading a book",
    "typing on a laptop", "lying on a bed", "pushing a cart", "kicking a ball",
    "throwing a ball", "holding a ball", "swinging a bat", "swinging a racket",
    "skateboarding", "surfing", "holding an umbrella", "talking on a phone",
    "drinking from a cup", "walking a dog"])
def test_library_covers_required_interactions(required):
  phrases = {ph for p in library.build_library() for ph in p.phrases}
  assert any(required in ph for ph in phrases), required


def test_min_rotation_maps_a_to_b():
  rng = np.random.default_rng(0)
  for _ in range(20):
    a, b = rng.normal(size=3), rng.normal(size=3)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    r = library.min_rotation(a, b)
    np.testing.assert_allclose(r.apply(a), b, atol=1e-9)
    # Minimal: the angle equals the angle between a and b.
    np.testing.assert_allclose(r.magnitude(), np.arccos(np.clip(a @ b, -1, 1)), atol=1e-9)
  r = library.min_rotation(np.array([0, 1.0, 0]), np.array([0, -1.0, 0]))
  np.testing.assert_allclose(r.apply([0, 1.0, 0]), [0, -1, 0], atol=1e-9)


def test_make_pose_segment_directions_by_forward_kinematics(body):
  """The LBS joints of make_pose follow the requested body-frame directions."""
  rest_j = np.asarray(body.j_regressor @ body.v_template)
  rest = dict(l_thigh=_dir(rest_j, L_HIP, L_KNEE), l_shin=_dir(rest_j, L_KNEE, L_ANKLE),
              r_upper=_dir(rest_j, R_SHOULDER, R_ELBOW), r_fore=_dir(rest_j, R_ELBOW, R_WRIST))
  rng = np.random.default_rng(1)
  for _ in range(3):
    dirs = {k: rng.normal(size=3) for k in ("l_thigh", "l_shin", "r_upper", "r_fore")}
    spine = tuple(rng.uniform(-30, 30, size=3))
    bp, go = library.make_pose(spine=spine, feet_flat=False, rest=rest, **dirs)
    j = _joints(body, bp, go)
    unit = {k: v / np.linalg.norm(v) for k, v in dirs.items()}
    np.testing.assert_allclose(_dir(j, L_HIP, L_KNEE), unit["l_thigh"], atol=2e-3)
    np.testing.assert_allclose(_dir(j, L_KNEE, L_ANKLE), unit["l_shin"], atol=2e-3)
    np.testing.assert_allclose(_dir(j, R_SHOULDER, R_ELBOW), unit["r_upper"], atol=2e-3)
    np.testing.assert_allclose(_dir(j, R_ELBOW, R_WRIST), unit["r_fore"], atol=2e-3)
    # Without the body's rest directions the nominal ones are used: close, not exact.
    bp2, _ = library.make_pose(spine=spine, feet_flat=False, **dirs)
    j2 = _joints(body, bp2, go)
    assert _dir(j2, L_HIP, L_KNEE) @ unit["l_thigh"] > 0.97


def test_axis_conventions(body):
  """Hip flexion is -x, knee flexion +x, L shoulder -z lowers the arm (issue text)."""
  bp, _ = library.make_pose(l_thigh=(0, 0, 1), l_shin=(0, -1, 0), feet_flat=False)
  bp = bp.reshape(21, 3)
  assert bp[library.J["L_hip"], 0] < -1.4 and bp[library.J["L_knee"], 0] > 1.4
  bp, _ = library.make_pose(l_upper=(0, -1, 0), r_upper=(0, -1, 0))
  bp = bp.reshape(21, 3)
  assert bp[library.J["L_shoulder"], 2] < -1.4 and bp[library.J["R_shoulder"], 2] > 1.4


def _label_pose(label):
  return next(p for p in library.build_library() if p.label == label)


def test_key_poses_are_physically_sensible(body):
  sit = _joints(body, _label_pose("sitting on a chair").body_pose)
  # thighs horizontal and forward, shins down
  assert sit[L_KNEE, 2] - sit[L_HIP, 2] > 0.3 and abs(sit[L_KNEE, 1] - sit[L_HIP, 1]) < 0.1
  assert sit[L_ANKLE, 1] < sit[L_KNEE, 1] - 0.3
  stand = _joints(body, _label_pose("standing").body_pose)
  assert stand[L_WRIST, 1] < stand[L_SHOULDER, 1] - 0.4  # arms down
  assert stand[HEAD, 1] - stand[L_ANKLE, 1] > 1.3
  up = _joints(body, _label_pose("raising both arms").body_pose)
  assert up[L_WRIST, 1] > up[HEAD, 1] and up[R_WRIST, 1] > up[HEAD, 1]
  lie = _label_pose("lying on a bed")
  j = _joints(body, lie.body_pose, lie.global_orient)
  assert abs(j[HEAD, 1] - j[L_ANKLE, 1]) < 0.2  # horizontal
  assert np.linalg.norm(j[HEAD] - j[L_ANKLE]) > 1.3
  phone = _joints(body, _label_pose("talking on a phone").body_pose)
  assert np.linalg.norm(phone[R_WRIST] - phone[HEAD]) < 0.3  # hand at the head
  kick = _joints(body, _label_pose("kicking a ball").body_pose)
  assert kick[R_ANKLE, 2] - kick[R_HIP, 2] > 0.4  # kicking leg forward
  bike = _label_pose("riding a bike").body_pose.reshape(21, 3)
  assert bike[library.J["spine1"], 0] > 0  # leaning forward


def test_augment_is_deterministic_and_small():
  p = _label_pose("riding a bike").body_pose
  a = library.augment(p, 16, seed=3)
  b = library.augment(p, 16, seed=3)
  c = library.augment(p, 16, seed=4)
  assert a.shape == (16, 63)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  # The relative rotation of every joint has a small angle ~ sigma * sqrt(3).
  rel = (Rotation.from_rotvec(a.reshape(-1, 3)) *
         Rotation.from_rotvec(np.tile(p.reshape(21, 3), (16, 1))).inv()).magnitude()
  assert 0.03 < rel.mean() < 0.15 and rel.max() < 0.5
