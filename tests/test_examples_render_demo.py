"""End-to-end test of the renderer example examples/render_demo.py (smoke config, 3 views)."""
import importlib.util
import pathlib
import sys

from absl.testing import flagsaver
import imageio.v3 as iio
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "render_demo.py"
_SPEC = importlib.util.spec_from_file_location("render_demo", _PATH)
render_demo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(render_demo)


def test_demo_cli_writes_turntable(tmp_path, capsys, monkeypatch):
  workdir = tmp_path / "demo"
  config = str(pathlib.Path(render_demo._DEFAULT_CONFIG)) + ":smoke"
  argv = ["render_demo", f"--config={config}", f"--workdir={workdir}", "--num_frames=3",
          "--config.render.height=20", "--config.render.width=24"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads overrides from sys.argv
  with flagsaver.flagsaver():
    render_demo.FLAGS(argv)
    assert render_demo._CONFIG.value.render.width == 24  # dotted override reached the config
    render_demo.main(["render_demo"])
  assert "wrote 3 frames" in capsys.readouterr().out
  frames = sorted((workdir / "frames").glob("frame_*.png"))
  assert [f.name for f in frames] == ["frame_000.png", "frame_001.png", "frame_002.png"]
  img = iio.imread(frames[0])
  # three 20x24 tiles (rgb | normals | opacity) with 1-pixel padding
  assert img.shape == (20 + 2, 3 * 24 + 4, 3)
  gif = iio.imread(workdir / "turntable.gif", index=None)
  assert gif.shape[0] == 3
  # The opacity tile sees the scene: bright centre (the human blob), dark corner.
  opacity = img[1:21, 2 * 24 + 3:3 * 24 + 3, 0].astype(np.float32) / 255.0
  assert opacity[8:12, 9:15].mean() > 0.8 and opacity[0, 0] < 0.2
  # Views differ (the object orbits around the human).
  assert not np.array_equal(iio.imread(frames[0]), iio.imread(frames[1]))


def test_demo_rejects_bad_offset(tmp_path):
  with flagsaver.flagsaver():
    render_demo.FLAGS(["render_demo", f"--workdir={tmp_path}", "--object_offset=1,2"])
    with pytest.raises(Exception, match="object_offset"):
      render_demo.main(["render_demo"])
