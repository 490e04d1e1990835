"""Offline loading: conformance with the PyTorch originals, msgpack, errors, no torch."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hoi
from interfusion_jax.stage2 import config as config_lib
from interfusion_jax import guidance
from interfusion_jax.guidance import core, loading, prompts, sds
import tiny_models

TESTS = pathlib.Path(__file__).parent


def _close(got, ref, tol=1e-4):
  """|got - ref| <= tol * max(1, max|ref|) (fp32 kernels differ in summation order)."""
  err = float(np.max(np.abs(np.asarray(got, np.float64) - ref)))
  assert err <= tol * max(1.0, float(np.max(np.abs(ref)))), err


@pytest.fixture(scope="module")
def torch_dirs(tmp_path_factory):
  pytest.importorskip("torch")
  base = tmp_path_factory.mktemp("guidance_models")
  sd = tiny_models.make_torch_guidance_dir(base / "sd_pt", "latent")
  px = tiny_models.make_torch_guidance_dir(base / "px_pt", "pixel")
  # The same weights re-saved by Flax (msgpack), through our own loader.
  fx = base / "sd_flax"
  for comp in ("tokenizer", "scheduler"):
    shutil.copytree(sd / comp, fx / comp)
  unet, up, _ = loading.load_unet(sd)
  unet.save_pretrained(str(fx / "unet"), params=up)
  vae, vp, _ = loading.load_vae(sd)
  vae.save_pretrained(str(fx / "vae"), params=vp)
  tm, tp = loading.load_text_encoder(sd)
  tm.save_pretrained(str(fx / "text_encoder"), params=tp)
  return {"safetensors": sd, "msgpack": fx, "pixel": px, "torch_ref": sd}


def _torch_refs(root, x, t, e, img, ids):
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel
  from transformers import CLIPTextModel
  out = {}
  with torch.no_grad():
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet")).eval()
    out["eps"] = unet(torch.tensor(x), torch.tensor(t), torch.tensor(e)).sample.numpy()
    if (root / "vae").exists():
      vae = AutoencoderKL.from_pretrained(str(root / "vae")).eval()
      out["latent"] = vae.encode(torch.tensor(img)).latent_dist.mean.numpy()
    text = CLIPTextModel.from_pretrained(str(root / "text_encoder")).eval()
    out["text"] = text(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()
  return out


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_latent_models_match_pytorch(torch_dirs, fmt):
  root = torch_dirs[fmt]
  assert any(p.suffix == (".msgpack" if fmt == "msgpack" else ".safetensors")
             for p in (root / "unet").iterdir())
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
  t = np.array([5, 400, 990])
  e = rng.standard_normal((3, 7, tiny_models.TEXT_DIM)).astype(np.float32)
  img = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
  tok = loading.load_tokenizer(root)
  ids = prompts.tokenize(tok, ["a photo of a man riding a bike", ""])
  ref = _torch_refs(torch_dirs["torch_ref"], x, t, e, img, ids)

  cfg = hoi.get_config()
  cfg.guidance.sd_resolution = tiny_models.VAE_RES
  spec, params = loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(cfg)))
  assert spec.kind == "stable_diffusion" and spec.vae is not None
  eps = jax.jit(lambda p, x, t, e: core.predict_eps(spec, p, x, t, e))(
      params, jnp.asarray(x.transpose(0, 2, 3, 1)), t, e)
  _close(np.asarray(eps).transpose(0, 3, 1, 2), ref["eps"])
  spec_mean = spec.__class__(**{**spec.__dict__, "latent_sample": False})
  lat = jax.jit(lambda p, im: core.encode(spec_mean, p, im, None))(
      params, jnp.asarray((img.transpose(0, 2, 3, 1) + 1) / 2))
  _close(np.asarray(lat).transpose(0, 3, 1, 2), ref["latent"] * spec.scaling_factor)
  tm, tp = loading.load_text_encoder(root)
  emb = prompts.clip_text_encoder(tok, tm, tp)(["a photo of a man riding a bike", ""])
  _close(emb, ref["text"])


@pytest.mark.torch
@pytest.mark.slow
def test_pixel_model_keeps_eps_half_and_matches_pytorch(torch_dirs):
  root = torch_dirs["pixel"]
  spec, params = loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))
  assert (spec.kind, spec.resolution, spec.guidance_scale, spec.weighting) == (
      "pixel", tiny_models.UNET_SAMPLE, 20.0, "uniform")
  assert "vae" not in params
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
  t = np.array([30, 700])
  e = rng.standard_normal((2, 5, tiny_models.TEXT_DIM)).astype(np.float32)
  import torch
  from diffusers import UNet2DConditionModel
  with torch.no_grad():
    ref = UNet2DConditionModel.from_pretrained(str(root / "unet")).eval()(
        torch.tensor(x), torch.tensor(t), torch.tensor(e)).sample.numpy()
  assert ref.shape[1] == 6
  eps = jax.jit(lambda p, x, t, e: core.predict_eps(spec, p, x, t, e))(
      params, jnp.asarray(x.transpose(0, 2, 3, 1)), t, e)
  _close(np.asarray(eps).transpose(0, 3, 1, 2), ref[:, :3])
  # encode: renders of any size are resized to the UNet sample size in [-1, 1]
  x0 = core.encode(spec, params, jnp.ones((1, 32, 32, 3)), jax.random.PRNGKey(0))
  np.testing.assert_allclose(x0, np.ones((1, 8, 8, 3)))


@pytest.mark.torch
@pytest.mark.slow
def test_sd_gradient_flows_through_vae_encoder(torch_dirs):
  """d loss / d render == J_enc^T g, checked by central differences along v."""
  cfg = hoi.get_config()
  cfg.guidance.sd_resolution = tiny_models.VAE_RES
  cfg.guidance.vae_remat = True
  spec, params = loading.load_guidance(torch_dirs["safetensors"], config_lib.guidance_options(config_lib.parse(cfg)))
  spec = spec.__class__(**{**spec.__dict__, "latent_sample": False, "guidance_scale": 7.5})
  rng = np.random.default_rng(2)
  imgs = jnp.asarray(rng.uniform(0.2, 0.8, (2, 12, 12, 3)), jnp.float32)  # resized to 16
  cond = jnp.asarray(rng.standard_normal((2, 6, tiny_models.TEXT_DIM)), jnp.float32)
  uncond = jnp.zeros((6, tiny_models.TEXT_DIM))
  key = jax.random.PRNGKey(7)
  g_img = jax.jit(jax.grad(lambda im: core.guidance_apply(spec, params, im, cond, uncond,
                                                          key)[0]))(imgs)
  # The latent-space SDS gradient from public pieces with the same randomness.
  k_enc, k_t, k_n = jax.random.split(key, 3)
  enc = lambda im: core.encode(spec, params, im, k_enc)
  v = jnp.asarray(rng.standard_normal(imgs.shape), jnp.float32)
  h = 1e-2

  @jax.jit
  def reference(imgs):
    z, jv = jax.jvp(enc, (imgs,), (v,))  # forward mode, independent of the VJP
    t = sds.sample_timesteps(k_t, 2, spec.t_min, spec.t_max, 1000)
    noise = jax.random.normal(k_n, z.shape)
    z_t = sds.add_noise(z, noise, t, params["alphas_cumprod"])
    ec, eu = core.predict_cfg_pair(spec, params, z_t, t, cond, uncond)
    g_lat = sds.sds_gradient(ec, eu, noise, t, params["alphas_cumprod"], guidance_scale=7.5,
                             weighting=spec.weighting)
    fd = (enc(imgs + h * v) - enc(imgs - h * v)) / (2 * h)
    return jnp.sum(g_lat * jv), jnp.sum(g_lat * fd)

  rhs, fd = map(float, reference(imgs))
  lhs = float(jnp.sum(g_img * v)) * 2  # loss is averaged over the batch of 2
  assert abs(lhs - rhs) <= 1e-3 * abs(rhs) + 1e-4, (lhs, rhs)
  # finite-difference sanity check (fp32, nonlinear encoder): looser
  assert abs(lhs - fd) <= 5e-2 * abs(fd), (lhs, fd)


def _fake_dir(tmp_path, in_channels=4, **unet_cfg):
  root = tmp_path / "m"
  for comp in ("unet", "vae", "text_encoder"):
    (root / comp).mkdir(parents=True)
    (root / comp / "config.json").write_text(json.dumps({"in_channels": in_channels, **unet_cfg}))
    (root / comp / "diffusion_pytorch_model.safetensors").write_bytes(b"")
  tiny_models.write_tokenizer(root / "tokenizer")
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny_models.SCHEDULER))
  return root


def test_missing_files_are_listed(tmp_path):
  root = _fake_dir(tmp_path)
  (root / "vae" / "diffusion_pytorch_model.safetensors").unlink()
  (root / "tokenizer" / "merges.txt").unlink()
  (root / "scheduler" / "scheduler_config.json").unlink()
  with pytest.raises(loading.WeightsNotFoundError) as e:
    loading.check_model_dir(root, loading.COMPONENT_FILES)
  msg = str(e.value)
  for bit in ("vae/<one of", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
              "WORKSPACE.md"):
    assert bit in msg, msg
  assert "unet/" not in msg
  with pytest.raises(FileNotFoundError, match="weights_dir is empty"):
    loading.load_scene_guidance(config_lib.guidance_options(config_lib.parse(hoi.get_config())), config_lib.prompt_spec(config_lib.parse(hoi.get_config())))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    loading.load_guidance(tmp_path / "nowhere", config_lib.guidance_options(config_lib.parse(hoi.get_config())))
  with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
    loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))


@pytest.mark.parametrize("channels", [9, 1, None])
def test_wrong_in_channels_is_a_clear_error(tmp_path, channels):
  root = _fake_dir(tmp_path, in_channels=channels)
  with pytest.raises(loading.ModelTypeError, match="neither a latent model"):
    loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))


def test_backend_mismatch_and_unsupported_unet(tmp_path):
  assert loading.kind_from_unet_config({"in_channels": 4}) == "stable_diffusion"
  assert loading.kind_from_unet_config({"in_channels": 3}) == "pixel"
  with pytest.raises(loading.ModelTypeError, match="backend='pixel'"):
    loading.kind_from_unet_config({"in_channels": 4}, "pixel")
  root = _fake_dir(tmp_path, in_channels=3, encoder_hid_dim=4096, norm_num_groups=16)
  with pytest.raises(loading.ModelTypeError, match="encoder_hid_dim=4096"):
    loading.load_unet(root)


def test_read_safetensors_matches_reference_reader(tmp_path):
  from safetensors.numpy import load_file, save_file
  rng = np.random.default_rng(3)
  a = {"w": rng.standard_normal((3, 4)).astype(np.float16),
       "b": rng.standard_normal((5,)).astype(np.float32), "i": np.arange(6).reshape(2, 3)}
  save_file(a, str(tmp_path / "x.safetensors"))
  got = loading.read_safetensors(tmp_path / "x.safetensors")
  ref = load_file(str(tmp_path / "x.safetensors"))
  assert set(got) == set(ref)
  for k in ref:
    assert got[k].dtype == ref[k].dtype
    np.testing.assert_array_equal(got[k], ref[k])
  save_file({"c": np.ones((2, 2), np.float32)}, str(tmp_path / "y.safetensors"))
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {"w": "x.safetensors", "b": "x.safetensors", "i": "x.safetensors",
                      "c": "y.safetensors"}}))
  assert set(loading.read_safetensors(tmp_path / "m.safetensors.index.json")) == {"w", "b", "i", "c"}


_NO_TORCH = r"""
import sys
sys.modules["torch"] = None  # an install without torch: any `import torch` fails
import tempfile
import jax, jax.numpy as jnp
import tiny_models
from configs import hoi
from interfusion_jax import guidance
from interfusion_jax.stage2 import config as config_lib
root = tiny_models.make_flax_guidance_dir(tempfile.mkdtemp(), "pixel")
cfg = hoi.get_config()
cfg.guidance.weights_dir = str(root)
spec, params, table = guidance.load_scene_guidance(config_lib.guidance_options(config_lib.parse(cfg)), config_lib.prompt_spec(config_lib.parse(cfg)))
pspec = config_lib.prompt_spec(config_lib.parse(cfg))
assert table["human"].shape == (4, 77, tiny_models.TEXT_DIM), table["human"].shape
cond = guidance.select_embeddings(table["human"], jnp.zeros(2), jnp.array([0., 90.]), pspec)
g = jax.jit(jax.grad(lambda im: guidance.guidance_apply(
    spec, params, im, cond, table["uncond"], jax.random.PRNGKey(0))[0]))(jnp.full((2, 16, 16, 3), .5))
assert hash(spec) == hash(guidance.load_guidance(root, config_lib.guidance_options(config_lib.parse(cfg)))[0])  # usable as a static arg
assert spec.kind == "pixel" and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
assert sys.modules.get("torch") is None
print("NO_TORCH_OK")
"""


@pytest.mark.slow
def test_loading_and_apply_work_without_torch():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]),
             HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _NO_TORCH], env=env, capture_output=True, text=True,
                     timeout=600)
  assert "NO_TORCH_OK" in r.stdout, r.stderr[-3000:]


def test_core_package_never_imports_torch():
  pkg = pathlib.Path(guidance.__file__).parent
  for f in pkg.glob("*.py"):
    src = f.read_text()
    assert "import torch" not in src and "from torch" not in src, f
