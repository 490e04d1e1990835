"""Author-written SMPL-X body poses of 10 characteristic actions.

Used for the default-body contact sheet (docs/images/default_body_poses.png),
as realistic anchors in tests and as hand-made fallbacks. SMPL-X rest frame:
y up, the body faces +z, +x is the body's left. Rules of thumb: hip flexion
(thigh forward) is -x, knee bend +x, forward spine bend +x; raising the
left arm is +z (right: -z), left arm forward -y (right: +y).
"""
from __future__ import annotations

import numpy as np

# SMPL-X body joints 1..21 (body_pose index = joint - 1).
JOINTS = ("left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
          "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
          "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist")


def _pose(**rot) -> np.ndarray:
  """Keyword joint name -> (rx, ry, rz) axis-angle; returns body_pose [63]."""
  out = np.zeros((21, 3), np.float32)
  for name, value in rot.items():
    out[JOINTS.index(name)] = value
  return out.reshape(-1)


_ARMS_DOWN = dict(left_shoulder=(0, 0, -1.25), right_shoulder=(0, 0, 1.25))

DEMO_POSES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    # name: (body_pose [63], global_orient [3])
    "sitting": (_pose(left_hip=(-1.55, 0, 0.05), right_hip=(-1.55, 0, -0.05),
                      left_knee=(1.55, 0, 0), right_knee=(1.55, 0, 0),
                      left_elbow=(0, -0.6, 0), right_elbow=(0, 0.6, 0),
                      **_ARMS_DOWN), np.zeros(3)),
    "riding": (_pose(left_hip=(-1.2, 0, 0.3), right_hip=(-1.2, 0, -0.3),
                     left_knee=(1.3, 0, 0), right_knee=(1.3, 0, 0),
                     spine1=(0.25, 0, 0), spine2=(0.15, 0, 0),
                     left_shoulder=(0, -1.0, -0.5), right_shoulder=(0, 1.0, 0.5),
                     left_elbow=(0, -0.3, 0), right_elbow=(0, 0.3, 0)), np.zeros(3)),
    "arms raised": (_pose(left_shoulder=(0, 0, 1.3), right_shoulder=(0, 0, -1.3),
                          left_elbow=(0, 0, 0.2), right_elbow=(0, 0, -0.2)), np.zeros(3)),
    "lying": (_pose(left_hip=(0, 0, 0.15), right_hip=(0, 0, -0.15), **_ARMS_DOWN),
              np.array([-np.pi / 2, 0, 0], np.float32)),
    "squatting": (_pose(left_hip=(-2.0, 0, 0.35), right_hip=(-2.0, 0, -0.35),
                        left_knee=(2.3, 0, 0), right_knee=(2.3, 0, 0),
                        left_ankle=(0.3, 0, 0), right_ankle=(0.3, 0, 0),
                        spine1=(0.35, 0, 0),
                        left_shoulder=(0, -1.2, -0.3), right_shoulder=(0, 1.2, 0.3)),
                  np.zeros(3)),
    "walking": (_pose(left_hip=(-0.5, 0, 0), right_hip=(0.35, 0, 0),
                      left_knee=(0.15, 0, 0), right_knee=(0.5, 0, 0),
                      left_shoulder=(0.45, 0, -1.25), right_shoulder=(-0.45, 0, 1.25),
                      left_elbow=(0, -0.4, 0), right_elbow=(0, 0.4, 0)), np.zeros(3)),
    "kicking": (_pose(right_hip=(-1.4, 0, 0), right_knee=(0.1, 0, 0),
                      spine1=(-0.2, 0, 0),
                      left_shoulder=(0, 0, -0.4), right_shoulder=(0, 0, 0.4)), np.zeros(3)),
    "holding a box": (_pose(left_shoulder=(0, -0.7, -0.9), right_shoulder=(0, 0.7, 0.9),
                            left_elbow=(0, -1.3, 0), right_elbow=(0, 1.3, 0)), np.zeros(3)),
    "reaching": (_pose(spine1=(0.3, 0, 0), spine2=(0.2, 0, 0),
                       right_shoulder=(0, 1.3, -0.6), left_shoulder=(0, 0, -1.2),
                       left_hip=(-0.2, 0, 0), right_hip=(0.1, 0, 0)), np.zeros(3)),
    "crouching": (_pose(left_hip=(-1.9, 0, 0.2), right_hip=(-1.2, 0, -0.2),
                        left_knee=(2.3, 0, 0), right_knee=(2.4, 0, 0),
                        spine1=(0.5, 0, 0), spine2=(0.2, 0, 0),
                        left_shoulder=(0, -0.6, -1.0), right_shoulder=(0, 0.6, 1.0)),
                  np.zeros(3)),
}
