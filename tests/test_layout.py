"""The code's shape: the layer rule, the import graph, one home per equation and
tests that mirror modules.

* ``tools/import_graph.py`` finds no import cycle (imports inside functions
  included), no library module importing a command line, and no
  function-local import of a project module without a ``# lazy:`` reason.
* Each PAPER.md equation is implemented by exactly one function, whose
  docstring says ``Implements PAPER.md Eq. N``.
* The whole training step lives in ``stage2/step.py``, which does no file I/O.
"""
import ast
import importlib.util
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "interfusion_jax"


def _import_graph():
  spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_import_graph_obeys_the_layer_rule():
  ig = _import_graph()
  modules, edges = ig.collect(ROOT)
  assert "interfusion_jax.stage2.step" in modules and len(modules) > 40
  v = ig.violations(edges)
  assert v["cycles"] == [], v["cycles"]
  assert v["cli_imports"] == [], v["cli_imports"]
  assert v["upward_imports"] == [], v["upward_imports"]
  assert v["local_imports"] == [], v["local_imports"]


def test_import_graph_finds_a_planted_cycle_and_a_cli_import(tmp_path):
  """The checker itself: a two-module cycle through a function-local import, a
  library module importing a command line and stage2 importing evaluation are
  all reported."""
  pkg = tmp_path / "interfusion_jax"
  (pkg / "lib").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "lib" / "__init__.py").write_text("")
  (pkg / "lib" / "a.py").write_text("from interfusion_jax.lib import b\n")
  (pkg / "lib" / "b.py").write_text("def f():\n  from interfusion_jax.lib import a\n")
  (pkg / "train.py").write_text("")
  (pkg / "lib" / "c.py").write_text("from interfusion_jax import train\n")
  for sub in ("stage2", "evaluation"):
    (pkg / sub).mkdir()
    (pkg / sub / "__init__.py").write_text("")
  (pkg / "evaluation" / "report.py").write_text("")
  (pkg / "stage2" / "outputs.py").write_text("from interfusion_jax.evaluation import report\n")
  ig = _import_graph()
  v = ig.violations(ig.collect(tmp_path)[1])
  assert [(m, t) for m, t, _ in v["upward_imports"]] == [("interfusion_jax.stage2.outputs",
                                                          "interfusion_jax.evaluation.report")]
  assert v["cycles"] == [["interfusion_jax.lib.a", "interfusion_jax.lib.b"]]
  assert [(m, t) for m, t, _ in v["cli_imports"]] == [("interfusion_jax.lib.c",
                                                       "interfusion_jax.train")]
  assert [(m, t) for m, t, _ in v["local_imports"]] == [("interfusion_jax.lib.b",
                                                         "interfusion_jax.lib.a")]


def _functions():
  for path in sorted(PKG.rglob("*.py")):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield path.relative_to(ROOT).as_posix(), node.name, ast.get_docstring(node) or ""


def test_each_equation_has_exactly_one_home():
  homes = {}
  for path, name, doc in _functions():
    for n in re.findall(r"Implements PAPER\.md Eq\. (\d+)", doc):
      homes.setdefault(int(n), []).append(f"{path}:{name}")
  assert homes == {
      3: ["interfusion_jax/stage2/step.py:human_sds"],
      4: ["interfusion_jax/stage2/losses.py:human_geometry_loss"],
      5: ["interfusion_jax/stage2/step.py:object_sds"],
      6: ["interfusion_jax/nerf/render.py:composite_two_fields"],
      7: ["interfusion_jax/stage2/losses.py:object_geometry_loss"],
      8: ["interfusion_jax/stage2/step.py:total_loss"],
  }, homes


def test_the_step_file_does_no_io():
  tree = ast.parse((PKG / "stage2" / "step.py").read_text())
  names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
  attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
  imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
              for a in n.names}
  assert not {"open", "print"} & names
  assert not {"write_text", "write_bytes", "save", "savez", "device_get"} & attrs
  assert not {"os", "pathlib", "run_io", "checkpoint", "absl", "sys"} & imported
  # camera sampling ... optimiser update, all in this one file
  defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
  assert {"derived_cameras", "render_views", "sds_terms", "human_sds", "object_sds",
          "geometry_terms", "regulariser_terms", "total_loss", "train_step",
          "make_optimizer"} <= defined


def test_command_line_modules_only_parse_flags_and_call_the_library():
  """train/render/export hold no training, rendering or mesh code of their own."""
  for name in ("train", "render", "export"):
    tree = ast.parse((PKG / f"{name}.py").read_text())
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert len(funcs) <= 4, (name, funcs)
    lines = len((PKG / f"{name}.py").read_text().splitlines())
    assert lines < 90, (name, lines)


# Tests of the code's shape as a whole, not of one module.
CROSS_CUTTING = frozenset({"test_layout.py", "test_drills.py"})
# Script folders beside the package whose scripts have tests of their own.
SCRIPT_DIRS = ("examples", "tools", "benchmarks")


def module_stems(root: pathlib.Path) -> set[str]:
  """Every module's test name stem: ``nerf/hashgrid.py`` -> "nerf_hashgrid",
  ``train.py`` -> "train", ``examples/render_demo.py`` -> "examples_render_demo"."""
  stems = set()
  for path in (root / "interfusion_jax").rglob("*.py"):
    rel = path.relative_to(root / "interfusion_jax").with_suffix("")
    if rel.name not in ("__init__", "__main__"):
      stems.add("_".join(rel.parts))
  for d in SCRIPT_DIRS:
    stems |= {f"{d}_{p.stem}" for p in (root / d).glob("*.py")}
  return stems


def owner_module(test_file: str, stems: set[str]) -> str | None:
  """The module a test file is named after (``test_<module stem>[_<topic>].py``),
  the longest stem that matches; None when it names no module."""
  name = test_file[len("test_"):-len(".py")]
  owners = [s for s in stems if name == s or name.startswith(s + "_")]
  return max(owners, key=len) if owners else None


def test_tests_mirror_modules():
  """tests/test_<package>_<module>[_<topic>].py or tests/test_<module>[_<topic>].py
  (docs/testing.md): every test file names the one module it tests."""
  stems = module_stems(ROOT)
  assert {"nerf_hashgrid", "stage2_step", "train", "evaluation_report"} <= stems
  unnamed = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
             if p.name not in CROSS_CUTTING and owner_module(p.name, stems) is None]
  assert unnamed == [], unnamed


def test_test_names_are_checked():
  """The checker itself on planted names."""
  stems = {"nerf_render", "nerf_render_extra", "train", "stage2_step"}
  assert owner_module("test_nerf_render_official.py", stems) == "nerf_render"
  assert owner_module("test_nerf_render_extra_x.py", stems) == "nerf_render_extra"
  assert owner_module("test_train_smoke.py", stems) == "train"
  assert owner_module("test_train.py", stems) == "train"
  assert owner_module("test_render.py", stems) is None          # which render?
  assert owner_module("test_step.py", stems) is None            # stage2_step
