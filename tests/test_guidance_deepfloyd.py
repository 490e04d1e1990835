"""DeepFloyd IF stage I in Flax (issue 14) against diffusers' PyTorch UNet2DConditionModel."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import hoi
from interfusion_jax import guidance
from interfusion_jax.guidance import core, deepfloyd, loading, sds
from interfusion_jax.stage2 import config as config_lib
import tiny_models

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

XL_CONFIG = dict(  # DeepFloyd/IF-I-XL-v1.0 unet/config.json (the keys that differ from defaults)
    sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
    block_out_channels=[704, 1408, 2112, 2816],
    down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
    up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64,
    cross_attention_dim=2816, cross_attention_norm="group_norm", encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj", addition_embed_type="text",
    addition_embed_type_num_heads=64, resnet_time_scale_shift="scale_shift", act_fn="gelu",
    norm_eps=1e-5, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0)


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(got - ref)) / max(1e-12, np.max(np.abs(ref))))


def _pt_to_flax(torch_module, shapes):
  sd = {k: v.detach().numpy() for k, v in torch_module.state_dict().items()}
  return jax.tree_util.tree_map(jnp.asarray, loading.convert_pt_state_dict(
      sd, shapes, loading._diffusers_rename, where="test"))


@pytest.fixture(scope="module")
def if_dir(tmp_path_factory):
  pytest.importorskip("sentencepiece")
  root = tiny_models.make_torch_if_dir(tmp_path_factory.mktemp("if") / "IF-I-tiny")
  from diffusers import UNet2DConditionModel
  return root, UNet2DConditionModel.from_pretrained(str(root / "unet")).eval()


@pytest.fixture(scope="module")
def loaded(if_dir):
  spec, params = loading.load_guidance(if_dir[0], config_lib.guidance_options(config_lib.parse(hoi.get_config())))
  fn = jax.jit(lambda p, x, t, e: core.predict_eps(spec, p, x, t, e))
  return spec, params, fn


def test_xl_config_keys_shapes_and_count_match_diffusers():
  """No weights: torch's meta device vs jax.eval_shape, key for key, shape for shape."""
  from diffusers import UNet2DConditionModel
  with torch.device("meta"):
    pt = UNet2DConditionModel(**XL_CONFIG)
  pt_shapes = {k: tuple(v.shape) for k, v in pt.state_dict().items()}
  assert sum(int(np.prod(s)) for s in pt_shapes.values()) == 4_304_695_110
  model = deepfloyd.IFUNet.from_config(XL_CONFIG)
  flat = traverse_util.flatten_dict(jax.eval_shape(model.init_weights, jax.random.PRNGKey(0)))
  assert sum(int(np.prod(v.shape)) for v in flat.values()) == 4_304_695_110
  mapped = {}
  for k, s in pt_shapes.items():
    key, arr = loading._diffusers_rename(k, np.broadcast_to(np.float32(0), s), flat)
    assert key not in mapped, k
    mapped[key] = tuple(arr.shape)
  assert set(mapped) == set(flat)
  assert {k: tuple(v.shape) for k, v in flat.items()} == mapped
  loading.check_if_unet_config(XL_CONFIG)
  assert loading.unet_family(XL_CONFIG) == "deepfloyd_if"


def test_tiny_model_exercises_every_feature_and_every_weight_is_perturbed(if_dir):
  cfg = json.loads((if_dir[0] / "unet" / "config.json").read_text())
  assert cfg["encoder_hid_dim"] == tiny_models.IF_TEXT_DIM  # text_proj
  for k in ("down_block_types", "up_block_types", "mid_block_type", "addition_embed_type", "cross_attention_norm", "resnet_time_scale_shift", "act_fn"):
    assert cfg[k] == (list(XL_CONFIG[k]) if isinstance(XL_CONFIG[k], list) else XL_CONFIG[k]), k
  assert cfg["out_channels"] == 2 * cfg["in_channels"] == 6
  for name, p in if_dir[1].state_dict().items():
    v = p.detach().numpy()
    assert not np.all(v == 0) and not np.all(v == 1), name  # zero-init convs, unit scales


@pytest.mark.parametrize("batch,timesteps", [(1, [999]), (3, [0, 500, 980])])
def test_tiny_if_matches_pytorch(if_dir, loaded, batch, timesteps):
  spec, params, fn = loaded
  assert (spec.kind, spec.resolution, spec.guidance_scale, spec.weighting) == (
      "deepfloyd_if", tiny_models.IF_SAMPLE, 20.0, "uniform")
  assert isinstance(spec.unet, deepfloyd.IFUNet) and "vae" not in params
  rng = np.random.default_rng(batch)
  x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
  e = rng.standard_normal((batch, 9, tiny_models.IF_TEXT_DIM)).astype(np.float32)
  t = np.asarray(timesteps)
  with torch.no_grad():
    ref = if_dir[1](torch.tensor(x), torch.tensor(t), torch.tensor(e)).sample.numpy()
  if batch == 1:  # the raw module, NCHW, all 6 channels
    out = jax.jit(spec.unet.apply)({"params": params["unet"]}, x, t, e)
    assert out.shape == ref.shape == (batch, 6, 16, 16)
    assert _rel(out, ref) < 1e-4
  else:  # the backend: NHWC, eps = the first 3 channels
    eps = fn(params, jnp.asarray(x.transpose(0, 2, 3, 1)), t, e)
    assert _rel(np.asarray(eps).transpose(0, 3, 1, 2), ref[:, :3]) < 1e-4


@pytest.mark.parametrize("shift,mode", [("scale_shift", ""), ("scale_shift", "up"),
                                        ("scale_shift", "down"), ("default", "")])
def test_resnet_block_matches_pytorch(shift, mode):
  from diffusers.models.resnet import ResnetBlock2D
  torch.manual_seed(0)
  cin, cout = (32, 64) if not mode else (64, 64)
  pt = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=24, eps=1e-5, groups=32,
                     time_embedding_norm=shift, non_linearity="gelu", up=mode == "up",
                     down=mode == "down").eval()
  tiny_models._randomize(pt, torch)
  fx = deepfloyd.ResnetBlock(cout, 32, 1e-5, "gelu", shift, up=mode == "up", down=mode == "down")
  x = np.random.default_rng(0).standard_normal((2, 8, 8, cin)).astype(np.float32)
  temb = np.random.default_rng(1).standard_normal((2, 24)).astype(np.float32)
  params = _pt_to_flax(pt, jax.eval_shape(fx.init, jax.random.PRNGKey(0), x, temb)["params"])
  with torch.no_grad():
    ref = pt(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(temb)).numpy()
  out = fx.apply({"params": params}, x, temb)
  assert out.shape[1] == {"": 8, "up": 16, "down": 4}[mode]
  assert _rel(np.asarray(out).transpose(0, 3, 1, 2), ref) < 1e-5


def test_added_kv_attention_and_pooling_match_pytorch():
  from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor
  from diffusers.models.embeddings import AttentionPooling
  torch.manual_seed(1)
  pt = Attention(query_dim=64, cross_attention_dim=64, heads=4, dim_head=16, added_kv_proj_dim=32,
                 norm_num_groups=32, bias=True, upcast_softmax=True, cross_attention_norm="group_norm",
                 processor=AttnAddedKVProcessor()).eval()
  tiny_models._randomize(pt, torch)
  fx = deepfloyd.AddedKVAttention(16, 32, "group_norm")
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 4, 4, 64)).astype(np.float32)
  text = rng.standard_normal((2, 5, 32)).astype(np.float32)
  params = _pt_to_flax(pt, jax.eval_shape(fx.init, jax.random.PRNGKey(0), x, text)["params"])
  with torch.no_grad():
    ref = pt(torch.tensor(x.transpose(0, 3, 1, 2)), encoder_hidden_states=torch.tensor(text)).numpy()
  assert _rel(np.asarray(fx.apply({"params": params}, x, text)).transpose(0, 3, 1, 2), ref) < 1e-5

  pool = AttentionPooling(4, 32).eval()
  tiny_models._randomize(pool, torch)
  fp = deepfloyd.AttentionPooling(4)
  pp = _pt_to_flax(pool, jax.eval_shape(fp.init, jax.random.PRNGKey(0), text)["params"])
  assert pp["positional_embedding"].shape == (1, 32)
  with torch.no_grad():
    ref = pool(torch.tensor(text)).numpy()
  assert _rel(fp.apply({"params": pp}, text), ref) < 1e-5


def test_mid_block_matches_pytorch():
  from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DSimpleCrossAttn
  torch.manual_seed(2)
  pt = UNetMidBlock2DSimpleCrossAttn(in_channels=64, temb_channels=24, resnet_eps=1e-5,
                                     resnet_act_fn="gelu", attention_head_dim=16,
                                     cross_attention_dim=32, resnet_groups=32,
                                     resnet_time_scale_shift="scale_shift",
                                     cross_attention_norm="group_norm").eval()
  tiny_models._randomize(pt, torch)
  fx = deepfloyd.MidBlock(32, 1e-5, "gelu", "scale_shift", 16, "group_norm")
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 4, 4, 64)).astype(np.float32)
  temb = rng.standard_normal((2, 24)).astype(np.float32)
  text = rng.standard_normal((2, 5, 32)).astype(np.float32)
  params = _pt_to_flax(pt, jax.eval_shape(fx.init, jax.random.PRNGKey(0), x, temb, text)["params"])
  with torch.no_grad():
    ref = pt(torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(temb),
             encoder_hidden_states=torch.tensor(text)).numpy()
  out = fx.apply({"params": params}, x, temb, text)
  assert _rel(np.asarray(out).transpose(0, 3, 1, 2), ref) < 1e-5


def test_sds_equals_threestudio_deepfloyd_formula(if_dir, loaded):
  """guidance_apply on the tiny IF model == a NumPy transcription of threestudio's
  deep_floyd_guidance.py (torch only for the UNet and the bilinear resize)."""
  spec, params, _ = loaded
  rng = np.random.default_rng(4)
  images = rng.uniform(0, 1, (2, 24, 24, 3)).astype(np.float32)  # resized to 16x16
  cond = rng.standard_normal((2, 6, tiny_models.IF_TEXT_DIM)).astype(np.float32)
  uncond = rng.standard_normal((6, tiny_models.IF_TEXT_DIM)).astype(np.float32)
  key = jax.random.PRNGKey(5)
  (loss, aux), g = jax.jit(jax.value_and_grad(
      lambda im: core.guidance_apply(spec, params, im, cond, uncond, key), has_aux=True))(images)
  t = np.asarray(aux["t"])
  noise = np.asarray(jax.random.normal(jax.random.split(key, 3)[2], (2, 16, 16, 3))).transpose(0, 3, 1, 2)
  abar = np.asarray(params["alphas_cumprod"], np.float64)[t][:, None, None, None]
  # threestudio: rgb_BCHW_64 = F.interpolate(rgb, (64, 64), mode="bilinear", align_corners=False)
  img = torch.tensor(images.transpose(0, 3, 1, 2), requires_grad=True)
  x_pt = torch.nn.functional.interpolate(img, (16, 16), mode="bilinear", align_corners=False) * 2 - 1
  x = x_pt.detach().numpy().astype(np.float64)
  x_t = np.sqrt(abar) * x + np.sqrt(1 - abar) * noise
  with torch.no_grad():  # one UNet call on [cond; uncond]
    out = if_dir[1](torch.tensor(np.concatenate([x_t, x_t]), dtype=torch.float32),
                    torch.tensor(np.concatenate([t, t])),
                    torch.tensor(np.concatenate([cond, np.broadcast_to(uncond, cond.shape)]))
                    ).sample.numpy().astype(np.float64)
  text, unc = out[:2], out[2:]
  eps_text, eps_unc = text[:, :3], unc[:, :3]  # .split(3, dim=1)
  eps_hat = eps_text + 20.0 * (eps_text - eps_unc)
  w = 1.0  # uniform
  grad = np.nan_to_num(w * (eps_hat - noise))
  target = x - grad
  ref_loss = 0.5 * np.sum((x - target) ** 2) / 2
  x_pt.backward(torch.tensor(grad / 2, dtype=torch.float32))  # d loss / d x = grad / B
  ref_g = img.grad.numpy().transpose(0, 2, 3, 1)
  assert abs(float(loss) - ref_loss) <= 1e-4 * ref_loss
  assert _rel(g, ref_g) < 1e-4
  assert float(np.abs(ref_g).sum()) > 0


def test_bf16_run_is_finite_and_close(if_dir, loaded):
  spec32, p32, fn32 = loaded
  cfg = hoi.get_config()
  cfg.guidance.unet_dtype = "bfloat16"
  spec, params = loading.load_guidance(if_dir[0], config_lib.guidance_options(config_lib.parse(cfg)))
  leaves = jax.tree_util.tree_leaves(params["unet"])
  assert all(a.dtype == jnp.bfloat16 for a in leaves)  # cast on the host, put as bf16
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.standard_normal((3, 16, 16, 3)), jnp.float32)  # shapes of the fp32 test
  e = jnp.asarray(rng.standard_normal((3, 9, tiny_models.IF_TEXT_DIM)), jnp.float32)
  t = jnp.asarray([100, 500, 800])
  out = jax.jit(lambda p: core.predict_eps(spec, p, x, t, e))(params)
  ref = fn32(p32, x, t, e)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  err = _rel(out, ref)
  print(f"bf16 tiny IF: max relative error {err:.3g} vs fp32")
  assert err < 0.1


def test_load_scene_guidance_on_if_dir(if_dir, tmp_path):
  cfg = hoi.get_config()
  cfg.guidance.weights_dir = str(if_dir[0])
  cfg.guidance.text_cache_dir = str(tmp_path / "cache")
  spec, params, table = guidance.load_scene_guidance(config_lib.guidance_options(config_lib.parse(cfg)), config_lib.prompt_spec(config_lib.parse(cfg)))
  assert spec.kind == "deepfloyd_if" and hash(spec) == hash(spec)
  assert table["human"].shape == (4, 77, tiny_models.IF_TEXT_DIM)
  assert table["uncond"].shape == (77, tiny_models.IF_TEXT_DIM)
  assert any((tmp_path / "cache").rglob("*.npy"))


# ----------------------------------------------------------------------------
# Clear errors, before anything compiles.
# ----------------------------------------------------------------------------
def _cfg_dir(tmp_path, unet_cfg, model_index=None, with_t5=False):
  root = tmp_path / "m"
  (root / "unet").mkdir(parents=True)
  (root / "unet" / "config.json").write_text(json.dumps(unet_cfg))
  (root / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny_models.IF_SCHEDULER))
  if model_index:
    (root / "model_index.json").write_text(json.dumps({"_class_name": model_index}))
  return root


def test_if_stage_two_and_three_are_refused(tmp_path):
  stage2 = dict(XL_CONFIG, in_channels=6, class_embed_type="timestep", sample_size=256)
  root = _cfg_dir(tmp_path, stage2, "IFSuperResolutionPipeline")
  for fn in (lambda: loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config()))),
             lambda: loading.load_scene_guidance(config_lib.guidance_options(config_lib.parse(hoi.get_config())), config_lib.prompt_spec(config_lib.parse(hoi.get_config())), root)):
    with pytest.raises(loading.ModelTypeError, match="stage II/III.*IF-I-XL"):
      fn()
  (root / "model_index.json").unlink()
  with pytest.raises(loading.ModelTypeError, match="super-resolution"):
    loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))


def test_if_dir_without_t5_names_the_t5_files(tmp_path):
  root = _cfg_dir(tmp_path, XL_CONFIG, "IFPipeline")
  with pytest.raises(loading.WeightsNotFoundError) as e:
    loading.load_scene_guidance(config_lib.guidance_options(config_lib.parse(hoi.get_config())), config_lib.prompt_spec(config_lib.parse(hoi.get_config())), root)
  msg = str(e.value)
  assert "text_encoder/config.json" in msg and "spiece.model" in msg, msg
  assert "vocab.json" not in msg and "merges.txt" not in msg


@pytest.mark.parametrize("field,value", [("down_block_types", ["KDownBlock2D"] * 4),
                                         ("mid_block_type", "UNetMidBlock2DCrossAttn"),
                                         ("up_block_types", ["AttnUpBlock2D"] * 4)])
def test_unsupported_block_types_are_refused(tmp_path, field, value):
  root = _cfg_dir(tmp_path, dict(XL_CONFIG, **{field: value}))
  with pytest.raises(loading.ModelTypeError, match="block types"):
    loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))
  with pytest.raises(loading.ModelTypeError, match="block types"):
    loading.load_unet(root)  # the SD path no longer builds unknown blocks as plain ones


def test_unsupported_if_feature_is_refused(tmp_path):
  root = _cfg_dir(tmp_path, dict(XL_CONFIG, class_embed_type="projection"))
  with pytest.raises(loading.ModelTypeError, match="class_embed_type"):
    loading.load_guidance(root, config_lib.guidance_options(config_lib.parse(hoi.get_config())))
  with pytest.raises(loading.ModelTypeError, match="backend='stable_diffusion'"):
    loading.load_guidance(_cfg_dir(tmp_path / "b", XL_CONFIG), config_lib.guidance_options(config_lib.parse(hoi.get_config())), backend="stable_diffusion")
