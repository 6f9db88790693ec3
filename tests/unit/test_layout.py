"""Import boundaries: the product never imports the CLI or the dev tooling."""

from __future__ import annotations

import ast
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
