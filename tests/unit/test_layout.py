"""Import boundaries: the product never imports the CLI or the dev tooling."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "control_plane"
OUTSIDE_THE_PRODUCT = ("control_plane.cli", "control_plane.dev")


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_the_product_imports_neither_the_cli_nor_dev_tooling() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("cli", "dev"):
            continue
        for module in imported_modules(path):
            if module.startswith(OUTSIDE_THE_PRODUCT):
                offenders.append(f"{relative}: {module}")
    assert offenders == []


def test_every_import_of_a_project_module_names_something_that_exists() -> None:
    """An import inside a function runs only when its test does, and mypy does not read the
    tests: a name moved away (``tests.helpers.table`` went to ``harness.models``) failed two
    tests only in CI. Every ``from <project module> import <name>``, at the top or inside a
    function, in the product, the tests, the harness and the benchmarks, names a module or an
    attribute that exists."""
    root = Path(__file__).resolve().parents[2]
    ours = ("control_plane", "tests", "harness", "bench")
    missing = []
    for folder in ours:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                    continue
                if node.module.split(".")[0] not in ours:
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if hasattr(module, alias.name):
                        continue
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ModuleNotFoundError:
                        missing.append(f"{path.relative_to(root)}:{node.lineno}: {alias.name}")
    assert missing == []
