"""outputs.render_eval renders its rays a chunk at a time: the images do not depend on
the chunk (a chunk that does not divide the image, one ray, the whole image), the
samples a chunk's budget leaves out are counted (and the padding takes none of it),
and the eval-render memory estimate grows with one chunk, not with the image."""
import dataclasses
import logging
import types

import jax.numpy as jnp
import numpy as np
import pytest

from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import outputs
from interfusion_jax.stage2 import setup as setup_lib
from configs import hoi
from interfusion_jax.nerf import occupancy as occ_lib
from interfusion_jax.nerf import render as render_lib
from sphere_scene import _cams, _sphere, _spec


def test_eval_images_do_not_depend_on_the_chunk():
  size = 13                                           # 169 rays
  cams = _cams()
  whole = outputs.render_eval({"object": {}, "human": {}}, None, cams, _spec("diffuse", size),
                              chunk=size * size)
  for chunk in (40, 1, 1000):
    parts = outputs.render_eval({"object": {}, "human": {}}, None, cams,
                                _spec("diffuse", size), chunk=chunk)
    for name in cams:
      for key in ("rgb", "opacity", "normal"):
        np.testing.assert_allclose(np.asarray(parts[name][key]), np.asarray(whole[name][key]),
                                   atol=1e-6, err_msg=f"{name} {key} chunk {chunk}")
  assert float(np.asarray(whole["object"]["opacity"]).max()) > 0.99      # the sphere is there


def test_samples_left_out_by_a_chunks_budget_are_counted_and_padding_takes_none(caplog):
  """Every cell occupied and 64 of 256 samples per ray on average: a chunk of c rays
  holds c * 64 samples and leaves out the rest of its rays' in-box samples. The
  reference counts each ray's in-box samples from a dense render (no budget) and
  sums max(0, chunk total - c * 64) over the chunks. 169 rays in chunks of 40: the
  last chunk's 9 real rays fit its 40 * 64 slots, which copies of its last ray as
  padding would have filled."""
  size, chunk, budget = 13, 40, 64
  cams = _cams()
  dense = _spec("albedo", size)
  with_render = lambda sp, **kw: types.SimpleNamespace(
      **{**vars(sp), "render": dataclasses.replace(sp.render, **kw)})
  spec = with_render(dense, skip_empty=True, sample_budget=budget)
  g = 8
  grid = occ_lib.OccupancyGrid(density=jnp.ones((g, g, g)), bitfield=jnp.ones((g, g, g), bool))
  out = outputs.render_eval({"object": {}, "human": {}}, grid, cams, spec, chunk=chunk)
  rays_o, rays_d = render_lib.camera_rays(cams["object"], size, size)
  in_box = np.asarray(render_lib.render_rays(_sphere, {}, rays_o, rays_d, jnp.ones(3),
                                             dense.render).mask).sum(axis=1)
  per_chunk = [in_box[i:i + chunk].sum() for i in range(0, size * size, chunk)]
  want = sum(max(0, int(t) - chunk * budget) for t in per_chunk)
  assert per_chunk[-1] < chunk * budget < per_chunk[-1] + (chunk - 9) * in_box[-1]
  assert want > 0
  for name in cams:
    assert int(out[name]["samples_dropped"]) == want
  # At the full budget nothing is left out.
  full = with_render(spec, sample_budget=256)
  out = outputs.render_eval({"object": {}, "human": {}}, grid, cams, full, chunk=chunk)
  assert all(int(out[name]["samples_dropped"]) == 0 for name in cams)
  # The warning names the renders and the count; none when nothing was left out.
  with caplog.at_level(logging.WARNING):
    outputs.warn_dropped("The validation renders", {"object": want, "human": 0}, spec)
    outputs.warn_dropped("The turntable frames", {"object": 0, "human": 0}, spec)
  assert [r.getMessage().split(" left out ")[0] for r in caplog.records] == [
      "The validation renders"]
  assert f"{want} occupied ray samples (object {want})" in caplog.records[0].getMessage()


def test_eval_memory_is_one_chunk_plus_the_images():
  run = config_lib.parse(hoi.get_config("paper"))
  r = run.render
  per_ray = (r.num_samples * setup_lib.EVAL_BYTES_PER_SAMPLE
             + setup_lib._evaluated(run) * setup_lib._features(run)
             * setup_lib.EVAL_BYTES_PER_FEATURE)
  for size in (64, 512, 4096):
    rays = min(size * size, setup_lib.EVAL_CHUNK_RAYS)
    assert setup_lib.render_memory_bytes(run, size) == pytest.approx(
        rays * per_ray + size * size * setup_lib.EVAL_BYTES_PER_PIXEL, rel=1e-9)
  # The paper's 512^2 final renders fit a 24 GB card (they needed ~120 GB at once).
  assert setup_lib.render_memory_bytes(run, 512) < 24e9
