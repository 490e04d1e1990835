"""Best-of-N seeds: ranking the seeds of each sweep scene, and the ``<scene>/best`` link.

A sweep row with N > 1 seeds (``python -m interfusion_jax.sweep --seeds=N`` or
a ``seeds`` column) trains N runs ``<sweep>/<scene>/seed-<seed>/`` in the same
vmapped group. ``rank_sweep`` then reads the finished runs and orders the
seeds of each scene by one score, highest first:

* **CLIP** (when a CLIP model is given): the CLIP score of the interaction
  render against the full scene prompt ``T_H T_I`` (the human prompt followed
  by the interaction), as ``clip_score`` and the paper's protocol measure it
  (mean cosine over the turntable views).
* **Geometry** (without CLIP): ``geometry_score`` of the bar metrics
  (``metrics.evaluate_state``): ``human_iou - object_inside_fraction -
  min(object_gap_m / GAP_SCALE_M, 1)``, and ``EMPTY_OBJECT_SCORE`` when the
  object field is empty. It rewards a human that stays on the anchor body, an
  object outside the body and in contact with it.

Seeds that did not finish are ranked after every finished one, without a
score. The ranking goes into ``sweep.json`` (``ranking``, and ``rank``,
``rank_score``, ``best`` on every seed's entry) and ``sweep.csv``; the best
seed of each scene is linked as ``<sweep>/<scene>/best`` (a relative symbolic
link to ``seed-<seed>``), which ``render``, ``export`` and ``evaluate`` take
as a run directory.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from typing import Callable, Optional

from interfusion_jax.evaluation import clip_score as clip_score_lib
from interfusion_jax.evaluation import protocol
from interfusion_jax.pose import clip as clip_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import sweep as sweep_lib

BEST_LINK = "best"
GAP_SCALE_M = 0.05        # an object 5 cm or more off the body costs a whole point
EMPTY_OBJECT_SCORE = -2.0  # below any score of a scene with an object


def geometry_score(geometry: dict) -> float:
  """The documented score of a run's bar metrics (higher is better); see the module doc.

  Args:
    geometry: ``metrics.evaluate_state``'s dict (``human_iou``,
      ``object_inside_fraction``, ``object_gap_m``, ``object_volume_litres``).
  """
  if not float(geometry.get("object_volume_litres") or 0.0) > 0.0:
    return EMPTY_OBJECT_SCORE
  gap = float(geometry.get("object_gap_m") or 0.0)
  gap_cost = 1.0 if not math.isfinite(gap) else min(max(gap, 0.0) / GAP_SCALE_M, 1.0)
  return (float(geometry["human_iou"]) - float(geometry["object_inside_fraction"]) - gap_cost)


def clip_rank_score(record: dict) -> float:
  """The CLIP score of the interaction render against ``T_H T_I`` of an eval record."""
  return float(record["clip"]["interaction"]["score"])


def _link_best(scene_dir: pathlib.Path, target: str) -> None:
  """``scene_dir/best`` -> ``target`` (relative), replaced atomically."""
  tmp = scene_dir / f".{BEST_LINK}.tmp{os.getpid()}"
  if tmp.is_symlink() or tmp.exists():
    tmp.unlink()
  os.symlink(target, tmp, target_is_directory=True)
  os.replace(tmp, scene_dir / BEST_LINK)


def rank_sweep(sweep_dir, *, clip: Optional[clip_lib.ClipBundle] = None,
               score_spec: clip_score_lib.ClipScoreSpec = clip_score_lib.ClipScoreSpec(),
               grid_resolution: int = 64,
               load: Optional[Callable] = None) -> dict:
  """Ranks the seeds of every best-of-N scene of a finished sweep; rewrites its index.

  Args:
    sweep_dir: a sweep directory (``sweep.json`` with a ``seeds`` map
      {scene: [run names]}, as ``stage2.sweep.run_sweep`` writes it).
    clip: rank by CLIP (``clip_rank_score``); None ranks by ``geometry_score``.
    score_spec: the CLIP views; grid_resolution: R of the geometry grid.
    load: workdir -> (config, spec, state); default ``loop.load_trained``.

  Returns:
    {scene: {"by": "clip" | "geometry", "order": [run names, best first],
    "scores": {run name: score | None}, "best": run name | None}}; empty when
    the sweep has no scene with several seeds (then nothing is written).
  """
  root = pathlib.Path(sweep_dir).expanduser().absolute()
  index = json.loads((root / "sweep.json").read_text())
  seeds = index.get("seeds") or {}
  if not seeds:
    return {}
  load = load or loop.load_trained
  entries = {e["name"]: e for e in index["scenes"]}
  by = "clip" if clip is not None else "geometry"
  ranking = {}
  for scene, names in seeds.items():
    scores = {}
    for name in names:
      if entries.get(name, {}).get("status") != "done":
        scores[name] = None
        continue
      run = root / name
      config, spec, state = load(str(run))
      record, _ = protocol.evaluate_loaded(run, config, spec, state, clip=clip,
                                           score_spec=score_spec,
                                           grid_resolution=grid_resolution,
                                           geometry=clip is None)
      scores[name] = (clip_rank_score(record) if clip is not None
                      else geometry_score(record["geometry"]))
    done = sorted((n for n in names if scores[n] is not None), key=lambda n: -scores[n])
    order = done + [n for n in names if scores[n] is None]
    best = done[0] if done else None
    ranking[scene] = {"by": by, "order": order, "scores": scores, "best": best}
    for rank, name in enumerate(order, 1):
      if name in entries:
        entries[name].update(rank=rank, rank_score=scores[name], best=name == best)
    if best is not None:
      _link_best(root / scene, pathlib.Path(best).name)
      logging.info("Best of %d seeds of %s (by %s): %s", len(names), scene, by, best)
  meta = {k: v for k, v in index.items() if k != "scenes"}
  meta["ranking"] = ranking
  sweep_lib.write_index(root, index["scenes"], meta)
  return ranking


def best_runs(sweep_dir) -> dict:
  """{scene: best run name} recorded in a sweep's ``sweep.json`` (empty if unranked)."""
  try:
    index = json.loads((pathlib.Path(sweep_dir) / "sweep.json").read_text())
  except (OSError, ValueError):
    return {}
  return {scene: r.get("best") for scene, r in (index.get("ranking") or {}).items()
          if r.get("best")}



def refresh_ranking(sweep_dir, clip_dir: str = "") -> dict:
  """``rank_sweep`` after a sweep, as the command line calls it (CLIP from ``clip_dir``
  when given): a failure is logged with how to retry and never fails the sweep
  (its runs are complete).

  Returns:
    ``rank_sweep``'s ranking (empty after a failure).
  """
  try:
    clip = clip_lib.load_clip(clip_dir) if str(clip_dir).strip() else None
    return rank_sweep(sweep_dir, clip=clip)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("Could not rank the seeds of %s (%s); re-run the same sweep command to "
                    "rank them (finished scenes are not trained again).", sweep_dir, e)
    return {}
