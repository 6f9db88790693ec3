"""SQLite specifics: URL parsing, unreachable paths, other processes' commits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from control_plane.registry import RegistryError, RegistryUnavailableError, open_registry
from control_plane.registry.sqlite import path_of, wake, watch
from control_plane.registry.sqlite.watch import REVISION_CHECK_EVERY
from tests.helpers import async_wait_until


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


async def test_an_idle_watch_only_probes_until_another_connection_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    calls = {"probe": 0, "revision": 0}
    probe, revision = watch._data_version, watcher.revision

    def counted_probe(connection: object) -> int | None:
        calls["probe"] += 1
        return probe(connection)  # type: ignore[arg-type]

    def counted_revision() -> int:
        calls["revision"] += 1
        return revision()

    monkeypatch.setattr(watch, "_data_version", counted_probe)
    monkeypatch.setattr(watcher, "revision", counted_revision)
    # The poll alone (no inotify wake-ups), at its own 1 ms period.
    monkeypatch.setattr(wake, "open_directory_watch", lambda path: None)
    states = watcher.watch(poll_interval=0.001)
    await asyncio.wait_for(anext(states), timeout=5)
    quiet_from = time.monotonic()
    following = asyncio.ensure_future(anext(states))
    await async_wait_until(lambda: calls["probe"] >= 50, what="50 ticks of the watch")
    quiet = time.monotonic() - quiet_from
    # Nothing committed: the ticks asked SQLite's data_version, not the registry's revision
    # (but for the once-a-second check that notices a broken database).
    assert calls["revision"] <= 1 + quiet / REVISION_CHECK_EVERY
    await asyncio.to_thread(
        writer.create_server, name="echo", hostnames=["echo.local"], protocol="http"
    )
    state = await asyncio.wait_for(following, timeout=5)
    assert [s.name for s in state.servers] == ["echo"]
    await states.aclose()
    watcher.close()
    writer.close()


def test_several_processes_opening_a_new_database_at_once_all_open_it(tmp_path: Path) -> None:
    """``serve --workers`` open the same new file at once: switching it to WAL must not fail
    one of them with "database is locked" (SQLite answers that at once, without waiting)."""
    import threading

    for attempt in range(60):
        url = f"sqlite://{tmp_path / f'new-{attempt}.db'}"
        errors: list[Exception] = []

        def open_it(url: str = url, errors: list[Exception] = errors) -> None:
            try:
                open_registry(url).close()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
