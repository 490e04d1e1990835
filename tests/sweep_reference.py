"""The references of tests/test_sweep_multihost.py, computed in a process of its own.

Usage: python tests/sweep_reference.py SCENES.json OUT_DIR GO_FILE

SCENES.json: {"overrides": {dotted key: value}, "scenes": [row, ...], "groups":
[[i, j], ...], "compare_at": K}. Writes, per scene ``name``:

1. ``OUT_DIR/single_<name>.npz``: its parameters after K steps of a single run
   (``loop.run``, one device, as ``python -m interfusion_jax.train`` trains it);
2. then, once GO_FILE exists (the test creates it when process 0 of the sweep
   has compiled its group), ``OUT_DIR/sweep_<name>.npz``: the scene's final
   parameters after an uninterrupted ``loop.train_scenes`` of its group on this
   process's 2 devices (the layout a process of the two-process sweep trains
   it in).

Arrays are named ``leaf_<i>`` in ``jax.tree_util.tree_leaves`` order, plus ``step``.

Run with 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2):
with the same device count as a process of the sweep, its group's program has
the same persistent-cache key as process 0's, so it is loaded, not compiled.
"""
import json
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import hoi  # noqa: E402
from interfusion_jax.stage2 import loop  # noqa: E402
from interfusion_jax.stage2 import setup as setup_lib  # noqa: E402


def scene_config(scene: dict, overrides: dict):
  """The smoke config with the test's overrides and the scene's prompts and seed."""
  cfg = hoi.get_config("smoke")
  for k, v in overrides.items():
    sec, key = k.split(".")
    setattr(cfg[sec], key, v)
  for k in ("human", "object", "interaction"):
    setattr(cfg.prompt, k, scene[k])
  cfg.seed = scene.get("seed", 0)
  return cfg


def save_params(path: pathlib.Path, state) -> None:
  leaves = jax.tree_util.tree_leaves(state.params)
  np.savez(path, step=np.asarray(int(state.step)),
           **{f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)})


def main(spec_file: str, out_dir: str, go_file: str, timeout_s: float = 900.0) -> None:
  spec = json.loads(pathlib.Path(spec_file).read_text())
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  scenes, over = spec["scenes"], spec["overrides"]
  setup_lib.enable_compilation_cache()
  for s in scenes:
    single = loop.run(scene_config(s, over), str(out / "single" / s["name"]), progress=False,
                      stop_after=spec["compare_at"], final_outputs=False)["state"]
    assert int(single.step) == spec["compare_at"]
    save_params(out / f"single_{s['name']}.npz", single)
  deadline = time.time() + timeout_s
  while not pathlib.Path(go_file).exists():
    if time.time() > deadline:
      raise SystemExit(f"{go_file} did not appear within {timeout_s:.0f} s")
    time.sleep(0.05)
  for members in spec["groups"]:
    ref = loop.train_scenes([scene_config(scenes[i], over) for i in members],
                           progress=False, num_devices=2)
    for i, state in zip(members, ref["states"]):
      save_params(out / f"sweep_{scenes[i]['name']}.npz", state)


if __name__ == "__main__":
  main(*sys.argv[1:])
