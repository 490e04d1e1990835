"""outputs.render_eval renders its rays a chunk at a time: the images do not depend on
the chunk (a chunk that does not divide the image, one ray, the whole image), and the
eval-render memory estimate grows with one chunk, not with the image."""
import numpy as np
import pytest

from interfusion_jax.stage2 import config as config_lib
from interfusion_jax.stage2 import outputs
from interfusion_jax.stage2 import setup as setup_lib
from configs import hoi
from sphere_scene import _cams, _spec


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
