"""Stage 1 end to end: text -> anchor pose, and the anchor file format.

The anchor ``.npz`` (no pickles) holds:
  body_pose [63], global_orient [3]   the chosen pose (axis-angle, y-up body frame)
  text                                T_I, the interaction text
  query                               the text actually scored
  backend                             "clip" or "builtin"
  source                              "codebook index <c>" (clip) or the
                                      library label (builtin)
  cluster, member, position           codebook cluster / member index (-1 = key
                                      pose) / position among the candidates
  candidate_indices [k], candidate_scores [k], candidate_labels [k]
  rerank_scores [k or 0], choose, rank, seed, codebook
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any, Optional

import numpy as np

from interfusion_jax.body import model as body_model
from interfusion_jax.pose import choose as choose_lib
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.pose import codebook as codebook_lib
from interfusion_jax.pose import retrieval

log = logging.getLogger(__name__)


class AnchorFileError(ValueError):
  """An anchor file is malformed."""


# Seeds (stage 1's sampling, stage 2's PRNG keys) hold 32 bits: 0 <= seed < 2^32, so
# no two seeds alias (jax.random.PRNGKey keeps the low 32 bits of larger ones).
SEED_LIMIT = 2 ** 32

# The largest rotation angle (axis-angle norm, radians) an anchor file may hold per
# joint. A rotation needs at most pi; 4 pi leaves room for unwrapped angles and
# refuses the absurd (1e30 rad: sin/cos of it are noise and the body degenerates).
MAX_ROTATION_RAD = 4 * np.pi


@dataclasses.dataclass(frozen=True)
class AnchorPose:
  """body_pose [63], global_orient [3] (float32) and a JSON-able meta dict."""
  body_pose: np.ndarray
  global_orient: np.ndarray
  meta: dict


def save_anchor(path: str | os.PathLike, anchor: AnchorPose) -> pathlib.Path:
  """Writes the anchor .npz (see module docstring). Returns the path written: ``path``,
  with ``.npz`` appended when it has another suffix or none (as ``np.savez`` does)."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path.with_name(path.name + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays: dict[str, Any] = {}
  for key, val in anchor.meta.items():
    arrays[key] = np.asarray(val)
  arrays["body_pose"] = np.asarray(anchor.body_pose, np.float32).reshape(63)
  arrays["global_orient"] = np.asarray(anchor.global_orient, np.float32).reshape(3)
  np.savez(path, **arrays)
  return path


def load_anchor(path: str | os.PathLike) -> AnchorPose:
  """Reads an anchor .npz (from ``python -m interfusion_jax.pose`` or by hand).

  Only ``body_pose`` [63] is required; ``global_orient`` defaults to zeros. Every
  value must be finite and every joint's rotation at most ``MAX_ROTATION_RAD``.

  Raises:
    FileNotFoundError, AnchorFileError.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"Anchor file {str(path)!r} (config.pose.anchor_file) does not exist; "
        "make one with `python -m interfusion_jax.pose --text ... --out anchor.npz` "
        "or leave config.pose.anchor_file empty to retrieve one.")
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise AnchorFileError(f"{path}: cannot be read as an anchor .npz ({e}).") from e
  if "body_pose" not in data:
    raise AnchorFileError(f"{path}: no 'body_pose' array (expected [63] axis-angle).")
  bp = np.asarray(data.pop("body_pose"), np.float32)
  go = np.asarray(data.pop("global_orient", np.zeros(3)), np.float32)
  if bp.size != 63 or go.size != 3:
    raise AnchorFileError(f"{path}: body_pose has {bp.size} numbers and global_orient "
                          f"{go.size}; expected 63 (21 SMPL-X body joints) and 3.")
  if not (np.all(np.isfinite(bp)) and np.all(np.isfinite(go))):
    raise AnchorFileError(f"{path}: body_pose/global_orient contain NaN or inf.")
  angles = np.linalg.norm(np.concatenate([go.reshape(1, 3), bp.reshape(21, 3)]).astype(np.float64),
                          axis=-1)
  if angles.max() > MAX_ROTATION_RAD:
    raise AnchorFileError(f"{path}: a joint rotates by {float(angles.max()):.3g} rad; axis-angle "
                          f"rotations must be at most 4 pi = {MAX_ROTATION_RAD:.4g} rad.")
  meta = {k: (v.item() if v.ndim == 0 else v.tolist()) for k, v in data.items()}
  meta.setdefault("anchor_file", str(path))
  return AnchorPose(bp.reshape(63), go.reshape(3), meta)


def find_anchor(cb: codebook_lib.Codebook, interaction: str, *, clip=None, body=None,
                top_k: int = 7, method: str = "best", rank: int = 0, seed: int = 0,
                use_dedup: bool = False, template: str = retrieval.DEFAULT_TEMPLATE,
                scene_prompt: str = "", codebook_name: str = "builtin", spec=None
                ) -> tuple[AnchorPose, retrieval.Candidates]:
  """Retrieval + choice (PAPER.md "Stage 1", steps 4-5).

  Args:
    cb: codebook; interaction: T_I.
    clip: ClipBundle or None (built-in text retrieval).
    body: BodyModel for renders (clip_rerank / on-the-fly embedding).
    top_k, method, rank, seed, use_dedup, template: see retrieval / choose.
    scene_prompt: full scene prompt for clip_rerank (default: interaction).
    spec: PoseRenderSpec of the renders (default: the official 4 views).

  Returns:
    (AnchorPose, the Candidates).
  """
  cands = retrieval.retrieve(cb, interaction, clip=clip, k=top_k, use_dedup=use_dedup,
                             template=template, body=body, spec=spec)
  rer = None
  if method == "clip_rerank":
    if clip is None:
      raise choose_lib.ChoiceError(
          "choose = 'clip_rerank' needs a CLIP model: set config.pose.clip_dir "
          "(--clip_dir), or use choose = best | rank | sample.")
    if body is None:
      body = body_model.load_body_model("default")
    idx = cands.indices
    rer = choose_lib.clip_rerank_scores(clip, body, cb.poses[idx], cb.global_orients[idx],
                                        scene_prompt or interaction, spec)
  ch = choose_lib.choose(cb, cands, method, rank=rank, seed=seed, rerank_scores=rer)
  labels = [(cb.phrases(int(i)) or [""])[0] for i in cands.indices]
  label = labels[ch.position]
  if ch.member >= 0:
    label = str(cb.member_phrases[ch.member]) or label
  meta = dict(
      text=interaction, query=cands.query, backend=cands.backend,
      source=(label if cands.backend == "builtin" else f"codebook index {ch.cluster}"),
      label=label, cluster=ch.cluster, member=ch.member, position=ch.position,
      candidate_indices=cands.indices.astype(np.int64).tolist(),
      candidate_scores=cands.scores.astype(np.float32).tolist(),
      candidate_labels=labels, rerank_scores=ch.rerank_scores.tolist(),
      choose=method, rank=rank, seed=seed, codebook=codebook_name)
  return AnchorPose(np.asarray(ch.body_pose, np.float32),
                    np.asarray(ch.global_orient, np.float32), meta), cands


@dataclasses.dataclass(frozen=True)
class AnchorQuery:
  """What stage 1 needs to pick the anchor pose (``config.pose`` plus the scene's
  prompts, body and seed; translated once by ``stage2.config.anchor_query``).

  Attributes:
    interaction, human: T_I and T_H (T_I is retrieved; "T_H T_I" reranks).
    anchor_file: load this anchor ``.npz`` instead of retrieving ("" = retrieve).
    codebook: codebook ``.npz`` ("" = the built-in library codebook).
    clip_dir: local FlaxCLIP directory or hub model id ("" = built-in text retrieval).
    query: the text the pose is retrieved with ("" = ``interaction``; the
      release's shopping-cart scene trains on "carrying" but poses "pushing").
    top_k, choose, rank, dedup, query_template: the retrieval and choice
      (``find_anchor``).
    body_model, body_gender: the body of CLIP reranking renders.
    seed: the run's seed (``choose="sample"``).
  """
  interaction: str
  human: str = ""
  anchor_file: str = ""
  codebook: str = ""
  clip_dir: str = ""
  query: str = ""
  top_k: int = 7
  choose: str = "best"
  rank: int = 0
  dedup: bool = False
  query_template: str = "a rendered 3d man is {interaction}"
  body_model: str = "default"
  body_gender: str = "neutral"
  seed: int = 0


def retrieve_anchor(query: AnchorQuery) -> AnchorPose:
  """The trainer's entry point: the anchor pose of ``query``.

  Returns:
    AnchorPose(body_pose [63], global_orient [3], meta).
  """
  q = query
  if q.anchor_file:
    anchor = load_anchor(q.anchor_file)
    log.info("anchor pose: loaded %s", q.anchor_file)
    return anchor
  cb = codebook_lib.load(q.codebook or None)
  clip = body = None
  if q.clip_dir:
    clip = clip_lib.load_clip(q.clip_dir)
  if clip is not None:
    body = body_model.load_body_model(q.body_model, q.body_gender)
  text = q.query.strip() or q.interaction
  scene = f"{q.human} {text}".strip()
  anchor, _ = find_anchor(
      cb, text, clip=clip, body=body, top_k=q.top_k,
      method=q.choose, rank=q.rank, seed=int(q.seed), use_dedup=q.dedup,
      template=q.query_template, scene_prompt=scene,
      codebook_name=q.codebook or "builtin")
  log.info("anchor pose: %s retrieval chose %r", anchor.meta["backend"],
           anchor.meta["source"])
  return anchor
