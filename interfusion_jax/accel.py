"""XLA flags for accelerators: known compiler regressions, worked around at start-up.

XLA reads ``XLA_FLAGS`` once, when jax starts its first backend (the first
``jax.devices()``, array creation or jit call), not at ``import jax``. So a
flag set in ``os.environ`` before that moment takes effect, and one set
after it does not.

The one workaround today: jaxlib 0.10.2 up to 0.11.0 build LLVM's NVPTX
backend with ``-nvptx-allow-ftz-atomics`` off, so XLA's flush-to-zero GPU
kernels lower an f32 atomic add (every f32 scatter-add, e.g. the hash-grid
backward pass) to a compare-and-swap retry loop instead of one
``atom.add.f32``: hundreds to thousands of times slower when many threads
hit the same address (the coarse hash-grid levels). jaxlib 0.11.1 turns it
back on by default. Passing ``--xla_backend_extra_options=-nvptx-allow-ftz-atomics``
restores the fast instruction; the result differs only in that f32
denormals in atomically added values flush to zero, as in every other
flush-to-zero GPU kernel XLA emits.

The flag is set only where it is both needed and understood: an unknown
LLVM option in ``--xla_backend_extra_options`` aborts the process when the
backend starts, so outside the affected jaxlib range nothing is added.

``apply_xla_workarounds`` runs once at ``import interfusion_jax``; it never
starts a backend (no ``jax.devices()``), and it reads only installed package
metadata and ``importlib`` module specs. Set ``INTERFUSION_JAX_NO_XLA_WORKAROUNDS=1``
to leave ``XLA_FLAGS`` alone.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import re
import shlex
import sys
from typing import MutableMapping

logger = logging.getLogger(__name__)

OPT_OUT_ENV = "INTERFUSION_JAX_NO_XLA_WORKAROUNDS"
FTZ_ATOMICS = "-nvptx-allow-ftz-atomics"
# jaxlib versions whose NVPTX backend needs FTZ_ATOMICS: [first affected, first fixed).
FTZ_ATOMICS_AFFECTED = ((0, 10, 2), (0, 11, 1))
# Modules whose presence means jax can run on NVIDIA GPUs: the CUDA kernel
# plugins (``jax[cuda12]`` / ``jax[cuda13]``), their PJRT plugins (found by
# jax through the ``jax_plugins`` namespace package) and old jaxlib's
# built-in CUDA package. jax 0.10.2's own list: jax/_src/lib/__init__.py.
CUDA_PLUGIN_MODULES = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13",
                       "jax_plugins.xla_cuda12", "jaxlib.cuda")

# One XLA flag token setting the LLVM options: --flag=value or --flag="value".
_EXTRA_OPTIONS = re.compile(r'(?P<head>(?:^|(?<=\s))--?xla_backend_extra_options=)'
                            r'(?P<value>"[^"]*"|[^\s"]*)')
_TRUTHY = ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Decision:
  """What to do with ``XLA_FLAGS``.

  Attributes:
    xla_flags: the value ``XLA_FLAGS`` should have (the input when unchanged).
    changed: whether ``xla_flags`` differs from the input.
    reason: one human-readable sentence.
  """
  xla_flags: str
  changed: bool
  reason: str


def parse_version(version: str | None) -> tuple[int, ...] | None:
  """Leading numeric release of a PEP 440 version: "0.10.2.dev2026" -> (0, 10, 2); else None."""
  m = re.match(r"\s*(\d+(?:\.\d+)*)", version or "")
  return tuple(int(p) for p in m.group(1).split(".")) if m else None


def _extra_options(xla_flags: str) -> list[str] | None:
  """The LLVM options of the last ``--xla_backend_extra_options`` in ``xla_flags`` (XLA
  keeps the last), without values; None when the flag is absent."""
  matches = list(_EXTRA_OPTIONS.finditer(xla_flags))
  if not matches:
    return None
  value = matches[-1].group("value").strip('"')
  return [o.split("=", 1)[0].strip() for o in value.split(",") if o.strip()]


def decide_xla_flags(jaxlib_version: str | None, cuda_plugin: bool, xla_flags: str,
                     opt_out: bool) -> Decision:
  """Pure decision: should ``FTZ_ATOMICS`` be added to ``XLA_FLAGS``?

  Added only when not opted out, a CUDA plugin is installed, the jaxlib
  version is in ``FTZ_ATOMICS_AFFECTED`` and the user did not already name
  the option (with any value: an explicit ``-nvptx-allow-ftz-atomics=false``
  is respected). An existing ``--xla_backend_extra_options=V`` is kept and
  the option merged into it (``V,-nvptx-allow-ftz-atomics``, inside quotes
  when V is quoted), since XLA keeps only the last such flag; otherwise the
  flag is appended.

  Args:
    jaxlib_version: installed jaxlib version string (None: not installed).
    cuda_plugin: whether a CUDA plugin of jax is installed.
    xla_flags: the current ``XLA_FLAGS`` ("" when unset).
    opt_out: ``INTERFUSION_JAX_NO_XLA_WORKAROUNDS`` is set to a true value.

  Returns:
    ``Decision``.
  """
  if opt_out:
    return Decision(xla_flags, False, f"{OPT_OUT_ENV} is set")
  if not cuda_plugin:
    return Decision(xla_flags, False, "no CUDA plugin of jax is installed")
  v = parse_version(jaxlib_version)
  lo, hi = FTZ_ATOMICS_AFFECTED
  if v is None:
    return Decision(xla_flags, False, f"jaxlib's version is unknown ({jaxlib_version!r})")
  if not lo <= v < hi:
    return Decision(xla_flags, False,
                    f"jaxlib {jaxlib_version} compiles f32 atomic adds natively")
  options = _extra_options(xla_flags)
  if options is not None and FTZ_ATOMICS in options:
    return Decision(xla_flags, False, f"XLA_FLAGS already names {FTZ_ATOMICS}")
  if options is None:
    new = f"{xla_flags} --xla_backend_extra_options={FTZ_ATOMICS}".strip()
  else:
    last = list(_EXTRA_OPTIONS.finditer(xla_flags))[-1]
    value = last.group("value")
    quoted = value.startswith('"')
    inner = value.strip('"')
    merged = f"{inner},{FTZ_ATOMICS}" if inner else FTZ_ATOMICS
    merged = f'"{merged}"' if quoted else merged
    new = xla_flags[:last.start("value")] + merged + xla_flags[last.end("value"):]
  return Decision(new, True,
                  f"jaxlib {jaxlib_version} on NVIDIA GPUs lowers f32 atomic adds to "
                  f"compare-and-swap loops without {FTZ_ATOMICS}")


def without_option(xla_flags: str, option: str = FTZ_ATOMICS) -> str:
  """``xla_flags`` with ``option`` (any value) taken out of its last
  ``--xla_backend_extra_options``; the flag itself goes when nothing is left.
  Other flags are kept verbatim (benchmarks time "without" against "with")."""
  matches = list(_EXTRA_OPTIONS.finditer(xla_flags))
  if not matches:
    return xla_flags
  last = matches[-1]
  value = last.group("value")
  rest = [o for o in value.strip('"').split(",") if o.strip() and o.split("=", 1)[0].strip() != option]
  if not rest:
    return (xla_flags[:last.start()] + xla_flags[last.end():]).strip()
  joined = ",".join(rest)
  joined = f'"{joined}"' if value.startswith('"') else joined
  return xla_flags[:last.start("value")] + joined + xla_flags[last.end("value"):]


def installed_jaxlib_version() -> str | None:
  """jaxlib's version from its installed metadata (jaxlib is not imported)."""
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def cuda_plugin_installed() -> bool:
  """Whether any of ``CUDA_PLUGIN_MODULES`` can be found (none is imported)."""
  for name in CUDA_PLUGIN_MODULES:
    try:
      if importlib.util.find_spec(name) is not None:
        return True
    except (ImportError, ValueError):  # a missing parent package
      continue
  return False


def started_backends() -> set[str] | None:
  """Platforms of the jax backends already started ("cpu", "cuda", ...); None if none.

  Reads jax's backend cache only when jax is already imported (importing
  it here would cost start-up time and start nothing). jax 0.10.2 has no
  public way to list started backends without starting them (every public
  ``jax.devices``/``jax.extend.backend.backends`` call initialises), so
  the private ``jax._src.xla_bridge._backends`` dict is read, guarded by
  ``getattr`` so a future rename disables the check instead of failing.
  """
  xb = sys.modules.get("jax._src.xla_bridge")
  if xb is None:
    return None
  backends = getattr(xb, "_backends", None)
  if isinstance(backends, dict):
    return set(backends) or None
  started = getattr(xb, "backends_are_initialized", None)
  return {"unknown"} if started is not None and started() else None


_RESULT: Decision | None = None


def apply_xla_workarounds(environ: MutableMapping[str, str] | None = None, *,
                          force: bool = False) -> Decision:
  """Sets the workaround flags in ``environ["XLA_FLAGS"]`` (default ``os.environ``), once.

  Decides with ``decide_xla_flags`` from the installed jaxlib, the CUDA
  plugins and ``environ``. If a change is due and no backend has started,
  ``XLA_FLAGS`` is updated and one INFO line logged. If a CUDA (or unknown)
  backend already started without it, nothing can take effect any more:
  one WARNING gives the exact command line to rerun with.

  Args:
    environ: the environment to read and update.
    force: decide again even if this already ran in this process (tests).

  Returns:
    The ``Decision`` (the first one, on later calls without ``force``).
  """
  global _RESULT
  if _RESULT is not None and not force:
    return _RESULT
  env = os.environ if environ is None else environ
  opt_out = env.get(OPT_OUT_ENV, "").strip().lower() in _TRUTHY
  current = env.get("XLA_FLAGS", "")
  decision = decide_xla_flags(installed_jaxlib_version() if not opt_out else None,
                              cuda_plugin_installed() if not opt_out else False,
                              current, opt_out)
  _RESULT = decision = _apply(decision, env)
  return decision


def _apply(decision: Decision, env: MutableMapping[str, str]) -> Decision:
  if not decision.changed:
    return decision
  started = started_backends()
  if started and not started <= {"cpu", "tpu", "rocm"}:
    cmd = shlex.join(getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv)
    logger.warning(
        "jax's GPU backend started before interfusion_jax could set %s (%s); f32 scatter-adds "
        "will be slow. Rerun as: XLA_FLAGS=%s %s", FTZ_ATOMICS, decision.reason,
        shlex.quote(decision.xla_flags), cmd)
    return dataclasses.replace(decision, changed=False)
  if started:  # only non-NVIDIA backends run in this process: nothing to fix
    return dataclasses.replace(decision, changed=False)
  env["XLA_FLAGS"] = decision.xla_flags
  logger.info("Set XLA_FLAGS=%r: %s (opt out with %s=1).", decision.xla_flags,
              decision.reason, OPT_OUT_ENV)
  return decision
