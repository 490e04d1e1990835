"""Model weights by local folder or Hugging Face hub id (``DeepFloyd/IF-I-XL-v1.0``).

``resolve(ref, layout)`` turns what the user wrote in ``guidance.weights_dir``,
``pose.clip_dir`` or evaluate's ``--clip_dir`` into a local folder:

* an existing folder (or anything that looks like a path: ``/``, ``.``, ``~``
  first, or not of the form ``owner/name``) is returned as it is, and nothing
  touches the network;
* ``owner/name`` (optionally ``owner/name@revision``) that is not a local folder
  is a hub model id: the repository's file list is read once, only the files
  the loaders read are chosen (``select_files``: per model folder its config and
  one weights set, fp16 safetensors first, then fp32 safetensors, then Flax
  msgpack; the small tokenizer / scheduler files), and each is fetched with
  ``huggingface_hub.hf_hub_download`` into the usual hub cache (``HF_HOME`` /
  ``HF_HUB_CACHE``), so a second run reads the cache. ``HF_TOKEN`` (or a
  ``huggingface-cli login``) authenticates; ``HF_ENDPOINT`` picks the server.
* With ``HF_HUB_OFFLINE=1`` an id resolves to its cached snapshot, never the
  network.

Every failure is a ``HubError`` (a ``FileNotFoundError``) with one line that
says what to do: a gated model whose licence was not accepted (HTTP 401/403),
an unknown id (404), a file the repository lacks (404), no network, offline
mode with nothing cached.
"""
from __future__ import annotations

import functools
import logging
import os
import pathlib
import re
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

DIFFUSERS = "diffusers"   # a diffusers pipeline: unet/ (vae/) text_encoder/ tokenizer/ scheduler/
CLIP = "clip"             # a transformers CLIP model with Flax weights at the top level
LAYOUTS = (DIFFUSERS, CLIP)

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_MODEL_FOLDERS = ("unet", "vae", "text_encoder")
_SMALL_FOLDERS = ("tokenizer", "scheduler")
_WEIGHT_BASES = ("diffusion_pytorch_model", "model")
_FLAX = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
_CLIP_FILES = ("config.json", "flax_model.msgpack", "tokenizer.json", "vocab.json", "merges.txt",
               "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


class HubError(FileNotFoundError):
  """Weights named by a hub id could not be found, fetched or read from the cache."""


def is_hub_id(ref: str) -> bool:
  """True for ``owner/name[@revision]`` that is not an existing local path."""
  ref = str(ref).strip()
  if not ref or ref[0] in "/.~" or os.path.exists(os.path.expanduser(ref)):
    return False
  return bool(_ID.match(ref))


def split_id(ref: str) -> tuple[str, str]:
  """``owner/name@rev`` -> ("owner/name", "rev"); the revision defaults to "main"."""
  repo, _, rev = str(ref).strip().partition("@")
  return repo, rev or "main"


def _weights_set(folder: str, names: set[str]) -> list[str]:
  """One weights set of ``folder`` in the order the loaders accept it, smallest first:
  fp16 safetensors (single, or a sharded index + its shards), fp32 safetensors,
  Flax msgpack. [] when the folder has none."""
  def shards(prefix: str) -> list[str]:
    pat = re.compile(re.escape(f"{folder}/{prefix}") + r"-\d+-of-\d+\.safetensors$")
    return sorted(n for n in names if pat.match(n))
  for variant in (".fp16", ""):
    for base in _WEIGHT_BASES:
      single = f"{folder}/{base}{variant}.safetensors"
      if single in names:
        return [single]
      index = (f"{folder}/{base}.safetensors.index{variant}.json" if variant
               else f"{folder}/{base}.safetensors.index.json")
      if index in names and shards(base + variant):
        return [index] + shards(base + variant)
  for flax in _FLAX:
    if f"{folder}/{flax}" in names:
      return [f"{folder}/{flax}"]
  return []


def select_files(names: Iterable[str], layout: str) -> list[str]:
  """The files of a repository listing that the loaders of ``layout`` read.

  Args:
    names: every file path of the repository (``rfilename``).
    layout: ``DIFFUSERS`` (``model_index.json``; config + one weights set of
      ``unet/``, ``vae/``, ``text_encoder/``; all of ``tokenizer/`` and
      ``scheduler/``) or ``CLIP`` (config, ``flax_model.msgpack``, tokenizer and
      preprocessor files at the top level).

  Returns:
    sorted paths; safety checkers, watermarkers, ``.bin`` and 8-bit files never.
  """
  names = {n for n in names if "8bit" not in n}
  if layout == CLIP:
    return sorted(n for n in _CLIP_FILES if n in names)
  if layout != DIFFUSERS:
    raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
  out = {"model_index.json"} & names
  for folder in _MODEL_FOLDERS:
    if f"{folder}/config.json" in names:
      out |= {f"{folder}/config.json", *_weights_set(folder, names)}
  for folder in _SMALL_FOLDERS:
    out |= {n for n in names if n.startswith(folder + "/") and n.count("/") == 1
            and n.endswith((".json", ".txt", ".model"))}
  return sorted(out)


def _required(layout: str) -> tuple[str, ...]:
  return ("unet/config.json", "scheduler/scheduler_config.json") if layout == DIFFUSERS else (
      "config.json",)


def _status(err: Exception) -> int | None:
  resp = getattr(err, "response", None)
  return getattr(resp, "status_code", None)


def _error_code(err: Exception) -> str:
  resp = getattr(err, "response", None)
  return str(getattr(resp, "headers", {}).get("X-Error-Code", "")) if resp is not None else ""


def _message(err: Exception, repo: str, rev: str, endpoint: str, what: str) -> str:
  """One line for a hub failure, saying what to do."""
  from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  status, code = _status(err), _error_code(err)
  page = f"{endpoint.rstrip('/')}/{repo}"
  token = "a token was sent and refused" if _token() else "no token was sent"
  if isinstance(err, hf_errors.GatedRepoError) or (status in (401, 403) and code != "RepoNotFound"):
    return (f"{what}: {repo} is gated ({status}, {token}): log in at {page}, accept its "
            "licence, then make a read token available (HF_TOKEN=hf_... or `huggingface-cli "
            "login`) and run again; or pass a local folder.")
  if isinstance(err, hf_errors.RevisionNotFoundError):
    return f"{what}: {repo} has no revision {rev!r} ({page}); use another @revision or none."
  if isinstance(err, hf_errors.EntryNotFoundError):
    return (f"{what}: {repo}@{rev} lacks a file the loader reads ({status}: "
            f"{getattr(err.response, 'url', '')}); pass a complete local folder instead.")
  if isinstance(err, hf_errors.RepositoryNotFoundError) or status == 404:
    return (f"{what}: {repo!r} is neither a local folder nor a model on {endpoint} ({status}, "
            f"{token}); check the spelling, give a private model's HF_TOKEN, or pass an "
            "existing folder.")
  return (f"{what}: could not fetch {repo} from {endpoint} ({type(err).__name__}: "
          f"{str(err).splitlines()[0] if str(err) else ''}); check the network, proxy and "
          "HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use a copy fetched before, or pass a local "
          "folder.")


def _token() -> str | None:
  from huggingface_hub import get_token  # pylint: disable=g-import-not-at-top
  return get_token()


def _cached(repo: str, rev: str) -> pathlib.Path | None:
  from huggingface_hub import snapshot_download  # pylint: disable=g-import-not-at-top
  from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  try:
    return pathlib.Path(snapshot_download(repo, revision=rev, local_files_only=True))
  except (hf_errors.LocalEntryNotFoundError, FileNotFoundError, ValueError):
    return None


def _network_errors() -> tuple[type, ...]:
  import requests  # pylint: disable=g-import-not-at-top
  return (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


@functools.lru_cache(maxsize=None)
def _fetch(repo: str, rev: str, layout: str, what: str) -> pathlib.Path:
  from huggingface_hub import HfApi, constants, hf_hub_download  # pylint: disable=g-import-not-at-top
  from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
  if constants.HF_HUB_OFFLINE:
    snap = _cached(repo, rev)
    if snap is None:
      raise HubError(
          f"{what}: HF_HUB_OFFLINE=1 and {repo}@{rev} is not in the hub cache "
          f"({constants.HF_HUB_CACHE}): run once without HF_HUB_OFFLINE to fetch it (or with "
          "the HF_HOME it was fetched into), or pass a local folder.")
    log.info("%s: %s from the hub cache (offline), %s", what, repo, snap)
    return snap
  try:
    info = HfApi(endpoint=endpoint).model_info(repo, revision=rev)
    names = [s.rfilename for s in (info.siblings or [])]
    files = select_files(names, layout)
    missing = [f for f in _required(layout) if f not in files]
    if missing:
      raise HubError(
          f"{what}: {repo}@{rev} has no {', '.join(missing)}, so it is not a "
          f"{'diffusers text-to-image pipeline' if layout == DIFFUSERS else 'CLIP model'}; "
          "pass another id or a local folder.")
    log.warning("%s: fetching %d files of %s@%s from %s into %s (only the files read: %s)",
                what, len(files), repo, rev, endpoint, constants.HF_HUB_CACHE,
                ", ".join(files))
    paths = [hf_hub_download(repo, f, revision=rev, endpoint=endpoint) for f in files]
  except HubError:
    raise
  except hf_errors.HfHubHTTPError as e:
    raise HubError(_message(e, repo, rev, endpoint, what)) from e
  except _network_errors() as e:
    snap = _cached(repo, rev)
    if snap is not None:
      log.warning("%s: %s unreachable (%s); using the cached %s", what, endpoint,
                  type(e).__name__, snap)
      return snap
    raise HubError(_message(e, repo, rev, endpoint, what)) from e
  first = pathlib.Path(paths[0])
  return first.parents[len(pathlib.PurePosixPath(files[0]).parts) - 1]


def resolve(ref: str, layout: str, *, what: str = "weights") -> str:
  """A local folder for ``ref``: itself when it is not a hub id, else the cached
  snapshot of the id, fetched first when not offline (see the module docstring).

  Args:
    ref: a local folder or ``owner/name[@revision]``.
    layout: ``DIFFUSERS`` or ``CLIP`` (which files are fetched).
    what: the setting's name for messages, e.g. "config.guidance.weights_dir".

  Returns:
    the folder as a string ("" stays "").

  Raises:
    HubError: one line saying what to do.
  """
  ref = str(ref).strip()
  if not is_hub_id(ref):
    return ref
  repo, rev = split_id(ref)
  return str(_fetch(repo, rev, layout, what))

