"""report.html's 3D view shows the run's UV-textured GLB: a run directory holding only a
config and final/mesh_combined_textured.glb (a red sphere and a blue one, baked by
mesh.texture) opens in headless Chromium, and the canvas draws every face of the GLB in
the texture's colours."""
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from interfusion_jax.evaluation import report
from interfusion_jax.mesh import export, texture

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import browser  # noqa: E402  pylint: disable=g-import-not-at-top

trimesh = pytest.importorskip("trimesh")

RED, BLUE = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.1, 0.9])

# Pixels of the canvas by colour: reddish (r > b + 60) and bluish (b > r + 60).
COUNT_JS = r"""
(() => {
  const c = document.getElementById('mesh-view');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let red = 0, blue = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > d[i + 2] + 60) red++;
    if (d[i + 2] > d[i] + 60) blue++;
  }
  return {red: red, blue: blue, faces: c.getAttribute('data-drawn')};
})()
"""


def _sphere(center, radius):
  center = np.asarray(center, np.float32)
  return export.extract_mesh(lambda p: 100.0 * (radius - np.linalg.norm(p - center, axis=-1)),
                             None, 20, 1.0, threshold=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  (wd / "config.json").write_text(json.dumps({"prompt": {
      "human": "a man", "object": "a ball", "interaction": "holding a ball"}}))
  (wd / "final").mkdir()
  meshes = {"human": _sphere((-0.4, 0.0, 0.0), 0.35), "object": _sphere((0.4, 0.0, 0.0), 0.3)}
  fns = {"human": lambda p: np.broadcast_to(RED, p.shape),
         "object": lambda p: np.broadcast_to(BLUE, p.shape)}
  texture.write_textured_meshes(wd / "final", meshes, fns, 32)
  (wd / "report.html").write_text(report.run_report_html(wd))
  return wd


def test_report_embeds_the_textured_glb_with_its_texture_colours(run_dir):
  html = (run_dir / "report.html").read_text()
  assert "mesh_combined_textured.glb:" in html
  v, c, f = report.read_textured_glb(run_dir / "final" / "mesh_combined_textured.glb")
  geom = trimesh.load(run_dir / "final" / "mesh_combined_textured.glb", process=False)
  assert len(f) == sum(len(g.faces) for g in geom.geometry.values())
  left = v[:, 0] < 0          # the red sphere is at x < 0 (scene coordinates)
  np.testing.assert_allclose(c[left], np.broadcast_to(RED, c[left].shape), atol=1 / 255)
  np.testing.assert_allclose(c[~left], np.broadcast_to(BLUE, c[~left].shape), atol=1 / 255)


def test_textured_glb_opens_in_the_report_3d_view(run_dir):
  b = browser.find_browser()
  if b is None:
    if os.environ.get("CI") == "true":
      pytest.fail("CI=true but no Chromium was found: .ci/run must install Debian's chromium.")
    pytest.skip("no Chromium found (Debian: apt-get install chromium).")
  geom = trimesh.load(run_dir / "final" / "mesh_combined_textured.glb", process=False)
  faces = sum(len(g.faces) for g in geom.geometry.values())
  with browser.Page(b) as page:
    page.goto(run_dir / "report.html")
    counts = page.evaluate(COUNT_JS)
    errors = page.errors()
  assert errors == []
  assert int(counts["faces"]) == faces
  assert counts["red"] > 500 and counts["blue"] > 500, counts
