"""The memory of the training step and of the eval render against the render size.

    python benchmarks/bench_memory.py [--out benchmarks/results/memory.json]

Compiles (on CPU, nothing runs) the training step (``step.make_train_step``, the
tests' tiny IF UNet) and the eval render (``outputs.render_eval``) of the
``smoke`` and ``cpu`` variants at a few render sizes on abstract inputs
(``bench_step_device.abstract_step`` / ``guidance_parts``) and reads XLA's
``memory_analysis()`` (temporary buffers). Fits the per-ray model of
``stage2.setup.step_memory_bytes`` / ``render_memory_bytes``:

    temp ~ fixed + rays * (num_samples * A + evaluated * features * B)

(``evaluated``: field evaluations per ray, ``render.sample_budget``;
``features``: ``setup._features``) and writes the points, the fit and the
constants the library uses. Each step compile takes minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_step_device as bsd  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import hoi  # noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402
from interfusion_jax.stage2 import outputs  # noqa: E402
from interfusion_jax.stage2 import setup as setup_lib  # noqa: E402
from interfusion_jax.stage2 import step as step_lib  # noqa: E402

STEP_POINTS = [("smoke", 16, 32), ("smoke", 32, 32), ("smoke", 16, 64), ("cpu", 32, 64)]
EVAL_POINTS = [("smoke", 32), ("smoke", 64), ("cpu", 32)]


def _parts(variant: str, overrides: dict):
  cfg = config_lib.override(config_lib.parse(hoi.get_config(variant)),
                            dict(overrides, **{"field.hashgrid_backend": "jax"}))
  g = bsd.guidance_parts(cfg, True, "cpu", 0, abstract=True)
  spec = setup_lib.train_spec(cfg, g["spec"])
  key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
  state = jax.eval_shape(lambda k: step_lib.init_state(k, spec), key)
  frozen = {"guidance": g["params"], "text": g["table"], "anchor": bsd.abstract_anchor(cfg)}
  return cfg, spec, state, frozen, key


def _point(cfg, temp: int, rays: int, seconds: float) -> dict:
  return {"variant": cfg.variant, "rays": rays, "num_samples": cfg.render.num_samples,
          "evaluated": setup_lib._evaluated(cfg), "features": setup_lib._features(cfg),
          "temp_bytes": int(temp), "compile_s": round(seconds, 1)}


def step_point(variant: str, size: int, num_samples: int) -> dict:
  t = time.perf_counter()
  ov = {"render.height": size, "render.width": size}
  if variant == "smoke":
    ov["render.num_samples"] = num_samples
  cfg, spec, state, frozen, key = _parts(variant, ov)
  m = jax.jit(step_lib.make_train_step(spec)).lower(state, frozen, key).compile()
  return _point(cfg, m.memory_analysis().temp_size_in_bytes, size * size,
                time.perf_counter() - t)


def eval_point(variant: str, size: int) -> dict:
  t = time.perf_counter()
  cfg, spec, state, _, _ = _parts(variant, {})
  spec = outputs.at_size(spec, size)
  cams = jax.eval_shape(lambda oc: outputs.eval_cameras(spec, oc, 0.0), state.object_center)
  f = jax.jit(lambda p, o, c: outputs.render_eval(p, o, c, spec))
  m = f.lower(state.params, state.occupancy, cams).compile()
  return _point(cfg, m.memory_analysis().temp_size_in_bytes, size * size,
                time.perf_counter() - t)


def fit(points: list[dict]) -> dict:
  """Least squares of temp = fixed + rays * (S * A + E * F * B) over the points."""
  x = np.array([[1.0, p["rays"] * p["num_samples"], p["rays"] * p["evaluated"] * p["features"]]
                for p in points])
  y = np.array([p["temp_bytes"] for p in points], np.float64)
  (fixed, a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
  return {"fixed_bytes": float(fixed), "bytes_per_sample": float(a),
          "bytes_per_feature": float(b)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" /
                                           "memory.json"))
  args = parser.parse_args(argv)
  step = [step_point(*p) for p in STEP_POINTS]
  ev = [eval_point(*p) for p in EVAL_POINTS]
  out = {"what": "XLA memory_analysis().temp_size_in_bytes, CPU compiles, tiny IF UNet",
         "step": {"points": step, "fit": fit(step)},
         "eval": {"points": ev, "fit": fit(ev)},
         "library": {"STEP_BYTES_PER_SAMPLE": setup_lib.STEP_BYTES_PER_SAMPLE,
                     "STEP_BYTES_PER_FEATURE": setup_lib.STEP_BYTES_PER_FEATURE,
                     "EVAL_BYTES_PER_SAMPLE": setup_lib.EVAL_BYTES_PER_SAMPLE,
                     "EVAL_BYTES_PER_FEATURE": setup_lib.EVAL_BYTES_PER_FEATURE,
                     "MEMORY_MARGIN": setup_lib.MEMORY_MARGIN}}
  pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out["step"]["fit"]), json.dumps(out["eval"]["fit"]))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
