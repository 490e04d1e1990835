"""Tests for interfusion_jax/prior/placement.py: against, not inside, the body."""
import numpy as np
import pytest

from scipy.spatial import cKDTree

from interfusion_jax.pose import library
from interfusion_jax.prior import mannequin, objects, placement


def _pose(label):
  poses, orients, labels, _ = library.library_arrays()
  i = labels.index(label)
  return mannequin.posed_mannequin(poses[i], orients[i])


def test_winding_number_matches_analytic_inside_of_a_box_and_sphere():
  rng = np.random.default_rng(0)
  pts = rng.uniform(-1, 1, (300, 3))
  b = objects.box((0.1, 0, 0), (1.0, 0.8, 0.6))
  truth = np.all(np.abs(pts - [0.1, 0, 0]) < [0.5, 0.4, 0.3], axis=1)
  np.testing.assert_allclose(placement.winding_number(pts, b.vertices, b.faces)[truth], 1.0, atol=1e-6)
  np.testing.assert_allclose(placement.winding_number(pts, b.vertices, b.faces)[~truth], 0.0, atol=1e-6)
  s = objects.sphere((0, 0, 0), 0.7, 16, 32)
  r = np.linalg.norm(pts, axis=1)
  far = np.abs(r - 0.7) > 0.05
  assert np.array_equal(placement.inside_mesh(pts[far], s.vertices, s.faces), r[far] < 0.7)


def test_occupancy_of_overlapping_union_matches_analytic():
  # Two overlapping boxes: ray parity of the concatenated mesh would cancel
  # the overlap; the per-component OR must keep it inside.
  m = objects.concat([objects.box((0, 0, 0), (0.6, 0.3, 0.3)),
                      objects.box((0.2, 0, 0), (0.6, 0.3, 0.3))])
  occ = placement.occupancy(m.vertices, m.faces, 48)
  rng = np.random.default_rng(1)
  pts = rng.uniform(-0.6, 0.6, (4000, 3))
  truth = (np.all(np.abs(pts - [0.0, 0, 0]) < [0.3, 0.15, 0.15], 1)
           | np.all(np.abs(pts - [0.2, 0, 0]) < [0.3, 0.15, 0.15], 1))
  agree = placement.occupied(occ, pts) == truth
  assert agree.mean() > 0.97
  assert placement.occupied(occ, np.array([[0.1, 0.0, 0.0]]))[0]  # in the overlap


def test_body_frame_faces_the_way_the_mannequin_faces():
  body = _pose("standing")
  frame = placement.body_frame(body.joints)
  # The mannequin faces +z in its y-up rest frame -> +x in the z-up scene
  # (scene = (z, x, y) of SMPL-X, as the anchor body).
  np.testing.assert_allclose(frame[:, 0], [1, 0, 0], atol=0.1)
  np.testing.assert_allclose(frame.T @ frame, np.eye(3), atol=1e-9)


@pytest.mark.parametrize("label, name", [
    ("sitting on a chair", "chair"), ("riding a bike", "bicycle"),
    ("holding a ball", "ball"), ("riding a skateboard", "skateboard")])
def test_placed_object_touches_but_does_not_enter_the_body(label, name):
  body = _pose(label)
  q = placement.body_query(body.vertices, body.faces, 64)
  pl = placement.place_object(objects.make_object(name), placement.default_rule(name),
                              body.vertices, body.faces, body.joints, query=q)
  # Independent checks: exact winding-number inside test of the object's
  # volume samples, exact point-triangle distance to the body surface.
  assert placement.penetration_fraction(pl.mesh, body.vertices, body.faces, 40) <= 0.01
  # Distance to the body surface, by dense body surface samples (~1 cm apart).
  body_pts = placement.surface_samples(objects.Mesh(body.vertices, body.faces), 30000)
  dist = cKDTree(body_pts).query(placement.surface_samples(pl.mesh, 300))[0].min()
  assert dist <= 0.10
  if name != "skateboard":
    assert dist <= 0.05
  joints, v = body.joints, pl.mesh.vertices
  if name == "chair":        # seat below the pelvis, above the feet' floor
    assert v[:, 2].max() < joints[placement.HEAD, 2]
    assert pl.translation[2] < joints[placement.PELVIS, 2]
  if name == "skateboard":   # under the feet
    assert v[:, 2].max() <= body.vertices[:, 2].min() + 0.02
  if name == "ball":         # between the hands
    hands = placement.hand_centers(joints).mean(0)
    assert np.linalg.norm(0.5 * (v.min(0) + v.max(0)) - hands) < 0.25
  if name == "bicycle":      # saddle below the crotch, frame between the legs
    assert pl.translation[2] < joints[placement.PELVIS, 2]


def test_bad_inputs_are_clear_errors():
  with pytest.raises(placement.PlacementError, match="joints"):
    placement.body_frame(np.zeros((5, 3)))
  with pytest.raises(placement.PlacementError, match="rule"):
    placement.target_and_push("on_the_head", np.zeros((10, 3)),
                              np.random.default_rng(0).normal(size=(22, 3)))
