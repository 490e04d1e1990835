"""Codebook build: render -> CLIP-embed -> K-Means (PAPER.md "Stage 1", 2-3).

    python -m interfusion_jax.pose.build --poses poses.npz --clip_dir CLIP \
        --out codebook.npz [--k 2048] [--body default] [--cache_dir DIR]

Clustering space. The paper clusters the pose *embeddings* (averaged CLIP
image features of the 4 renders); the official code clusters VPoser latents,
which are not available here. With ``--clip_dir`` we cluster the unit-norm
CLIP embeddings (the paper's choice). Without CLIP (the built-in codebook,
see tools/build_builtin_codebook.py) we cluster the pose vectors themselves
(66-D: body pose + global orientation, axis-angle) and the codebook's
"embeddings" are those pose-space centroids.

Each cluster's key pose is its medoid (the member nearest the centroid in the
clustering space), so it is always a real pose, never an average of
rotations. Embeddings are cached per chunk under the cache directory, keyed
by a hash of the inputs, so an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import pathlib
import sys
import time
import warnings
from typing import Mapping, Optional, Sequence

import numpy as np

from interfusion_jax.body import model as body_model
from interfusion_jax.body.model import body_model_digest
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.pose import codebook as codebook_lib
from interfusion_jax.pose import library
from interfusion_jax.pose import poseset as poseset_lib
from interfusion_jax.pose import render as render_lib

log = logging.getLogger(__name__)
DEFAULT_K = 2048


class ClusterCountWarning(UserWarning):
  """K was larger than the number of poses and has been capped."""


def capped_k(k: int, n: int) -> int:
  """min(k, n), warning when capped. k >= 1, n >= 1."""
  if k < 1:
    raise ValueError(f"K = {k}: the number of clusters must be >= 1.")
  if k > n:
    warnings.warn(f"K = {k} clusters requested but only {n} poses: using K = {n}.",
                  ClusterCountWarning, stacklevel=2)
    return n
  return k


def kmeans(features: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """K-Means as in the official code (PAPER.md "Stage 1", step 3).

  KMeans(n_clusters=k, random_state=seed, n_init="auto"), K capped at N.

  Args:
    features: [N, D] float.
    k: requested clusters.
    seed: random_state.

  Returns:
    labels [N] int64 in [0, K') with every cluster non-empty, centroids [K', D].
  """
  # Imported here: scikit-learn takes ~0.6 s to import and only codebook builds need it.
  from sklearn.cluster import KMeans  # pylint: disable=import-outside-toplevel
  x = np.asarray(features, np.float64)
  k = capped_k(k, x.shape[0])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=Warning)  # duplicate points etc.
    km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(x)
  labels, centroids = km.labels_.astype(np.int64), km.cluster_centers_
  used = np.unique(labels)  # drop clusters K-Means left empty (duplicates)
  remap = np.full(k, -1, np.int64)
  remap[used] = np.arange(used.size)
  return remap[labels], centroids[used]


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def assemble_codebook(poses: np.ndarray, orients: np.ndarray, phrases: Sequence[str],
                      features: np.ndarray, labels: np.ndarray, space: str,
                      metadata: dict,
                      phrase_expansion: Optional[Mapping[str, Sequence[str]]] = None
                      ) -> codebook_lib.Codebook:
  """Groups clustered poses into a Codebook.

  Args:
    poses: [N, 63]; orients: [N, 3]; phrases: N strings.
    features: [N, D] the clustering features.
    labels: [N] cluster ids in [0, K) (every id used).
    space: "clip" (embeddings = unit-norm mean of member features) or
      "pose" (embeddings = mean of member features).
    metadata: extra JSON-able metadata.
    phrase_expansion: optional phrase -> more phrases (e.g. a library label
      -> all its phrases) added to the cluster phrases after the members'.

  Returns:
    a validated Codebook with K clusters.
  """
  k = int(labels.max()) + 1
  order = np.argsort(labels, kind="stable")
  counts = np.bincount(labels, minlength=k)
  offsets = np.concatenate([[0], np.cumsum(counts)])
  key_idx, emb, cphr = [], [], []
  phrases = np.asarray(list(phrases))
  for c in range(k):
    mem = order[offsets[c]:offsets[c + 1]]
    f = features[mem]
    cen = f.mean(0)
    if space == "clip":
      cen = _unit(cen)
      key = mem[int(np.argmax(f @ cen))]
    else:
      key = mem[int(np.argmin(np.linalg.norm(f - cen, axis=1)))]
    key_idx.append(key)
    emb.append(cen)
    ph = collections.Counter(p for p in phrases[mem] if p)
    names = [p for p, _ in sorted(ph.items(), key=lambda t: (-t[1], t[0]))]
    for p in list(names):
      names += [q for q in (phrase_expansion or {}).get(p, ()) if q not in names]
    cphr.append(" | ".join(names))
  key_idx = np.asarray(key_idx)
  meta = dict(metadata, embedding_space=space, num_poses=int(len(poses)), k=k)
  return codebook_lib.make_codebook(
      poses=poses[key_idx], global_orients=orients[key_idx], embeddings=np.stack(emb),
      member_offsets=offsets, member_poses=poses[order], member_orients=orients[order],
      member_phrases=phrases[order], cluster_phrases=cphr, metadata=meta)


def pose_features(poses: np.ndarray, orients: np.ndarray) -> np.ndarray:
  """Pose-space clustering features: [N, 66] = concat(body_pose, orient)."""
  return np.concatenate([np.asarray(poses, np.float64), np.asarray(orients, np.float64)], 1)


def _cache_key(poses, orients, clip, body, spec, chunk) -> str:
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(poses, np.float32).tobytes())
  h.update(np.ascontiguousarray(orients, np.float32).tobytes())
  h.update(json.dumps([clip.name, clip.model.config.to_json_string(), spec.to_dict(),
                       chunk]).encode())
  h.update(body_model_digest(body).encode())
  return h.hexdigest()[:16]


def embed_poses(body, clip, poses: np.ndarray, orients: np.ndarray, spec,
                cache_dir: Optional[str | os.PathLike] = None, chunk: int = 64,
                progress: bool = False) -> np.ndarray:
  """Render every pose from every view, CLIP-embed, average over views.

  Args:
    body: BodyModel; clip: pose.clip.ClipBundle.
    poses: [N, 63]; orients: [N, 3].
    spec: render.PoseRenderSpec.
    cache_dir: if set, per-chunk embeddings are cached here (resumable).
    chunk: poses per chunk.

  Returns:
    [N, D] unit-norm pose embeddings.
  """
  n = poses.shape[0]
  cdir = None
  if cache_dir:
    cdir = pathlib.Path(cache_dir) / _cache_key(poses, orients, clip, body, spec, chunk)
    cdir.mkdir(parents=True, exist_ok=True)
  out, t0, mesh = [], time.time(), None
  for s in range(0, n, chunk):
    f = cdir / f"emb_{s:09d}.npy" if cdir else None
    if f is not None and f.is_file():
      out.append(np.load(f))
      continue
    if mesh is None:  # decimate once per build
      mesh = render_lib.decimate_mesh(np.asarray(body.v_template), np.asarray(body.faces),
                                      spec.max_faces)
    views = render_lib.render_poses(body, poses[s:s + chunk], orients[s:s + chunk], spec,
                                    mesh)["rgb"]
    b, v = views.shape[:2]
    feats = clip_lib.image_features(clip, views.reshape((b * v,) + views.shape[2:]))
    emb = _unit(feats.reshape(b, v, -1).mean(1)).astype(np.float32)
    if f is not None:
      tmp = f.with_name(f.name + ".tmp.npy")
      np.save(tmp, emb)
      os.replace(tmp, f)
    out.append(emb)
    if progress:
      log.info("embedded %d / %d poses (%.1f poses/s)", min(s + chunk, n), n,
               min(s + chunk, n) / max(time.time() - t0, 1e-9))
  return np.concatenate(out, 0)


def build_clip_codebook(ps: poseset_lib.PoseSet, body, clip, *, k: int = DEFAULT_K,
                        seed: int = 0, spec=None, use_orient: bool = False,
                        cache_dir=None, chunk: int = 64, body_name: str = "default",
                        progress: bool = False) -> codebook_lib.Codebook:
  """The paper's codebook: CLIP embeddings of 4-view renders -> K-Means.

  Args:
    ps: the pose set (N poses).
    body: BodyModel; clip: ClipBundle.
    k: clusters (capped at N with a warning).
    seed: K-Means random_state.
    spec: PoseRenderSpec (default: the official 4 views, 2.7, 224x224).
    use_orient: keep the pose set's global orientation (default: upright,
      as the official renders fix the orientation).
    cache_dir: embedding cache (resumable build).

  Returns:
    Codebook with embedding_space "clip".
  """
  spec = spec or render_lib.PoseRenderSpec()
  orients = ps.global_orient if use_orient else np.zeros_like(ps.global_orient)
  emb = embed_poses(body, clip, ps.body_pose, orients, spec, cache_dir, chunk, progress)
  labels, _ = kmeans(emb, k, seed)
  meta = dict(body_model=body_name, clip_model=clip.name, render=spec.to_dict(),
              cluster_space="clip_image_embedding", kmeans_seed=seed, k_requested=k,
              source="pose set")
  return assemble_codebook(ps.body_pose, orients, ps.phrase, emb, labels, "clip", meta)


def build_pose_codebook(ps: poseset_lib.PoseSet, *, k: int, seed: int = 0,
                        source: str = "pose set",
                        phrase_expansion: Optional[Mapping[str, Sequence[str]]] = None
                        ) -> codebook_lib.Codebook:
  """A weight-free codebook: K-Means on pose vectors (embedding_space "pose")."""
  feats = pose_features(ps.body_pose, ps.global_orient)
  labels, _ = kmeans(feats, k, seed)
  meta = dict(body_model="", clip_model="", render={}, cluster_space="pose_axis_angle_66",
              kmeans_seed=seed, k_requested=k, source=source)
  return assemble_codebook(ps.body_pose, ps.global_orient, ps.phrase, feats, labels,
                           "pose", meta, phrase_expansion)


def library_pose_set(augment_per_pose: int = 8, sigma: float = 0.06,
                     seed: int = 0) -> poseset_lib.PoseSet:
  """The hand-authored library plus ``augment_per_pose`` perturbed copies each.

  Returns:
    PoseSet with N = L (1 + augment_per_pose) poses; phrase = library label.
  """
  poses, orients, labels, _ = library.library_arrays()
  bp, go, ph = [], [], []
  for i in range(len(labels)):
    aug = library.augment(poses[i], augment_per_pose, seed=seed * 100003 + i, sigma=sigma)
    bp.append(np.concatenate([poses[i][None], aug], 0))
    go.append(np.repeat(orients[i][None], 1 + augment_per_pose, 0))
    ph += [labels[i]] * (1 + augment_per_pose)
  return poseset_lib.make_pose_set(np.concatenate(bp), np.concatenate(go), phrase=ph,
                                   source=["library"] * len(ph))


def library_phrases() -> dict[str, tuple[str, ...]]:
  """Library label -> all its phrases."""
  return {p.label: p.phrases for p in library.build_library()}


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m interfusion_jax.pose.build",
                              description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--poses", help="pose set .npz from tools/import_poses.py")
  src.add_argument("--library", action="store_true",
                   help="use the built-in library (+ augmentation) as the pose set")
  p.add_argument("--augment", type=int, default=8, help="perturbed copies per library pose")
  p.add_argument("--clip_dir", default="", help="local FlaxCLIPModel dir ('' = pose-space)")
  p.add_argument("--body", default="default", help="'default' or an SMPL-X file/dir")
  p.add_argument("--k", type=int, default=DEFAULT_K)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--use_orient", action="store_true",
                 help="render with the pose set's global_orient (default upright)")
  p.add_argument("--cache_dir", default="", help="embedding cache (default: <out>.cache)")
  p.add_argument("--chunk", type=int, default=64)
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  ps = library_pose_set(a.augment) if a.library else poseset_lib.load_pose_set(a.poses)
  log.info("pose set: %d poses", len(ps))
  if a.clip_dir:
    clip = clip_lib.load_clip(a.clip_dir)
    body = body_model.load_body_model(a.body)
    cb = build_clip_codebook(ps, body, clip, k=a.k, seed=a.seed, use_orient=a.use_orient or a.library,
                             cache_dir=a.cache_dir or a.out + ".cache", chunk=a.chunk,
                             body_name=a.body, progress=True)
  else:
    log.info("no --clip_dir: clustering in pose space (weight-free codebook)")
    cb = build_pose_codebook(ps, k=a.k, seed=a.seed,
                             source="library" if a.library else str(a.poses),
                             phrase_expansion=library_phrases() if a.library else None)
  codebook_lib.save(a.out, cb)
  log.info("wrote %s: K = %d, embeddings %s (%s)", a.out, cb.size, cb.embeddings.shape,
           cb.embedding_space)
  return 0


if __name__ == "__main__":
  sys.exit(main())
