"""Prompt sweeps: several scenes trained at once by one vmapped, compiled step.

``train.train_step`` is pure, so a sweep is ``jax.vmap`` over scenes: the train
states, the prompt-embedding tables and the anchor bodies are stacked along a
leading scene axis; the guidance weights are shared (``in_axes=None``, never
copied). Every scene uses the same PRNG keys as a single run with the same
seed, so scene i of a sweep follows the same trajectory as
``python -m interfusion_jax.train`` on its prompts (up to float reassociation).

Scenes must agree on everything static (``train.TrainSpec``): they may differ
in the prompts and hence in the anchor pose, not in field sizes, steps or
loss weights.

Example::

    from interfusion_jax import sweep
    from configs import hoi
    cfgs = sweep.scene_configs(hoi.get_config("cpu"), [
        {"human": "a man in a red shirt", "object": "a blue chair",
         "interaction": "sitting on a chair"},
        {"human": "a man in a green shirt", "object": "a yellow bike",
         "interaction": "riding a bike"}])
    result = sweep.train_sweep(cfgs)          # result.states[i]: host TrainState
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from interfusion_jax import config_validation, run_io, schedules, train

PROMPT_KEYS = ("human", "object", "interaction")


def scene_configs(base: ml_collections.ConfigDict,
                  prompts: Sequence[dict]) -> list[ml_collections.ConfigDict]:
  """One validated config per prompt dict (keys among human / object / interaction).

  Raises:
    ValueError: for an empty prompt list, an unknown key, or a config value
      that ``config_validation.validate`` rejects (e.g. an empty prompt).
  """
  if not prompts:
    raise ValueError("sweep.scene_configs: no prompts given; pass at least one "
                     "{'human': ..., 'object': ..., 'interaction': ...} dict.")
  out = []
  for i, p in enumerate(prompts):
    bad = sorted(set(p) - set(PROMPT_KEYS))
    if bad:
      raise ValueError(f"sweep.scene_configs: prompt {i} has unknown keys {bad}; "
                       f"use {list(PROMPT_KEYS)}.")
    c = base.copy_and_resolve_references()
    for k, v in p.items():
      setattr(c.prompt, k, str(v))
    config_validation.validate(c)
    out.append(c)
  return out


def stack(trees: Sequence[Any]) -> Any:
  """Stacks identically structured pytrees along a new leading scene axis."""
  return jax.tree_util.tree_map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, n: int) -> list:
  """Inverse of ``stack``: n host pytrees."""
  host = jax.device_get(tree)
  return [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), host) for i in range(n)]


@dataclasses.dataclass
class Sweep:
  """The static spec shared by all scenes and the per-scene frozen inputs.

  frozen: {"guidance": shared params, "text": stacked tables [S, ...],
  "anchor": stacked anchors [S, ...]}; scenes: the per-scene ``train.Scene``
  (unstacked, e.g. for evaluation); configs: the per-scene configs.
  """
  spec: train.TrainSpec
  frozen: dict
  scenes: list
  configs: list


FROZEN_AXES = {"guidance": None, "text": 0, "anchor": 0}


def build_sweep(configs: Sequence[ml_collections.ConfigDict], guidance=None) -> Sweep:
  """Loads guidance once and the prompts' tables and anchors per scene.

  Args:
    configs: from ``scene_configs``.
    guidance: optional (GuidanceSpec, params, table) for the first scene (tests);
      the tables of the other scenes are still built from their prompts.

  Raises:
    train.TrainSetupError: when the scenes' static settings differ.
  """
  first = train.build_scene(configs[0], None, guidance=guidance)
  scenes = [first]
  for c in configs[1:]:
    anchor, pose = train.prepare_anchor(c, None)
    table = _text_table(c, first)
    spec = train.TrainSpec.from_config(c, first.spec.guidance)
    scenes.append(train.Scene(spec, {"guidance": first.frozen["guidance"], "text": table,
                                     "anchor": anchor}, pose, train.object_origin(c, anchor)))
  for i, s in enumerate(scenes[1:], 1):
    if dataclasses.replace(s.spec, model=first.spec.model) != first.spec:
      raise train.TrainSetupError(
          f"sweep: scene {i} has static settings different from scene 0; a sweep may "
          "vary only the prompts (config.prompt.*).")
  frozen = {"guidance": first.frozen["guidance"],
            "text": stack([s.frozen["text"] for s in scenes]),
            "anchor": stack([s.frozen["anchor"] for s in scenes])}
  return Sweep(first.spec, frozen, scenes, list(configs))


def _text_table(config: ml_collections.ConfigDict, first: train.Scene) -> dict:
  """The prompt table of one scene, with the text encoder of the guidance backend."""
  if first.spec.guidance.kind == "builtin":
    from interfusion_jax.prior import assets as prior_assets
    return prior_assets.builtin_text_table(config)
  return train.load_guidance_and_text(config)[2]


@functools.lru_cache(maxsize=8)
def _compiled(spec: train.TrainSpec):
  step = jax.jit(jax.vmap(train.make_train_step(spec), in_axes=(0, FROZEN_AXES, None)))
  trace = jax.jit(jax.vmap(functools.partial(train.object_center, spec=spec)))
  return step, trace


def train_sweep(configs: Sequence[ml_collections.ConfigDict], *, steps: int | None = None,
                guidance=None, progress: bool = True, log_every: int = 0) -> dict:
  """Trains every scene for ``steps`` (default config.train.steps) steps at once.

  The step is compiled once for all scenes. Camera tracing follows
  ``config.camera.trace_every`` per scene. No checkpoints are written.

  Returns:
    {"sweep": Sweep, "states": [host TrainState per scene],
     "metrics": [last metrics dict per scene], "wall_time_s", "steps"}.
  """
  sw = build_sweep(configs, guidance)
  spec, n = sw.spec, len(configs)
  total = int(configs[0].train.steps if steps is None else steps)
  step_fn, trace_fn = _compiled(spec)
  states = stack([train.init_state(jax.random.PRNGKey(int(configs[0].seed)), spec,
                                   s.object_origin) for s in sw.scenes])
  base_key = jax.random.PRNGKey(int(configs[0].seed))
  bar = run_io.Progress(total, disable=not progress)
  t0 = time.perf_counter()
  metrics = None
  for step in range(total):
    if schedules.trace_due(step, spec.schedule.trace_every):
      states = states._replace(object_center=trace_fn(states.params["object"],
                                                      states.object_center))
    states, metrics = step_fn(states, sw.frozen, jax.random.fold_in(base_key, step))
    if log_every and (step + 1) % log_every == 0:
      bar.update(step + 1, float(jnp.mean(metrics["loss"])), n=0)
    bar.update(step + 1, None)
  bar.close()
  jax.block_until_ready(states)
  return {"sweep": sw, "states": unstack(states, n),
          "metrics": unstack(metrics, n) if metrics is not None else [{}] * n,
          "wall_time_s": time.perf_counter() - t0, "steps": total}
