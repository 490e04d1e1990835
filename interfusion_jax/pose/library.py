"""A hand-authored library of interaction key poses (PAPER.md "Stage 1").

The built-in library lets a user with no CLIP weights and no Syn-HOI data get
a sensible anchor pose. Each entry is an SMPL-X body pose (63-D: 21 joints x
axis-angle, SMPL-X body joint order) plus a global orientation (3-D), labelled
with phrases for text retrieval.

Poses are authored with a small direction language instead of raw angles:
limb segments (thigh, shin, upper arm, forearm) are given as unit directions
in the *body frame* of the rest T-pose (x = the body's left, y = up, z = the
direction the body faces), and converted to joint rotations by minimal
rotations along the kinematic chain. Torso, neck and head are given as
angles in degrees (flexion about x, twist about y, side bend about z).

Body joint order (index into the 21-joint body pose, SMPL-X joint id - 1):
  0 L_hip 1 R_hip 2 spine1 3 L_knee 4 R_knee 5 spine2 6 L_ankle 7 R_ankle
  8 spine3 9 L_foot 10 R_foot 11 neck 12 L_collar 13 R_collar 14 head
  15 L_shoulder 16 R_shoulder 17 L_elbow 18 R_elbow 19 L_wrist 20 R_wrist
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

JOINT_NAMES = (
    "L_hip", "R_hip", "spine1", "L_knee", "R_knee", "spine2", "L_ankle",
    "R_ankle", "spine3", "L_foot", "R_foot", "neck", "L_collar", "R_collar",
    "head", "L_shoulder", "R_shoulder", "L_elbow", "R_elbow", "L_wrist",
    "R_wrist")
J = {n: i for i, n in enumerate(JOINT_NAMES)}
NUM_BODY_JOINTS = 21
POSE_DIM = 3 * NUM_BODY_JOINTS

# Rest-pose bone directions in the body frame (T-pose, y up, facing +z).
_REST_LEG = np.array([0.0, -1.0, 0.0])
_REST_L_ARM = np.array([1.0, 0.0, 0.0])
_REST_R_ARM = np.array([-1.0, 0.0, 0.0])
_MAX_FLAT_ANKLE_DEG = 40.0


@dataclasses.dataclass(frozen=True)
class LibraryPose:
  """One library entry.

  Attributes:
    label: the canonical interaction phrase, e.g. "riding a bike".
    phrases: all phrases (label first) that describe the pose.
    body_pose: [63] axis-angle body pose.
    global_orient: [3] axis-angle global orientation (body frame, y up).
  """
  label: str
  phrases: tuple[str, ...]
  body_pose: np.ndarray
  global_orient: np.ndarray


def _unit(v: Sequence[float]) -> np.ndarray:
  v = np.asarray(v, dtype=np.float64)
  n = np.linalg.norm(v)
  if n < 1e-9:
    raise ValueError(f"Direction {v} has zero length.")
  return v / n


def min_rotation(a: np.ndarray, b: np.ndarray) -> Rotation:
  """The smallest rotation taking unit vector a [3] onto unit vector b [3]."""
  a, b = _unit(a), _unit(b)
  axis = np.cross(a, b)
  s, c = np.linalg.norm(axis), float(np.dot(a, b))
  if s < 1e-9:
    if c > 0:
      return Rotation.identity()
    perp = np.cross(a, [1.0, 0.0, 0.0])
    if np.linalg.norm(perp) < 1e-6:
      perp = np.cross(a, [0.0, 0.0, 1.0])
    return Rotation.from_rotvec(_unit(perp) * np.pi)
  return Rotation.from_rotvec(axis / s * np.arctan2(s, c))


def _euler(deg: Sequence[float]) -> Rotation:
  """(flex about x, twist about y, side bend about z) in degrees."""
  return Rotation.from_euler("xyz", np.asarray(deg, dtype=np.float64), degrees=True)


def _limb(parent: Rotation, rest_upper: np.ndarray, rest_lower: np.ndarray, upper,
          lower) -> tuple[Rotation, Rotation]:
  """Local rotations of a 2-segment limb from body-frame segment directions.

  Args:
    parent: global rotation of the limb's parent frame.
    rest_upper, rest_lower: [3] rest directions of the two segments.
    upper, lower: [3] target body-frame directions (lower defaults to upper).

  Returns:
    (local rotation of the proximal joint, local rotation of the distal joint).
  """
  du = parent.inv().apply(_unit(upper))
  dl = parent.inv().apply(_unit(lower if lower is not None else upper))
  r_prox = min_rotation(rest_upper, du)
  r_dist_parentframe = min_rotation(r_prox.apply(_unit(rest_lower)), dl)
  r_dist = r_prox.inv() * r_dist_parentframe * r_prox
  return r_prox, r_dist


def make_pose(*, spine=(0, 0, 0), neck=(0, 0, 0), head=(0, 0, 0),
              l_thigh=(0, -1, 0), l_shin=None, r_thigh=(0, -1, 0), r_shin=None,
              l_upper=(0.25, -1, 0), l_fore=None, r_upper=(-0.25, -1, 0),
              r_fore=None, l_wrist=(0, 0, 0), r_wrist=(0, 0, 0),
              feet_flat=True, orient=(0, 0, 0),
              rest: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
  """Builds an SMPL-X body pose from segment directions.

  Args:
    spine: total torso (flex, twist, side) in degrees, spread over spine1-3;
      positive flex bends forward, positive twist turns the chest to the
      body's left, positive side bend leans to the body's right.
    neck, head: (flex, twist, side) in degrees; positive flex looks down.
    l_thigh, l_shin, r_thigh, r_shin: body-frame [3] directions of the leg
      segments (None = continue the previous segment).
    l_upper, l_fore, r_upper, r_fore: body-frame [3] directions of the arm
      segments (None = straight arm).
    l_wrist, r_wrist: wrist (x, y, z) Euler angles in degrees.
    feet_flat: turn the ankles (up to 40 deg) towards a flat foot.
    orient: global orientation Euler angles (x, y, z) in degrees.
    rest: optional rest-pose segment directions {"l_thigh": [3], ...} of a
      specific body (default: legs straight down, arms along +-x).

  Returns:
    body_pose [63] and global_orient [3], float32 axis-angle.
  """
  rots = [Rotation.identity() for _ in range(NUM_BODY_JOINTS)]
  part = _euler(np.asarray(spine, dtype=np.float64) / 3.0)
  for name in ("spine1", "spine2", "spine3"):
    rots[J[name]] = part
  rots[J["neck"]] = _euler(neck)
  rots[J["head"]] = _euler(head)
  chest = part * part * part
  ident = Rotation.identity()
  rest = rest or {}
  for side, thigh, shin in (("L", l_thigh, l_shin), ("R", r_thigh, r_shin)):
    s = side.lower()
    hip, knee = _limb(ident, rest.get(f"{s}_thigh", _REST_LEG),
                      rest.get(f"{s}_shin", _REST_LEG), thigh, shin)
    rots[J[f"{side}_hip"]], rots[J[f"{side}_knee"]] = hip, knee
    if feet_flat:
      shin_global = hip * knee
      want = shin_global.inv()  # the ankle rotation that makes the foot flat
      ang = np.linalg.norm(want.as_rotvec())
      frac = min(1.0, np.deg2rad(_MAX_FLAT_ANKLE_DEG) / max(ang, 1e-9))
      rots[J[f"{side}_ankle"]] = Rotation.from_rotvec(want.as_rotvec() * frac)
  for side, rest_arm, upper, fore, wrist in (
      ("L", _REST_L_ARM, l_upper, l_fore, l_wrist),
      ("R", _REST_R_ARM, r_upper, r_fore, r_wrist)):
    s = side.lower()
    sh, el = _limb(chest, rest.get(f"{s}_upper", rest_arm),
                   rest.get(f"{s}_fore", rest_arm), upper, fore)
    rots[J[f"{side}_shoulder"]], rots[J[f"{side}_elbow"]] = sh, el
    rots[J[f"{side}_wrist"]] = _euler(wrist)
  body = np.concatenate([r.as_rotvec() for r in rots]).astype(np.float32)
  glob = _euler(orient).as_rotvec().astype(np.float32)
  return body, glob


# ---------------------------------------------------------------------------
# The library. Directions: x = body's left, y = up, z = forward.
# ---------------------------------------------------------------------------
_SIT = dict(l_thigh=(0.08, 0, 1), l_shin=(0, -1, 0.05),
            r_thigh=(-0.08, 0, 1), r_shin=(0, -1, 0.05))
_WALK = dict(l_thigh=(0, -1, 0.35), l_shin=(0, -1, 0.05),
             r_thigh=(0, -1, -0.3), r_shin=(0, -1, -0.45))
_ARMS_DOWN = dict(l_upper=(0.2, -1, 0), r_upper=(-0.2, -1, 0))


def _entries() -> list[tuple[tuple[str, ...], dict]]:
  """(phrases, make_pose kwargs) of every library pose."""
  e = []

  def add(phrases, **kw):
    e.append((tuple(phrases), kw))

  # --- Standing / locomotion. ---------------------------------------------
  add(["standing", "standing still", "posing for a photo", "waiting",
       "standing next to a car", "standing beside a table"], **_ARMS_DOWN)
  add(["walking", "walking down the street", "strolling"],
      **_WALK, l_upper=(0.15, -1, -0.3), r_upper=(-0.15, -1, 0.35),
      r_fore=(-0.1, -1, 0.6))
  add(["running", "jogging", "sprinting"],
      l_thigh=(0, -0.6, 0.8), l_shin=(0, -1, -0.2), r_thigh=(0, -1, -0.4),
      r_shin=(0, -0.25, -1), spine=(12, 0, 0), l_upper=(0.1, -1, -0.6),
      l_fore=(0, 0.4, 1), r_upper=(-0.1, -1, 0.6), r_fore=(0, 1, 0.6))
  add(["jumping", "jumping in the air", "jumping on a trampoline"],
      l_thigh=(0.1, -0.5, 1), l_shin=(0, -1, -0.4), r_thigh=(-0.1, -0.5, 1),
      r_shin=(0, -1, -0.4), l_upper=(0.4, 1, 0.1), r_upper=(-0.4, 1, 0.1))
  add(["walking a dog", "walking the dog on a leash", "holding a leash"],
      **_WALK, l_upper=(0.15, -1, -0.25),
      r_upper=(-0.15, -1, 0.4), r_fore=(-0.1, -0.6, 1))
  # --- Sitting. ------------------------------------------------------------
  add(["sitting on a chair", "sitting on a stool", "sitting at a table"],
      **_SIT, l_upper=(0.1, -1, 0.1), l_fore=(0.05, -0.2, 1),
      r_upper=(-0.1, -1, 0.1), r_fore=(-0.05, -0.2, 1))
  add(["sitting on a sofa", "relaxing on a couch", "lounging on a sofa"],
      spine=(-15, 0, 0), l_thigh=(0.2, 0.2, 1), l_shin=(0.05, -1, 0.3),
      r_thigh=(-0.2, 0.2, 1), r_shin=(-0.05, -1, 0.3),
      l_upper=(0.6, -1, -0.1), l_fore=(0.3, -0.3, 1),
      r_upper=(-0.6, -1, -0.1), r_fore=(-0.3, -0.3, 1))
  add(["sitting on a bench", "sitting on a park bench", "resting on a bench"],
      spine=(25, 0, 0), l_thigh=(0.25, 0, 1), l_shin=(0.05, -1, 0.1),
      r_thigh=(-0.25, 0, 1), r_shin=(-0.05, -1, 0.1),
      l_upper=(0.05, -1, 0.5), l_fore=(-0.3, -0.2, 1),
      r_upper=(-0.05, -1, 0.5), r_fore=(0.3, -0.2, 1))
  add(["typing on a laptop", "using a computer", "working on a laptop"],
      **_SIT, spine=(10, 0, 0), head=(15, 0, 0),
      l_upper=(0.15, -1, 0.25), l_fore=(-0.15, 0, 1),
      r_upper=(-0.15, -1, 0.25), r_fore=(0.15, 0, 1))
  add(["reading a book", "reading a newspaper", "holding a book"],
      **_SIT, head=(25, 0, 0), neck=(10, 0, 0),
      l_upper=(0.15, -1, 0.35), l_fore=(-0.3, 0.6, 1),
      r_upper=(-0.15, -1, 0.35), r_fore=(0.3, 0.6, 1))
  add(["playing the piano", "playing a keyboard", "playing an organ"],
      **_SIT, spine=(8, 0, 0), l_upper=(0.2, -1, 0.45), l_fore=(0.05, -0.15, 1),
      r_upper=(-0.2, -1, 0.45), r_fore=(-0.05, -0.15, 1))
  add(["playing the drums", "drumming on a drum kit"],
      **_SIT, l_upper=(0.45, -1, 0.3), l_fore=(0.1, 0.3, 1),
      r_upper=(-0.45, -1, 0.3), r_fore=(-0.1, 0.6, 1))
  add(["driving a car", "driving a truck", "steering a wheel"],
      spine=(-10, 0, 0), l_thigh=(0.1, 0.15, 1), l_shin=(0, -0.8, 0.6),
      r_thigh=(-0.1, 0.15, 1), r_shin=(0, -0.8, 0.6),
      l_upper=(0.25, -0.6, 0.8), l_fore=(-0.1, 0.5, 1),
      r_upper=(-0.25, -0.6, 0.8), r_fore=(0.1, 0.5, 1))
  add(["sitting on the floor", "meditating", "sitting cross-legged",
       "doing yoga"],
      l_thigh=(1, -0.15, 0.6), l_shin=(-1, -0.1, 0.4),
      r_thigh=(-1, -0.15, 0.6), r_shin=(1, -0.1, 0.4), feet_flat=False,
      l_upper=(0.3, -1, 0.1), l_fore=(0.3, -0.3, 1),
      r_upper=(-0.3, -1, 0.1), r_fore=(-0.3, -0.3, 1))
  add(["rowing a boat", "paddling a kayak", "paddling a canoe"],
      spine=(20, 0, 0), l_thigh=(0.15, 0.5, 1), l_shin=(0.05, -0.6, 1),
      r_thigh=(-0.15, 0.5, 1), r_shin=(-0.05, -0.6, 1),
      l_upper=(0.2, -0.4, 1), r_upper=(-0.2, -0.4, 1))
  add(["playing the cello", "playing a double bass"],
      l_thigh=(0.4, 0, 1), l_shin=(0.1, -1, 0.05),
      r_thigh=(-0.4, 0, 1), r_shin=(-0.1, -1, 0.05),
      l_upper=(0.6, -0.2, 0.6), l_fore=(-0.4, 0.6, 0.4),
      r_upper=(-0.5, -1, 0.2), r_fore=(0.9, 0, 0.6))
  # --- Riding. -------------------------------------------------------------
  add(["riding a bike", "riding a bicycle", "cycling", "pedaling a bike"],
      spine=(35, 0, 0), head=(-25, 0, 0),
      l_thigh=(0.1, 0.0, 1), l_shin=(0, -1, 0.15),
      r_thigh=(-0.1, -0.9, 0.6), r_shin=(0, -1, -0.1),
      l_upper=(0.15, -0.6, 1), l_fore=(0, -0.3, 1),
      r_upper=(-0.15, -0.6, 1), r_fore=(0, -0.3, 1))
  add(["riding a motorcycle", "riding a motorbike", "riding a scooter bike"],
      spine=(20, 0, 0), head=(-10, 0, 0),
      l_thigh=(0.35, 0, 1), l_shin=(0, -1, -0.35),
      r_thigh=(-0.35, 0, 1), r_shin=(0, -1, -0.35),
      l_upper=(0.45, -0.7, 0.8), l_fore=(0, -0.2, 1),
      r_upper=(-0.45, -0.7, 0.8), r_fore=(0, -0.2, 1))
  add(["riding a horse", "horseback riding", "riding a pony",
       "riding a camel", "riding an elephant"],
      l_thigh=(0.6, -0.7, 0.6), l_shin=(0.15, -1, -0.1),
      r_thigh=(-0.6, -0.7, 0.6), r_shin=(-0.15, -1, -0.1),
      l_upper=(0.1, -1, 0.2), l_fore=(-0.1, 0, 1),
      r_upper=(-0.1, -1, 0.2), r_fore=(0.1, 0, 1))
  add(["riding a skateboard", "skateboarding", "riding a longboard"],
      spine=(10, 60, 0), l_thigh=(0.35, -1, 0.2), l_shin=(0.1, -1, -0.25),
      r_thigh=(-0.35, -1, 0.2), r_shin=(-0.1, -1, -0.25),
      l_upper=(1, -0.4, 0.2), r_upper=(-1, -0.4, -0.2))
  add(["surfing", "riding a surfboard", "riding a wave",
       "standing on a surfboard", "snowboarding"],
      spine=(30, 70, 0), l_thigh=(0.6, -1, 0.3), l_shin=(0.1, -1, -0.5),
      r_thigh=(-0.6, -1, 0.3), r_shin=(-0.1, -1, -0.5),
      l_upper=(1, -0.1, 0.3), r_upper=(-1, -0.2, -0.2))
  add(["riding a scooter", "riding a kick scooter", "pushing a scooter"],
      l_thigh=(0, -1, 0.1), r_thigh=(0, -1, -0.35), r_shin=(0, -1, -0.3),
      spine=(10, 0, 0), l_upper=(0.2, -0.8, 0.7), l_fore=(0, -0.2, 1),
      r_upper=(-0.2, -0.8, 0.7), r_fore=(0, -0.2, 1))
  add(["skiing", "skiing down a slope", "holding ski poles"],
      spine=(25, 0, 0), l_thigh=(0.1, -1, 0.5), l_shin=(0, -1, -0.35),
      r_thigh=(-0.1, -1, 0.5), r_shin=(0, -1, -0.35),
      l_upper=(0.3, -1, 0.3), l_fore=(0.1, -0.6, 1),
      r_upper=(-0.3, -1, 0.3), r_fore=(-0.1, -0.6, 1))
  # --- Boxes and objects held in the hands. -------------------------------
  add(["holding a box", "holding a package", "holding a basket"],
      l_upper=(0.1, -1, 0.2), l_fore=(0, 0, 1),
      r_upper=(-0.1, -1, 0.2), r_fore=(0, 0, 1))
  add(["lifting a box", "lifting a heavy box", "picking up a box",
       "lifting weights", "lifting a barbell"],
      spine=(45, 0, 0), l_thigh=(0.25, -0.4, 1), l_shin=(0, -1, -0.2),
      r_thigh=(-0.25, -0.4, 1), r_shin=(0, -1, -0.2),
      l_upper=(0.15, -1, 0.25), r_upper=(-0.15, -1, 0.25))
  add(["carrying a box", "carrying a heavy box", "carrying a crate",
       "carrying groceries"],
      **_WALK, spine=(-8, 0, 0), l_upper=(0.2, -1, 0.45),
      l_fore=(-0.15, 0.6, 1), r_upper=(-0.2, -1, 0.45), r_fore=(0.15, 0.6, 1))
  add(["carrying a backpack", "carrying a bag on the shoulder",
       "wearing a backpack"],
      **_WALK, l_upper=(0.15, -1, 0.1), l_fore=(0, 1, 0.2),
      r_upper=(-0.15, -1, 0.1), r_fore=(0, 1, 0.2))
  add(["carrying a suitcase", "carrying a bucket", "holding a handbag"],
      l_upper=(0.15, -1, 0), r_upper=(-0.35, -1, 0))
  add(["hugging a teddy bear", "hugging a pillow", "holding a baby"],
      l_upper=(0.25, -1, 0.5), l_fore=(-1, 0.2, 0.4),
      r_upper=(-0.25, -1, 0.5), r_fore=(1, 0.3, 0.4))
  add(["pushing a cart", "pushing a shopping cart", "pushing a stroller",
       "pushing a wheelbarrow", "pushing a lawn mower"],
      **_WALK, spine=(20, 0, 0), l_upper=(0.15, -0.6, 1),
      l_fore=(0, -0.2, 1), r_upper=(-0.15, -0.6, 1), r_fore=(0, -0.2, 1))
  add(["pulling a rope", "pulling a wagon", "pulling a sled"],
      spine=(-15, 0, 0), l_thigh=(0.1, -1, 0.6), l_shin=(0, -1, 0.2),
      r_thigh=(-0.1, -1, -0.2), r_shin=(0, -1, -0.3),
      l_upper=(0.1, -0.3, 1), r_upper=(-0.1, -0.45, 1))
  add(["holding an umbrella", "holding a flag", "holding a torch"],
      l_upper=(0.15, -1, 0), r_upper=(-0.15, -1, 0.3), r_fore=(0.2, 1, 0.5))
  add(["talking on a phone", "talking on the phone", "calling on a cellphone"],
      l_upper=(0.15, -1, 0), r_upper=(-0.5, -1, 0.2), r_fore=(0.45, 1, 0.1),
      head=(0, 0, 8))
  add(["texting on a phone", "looking at a phone", "using a smartphone"],
      head=(30, 0, 0), l_upper=(0.1, -1, 0.1), l_fore=(-0.3, 0.4, 1),
      r_upper=(-0.1, -1, 0.1), r_fore=(0.3, 0.4, 1))
  add(["drinking from a cup", "drinking coffee", "drinking from a bottle",
       "eating a sandwich"],
      head=(-10, 0, 0), l_upper=(0.15, -1, 0),
      r_upper=(-0.2, -1, 0.35), r_fore=(0.5, 1, 0.3))
  add(["holding a cup of coffee", "holding a glass", "holding a mug"],
      l_upper=(0.15, -1, 0), r_upper=(-0.15, -1, 0.1), r_fore=(0.1, 0.2, 1))
  add(["taking a photo with a camera", "taking a picture", "filming with a camera"],
      l_upper=(0.3, -1, 0.3), l_fore=(-0.4, 1, 0.4),
      r_upper=(-0.3, -1, 0.3), r_fore=(0.4, 1, 0.4))
  add(["brushing teeth", "eating with a spoon", "shaving"],
      l_upper=(0.15, -1, 0), r_upper=(-0.4, -1, 0.4), r_fore=(0.6, 1, 0.2))
  add(["cooking in a pan", "stirring a pot", "cooking on a stove"],
      head=(20, 0, 0), l_upper=(0.1, -1, 0.2), l_fore=(0, -0.1, 1),
      r_upper=(-0.2, -1, 0.3), r_fore=(0.1, -0.2, 1))
  # --- Instruments. ------------------------------------------------------
  add(["playing the guitar", "playing a guitar", "strumming a guitar",
       "playing an electric guitar", "playing the ukulele"],
      head=(15, 10, 0), l_upper=(0.6, -1, 0.4), l_fore=(0.7, 0.4, 1),
      r_upper=(-0.3, -1, 0.2), r_fore=(0.8, -0.1, 0.6))
  add(["playing the violin", "playing a violin", "playing a fiddle",
       "playing the viola"],
      head=(10, 20, -15), l_upper=(0.7, -0.2, 1), l_fore=(-0.4, 0.5, 0.6),
      r_upper=(-1, -0.1, 0.3), r_fore=(0.6, 0.2, 1))
  add(["playing the flute", "playing a clarinet"],
      head=(5, 20, 0), l_upper=(0.2, -1, 0.6), l_fore=(-0.7, 0.6, 0.3),
      r_upper=(-0.9, -0.2, 0.5), r_fore=(-0.2, 0.2, 1))
  add(["playing the trumpet", "playing a saxophone", "blowing a horn"],
      l_upper=(0.3, -1, 0.5), l_fore=(-0.3, 0.7, 1),
      r_upper=(-0.3, -1, 0.5), r_fore=(0.3, 0.7, 1))
  # --- Balls and sports. -------------------------------------------------
  add(["kicking a ball", "kicking a soccer ball", "playing soccer",
       "kicking a football"],
      spine=(-10, 0, 0), l_thigh=(0.05, -1, 0.1),
      r_thigh=(-0.05, -0.3, 1), r_shin=(0, -0.6, 1),
      l_upper=(1, -0.3, -0.4), r_upper=(-1, -0.4, 0.5))
  add(["throwing a ball", "throwing a baseball", "pitching a baseball",
       "throwing a frisbee"],
      spine=(-5, -25, 0), l_thigh=(0.1, -1, 0.5), l_shin=(0, -1, 0.15),
      r_thigh=(-0.1, -1, -0.35), r_shin=(0, -1, -0.3),
      l_upper=(0.6, -0.2, 1), r_upper=(-1, 0.2, -0.5), r_fore=(-0.1, 1, -0.3))
  add(["holding a ball", "holding a basketball", "holding a soccer ball"],
      l_upper=(0.2, -1, 0.3), l_fore=(-0.3, 0.3, 1),
      r_upper=(-0.2, -1, 0.3), r_fore=(0.3, 0.3, 1))
  add(["shooting a basketball", "playing basketball", "dunking a basketball"],
      l_thigh=(0.05, -1, 0.2), l_shin=(0, -1, -0.2),
      r_thigh=(-0.05, -1, 0.2), r_shin=(0, -1, -0.2),
      l_upper=(0.2, 1, 0.4), l_fore=(-0.4, 1, 0.1),
      r_upper=(-0.2, 0.8, 0.6), r_fore=(0, 1, 0.3))
  add(["swinging a baseball bat", "swinging a bat", "playing baseball",
       "batting"],
      spine=(10, 35, 0), l_thigh=(0.4, -1, 0.2), l_shin=(0.05, -1, -0.2),
      r_thigh=(-0.4, -1, 0.1), r_shin=(-0.05, -1, -0.2),
      l_upper=(-0.1, -0.6, 1), l_fore=(-0.8, 0.5, 0.4),
      r_upper=(-0.3, -0.6, 1), r_fore=(-0.6, 0.8, 0.4))
  add(["swinging a tennis racket", "playing tennis", "swinging a racket",
       "playing badminton", "hitting a ball with a racket"],
      spine=(10, -30, 0), l_thigh=(0.3, -1, 0.3), l_shin=(0, -1, 0),
      r_thigh=(-0.3, -1, -0.1), r_shin=(0, -1, -0.2),
      l_upper=(0.9, -0.5, 0.5), r_upper=(-0.8, -0.3, 1), r_fore=(-0.3, 0, 1))
  add(["swinging a golf club", "playing golf", "putting a golf ball"],
      spine=(35, 0, 0), l_thigh=(0.2, -1, 0.15), l_shin=(0.05, -1, -0.1),
      r_thigh=(-0.2, -1, 0.15), r_shin=(-0.05, -1, -0.1), head=(20, 0, 0),
      l_upper=(-0.1, -1, 0.35), r_upper=(0.1, -1, 0.35))
  add(["fishing", "holding a fishing rod", "casting a fishing line"],
      l_thigh=(0.1, -1, 0.3), r_thigh=(-0.1, -1, -0.1),
      l_upper=(0.1, -1, 0.4), l_fore=(-0.2, 0.2, 1),
      r_upper=(-0.2, -1, 0.4), r_fore=(0.1, 0.7, 1))
  add(["shooting a bow", "drawing a bow", "archery", "aiming a rifle"],
      spine=(0, -60, 0), l_upper=(1, 0.1, 0.25),
      r_upper=(-0.9, 0.1, 0.5), r_fore=(1, 0, 0.05))
  add(["climbing a ladder", "climbing a wall", "climbing a rope"],
      l_thigh=(0.1, -0.2, 1), l_shin=(0, -1, -0.1),
      l_upper=(0.2, 1, 0.3), r_upper=(-0.25, 0.6, 0.4), r_fore=(0, 1, 0.3))
  add(["doing push-ups", "doing a plank"],
      orient=(90, 0, 0), l_upper=(0.1, -0.2, 1), r_upper=(-0.1, -0.2, 1))
  # --- Tools. ------------------------------------------------------------
  add(["sweeping with a broom", "mopping the floor", "vacuuming the floor",
       "raking leaves"],
      spine=(20, 0, 0), l_thigh=(0.1, -1, 0.3), r_thigh=(-0.1, -1, -0.15),
      l_upper=(0.05, -1, 0.5), l_fore=(-0.5, -0.2, 1),
      r_upper=(-0.3, -1, 0.1), r_fore=(0.1, -1, 0.4))
  add(["digging with a shovel", "shoveling snow", "using a shovel"],
      spine=(40, 0, 0), l_thigh=(0.15, -1, 0.6), l_shin=(0, -1, -0.1),
      r_thigh=(-0.15, -1, -0.1), r_shin=(0, -1, -0.2),
      l_upper=(0.1, -1, 0.6), l_fore=(-0.1, -0.6, 1),
      r_upper=(-0.1, -1, 0.1), r_fore=(0.2, -0.8, 0.8))
  add(["hammering a nail", "swinging a hammer", "chopping wood with an axe"],
      l_thigh=(0.1, -1, 0.25), r_thigh=(-0.1, -1, -0.1),
      l_upper=(0.2, -1, 0.4), l_fore=(-0.3, 0, 1),
      r_upper=(-0.4, 0.6, 0.6), r_fore=(0, 1, -0.4))
  add(["painting on a canvas", "painting a wall", "writing on a whiteboard"],
      l_upper=(0.15, -1, 0), r_upper=(-0.2, 0, 1), r_fore=(0, 0.6, 1))
  # --- Lying, kneeling, crouching. ---------------------------------------
  add(["lying on a bed", "sleeping in a bed", "lying on a sofa",
       "lying on the grass", "lying on a mattress"],
      orient=(-90, 0, 0), l_upper=(0.3, -1, 0), r_upper=(-0.3, -1, 0))
  add(["kneeling", "kneeling on the floor", "praying", "planting a flower"],
      l_thigh=(0.1, -1, 0.05), l_shin=(0, 0, -1),
      r_thigh=(-0.1, -1, 0.05), r_shin=(0, 0, -1), feet_flat=False,
      l_upper=(0.1, -1, 0.3), l_fore=(-0.3, 0.3, 1),
      r_upper=(-0.1, -1, 0.3), r_fore=(0.3, 0.3, 1))
  add(["squatting", "crouching", "tying a shoe", "picking up a flower"],
      spine=(30, 0, 0), l_thigh=(0.3, -0.1, 1), l_shin=(0, -1, -0.45),
      r_thigh=(-0.3, -0.1, 1), r_shin=(0, -1, -0.45),
      l_upper=(0.1, -1, 0.5), r_upper=(-0.1, -1, 0.5))
  # --- Gestures. ---------------------------------------------------------
  add(["waving a hand", "waving hello", "greeting someone"],
      l_upper=(0.15, -1, 0), r_upper=(-1, 0.1, 0.1), r_fore=(-0.2, 1, 0))
  add(["pointing at something", "pointing a finger", "giving directions"],
      l_upper=(0.15, -1, 0), r_upper=(-0.2, 0.1, 1))
  add(["raising both arms", "cheering", "celebrating", "dancing"],
      l_upper=(0.6, 1, 0), r_upper=(-0.6, 1, 0))
  add(["stretching", "doing a t-pose", "balancing on a beam"],
      l_upper=(1, 0, 0), r_upper=(-1, 0, 0))
  add(["holding a sign", "holding a poster", "holding a banner"],
      l_upper=(0.15, -1, 0.3), l_fore=(0, 1, 0.3),
      r_upper=(-0.15, -1, 0.3), r_fore=(0, 1, 0.3))
  return e


def build_library() -> list[LibraryPose]:
  """Builds the hand-authored library. Returns >= 40 LibraryPose entries."""
  out = []
  for phrases, kw in _entries():
    body, glob = make_pose(**kw)
    out.append(LibraryPose(label=phrases[0], phrases=phrases,
                           body_pose=body, global_orient=glob))
  return out


def library_arrays() -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[str, ...]]]:
  """The library as arrays.

  Returns:
    body_pose [N,63], global_orient [N,3], labels (N strings), phrases
    (N tuples of strings).
  """
  lib = build_library()
  return (np.stack([p.body_pose for p in lib]),
          np.stack([p.global_orient for p in lib]),
          [p.label for p in lib], [p.phrases for p in lib])


def augment(body_pose: np.ndarray, num: int, seed: int, sigma: float = 0.06,
            joint_scale: np.ndarray | None = None) -> np.ndarray:
  """Small random perturbations of one pose (library augmentation).

  Each joint's rotation is composed with a random rotation whose axis-angle
  vector is N(0, (sigma * scale_j)^2) per component.

  Args:
    body_pose: [63] axis-angle pose.
    num: number of perturbed copies.
    seed: NumPy random seed (deterministic).
    sigma: noise standard deviation in radians.
    joint_scale: optional [21] per-joint multipliers (default: 1, with the
      feet and wrists at 0.5).

  Returns:
    [num, 63] perturbed poses (float32).
  """
  body_pose = np.asarray(body_pose, dtype=np.float64).reshape(NUM_BODY_JOINTS, 3)
  if joint_scale is None:
    joint_scale = np.ones(NUM_BODY_JOINTS)
    for n in ("L_foot", "R_foot", "L_wrist", "R_wrist"):
      joint_scale[J[n]] = 0.5
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=(num, NUM_BODY_JOINTS, 3)) * sigma * joint_scale[None, :, None]
  if num == 0:
    return np.zeros((0, POSE_DIM), np.float32)
  base = Rotation.from_rotvec(np.tile(body_pose, (num, 1)))
  pert = Rotation.from_rotvec(noise.reshape(-1, 3)) * base
  return pert.as_rotvec().reshape(num, POSE_DIM).astype(np.float32)
