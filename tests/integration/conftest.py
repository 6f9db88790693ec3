from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from harness.processes import ControlPlane
from tests.images import Installed, install_like_the_image


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane.create(tmp_path)
    cp.start()
    try:
        cp.wait_ready()
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def echo_factory() -> Iterator[object]:
    started: list[EchoThread] = []

    def make(name: str) -> EchoThread:
        echo = EchoThread(name=name)
        started.append(echo)
        return echo

    yield make
    for echo in started:
        echo.stop()


@pytest.fixture(scope="session")
def image_install(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built and installed as the Dockerfile does, in a fresh virtualenv (once)."""
    return install_like_the_image(tmp_path_factory.mktemp("image"))
