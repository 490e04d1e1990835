"""A local stand-in for the Hugging Face hub's file API, over real HTTP on 127.0.0.1.

Serves a folder per repository id the way ``huggingface_hub``'s client reads it:

* ``GET /api/models/{repo_id}[/revision/{revision}]``: JSON with ``id``, ``sha``
  and ``siblings`` (``[{"rfilename": path}]``), as ``HfApi.model_info``;
* ``HEAD`` / ``GET /{repo_id}/resolve/{revision}/{path}``: the file, with the
  ``X-Repo-Commit``, ``ETag`` (quoted sha256 of the bytes) and ``Content-Length``
  headers ``hf_hub_download`` stores it by.

``mode`` "gated" answers every request 401 with ``X-Error-Code: GatedRepo`` (a
gated model without an accepted licence); an unknown repository or file is a
404 with ``X-Error-Code`` RepoNotFound / EntryNotFound. ``requests`` records
(method, path) of every request. Use with ``HF_ENDPOINT=server.url``.

``if_xl_layout(path)`` writes a tiny random IF stage I in the file layout of
``DeepFloyd/IF-I-XL-v1.0`` (tests/tiny_models.py's models): fp32 and fp16
UNet safetensors, the T5 encoder sharded in fp32 and fp16 with both indexes,
``tokenizer/spiece.model`` without ``tokenizer.json``, and the folders and
``.bin`` files no loader reads (safety checker, watermarker, feature extractor).
"""
from __future__ import annotations

import hashlib
import http.server
import json
import pathlib
import shutil
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
  """``with HubServer({"DeepFloyd/IF-I-XL-v1.0": folder}) as s: ... s.url``."""

  def __init__(self, repos: dict, mode: str = "ok"):
    self.repos = {k: pathlib.Path(v) for k, v in repos.items()}
    self.mode = mode
    self.missing: set[str] = set()   # listed, but their resolve URL answers 404
    self.requests: list[tuple[str, str]] = []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):  # quiet
        pass

      def do_HEAD(self):  # noqa: N802
        outer._serve(self, body=False)

      def do_GET(self):  # noqa: N802
        outer._serve(self, body=True)

    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._httpd.server_address[1]}"

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self.stop()

  def stop(self) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  def _files(self, repo: str) -> list[str]:
    root = self.repos[repo]
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

  def _reply(self, h, status: int, data: bytes = b"", headers: dict | None = None,
             body: bool = True) -> None:
    h.send_response(status)
    for k, v in (headers or {}).items():
      h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if body and data:
      h.wfile.write(data)

  def _serve(self, h, body: bool) -> None:
    path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
    self.requests.append((h.command, path))
    if self.mode == "gated":
      return self._reply(h, 401, b'{"error":"Access to model is restricted."}',
                         {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, body)
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "models"]:
      repo = "/".join(parts[2:4])
      if repo not in self.repos:
        return self._reply(h, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
      info = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "gated": "manual",
              "siblings": [{"rfilename": f} for f in self._files(repo)]}
      return self._reply(h, 200, json.dumps(info).encode(),
                         {"Content-Type": "application/json"}, body)
    if len(parts) >= 5 and parts[2] == "resolve":
      repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
      if repo not in self.repos:
        return self._reply(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
      f = self.repos[repo] / rel
      if not f.is_file() or rel in self.missing:
        return self._reply(h, 404, b"", {"X-Error-Code": "EntryNotFound",
                                         "X-Repo-Commit": COMMIT}, body)
      data = f.read_bytes()
      etag = hashlib.sha256(data).hexdigest()
      return self._reply(h, 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"',
                                        "Content-Type": "application/octet-stream"}, body)
    return self._reply(h, 404, b"", {}, body)


# Files of the real repository no loader reads (names as in DeepFloyd/IF-I-XL-v1.0).
UNREAD = ("safety_checker/config.json", "safety_checker/model.safetensors",
          "safety_checker/model.fp16.safetensors", "safety_checker/pytorch_model.bin",
          "watermarker/config.json", "watermarker/diffusion_pytorch_model.safetensors",
          "feature_extractor/preprocessor_config.json", "unet/diffusion_pytorch_model.bin",
          "unet/diffusion_pytorch_model.fp16.bin", "text_encoder/pytorch_model.bin.index.json",
          "README.md", "LICENSE", ".gitattributes")


def if_xl_layout(path) -> pathlib.Path:
  """A tiny IF stage I in IF-I-XL-v1.0's file layout (see the module docstring)."""
  import copy
  import tiny_models
  root = pathlib.Path(path)
  unet = tiny_models.make_torch_if_unet(root / "unet")
  copy.deepcopy(unet).half().save_pretrained(str(root / "unet"), variant="fp16",
                                             safe_serialization=True)
  t5 = tiny_models.make_torch_t5(root, 1, variant="fp16")           # fp16 shards + index
  t5.save_pretrained(str(root / "fp32"), max_shard_size="20KB", safe_serialization=True)
  for f in (root / "fp32").iterdir():                                # + the fp32 ones
    if f.name != "config.json":
      shutil.copy(f, root / "text_encoder" / f.name)
  shutil.rmtree(root / "fp32")
  for extra in ("tokenizer.json", "added_tokens.json"):              # IF ships spiece.model,
    (root / "tokenizer" / extra).unlink(missing_ok=True)             # its config and map only
  (root / "scheduler").mkdir(parents=True, exist_ok=True)
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(tiny_models.IF_SCHEDULER))
  (root / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))
  for name in UNREAD:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"not read by any loader")
  return root
