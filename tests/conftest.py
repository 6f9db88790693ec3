"""Session-wide fixtures: the Spanner emulator (started once, on a free loopback port)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.spanner_emulator import DEFAULT_PATH, Emulator, emulator_binary

_databases = itertools.count(1)


def pytest_report_header() -> str:
    binary = emulator_binary()
    if binary:
        return f"spanner emulator: {binary}"
    return (
        f"spanner emulator: NOT INSTALLED ({DEFAULT_PATH}); every Spanner test will be skipped"
        + (" and CI will fail" if os.environ.get("CI") else "")
    )


@pytest.fixture(scope="session")
def spanner_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    if emulator_binary() is None:
        message = f"Cloud Spanner emulator not installed at {DEFAULT_PATH}"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI requires the Spanner leg", pytrace=False)
        pytest.skip(message)
    emulator = Emulator.create(tmp_path_factory.mktemp("spanner"))
    emulator.start()
    previous = os.environ.get("SPANNER_EMULATOR_HOST")
    os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
    yield emulator
    emulator.stop()
    if previous is None:
        os.environ.pop("SPANNER_EMULATOR_HOST", None)
    else:
        os.environ["SPANNER_EMULATOR_HOST"] = previous


@pytest.fixture
def spanner_url(spanner_emulator: Emulator) -> str:
    """A fresh, initialized database on the session's emulator."""
    from control_plane.registry import open_registry

    url = f"spanner://projects/test/instances/rp/databases/db{next(_databases)}"
    registry = open_registry(url)
    registry.init()
    registry.close()
    return url


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
