"""Procedural HOI scenes and their captioned renders (the prior's image bank).

A scene is the posed body (clothing coloured by a colour word) plus one
built-in object placed against it (``placement.py``). Four render kinds
mirror the trainer's four guidance renders (PAPER.md "Camera tracing"):

* ``human``: the body alone, camera 0.7 pos around the origin;
* ``object``: the object alone, camera 0.7 pos + c_O;
* ``interaction``: body and object, camera 0.8 pos + c_O / 2;
* ``head``: the body alone, camera 0.2 pos + head joint;

with pos drawn from the training-camera distribution (``camera.py``) and the
caption built by the trainer's own prompt code (``guidance/prompts.py``):
"{prefix} {text}, {suffix}, {view} view", with the view chosen by the same
threestudio rule from the camera's elevation and azimuth.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import numpy as np

from interfusion_jax.body import anchor, lbs
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.mesh import raster as mesh_render
from interfusion_jax.guidance import prompts as prompts_lib
from interfusion_jax.prior import mannequin, objects, placement
from interfusion_jax.guidance import captions as colors

KINDS = ("human", "object", "interaction", "head")
# kind -> (camera scale, what the camera aims at); PAPER.md "Camera tracing".
CAMERA_SCALES = {"human": 0.7, "object": 0.7, "interaction": 0.8, "head": 0.2}

# Object -> (pose-library label, interaction phrase T_I, object word).
INTERACTIONS: dict[str, tuple[str, str, str]] = {
    "chair": ("sitting on a chair", "sitting on a chair", "chair"),
    "bench": ("sitting on a bench", "sitting on a bench", "bench"),
    "sofa": ("sitting on a sofa", "sitting on a sofa", "sofa"),
    "bicycle": ("riding a bike", "riding a bike", "bike"),
    "motorcycle": ("riding a motorcycle", "riding a motorcycle", "motorcycle"),
    "horse": ("riding a horse", "riding a horse", "horse"),
    "box": ("carrying a box", "carrying a box", "box"),
    "ball": ("holding a ball", "holding a ball", "ball"),
    "guitar": ("playing the guitar", "playing the guitar", "guitar"),
    "laptop": ("typing on a laptop", "typing on a laptop", "laptop"),
    "bed": ("lying on a bed", "lying on a bed", "bed"),
    "skateboard": ("riding a skateboard", "riding a skateboard", "skateboard"),
    "umbrella": ("holding an umbrella", "holding an umbrella", "umbrella"),
    "table": ("standing", "standing at a table", "table"),
}

SKIN_RGB = (0.78, 0.70, 0.64)
SHOES_RGB = (0.15, 0.15, 0.15)
SKIN, SHIRT, PANTS, SHOES = 0, 1, 2, 3
# (parent joint, child joint, clothing label); "tips" extend past a joint.
_BONES = ((0, 3, SHIRT), (3, 6, SHIRT), (6, 9, SHIRT), (9, 12, SHIRT), (9, 13, SHIRT),
          (9, 14, SHIRT), (13, 16, SHIRT), (14, 17, SHIRT), (16, 18, SHIRT),
          (17, 19, SHIRT), (0, 1, PANTS), (0, 2, PANTS), (1, 4, PANTS), (2, 5, PANTS),
          (4, 7, PANTS), (5, 8, PANTS), (7, 10, SHOES), (8, 11, SHOES),
          (12, 15, SKIN), (18, 20, SKIN), (19, 21, SKIN))
_TIPS = ((12, 15, 0.25, SKIN), (18, 20, 0.2, SKIN), (19, 21, 0.2, SKIN),
         (7, 10, 0.1, SHOES), (8, 11, 0.1, SHOES))


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """Static render settings of the scene generator.

  Attributes:
    resolution: output image size R (square).
    supersample: render at R * supersample and box-filter down.
    cameras: the training-camera distribution (``camera.CameraSpec``).
    prompts: prompt decoration and view rule (``prompts.PromptSpec``).
    ambient, diffuse: Lambert weights of the mesh renderer.
    background: [3] background colour (white).
    gender: the person word of the human prompt.
  """
  resolution: int = 32
  supersample: int = 2
  cameras: camera_lib.CameraSpec = camera_lib.CameraSpec()
  prompts: prompts_lib.PromptSpec = prompts_lib.PromptSpec(
      human="a man", object="a chair", interaction="sitting on a chair")
  ambient: float = 0.5
  diffuse: float = 0.5
  background: tuple[float, float, float] = (1.0, 1.0, 1.0)
  gender: str = "man"

  @classmethod
  def from_specs(cls, cameras: camera_lib.CameraSpec, prompts: prompts_lib.PromptSpec,
                 resolution: int = 32) -> "SceneSpec":
    """The trainer's cameras and prompt decoration (e.g. ``stage2.config.camera_spec(run)``
    and ``prompt_spec(run)``); the person word follows ``prompts.human``."""
    return cls(resolution=resolution, cameras=cameras, prompts=prompts,
               gender="man" if "woman" not in prompts.human.lower() else "woman")


class Scene(NamedTuple):
  """One procedural HOI scene (z-up scene coordinates).

  body: mannequin.PosedBody; body_colors [V, 3]; obj: the placed
  objects.Mesh; object_colors [Vo, 3]; texts: the base prompts of
  ``prompts.scene_prompts`` keyed human / head / object / interaction;
  factors: dict(human_color, object, object_color); placement: the
  Placement.
  """
  body: mannequin.PosedBody
  body_colors: np.ndarray
  obj: objects.Mesh
  object_colors: np.ndarray
  texts: dict
  factors: dict
  placement: placement.Placement


def clothing_labels(vertices: np.ndarray, joints: np.ndarray) -> np.ndarray:
  """Per-vertex clothing label (SKIN, SHIRT, PANTS, SHOES) by nearest bone.

  Args:
    vertices: [V, 3]; joints: [J >= 22, 3] posed SMPL-X joints.

  Returns:
    [V] int labels.
  """
  j = np.asarray(joints, np.float64)
  segs = [(j[a], j[b], lab) for a, b, lab in _BONES]
  for a, b, length, lab in _TIPS:
    d = j[b] - j[a]
    segs.append((j[b], j[b] + length * d / max(np.linalg.norm(d), 1e-9), lab))
  p0 = np.stack([s[0] for s in segs])
  p1 = np.stack([s[1] for s in segs])
  lab = np.array([s[2] for s in segs])
  v = np.asarray(vertices, np.float64)[:, None]
  d = p1 - p0
  t = np.clip(np.einsum("vsi,si->vs", v - p0, d) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)
  dist = np.linalg.norm(v - (p0 + t[..., None] * d), axis=-1)
  return lab[dist.argmin(1)]


def body_colors(labels: np.ndarray, shirt: str) -> np.ndarray:
  """[V, 3] albedo: shirt in the colour word, trousers a darker shade of it."""
  c = colors.color_rgb(shirt)
  table = np.stack([SKIN_RGB, c, 0.6 * c + 0.05, SHOES_RGB]).astype(np.float32)
  return table[labels]


def posed_body(body_model, body_pose: np.ndarray, global_orient: np.ndarray
               ) -> mannequin.PosedBody:
  """Poses a body model (or the mannequin if None) in the z-up scene.

  Uses ``body.lbs.pose_body`` and ``body.anchor.scene_transform`` (centred at
  the mean vertex, PAPER.md "Coordinates") so bank bodies match the anchor.

  Args:
    body_model: ``body.model.BodyModel`` or None.
    body_pose: [63]; global_orient: [3].
  """
  if body_model is None:
    return mannequin.posed_mannequin(body_pose, global_orient)
  v, j = lbs.pose_body(body_model, np.asarray(body_pose, np.float32),
                       np.asarray(global_orient, np.float32))
  v, j = anchor.scene_transform(np.asarray(v), np.asarray(j), aug_rot=False, aug_trans=False)
  return mannequin.PosedBody(v, np.asarray(body_model.faces), j)


def scene_texts(spec: SceneSpec, object_name: str, human_color: str,
                object_color: str) -> dict:
  """The base prompts of a bank scene via ``prompts.scene_prompts``.

  T_H = "a {gender} in a {human_color} shirt", T_O = "a {object_color} {word}",
  T_I = the object's interaction phrase.
  """
  _, phrase, word = INTERACTIONS[object_name]
  ps = dataclasses.replace(spec.prompts, human=f"a {spec.gender} in a {human_color} shirt",
                           object=f"a {object_color} {word}", interaction=phrase)
  return prompts_lib.scene_prompts(ps)


def make_scene(spec: SceneSpec, body: mannequin.PosedBody, object_name: str,
               human_color: str, object_color: str,
               query: Optional[placement.BodyQuery] = None,
               placed: Optional[placement.Placement] = None) -> Scene:
  """Builds a scene: coloured body + object placed by its default rule.

  Args:
    spec: SceneSpec.
    body: posed body (z-up).
    object_name: a key of ``objects.GENERATORS``.
    human_color, object_color: colour words.
    query: optional precomputed ``placement.body_query`` of the body.
    placed: optional precomputed placement (reused across colours).
  """
  if placed is None:
    placed = placement.place_named(object_name, body.vertices, body.faces, body.joints,
                                   query=query)
  labels = clothing_labels(body.vertices, body.joints)
  ocol = np.broadcast_to(colors.color_rgb(object_color), placed.mesh.vertices.shape)
  return Scene(body=body, body_colors=body_colors(labels, human_color), obj=placed.mesh,
               object_colors=np.array(ocol, np.float32),
               texts=scene_texts(spec, object_name, human_color, object_color),
               factors=dict(human_color=human_color, object=object_name,
                            object_color=object_color),
               placement=placed)


def object_center(scene: Scene) -> np.ndarray:
  """[3] c_O: the centre of the object's bounding box."""
  return objects.bbox_center(scene.obj)


def camera_target(scene: Scene, kind: str) -> np.ndarray:
  """[3] where a render kind's camera aims (PAPER.md "Camera tracing")."""
  if kind == "human":
    return np.zeros(3)
  if kind == "object":
    return object_center(scene)
  if kind == "interaction":
    return 0.5 * object_center(scene)
  if kind == "head":
    return np.asarray(scene.body.joints[placement.HEAD], np.float64)
  raise ValueError(f"Unknown render kind {kind!r}; choose one of {list(KINDS)}.")


def scene_mesh(scene: Scene, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(vertices, faces, vertex colours) of what a render kind shows."""
  b = (scene.body.vertices, scene.body.faces, scene.body_colors)
  o = (scene.obj.vertices, scene.obj.faces, scene.object_colors)
  if kind in ("human", "head"):
    return b
  if kind == "object":
    return o
  return (np.concatenate([b[0], o[0]]), np.concatenate([b[1], o[1] + len(b[0])]),
          np.concatenate([b[2], o[2]]))


_look_at = jax.jit(camera_lib.look_at, static_argnums=2)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample_cameras(key: jax.Array, num: int, cam_spec: camera_lib.CameraSpec):
  return jax.vmap(lambda k: camera_lib.sample_camera(k, cam_spec))(jax.random.split(key, num))


def sample_cameras(key: jax.Array, num: int, spec: SceneSpec) -> camera_lib.Camera:
  """num training cameras around the origin (``camera.sample_camera``), as NumPy."""
  return jax.tree_util.tree_map(np.asarray, _sample_cameras(key, num, spec.cameras))


def view_names(cams: camera_lib.Camera, spec: SceneSpec) -> list[str]:
  """View word per camera by the trainer's rule (``prompts.view_index``)."""
  p = spec.prompts
  idx = prompts_lib.view_index(np.rad2deg(cams.elevation), np.rad2deg(cams.azimuth),
                               overhead_deg=p.overhead_elevation_deg,
                               front_deg=p.front_azimuth_deg, back_deg=p.back_azimuth_deg)
  return [prompts_lib.VIEWS[int(i)] for i in np.asarray(idx)]


def caption(scene: Scene, kind: str, view: Optional[str], spec: SceneSpec) -> str:
  """The trainer's caption of a render: ``prompts.decorate(text, spec, view)``."""
  view = view if spec.prompts.view_dependent else None
  return prompts_lib.decorate(scene.texts[kind], spec.prompts, view)


def render(scene: Scene, kind: str, cams: camera_lib.Camera, spec: SceneSpec) -> np.ndarray:
  """Renders one kind of a scene from cameras sampled around the origin.

  Each camera is re-centred as the trainer does: centre scale * pos + target,
  the sampled rotation kept (``camera.recenter_camera``).

  Args:
    scene: Scene; kind: one of KINDS.
    cams: Camera with a leading axis N (NumPy), e.g. ``sample_cameras``.
    spec: SceneSpec.

  Returns:
    [N, R, R, 3] float32 images in [0, 1] on the background colour.
  """
  verts, faces, cols = scene_mesh(scene, kind)
  target = camera_target(scene, kind)
  scale = CAMERA_SCALES[kind]
  size = spec.resolution * spec.supersample
  pos = scale * cams.position + target
  # As the trainer (camera.recenter_camera, official c_mtx): the sampled
  # rotation is kept and only the centre moves.
  c2ws = np.array(cams.c2w, np.float64)
  c2ws[:, :3, 3] = pos
  out = []
  for i in range(len(cams.fovy)):
    c2w = c2ws[i]
    light = cams.light_position[i]
    img = mesh_render.render_mesh(
        verts, faces, c2w, float(np.rad2deg(cams.fovy[i])), size, size,
        vertex_colors=cols, light_dir=light / max(np.linalg.norm(light), 1e-9),
        ambient=spec.ambient, diffuse=spec.diffuse, background=spec.background,
        smooth_normals=False)["rgb"]
    s = spec.supersample
    out.append(img.reshape(spec.resolution, s, spec.resolution, s, 3).mean((1, 3)))
  return np.stack(out).astype(np.float32)
