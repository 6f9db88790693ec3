"""The SQLite watch wakes on inotify: another process's commit is seen without waiting for the
poll; without inotify (or when it does not report this database's writers) the poll delivers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from control_plane.registry import open_registry
from control_plane.registry.sqlite import wake, watch
from control_plane.registry.sqlite.inotify import DirectoryWatch
from control_plane.registry.sqlite.watch import REVISION_CHECK_EVERY
from harness.processes import routeplane
from tests.helpers import async_wait_until

# Far longer than any deadline below: a change seen before it was not found by the poll.
LONG_POLL = 30.0
DEADLINE = 10.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def inotify_fds() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except OSError:
            continue  # closed while listing
    return count


async def test_a_commit_by_another_process_wakes_a_watch_with_a_long_poll(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher = open_registry(url)
    watcher.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    states = watcher.watch(poll_interval=LONG_POLL)
    await asyncio.wait_for(anext(states), timeout=DEADLINE)
    following = asyncio.ensure_future(anext(states))
    result = await asyncio.to_thread(
        routeplane,
        "replicas",
        "register",
        "echo",
        "--address",
        "127.0.0.1:9001",
        "--region",
        "us-west",
        registry=url,
    )
    replica_id = result.stdout.strip()
    state = await asyncio.wait_for(following, timeout=DEADLINE)
    assert [r.id for r in state.replicas_by_server["echo"]] == [replica_id]
    await states.aclose()
    watcher.close()


async def test_a_plain_sqlite3_commit_in_a_thread_wakes_the_watch(tmp_path: Path) -> None:
    path = tmp_path / "rp.db"
    watcher = open_registry(f"sqlite://{path}")
    states = watcher.watch(poll_interval=LONG_POLL)
    first = await asyncio.wait_for(anext(states), timeout=DEADLINE)
    following = asyncio.ensure_future(anext(states))

    def commit() -> None:
        with sqlite3.connect(path, isolation_level=None) as db:
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        db.close()

    # Several commits in a row: the watch ends on the last one, whatever it coalesced.
    for _ in range(20):
        await asyncio.to_thread(commit)
    state = await asyncio.wait_for(following, timeout=DEADLINE)
    while state.revision < first.revision + 20:
        state = await asyncio.wait_for(anext(states), timeout=DEADLINE)
    assert state.revision == first.revision + 20
    await states.aclose()
    watcher.close()


async def test_without_inotify_the_poll_still_delivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # inotify missing (not Linux, limits reached): a fault the real part cannot produce here.
    monkeypatch.setattr(wake, "open_directory_watch", lambda path: None)
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    before = inotify_fds()
    states = watcher.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=DEADLINE)
    assert inotify_fds() == before
    await asyncio.to_thread(
        writer.create_server, name="echo", hostnames=["echo.local"], protocol="http"
    )
    state = await asyncio.wait_for(anext(states), timeout=DEADLINE)
    assert [s.name for s in state.servers] == ["echo"]
    await states.aclose()
    watcher.close()
    writer.close()


async def test_a_commit_inotify_did_not_announce_puts_the_watch_back_on_its_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real inotify watch that never hears this database's writers: it watches another,
    # empty directory (as when the writer's writes bypass this kernel's VFS).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setattr(
        wake, "open_directory_watch", lambda path: DirectoryWatch.open(str(elsewhere), ["x"])
    )
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    states = watcher.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=DEADLINE)
    with capture_logs() as logs:
        for name in ("a", "b"):
            await asyncio.to_thread(
                writer.create_server, name=name, hostnames=[f"{name}.local"], protocol="http"
            )
            state = await asyncio.wait_for(anext(states), timeout=DEADLINE)
            assert name in {s.name for s in state.servers}
    # Said once, at the first unannounced commit; the second was found by the short poll.
    assert [e["event"] for e in logs] == ["registry_watch_unnotified"]
    await states.aclose()
    watcher.close()
    writer.close()


async def test_the_watch_holds_one_inotify_descriptor_and_releases_it(tmp_path: Path) -> None:
    watcher = open_registry(f"sqlite://{tmp_path / 'rp.db'}")
    before = inotify_fds()
    states = watcher.watch(poll_interval=LONG_POLL)
    await asyncio.wait_for(anext(states), timeout=DEADLINE)
    assert inotify_fds() == before + 1
    await states.aclose()
    assert inotify_fds() == before
    watcher.close()


async def test_an_in_memory_database_is_watched_without_inotify() -> None:
    assert wake.open_directory_watch(":memory:") is None
    watcher = open_registry("sqlite://:memory:")
    states = watcher.watch(poll_interval=0.002)
    state = await asyncio.wait_for(anext(states), timeout=DEADLINE)
    assert state.servers == ()
    await states.aclose()
    watcher.close()


async def test_lease_renewals_wake_the_watch_but_read_nothing_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    writer.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    replica = writer.register_replica(
        server="echo", address="127.0.0.1:9001", region="us-west", lease_seconds=30
    )
    calls = {"probe": 0, "revision": 0}
    probe, revision = watch._data_version, watcher.revision

    def counted_probe(connection: sqlite3.Connection) -> int | None:
        calls["probe"] += 1
        return probe(connection)

    def counted_revision() -> int:
        calls["revision"] += 1
        return revision()

    monkeypatch.setattr(watch, "_data_version", counted_probe)
    monkeypatch.setattr(watcher, "revision", counted_revision)
    states = watcher.watch(poll_interval=LONG_POLL)
    first = await asyncio.wait_for(anext(states), timeout=DEADLINE)
    since = time.monotonic()
    following = asyncio.ensure_future(anext(states))
    for _ in range(20):
        await asyncio.to_thread(writer.renew_lease, replica.id, lease_seconds=30)
    # The renewals (commits that move no revision) woke the watch's probe ...
    await async_wait_until(lambda: calls["probe"] >= 2, what="a renewal waking the probe")
    # ... which read the unchanged revision itself: no thread hop (but for the once-a-second
    # check through the registry's connection), no new state.
    assert calls["revision"] <= int((time.monotonic() - since) / REVISION_CHECK_EVERY)
    assert not following.done()
    writer.deregister_replica(replica.id)
    state = await asyncio.wait_for(following, timeout=DEADLINE)
    assert state.revision == first.revision + 1
    await states.aclose()
    watcher.close()
    writer.close()


@pytest.mark.parametrize(
    ("small_read", "in_thread"), [(200, False), (0, True)], ids=["small-on-loop", "big-in-thread"]
)
async def test_a_change_is_read_on_the_loop_when_small_and_in_a_thread_when_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_read: int, in_thread: bool
) -> None:
    monkeypatch.setattr(watch, "SMALL_READ", small_read)
    url = f"sqlite://{tmp_path / 'rp.db'}"
    watcher, writer = open_registry(url), open_registry(url)
    writer.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    writer.register_replica(server="echo", address="127.0.0.1:9001", region="us-west")
    threaded = []
    read_changes = watcher._read_changes  # type: ignore[attr-defined]

    def counted(previous: object) -> object:
        threaded.append(previous)
        return read_changes(previous)

    monkeypatch.setattr(watcher, "_read_changes", counted)
    states = watcher.watch(poll_interval=LONG_POLL)
    await asyncio.wait_for(anext(states), timeout=DEADLINE)
    following = asyncio.ensure_future(anext(states))
    added = await asyncio.to_thread(
        writer.register_replica, server="echo", address="127.0.0.1:9002", region="us-west"
    )
    state = await asyncio.wait_for(following, timeout=DEADLINE)
    assert added.id in {r.id for r in state.replicas_by_server["echo"]}
    assert len(state.replicas_by_server["echo"]) == 2
    assert bool(threaded) == in_thread
    await states.aclose()
    watcher.close()
    writer.close()
