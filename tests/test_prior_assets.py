"""Tests for interfusion_jax/prior/assets.py: deterministic bank, files, trainer hook."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from interfusion_jax.prior import assets
from interfusion_jax.guidance import captions as colors
from interfusion_jax.guidance import builtin as denoiser
from interfusion_jax.stage2 import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = assets.BankSpec(objects=("ball",), colors=("red", "green"), human_views=1,
                       head_views=1, object_views=1, interaction_views=1,
                       placement_resolution=40, body="mannequin")


@pytest.fixture(scope="module")
def tiny():
  return assets.build_bank(TINY, progress=False)


def test_bank_is_deterministic_and_consistent(tiny):
  again = assets.build_bank(TINY, progress=False)
  for k in ("images", "attrs", "captions", "dirs"):
    np.testing.assert_array_equal(tiny[k], again[k])
  n = len(tiny["images"])
  # 2 colours x 1 object human + 2 head + 2 object + 2 x 2 interaction renders
  # (every clothing colour with every object colour).
  assert n == 10 and tiny["images"].dtype == np.uint8
  inter = tiny["attrs"][tiny["attrs"][:, 0] == denoiser.KINDS.index("interaction")]
  r, g = (colors.COLOR_NAMES.index(c) for c in ("red", "green"))
  assert sorted(map(tuple, inter[:, [2, 4]].tolist())) == sorted(
      [(r, r), (r, g), (g, r), (g, g)])
  for cap, attr in zip(tiny["captions"], tiny["attrs"]):
    parsed = denoiser.attributes_of(denoiser.parse_caption(str(cap)))
    named = parsed >= 0
    np.testing.assert_array_equal(parsed[named], attr[named])  # captions agree with truth
  assert json.loads(str(tiny["meta"]))["body"] == "mannequin"


def test_bank_camera_directions_are_unit_and_agree_with_the_view_words(tiny):
  """Each image's stored direction gives back, by the threestudio rule applied
  to its own elevation and azimuth, the view word of its caption -- away from
  the rule's boundaries: the direction is that of the perturbed camera position
  (official U(+-0.1) per axis: < 4.3 deg at distance >= 2.5) while the word
  follows the sampled angles, as in training."""
  d = tiny["dirs"].astype(np.float64)
  assert d.shape == (len(tiny["images"]), 3)
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
  elev = np.rad2deg(np.arcsin(np.clip(d[:, 2], -1, 1)))
  azim = np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))
  view = np.where(elev > 60, 3, np.where(np.abs(azim) < 45, 0, np.where(np.abs(azim) > 135, 2, 1)))
  margin = 5.0
  to_edge = np.min([np.abs((azim - b + 180.0) % 360.0 - 180.0) for b in (-135, -45, 45, 135)], 0)
  clear = (np.abs(elev - 60) > margin) & (
      (elev > 60) | (to_edge > margin / np.cos(np.deg2rad(np.minimum(elev, 60 + margin)))))
  assert clear.sum() >= len(view) // 2
  np.testing.assert_array_equal(view[clear], tiny["attrs"][clear, 1])


def test_save_load_round_trip_and_errors(tiny, tmp_path):
  path = assets.save_bank(tmp_path / "b.npz", tiny)
  back = assets.load_bank(path)
  np.testing.assert_array_equal(back["images"], tiny["images"])
  with pytest.raises(FileNotFoundError, match="build_prior.py"):
    assets.load_bank(tmp_path / "missing.npz")
  np.savez(tmp_path / "bad.npz", images=tiny["images"])
  with pytest.raises(assets.BankError, match="rebuild"):
    assets.load_bank(tmp_path / "bad.npz")


def test_default_bank_is_built_once_then_cached(tiny, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  calls = []
  monkeypatch.setattr(assets, "build_bank",
                      lambda spec, progress=True: calls.append(spec) or tiny)
  a = assets.load_default_bank(TINY, progress=False)
  b = assets.load_default_bank(TINY, progress=False)
  assert len(calls) == 1
  np.testing.assert_array_equal(a["images"], b["images"])
  assert (tmp_path / "interfusion_jax" / "prior" / f"bank-{TINY.digest()}.npz").exists()


def test_builtin_guidance_for_the_trainer(tiny, monkeypatch):
  from interfusion_jax.guidance import core, prompts
  if "builtin" not in core.BACKENDS:
    monkeypatch.setitem(core.BACKENDS, "builtin", (denoiser.encode, denoiser.predict_eps))
  monkeypatch.setattr(assets, "load_default_bank", lambda progress=True: tiny)
  spec = importlib.util.spec_from_file_location("hoi", ROOT / "configs" / "hoi.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.prompt.human = "a man in a red shirt"
  cfg.prompt.object = "a green ball"
  cfg.prompt.interaction = "holding a ball"
  gspec, params, table = assets.load_builtin_guidance(config_lib.guidance_options(config_lib.parse(cfg)), config_lib.prompt_spec(config_lib.parse(cfg)), progress=False)
  assert gspec.kind == "builtin" and gspec.guidance_scale == denoiser.DEFAULT_GUIDANCE_SCALE
  assert table["object"].shape == (4, 1, denoiser.EMBED_DIM)
  assert table["uncond"].shape == (1, denoiser.EMBED_DIM)
  pspec = config_lib.prompt_spec(config_lib.parse(cfg))
  want = denoiser.embed_caption(prompts.decorate("a green ball", pspec, "back"))
  np.testing.assert_array_equal(np.asarray(table["object"][2]), want)
  assert params["bank"].shape == (10, 32, 32, 3)
  np.testing.assert_array_equal(np.asarray(params["dirs"]), tiny["dirs"])
  assert gspec.camera_conditioning and float(params["camera_kappa"]) > 0
