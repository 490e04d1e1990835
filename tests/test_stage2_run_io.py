"""Run directory I/O: atomic writes, config round trip, metrics, images, videos."""
import json
import os
import pathlib

import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import run_io


def test_prepare_and_config_roundtrip(tmp_path):
  paths = run_io.prepare_workdir(tmp_path / "run")
  cfg = hoi.get_config("smoke")
  cfg.prompt.object = "a horse"
  run_io.save_config(paths, config_lib.parse(cfg))
  back = run_io.load_config(paths.root)
  assert back.prompt.object == "a horse"
  assert back.camera.distance_range == tuple(cfg.camera.distance_range)
  assert back == config_lib.parse(cfg)


def test_unwritable_workdir(tmp_path):
  f = tmp_path / "afile"
  f.write_text("x")
  with pytest.raises(run_io.WorkdirError, match="writable"):
    run_io.prepare_workdir(f / "sub")
  with pytest.raises(run_io.WorkdirError, match="empty"):
    run_io.prepare_workdir("")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
  p = tmp_path / "x.json"
  run_io.write_json(p, {"a": 1})
  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError):
    run_io.write_json(p, {"a": 2})
  monkeypatch.undo()
  assert json.loads(p.read_text()) == {"a": 1}
  assert [q.name for q in tmp_path.iterdir()] == ["x.json"]  # no temp left


def test_metrics_jsonl_and_truncate(tmp_path):
  paths = run_io.prepare_workdir(tmp_path)
  w = run_io.MetricsWriter(paths)
  for s in range(5):
    w.write(s, {"loss": np.float32(s * 0.5), "w": 2})
  w.close()
  rows = run_io.read_metrics(paths.metrics)
  assert [r["step"] for r in rows] == list(range(5))
  assert rows[3]["loss"] == pytest.approx(1.5)
  run_io.truncate_metrics(paths.metrics, 2)
  assert [r["step"] for r in run_io.read_metrics(paths.metrics)] == [0, 1, 2]


def test_image_grid_layout():
  a = np.zeros((4, 5, 3))
  b = np.ones((4, 5, 1))
  g = run_io.image_grid([[a, b], [b, a]], pad=1)
  assert g.shape == (2 * 4 + 3, 2 * 5 + 3, 3)
  assert g[1, 1].tolist() == [0, 0, 0] and g[1, 7].tolist() == [255, 255, 255]
  assert g[0, 0].tolist() == [255, 255, 255]  # padding


def test_png_and_video(tmp_path):
  import imageio.v3 as iio
  img = np.random.default_rng(0).uniform(size=(6, 8, 3))
  run_io.write_png(tmp_path / "a.png", img)
  back = iio.imread(tmp_path / "a.png")
  np.testing.assert_array_equal(back, run_io.to_uint8(img))
  frames = [np.full((15, 16, 3), i / 4.0) for i in range(4)]
  out = run_io.write_video(tmp_path / "turn", frames, fps=4)
  assert out.exists() and out.suffix in (".mp4", ".gif")
  assert out.stat().st_size > 0


def test_video_gif_fallback(tmp_path, monkeypatch):
  import imageio.v2 as imageio
  def broken(*a, **k):
    raise RuntimeError("no ffmpeg")
  monkeypatch.setattr(imageio, "get_writer", broken)
  frames = [np.full((8, 8, 3), i / 3.0) for i in range(3)]
  with pytest.warns(UserWarning, match="GIF"):
    out = run_io.write_video(tmp_path / "turn", frames)
  assert out.suffix == ".gif"
  import imageio.v3 as iio
  assert iio.imread(out, index=None).shape[0] == 3
