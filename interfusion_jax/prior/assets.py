"""Deterministic build, shipping and caching of the built-in prior's image bank.

``build_bank`` renders a factorial set of procedural scenes (``scenes.py``):
every colour word on the clothing (human and head renders), every object in
every colour (object renders) and every object with every clothing colour
and cycled object colours (interaction renders), each from cameras of the
training distribution, captioned exactly as the trainer captions its renders.
The result is a small ``.npz``: uint8 images, attributes, captions and the
unit camera direction of every image (the prior's camera factor,
``denoiser`` module docstring).

``load_default_bank`` looks for the shipped file
``interfusion_jax/assets/prior_bank.npz``, then a cached build under
``~/.cache/interfusion_jax/prior/``; if neither exists it builds the bank
once (with a progress bar) and caches it. ``tools/build_prior.py`` rebuilds
the shipped file.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from interfusion_jax.body import model as body_lib
from interfusion_jax.guidance import core, prompts
from interfusion_jax.nerf import camera as camera_lib
from interfusion_jax.pose import library
from interfusion_jax.prior import objects, placement, scenes
from interfusion_jax.guidance import captions as colors
from interfusion_jax.guidance import builtin as denoiser

BANK_VERSION = 5   # bump when the bank's contents change (history: docs/evaluation.md)
ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"
SHIPPED_PATH = ASSETS_DIR / "prior_bank.npz"


class BankError(ValueError):
  """A bank file is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class BankSpec:
  """What goes into the bank (all counts per factor combination).

  Attributes:
    resolution: image size R.
    objects: object generator names.
    colors: colour words (clothing and objects).
    human_views: human renders per (clothing colour, pose).
    head_views: head renders per clothing colour.
    object_views: object renders per (object, colour). With the camera
      factor (``denoiser.PriorSpec.camera_kappa``) a render is guided by the
      bank images seen from nearby directions, so every (object, colour)
      needs views all around: 48 random directions leave a typical
      direction within ~15 degrees of one of them.
    fovy_deg, distance: every bank camera has this field of view and
      distance (its direction is random). A render of the same object at
      another zoom is a scaled image, which the denoiser cannot relate to a
      bank image. The ``cpu`` config variants train with the same fixed zoom
      (``config.camera.fovy_range_deg`` / ``distance_range``); 0 = the
      training distribution of ``nerf/camera.py``.
    interaction_views: interaction renders per (object, clothing colour,
      object colour).
    interaction_object_colors: object colours rendered per (object, clothing
      colour); 0 = every colour. The interaction caption "T_H T_I" names no
      object colour, so the bank must not tie the object colour to the
      clothing colour: with one object colour per clothing colour, the
      interaction SDS pulled e.g. the sofa of "a man in a purple shirt" to
      that single colour (blue), against the object prompt ("an orange sofa").
    seed: camera seed.
    placement_resolution: voxel grid size of the body inside test.
    body: "default" (the package's default body, falling back to the
      mannequin if its file is missing) or "mannequin".
  """
  resolution: int = 32
  objects: tuple[str, ...] = objects.OBJECT_NAMES
  colors: tuple[str, ...] = colors.COLOR_NAMES
  human_views: int = 2
  head_views: int = 6
  object_views: int = 48
  interaction_views: int = 1
  interaction_object_colors: int = 0
  fovy_deg: float = 55.0
  distance: float = 2.75
  seed: int = 0
  placement_resolution: int = 128
  body: str = "default"

  def digest(self) -> str:
    """Short hash of the spec (cache file name)."""
    blob = json.dumps(dict(dataclasses.asdict(self), version=BANK_VERSION), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _body_model(which: str):
  """The default BodyModel, or None for the mannequin (also if the file is missing)."""
  if which == "mannequin":
    return None
  try:
    return body_lib.load_body_model("default")
  except (FileNotFoundError, ImportError):
    return None


@functools.lru_cache(maxsize=1)
def _library():
  return library.library_arrays()


def _library_pose(label: str) -> tuple[np.ndarray, np.ndarray]:
  poses, orients, labels, _ = _library()
  if label not in labels:
    raise BankError(f"Pose {label!r} is missing from the pose library.")
  i = labels.index(label)
  return poses[i], orients[i]


def _plan(spec: BankSpec) -> list[tuple[str, str, str, str, int]]:
  """Every render of the bank: (kind, object, clothing colour, object colour, views)."""
  cols, objs = spec.colors, spec.objects
  plan = []
  for ci, c in enumerate(cols):
    for obj in objs:
      plan.append(("human", obj, c, c, spec.human_views))
    plan.append(("head", objs[ci % len(objs)], c, c, spec.head_views))
  for obj in objs:
    for c in cols:
      plan.append(("object", obj, c, c, spec.object_views))
  n_oc = spec.interaction_object_colors or len(cols)
  for oi, obj in enumerate(objs):
    for ci, c in enumerate(cols):
      for k in range(min(n_oc, len(cols))):
        oc = cols[(ci + 1 + 5 * oi + k) % len(cols)]
        plan.append(("interaction", obj, c, oc, spec.interaction_views))
  return plan


def build_bank(spec: BankSpec = BankSpec(), scene_spec: Optional[scenes.SceneSpec] = None,
               progress: bool = True) -> dict:
  """Renders the bank deterministically.

  Args:
    spec: BankSpec.
    scene_spec: render settings (default ``scenes.SceneSpec`` at spec.resolution).
    progress: show a tqdm progress bar.

  Returns:
    dict(images [N, R, R, 3] uint8, attrs [N, F] int32, captions [N] str,
    dirs [N, 3] float32 unit directions from each render's look-at target to
    its camera, meta: JSON string).
  """
  if scene_spec is None:
    cams = camera_lib.CameraSpec()
    if spec.fovy_deg > 0:
      cams = dataclasses.replace(cams, fovy_range_deg=(spec.fovy_deg, spec.fovy_deg))
    if spec.distance > 0:
      cams = dataclasses.replace(cams, distance_range=(spec.distance, spec.distance))
    scene_spec = scenes.SceneSpec(resolution=spec.resolution, cameras=cams)
  if scene_spec.resolution != spec.resolution:
    scene_spec = dataclasses.replace(scene_spec, resolution=spec.resolution)
  body_model = _body_model(spec.body)
  plan = _plan(spec)
  total = sum(p[-1] for p in plan)
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=total, desc="building the built-in prior bank", unit="img")
  placed: dict[str, tuple] = {}
  images, attrs, captions, dirs = [], [], [], []
  # All cameras in one call (one compilation), then sliced per render.
  all_cams = scenes.sample_cameras(jax.random.PRNGKey(spec.seed), total, scene_spec)
  first = 0
  for kind, obj, hcol, ocol, views in plan:
    if obj not in placed:
      pose, orient = _library_pose(scenes.INTERACTIONS[obj][0])
      body = scenes.posed_body(body_model, pose, orient)
      query = placement.body_query(body.vertices, body.faces, spec.placement_resolution)
      pl = placement.place_named(obj, body.vertices, body.faces, body.joints, query=query)
      placed[obj] = (body, pl)
    body, pl = placed[obj]
    scene = scenes.make_scene(scene_spec, body, obj, hcol, ocol, placed=pl)
    cams = jax.tree_util.tree_map(lambda a: a[first:first + views], all_cams)
    first += views
    imgs = scenes.render(scene, kind, cams, scene_spec)
    unit = cams.position / np.linalg.norm(cams.position, axis=-1, keepdims=True)
    for img, view, d in zip(imgs, scenes.view_names(cams, scene_spec), unit):
      cap = scenes.caption(scene, kind, view, scene_spec)
      truth = dict(kind=kind, view=view if scene_spec.prompts.view_dependent else None,
                   human_color=hcol if kind != "object" else None,
                   object=obj if kind in ("object", "interaction") else None,
                   object_color=ocol if kind in ("object", "interaction") else None)
      parsed = denoiser.parse_caption(cap)
      # The interaction text T_H + T_I need not name the object colour.
      if any(v is not None and v != truth[k] for k, v in parsed.items()) or (
          parsed["kind"] != kind):
        raise BankError(f"Caption {cap!r} parses to {parsed}, expected {truth}; "
                        "the caption parser and the scene generator disagree.")
      images.append(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
      attrs.append(denoiser.attributes_of(truth))
      captions.append(cap)
      dirs.append(d)
    if bar is not None:
      bar.update(views)
  if bar is not None:
    bar.close()
  meta = json.dumps(dict(version=BANK_VERSION, spec=dataclasses.asdict(spec),
                         body="mannequin" if body_model is None else "default"))
  return dict(images=np.stack(images), attrs=np.stack(attrs).astype(np.int32),
              captions=np.asarray(captions), dirs=np.stack(dirs).astype(np.float32),
              meta=np.asarray(meta))


def save_bank(path: str | os.PathLike, bank: dict) -> pathlib.Path:
  """Writes a bank to a compressed .npz (atomically). Returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez_compressed(tmp, **bank)
  os.replace(tmp, path)
  return path


def load_bank(path: str | os.PathLike) -> dict:
  """Reads and checks a bank .npz written by ``save_bank``.

  Raises:
    FileNotFoundError / BankError with what to do.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Prior bank {path} does not exist; build it with "
                            "`python tools/build_prior.py`.")
  with np.load(path, allow_pickle=False) as z:
    bank = {k: z[k] for k in z.files}
  missing = {"images", "attrs", "captions", "dirs", "meta"} - set(bank)
  if missing:
    raise BankError(f"Prior bank {path} lacks {sorted(missing)}; rebuild it with "
                    "`python tools/build_prior.py`.")
  if json.loads(str(bank["meta"])).get("version") != BANK_VERSION:
    raise BankError(f"Prior bank {path} has an old format; rebuild it with "
                    "`python tools/build_prior.py`.")
  return bank


def cache_dir() -> pathlib.Path:
  """~/.cache/interfusion_jax/prior (or $XDG_CACHE_HOME/...)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "interfusion_jax" / "prior"


def load_default_bank(spec: BankSpec = BankSpec(), progress: bool = True) -> dict:
  """The shipped bank, else the cached build, else build once and cache it."""
  if spec == BankSpec() and SHIPPED_PATH.exists():
    return load_bank(SHIPPED_PATH)
  cached = cache_dir() / f"bank-{spec.digest()}.npz"
  if cached.exists():
    return load_bank(cached)
  bank = build_bank(spec, progress=progress)
  save_bank(cached, bank)
  return bank


def prior_params(bank: dict, prior_spec: denoiser.PriorSpec = denoiser.PriorSpec()) -> dict:
  """The guidance params pytree of a bank (see ``denoiser.make_params``)."""
  return denoiser.make_params(bank["images"], bank["attrs"], prior_spec, bank["dirs"])


NOTICE = (
    "Guidance: the BUILT-IN offline prior (a closed-form denoiser over {n} procedural "
    "32x32 renders of the default body with 14 primitive objects in 12 colours). It is "
    "LOW FIDELITY: it knows colours, the listed objects and coarse silhouettes, "
    "nothing else. For the paper's guidance set --config.guidance.backend=auto "
    "--config.guidance.weights_dir=DeepFloyd/IF-I-XL-v1.0 (a hub id) or a local diffusers "
    "folder (see docs/prior.md).")


def load_builtin_guidance(options: core.GuidanceOptions, prompt: prompts.PromptSpec,
                          progress: bool = True):
  """(GuidanceSpec, params, embedding table) of the built-in prior for the trainer.

  The prompt table is built by the trainer's own ``prompts.embedding_table``
  with ``denoiser.embed_captions`` as the text encoder, so every view-dependent
  caption maps to its factorised conditioning.

  Args:
    options: the user's guidance settings; prompt: the scene's prompts.
    progress: progress bar if the bank has to be built.

  Returns:
    (spec, params, table) like ``train.load_guidance_and_text``.
  """
  if "builtin" not in core.BACKENDS:
    raise BankError("guidance/core.py does not register the 'builtin' backend; add "
                    "BACKENDS['builtin'] = (guidance.builtin.encode, guidance.builtin.predict_eps).")
  g = options
  pspec = denoiser.PriorSpec()
  if float(g.builtin_object_sharpness) >= 0:
    try:
      pspec = dataclasses.replace(pspec, object_sharpness=float(g.builtin_object_sharpness))
    except ValueError as e:
      raise BankError(f"config.guidance.builtin_object_sharpness: {e}") from e
  bank = load_default_bank(progress=progress)
  params = prior_params(bank, pspec)
  spec = core.GuidanceSpec(
      kind="builtin",
      guidance_scale=(float(g.guidance_scale) if g.guidance_scale >= 0
                      else denoiser.DEFAULT_GUIDANCE_SCALE),
      weighting=g.weighting or denoiser.DEFAULT_WEIGHTING,
      t_min=float(g.t_min), t_max=float(g.t_max),
      num_train_timesteps=pspec.num_train_timesteps, grad_clip=float(g.grad_clip),
      resolution=int(bank["images"].shape[1]),
      camera_conditioning=pspec.camera_kappa > 0)
  return spec, params, builtin_text_table(prompt)


def builtin_text_table(prompt: prompts.PromptSpec) -> dict:
  """The prompt-embedding table of ``prompt`` under the built-in prior's text encoder.

  Returns:
    ``prompts.embedding_table`` output ({name: [V, 1, D]}, "uncond": [1, D]).
  """
  return prompts.embedding_table(lambda texts: jnp.asarray(denoiser.embed_captions(texts)),
                                 prompt)
