"""The layering rules of docs/architecture.md, checked on the source: module size, and the import graph between
msa_bench's packages (every import counts, module-level or inside a function, except those under TYPE_CHECKING)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "msa_bench"
MAX_MODULE_LINES = 450
# The bottom layer: these import nothing else from msa_bench.
FOUNDATION = ("errors", "config")


def _modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def _unit(module: Path) -> str:
    """The package (or top-level module) a file belongs to: msa_bench/pipeline/stages.py -> pipeline."""
    parts = module.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return parts[0]


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_units(module: Path) -> set[str]:
    tree = ast.parse(module.read_text(encoding="utf-8"))
    units: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "msa_bench" and len(parts) > 1:
                candidate = parts[1]
                if (PACKAGE_ROOT / candidate).is_dir() or (PACKAGE_ROOT / f"{candidate}.py").is_file():
                    units.add(candidate)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return units


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in _modules():
        unit = _unit(module)
        graph.setdefault(unit, set()).update(_imported_units(module) - {unit})
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_is_over_the_size_limit():
    too_long = {
        str(m.relative_to(PACKAGE_ROOT.parent)): n
        for m in _modules()
        if (n := len(m.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_packages_import_each_other_without_a_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, f"import cycle between packages: {' -> '.join(cycle)}"


@pytest.mark.parametrize("unit", FOUNDATION)
def test_the_foundation_imports_nothing_else_from_msa_bench(unit):
    allowed = set(FOUNDATION[: FOUNDATION.index(unit)])
    assert import_graph()[unit] <= allowed, (
        f"msa_bench.{unit} imports {sorted(import_graph()[unit] - allowed)}"
    )


def test_benchmarks_do_not_import_the_pipeline():
    assert "pipeline" not in import_graph()["benchmarks"]


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
