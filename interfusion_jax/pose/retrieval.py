"""Text -> top-k codebook poses (PAPER.md "Stage 1", step 4).

Two backends:
  * "clip": theta_k = TOP_k(f_text(T), theta_E), the cosine similarity between
    the CLIP text embedding of ``query_template`` (official: "a rendered 3d
    man is {interaction}") and the codebook embeddings; optional AvatarCLIP
    de-duplication (pre-top-40, mean |axis-angle difference| <= 0.07).
  * "builtin": weight-free TF-IDF similarity between the interaction text and
    each cluster's phrases (pose.text_match).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from interfusion_jax.body import model as body_model
from interfusion_jax.pose import build
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.pose import codebook as codebook_lib
from interfusion_jax.pose import render
from interfusion_jax.pose import text_match

log = logging.getLogger(__name__)
DEDUP_PRE_K = 40
DEDUP_THRESHOLD = 0.07
DEFAULT_TEMPLATE = "a rendered 3d man is {interaction}"
FALLBACK_TEXT = "standing"  # built-in query when no phrase matches at all


@dataclasses.dataclass(frozen=True)
class Candidates:
  """Top-k retrieval result.

  Attributes:
    indices: [k] codebook cluster indices, best first.
    scores: [k] similarity scores.
    backend: "clip" or "builtin".
    query: the text that was scored.
  """
  indices: np.ndarray
  scores: np.ndarray
  backend: str
  query: str


def ranked(scores: np.ndarray) -> np.ndarray:
  """Indices [N] by decreasing score; ties broken by lower index."""
  scores = np.asarray(scores, np.float64)
  return np.lexsort((np.arange(scores.size), -scores))


def dedup(order: np.ndarray, poses: np.ndarray, pre_k: int = DEDUP_PRE_K,
          threshold: float = DEDUP_THRESHOLD) -> np.ndarray:
  """AvatarCLIP near-duplicate removal (PAPER.md "Stage 1", step 4).

  Walks the first ``pre_k`` entries of ``order`` and keeps an entry only if
  its mean |axis-angle difference| to every kept pose exceeds ``threshold``.

  Args:
    order: [N] indices, best first.
    poses: [K, 63] the codebook poses ``order`` indexes.

  Returns:
    [m] kept indices (m <= pre_k), best first.
  """
  kept: list[int] = []
  for i in np.asarray(order)[:pre_k]:
    if all(np.mean(np.abs(poses[i] - poses[j])) > threshold for j in kept):
      kept.append(int(i))
  return np.asarray(kept, np.int64)


def clip_scores(text_embedding: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
  """Cosine similarity [K] between a text embedding [D] and embeddings [K, D]."""
  t = np.asarray(text_embedding, np.float64)
  e = np.asarray(embeddings, np.float64)
  t = t / max(np.linalg.norm(t), 1e-12)
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  return e @ t


def builtin_scores(cb: codebook_lib.Codebook, text: str) -> np.ndarray:
  """TF-IDF similarity [K] between ``text`` and each cluster's phrases."""
  return text_match.similarity(text, [". ".join(cb.phrases(i)) for i in range(cb.size)])


def top_k(scores: np.ndarray, k: int, poses: Optional[np.ndarray] = None,
          use_dedup: bool = False) -> np.ndarray:
  """Indices [min(k, K)] of the best scores, optionally de-duplicated first."""
  order = ranked(scores)
  if use_dedup:
    order = dedup(order, poses)
  return order[:k]


def query_text(template: str, interaction: str) -> str:
  """Fills the query template ("{interaction}" placeholder, else appended)."""
  if "{interaction}" in template:
    return template.replace("{interaction}", interaction.strip())
  return (template.rstrip() + " " + interaction.strip()).strip()


def codebook_clip_embeddings(cb: codebook_lib.Codebook, clip, body=None,
                             spec=None) -> np.ndarray:
  """CLIP embeddings [K, D] of the codebook's key poses.

  A "clip" codebook stores them; for a "pose" codebook (the built-in one)
  the key poses are rendered and embedded now.
  """
  if cb.embedding_space == "clip":
    if cb.embeddings.shape[1] != clip.dim:
      raise codebook_lib.CodebookError(
          f"The codebook embeddings have D = {cb.embeddings.shape[1]} but the CLIP "
          f"model in {clip.name!r} has projection_dim {clip.dim}; rebuild the "
          "codebook with this CLIP model (python -m interfusion_jax.pose.build).")
    return cb.embeddings
  log.info("codebook has no CLIP embeddings: rendering and embedding its %d key poses",
           cb.size)
  body = body if body is not None else body_model.load_body_model("default")
  return build.embed_poses(body, clip, cb.poses, cb.global_orients,
                           spec or render.PoseRenderSpec())


def retrieve(cb: codebook_lib.Codebook, interaction: str, *, clip=None, k: int = 7,
             use_dedup: bool = False, template: str = DEFAULT_TEMPLATE,
             body=None, spec=None) -> Candidates:
  """Top-k codebook clusters for an interaction text.

  Args:
    cb: the codebook.
    interaction: T_I, e.g. "riding a bike".
    clip: a pose.clip.ClipBundle -> "clip" backend; None -> "builtin".
    k: candidates to return.
    use_dedup: AvatarCLIP de-duplication before the top-k.
    template: CLIP query template.
    body: BodyModel used if the codebook must be embedded on the fly.
    spec: PoseRenderSpec for that (default: the official 4 views).

  Returns:
    Candidates (indices [k'], scores [k'], k' = min(k, K after de-dup)).
  """
  if not interaction or not interaction.strip():
    raise text_match.EmptyTextError(
        "The interaction text is empty; give one such as 'riding a bike' "
        "(--text or config.prompt.interaction).")
  if clip is not None:
    q = query_text(template, interaction)
    scores = clip_scores(clip_lib.text_features(clip, [q])[0],
                         codebook_clip_embeddings(cb, clip, body, spec))
    backend = "clip"
  else:
    q = interaction.strip()
    scores = builtin_scores(cb, q)
    backend = "builtin"
    if scores.max() <= 0.0:
      log.warning("no phrase of the codebook matches %r; falling back to a neutral "
                  "standing pose (set config.pose.clip_dir, or pick an anchor by hand)", q)
      scores = builtin_scores(cb, FALLBACK_TEXT) * 1e-3
  idx = top_k(scores, k, cb.poses, use_dedup)
  log.info("pose retrieval backend: %s (query %r, top-%d)", backend, q, idx.size)
  return Candidates(indices=idx, scores=scores[idx].astype(np.float32), backend=backend,
                    query=q)
