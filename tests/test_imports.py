"""The helpers package imports in one direction: no module imports itself back through others."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "helpers"


def _modules(package: Path) -> dict[str, Path]:
    """'helpers.x' -> its file, for every module of the package ('helpers' for __init__.py)."""
    return {package.name if p.stem == "__init__" else f"{package.name}.{p.stem}": p
            for p in sorted(package.glob("*.py"))}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (inside functions too)."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        here = name if path.stem == "__init__" else name.rpartition(".")[0]  # the package of a relative import
        edges = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = here.rsplit(".", node.level - 1)[0]
                    base = f"{parent}.{base}" if base else parent
                # `from helpers import data` imports the module helpers.data; `from .data import X` imports helpers.data
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != package.name and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_helpers_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.d\n")
    (package / "d.py").write_text("from . import a\nimport os\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.d"}, "pkg.d": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.a"]
    (package / "d.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None


def test_synthetic_and_download_do_not_import_the_command_line():
    graph = import_graph()
    assert "helpers.data" not in graph["helpers.synthetic"] | graph["helpers.download"]
