"""Forward kinematics and linear blend skinning of a ``BodyModel`` in JAX.

A transcription of the ``smplx`` package's ``lbs`` (shape blendshapes,
pose correctives, kinematic chain, skinning), so SMPL-X pose vectors give
the same vertices and joints as ``smplx.SMPLX(use_pca=False)`` (to 1e-5).

Pose layout (axis-angle, 3 numbers per joint):
  global_orient [3], body_pose [63] = 21 body joints (smplx order), and for
  SMPL-X jaw / eyes [3] each and hands [45] each. Hands follow smplx's
  default ``flat_hand_mean=False``: the file's ``hands_mean`` is ADDED to the
  given hand pose, so a zero hand pose is the model's mean (relaxed) hand;
  ``flat_hand_mean=True`` gives a flat hand for zero pose.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.body.model import BodyModel, NUM_BODY_JOINTS


class PoseError(ValueError):
  """A pose vector has the wrong length or is not finite."""


def check_pose(body_pose, global_orient=None) -> tuple[np.ndarray, np.ndarray]:
  """Validates a concrete (NumPy) pose; returns float32 copies.

  Args:
    body_pose: [63] axis-angle of the 21 body joints (also accepts [21, 3]).
    global_orient: [3] or None (zeros).
  Returns:
    (body_pose [63], global_orient [3]).
  Raises:
    PoseError naming the problem.
  """
  bp = np.asarray(body_pose, dtype=np.float64)
  if bp.size != 3 * NUM_BODY_JOINTS:
    raise PoseError(
        f"body_pose has {bp.size} numbers (shape {bp.shape}); expected "
        f"{3 * NUM_BODY_JOINTS} = 21 body joints x axis-angle (SMPL-X order, "
        "no global orientation, no hands).")
  go = np.zeros(3) if global_orient is None else np.asarray(global_orient, np.float64)
  if go.size != 3:
    raise PoseError(f"global_orient has {go.size} numbers; expected 3 (axis-angle).")
  for name, v in (("body_pose", bp), ("global_orient", go)):
    if not np.all(np.isfinite(v)):
      bad = np.flatnonzero(~np.isfinite(v.reshape(-1)))
      raise PoseError(f"{name} contains NaN/inf at indices {bad.tolist()}; "
                      "give a finite axis-angle vector.")
  return bp.reshape(-1).astype(np.float32), go.reshape(-1).astype(np.float32)


def axis_angle_to_matrix(rot_vecs: jax.Array) -> jax.Array:
  """Rodrigues' formula exactly as smplx's ``batch_rodrigues``.

  Args:
    rot_vecs: [..., 3] axis-angle vectors.
  Returns:
    [..., 3, 3] rotation matrices.
  """
  angle = jnp.linalg.norm(rot_vecs + 1e-8, axis=-1, keepdims=True)
  rx, ry, rz = jnp.moveaxis(rot_vecs / angle, -1, 0)
  zeros = jnp.zeros_like(rx)
  k = jnp.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], axis=-1)
  k = k.reshape(rot_vecs.shape[:-1] + (3, 3))
  angle = angle[..., None]
  eye = jnp.eye(3, dtype=rot_vecs.dtype)
  return eye + jnp.sin(angle) * k + (1.0 - jnp.cos(angle)) * (k @ k)


def full_pose(body: BodyModel, body_pose: jax.Array, global_orient: jax.Array,
              left_hand_pose: Optional[jax.Array] = None,
              right_hand_pose: Optional[jax.Array] = None,
              jaw_pose: Optional[jax.Array] = None,
              eye_pose: Optional[jax.Array] = None,
              flat_hand_mean: bool = False) -> jax.Array:
  """Assembles the per-joint axis-angle pose [J, 3] of ``body``.

  Args:
    body_pose: [63]; global_orient: [3]; hands [45] each; jaw [3];
      eye_pose [6] (left, right). Missing parts are zero.
    flat_hand_mean: smplx's flag (False = add the file's hand mean).
  Returns:
    [J, 3] with J = 55 (SMPL-X) or 24 (SMPL; its two hand joints are zero).
  """
  body_pose = jnp.asarray(body_pose, jnp.float32).reshape(-1)
  if body_pose.shape[0] != 3 * NUM_BODY_JOINTS:
    raise PoseError(f"body_pose has {body_pose.shape[0]} numbers; expected 63.")
  global_orient = jnp.asarray(global_orient, jnp.float32).reshape(3)
  z3 = jnp.zeros(3, jnp.float32)
  if body.kind == "smpl":
    parts = [global_orient, body_pose, z3, z3]
    return jnp.concatenate(parts).reshape(24, 3)
  z45 = jnp.zeros(45, jnp.float32)
  lh = z45 if left_hand_pose is None else jnp.asarray(left_hand_pose, jnp.float32).reshape(45)
  rh = z45 if right_hand_pose is None else jnp.asarray(right_hand_pose, jnp.float32).reshape(45)
  if not flat_hand_mean:
    lh = lh + body.hands_mean[:45]
    rh = rh + body.hands_mean[45:]
  jaw = z3 if jaw_pose is None else jnp.asarray(jaw_pose, jnp.float32).reshape(3)
  eyes = jnp.zeros(6, jnp.float32) if eye_pose is None else jnp.asarray(eye_pose, jnp.float32).reshape(6)
  return jnp.concatenate([global_orient, body_pose, jaw, eyes, lh, rh]).reshape(55, 3)


def shaped_template(body: BodyModel, betas: Optional[jax.Array] = None) -> jax.Array:
  """Rest vertices with shape blendshapes: v_template + shapedirs . betas.

  Args:
    betas: [b] with b <= body.num_betas (zero-padded), or None.
  Returns:
    [V, 3].
  """
  if betas is None:
    return jnp.asarray(body.v_template)
  betas = jnp.asarray(betas, jnp.float32).reshape(-1)
  nb = body.num_betas
  if betas.shape[0] > nb:
    raise PoseError(f"betas has {betas.shape[0]} numbers; this model has {nb}.")
  betas = jnp.pad(betas, (0, nb - betas.shape[0]))
  return body.v_template + jnp.einsum("l,vkl->vk", betas, body.shapedirs)


def rigid_transforms(rot_mats: jax.Array, joints: jax.Array,
                     parents: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Forward kinematics along the kinematic tree (smplx ``batch_rigid_transform``).

  Args:
    rot_mats: [J, 3, 3] local joint rotations.
    joints: [J, 3] rest joint locations.
    parents: static parent indices (parents[0] = -1).
  Returns:
    posed joints [J, 3] and skinning transforms A [J, 4, 4] that map rest
    points to posed points.
  """
  num = len(parents)
  par = np.asarray(parents[1:])
  rel = jnp.concatenate([joints[:1], joints[1:] - joints[par]], axis=0)
  local = jnp.concatenate([rot_mats, rel[:, :, None]], axis=2)
  bottom = jnp.broadcast_to(jnp.array([0., 0., 0., 1.], rot_mats.dtype), (num, 1, 4))
  local = jnp.concatenate([local, bottom], axis=1)                # [J, 4, 4]
  chain = [local[0]]
  for i in range(1, num):
    chain.append(chain[parents[i]] @ local[i])
  world = jnp.stack(chain)                                          # [J, 4, 4]
  posed_joints = world[:, :3, 3]
  offset = jnp.einsum("jab,jb->ja", world[:, :3, :3], joints)
  a = world.at[:, :3, 3].add(-offset)
  return posed_joints, a


def skin(body: BodyModel, pose: jax.Array, betas: Optional[jax.Array] = None,
         transl: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Linear blend skinning with pose correctives (smplx ``lbs``).

  Args:
    pose: [J, 3] per-joint axis-angle (see ``full_pose``).
    betas: [b] shape coefficients or None.
    transl: [3] translation or None.
  Returns:
    vertices [V, 3] and joints [J, 3] (posed, translated).
  """
  v_shaped = shaped_template(body, betas)
  joints_rest = body.j_regressor @ v_shaped
  rot = axis_angle_to_matrix(pose)                                  # [J, 3, 3]
  v_posed = v_shaped
  if body.posedirs.shape[0]:
    pose_feature = (rot[1:] - jnp.eye(3)).reshape(-1)
    v_posed = v_shaped + (pose_feature @ body.posedirs).reshape(-1, 3)
  joints, a = rigid_transforms(rot, joints_rest, body.parents)
  t = jnp.einsum("vj,jab->vab", body.lbs_weights, a)                # [V, 4, 4]
  verts = jnp.einsum("vab,vb->va", t[:, :3, :3], v_posed) + t[:, :3, 3]
  if transl is not None:
    transl = jnp.asarray(transl, jnp.float32).reshape(1, 3)
    verts, joints = verts + transl, joints + transl
  return verts, joints


def pose_body(body: BodyModel, body_pose: jax.Array,
              global_orient: Optional[jax.Array] = None, *,
              betas: Optional[jax.Array] = None,
              transl: Optional[jax.Array] = None,
              left_hand_pose: Optional[jax.Array] = None,
              right_hand_pose: Optional[jax.Array] = None,
              jaw_pose: Optional[jax.Array] = None,
              eye_pose: Optional[jax.Array] = None,
              flat_hand_mean: bool = False) -> tuple[jax.Array, jax.Array]:
  """Poses ``body``: the public entry point (jittable; body is a pytree).

  Args:
    body_pose: [63] axis-angle of the 21 body joints.
    global_orient: [3] or None (identity).
    betas, transl, hands, jaw, eyes: see ``full_pose`` / ``skin``.
  Returns:
    vertices [V, 3], joints [J, 3] (J = 55 for SMPL-X, 24 for SMPL).
  """
  if global_orient is None:
    global_orient = jnp.zeros(3, jnp.float32)
  pose = full_pose(body, body_pose, global_orient, left_hand_pose,
                   right_hand_pose, jaw_pose, eye_pose, flat_hand_mean)
  return skin(body, pose, betas, transl)
