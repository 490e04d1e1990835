"""stage2/outputs.write_meshes with a texture size: the UV-textured meshes of the two blob
fields (tests/blob_scene.py) and of the scene, reloaded with trimesh, match each field's
closed-form albedo at every vertex."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from blob_scene import BLOB
from interfusion_jax.stage2 import outputs

trimesh = pytest.importorskip("trimesh")

SIZE = 128


def _params():
  """Two blobs; albedo sigmoid(x W + b) with |W| up to 2 (a visible gradient)."""
  w = jnp.array([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0], [-1.0, 0.4, 1.0]], jnp.float32)
  blob = lambda c, r, b: {"c": jnp.asarray(c, jnp.float32), "r": jnp.float32(r), "w": w,
                          "b": jnp.asarray(b, jnp.float32)}
  return {"human": blob((0.0, 0.0, 0.1), 0.5, (0.2, -0.1, 0.0)),
          "object": blob((0.6, 0.2, -0.3), 0.3, (-0.5, 0.3, 0.4))}


def _albedo(p, x):
  return np.asarray(jax.nn.sigmoid(jnp.asarray(x, jnp.float32) @ p["w"] + p["b"]))


def _sample(image, uv):
  """Bilinear lookup, texel (i, j) centre at u = (j + .5) / W, v = 1 - (i + .5) / H."""
  import scipy.ndimage
  img = np.asarray(image.convert("RGB"), np.float64) / 255.0
  h, w = img.shape[:2]
  coords = [(1.0 - uv[:, 1]) * h - 0.5, uv[:, 0] * w - 0.5]
  return np.stack([scipy.ndimage.map_coordinates(img[..., k], coords, order=1, mode="nearest")
                   for k in range(3)], -1)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  out = tmp_path_factory.mktemp("final")
  spec = types.SimpleNamespace(model=BLOB, loss=types.SimpleNamespace(geo_delta=0.01),
                               render=types.SimpleNamespace(radius=1.0))
  state = types.SimpleNamespace(params=_params())
  files, meshes = outputs.write_meshes(state, spec, out, 32, threshold=1.0, texture_size=SIZE)
  return out, files, meshes


def test_textured_files_beside_the_vertex_colour_ones(written):
  out, files, _ = written
  for name in ("human", "object", "combined"):
    for ext in (".glb", ".obj"):
      assert (out / f"mesh_{name}{ext}").is_file()
    for ext in (".obj", ".mtl", ".png", ".glb"):
      assert files[f"mesh_{name}_textured{ext}"] == str(out / f"mesh_{name}_textured{ext}")
  assert sorted(p.name for p in out.iterdir()) == sorted(files)


@pytest.mark.parametrize("name", ["human", "object", "combined"])
def test_textured_glb_matches_each_field_at_every_vertex(written, name):
  """Tolerance 0.02: the albedo's gradient is at most 0.25 * |W| ~ 0.7 per unit, a texel
  is ~0.01 wide on these blobs at 128^2 (~0.015 for the combined atlas, whose parts keep
  their texels), so a bilinear lookup is within ~0.7 * 2 * 0.01 + 1 / 255 ~ 0.02."""
  out, _, meshes = written
  params = _params()
  scene = trimesh.load(out / f"mesh_{name}_textured.glb", process=False)
  (geom,) = scene.geometry.values()
  image = geom.visual.material.baseColorTexture
  assert image.size == ((2 * SIZE, SIZE) if name == "combined" else (SIZE, SIZE))
  uv, verts = np.asarray(geom.visual.uv), np.asarray(geom.vertices)
  assert 0.0 <= uv.min() and uv.max() <= 1.0
  parts = ["human", "object"] if name == "combined" else [name]
  counts = [len(meshes[p].vertices) for p in parts]
  # Which field each vertex came from: the human's vertices come first in the scene.
  n_human = len(trimesh.load(out / "mesh_human_textured.glb", process=False)
                .geometry.popitem()[1].vertices) if name == "combined" else len(verts)
  owner = [parts[0]] * n_human + [parts[-1]] * (len(verts) - n_human)
  expect = np.concatenate([_albedo(params[p], verts[np.array(owner) == p]) for p in parts])
  err = np.abs(_sample(image, uv) - expect).max(-1)
  assert err.max() < 0.02, (err.max(), counts)
  assert len(geom.faces) >= 0.99 * sum(len(meshes[p].faces) for p in parts)
