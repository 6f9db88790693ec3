"""SQLite specifics: URL parsing, unreachable paths, other processes' commits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from control_plane.registry import RegistryError, RegistryUnavailableError, open_registry
from control_plane.registry.sqlite import path_of


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///tmp/rp.db", "/tmp/rp.db"), ("sqlite://rp.db", "rp.db")],
)
def test_url_paths(url: str, path: str) -> None:
    assert path_of(url) == path


def test_a_missing_directory_is_a_clear_error() -> None:
    with pytest.raises(RegistryUnavailableError, match="does not exist"):
        open_registry("sqlite:///no/such/dir/rp.db")


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(RegistryError, match="unknown scheme"):
        open_registry("mysql://x")


async def test_a_commit_from_another_connection_is_seen_by_the_watch(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    states = watcher.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=5)
    await asyncio.to_thread(
        writer.create_server, name="echo", hostnames=["echo.local"], protocol="http"
    )
    state = await asyncio.wait_for(anext(states), timeout=5)
    assert [s.name for s in state.servers] == ["echo"]
    await states.aclose()
    watcher.close()
    writer.close()
