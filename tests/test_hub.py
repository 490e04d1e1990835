"""interfusion_jax/hub.py: weights by hub id or folder, over real HTTP on 127.0.0.1.

tests/hub_server.py speaks the hub's file API (``HF_ENDPOINT``) and serves a tiny
IF stage I in DeepFloyd/IF-I-XL-v1.0's file layout and a tiny FlaxCLIP. The
listings in the first tests are the real repositories' file names.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from interfusion_jax import hub
from interfusion_jax.guidance import t5
from interfusion_jax.guidance import weights

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import hub_server  # noqa: E402  pylint: disable=g-import-not-at-top
import tiny_clip  # noqa: E402  pylint: disable=g-import-not-at-top

IF_ID = "DeepFloyd/IF-I-XL-v1.0"
CLIP_ID = "openai/clip-vit-base-patch32"
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR", "/tmp/interfusion_jax_test_cache")

# huggingface.co/DeepFloyd/IF-I-XL-v1.0/tree/main, the files of each folder.
IF_XL_FILES = [
    ".gitattributes", "LICENSE", "README.md", "feature_extractor/preprocessor_config.json",
    "model_index.json", "safety_checker/config.json", "safety_checker/model.fp16.safetensors",
    "safety_checker/model.safetensors", "safety_checker/pytorch_model.bin",
    "safety_checker/pytorch_model.fp16.bin", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.fp16-00001-of-00002.safetensors",
    "text_encoder/model.fp16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.fp16.json", "text_encoder/model.safetensors.index.json",
    "text_encoder/pytorch_model-00001-of-00002.bin", "text_encoder/pytorch_model-00002-of-00002.bin",
    "text_encoder/pytorch_model.bin.index.json", "text_encoder/model.8bit.safetensors",
    "tokenizer/special_tokens_map.json", "tokenizer/spiece.model",
    "tokenizer/tokenizer_config.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.fp16.bin", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors", "watermarker/config.json",
    "watermarker/diffusion_pytorch_model.bin", "watermarker/diffusion_pytorch_model.safetensors"]
SD21_FILES = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/flax_model.msgpack", "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_flax_model.msgpack",
    "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_flax_model.msgpack", "vae/diffusion_pytorch_model.safetensors",
    "feature_extractor/preprocessor_config.json", "v2-1_512-ema-pruned.ckpt"]
CLIP_FILES = ["config.json", "flax_model.msgpack", "merges.txt", "preprocessor_config.json",
              "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5", "tokenizer.json",
              "tokenizer_config.json", "vocab.json", "README.md"]


def test_select_files_takes_what_the_loaders_read_fp16_first():
  assert hub.select_files(IF_XL_FILES, hub.DIFFUSERS) == [
      "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
      "text_encoder/model.fp16-00001-of-00002.safetensors",
      "text_encoder/model.fp16-00002-of-00002.safetensors",
      "text_encoder/model.safetensors.index.fp16.json", "tokenizer/special_tokens_map.json",
      "tokenizer/spiece.model", "tokenizer/tokenizer_config.json", "unet/config.json",
      "unet/diffusion_pytorch_model.fp16.safetensors"]
  assert hub.select_files(SD21_FILES, hub.DIFFUSERS) == [
      "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
      "text_encoder/model.fp16.safetensors", "tokenizer/merges.txt",
      "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
      "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
      "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
  # Without safetensors: the Flax msgpack.
  no_st = [f for f in SD21_FILES if not f.endswith(".safetensors")]
  assert "unet/diffusion_flax_model.msgpack" in hub.select_files(no_st, hub.DIFFUSERS)
  assert hub.select_files(CLIP_FILES, hub.CLIP) == [
      "config.json", "flax_model.msgpack", "merges.txt", "preprocessor_config.json",
      "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"]


def test_ids_and_folders(tmp_path):
  (tmp_path / "owner" / "name").mkdir(parents=True)
  cwd = os.getcwd()
  try:
    os.chdir(tmp_path)
    assert not hub.is_hub_id("owner/name")            # an existing folder wins
  finally:
    os.chdir(cwd)
  assert hub.is_hub_id(IF_ID) and hub.is_hub_id("a/b@v1.0")
  for ref in ("", "/models/if", "./a/b", "~/a", "a/b/c", "if-folder"):
    assert not hub.is_hub_id(ref), ref
  assert hub.split_id("a/b@v1") == ("a/b", "v1") and hub.split_id("a/b") == ("a/b", "main")
  assert hub.resolve(str(tmp_path), hub.DIFFUSERS) == str(tmp_path)


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
  pytest.importorskip("sentencepiece")
  pytest.importorskip("torch")
  base = tmp_path_factory.mktemp("hub_repos")
  clip = tiny_clip.make_tiny_clip(base / "clip")
  return {IF_ID: hub_server.if_xl_layout(base / "if"), CLIP_ID: clip}


@pytest.fixture
def online(monkeypatch, tmp_path):
  """huggingface_hub in this process pointed at a server URL, with its own cache."""
  from huggingface_hub import constants
  from huggingface_hub.utils import reset_sessions

  def point(url, offline=False, cache="hf"):
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / cache / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / cache))
    reset_sessions()
    hub._fetch.cache_clear()
  yield point
  reset_sessions()
  hub._fetch.cache_clear()


def test_fetch_by_id_reads_only_the_loaded_files_then_offline_uses_the_cache(repos, online):
  with hub_server.HubServer(repos) as server:
    online(server.url)
    # A folder never touches the network, even when it is laid out like the repo.
    assert hub.resolve(str(repos[IF_ID]), hub.DIFFUSERS) == str(repos[IF_ID])
    assert server.requests == []
    folder = pathlib.Path(hub.resolve(IF_ID, hub.DIFFUSERS))
    got = sorted(p for m, p in server.requests if m == "GET" and "/resolve/" in p)
  index = json.loads((repos[IF_ID] / "text_encoder" / "model.safetensors.index.fp16.json").read_text())
  want = {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
          "unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json",
          "text_encoder/model.safetensors.index.fp16.json", "tokenizer/spiece.model",
          "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"}
  want |= {f"text_encoder/{s}" for s in index["weight_map"].values()}
  assert got == sorted(f"/{IF_ID}/resolve/main/{f}" for f in want)
  assert not any(p.endswith(".bin") or "safety" in p or "watermark" in p for _, p in server.requests)
  # The snapshot is a complete IF folder for the loaders, in the hub cache.
  assert folder.name == hub_server.COMMIT and "hf/hub/models--DeepFloyd--IF-I-XL-v1.0" in str(folder)
  weights.check_model_dir(folder, ("unet", "scheduler"))
  t5.check_t5_dir(folder)
  assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
  # Server gone, offline: the same folder from the cache, no request.
  online("http://127.0.0.1:9", offline=True)
  assert hub.resolve(IF_ID, hub.DIFFUSERS) == str(folder)


def test_a_clip_id_loads(repos, online):
  from interfusion_jax.pose import clip as clip_lib
  with hub_server.HubServer(repos) as server:
    online(server.url)
    bundle = clip_lib.load_clip(CLIP_ID)
  assert bundle.name.endswith(hub_server.COMMIT)
  assert clip_lib.text_features(bundle, ["a bike"]).shape == (1, bundle.dim)


def test_each_failure_is_one_line_saying_what_to_do(repos, online, tmp_path):
  def err(ref=IF_ID):
    with pytest.raises(hub.HubError) as e:
      hub.resolve(ref, hub.DIFFUSERS, what="config.guidance.weights_dir")
    assert "\n" not in str(e.value)
    return str(e.value)

  with hub_server.HubServer(repos, mode="gated") as server:     # licence not accepted
    online(server.url)
    msg = err()
    assert "gated (401" in msg and "accept its licence" in msg and "HF_TOKEN" in msg
  with hub_server.HubServer(repos) as server:                    # unknown id
    online(server.url)
    assert "neither a local folder nor a model" in err("nobody/nothing")
  broken = dict(repos)
  broken[IF_ID] = tmp_path / "broken"
  shutil.copytree(repos[IF_ID], broken[IF_ID])
  with hub_server.HubServer(broken) as server:                   # a listed file 404s
    server.missing = {"unet/diffusion_pytorch_model.fp16.safetensors"}
    online(server.url)
    assert "lacks a file the loader reads" in err()
  online("http://127.0.0.1:9", cache="empty")                    # no network, nothing cached
  msg = err()
  assert "could not fetch" in msg and "HF_HUB_OFFLINE=1" in msg
  online("http://127.0.0.1:9", offline=True, cache="empty")      # offline, nothing cached
  msg = err()
  assert "HF_HUB_OFFLINE=1" in msg and "not in the hub cache" in msg


def _env(hf_home, url, **kw):
  env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(hf_home), HF_ENDPOINT=url,
             JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1", **kw)
  for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE", "HF_TOKEN",
            "HF_HUB_CACHE"):
    env.pop(k, None)
  env.update(kw)
  return env


def _train(args, env):
  return subprocess.run([sys.executable, "-m", "interfusion_jax.train"] + args, cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_smoke_by_id_then_offline_from_the_cache(repos, tmp_path):
  """The train command line with guidance.weights_dir = the IF id: fetched once over
  HTTP, trained (T5 prompts, the Flax IF UNet); then with the server stopped and
  HF_HUB_OFFLINE=1 the same id trains again from the hub cache."""
  args = ["--config=configs/hoi.py:smoke", "--config.guidance.backend=auto",
          f"--config.guidance.weights_dir={IF_ID}", "--config.train.steps=2",
          "--config.train.ckpt_every=2", "--config.train.val_every=2",
          "--config.train.turntable_frames=2", "--config.train.final_resolution=16",
          f"--config.guidance.text_cache_dir={tmp_path / 'text'}", "--noprogress"]
  home = tmp_path / "hf"
  with hub_server.HubServer(repos) as server:
    proc = _train(args + [f"--workdir={tmp_path / 'a'}"], _env(home, server.url))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("/resolve/main/unet/" in p for _, p in server.requests)
    url = server.url
  rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  assert rows and all(np.isfinite(r["loss_sds_interaction"]) for r in rows)
  assert json.loads((tmp_path / "a" / "config.json").read_text())["guidance"]["weights_dir"] == IF_ID
  proc = _train(args + [f"--workdir={tmp_path / 'b'}"], _env(home, url, HF_HUB_OFFLINE="1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((tmp_path / "b" / "final" / "summary.json").read_text())["step"] == 2


def test_train_cli_gated_model_is_one_line_and_exit_2(repos, tmp_path):
  with hub_server.HubServer(repos, mode="gated") as server:
    proc = _train(["--config=configs/hoi.py:riding_a_bike", f"--config.guidance.weights_dir={IF_ID}",
                   f"--workdir={tmp_path / 'w'}"], _env(tmp_path / "hf", server.url))
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "accept its licence" in errors[0], proc.stderr[-3000:]
