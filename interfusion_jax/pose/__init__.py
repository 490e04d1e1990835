"""Stage 1 (PAPER.md "Stage 1"): text -> anchor body pose.

library     hand-authored interaction key poses (+ augmentation)
text_match  weight-free TF-IDF text similarity (built-in retrieval)
clip        CLIP text/image features from a local FlaxCLIPModel directory
render      4-view shaded renders of body poses, contact sheets
poseset     pose-set file (codebook build input)
codebook    codebook file format
build       render -> embed -> K-Means codebook build (python -m ...pose.build)
retrieval   top-k retrieval (clip / builtin), de-duplication
choose      best / rank / clip_rerank / sample
anchor      anchor file format, retrieve_anchor(AnchorQuery) for the trainer
"""
from interfusion_jax.pose.anchor import AnchorPose, load_anchor, retrieve_anchor, save_anchor

__all__ = ["AnchorPose", "load_anchor", "retrieve_anchor", "save_anchor"]
