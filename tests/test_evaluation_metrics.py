"""Bar metrics (interfusion_jax/evaluation/metrics.py) against closed forms of spheres."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.evaluation import metrics
from interfusion_jax.mesh import export as mesh_export

RADIUS = 1.0
RES = 64


def _sphere_sigma(centre, a, res=RES, value=50.0):
  """Density `value` inside the ball |p - centre| < a, 0 outside; [R, R, R]."""
  p = mesh_export.grid_points(res, RADIUS)
  return np.where(np.linalg.norm(p - np.asarray(centre), axis=-1) < a, value, 0.0)


def _lens_volume(a, b, d):
  """Volume of the intersection of balls of radii a, b at centre distance d."""
  if d >= a + b:
    return 0.0
  if d <= abs(a - b):
    return 4.0 / 3.0 * math.pi * min(a, b) ** 3
  return (math.pi * (a + b - d) ** 2 * (d * d + 2 * d * (a + b) - 3 * (a * a + b * b)
                                         + 6 * a * b) / (12 * d))


def test_grid_points_match_anchor_nodes():
  from interfusion_jax.body import anchor
  p = mesh_export.grid_points(5, 2.0)
  assert p.shape == (5, 5, 5, 3)
  c = anchor.grid_coords(5, 2.0)
  np.testing.assert_allclose(p[3, 1, 4], [c[3], c[1], c[4]], atol=1e-6)
  assert metrics.voxel_size(5, 2.0) == pytest.approx(1.0)


def test_occupancy_threshold_is_ln2_over_delta():
  s0 = math.log(2.0) / 0.2
  sig = np.array([0.0, s0 * 0.99, s0 * 1.01, 1e3])
  np.testing.assert_allclose(metrics.occupancy(sig), 1 - np.exp(-0.2 * sig))
  np.testing.assert_array_equal(metrics.occupied(sig), [False, False, True, True])


def test_volume_of_sphere_in_litres():
  a = 0.5
  m = metrics.occupied(_sphere_sigma((0.1, 0.0, -0.05), a))
  vol = metrics.volume_litres(m, metrics.voxel_size(RES, RADIUS))
  assert vol == pytest.approx(4 / 3 * math.pi * a ** 3 * 1000, rel=0.03)


@pytest.mark.parametrize("a,b,d", [(0.3, 0.5, 0.0), (0.4, 0.4, 0.3), (0.5, 0.3, 0.5)])
def test_iou_of_two_balls(a, b, d):
  ma = metrics.occupied(_sphere_sigma((-d / 2, 0, 0), a))
  mb = metrics.occupied(_sphere_sigma((d / 2, 0, 0), b))
  inter = _lens_volume(a, b, d)
  union = 4 / 3 * math.pi * (a ** 3 + b ** 3) - inter
  assert metrics.iou(ma, mb) == pytest.approx(inter / union, abs=0.03)


def test_iou_edge_cases():
  z = np.zeros((3, 3, 3), bool)
  assert metrics.iou(z, z) == 1.0
  o = z.copy()
  o[1, 1, 1] = True
  assert metrics.iou(o, z) == 0.0 and metrics.iou(o, o) == 1.0
  with pytest.raises(ValueError, match="same grid"):
    metrics.iou(z, np.zeros((2, 2, 2), bool))


def test_inside_fraction_and_gap_of_two_balls():
  """Object ball of radius a at distance d from a body ball of radius b."""
  a, b = 0.25, 0.4
  pts = mesh_export.grid_points(RES, RADIUS)
  body_c = np.array([-0.2, 0.0, 0.0])
  body_d = np.linalg.norm(pts - body_c, axis=-1) - b
  body_in, body_dist = body_d < 0, np.abs(body_d)
  vox = metrics.voxel_size(RES, RADIUS)
  # Overlapping: the fraction is the lens over the object's volume; gap 0.
  d = 0.5
  obj = metrics.occupied(_sphere_sigma(body_c + [d, 0, 0], a))
  frac = metrics.inside_fraction(obj, body_in)
  assert frac == pytest.approx(_lens_volume(a, b, d) / (4 / 3 * math.pi * a ** 3), abs=0.04)
  assert metrics.gap_to_body(obj, body_in, body_dist) == 0.0
  # Apart: no overlap, gap = d - a - b within a voxel.
  d = 0.85
  obj = metrics.occupied(_sphere_sigma(body_c + [d, 0, 0], a))
  assert metrics.inside_fraction(obj, body_in) == 0.0
  assert metrics.gap_to_body(obj, body_in, body_dist) == pytest.approx(d - a - b, abs=vox)
  # Empty object.
  empty = np.zeros_like(obj)
  assert metrics.inside_fraction(empty, body_in) == 0.0
  assert metrics.gap_to_body(empty, body_in, body_dist) == math.inf


def test_geometry_metrics_human_equals_body():
  pts = mesh_export.grid_points(RES, RADIUS)
  body_d = np.linalg.norm(pts, axis=-1) - 0.5
  sig_h = _sphere_sigma((0, 0, 0), 0.5)
  sig_o = _sphere_sigma((0.72, 0, 0), 0.2)
  m = metrics.geometry_metrics(sig_h, sig_o, body_d < 0, np.abs(body_d), RADIUS)
  assert m["human_iou"] == pytest.approx(1.0)
  assert m["human_volume_litres"] == pytest.approx(m["body_volume_litres"])
  assert m["object_volume_litres"] == pytest.approx(4 / 3 * math.pi * 0.2 ** 3 * 1000, rel=0.08)
  assert m["object_inside_fraction"] == 0.0
  assert m["object_gap_m"] == pytest.approx(0.02, abs=metrics.voxel_size(RES, RADIUS))
  bars = metrics.check_bars(m)
  assert bars["human_iou"] and bars["object_inside"] and bars["object_gap"]
  assert bars["object_volume"] == (m["object_volume_litres"] >= 1.0)


def test_density_grid_chunks_and_padding():
  fn = lambda x: jnp.sum(x * jnp.array([1.0, 2.0, -3.0]), -1) ** 2
  g = metrics.density_grid(fn, 9, 1.5, chunk=100)   # 729 points: last chunk padded
  p = mesh_export.grid_points(9, 1.5)
  np.testing.assert_allclose(g, (p @ np.array([1.0, 2.0, -3.0])) ** 2, rtol=1e-5, atol=1e-5)


def test_covered_hue_ignores_background_and_grey():
  from interfusion_jax.guidance import captions as colors
  rgb = np.zeros((2, 8, 8, 3))
  rgb[..., :] = colors.color_rgb("green")          # background (low opacity)
  rgb[:, 2:6, 2:6] = colors.color_rgb("blue")      # covered
  rgb[:, 2, 2] = 0.5                               # a grey covered pixel
  op = np.zeros((2, 8, 8))
  op[:, 2:6, 2:6] = 0.9
  hue = metrics.covered_hue(rgb, op)
  assert metrics.hue_error(hue, "blue") < 1.0
  assert metrics.hue_error(hue, "green") > 90.0
  assert math.isnan(metrics.covered_hue(rgb, np.zeros((2, 8, 8))))
  assert metrics.hue_error(float("nan"), "red") == 180.0


def test_named_colors_and_hue_error_wraps():
  import ml_collections
  c = ml_collections.ConfigDict({"prompt": {"human": "a man in a red shirt",
                                            "object": "a blue chair"}})
  assert metrics.named_colors(c) == {"human": "red", "object": "blue"}
  c.prompt.human, c.prompt.object = "a man wearing a WORLD lettered T-shirt", "a white bike"
  assert metrics.named_colors(c) == {"human": None, "object": None}
  from interfusion_jax.guidance import captions as colors
  red = colors.color_hue("red")
  assert metrics.hue_error((red - 20.0) % 360.0, "red") == pytest.approx(20.0)


def test_check_bars_thresholds():
  ok = {"human_iou": 0.75, "object_inside_fraction": 0.02, "object_volume_litres": 1.0,
        "object_gap_m": 0.05, "human_hue_error_deg": 30.0, "object_hue_error_deg": None,
        "wall_time_s": 1200.0}
  assert metrics.check_bars(ok) == {"human_iou": True, "object_inside": True,
                                     "object_volume": True, "object_gap": True,
                                     "human_hue": True, "time": True}
  bad = {"human_iou": 0.7, "object_inside_fraction": 0.03, "object_volume_litres": 0.9,
         "object_gap_m": 0.06, "human_hue_error_deg": 31.0, "wall_time_s": 1201.0}
  assert not any(metrics.check_bars(bad).values())


def test_object_shape_match_recognises_a_placed_object():
  """The field equal to the placed chair scores IoU ~1 for chair, less for the others."""
  from interfusion_jax.prior import mannequin, objects, placement
  body = mannequin.posed_mannequin(np.zeros((21, 3)))
  v, f, j = body.vertices, body.faces, body.joints
  placed = placement.place_object(objects.make_object("chair"), placement.default_rule("chair"),
                                  v, f, j).mesh
  res, radius = 64, 2.0
  pts = mesh_export.grid_points(res, radius).reshape(-1, 3)
  inside = placement.occupied(placement.occupancy(placed.vertices, placed.faces, 96), pts)
  sigma = np.where(inside, 50.0, 0.0).reshape(res, res, res)
  got = metrics.object_shape_match(sigma, v, f, j, radius, names=("chair", "ball", "bed"))
  assert got["chair"] == pytest.approx(1.0)
  assert got["ball"] < 0.2 and got["bed"] < 0.5
  empty = metrics.object_shape_match(np.zeros_like(sigma), v, f, j, radius, names=("chair",))
  assert empty["chair"] == 0.0
