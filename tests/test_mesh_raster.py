"""Tests for interfusion_jax.mesh.raster against independent references.

References: analytic point-in-triangle tests at pixel centres, ray-plane
intersection, brute-force ray casting (Moller-Trumbore, one loop over
triangles), closed-form silhouette areas and the Lambert formula.
"""
import math

import numpy as np
import pytest

from interfusion_jax.mesh import raster as mr


# ----------------------------------------------------------------------------
# Independent helpers (hand-built cameras, meshes, reference renderers).
# ----------------------------------------------------------------------------


def _look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
  """OpenGL c2w built by hand: columns right, up, backward, eye."""
  eye = np.asarray(eye, float)
  back = eye - np.asarray(target, float)
  back /= np.linalg.norm(back)
  right = np.cross(up, back)
  right /= np.linalg.norm(right)
  c2w = np.eye(4)
  c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = (
      right, np.cross(back, right), back, eye)
  return c2w


def _icosphere(subdivisions: int):
  t = (1.0 + 5.0 ** 0.5) / 2.0
  verts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t],
           [0, 1, t], [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1],
           [-t, 0, -1], [-t, 0, 1]]
  faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
           [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
           [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
           [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
  verts = [np.asarray(v, float) / np.linalg.norm(v) for v in verts]
  for _ in range(subdivisions):
    cache, new_faces = {}, []

    def mid(a, b):
      k = (min(a, b), max(a, b))
      if k not in cache:
        m = verts[a] + verts[b]
        verts.append(m / np.linalg.norm(m))
        cache[k] = len(verts) - 1
      return cache[k]

    for a, b, c in faces:
      ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
      new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    faces = new_faces
  return np.array(verts), np.array(faces)


def _cube(half: float = 0.5):
  """Unit cube, outward counter-clockwise faces (12 triangles)."""
  v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half)
                for z in (-half, half)])
  quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6),
           (0, 2, 6, 4), (1, 5, 7, 3)]
  f = []
  for a, b, c, d in quads:
    f += [[a, b, c], [a, c, d]]
  f = np.array(f)
  # Make every face point outwards (normal along centroid direction).
  n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
  flip = np.sum(n * v[f].mean(axis=1), axis=1) < 0
  f[flip] = f[flip][:, ::-1]
  return v, f


def _pixel_rays(c2w, fovy_deg, h, w):
  """Unit world ray directions through pixel centres [H, W, 3] (by hand)."""
  f = 0.5 * h / math.tan(math.radians(fovy_deg) / 2)
  i, j = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  d = np.stack([(j - w / 2) / f, -(i - h / 2) / f, -np.ones_like(i)], -1)
  d = d @ c2w[:3, :3].T
  return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _raycast_reference(verts, faces, c2w, fovy_deg, h, w):
  """Brute-force Moller-Trumbore ray casting, one loop over triangles.

  Returns (face_id [H, W], zdepth [H, W], ambiguous [H, W]: the pixel centre
  lies on some triangle's edge, within 1e-6 in barycentrics).
  """
  dirs = _pixel_rays(c2w, fovy_deg, h, w).reshape(-1, 3)
  eye, back = c2w[:3, 3], c2w[:3, 2]
  best_t = np.full(dirs.shape[0], np.inf)
  best_f = np.full(dirs.shape[0], -1)
  ambiguous = np.zeros(dirs.shape[0], bool)
  for k, (a, b, c) in enumerate(faces):
    e1, e2 = verts[b] - verts[a], verts[c] - verts[a]
    p = np.cross(dirs, e2)
    det = p @ e1
    ok = np.abs(det) > 1e-12
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    s = eye - verts[a]
    u = (p @ s) * inv
    q = np.cross(s, e1)
    v = (dirs @ q) * inv
    t = (q @ e2) * inv
    bw = np.stack([1 - u - v, u, v], -1)
    hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    on_edge = ok & (t > 0) & (np.abs(np.min(bw, -1)) < 1e-6)
    ambiguous |= on_edge
    closer = hit & (t < best_t)
    best_t[closer] = t[closer]
    best_f[closer] = k
  zdepth = best_t * (dirs @ -back)
  return best_f.reshape(h, w), zdepth.reshape(h, w), ambiguous.reshape(h, w)


def _hull_area(points):
  """Area of the convex hull of 2D points (monotone chain + shoelace)."""
  pts = sorted(map(tuple, points))

  def half(seq):
    out = []
    for p in seq:
      while len(out) >= 2 and (
          (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
          - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
        out.pop()
      out.append(p)
    return out[:-1]

  hull = np.array(half(pts) + half(pts[::-1]))
  x, y = hull[:, 0], hull[:, 1]
  return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


# ----------------------------------------------------------------------------
# Coverage, depth, z-buffer.
# ----------------------------------------------------------------------------


def test_single_triangle_coverage_matches_analytic_inside_test():
  rng = np.random.default_rng(0)
  h, w, fovy = 48, 64, 50.0
  f = 0.5 * h / math.tan(math.radians(fovy) / 2)
  for trial in range(5):
    # Camera at the origin looking along -z (c2w = I); triangle at z = -3.
    pix = rng.uniform([-5, -5], [w + 5, h + 5], size=(3, 2))
    depth = 3.0
    cam = np.stack([(pix[:, 0] - w / 2) * depth / f,
                    -(pix[:, 1] - h / 2) * depth / f,
                    -np.full(3, depth)], -1)
    out = mr.render_mesh(cam, np.array([[0, 1, 2]]), np.eye(4), fovy, h, w)
    # Analytic point-in-triangle (same side of all three edges).
    j, i = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    p = np.stack([j, i], -1)

    def side(a, b):
      return ((b[0] - a[0]) * (p[..., 1] - a[1])
              - (b[1] - a[1]) * (p[..., 0] - a[0]))

    s = np.stack([side(pix[0], pix[1]), side(pix[1], pix[2]),
                  side(pix[2], pix[0])])
    inside = np.all(s >= 0, 0) | np.all(s <= 0, 0)
    edge_len = np.array([np.linalg.norm(pix[(k + 1) % 3] - pix[k])
                         for k in range(3)])
    clear = np.min(np.abs(s) / edge_len[:, None, None], 0) > 1e-6
    assert inside.sum() > 0, trial
    np.testing.assert_array_equal(out["mask"][clear], inside[clear])
    np.testing.assert_array_equal(out["face_id"][out["mask"]], 0)
    assert np.all(out["face_id"][~out["mask"]] == -1)


def test_depth_matches_ray_plane_intersection_and_camera_rays():
  rng = np.random.default_rng(1)
  h, w, fovy = 40, 40, 60.0
  c2w = _look_at([1.0, -0.9, -2.0], [0.1, 0.2, -0.1])
  tri = np.array([[-0.8, -0.6, -0.3], [0.9, -0.2, 0.4], [-0.1, 0.9, -0.5]])
  tri += rng.normal(scale=0.05, size=tri.shape)
  out = mr.render_mesh(tri, np.array([[0, 1, 2]]), c2w, fovy, h, w)
  m = out["mask"]
  assert m.sum() > 200
  n = np.cross(tri[1] - tri[0], tri[2] - tri[0])
  dirs = _pixel_rays(c2w, fovy, h, w)
  t = ((tri[0] - c2w[:3, 3]) @ n) / (dirs @ n)
  zdepth = t * (dirs @ -c2w[:3, 2])
  np.testing.assert_allclose(out["depth"][m], zdepth[m], rtol=1e-5)
  assert np.all(np.isinf(out["depth"][~m]))
  # Same rays as interfusion_jax.nerf.camera (the project's convention).
  camera = pytest.importorskip("interfusion_jax.nerf.camera")
  _, cdirs = camera.pinhole_rays(c2w, math.radians(fovy), h, w)
  np.testing.assert_allclose(np.asarray(cdirs), dirs, atol=1e-5)


def test_zbuffer_keeps_nearest_of_two_overlapping_triangles():
  h = w = 32
  near = np.array([[-1.0, -1.0, -2.0], [1.0, -1.0, -2.0], [0.0, 1.0, -2.0]])
  far = near * np.array([1.3, 1.3, 1.0]) + np.array([0.3, 0.0, -1.0])
  for order in (0, 1):
    verts = np.concatenate([near, far] if order == 0 else [far, near])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    out = mr.render_mesh(verts, faces, np.eye(4), 60.0, h, w,
                         face_colors=np.array([[1.0, 0, 0], [0, 0, 1.0]]))
    near_id = 0 if order == 0 else 1
    alone = [mr.render_mesh(verts[3 * k:3 * k + 3], np.array([[0, 1, 2]]),
                            np.eye(4), 60.0, h, w)["mask"] for k in range(2)]
    near_mask = alone[near_id]
    overlap = alone[0] & alone[1]
    assert overlap.sum() > 20
    np.testing.assert_array_equal(out["face_id"][near_mask], near_id)
    np.testing.assert_array_equal(out["face_id"][~near_mask & out["mask"]],
                                  1 - near_id)
    np.testing.assert_array_equal(out["mask"], alone[0] | alone[1])
    np.testing.assert_allclose(out["depth"][overlap], 2.0, rtol=1e-6)


def test_large_triangles_enumerated_in_chunks_match_unchunked():
  # Many overlapping screen-filling triangles at random depths.
  rng = np.random.default_rng(7)
  n = 12
  z = -rng.uniform(1.5, 3.0, size=n)
  verts = np.concatenate([np.array([[-4.0, -4.0, d], [4.0, -4.0, d],
                                    [0.0, 4.0, d + 0.3]]) for d in z])
  faces = np.arange(3 * n).reshape(n, 3)
  spec = mr.RasterSpec(height=40, width=40, fovy_deg=60.0)
  pts = mr.world_to_camera(verts, np.eye(4))[None]
  t = mr._triangle_setup(pts, faces, spec)
  whole = mr._enumerate_fragments(t)
  chunked = mr._enumerate_fragments(t, max_candidates=1000)
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)
  out = mr.render_mesh(verts, faces, np.eye(4), 60.0, 40, 40)
  # Nearest plane everywhere: depth of plane k at pixel = ray-plane hit.
  dirs = _pixel_rays(np.eye(4), 60.0, 40, 40)
  best = np.full((40, 40), np.inf)
  for k in range(n):
    tri = verts[3 * k:3 * k + 3]
    nrm = np.cross(tri[1] - tri[0], tri[2] - tri[0])
    tk = (tri[0] @ nrm) / (dirs @ nrm)
    zk = tk * -dirs[..., 2]
    best = np.minimum(best, np.where(out["mask"], zk, np.inf))
  np.testing.assert_allclose(out["depth"], best, rtol=1e-5)


def test_matches_bruteforce_ray_casting_on_a_sphere():
  verts, faces = _icosphere(2)
  verts = verts * np.array([0.7, 0.5, 0.9]) + 0.1
  h, w, fovy = 36, 44, 45.0
  c2w = _look_at([2.2, 1.4, 0.9], [0.0, 0.1, 0.0])
  out = mr.render_mesh(verts, faces, c2w, fovy, h, w)
  ref_f, ref_z, ambiguous = _raycast_reference(verts, faces, c2w, fovy, h, w)
  clear = ~ambiguous  # pixel centres not on a triangle edge
  assert np.mean(clear) > 0.9
  np.testing.assert_array_equal(out["face_id"][clear], ref_f[clear])
  hit = out["mask"]
  np.testing.assert_array_equal(hit[clear], ref_f[clear] >= 0)
  np.testing.assert_allclose(out["depth"][hit & (ref_f >= 0)],
                             ref_z[hit & (ref_f >= 0)], rtol=1e-5)


# ----------------------------------------------------------------------------
# Silhouettes.
# ----------------------------------------------------------------------------


def test_sphere_silhouette_area_matches_closed_form():
  verts, faces = _icosphere(4)
  h = w = 128
  fovy, dist, radius = 40.0, 3.0, 0.8
  c2w = _look_at([dist, 0.0, 0.0], [0.0, 0.0, 0.0])
  out = mr.render_mesh(verts * radius, faces, c2w, fovy, h, w)
  f = 0.5 * h / math.tan(math.radians(fovy) / 2)
  # Cone of half-angle asin(r/d) -> image circle of radius f * tan(asin(r/d)).
  area = math.pi * f ** 2 * radius ** 2 / (dist ** 2 - radius ** 2)
  assert abs(out["mask"].sum() / area - 1.0) < 0.02


def test_supersampling_averages_subpixels_and_reduces_area_error():
  verts, faces = _icosphere(4)
  h = w = 48
  fovy, dist, radius = 40.0, 3.0, 0.8
  c2w = _look_at([dist, 0.1, 0.05], [0.0, 0.0, 0.0])
  kw = dict(ambient=1.0, diffuse=0.0, background=(0.0, 0.0, 0.0),
            face_colors=np.ones((faces.shape[0], 3)))
  s = 4
  aa = mr.render_mesh(verts * radius, faces, c2w, fovy, h, w, supersample=s,
                      **kw)
  big = mr.render_mesh(verts * radius, faces, c2w, fovy, s * h, s * w, **kw)
  block = big["rgb"].reshape(h, s, w, s, 3).mean(axis=(1, 3))
  np.testing.assert_allclose(aa["rgb"], block, atol=1e-6)
  np.testing.assert_array_equal(
      aa["mask"], big["mask"].reshape(h, s, w, s).mean(axis=(1, 3)) >= 0.5)
  np.testing.assert_allclose(
      aa["depth"], big["depth"].reshape(h, s, w, s).min(axis=(1, 3)))
  hit = aa["face_id"] >= 0
  np.testing.assert_array_equal(hit, np.isfinite(aa["depth"]))
  # Fractional coverage measures the silhouette area (closed form) closely.
  f = 0.5 * h / math.tan(math.radians(fovy) / 2)
  area = math.pi * f ** 2 * radius ** 2 / (dist ** 2 - radius ** 2)
  assert abs(aa["rgb"][..., 0].sum() / area - 1.0) < 0.01


@pytest.mark.parametrize("cull", [False, True])
def test_cube_silhouette_area_matches_projected_hull(cull):
  verts, faces = _cube()
  h, w, fovy = 96, 128, 50.0
  c2w = _look_at([2.1, 1.3, 1.7], [0.0, 0.05, 0.0])
  out = mr.render_mesh(verts, faces, c2w, fovy, h, w, cull_backfaces=cull)
  f = 0.5 * h / math.tan(math.radians(fovy) / 2)
  cam = (verts - c2w[:3, 3]) @ c2w[:3, :3]
  proj = np.stack([w / 2 + f * cam[:, 0] / -cam[:, 2],
                   h / 2 - f * cam[:, 1] / -cam[:, 2]], -1)
  assert abs(out["mask"].sum() / _hull_area(proj) - 1.0) < 0.03
  if cull:
    # A closed, outward-wound mesh: culling changes no visible pixel.
    full = mr.render_mesh(verts, faces, c2w, fovy, h, w)
    np.testing.assert_array_equal(out["face_id"], full["face_id"])


def test_backface_culling_drops_triangle_seen_from_behind():
  tri = np.array([[-1.0, -1.0, -2.0], [1.0, -1.0, -2.0], [0.0, 1.0, -2.0]])
  faces_ccw, faces_cw = np.array([[0, 1, 2]]), np.array([[0, 2, 1]])
  kw = dict(fovy_deg=60.0, height=16, width=16, cull_backfaces=True)
  assert mr.render_mesh(tri, faces_ccw, np.eye(4), **kw)["mask"].sum() > 20
  assert mr.render_mesh(tri, faces_cw, np.eye(4), **kw)["mask"].sum() == 0


def test_triangle_behind_camera_is_dropped():
  behind = np.array([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
  out = mr.render_mesh(behind, np.array([[0, 1, 2]]), np.eye(4), 60.0, 16, 16)
  assert not out["mask"].any()
  # A sliver reaching behind the camera but never beyond 2 * near, among
  # many ordinary triangles (so nothing is compacted), is dropped too.
  sliver = np.array([[-1e-3, -1e-3, -1.5e-3], [0.5, 0.5, 1.0],
                     [1e-3, -1e-3, -1.5e-3]])
  far = np.array([[-1.0, -1.0, -3.0], [1.0, -1.0, -3.0], [0.0, 1.0, -3.0]])
  verts = np.concatenate([sliver] + [far] * 5)
  faces = np.arange(18).reshape(6, 3)
  for order in (faces, faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]):
    out = mr.render_mesh(verts, order, np.eye(4), 60.0, 16, 16)
    assert not np.any(out["face_id"] == 0)
    assert np.all(out["depth"][out["mask"]] == pytest.approx(3.0))


def test_ground_plane_through_camera_plane_is_clipped_exactly():
  # A 10 m ground square under a camera standing on it: both triangles have
  # corners behind the camera (one with 1, one with 2 behind).
  verts = np.array([[-5.0, -5.0, 0.0], [5.0, -5.0, 0.0], [5.0, 5.0, 0.0],
                    [-5.0, 5.0, 0.0]])
  faces = np.array([[0, 1, 2], [0, 2, 3]])
  colors = np.stack([(verts[:, 0] + 5) / 10, (verts[:, 1] + 5) / 10,
                     np.full(4, 0.5)], -1)
  h, w, fovy = 40, 48, 90.0
  c2w = _look_at([0.3, 0.2, 1.0], [3.0, 0.5, 0.0])
  out = mr.render_mesh(verts, faces, c2w, fovy, h, w, vertex_colors=colors,
                       ambient=1.0, diffuse=0.0)
  ref_f, ref_z, ambiguous = _raycast_reference(verts, faces, c2w, fovy, h, w)
  clear = ~ambiguous
  assert (ref_f >= 0).mean() > 0.3 and (ref_f < 0).mean() > 0.1
  np.testing.assert_array_equal(out["face_id"][clear], ref_f[clear])
  m = out["mask"]
  np.testing.assert_allclose(out["depth"][m], ref_z[m], rtol=1e-5)
  # Colours are affine in the world hit point (checks the clipped parts'
  # barycentric mapping back to the original faces).
  dirs = _pixel_rays(c2w, fovy, h, w)
  hit = c2w[:3, 3] + (-c2w[2, 3] / dirs[..., 2])[..., None] * dirs
  expect = np.stack([(hit[..., 0] + 5) / 10, (hit[..., 1] + 5) / 10,
                     np.full((h, w), 0.5)], -1)
  np.testing.assert_allclose(out["rgb"][m], expect[m], atol=1e-5)


def test_clip_near_keeps_the_front_part_and_maps_barycentrics():
  rng = np.random.default_rng(5)
  tris = rng.normal(size=(200, 3, 3)) * 2.0
  depth = -tris[..., 2]
  near = 0.1
  crossing = (depth.min(1) <= near) & (depth.max(1) > near)
  tris = tris[crossing]
  sub, parent, bmap = mr.clip_near(tris, near)
  # Sub-corners are in front (up to rounding) and equal bmap @ parent.
  assert np.all(-sub[..., 2] >= near - 1e-9)
  np.testing.assert_allclose(np.einsum("skj,sjc->skc", bmap, tris[parent]),
                             sub, atol=1e-9)
  np.testing.assert_allclose(bmap.sum(-1), 1.0, atol=1e-12)
  # The kept area equals the front part's area (Monte Carlo over barycentrics).
  u = rng.dirichlet(np.ones(3), size=4000)
  for i in range(0, tris.shape[0], 17):
    pts = u @ tris[i]
    front = np.mean(-pts[:, 2] > near)
    full = np.linalg.norm(np.cross(tris[i, 1] - tris[i, 0],
                                   tris[i, 2] - tris[i, 0]))
    kept = sum(np.linalg.norm(np.cross(s[1] - s[0], s[2] - s[0]))
               for s in sub[parent == i])
    assert abs(kept / full - front) < 0.04
    # Same winding as the parent.
    for s in sub[parent == i]:
      n_sub = np.cross(s[1] - s[0], s[2] - s[0])
      n_par = np.cross(tris[i, 1] - tris[i, 0], tris[i, 2] - tris[i, 0])
      assert n_sub @ n_par > 0


# ----------------------------------------------------------------------------
# Shading.
# ----------------------------------------------------------------------------


def _quad_facing_camera(z=-2.0, s=1.0):
  v = np.array([[-s, -s, z], [s, -s, z], [s, s, z], [-s, s, z]])
  return v, np.array([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("smooth", [True, False])
def test_lambert_shading_matches_n_dot_l(smooth):
  v, f = _quad_facing_camera()
  albedo = np.array([0.9, 0.5, 0.2])
  for theta in (0.0, 35.0, 80.0, 120.0):
    light = np.array([math.sin(math.radians(theta)), 0.0,
                      math.cos(math.radians(theta))])
    out = mr.render_mesh(v, f, np.eye(4), 60.0, 24, 24, light_dir=light * 3,
                         face_colors=np.tile(albedo, (2, 1)), ambient=0.25,
                         diffuse=0.6, smooth_normals=smooth)
    ndotl = max(math.cos(math.radians(theta)), 0.0)  # normal = +z
    expect = np.clip(albedo * (0.25 + 0.6 * ndotl), 0, 1)
    m = out["mask"]
    assert m.sum() > 100
    np.testing.assert_allclose(out["rgb"][m],
                               np.broadcast_to(expect, (m.sum(), 3)), atol=1e-5)


def test_default_light_is_at_camera_and_shading_is_two_sided():
  v, f = _quad_facing_camera()
  front = mr.render_mesh(v, f, np.eye(4), 60.0, 16, 16, ambient=0.1,
                         diffuse=0.5)
  back = mr.render_mesh(v, f[:, ::-1], np.eye(4), 60.0, 16, 16, ambient=0.1,
                        diffuse=0.5)
  expect = np.asarray(mr.DEFAULT_ALBEDO) * 0.6
  for out in (front, back):
    np.testing.assert_allclose(out["rgb"][out["mask"]],
                               np.broadcast_to(expect, (out["mask"].sum(), 3)),
                               atol=1e-5)
  np.testing.assert_allclose(front["rgb"][~front["mask"]], 1.0)


def test_point_light_matches_n_dot_l_per_pixel():
  v, f = _quad_facing_camera(z=-2.0, s=1.0)
  light = np.array([0.7, -0.4, -0.5])
  out = mr.render_mesh(v, f, np.eye(4), 60.0, 32, 32, light_position=light,
                       ambient=0.2, diffuse=0.7)
  m = out["mask"]
  dirs = _pixel_rays(np.eye(4), 60.0, 32, 32)
  hit = dirs * (-2.0 / dirs[..., 2:3])  # points on the plane z = -2
  to_light = light - hit
  cos = to_light[..., 2] / np.linalg.norm(to_light, axis=-1)  # normal = +z
  expect = np.asarray(mr.DEFAULT_ALBEDO) * (0.2 + 0.7 * cos[..., None])
  assert np.ptp(cos[m]) > 0.2  # the light really varies across the quad
  np.testing.assert_allclose(out["rgb"][m], expect[m], atol=1e-5)


def test_vertex_colors_are_interpolated_perspective_correctly():
  # A slanted quad coloured by world x: colour must be linear in world x.
  v = np.array([[-1.0, -1.0, -1.5], [1.0, -1.0, -3.5], [1.0, 1.0, -3.5],
                [-1.0, 1.0, -1.5]])
  f = np.array([[0, 1, 2], [0, 2, 3]])
  col = np.zeros((4, 3))
  col[:, 0] = (v[:, 0] + 1) / 2
  c2w = np.eye(4)
  out = mr.render_mesh(v, f, c2w, 60.0, 32, 32, vertex_colors=col,
                       ambient=1.0, diffuse=0.0)
  m = out["mask"]
  dirs = _pixel_rays(c2w, 60.0, 32, 32)
  n = np.cross(v[1] - v[0], v[2] - v[0])
  t = (v[0] @ n) / (dirs @ n)
  x = t * dirs[..., 0]
  np.testing.assert_allclose(out["rgb"][m][:, 0], ((x + 1) / 2)[m], atol=1e-5)


def test_vertex_normals_of_sphere_are_radial():
  verts, faces = _icosphere(2)
  n = mr.vertex_normals(verts, faces)
  np.testing.assert_allclose(np.sum(n * verts, -1), 1.0, atol=2e-3)
  nb = mr.vertex_normals(np.stack([verts, verts * 2.0 + 1.0]), faces)
  np.testing.assert_allclose(nb[0], n, atol=1e-12)
  np.testing.assert_allclose(nb[1], n, atol=1e-12)


# ----------------------------------------------------------------------------
# Batching.
# ----------------------------------------------------------------------------


def test_batch_equals_per_view_loop():
  rng = np.random.default_rng(3)
  verts, faces = _icosphere(2)
  poses = np.stack([verts * s + o for s, o in
                    [(0.6, 0.0), (0.8, 0.1), (0.5, -0.2)]])
  colors = rng.uniform(size=(3,) + verts.shape)
  c2ws = np.stack([_look_at([2.5 * math.cos(a), 2.5 * math.sin(a), 0.7],
                            [0, 0, 0]) for a in (0.0, 1.6, 3.1, 4.7)])
  kw = dict(fovy_deg=45.0, height=20, width=28)
  out = mr.render_mesh_batch(poses, faces, c2ws, vertex_colors=colors,
                             max_views_per_pass=5, **kw)
  assert out["rgb"].shape == (3, 4, 20, 28, 3)
  for b in range(3):
    for k in range(4):
      one = mr.render_mesh(poses[b], faces, c2ws[k], vertex_colors=colors[b],
                           **kw)
      for name in ("rgb", "mask", "depth", "face_id"):
        np.testing.assert_array_equal(out[name][b, k], one[name], err_msg=name)
  threaded = mr.render_mesh_batch(poses, faces, c2ws, vertex_colors=colors,
                                  max_views_per_pass=3, num_threads=2, **kw)
  for name in ("rgb", "depth", "face_id"):
    np.testing.assert_array_equal(threaded[name], out[name], err_msg=name)
  # One mesh, many views; per-mesh cameras [B, N, 4, 4].
  single = mr.render_mesh_batch(poses[1], faces, c2ws, **kw)
  assert single["mask"].shape == (4, 20, 28)
  np.testing.assert_array_equal(
      single["face_id"],
      mr.render_mesh_batch(poses[1:2], faces, c2ws, **kw)["face_id"][0])
  per = mr.render_mesh_batch(poses[:2], faces, c2ws[None, :2].repeat(2, 0),
                             **kw)
  np.testing.assert_array_equal(per["depth"], out["depth"][:2, :2])


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(vertices=np.zeros((3, 2))), "vertices"),
    (dict(vertices=np.full((3, 3), np.nan)), "NaN"),
    (dict(faces=np.array([[0, 1, 5]])), "only 3 vertices"),
    (dict(faces=np.array([[0.0, 1.0, 2.0]])), "integers"),
    (dict(c2w=np.eye(3)), "camera"),
    (dict(fovy_deg=190.0), "fovy"),
    (dict(height=0), "height"),
    (dict(supersample=0), "supersample"),
    (dict(ambient=float("nan")), "ambient"),
    (dict(face_colors=np.ones((2, 3))), "face_colors"),
    (dict(vertex_colors=np.ones((3, 3)), face_colors=np.ones((1, 3))),
     "not both"),
    (dict(light_dir=np.zeros(3)), "light_dir"),
    (dict(light_dir=np.ones(3), light_position=np.ones(3)), "not both"),
    (dict(light_position=np.ones(2)), "light_position"),
])
def test_bad_input_raises_clear_error(kwargs, match):
  args = dict(vertices=np.array([[0.0, 0, -2], [1, 0, -2], [0, 1, -2]]),
              faces=np.array([[0, 1, 2]]), c2w=np.eye(4), fovy_deg=60.0,
              height=8, width=8)
  args.update(kwargs)
  with pytest.raises(mr.MeshRenderError, match=match):
    mr.render_mesh(**args)
