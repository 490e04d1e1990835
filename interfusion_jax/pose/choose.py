"""Choosing one anchor pose among the top-k (PAPER.md "Stage 1", step 5).

The paper asks GPT-4V; it also allows picking by hand or sampling inside a
cluster. Methods:
  * "best": the top candidate;
  * "rank": the candidate at a given rank (0 = best), e.g. chosen by a person
    from the contact sheet;
  * "clip_rerank": render every candidate and score it with CLIP against the
    full scene prompt (our offline stand-in for GPT-4V);
  * "sample": a random member (given a seed) of the cluster at ``rank``.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.pose import codebook as codebook_lib
from interfusion_jax.pose import render
from interfusion_jax.pose.retrieval import Candidates

METHODS = ("best", "rank", "clip_rerank", "sample")


class ChoiceError(ValueError):
  """Invalid choice settings."""


@dataclasses.dataclass(frozen=True)
class Choice:
  """The chosen pose.

  Attributes:
    body_pose: [63]; global_orient: [3].
    position: its position in the candidate list.
    cluster: codebook cluster index.
    member: index into the codebook member arrays, or -1 for the key pose.
    rerank_scores: [k] CLIP re-rank scores (clip_rerank only, else empty).
  """
  body_pose: np.ndarray
  global_orient: np.ndarray
  position: int
  cluster: int
  member: int
  rerank_scores: np.ndarray


def clip_rerank_scores(clip, body, poses: np.ndarray, orients: np.ndarray,
                       scene_prompt: str, spec=None) -> np.ndarray:
  """Mean (over the views) CLIP image-text cosine of each rendered pose.

  Args:
    clip: ClipBundle; body: BodyModel.
    poses: [k, 63]; orients: [k, 3].
    scene_prompt: the full scene prompt.
    spec: PoseRenderSpec (default: the 4 codebook views).

  Returns:
    [k] float32 scores.
  """
  spec = spec or render.PoseRenderSpec()
  views = render.render_poses(body, poses, orients, spec)["rgb"]
  b, v = views.shape[:2]
  img = clip_lib.image_features(clip, views.reshape((b * v,) + views.shape[2:]))
  txt = clip_lib.text_features(clip, [scene_prompt])[0]
  return (img @ txt).reshape(b, v).mean(1).astype(np.float32)


def choose(cb: codebook_lib.Codebook, cands: Candidates, method: str = "best", *,
           rank: int = 0, seed: int = 0,
           rerank_scores: Optional[np.ndarray] = None) -> Choice:
  """Picks one pose.

  Args:
    cb: the codebook the candidates index.
    cands: top-k candidates.
    method: one of METHODS.
    rank: candidate position for "rank" and "sample".
    seed: NumPy seed for "sample".
    rerank_scores: [k] scores for "clip_rerank" (see clip_rerank_scores).

  Returns:
    a Choice.
  """
  k = int(cands.indices.size)
  if method not in METHODS:
    raise ChoiceError(f"choose = {method!r}: unknown method; use one of {list(METHODS)}.")
  if k == 0:
    raise ChoiceError("No candidates to choose from.")
  empty = np.zeros((0,), np.float32)
  if method in ("rank", "sample") and not 0 <= rank < k:
    raise ChoiceError(f"rank = {rank} but there are only {k} candidates (0..{k - 1}); "
                      "look at the contact sheet and pass --rank in that range.")
  if method == "clip_rerank":
    if rerank_scores is None or np.asarray(rerank_scores).shape != (k,):
      raise ChoiceError("clip_rerank needs [k] re-rank scores: set a CLIP directory "
                        "(config.pose.clip_dir / --clip_dir).")
    pos = int(np.argmax(rerank_scores))
    c = int(cands.indices[pos])
    return Choice(cb.poses[c], cb.global_orients[c], pos, c, -1,
                  np.asarray(rerank_scores, np.float32))
  pos = 0 if method == "best" else rank
  c = int(cands.indices[pos])
  if method == "sample":
    m = int(np.random.default_rng(seed).choice(cb.members(c)))
    return Choice(cb.member_poses[m], cb.member_orients[m], pos, c, m, empty)
  return Choice(cb.poses[c], cb.global_orients[c], pos, c, -1, empty)
