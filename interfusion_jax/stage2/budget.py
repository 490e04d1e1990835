"""The sample budget of a run: grown when occupied samples overflow it, or fixed.

The renderer packs the occupied samples of a render into a static budget of
R * ``render.sample_budget`` field evaluations (``nerf.render.compact_indices``)
and drops the deepest ones when there are more (``samples_dropped``). The
release evaluates every occupied sample. With ``render.budget_growth = "grow"``
(the default) a step that dropped samples makes the run grow the budget
(``nerf.render.grown_sample_budget``: at least doubled, up to
``render.max_sample_budget``) and re-jit the step at the new size, once per
growth, with one log line; from the next step on every occupied sample is
evaluated again. ``"fixed"`` keeps one compile and counts what it drops.

``SampleBudget`` is the loop's record of one group of scenes (they share one
compiled step, so the group grows as one): the budget now, the growths, and
per scene the peak of ``samples_dropped``, the steps that dropped samples and
their total. It goes into ``summary.json`` (``summary``) and is saved next to
the checkpoints (``save``, ``FILE``) so a resumed run continues at the budget
it had reached.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import numpy as np

from interfusion_jax import fileio
from interfusion_jax.nerf import render as render_lib

MODES = ("grow", "fixed")
FILE = "sample_budget.json"


@dataclasses.dataclass(frozen=True)
class BudgetPolicy:
  """config.render.budget_growth and the resolved cap (stage2.config.budget_policy).

  mode: "grow" | "fixed"; maximum: per-ray cap of a grown budget (at most
  render.num_samples; there nothing can be dropped).
  """
  mode: str = "grow"
  maximum: int = 512

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"budget mode {self.mode!r} is unknown; choose one of {MODES} "
                       "(config.render.budget_growth).")


class SampleBudget:
  """The sample budget of one group of S scenes over a run (host side).

  Args:
    policy: BudgetPolicy.
    start: the configured per-ray budget (``RenderSpec.sample_budget``).
    num_rays: rays per render (height * width).
    num_scenes: S.
  """

  def __init__(self, policy: BudgetPolicy, start: int, num_rays: int, num_scenes: int = 1):
    self.policy = policy
    self.start = int(start)
    self.current = int(start)
    self.num_rays = int(num_rays)
    self.growths: list[dict] = []
    self.peak = np.zeros(num_scenes, np.float64)
    self.steps_dropping = np.zeros(num_scenes, np.int64)
    self.total = np.zeros(num_scenes, np.float64)
    self._warned_cap = False

  def observe(self, step: int, dropped: Sequence[float], dropped_max: Sequence[float]) -> int | None:
    """Records step ``step``'s drops; returns the new budget when the run grows, else None.

    Args:
      step: the index of the step whose metrics these are (0-based).
      dropped: [S] ``samples_dropped`` (summed over the renders).
      dropped_max: [S] ``samples_dropped_max`` (the largest of one render).
    """
    dropped = np.asarray(dropped, np.float64).reshape(-1)
    self.peak = np.maximum(self.peak, dropped)
    self.steps_dropping += dropped > 0
    self.total += dropped
    worst = float(np.max(np.asarray(dropped_max, np.float64)))
    if worst <= 0:
      return None
    if self.policy.mode != "grow":
      return None
    grown = render_lib.grown_sample_budget(self.current, int(np.ceil(worst)), self.num_rays,
                                           self.policy.maximum)
    if grown == self.current:
      if not self._warned_cap:
        self._warned_cap = True
        logging.warning(
            "step %d: %d occupied samples did not fit the sample budget of %d per ray, which "
            "is config.render.max_sample_budget; they are dropped (raise the maximum, up to "
            "config.render.num_samples, to evaluate them).", step, int(worst), self.current)
      return None
    logging.warning(
        "step %d: %d occupied samples did not fit the sample budget of %d per ray; growing "
        "it to %d (re-jitting the step; at most %d, config.render.max_sample_budget; "
        "--config.render.budget_growth=fixed keeps one compile).",
        step, int(worst), self.current, grown, self.policy.maximum)
    self.growths.append({"step": int(step), "from": self.current, "to": grown})
    self.current = grown
    return grown

  def summary(self, scene: int = 0) -> dict:
    """summary.json's ``sample_budget`` of scene ``scene``."""
    return {"mode": self.policy.mode, "start": self.start, "final": self.current,
            "max": self.policy.maximum, "growths": list(self.growths),
            "samples_dropped_peak": float(self.peak[scene]),
            "steps_with_drops": int(self.steps_dropping[scene]),
            "samples_dropped_total": float(self.total[scene])}

  def save(self, root: pathlib.Path | None, scene: int = 0) -> None:
    """Writes scene ``scene``'s record to ``root / FILE`` (atomically); None: nothing."""
    if root is not None:
      fileio.atomic_write_text(pathlib.Path(root) / FILE,
                               json.dumps(self.summary(scene), indent=2) + "\n")

  def resume(self, roots: Sequence[pathlib.Path | None], step: int) -> None:
    """Continues the records saved under ``roots`` (one per scene) at step ``step``.

    The budget is the one in effect at ``step`` (growths decided after a
    step < ``step``), the largest over the scenes; the peaks and counts
    continue. Unreadable or missing files are ignored (a fresh record).
    """
    for i, root in enumerate(roots):
      saved = _read(root)
      if saved is None:
        continue
      self.peak[i] = max(self.peak[i], float(saved.get("samples_dropped_peak", 0.0)))
      self.steps_dropping[i] += int(saved.get("steps_with_drops", 0))
      self.total[i] += float(saved.get("samples_dropped_total", 0.0))
      for g in saved.get("growths", []):
        if int(g["step"]) < step and int(g["to"]) > self.current and (
            self.policy.mode == "grow"):
          self.current = min(int(g["to"]), self.policy.maximum)
          self.growths.append({"step": int(g["step"]), "from": int(g["from"]),
                               "to": self.current})


def saved_budget(root) -> int | None:
  """The per-ray budget a run directory's record reached (None: no record), so the
  render and export command lines render a finished run at the budget it trained at."""
  saved = _read(root)
  return None if saved is None else int(saved.get("final", 0)) or None


def _read(root) -> dict | None:
  if root is None:
    return None
  try:
    return json.loads((pathlib.Path(root) / FILE).read_text())
  except (OSError, ValueError):
    return None
