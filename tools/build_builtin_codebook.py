"""Rebuilds the built-in (weight-free) pose codebook shipped in the package.

    python tools/build_builtin_codebook.py [--augment 8] [--k 0] [--out ...]

Pose set: the hand-authored library (interfusion_jax/pose/library.py), each
pose plus ``--augment`` small perturbations (sigma 0.06 rad per joint).
Clustering: K-Means in pose space (body pose + global orientation, 66-D;
no CLIP weights needed). K defaults to 2 clusters per library pose, so every
interaction keeps its own clusters and "sample" has members to pick from.
Deterministic: the same command writes the same arrays.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from interfusion_jax.pose import build, codebook, library  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--augment", type=int, default=8)
  p.add_argument("--sigma", type=float, default=0.06)
  p.add_argument("--k", type=int, default=0, help="0 = 2 per library pose")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=str(codebook.BUILTIN_PATH))
  a = p.parse_args(argv)
  n_lib = len(library.build_library())
  ps = build.library_pose_set(a.augment, a.sigma, a.seed)
  k = a.k or 2 * n_lib
  cb = build.build_pose_codebook(ps, k=k, seed=a.seed, source="builtin library",
                                 phrase_expansion=build.library_phrases())
  codebook.save(a.out, cb)
  print(f"wrote {a.out}: {n_lib} library poses, {len(ps)} with augmentation, "
        f"K = {cb.size} clusters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
