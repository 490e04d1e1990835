"""Mesh export: marching cubes against a closed-form sphere, OBJ/GLB round trips."""
import json
import struct

import numpy as np
import pytest

from interfusion_jax.mesh import export


def _sphere(center, r):
  center = np.asarray(center, np.float32)
  density = lambda p: 100.0 * (r - np.linalg.norm(p - center, axis=-1))
  color = lambda p: np.clip((p - center) / (2 * r) + 0.5, 0, 1)
  return density, color


def test_marching_cubes_sphere():
  density, color = _sphere((0.3, -0.2, 0.1), 0.8)
  mesh = export.extract_mesh(density, color, resolution=48, radius=2.0, threshold=0.0)
  assert mesh.faces.shape[1] == 3 and len(mesh.faces) > 100
  dist = np.linalg.norm(mesh.vertices - np.array([0.3, -0.2, 0.1]), axis=-1)
  np.testing.assert_allclose(dist, 0.8, atol=2 * 4.0 / 47)
  # Faces face outward: the normal points away from the centre.
  tri = mesh.vertices[mesh.faces]
  n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  outward = np.sum(n * (tri.mean(1) - np.array([0.3, -0.2, 0.1])), axis=-1)
  assert np.mean(outward > 0) > 0.99
  # Colours were evaluated at the vertices.
  np.testing.assert_allclose(mesh.colors, color(mesh.vertices), atol=1e-6)


def test_empty_when_no_crossing():
  mesh = export.extract_mesh(lambda p: np.zeros(len(p)), None, 8, 1.0, threshold=1.0)
  assert mesh.vertices.shape == (0, 3) and mesh.faces.shape == (0, 3)
  assert export.glb_bytes(mesh)[:4] == b"glTF"


def test_obj_roundtrip(tmp_path):
  density, color = _sphere((0, 0, 0), 1.0)
  mesh = export.extract_mesh(density, color, 16, 2.0, threshold=0.0)
  paths = export.write_mesh(tmp_path / "m", mesh)
  text = paths[1].read_text().splitlines()
  vs = np.array([[float(x) for x in l.split()[1:]] for l in text if l.startswith("v ")])
  fs = np.array([[int(x) for x in l.split()[1:]] for l in text if l.startswith("f ")])
  np.testing.assert_allclose(vs[:, :3], mesh.vertices, atol=1e-5)
  np.testing.assert_allclose(vs[:, 3:], mesh.colors, atol=1e-4)
  np.testing.assert_array_equal(fs - 1, mesh.faces)


def test_glb_parses_and_matches(tmp_path):
  density, color = _sphere((0, 0, 0.5), 0.7)
  a = export.extract_mesh(density, color, 16, 2.0, threshold=0.0)
  b = export.extract_mesh(*_sphere((0, 0, -0.9), 0.5), 16, 2.0, threshold=0.0)
  mesh = export.merge_meshes([a, b])
  assert len(mesh.vertices) == len(a.vertices) + len(b.vertices)
  assert mesh.faces.max() == len(mesh.vertices) - 1
  data = export.glb_bytes(mesh)
  # Hand parse of the GLB container (independent of the writer's layout code).
  magic, version, total = struct.unpack("<4sII", data[:12])
  assert (magic, version, total) == (b"glTF", 2, len(data))
  jlen, jtype = struct.unpack("<I4s", data[12:20])
  assert jtype == b"JSON"
  gltf = json.loads(data[20:20 + jlen])
  blen, btype = struct.unpack("<I4s", data[20 + jlen:28 + jlen])
  assert btype == b"BIN\x00"
  binary = data[28 + jlen:28 + jlen + blen]
  def accessor(i, dtype, width):
    acc = gltf["accessors"][i]
    view = gltf["bufferViews"][acc["bufferView"]]
    raw = binary[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    return np.frombuffer(raw, dtype).reshape(acc["count"] // (1 if width > 1 else 3), -1) \
        if width == 1 else np.frombuffer(raw, dtype).reshape(acc["count"], width)
  prim = gltf["meshes"][0]["primitives"][0]
  np.testing.assert_array_equal(accessor(prim["indices"], np.uint32, 1).reshape(-1, 3),
                                mesh.faces)
  np.testing.assert_allclose(accessor(prim["attributes"]["POSITION"], np.float32, 3),
                             mesh.vertices)
  np.testing.assert_allclose(accessor(prim["attributes"]["COLOR_0"], np.float32, 3),
                             mesh.colors)
  trimesh = pytest.importorskip("trimesh")
  paths = export.write_mesh(tmp_path / "m", mesh)
  scene = trimesh.load(paths[0])
  geom = list(scene.geometry.values())[0] if hasattr(scene, "geometry") else scene
  assert len(geom.faces) == len(mesh.faces)
