"""Import graph of the interfusion_jax package: cycles and layer-rule violations.

Usage::

    python tools/import_graph.py            # summary; exit 1 on a violation
    python tools/import_graph.py --edges    # also print every edge

Counts every ``import`` / ``from ... import`` of a project module, at module
level or inside a function (function-local imports are listed apart). A
function-local import of a project module is allowed only where the line
carries a ``# lazy: <reason>`` comment (an optional heavy dependency).
Command-line modules are ``interfusion_jax.{train,render,export,sweep,evaluate,
report,pose.__main__}``: no other project module may import them. The layers
(docs/ARCHITECTURE.md) are ``LAYER_RULES``: a package never imports one above
it, and ``stage2/`` (making runs) never imports ``evaluation/`` (reading them).
"""
from __future__ import annotations

import argparse
import ast
import pathlib
import sys

PACKAGE = "interfusion_jax"
CLI_MODULES = frozenset({
    f"{PACKAGE}.train", f"{PACKAGE}.render", f"{PACKAGE}.export", f"{PACKAGE}.sweep",
    f"{PACKAGE}.evaluate", f"{PACKAGE}.report", f"{PACKAGE}.pose.__main__",
})

_BLOCKS = ("nerf", "guidance", "body", "mesh")
# (importer package, imported package): the layer rule's forbidden directions.
LAYER_RULES = tuple(
    [(f"{PACKAGE}.stage2", f"{PACKAGE}.evaluation")]
    + [(f"{PACKAGE}.{low}", f"{PACKAGE}.{high}") for low in _BLOCKS
       for high in ("pose", "prior", "stage2", "evaluation")]
    + [(f"{PACKAGE}.pose", f"{PACKAGE}.{high}") for high in ("prior", "stage2", "evaluation")]
    + [(f"{PACKAGE}.prior", f"{PACKAGE}.{high}") for high in ("stage2", "evaluation")])


def _in(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  rel = path.relative_to(root).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = mod.split(".") if is_pkg else mod.split(".")[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def collect(root: pathlib.Path):
  """{module: [(target, lineno, local, lazy_ok)]} over the package under ``root``."""
  files = sorted((root / PACKAGE).rglob("*.py"))
  modules = {module_name(root, f): f for f in files}
  edges = {}
  for mod, path in modules.items():
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    is_pkg = path.name == "__init__.py"
    out = []
    func_nodes = set()
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        for sub in ast.walk(node):
          if sub is not node:
            func_nodes.add(id(sub))
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = _resolve(mod, is_pkg, node)
        for a in node.names:
          cand = f"{base}.{a.name}"
          targets.append(cand if cand in modules else base)
      for t in targets:
        if not (t == PACKAGE or t.startswith(PACKAGE + ".")):
          continue
        while t not in modules and "." in t:
          t = t.rsplit(".", 1)[0]
        if t not in modules or t == mod:
          continue
        local = id(node) in func_nodes
        lazy_ok = "# lazy:" in lines[node.lineno - 1]
        out.append((t, node.lineno, local, lazy_ok))
    edges[mod] = out
  return modules, edges


def find_cycles(edges) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  graph = {m: sorted({t for t, *_ in es}) for m, es in edges.items()}
  index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

  def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, []):
      if w not in index:
        strong(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        sccs.append(sorted(comp))

  sys.setrecursionlimit(10000)
  for v in graph:
    if v not in index:
      strong(v)
  return sccs


def violations(edges) -> dict:
  """{"cycles", "cli_imports", "upward_imports", "local_imports"}: the layer rule's checks."""
  cli = [(m, t, ln) for m, es in edges.items() for t, ln, *_ in es
         if t in CLI_MODULES and m not in CLI_MODULES]
  upward = [(m, t, ln) for m, es in edges.items() for t, ln, *_ in es
            if m not in CLI_MODULES
            and any(_in(m, low) and _in(t, high) for low, high in LAYER_RULES)]
  local = [(m, t, ln) for m, es in edges.items() for t, ln, is_local, ok in es
           if is_local and not ok]
  return {"cycles": find_cycles(edges), "cli_imports": cli, "upward_imports": upward,
          "local_imports": local}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default=str(pathlib.Path(__file__).resolve().parents[1]))
  ap.add_argument("--edges", action="store_true", help="print every edge")
  args = ap.parse_args(argv)
  modules, edges = collect(pathlib.Path(args.root))
  v = violations(edges)
  n_edges = sum(len(e) for e in edges.values())
  n_local = sum(1 for es in edges.values() for e in es if e[2])
  print(f"{len(modules)} modules, {n_edges} project imports ({n_local} inside functions)")
  if args.edges:
    for m, es in sorted(edges.items()):
      for t, ln, local, ok in es:
        print(f"  {m}:{ln} -> {t}{' (local)' if local else ''}{' [lazy ok]' if ok else ''}")
  print(f"cycles: {len(v['cycles'])}")
  for c in v["cycles"]:
    print("  " + " <-> ".join(c))
  print(f"library modules importing a command line: {len(v['cli_imports'])}")
  for m, t, ln in v["cli_imports"]:
    print(f"  {m}:{ln} -> {t}")
  print(f"imports against the layers (LAYER_RULES): {len(v['upward_imports'])}")
  for m, t, ln in v["upward_imports"]:
    print(f"  {m}:{ln} -> {t}")
  print(f"function-local project imports without '# lazy:' reason: {len(v['local_imports'])}")
  for m, t, ln in v["local_imports"]:
    print(f"  {m}:{ln} -> {t}")
  return 1 if any(v.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
