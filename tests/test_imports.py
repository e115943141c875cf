"""The helpers package imports in one direction: no module imports itself back through others."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "helpers"


def _modules(package: Path) -> dict[str, Path]:
    """'helpers.x' -> its file, for every module of the package and its subpackages ('helpers' for
    __init__.py, 'helpers.tools.lab' for tools/lab.py)."""
    out = {}
    for p in sorted(package.rglob("*.py")):
        parts = [package.name, *p.relative_to(package).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


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
                # `from helpers import data` imports the module helpers.tools.data; `from .data import X` imports helpers.tools.data
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
    assert "helpers.tools.data" not in graph["helpers.synthetic"] | graph["helpers.download"]


def test_the_tools_sit_apart_from_what_the_notebooks_import():
    """helpers.tools (the headless run, the lab, the ablation, the benchmark, the data command line) builds on
    the library; no library module and no notebook imports a tool."""
    import json

    graph = import_graph()
    tools = {m for m in graph if m.startswith("helpers.tools")}
    assert {"helpers.tools.reproduce", "helpers.tools.lab", "helpers.tools.ablation", "helpers.tools.bench"} <= tools
    library = {m: deps for m, deps in graph.items() if m not in tools}
    assert not {m: deps & tools for m, deps in library.items() if deps & tools}
    for nb in sorted((PACKAGE.parent / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        assert "helpers.tools" not in code and "helpers import" in code, nb.name


def _loaded_by(modules: str, watched: set[str]) -> set[str]:
    """Which of ``watched`` a fresh Python process has loaded once it has imported ``modules``."""
    import subprocess
    import sys

    code = f"import sys; import {modules}; print(','.join(sorted({sorted(watched)!r} & sys.modules.keys())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(filter(None, out.strip().split(",")))


def test_reading_results_does_not_import_torchvision():
    """torchvision's import pulls in torch._dynamo (seconds per process); the notebooks that only read
    data or saved results (01, 05), and the headless run's own process, never build a model."""
    assert not _loaded_by("helpers.data, helpers.plots, helpers.compare, helpers.scorecard, helpers.training, "
                          "helpers.evaluate, helpers.tools.reproduce", {"torchvision"})


def test_the_data_commands_and_the_lab_do_not_import_torch():
    """Writing the synthetic set, downloading and checking a data folder read images and masks only, and the
    lab copies notebooks before it starts JupyterLab: torch's import (seconds per process) is left to the
    commands that train or score."""
    assert not _loaded_by("helpers.synthetic, helpers.download, helpers.tools.data, helpers.tools.lab", {"torch"})


def test_reading_a_notebook_compiles_no_grammar():
    """jsonschema from 4.24 checks IRIs with rfc3987-syntax, which compiles three Earley grammars when it
    is imported (seconds in every process that imports nbformat: papermill, nbval, JupyterLab):
    pyproject.toml keeps jsonschema below 4.24."""
    assert not _loaded_by("nbformat, papermill", {"lark", "rfc3987_syntax"})


def test_the_imagenet_url_is_torchvisions():
    from helpers import model

    assert model.imagenet_weights().url == model.IMAGENET_URL
