"""guidance/core.py: ``unet_dtype`` "auto" resolution, its validation and the loaders using it."""
import itertools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tiny_models  # noqa: E402
from configs import hoi  # noqa: E402
from interfusion_jax.guidance import core, loading  # noqa: E402
from interfusion_jax.stage2 import config as config_lib  # noqa: E402

ACCELERATORS = ["gpu", "cuda", "rocm", "tpu", "TPU"]


@pytest.mark.parametrize("name,platform", list(itertools.product(
    ["auto", "float32", "bfloat16"], ACCELERATORS + ["cpu", "METAL?"])))
def test_resolve_unet_dtype(name, platform):
  want = name if name != "auto" else (
      "bfloat16" if platform in ACCELERATORS else "float32")
  assert core.resolve_unet_dtype(name, platform) == want


@pytest.mark.parametrize("bad", ["bf16", "float16", "", "Auto"])
def test_bad_unet_dtype_fails_in_one_line_naming_the_key(bad):
  with pytest.raises(ValueError) as e:
    core.resolve_unet_dtype(bad, "gpu")
  assert "config.guidance.unet_dtype" in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(ValueError, match="config.guidance.unet_dtype"):
    core.GuidanceSpec(kind="pixel", guidance_scale=1.0, weighting="sds", unet_dtype=bad)
  cfg = hoi.get_config()
  cfg.guidance.unet_dtype = bad
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.parse(cfg)
  assert "config.guidance.unet_dtype" in str(e.value) and "\n" not in str(e.value)


def test_default_is_auto_everywhere():
  assert core.GuidanceSpec(kind="pixel", guidance_scale=1.0, weighting="sds").unet_dtype == "auto"
  assert hoi.get_config().guidance.unet_dtype == "auto"
  assert config_lib.parse(hoi.get_config()).guidance.unet_dtype == "auto"


def _dtypes(tree):
  return {jnp.dtype(x.dtype) for x in jax.tree_util.tree_leaves(tree)}


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
  return tiny_models.make_flax_guidance_dir(tmp_path_factory.mktemp("px") / "g", kind="pixel")


def test_load_guidance_auto_is_float32_on_cpu_and_bf16_for_accelerators(pixel_dir, monkeypatch):
  cfg = hoi.get_config()
  assert cfg.guidance.unet_dtype == "auto"
  spec, params = loading.load_guidance(pixel_dir, config_lib.guidance_options(config_lib.parse(cfg)))
  assert spec.unet_dtype == "float32" and spec.unet.dtype == jnp.float32
  assert _dtypes(params["unet"]) == {jnp.dtype(jnp.float32)}
  # The same call when the weights go to a GPU: resolved from the target platform.
  monkeypatch.setattr(loading, "unet_platform", lambda sharding=None: "gpu")
  spec16, params16 = loading.load_guidance(pixel_dir, config_lib.guidance_options(config_lib.parse(cfg)))
  assert spec16.unet_dtype == "bfloat16" and spec16.unet.dtype == jnp.bfloat16
  assert _dtypes(params16["unet"]) == {jnp.dtype(jnp.bfloat16)}
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  t = jnp.array([10, 500])
  e = jnp.zeros((2, 77, tiny_models.TEXT_DIM))
  a = core.predict_eps(spec, params, x, t, e)
  b = core.predict_eps(spec16, params16, x, t, e)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1)  # bf16 rounding only


def test_load_if_unet_auto_is_float32_on_cpu(tmp_path):
  pytest.importorskip("torch")
  tiny_models.make_torch_if_unet(tmp_path / "unet")
  model, params, _ = loading.load_if_unet(tmp_path, dtype="auto")
  assert model.dtype == jnp.float32 and _dtypes(params) == {jnp.dtype(jnp.float32)}
  assert loading.unet_platform() == "cpu"


def test_unet_eps_auto_spec_computes_in_the_module_dtype():
  """A spec left at "auto" (built by hand, not by a loader) casts to the module's dtype."""
  from interfusion_jax.guidance import stable_diffusion

  class Probe:
    dtype = jnp.bfloat16

    def apply(self, variables, sample, t, emb):
      assert sample.dtype == jnp.bfloat16 and emb.dtype == jnp.bfloat16
      return sample

  spec = core.GuidanceSpec(kind="pixel", guidance_scale=1.0, weighting="sds", unet=Probe())
  out = stable_diffusion.unet_eps(spec, {}, jnp.ones((1, 4, 4, 3)), jnp.array([1]),
                                  jnp.ones((1, 2, 5)))
  assert out.dtype == jnp.float32 and out.shape == (1, 4, 4, 3)
