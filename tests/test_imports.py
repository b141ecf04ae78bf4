"""The package's import graph has no cycle, and every module imports alone in a fresh interpreter.

An import cycle works until someone reorders two lines (issue #17 found pipeline -> train ->
cold_pipeline -> pipeline, kept alive by a comment). The graph here is the one of module-level
imports (``import`` and ``from ... import`` statements that run when the module is imported, also
under ``if``/``try`` at the top level); imports inside functions run later, when every module is
complete, and are how a lower layer reaches a higher one on demand.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "undiffuse"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(tree: ast.Module):
    """Import nodes that run at import time: not inside a function or a class body's methods."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def dependencies(name: str) -> set[str]:
    """The package modules that ``name`` imports at module level."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            # "from . import x" names a submodule x; "from .m import y" names module m
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        deps |= {t for t in targets if t in MODULES and t != name}
    return deps


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    graph = {name: dependencies(name) for name in MODULES}
    assert len(MODULES) > 50 and graph["undiffuse.api"] >= {"undiffuse.trainer", "undiffuse.pipeline"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module would take a minute; one that imports each module after clearing
    # every undiffuse module from sys.modules is as fresh for the package, and fails on the first
    # module that cannot be imported first.
    code = (
        "import importlib, sys\n"
        f"names = {sorted(m for m in MODULES if not m.endswith('__main__'))!r}\n"  # __main__ runs the CLI
        "for name in names:\n"
        "    for m in [m for m in sys.modules if m == 'undiffuse' or m.startswith('undiffuse.')]:\n"
        "        del sys.modules[m]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        sys.exit(f'{name}: {type(e).__name__}: {e}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", ["undiffuse.pipeline", "undiffuse.cold", "undiffuse.text", "undiffuse.samplers"])
def test_lower_layers_do_not_import_the_trainer(name):
    # Sampling must not pull in training: the web page and export load pipelines only.
    seen, todo = set(), [name]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(dependencies(mod))
    assert "undiffuse.trainer" not in seen and "undiffuse.api" not in seen
