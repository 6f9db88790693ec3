from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.registry import Registry, open_registry


@pytest.fixture(params=["sqlite", "spanner"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """Every registry implementation, for the contract suite."""
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("spanner_url")
    reg = open_registry(url)
    yield reg
    reg.close()
