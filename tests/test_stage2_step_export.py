"""stage2/step.py exports for GPU and TPU: the paper step and the sweep's group step.

Both are exported with ``jax.export.export(..., platforms=("cuda", "tpu"))``
from this CPU host, on abstract inputs only: the IF-I-XL UNet's parameters
are ``jax.eval_shape(model.init_weights, key)`` in bf16 (what
``unet_dtype="auto"`` picks on GPU/TPU), the T5 prompt table [4, 77, 4096]
and the anchor are ``jax.ShapeDtypeStruct``s, the state is ``jax.eval_shape``
of ``step.init_state`` (``bench_step_device.abstract_step`` builds them;
nothing of IF-XL size is allocated). An export fails when an op has no
lowering for one of the platforms, and ``jax.export`` refuses any
``custom_call`` target without a compatibility guarantee, the CPU-only
hash-grid kernel (``ifj_hashgrid_*``) among them; the tests also look for
that target in the text.

With the default ``field.hashgrid_backend="auto"``, a hash grid that picks its
backend from ``jax.default_backend()`` embeds the CPU kernel when exported
from a CPU host: that case is a strict xfail until "auto" chooses per lowered
platform (``_auto_embeds_cpu_kernel`` probes it on a small grid). The
``hashgrid_backend=jax`` variants pass today.

Table scatters: ``count_table_scatters`` counts the ``stablehlo.scatter`` ops
whose result is a hash-grid table (``[..., total_rows, F]`` f32), on the step
exported for "cuda" alone (a two-platform module holds a ``stablehlo.case``
per platform-dependent op and repeats the scatters: 136 for ("cuda", "tpu")).
Measured on the ``riding_a_bike`` step with ``hashgrid_backend=jax``, jax
0.10.2: 68 for "cuda" (and 68 for "tpu"). The target is <= 12, an xfail
(not strict) until the hash grid's backward splats once per block of levels.

Time on 2 CPU cores, alone: 54 s for the module (the abstract step built
twice, ~4 s each; five exports of 8-11 s each), hence ``slow`` on the export
tests; the two parser tests take under a second.
"""
from __future__ import annotations

import functools
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_step_device  # noqa: E402
from interfusion_jax.nerf import hashgrid  # noqa: E402
from interfusion_jax.stage2 import loop  # noqa: E402
from interfusion_jax.stage2 import step as step_lib  # noqa: E402

PLATFORMS = ("cuda", "tpu")
VARIANT = "riding_a_bike"
CPU_KERNEL = "ifj_hashgrid"
MAX_TABLE_SCATTERS = 12
JAX_GRID = {"field.hashgrid_backend": "jax"}


# ----------------------------------------------------------------------------
# Reading StableHLO text.

_TYPE = r"tensor<[^<>]*>"


def count_table_scatters(hlo_text: str, total_rows: int) -> int:
  """Number of ``stablehlo.scatter`` ops whose result is a hash-grid table.

  A table is an f32 tensor whose last two dimensions are ``[total_rows, F]``
  (leading dimensions allowed: a vmapped step stacks tables). A scatter is
  printed in the generic form ``%r = "stablehlo.scatter"(...) ({ region })
  : (operand types) -> result type(s)``; its signature is the first line after
  it that starts with ``})``.

  Args:
    hlo_text: StableHLO module text (``exported.mlir_module()``).
    total_rows: ``HashGridSpec.total_rows`` of the table.

  Returns:
    The count.
  """
  table = re.compile(rf"tensor<(?:\d+x)*{int(total_rows)}x\d+xf32>")
  lines = hlo_text.splitlines()
  count = 0
  for i, line in enumerate(lines):
    if '"stablehlo.scatter"(' not in line:
      continue
    for sig in lines[i + 1:]:
      if sig.lstrip().startswith("})"):
        results = sig.split("->", 1)[1] if "->" in sig else ""
        count += any(table.fullmatch(t) for t in re.findall(_TYPE, results))
        break
  return count


def custom_call_targets(hlo_text: str) -> set[str]:
  """The ``stablehlo.custom_call`` targets of a module's text."""
  return set(re.findall(r"stablehlo\.custom_call\s+@([\w.$-]+)", hlo_text))


def test_count_table_scatters_reads_generic_scatters():
  """Against a module written by hand: two table scatters (one batched), a
  scatter into another shape, a table-shaped op that is not a scatter."""
  n = 4913
  scatter = ('    %{r} = "stablehlo.scatter"(%a, %b, %c) <{{indices_are_sorted = false}}> ({{\n'
             '    ^bb0(%x: tensor<f32>, %y: tensor<f32>):\n'
             '      %s = stablehlo.add %x, %y : tensor<f32>\n'
             '      stablehlo.return %s : tensor<f32>\n'
             '    }}) : ({t}, tensor<8x1xi32>, tensor<8x2xf32>) -> {t}\n')
  text = (scatter.format(r=1, t=f"tensor<{n}x2xf32>")
          + scatter.format(r=2, t=f"tensor<3x{n}x2xf32>")
          + scatter.format(r=3, t=f"tensor<{n + 1}x2xf32>")
          + scatter.format(r=4, t=f"tensor<{n}x2xbf16>")
          + f"    %5 = stablehlo.add %1, %1 : tensor<{n}x2xf32>\n")
  assert count_table_scatters(text, n) == 2
  assert count_table_scatters(text, n + 1) == 1
  assert count_table_scatters(text, 7) == 0


def test_count_table_scatters_on_a_lowered_scatter_add():
  """XLA's own text: k ``.at[].add`` into a [rows, 2] table and one into [rows, 3, 2]."""
  rows, k = 1000, 3

  def f(table, idx, upd):
    for i in range(k):
      table = table.at[idx + i].add(upd)
    other = jnp.zeros((rows + 1, 2)).at[idx].add(upd)
    return table, other

  text = jax.jit(f).lower(jnp.zeros((rows, 2)), jnp.zeros(5, jnp.int32),
                          jnp.ones((5, 2))).as_text()
  assert count_table_scatters(text, rows) == k
  batched = jax.jit(jax.vmap(f, in_axes=(0, None, None))).lower(
      jnp.zeros((4, rows, 2)), jnp.zeros(5, jnp.int32), jnp.ones((5, 2))).as_text()
  assert count_table_scatters(batched, rows) == k


# ----------------------------------------------------------------------------
# The exports.


def _auto_embeds_cpu_kernel() -> bool:
  """Whether hash_encode with backend "auto", exported for GPU/TPU from this
  host, still calls the CPU kernel (a small grid; the safety check is lifted
  for the kernel's targets so the text can be read)."""
  spec = hashgrid.HashGridSpec(n_levels=2, log2_hashmap_size=10, backend="auto")
  params = jax.eval_shape(lambda k: hashgrid.init_hashgrid(k, spec), jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((64, 3), jnp.float32)
  checks = [jax.export.DisabledSafetyCheck.custom_call(f"{CPU_KERNEL}_{d}")
            for d in ("fwd", "bwd")]
  fn = jax.jit(jax.grad(lambda p, x: jnp.sum(hashgrid.hash_encode(p, x, spec))))
  exp = jax.export.export(fn, platforms=PLATFORMS, disabled_checks=checks)(params, x)
  return CPU_KERNEL in exp.mlir_module()


def _export(fn, *args, platforms=PLATFORMS) -> str:
  exp = jax.export.export(fn, platforms=platforms)(*args)
  assert exp.platforms == tuple(platforms)
  return exp.mlir_module()


def _check_portable(text: str) -> None:
  assert CPU_KERNEL not in text
  assert not {t for t in custom_call_targets(text) if t.startswith(CPU_KERNEL)}


@functools.lru_cache(maxsize=None)
def _abstract(backend: str | None) -> dict:
  """``abstract_step`` of the variant, with ``field.hashgrid_backend`` set when given."""
  overrides = {"field.hashgrid_backend": backend} if backend else None
  return bench_step_device.abstract_step(VARIANT, overrides=overrides)


def _paper_step_text(overrides, platforms=PLATFORMS) -> str:
  a = _abstract((overrides or {}).get("field.hashgrid_backend"))
  assert a["guidance"]["unet_dtype"] == "bfloat16"
  assert a["frozen"]["text"]["human"].shape == (4, 77, 4096)
  assert a["config"].field.hashgrid_backend == (overrides or {}).get(
      "field.hashgrid_backend", "auto")
  return _export(jax.jit(step_lib.make_train_step(a["spec"])), a["state"], a["frozen"], a["key"],
                 platforms=platforms)


def _group_step_text(overrides, scenes: int = 2) -> str:
  """The sweep's group step as ``loop.compile_group`` builds it (vmap over
  ``loop.FROZEN_AXES``, one device), exported on stacked abstract inputs."""
  a = _abstract((overrides or {}).get("field.hashgrid_backend"))
  stack = lambda tree: jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct((scenes,) + tuple(s.shape), s.dtype), tree)
  frozen = {k: (v if loop.FROZEN_AXES[k] is None else stack(v)) for k, v in a["frozen"].items()}
  compiled = loop.compile_group(a["spec"], scenes, num_devices=1)
  return _export(compiled.step, stack(a["state"]), frozen, stack(a["key"]))


def _xfail_if_auto_is_cpu_bound(request) -> None:
  if _auto_embeds_cpu_kernel():
    request.applymarker(pytest.mark.xfail(
        strict=True, reason='hashgrid_backend="auto" decides by jax.default_backend() and '
        "embeds the CPU-only ifj_hashgrid custom call in a GPU/TPU export"))


@pytest.mark.slow
def test_paper_step_exports_for_gpu_and_tpu_default_config(request):
  _xfail_if_auto_is_cpu_bound(request)
  _check_portable(_paper_step_text(None))


@pytest.mark.slow
def test_group_step_exports_for_gpu_and_tpu_default_config(request):
  _xfail_if_auto_is_cpu_bound(request)
  _check_portable(_group_step_text(None))


@pytest.fixture(scope="module")
def paper_step_jax_grid() -> str:
  return _paper_step_text(JAX_GRID)


@pytest.mark.slow
def test_paper_step_exports_with_the_jax_hash_grid(paper_step_jax_grid):
  _check_portable(paper_step_jax_grid)
  assert custom_call_targets(paper_step_jax_grid) == set()


@pytest.mark.slow
def test_group_step_exports_with_the_jax_hash_grid():
  text = _group_step_text(JAX_GRID)
  _check_portable(text)
  # The two scenes' tables are stacked: the vmapped step scatters into [2, ..., rows, F].
  rows = hashgrid.HashGridSpec().total_rows
  assert re.search(rf"tensor<2x(?:\d+x)*{rows}x2xf32>", text)


@pytest.mark.slow
def test_paper_step_table_scatters(request):
  """Scatters into a hash-grid table in the paper step exported for "cuda" (jax
  grid): 68 measured before the hash grid splats once per block; at most 12 after."""
  text = _paper_step_text(JAX_GRID, platforms=("cuda",))
  _check_portable(text)
  n = count_table_scatters(text, hashgrid.HashGridSpec().total_rows)
  assert n > 0   # the table gradient is a scatter-add
  if n > MAX_TABLE_SCATTERS:
    request.applymarker(pytest.mark.xfail(
        strict=False, reason=f"{n} table scatters; the hash grid's backward splats per "
        "level group and use"))
  assert n <= MAX_TABLE_SCATTERS, n
