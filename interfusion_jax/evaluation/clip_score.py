"""CLIP score and CLIP R-precision of trained scenes, as the paper measures them.

* **CLIP score** (PAPER.md "How the paper evaluates"): the cosine similarity
  between a prompt's CLIP text embedding and the CLIP image embedding of a
  render, averaged over N turntable views of the eval camera. The
  interaction scene is scored against the full scene prompt ``T_H T_I``
  (the human prompt followed by the interaction, as the guidance's
  interaction prompt), the human render against ``T_H`` and the object
  render against ``T_O``. Raw cosines (not x100).
* **CLIP R-precision** over the scenes of a sweep: the share of scenes whose
  own full prompt scores strictly higher than every other distinct prompt of
  the sweep (a tie counts as a miss).

Views are albedo renders on white (``outputs.render_eval``) at azimuths
``360 k / N``, k = 0..N-1, at the eval camera's distance and fovy and the
chosen elevation, rendered directly at the chosen resolution; CLIP resizes
them to its input size (bilinear, antialiased) only when the two differ.
The CLIP model is a local FlaxCLIP directory (``pose.clip``); nothing is
downloaded.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import jax
import numpy as np

from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.stage2 import outputs as outputs_lib
from interfusion_jax.stage2 import step as step_lib

PARTS = ("interaction", "human", "object")


@dataclasses.dataclass(frozen=True)
class ClipScoreSpec:
  """How the views are taken.

  Attributes:
    views: N turntable views (azimuths 360 k / N degrees).
    elevation_deg: camera elevation; None = the run's eval elevation
      (``config.camera.eval_elevation_deg``).
    resolution: render size in pixels (square); 0 = the CLIP model's input size.
  """
  views: int = 8
  elevation_deg: Optional[float] = None
  resolution: int = 0

  def __post_init__(self):
    if int(self.views) < 1:
      raise ValueError(f"ClipScoreSpec.views = {self.views}: need at least 1 view.")
    if int(self.resolution) < 0:
      raise ValueError(f"ClipScoreSpec.resolution = {self.resolution}: must be >= 0 "
                       "(0 = the CLIP input size).")


def scene_prompts(prompt: Mapping[str, str]) -> dict:
  """{"interaction": "T_H T_I", "human": T_H, "object": T_O} of a scene's prompts
  ``{"human", "object", "interaction"}`` (e.g. ``rundirs.saved_prompt``)."""
  human, obj, inter = (str(prompt[k]).strip() for k in ("human", "object", "interaction"))
  return {"interaction": f"{human} {inter}", "human": human, "object": obj}


def view_spec(spec: step_lib.TrainSpec, score_spec: ClipScoreSpec,
              image_size: int) -> step_lib.TrainSpec:
  """``spec`` rendering the score views: the chosen size and elevation."""
  size = int(score_spec.resolution) or int(image_size)
  out = outputs_lib.at_size(spec, size)
  if score_spec.elevation_deg is not None:
    out = dataclasses.replace(out, camera=dataclasses.replace(
        out.camera, eval_elevation_deg=float(score_spec.elevation_deg)))
  return out


def render_views(state: step_lib.TrainState, spec: step_lib.TrainSpec,
                 score_spec: ClipScoreSpec, image_size: int) -> dict:
  """The N score views of the three renders.

  Args:
    state: a host TrainState; spec: its TrainSpec.
    image_size: the CLIP input size (used when ``score_spec.resolution`` is 0).

  Returns:
    {"interaction" | "human" | "object": [N, S, S, 3] float32 in [0, 1]}.
  """
  vspec = view_spec(spec, score_spec, image_size)
  fn = outputs_lib.eval_fn(vspec)
  out = {p: [] for p in PARTS}
  n = int(score_spec.views)
  for k in range(n):
    cams = outputs_lib.eval_cameras(vspec, state.object_center, 360.0 * k / n)
    imgs = jax.device_get(fn(state.params, state.occupancy, cams))
    for p in PARTS:
      out[p].append(np.clip(np.asarray(imgs[p]["rgb"], np.float32), 0.0, 1.0))
  return {p: np.stack(v) for p, v in out.items()}


def cosine_matrix(image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
  """Cosine similarities of unit-norm features: [N, D] x [T, D] -> [N, T]."""
  return np.asarray(image_features, np.float64) @ np.asarray(text_features, np.float64).T


def clip_score(clip: clip_lib.ClipBundle, images: np.ndarray, text: str) -> dict:
  """CLIP score of N views against one prompt.

  Args:
    images: [N, H, W, 3] float in [0, 1].

  Returns:
    {"score": mean cosine, "per_view": [N] cosines, "image_features": [N, D]}.
  """
  img = clip_lib.image_features(clip, images)
  txt = clip_lib.text_features(clip, [text])
  cos = cosine_matrix(img, txt)[:, 0]
  return {"score": float(cos.mean()), "per_view": cos.tolist(), "image_features": img}


def scene_clip_scores(clip: clip_lib.ClipBundle, views: dict, prompts: dict) -> dict:
  """``clip_score`` of each render against its prompt (see the module docstring).

  Returns:
    {part: {"prompt", "score", "per_view"}} for the three parts, plus
    "interaction_features": [N, D] (for R-precision; not JSON).
  """
  out = {}
  for p in PARTS:
    s = clip_score(clip, views[p], prompts[p])
    out[p] = {"prompt": prompts[p], "score": s["score"], "per_view": s["per_view"]}
    if p == "interaction":
      out["interaction_features"] = s["image_features"]
  return out


def prompt_score_matrix(clip: clip_lib.ClipBundle, view_features: Sequence[np.ndarray],
                        prompts: Sequence[str]) -> np.ndarray:
  """CLIP score of every scene against every prompt.

  Args:
    view_features: S arrays [N_s, D] of unit image features (one per scene).
    prompts: P prompt strings.

  Returns:
    [S, P] mean-over-views cosines.
  """
  txt = clip_lib.text_features(clip, list(prompts))
  return np.stack([cosine_matrix(f, txt).mean(0) for f in view_features])


def r_precision(scores: np.ndarray, own: Sequence[int]) -> float:
  """Share of scenes whose own prompt ranks strictly first.

  Args:
    scores: [S, P] scene-vs-prompt scores (higher = better match).
    own: S indices into the P prompts (scene s's own prompt).

  Returns:
    the share in [0, 1]; a scene whose own score ties another prompt's is a miss.

  Raises:
    ValueError: for mismatched shapes, an index out of range, or fewer than 2 prompts.
  """
  scores = np.asarray(scores, np.float64)
  own = np.asarray(own, np.int64)
  if scores.ndim != 2 or scores.shape[0] != own.shape[0] or scores.shape[0] == 0:
    raise ValueError(f"r_precision: scores {scores.shape} must be [S, P] with S = len(own) "
                     f"= {own.shape[0]} > 0.")
  if scores.shape[1] < 2:
    raise ValueError("r_precision needs at least 2 distinct prompts; a sweep of one prompt "
                     "has no ranking.")
  if own.min() < 0 or own.max() >= scores.shape[1]:
    raise ValueError(f"r_precision: own prompt indices {own.tolist()} out of range "
                     f"[0, {scores.shape[1]}).")
  hits = []
  for s, j in enumerate(own):
    others = np.delete(scores[s], j)
    hits.append(bool(scores[s, j] > others.max()))
  return float(np.mean(hits))
