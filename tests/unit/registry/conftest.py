from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.registry import Registry, open_registry


@pytest.fixture(params=["sqlite"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """Every registry implementation, for the contract suite."""
    reg = open_registry(f"sqlite://{tmp_path / 'registry.db'}")
    yield reg
    reg.close()
