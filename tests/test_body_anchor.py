"""Anchor grids vs exact geometry (independent NumPy references), placement,
cache and the fixed-size JAX sampler."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.body import anchor, lbs, model, poses
from interfusion_jax.stage2 import config as config_lib

RES = 64   # the torus grids; the body is checked at 96^3


def winding_number(points, vertices, faces, chunk=256):
  """Generalized winding number (van Oosterom & Strackee solid angles)."""
  tris = vertices[faces].astype(np.float64)
  out = []
  for s in range(0, len(points), chunk):
    p = points[s:s + chunk, None, None, :]
    r = tris[None] - p                                   # [n, F, 3, 3]
    a, b, c = r[..., 0, :], r[..., 1, :], r[..., 2, :]
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    det = np.einsum("...i,...i", a, np.cross(b, c))
    den = (la * lb * lc + np.einsum("...i,...i", a, b) * lc
           + np.einsum("...i,...i", b, c) * la + np.einsum("...i,...i", c, a) * lb)
    out.append(np.arctan2(det, den).sum(-1) / (2 * np.pi))
  return np.concatenate(out)


def brute_distance(points, vertices, faces):
  """Exact point-to-mesh distance: in-plane projection or the 3 edge segments."""
  tris = vertices[faces].astype(np.float64)
  a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
  n = np.cross(b - a, c - a)
  n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-300
  out = []
  for p in points:
    h = np.einsum("fi,fi->f", p - a, n)
    q = p - h[:, None] * n
    def side(u, v):
      return np.einsum("fi,fi->f", np.cross(v - u, q - u), n)
    inside = (side(a, b) >= 0) & (side(b, c) >= 0) & (side(c, a) >= 0)
    best = np.where(inside, np.abs(h), np.inf)
    for u, v in ((a, b), (b, c), (c, a)):
      t = np.clip(np.einsum("fi,fi->f", p - u, v - u) / np.einsum("fi,fi->f", v - u, v - u), 0, 1)
      best = np.minimum(best, np.linalg.norm(p - (u + t[:, None] * (v - u)), axis=1))
    out.append(best.min())
  return np.array(out)


def torus_mesh(major=0.8, minor=0.35, nu=48, nv=24):
  """Closed, non-convex triangle mesh (genus 1), outward normals."""
  u, v = np.meshgrid(np.arange(nu) * 2 * np.pi / nu, np.arange(nv) * 2 * np.pi / nv,
                     indexing="ij")
  # Bumps make it less regular than a plain torus.
  rad = minor * (1 + 0.25 * np.sin(3 * u) * np.cos(2 * v))
  verts = np.stack([(major + rad * np.cos(v)) * np.cos(u),
                    (major + rad * np.cos(v)) * np.sin(u), rad * np.sin(v)], -1).reshape(-1, 3)
  i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
  a, b = i * nv + j, ((i + 1) % nu) * nv + j
  c, d = ((i + 1) % nu) * nv + (j + 1) % nv, i * nv + (j + 1) % nv
  faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                          np.stack([a, c, d], -1).reshape(-1, 3)])
  return verts + np.array([0.1, -0.2, 0.05]), faces


@pytest.fixture(scope="module")
def torus():
  verts, faces = torus_mesh()
  coords = anchor.grid_coords(RES, 2.0)
  occ = anchor.occupancy_grid(verts, faces, coords).astype(np.float32)
  dist = anchor.distance_grid(verts, faces, coords)
  return anchor.Anchor(occupancy=jnp.asarray(occ), distance=jnp.asarray(dist),
                       vertices=jnp.asarray(verts, jnp.float32), faces=jnp.asarray(faces),
                       joints=jnp.zeros((1, 3)), head=jnp.zeros(3), radius=2.0)


@pytest.fixture(scope="module")
def body():
  return model.load_body_model("default")


@pytest.fixture(scope="module")
def sitting(body):
  bp, go = poses.DEMO_POSES["sitting"]
  return anchor.prepare_anchor(body, bp, go, anchor.AnchorSpec(resolution=24, cache_dir=None))


def _random_points_near(anc, rng, n):
  v = np.asarray(anc.vertices)
  lo, hi = v.min(0) - 0.15, v.max(0) + 0.15
  return rng.uniform(lo, hi, size=(n, 3))


def test_occupancy_matches_winding_number(torus):
  rng = np.random.default_rng(0)
  pts = _random_points_near(torus, rng, 2000)
  v, f = np.asarray(torus.vertices, np.float64), np.asarray(torus.faces)
  exact = winding_number(pts, v, f) > 0.5
  far = brute_distance(pts, v, f) > torus.voxel_size
  assert exact[far].sum() > 200 and (~exact[far]).sum() > 200
  got = np.asarray(anchor.anchor_inside(torus, jnp.asarray(pts, jnp.float32)))
  assert (got[far] == exact[far]).mean() >= 0.995


def test_body_occupancy_volume_matches_divergence_theorem(body):
  bp, go = poses.DEMO_POSES["crouching"]
  spec = anchor.AnchorSpec(resolution=96, cache_dir=None)
  anc = anchor.prepare_anchor(body, bp, go, spec)
  tris = np.asarray(anc.vertices, np.float64)[np.asarray(anc.faces)]
  volume = np.einsum("fi,fi->f", tris[:, 0], np.cross(tris[:, 1], tris[:, 2])).sum() / 6
  voxels = float(np.asarray(anc.occupancy).sum()) * anc.voxel_size ** 3
  assert 0.04 < volume < 0.12                      # a human body, in m^3
  assert abs(voxels - volume) < 0.08 * volume


def test_occupancy_robust_to_a_small_hole(torus):
  v, f = np.asarray(torus.vertices, np.float64), np.asarray(torus.faces)
  coords = anchor.grid_coords(RES, 2.0)
  holed = np.delete(f, [10, 11, 500, 501], axis=0)      # two missing quads
  broken = anchor.occupancy_grid(v, holed, coords)
  full = np.asarray(torus.occupancy) > 0.5
  assert full.sum() > 1000
  assert (full != broken).sum() <= 0.005 * full.sum()


def test_distance_grid_matches_exact_distance(torus):
  rng = np.random.default_rng(1)
  v, f = np.asarray(torus.vertices, np.float64), np.asarray(torus.faces)
  coords = anchor.grid_coords(RES, 2.0)
  idx = rng.integers(0, RES, size=(400, 3))
  # Half of the checked nodes close to the surface, where the distance matters most.
  near = np.argwhere(np.asarray(torus.distance) < 0.15)
  idx = np.concatenate([idx, near[rng.choice(len(near), 400, replace=False)]])
  exact = brute_distance(coords[idx], v, f)
  grid = np.asarray(torus.distance)[idx[:, 0], idx[:, 1], idx[:, 2]]
  assert np.abs(grid - exact).max() <= 0.5 * torus.voxel_size
  # Trilinear lookup at random points one voxel or more from the surface.
  pts = _random_points_near(torus, rng, 600)
  exact = brute_distance(pts, v, f)
  keep = exact > torus.voxel_size
  got = np.sqrt(np.asarray(anchor.anchor_sq_distance(torus, jnp.asarray(pts, jnp.float32))))
  assert np.abs(got[keep] - exact[keep]).max() <= 0.5 * torus.voxel_size


def test_scene_placement_z_up_and_centring(body, sitting):
  v, j = np.asarray(sitting.vertices), np.asarray(sitting.joints)
  np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(sitting.head, j[model.HEAD_JOINT])
  standing = anchor.prepare_anchor(body, np.zeros(63), None,
                                   anchor.AnchorSpec(resolution=16, cache_dir=None))
  sj = np.asarray(standing.joints)
  up = sj[model.HEAD_JOINT] - sj[0]
  assert up[2] > 0.4 and abs(up[0]) < 0.05 and abs(up[1]) < 0.1   # z-up
  rot = anchor.prepare_anchor(body, np.zeros(63), None, anchor.AnchorSpec(
      resolution=16, cache_dir=None, aug_rot=True, aug_trans=True))
  rj = np.asarray(rot.joints)
  np.testing.assert_allclose(rj[0], 0.0, atol=1e-6)                 # root-centred
  up_rot = rj[model.HEAD_JOINT] - rj[0]
  cos = up_rot @ up / np.linalg.norm(up) ** 2
  np.testing.assert_allclose(np.arccos(np.clip(cos, -1, 1)), np.pi / 6, atol=1e-4)


def test_cache_roundtrip_and_key(body, tmp_path, monkeypatch):
  spec = anchor.AnchorSpec(resolution=16, cache_dir=str(tmp_path))
  bp = poses.DEMO_POSES["walking"][0]
  first = anchor.prepare_anchor(body, bp, None, spec)
  assert len(list(tmp_path.glob("anchor_*.npz"))) == 1

  def fail(*a, **k):
    raise AssertionError("cache miss")
  monkeypatch.setattr(anchor, "build_anchor_arrays", fail)
  second = anchor.prepare_anchor(body, bp, None, spec)
  for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(AssertionError, match="cache miss"):
    anchor.prepare_anchor(body, bp + 0.01, None, spec)
  with pytest.raises(AssertionError, match="cache miss"):
    anchor.prepare_anchor(body, bp, None, dataclasses.replace(spec, aug_rot=True))


def test_pose_errors(body):
  spec = anchor.AnchorSpec(resolution=16, cache_dir=None)
  with pytest.raises(lbs.PoseError, match="63"):
    anchor.prepare_anchor(body, np.zeros(60), None, spec)
  with pytest.raises(lbs.PoseError, match="NaN"):
    anchor.prepare_anchor(body, np.full(63, np.nan), None, spec)


def test_trilinear_reproduces_linear_functions():
  res, r = 9, 2.0
  c = anchor.grid_coords(res, r)
  x, y, z = np.meshgrid(c, c, c, indexing="ij")
  grid = jnp.asarray(0.3 * x - 1.2 * y + 2.0 * z + 0.5, jnp.float32)
  pts = np.random.default_rng(2).uniform(-r, r, size=(200, 3))
  want = 0.3 * pts[:, 0] - 1.2 * pts[:, 1] + 2.0 * pts[:, 2] + 0.5
  np.testing.assert_allclose(anchor.trilinear(grid, jnp.asarray(pts, jnp.float32), r),
                             want, atol=1e-4)


def test_sample_anchor_fields_fixed_size(sitting):
  key = jax.random.PRNGKey(0)
  pts = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (4, 50, 3)), jnp.float32)
  fn = jax.jit(anchor.sample_anchor_fields, static_argnames="max_points")
  sel, inside, sq, valid = fn(sitting, pts, key, max_points=64)
  assert sel.shape == (64, 3) and inside.shape == sq.shape == valid.shape == (64,)
  assert bool(valid.all())
  flat = np.asarray(pts.reshape(-1, 3))
  rows = [np.flatnonzero((flat == s).all(1)) for s in np.asarray(sel)]
  assert all(len(r) == 1 for r in rows) and len({int(r[0]) for r in rows}) == 64
  np.testing.assert_array_equal(inside, anchor.anchor_inside(sitting, sel))
  np.testing.assert_allclose(sq, anchor.anchor_sq_distance(sitting, sel), rtol=1e-5)
  # Fewer points than the budget: every point once, the rest invalid.
  sel, inside, sq, valid = fn(sitting, pts[:1, :10], key, max_points=64)
  assert int(valid.sum()) == 10
  got = {tuple(p) for p in np.asarray(sel)[np.asarray(valid)]}
  assert got == {tuple(p) for p in np.asarray(pts[0, :10])}
  # 100 real points of 200: 64 of them are drawn, all real (official:
  # randperm(N_real)[:80000] over the real samples only).
  mask = jnp.arange(200).reshape(4, 50) % 2 == 0
  sel, _, _, valid = fn(sitting, pts, key, max_points=64, point_mask=mask)
  assert int(valid.sum()) == 64
  real = {tuple(p) for p in flat[np.asarray(mask).reshape(-1)]}
  assert {tuple(p) for p in np.asarray(sel)} <= real


def _index_points(m):
  """[m, 3] points whose x coordinate encodes the index exactly (i / 1024)."""
  i = np.arange(m, dtype=np.float32)
  return jnp.asarray(np.stack([i / 1024, np.zeros(m), np.zeros(m)], -1).astype(np.float32))


def _drawn(sel, valid):
  """Indices of the valid rows (from _index_points' encoding)."""
  return np.rint(np.asarray(sel)[np.asarray(valid), 0] * 1024).astype(np.int64)


@pytest.mark.parametrize("n_real", [0, 1, 37, 64, 65, 150])
def test_sample_anchor_fields_draws_min_of_real_and_budget(torus, n_real):
  m, n = 200, 64
  rng = np.random.default_rng(n_real)
  mask = np.zeros(m, bool)
  mask[rng.choice(m, n_real, replace=False)] = True
  fn = jax.jit(anchor.sample_anchor_fields, static_argnames="max_points")
  for seed in range(3):
    sel, inside, sq, valid = fn(torus, _index_points(m), jax.random.PRNGKey(seed),
                                max_points=n, point_mask=jnp.asarray(mask))
    assert sel.shape == (n, 3) and valid.shape == inside.shape == sq.shape == (n,)
    k = min(n_real, n)
    np.testing.assert_array_equal(valid, np.arange(n) < k)   # real rows first
    got = _drawn(sel, valid)
    assert len(set(got.tolist())) == k                       # never twice
    assert mask[got].all()                                   # never a masked-out point
    np.testing.assert_array_equal(np.asarray(sel)[k:], 0.0)  # padding: the origin
    np.testing.assert_array_equal(inside, anchor.anchor_inside(torus, sel))
    if n_real <= n:                                          # every real point
      np.testing.assert_array_equal(np.sort(got), np.flatnonzero(mask))


def test_sample_anchor_fields_under_vmap_per_scene_masks(torus):
  m, n = 200, 64
  n_real = np.array([0, 30, 64, 120])
  masks = np.arange(m)[None] < n_real[:, None]
  fn = jax.jit(jax.vmap(lambda k, msk: anchor.sample_anchor_fields(
      torus, _index_points(m), k, n, msk)))
  sel, _, _, valid = fn(jax.random.split(jax.random.PRNGKey(3), 4), jnp.asarray(masks))
  for b in range(4):
    np.testing.assert_array_equal(valid[b], np.arange(n) < min(n_real[b], n))
    got = _drawn(sel[b], valid[b])
    assert len(set(got.tolist())) == len(got) and (got < n_real[b]).all()


def test_sample_anchor_fields_is_uniform_without_replacement(torus):
  """Inclusion and pair co-inclusion frequencies over many keys (vmap) vs a
  uniform k-subset of the real points: k / N and k (k - 1) / (N (N - 1))."""
  m, n, trials = 60, 10, 2000
  mask = np.zeros(m, bool)
  mask[np.random.default_rng(0).choice(m, 40, replace=False)] = True
  n_real = int(mask.sum())
  keys = jax.random.split(jax.random.PRNGKey(7), trials)
  draw = lambda k: anchor.sample_anchor_fields(torus, _index_points(m), k, n,
                                               jnp.asarray(mask))
  # lax.map in vmapped batches of 500 (its 2^16-bin histograms stay small).
  sel, _, _, valid = jax.jit(lambda ks: jax.lax.map(draw, ks, batch_size=500))(keys)
  assert bool(valid.all())
  hit = np.zeros((trials, m))
  idx = np.rint(np.asarray(sel)[..., 0] * 1024).astype(np.int64)
  np.put_along_axis(hit, idx, 1.0, axis=1)
  assert (hit.sum(1) == n).all()                             # distinct rows
  assert hit[:, ~mask].sum() == 0
  p = n / n_real
  freq = hit[:, mask].sum(0)                                 # Binomial(trials, p)
  assert np.abs(freq - trials * p).max() < 5 * np.sqrt(trials * p * (1 - p))
  q = n * (n - 1) / (n_real * (n_real - 1))
  h = hit[:, mask]
  pairs = (h.T @ h)[np.triu_indices(n_real, 1)]
  assert np.abs(pairs - trials * q).max() < 5.5 * np.sqrt(trials * q * (1 - q))


def test_smallest_keys_exact_count_with_ties():
  """_smallest_keys vs a NumPy reference: exactly k real entries, none larger
  than any real entry left out; keys with many ties and in both 16-bit halves."""
  rng = np.random.default_rng(5)
  fn = jax.jit(anchor._smallest_keys)
  for m in (500, 40000):                                     # 8- and 16-bit digits
    for keys in (rng.integers(0, 4, m), rng.integers(0, 2 ** 32, m),
                 rng.integers(0, 3, m) << 16 | rng.integers(0, 3, m),
                 rng.integers(0, 3, m) << 24 | rng.integers(0, 3, m) << 8,
                 np.full(m, 2 ** 32 - 1)):
      _check_smallest_keys(fn, keys.astype(np.uint32), rng.random(m) < 0.6)


def _check_smallest_keys(fn, keys, real):
  """Exactly k real entries taken, none with a key above a real one left out."""
  for k in (0, 1, 17, 150, int(real.sum()) - 1, int(real.sum())):
    take = np.asarray(fn(jnp.asarray(keys), jnp.asarray(real), jnp.int32(k)))
    assert take.sum() == k and not take[~real].any()
    if 0 < k < real.sum():
      assert keys[take].max() <= keys[real & ~take].min()


def test_spec_from_config():
  from configs import hoi
  cfg = hoi.get_config("smoke")
  spec = config_lib.anchor_spec(config_lib.parse(cfg))
  assert spec.resolution == cfg.body.grid_resolution and spec.radius == cfg.field.radius


def test_prepare_anchor_from_model(tmp_path):
  from configs import hoi
  cfg = hoi.get_config("smoke")
  cfg.body.cache_dir = str(tmp_path)
  anc = anchor.prepare_anchor_from_model(cfg.body.model, cfg.body.gender,
                                        poses.DEMO_POSES["riding"][0],
                                        spec=config_lib.anchor_spec(config_lib.parse(cfg)))
  assert anc.occupancy.shape == (cfg.body.grid_resolution,) * 3
  assert float(anc.occupancy.sum()) > 0 and anc.radius == cfg.field.radius
  cfg.body.model = str(tmp_path / "SMPLX_NEUTRAL.npz")
  with pytest.raises(model.BodyModelNotFoundError, match="WORKSPACE.md"):
    anchor.prepare_anchor_from_model(cfg.body.model, cfg.body.gender, np.zeros(63),
                                     spec=config_lib.anchor_spec(config_lib.parse(cfg)))
