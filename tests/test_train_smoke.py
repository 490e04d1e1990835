"""End to end: `python -m interfusion_jax.train --config=configs/hoi.py:smoke` with a
tiny random guidance model saved in the real diffusers format, then the render
and export entry points; and the fail-before-compilation checks."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import loop
from interfusion_jax.stage2 import setup as setup_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import tiny_models  # noqa: E402  pylint: disable=g-import-not-at-top

CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")


@pytest.fixture(scope="module")
def guidance_dir(tmp_path_factory):
  return tiny_models.make_flax_guidance_dir(tmp_path_factory.mktemp("guidance"), kind="pixel")


def _env():
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  return env


def _run(args, timeout=900):
  return subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_cli_produces_every_output(tmp_path, guidance_dir):
  work = tmp_path / "run"
  proc = _run(["interfusion_jax.train", "--config=configs/hoi.py:smoke", f"--workdir={work}",
               "--config.guidance.backend=auto", f"--config.guidance.weights_dir={guidance_dir}",
               "--noprogress",
               "--config.train.final_resolution=24"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  cfg = hoi.get_config("smoke")
  assert json.loads((work / "config.json").read_text())["prompt"]["object"] == cfg.prompt.object
  assert (work / "anchor" / "anchor.npz").stat().st_size > 0
  assert (work / "anchor" / "anchor.png").stat().st_size > 0
  rows = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(cfg.train.log_every, cfg.train.steps + 1,
                                                 cfg.train.log_every))
  for key in ("loss", "loss_sds_human", "loss_sds_head", "loss_sds_interaction",
              "loss_sds_object", "loss_geo_human", "loss_geo_object", "loss_orient",
              "loss_sparsity", "loss_opaque", "lambda_object_sds", "lambda_object_geo",
              "lambda_orient"):
    assert all(np.isfinite(r[key]) for r in rows), key
  assert sorted(p.name for p in (work / "val").iterdir()) == [
      f"step_{s:06d}.png" for s in range(cfg.train.val_every, cfg.train.steps + 1,
                                         cfg.train.val_every)]
  steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == cfg.train.steps and len(steps) <= cfg.train.keep_checkpoints
  final = work / "final"
  for name in ("interaction", "human", "object"):
    assert any((final / f"turntable_{name}{ext}").exists() for ext in (".mp4", ".gif"))
  for name in ("human", "object", "combined"):
    for ext in (".glb", ".obj"):
      assert (final / f"mesh_{name}{ext}").exists()
    for ext in (".obj", ".mtl", ".png", ".glb"):     # UV-textured, train.texture_size 64
      assert (final / f"mesh_{name}_textured{ext}").exists()
  # 3 rows (interaction, human, object) x 4 views of final_resolution = 24
  # pixels (the smoke renders are 16x16), 2-pixel padding.
  import imageio.v2 as imageio
  assert imageio.imread(final / "multiview.png").shape[:2] == (3 * 24 + 4 * 2, 4 * 24 + 5 * 2)
  summary = json.loads((final / "summary.json").read_text())
  assert summary["step"] == cfg.train.steps
  assert summary["steps_per_second"] > 0 and summary["wall_time_s"] > 0
  assert summary["anchor_pose_id"] and "loss_sds_interaction" in summary["final_losses"]
  # the final renders' left-out samples, per render, summed over the turntable frames
  dropped = summary["final_renders_samples_dropped"]
  assert sorted(dropped) == ["human", "interaction", "object"]
  assert all(isinstance(v, int) and v >= 0 for v in dropped.values())
  # The separate entry points work on the finished run.
  proc = _run(["interfusion_jax.render", f"--workdir={work}", "--frames=2"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  # render re-renders at the run's loop.final_resolution too (--frames=2:
  # 2 views per row).
  assert imageio.imread(work / "renders" / "multiview.png").shape[:2] == (3 * 24 + 4 * 2,
                                                                         2 * 24 + 3 * 2)
  proc = _run(["interfusion_jax.export", f"--workdir={work}", f"--out={tmp_path / 'exp'}",
               "--texture_size=32"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "exp" / "mesh_combined.glb").read_bytes()[:4] == b"glTF"
  from PIL import Image
  assert Image.open(tmp_path / "exp" / "mesh_combined_textured.png").size == (64, 32)


# The tiny DeepFloyd IF run through the train command line is in tests/test_hub.py
# (test_train_smoke_by_id_then_offline_from_the_cache): by hub id, then offline.


# --- Failures before compilation. ---------------------------------------------

@pytest.fixture
def no_compile(monkeypatch):
  def boom(*a, **k):
    raise AssertionError("compilation started before the input was checked")
  monkeypatch.setattr(loop, "cached_compile", boom)
  monkeypatch.setattr(loop, "compile_group", boom)


def test_empty_prompt_fails_early(tmp_path, no_compile):
  cfg = hoi.get_config("smoke")
  cfg.prompt.interaction = "  "
  with pytest.raises(config_lib.ConfigError, match="prompt.interaction"):
    loop.run(cfg, str(tmp_path / "w"))


def test_smoke_routes_to_builtin_prior(caplog):
  cfg = hoi.get_config("smoke")
  assert cfg.guidance.weights_dir == "" and cfg.guidance.backend == "builtin"
  with caplog.at_level("WARNING"):
    gspec, gparams, table = setup_lib.load_guidance_and_text(config_lib.parse(cfg))
  assert gspec.kind == "builtin"
  assert "LOW FIDELITY" in caplog.text and "weights_dir" in caplog.text
  assert set(table) >= {"human", "head", "object", "interaction", "uncond"}
  assert gparams["bank"].shape[0] > 100


def test_missing_weights_fail_early(tmp_path, no_compile):
  cfg = hoi.get_config("smoke")
  cfg.guidance.backend = "auto"
  cfg.guidance.weights_dir = str(tmp_path / "nowhere")
  with pytest.raises(setup_lib.TrainSetupError, match="weights_dir"):
    loop.run(cfg, str(tmp_path / "w"))


def test_bad_anchor_file_fails_early(tmp_path, no_compile):
  cfg = hoi.get_config("smoke")
  bad = tmp_path / "bad.npz"
  np.savez(bad, body_pose=np.zeros(10))
  cfg.pose.anchor_file = str(bad)
  guidance = (None, {}, {})
  with pytest.raises(setup_lib.TrainSetupError, match="63"):
    loop.run(cfg, str(tmp_path / "w"), guidance=guidance)
  cfg.pose.anchor_file = str(tmp_path / "missing.npz")
  with pytest.raises(setup_lib.TrainSetupError, match="does not exist"):
    loop.run(cfg, str(tmp_path / "w"), guidance=guidance)


def test_unwritable_workdir_fails_early(tmp_path, no_compile):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(setup_lib.TrainSetupError, match="writable"):
    loop.run(hoi.get_config("smoke"), str(blocker / "run"))


def test_cli_reports_errors(tmp_path):
  proc = _run(["interfusion_jax.train", "--config=configs/hoi.py:smoke",
               f"--workdir={tmp_path / 'w'}", "--config.prompt.object="], timeout=300)
  assert proc.returncode == 2
  assert "prompt.object" in proc.stderr and "Traceback" not in proc.stderr
