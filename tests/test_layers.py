"""Imports run downward (docs/layers.md, the order in mulfree/__init__.py's docstring).

Every `import` of a mulfree module anywhere in a file (top level or inside a function) is read
with `ast`; each module has a layer (the longest prefix in LAYERS); a module may import only its
own layer or lower ones, and the import graph between units (subpackage, layer) has no cycle.
Importing the root package `mulfree` itself (its `__version__`, the compiled `_C`) is allowed
everywhere: it re-exports lazily and imports nothing heavy.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mulfree

SRC = Path(mulfree.__file__).resolve().parent.parent

# module prefix -> layer (0 lowest). Longest prefix wins.
LAYERS = {
    # 0 base: errors, I/O helpers, the energy counter and tables every layer may report to,
    # corpora and tokenizers (files, no model code)
    "mulfree.errors": 0,
    "mulfree._io": 0,
    "mulfree.tensorfile": 0,
    "mulfree._bounds": 0,
    "mulfree._lazy": 0,
    "mulfree._memory": 0,
    "mulfree._swap": 0,
    "mulfree._C": 0,
    "mulfree.energy": 0,
    "mulfree.data": 0,
    # 1 numeric core: L-Mul numerics, the compiled kernels' Python side, ops, ternary layers
    "mulfree.kernels": 1,
    "mulfree.lmul": 1,
    "mulfree.ops": 1,
    "mulfree.ternary": 1,
    # 2 models and what they are built from
    "mulfree.models": 2,
    "mulfree.attention": 2,
    "mulfree.hub": 2,
    "mulfree.assets": 2,
    # 3 the packed inference engine
    "mulfree.engine": 3,
    # 4 applications of models: training, evaluation, energy reports over real models
    "mulfree.train": 4,
    "mulfree.eval": 4,
    "mulfree.energy.report": 4,
    "mulfree.hw": 4,  # circuits of the numerics (synthesis, simulation): a study above them
    # 5 front ends: the server, the report builder, every command line
    "mulfree.serve": 5,
    "mulfree.report": 5,
    "mulfree.cli": 5,
    "mulfree._argparse": 5,  # the command lines' shared flags (reads the sampler's defaults)
}
FRONT = 5  # every `<subpackage>.cli` module is a command line: the front layer


def layer(mod: str) -> int:
    if mod == "mulfree" or mod.rsplit(".", 1)[-1] == "cli":  # the public API re-exports: on top
        return FRONT
    best = max((p for p in LAYERS if mod == p or mod.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{mod} has no layer: add it to LAYERS (and docs/layers.md)"
    return LAYERS[best]


def unit(mod: str) -> tuple[str, int]:
    parts = mod.split(".")
    return (parts[1] if len(parts) > 1 else "", layer(mod))


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted((SRC / "mulfree").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(mod: str, file: Path, known: set[str]) -> set[str]:
    pkg = mod if file.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "mulfree")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src.split(".")[0] != "mulfree":
                continue
            for a in node.names:  # `from mulfree.x import y`: y may be a module itself
                found.add(f"{src}.{a.name}" if f"{src}.{a.name}" in known else src)
    return {m for m in found if m != "mulfree"}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods) | {"mulfree._C"}
    return {m: _imports(m, f, known) for m, f in mods.items()}


def test_every_import_runs_downward():
    bad = []
    for mod, deps in _graph().items():
        for dep in sorted(deps):
            if layer(dep) > layer(mod):
                bad.append(f"{mod} (layer {layer(mod)}) imports {dep} (layer {layer(dep)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_cycles_between_subpackages():
    edges: dict[tuple, set[tuple]] = defaultdict(set)
    for mod, deps in _graph().items():
        for dep in deps:
            if unit(dep) != unit(mod):
                edges[unit(mod)].add(unit(dep))
    # depth-first search for a back edge
    state: dict[tuple, int] = {}
    cycle: list = []

    def visit(u, path):
        state[u] = 1
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycle.extend(path[path.index(v) :] + [v] if v in path else [u, v])
                return True
            if v not in state and visit(v, path + [v]):
                return True
        state[u] = 2
        return False

    for u in sorted(edges):
        if u not in state and visit(u, [u]):
            break
    assert not cycle, "import cycle: " + " -> ".join(f"{p}@{lv}" for p, lv in cycle)


def _private_imports(mod: str, file: Path, known: set[str]) -> list[str]:
    """`from mulfree.x import _name` where _name is not a module: a private name used across
    modules (a private module, `from mulfree import _bounds`, is a module's own choice)."""
    pkg = mod if file.name == "__init__.py" else mod.rsplit(".", 1)[0]
    bad = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
            src = ".".join(base + ([node.module] if node.module else []))
        else:
            src = node.module or ""
        if src.split(".")[0] != "mulfree" or src == mod:
            continue
        for a in node.names:
            if a.name.startswith("_") and not a.name.startswith("__") and f"{src}.{a.name}" not in known:
                bad.append(f"{mod}:{node.lineno} imports {src}.{a.name}")
    return bad


def test_no_private_names_imported_across_modules():
    mods = _modules()
    known = set(mods) | {"mulfree._C"}
    bad = [b for m, f in mods.items() for b in _private_imports(m, f, known)]
    assert not bad, "private names imported from other modules:\n" + "\n".join(bad)


def test_the_private_name_checker_sees_them(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from mulfree.serve.app import _hidden, public\nfrom mulfree import _C, _bounds\n")
    got = _private_imports("mulfree.lmul.m", f, {"mulfree._C", "mulfree._bounds", "mulfree.serve.app"})
    assert got == ["mulfree.lmul.m:1 imports mulfree.serve.app._hidden"]


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mulfree.serve import app\n    from . import sibling\n")
    got = _imports("mulfree.lmul.m", f, {"mulfree.serve.app", "mulfree.lmul.sibling"})
    assert got == {"mulfree.serve.app", "mulfree.lmul.sibling"}
    assert layer("mulfree.serve.app") > layer("mulfree.lmul.m")
    assert layer("mulfree.engine.cli") == FRONT
