"""Tests for interfusion_jax/prior/objects.py: closed, outward, plausible objects."""
import math

import numpy as np
import pytest

from interfusion_jax.prior import objects

# name -> ((min extent, max extent) of the largest bbox side in metres).
SIZES = {"chair": (0.4, 1.2), "bench": (1.0, 2.0), "sofa": (1.5, 2.5),
         "bicycle": (1.4, 2.0), "motorcycle": (1.6, 2.5), "horse": (1.8, 3.0),
         "box": (0.2, 0.8), "ball": (0.15, 0.4), "guitar": (0.8, 1.3),
         "laptop": (0.25, 0.45), "bed": (1.8, 2.3), "skateboard": (0.6, 1.0),
         "umbrella": (0.8, 1.3), "table": (0.9, 1.8)}


def directed_edges_paired(mesh):
  """Every directed edge appears once and its reverse once: closed, oriented."""
  f = mesh.faces
  e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
  s = set(map(tuple, e.tolist()))
  return len(s) == len(e) and all((b, a) in s for a, b in s)


@pytest.mark.parametrize("name", objects.OBJECT_NAMES)
def test_objects_are_closed_outward_and_plausible(name):
  m = objects.make_object(name)
  assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int32
  assert directed_edges_paired(m), "mesh is not closed and consistently wound"
  vol = objects.signed_volume(m)
  assert vol >= 1e-3, f"{name}: volume {vol * 1e3:.2f} L (< 1 litre) or inward normals"
  ext = m.vertices.max(0) - m.vertices.min(0)
  lo, hi = SIZES[name]
  assert lo <= ext.max() <= hi, f"{name}: largest extent {ext.max():.2f} m"


def test_required_objects_exist():
  for n in ("chair", "sofa", "bench", "bicycle", "box", "ball", "guitar", "laptop",
            "bed", "skateboard", "umbrella"):
    assert n in objects.GENERATORS
  assert "motorcycle" in objects.GENERATORS or "horse" in objects.GENERATORS


def test_primitive_volumes_match_closed_forms():
  assert objects.signed_volume(objects.box((1, 2, 3), (0.5, 2.0, 3.0))) == pytest.approx(3.0)
  n, r, h = 24, 0.3, 1.7
  polygon_area = 0.5 * n * r * r * math.sin(2 * math.pi / n)
  cyl = objects.cylinder((0.1, 0.2, 0.3), (0.1 + h / math.sqrt(2), 0.2, 0.3 + h / math.sqrt(2)), r, n)
  assert objects.signed_volume(cyl) == pytest.approx(polygon_area * h, rel=1e-6)
  sph = objects.sphere((0, 0, 0), 0.5, 24, 48)
  assert objects.signed_volume(sph) == pytest.approx(4 / 3 * math.pi * 0.125, rel=0.02)
  tor = objects.torus((0, 0, 0), 1.0, 0.2, n_major=64, n_minor=32)
  assert objects.signed_volume(tor) == pytest.approx(2 * math.pi ** 2 * 1.0 * 0.04, rel=0.02)
  for m in (cyl, sph, tor, objects.cone((0, 0, 0), (0, 0, 1), 0.4)):
    assert directed_edges_paired(m)


@pytest.mark.parametrize("text, name", [
    ("riding a bike", "bicycle"), ("a red couch", "sofa"), ("juggling two balls", "ball"),
    ("a photo of a man lying on a bed", "bed"), ("holding an umbrella", "umbrella"),
    ("a man", None)])
def test_object_from_text(text, name):
  assert objects.object_from_text(text) == name


def test_unknown_object_is_a_clear_error():
  with pytest.raises(objects.UnknownObjectError, match="weights_dir"):
    objects.make_object("spaceship")
