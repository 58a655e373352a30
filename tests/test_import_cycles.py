"""No import cycle anywhere in the package, counting imports inside functions (the ones a cycle
hides behind). Modules are read with ast, never imported; ``if TYPE_CHECKING:`` blocks never run
and do not count. The checker is shown to find a cycle in a small package written here."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_names(root: Path, package: str) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of ``root/package`` (a package is its __init__)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """The dotted targets of every import statement of one module, wherever it stands."""

    def __init__(self, module: str, is_package: bool):
        self.base = module if is_package else module.rpartition(".")[0]
        self.targets: List[str] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.targets += [alias.name for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.base.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        self.targets += [f"{source}.{alias.name}" for alias in node.names]  # a submodule, or a name in source


def import_graph(root: Path, package: str) -> Dict[str, Set[str]]:
    """Module -> the modules of the same package it imports (an imported name that is not a module
    counts as an import of the module that holds it)."""
    modules = _module_names(root, package)
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges = set()
        for target in visitor.targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(SRC, "emergeinit")
    assert "emergeinit.bench.report" in graph and "emergeinit.bench.plots" in graph["emergeinit.bench.report"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/report.py": "from pkg import plots\nimport os\n",
        "pkg/plots.py": "def draw():\n    from .sub.helpers import log\n    return log\n",
        "pkg/sub/helpers.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.report\n"
                              "def log():\n    from ..report import os\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.report"] == {"pkg.plots"}
    assert graph["pkg.plots"] == {"pkg.sub.helpers"}
    assert graph["pkg.sub.helpers"] == {"pkg.report"}  # the TYPE_CHECKING import is not counted
    assert find_cycle(graph) == ["pkg.plots", "pkg.sub.helpers", "pkg.report", "pkg.plots"]

    _write(tmp_path, {"pkg/sub/helpers.py": "def log():\n    import os\n"})
    assert find_cycle(import_graph(tmp_path, "pkg")) is None
