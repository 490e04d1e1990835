"""Prompt rows and base configs shared by the prompt-file, sweep and loop tests.
"""
import json
import pathlib

from configs import hoi


ROOT = pathlib.Path(__file__).resolve().parents[1]


ROW = {"human": "a man", "object": "a bike", "interaction": "riding a bike"}


PROMPTS = [
    {"human": "a man in a red shirt", "object": "a blue chair",
     "interaction": "sitting on a chair"},
    {"human": "a man in a green shirt", "object": "a yellow bike",
     "interaction": "riding a bike"},
]


def _jsonl(tmp_path, rows, name="p.jsonl"):
  path = tmp_path / name
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def _smoke():
  cfg = hoi.get_config("smoke")
  cfg.train.steps = 4
  return cfg


def _base():
  cfg = hoi.get_config("smoke")
  cfg.train.steps = 3
  cfg.camera.trace_every = 2
  return cfg
