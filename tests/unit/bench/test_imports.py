"""Bench as code: what tests and bench share (``harness/``) imports neither of them, bench
imports nothing of tests, and the benchmarks import one another without a loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from bench import x``
    counts as ``bench.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_harness_imports_neither_tests_nor_bench() -> None:
    offenders = [
        f"{path.name}: {module}"
        for path in sorted((ROOT / "harness").glob("*.py"))
        for module in imports(path)
        if module.split(".")[0] in ("tests", "bench")
    ]
    assert offenders == []


def test_bench_imports_nothing_of_tests() -> None:
    offenders = [
        f"{path.name}: {module}"
        for path in sorted((ROOT / "bench").glob("*.py"))
        for module in imports(path)
        if module.split(".")[0] == "tests"
    ]
    assert offenders == []


def test_bench_has_no_import_loop() -> None:
    modules = {f"bench.{path.stem}": path for path in (ROOT / "bench").glob("*.py")}
    graph = {name: imports(path) & modules.keys() for name, path in modules.items()}
    loops = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in path:
                loops.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in done:
                done.add(dep)
                visit(dep, [*path, dep], done)

    for name in sorted(graph):
        visit(name, [name], set())
    assert loops == []
