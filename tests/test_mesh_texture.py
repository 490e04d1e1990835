"""UV-textured meshes: the texel footprint against brute force, dilation against brute force,
and a baked closed-form colour field reloaded with trimesh (OBJ + MTL + PNG and GLB) and
checked at every vertex against the field."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.spatial

from interfusion_jax.mesh import export, texture
from interfusion_jax.mesh.types import Mesh

trimesh = pytest.importorskip("trimesh")

CENTER = np.array([0.1, -0.2, 0.05])
RADIUS = 0.6
FREQ = 3.0
PHASE = np.array([0.0, 1.0, 2.0])


def _color(p):
  """A closed-form albedo field, c_k(p) = 0.5 + 0.4 sin(3 p_k + phase_k); |grad c_k| <= 1.2."""
  return 0.5 + 0.4 * np.sin(FREQ * np.asarray(p, np.float64) + PHASE)


def _sphere_mesh(resolution=32):
  density = lambda p: 100.0 * (RADIUS - np.linalg.norm(p - CENTER, axis=-1))
  return export.extract_mesh(density, _color, resolution, 1.0, threshold=0.0)


def _reference_sample(image, uv):
  """Bilinear lookup by scipy (texel (i, j) centre at u = (j + .5) / W, v = 1 - (i + .5) / H)."""
  img = np.asarray(image, np.float64) / 255.0
  h, w = img.shape[:2]
  rows, cols = (1.0 - uv[:, 1]) * h - 0.5, uv[:, 0] * w - 0.5
  return np.stack([scipy.ndimage.map_coordinates(img[..., k], [rows, cols], order=1,
                                                 mode="nearest") for k in range(3)], -1)


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
  mesh = _sphere_mesh()
  size = 256
  tm = texture.bake(mesh, _color, size, chunk=4096)
  out = tmp_path_factory.mktemp("textured")
  paths = texture.write_textured_mesh(out / "ball", tm)
  return mesh, tm, size, paths


def test_written_files_and_their_names(baked):
  _, tm, size, paths = baked
  assert [p.name for p in paths] == ["ball.png", "ball.mtl", "ball.obj", "ball.glb"]
  mtl = paths[1].read_text()
  assert "map_Kd ball.png" in mtl and "Kd 1.00000000 1.00000000 1.00000000" in mtl
  assert "mtllib ball.mtl" in paths[2].read_text()
  from PIL import Image
  np.testing.assert_array_equal(np.asarray(Image.open(paths[0]).convert("RGB")), tm.texture)
  assert tm.texture.shape == (size, size, 3)


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_reloaded_texture_matches_the_field_at_every_vertex(baked, fmt):
  """Reloaded by trimesh, the texture at each vertex's UV is the field's albedo there.

  Tolerance: a texel centre holds the exact albedo of its 3D point (at or next
  to the triangle), so a bilinear lookup at a vertex is off by at most
  |grad c| times the world distance to the four texel centres it blends,
  about sqrt(2) texel widths h, plus 8-bit rounding: with |grad c| <= 1.2,
  tol = 1.2 * 2 h + 1 / 255, where h = sqrt(surface area / baked texels).
  Measured here: tol 0.031, max error 0.004. (xatlas can pack a concave
  chart's two sides a texel apart; a lookup at a vertex on such a gap blends
  both sides, as a GPU's would: 2 of 8900 vertices, errors 0.04 and 0.07, on
  a 64^3 sphere at 1024^2; none on this mesh.)
  """
  mesh, tm, size, paths = baked
  loaded = trimesh.load(paths[3 if fmt == "glb" else 2], process=False)
  if fmt == "glb":
    (geom,) = loaded.geometry.values()
    image = geom.visual.material.baseColorTexture
    # The node turns the z-up scene y-up: (x, y, z) -> (x, z, -y).
    world = loaded.dump(concatenate=True).vertices
    np.testing.assert_allclose(world, geom.vertices[:, [0, 2, 1]] * [1, 1, -1], atol=1e-6)
  else:
    geom = loaded
    image = geom.visual.material.image
  uv = np.asarray(geom.visual.uv)
  verts = np.asarray(geom.vertices)
  assert len(geom.faces) == len(tm.faces) and len(verts) == len(tm.vertices)
  assert uv.min() >= 0.0 and uv.max() <= 1.0
  np.testing.assert_allclose(uv, tm.uvs, atol=1e-6)
  np.testing.assert_allclose(verts, tm.vertices, atol=1e-6)
  # The split vertices are the marching-cubes vertices; almost every face is kept.
  tree = scipy.spatial.cKDTree(mesh.vertices)
  assert tree.query(verts)[0].max() < 1e-6
  tri = mesh.vertices[mesh.faces]
  area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
  assert len(mesh.faces) - 5 <= len(tm.faces) <= len(mesh.faces)
  covered = texture.texel_coverage(tm.uvs, tm.faces, size)["distance"] == 0.0
  h = np.sqrt(area.sum() / covered.sum())
  tol = 1.2 * 2.0 * h + 1.0 / 255.0
  err = np.abs(_reference_sample(image.convert("RGB"), uv) - _color(verts)).max(-1)
  print(f"texel width {h:.4f}, tol {tol:.4f}, max err {err.max():.4f}, "
        f"99.5% {np.quantile(err, 0.995):.4f}, mean {err.mean():.4f}")
  assert err.max() <= tol


def _closest_distance_brute(p, tri, samples=3000):
  """Distance from points p [P, 2] to a triangle [3, 2]: 0 inside (edge-function signs),
  else the nearest of dense samples along its three edges."""
  a, b, c = tri
  def side(u, v, q):
    return (v[0] - u[0]) * (q[:, 1] - u[1]) - (v[1] - u[1]) * (q[:, 0] - u[0])
  s = np.stack([side(a, b, p), side(b, c, p), side(c, a, p)], -1)
  inside = np.all(s >= 0, -1) | np.all(s <= 0, -1)
  t = np.linspace(0.0, 1.0, samples)[:, None]
  d = np.min([np.sqrt(((p[:, None, :] - (u + t * (v - u))[None]) ** 2).sum(-1)).min(1)
              for u, v in ((a, b), (b, c), (c, a))], axis=0)
  return np.where(inside, 0.0, d)


def test_texel_coverage_against_brute_force():
  rng = np.random.default_rng(0)
  size = 24
  uv = rng.uniform(0.1, 0.9, (12, 2))
  faces = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
  uv[9:12] = [[0.2, 0.5], [0.8, 0.51], [0.5, 0.505]]       # a sliver covering few centres
  cov = texture.texel_coverage(uv, faces, size, reach=1.5)
  jj, ii = np.meshgrid(np.arange(size), np.arange(size))
  centres = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], -1)      # (col, row) + 0.5
  xy = np.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size], -1)
  dist = np.stack([_closest_distance_brute(centres, xy[f]) for f in faces], -1)   # [S*S, F]
  nearest = dist.min(1)
  reached = np.flatnonzero(nearest <= 1.5 - 0.01)
  assert set(reached) <= set(cov["texel"])
  assert set(cov["texel"]) <= set(np.flatnonzero(nearest <= 1.5 + 0.01))
  k = np.searchsorted(cov["texel"], reached)
  np.testing.assert_allclose(cov["distance"][k], nearest[reached], atol=0.01)
  # The winning face is a nearest one, and its barycentric point is at that distance.
  np.testing.assert_allclose(dist[reached, cov["face"][k]], nearest[reached], atol=0.01)
  point = np.einsum("pk,pkd->pd", cov["bary"][k], xy[faces[cov["face"][k]]])
  np.testing.assert_allclose(np.linalg.norm(point - centres[reached], axis=-1),
                             nearest[reached], atol=0.01)
  np.testing.assert_allclose(cov["bary"].sum(-1), 1.0, atol=1e-6)
  assert cov["bary"].min() >= -1e-6


def test_dilate_copies_the_nearest_covered_texel():
  rng = np.random.default_rng(1)
  covered = rng.uniform(size=(20, 30)) < 0.05
  tex = rng.uniform(size=(20, 30, 3))
  out = texture.dilate(tex, covered)
  np.testing.assert_array_equal(out[covered], tex[covered])
  src = np.argwhere(covered)
  for i, j in np.argwhere(~covered)[::7]:
    d = np.hypot(*(src - [i, j]).T)
    matches = src[d <= d.min() + 1e-9]
    assert any(np.array_equal(out[i, j], tex[a, b]) for a, b in matches)
  with pytest.raises(texture.TextureError):
    texture.dilate(tex, np.zeros_like(covered))


def test_side_by_side_keeps_each_part_s_lookups(baked):
  _, tm, size, _ = baked
  other = tm._replace(texture=255 - tm.texture, vertices=tm.vertices + 1.0)
  both = texture.side_by_side([tm, other])
  assert both.texture.shape == (size, 2 * size, 3)
  assert len(both.vertices) == 2 * len(tm.vertices) and both.faces.max() == len(both.vertices) - 1
  n = len(tm.vertices)
  np.testing.assert_allclose(_reference_sample(both.texture, both.uvs[:n]),
                             _reference_sample(tm.texture, tm.uvs), atol=1e-6)
  np.testing.assert_allclose(_reference_sample(both.texture, both.uvs[n:]),
                             _reference_sample(other.texture, other.uvs), atol=1e-6)
  np.testing.assert_allclose(texture.sample(both.texture, both.uvs),
                             _reference_sample(both.texture, both.uvs), atol=1e-9)


def test_empty_meshes_write_no_textured_files(tmp_path):
  empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), None)
  assert texture.write_textured_meshes(tmp_path, {"human": empty, "object": empty},
                                       {"human": _color, "object": _color}, 64) == {}
  assert texture.write_textured_meshes(tmp_path, {"human": _sphere_mesh(12)},
                                       {"human": _color}, 0) == {}
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(texture.TextureError, match="no faces"):
    texture.unwrap(empty, 64)
