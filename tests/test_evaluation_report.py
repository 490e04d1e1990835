"""Pieces of report.html without a browser: curves, escaping, guidance line, the mesh view."""
import json
import re

import mcubes
import numpy as np
import pytest

from interfusion_jax.mesh import export, types
from interfusion_jax.evaluation import report


def test_curve_svg_scales_points_into_the_box_and_drops_non_finite():
  svg = report.curve_svg([0, 10, 20, 30], [1.0, float("nan"), 3.0, 2.0], "loss",
                         width=300, height=150)
  pts = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
  xy = np.array([[float(a) for a in p.split(",")] for p in pts])
  # 3 finite points; x: steps 0, 20, 30 over [8, 292]; y: values 1..3 over [132, 20].
  np.testing.assert_allclose(xy[:, 0], [8, 8 + 284 * 20 / 30, 292], atol=0.06)
  np.testing.assert_allclose(xy[:, 1], [132, 20, 76], atol=0.06)
  assert "no finite values" in report.curve_svg([0, 1], [float("inf"), None], "x")


def test_curve_keys_order():
  rows = [{"step": 1, "loss": 1, "lambda_b": 0, "loss_z": 2, "grad_norm": 3, "loss_a": 1}]
  assert report.curve_keys(rows) == ["loss", "loss_a", "loss_z", "lambda_b"]


def test_prompts_are_escaped(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"prompt": {
      "human": "<script>alert(1)</script>", "object": "a & b", "interaction": "x"},
      "guidance": {"weights_dir": "/models/sd"}}))
  html = report.run_report_html(tmp_path)
  assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
  assert "diffusion weights from /models/sd" in html and "LOW FIDELITY" not in html
  assert "not started" in html and "missing" in html


def test_guidance_text_names_the_builtin_prior():
  text, builtin = report.guidance_text({"guidance": {"weights_dir": ""}})
  assert builtin and "built-in offline prior (LOW FIDELITY)" in text
  assert "DeepFloyd IF" in text and "DeepFloyd/IF-I-XL-v1.0" in text
  assert "Stable Diffusion" not in text


def test_obj_round_trip_and_simplify(tmp_path):
  g = np.linspace(-1, 1, 96)
  x, y, z = np.meshgrid(g, g, g, indexing="ij")
  v, f = mcubes.marching_cubes(0.8 - np.sqrt(x ** 2 + y ** 2 + z ** 2), 0)
  v = v / 95 * 2 - 1
  c = (v + 1) / 2
  mesh = types.Mesh(v.astype(np.float32), f.astype(np.int32), c.astype(np.float32))
  path = tmp_path / "m.obj"
  path.write_bytes(export.obj_bytes(mesh))
  rv, rc, rf = report.read_obj(path)
  np.testing.assert_allclose(rv, v, atol=1e-5)
  np.testing.assert_allclose(rc, c, atol=1e-4)
  np.testing.assert_array_equal(rf, f)
  sv, sc, sf = report.simplify(rv, rc, rf, max_faces=2000)
  assert 0 < len(sf) <= 2000 and sf.max() < len(sv)
  # Still the sphere of radius 0.8: merged vertices stay near it, colours stay averages.
  assert np.abs(np.linalg.norm(sv, axis=1) - 0.8).max() < 0.05
  np.testing.assert_allclose(sc, (sv + 1) / 2, atol=0.03)
  html = report.mesh_viewer_html(path)
  data = json.loads(re.search(r'id="mesh-data">(.*?)</script>', html).group(1))
  assert len(data["f"]) // 3 <= report.MESH_MAX_FACES and "simplified" in html
  assert report.simplify(rv, rc, rf[:10])[2].shape == (10, 3)      # small: unchanged
