"""The package's shape: every module imports, no import circles, views stay on top."""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nanochat"
MODULES = sorted(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py"))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The nanochat modules a file imports anywhere in it (a lazy import inside a function counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from nanochat import hub
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (packages' __init__ files are not edges: they import nothing)."""
    known = set(MODULES)
    graph = {}
    for name in MODULES:
        path = PACKAGE.parent / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        graph[name] = {m for m in imported_modules(path, known) if m != name and not (PACKAGE.parent / Path(*m.split("."))).is_dir()}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search with a path stack)."""
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_see_lazy_and_from_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from nanochat import hub\nimport nanochat.gpt\ndef f():\n    from nanochat.report import x\n")
    assert imported_modules(source, set(MODULES)) == {"nanochat", "nanochat.hub", "nanochat.gpt", "nanochat.report"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_views_are_on_top():
    """The UIs use the package, never the other way round: only the command line imports nanochat.ui."""
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if any(d.startswith("nanochat.ui") for d in deps)
                   and not m.startswith("nanochat.ui"))
    assert users == ["nanochat.cli"]


def test_the_command_line_starts_without_torch():
    """`nanochat profiles` and parameter checks must answer at once: nothing on their path imports torch."""
    import subprocess
    import sys

    code = ("import sys, nanochat.cli, nanochat.stages, nanochat.launch, nanochat.common;"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
