"""Independent CLIP score in PyTorch transformers (tests only): the reference for evaluation.clip_score.

``make_clip_dir`` writes a tiny random PyTorch ``CLIPModel`` with
``save_pretrained`` (safetensors), then converts it to Flax the way
docs/pose.md tells users to (``FlaxCLIPModel.from_pretrained(DIR,
from_pt=True).save_pretrained(DIR)``), so one directory holds both formats.
``load`` reads the PyTorch weights and ``CLIPTokenizer``; ``scores``
normalises pixels with the directory's preprocessor mean/std and resizes with
``torch.nn.functional.interpolate`` (bilinear, antialiased) only when the
images are not at the model's size.
"""
import json
import pathlib

import numpy as np

import tiny_clip


def make_clip_dir(path, image_size: int = 32, projection_dim: int = 16, seed: int = 0):
  import torch
  from transformers import CLIPModel, FlaxCLIPModel
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  vocab_size = tiny_clip.write_tiny_tokenizer(path)
  cfg = tiny_clip.tiny_clip_config(vocab_size, image_size, projection_dim)
  torch.manual_seed(seed)
  CLIPModel(cfg).eval().save_pretrained(str(path), safe_serialization=True)
  FlaxCLIPModel.from_pretrained(str(path), from_pt=True).save_pretrained(str(path))
  (path / "preprocessor_config.json").write_text(json.dumps({
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711], "crop_size": image_size}))
  return path


def load(clip_dir):
  import torch
  from transformers import CLIPModel, CLIPTokenizer
  torch.set_num_threads(1)
  model = CLIPModel.from_pretrained(str(clip_dir)).eval()
  tok = CLIPTokenizer.from_pretrained(str(clip_dir))
  pp = json.loads((pathlib.Path(clip_dir) / "preprocessor_config.json").read_text())
  return model, tok, pp


def scores(ref, images: np.ndarray, texts) -> np.ndarray:
  """[N, T] float64 cosines of N images [N, H, W, 3] in [0, 1] against T texts."""
  import torch
  model, tok, pp = ref
  x = torch.from_numpy(np.asarray(images, np.float32)).permute(0, 3, 1, 2)
  s = model.config.vision_config.image_size
  if x.shape[-2:] != (s, s):
    x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", antialias=True,
                                        align_corners=False)
  mean = torch.tensor(pp["image_mean"]).view(1, 3, 1, 1)
  std = torch.tensor(pp["image_std"]).view(1, 3, 1, 1)
  with torch.no_grad():
    img = model.get_image_features(pixel_values=(x - mean) / std)
    max_len = model.config.text_config.max_position_embeddings   # CLIP truncates (77 for ViT-B/32)
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
  img = img / img.norm(dim=-1, keepdim=True)
  txt = txt / txt.norm(dim=-1, keepdim=True)
  return (img.double() @ txt.double().T).numpy()
