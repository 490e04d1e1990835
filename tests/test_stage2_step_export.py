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

The default ``field.hashgrid_backend="auto"`` chooses per lowered platform
(``jax.lax.platform_dependent``): the CPU kernel on the CPU, pure JAX on GPU
and TPU, so a CPU host exports the default step for both (before, "auto"
asked ``jax.default_backend()`` and embedded the CPU-only custom call). The
``hashgrid_backend=jax`` variants check the same without a CPU branch.

Table scatters: ``hashgrid.count_table_scatters`` counts the scatter ops whose
result is a hash-grid table, on the step exported for "cuda" alone (a
two-platform module holds a ``stablehlo.case`` per platform-dependent op and
repeats the scatters). Measured on the ``riding_a_bike`` step with
``hashgrid_backend=jax``, jax 0.10.2: 68 for "cuda" (and 68 for "tpu") before
the hash grid's backward served the analytic normals, 8 after.

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
          + f"    %5 = stablehlo.add %1, %1 : tensor<{n}x2xf32>\n")
  assert hashgrid.count_table_scatters(text, n) == 2
  assert hashgrid.count_table_scatters(text, n + 1) == 1
  assert hashgrid.count_table_scatters(text, 7) == 0


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
  assert hashgrid.count_table_scatters(text, rows) == k
  batched = jax.jit(jax.vmap(f, in_axes=(0, None, None))).lower(
      jnp.zeros((4, rows, 2)), jnp.zeros(5, jnp.int32), jnp.ones((5, 2))).as_text()
  assert hashgrid.count_table_scatters(batched, rows) == k


# ----------------------------------------------------------------------------
# The exports.


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


@pytest.mark.slow
def test_paper_step_exports_for_gpu_and_tpu_default_config():
  _check_portable(_paper_step_text(None))


@pytest.mark.slow
def test_group_step_exports_for_gpu_and_tpu_default_config():
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
def test_paper_step_table_scatters():
  """Scatters into a hash-grid table in the paper step exported for "cuda" (jax
  grid): 68 before the hash grid's backward served the analytic normals; one
  splat per field, block of levels and use since (8)."""
  text = _paper_step_text(JAX_GRID, platforms=("cuda",))
  _check_portable(text)
  n = hashgrid.count_table_scatters(text, hashgrid.HashGridSpec().total_rows)
  assert 0 < n <= MAX_TABLE_SCATTERS, n   # the table gradient is a scatter-add
