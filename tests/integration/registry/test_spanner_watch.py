"""What the README promises of the Spanner watch, on the real emulator: the periodic full read
repairs what the incremental reads cannot see, tombstones older than an hour are purged (and
younger ones kept), and an unreachable Spanner is retried with backoff from 0.1 s to 5 s."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.reconcile import Reconciler
from control_plane.registry import RegistryError, open_registry
from control_plane.registry.model import RegistryState
from control_plane.registry.spanner import SpannerRegistry, reads, store
from control_plane.registry.spanner.follow import Follower
from control_plane.xds.cache import SnapshotCache
from harness.spanner_emulator import Emulator
from tests.helpers import async_wait_until

# The README's figures, written out: a test that imported the constants would follow them.
FULL_READ_EVERY = 5 * 60.0
TOMBSTONE_RETENTION = 3600.0
BACKOFF = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]  # doubling from 0.1 s, capped at 5 s


def _spanner(url: str) -> SpannerRegistry:
    registry = open_registry(url)
    assert isinstance(registry, SpannerRegistry)
    return registry


def test_what_the_incremental_reads_miss_is_repaired_by_the_full_read_every_5_minutes(
    spanner_url: str,
) -> None:
    registry = _spanner(spanner_url)
    try:
        for name in ("api", "echo"):
            registry.create_server(name=name, hostnames=[f"{name}.local"], protocol="http")
        now = [0.0]
        follower = Follower(registry._reader, registry._next_revision, monotonic=lambda: now[0])
        assert {s.name for s in follower.full().servers} == {"api", "echo"}
        # A writer that leaves no tombstone (a hand edit, an old version): invisible to the
        # incremental reads, which follow UpdatedAt and the tombstones.
        registry.database.run_in_transaction(
            lambda tx: tx.execute_update("DELETE FROM Servers WHERE ServerName = 'api'")
        )
        assert follower.tick() is None
        now[0] += FULL_READ_EVERY - 1
        assert follower.tick() is None
        now[0] += 2  # five minutes since the last full read
        repaired = follower.tick()
        assert repaired is not None
        assert [s.name for s in repaired.servers] == ["echo"]
        assert follower.tick() is None  # and incremental again
    finally:
        registry.close()


def test_tombstones_are_purged_after_an_hour_and_kept_until_then(spanner_url: str) -> None:
    registry = _spanner(spanner_url)

    def tombstones() -> list[list[Any]]:
        _, (rows,) = registry._reader.read([("SELECT Kind, Key, DeletedAt FROM Tombstones", None)])
        return rows

    try:
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        replica = registry.register_replica(
            server="echo", address="127.0.0.1:8081", region="us-west"
        )
        registry.deregister_replica(replica.id)
        [(kind, key, deleted_at)] = tombstones()
        assert (kind, key) == ("replica", replica.id)
        # Judged at explicit times around the hour (the sweep's `now`), not by waiting one.
        assert registry.remove_expired(now=deleted_at.timestamp() + TOMBSTONE_RETENTION - 1) == []
        assert len(tombstones()) == 1
        assert registry.remove_expired(now=deleted_at.timestamp() + TOMBSTONE_RETENTION + 1) == []
        assert tombstones() == []
    finally:
        registry.close()


class _Recorded:
    """A registry whose watch notes when each attempt began and when each one failed."""

    def __init__(self, inner: SpannerRegistry) -> None:
        self.inner = inner
        self.default_poll_interval = inner.default_poll_interval
        self.states = 0
        self.starts: list[float] = []
        self.failures: list[float] = []

    async def watch(self, *, poll_interval: float) -> AsyncIterator[RegistryState]:
        self.starts.append(time.monotonic())
        try:
            async for state in self.inner.watch(poll_interval=poll_interval):
                self.states += 1
                yield state
        except RegistryError:
            self.failures.append(time.monotonic())
            raise


async def test_an_unreachable_spanner_is_retried_with_backoff_from_0_1_to_5_seconds(
    spanner_emulator: Emulator, tmp_path: Path
) -> None:
    # An emulator of this test's own, so stopping it disturbs no other test.
    emulator = Emulator.create(tmp_path)
    emulator.start()
    env_before = os.environ["SPANNER_EMULATOR_HOST"]
    os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
    registry: SpannerRegistry | None = None
    follow: asyncio.Task[None] | None = None
    try:
        url = "spanner://projects/backoff/instances/rp/databases/registry"
        registry = _spanner(url)
        registry.init()
        recorded = _Recorded(registry)
        reconciler = Reconciler(registry=recorded, cache=SnapshotCache())  # type: ignore[arg-type]
        follow = asyncio.create_task(reconciler.run())
        await async_wait_until(lambda: recorded.states > 0, timeout=30, what="the first read")
        emulator.stop()
        expected = BACKOFF
        await async_wait_until(
            lambda: len(recorded.starts) > len(expected),
            timeout=sum(expected) + 60,
            what="eight retries",
        )
        assert reconciler.health.degraded
        # The pause between a failure and the next attempt: never shorter than the backoff
        # (a busy machine only lengthens it) ...
        pauses = [
            start - failed
            for failed, start in zip(recorded.failures, recorded.starts[1:], strict=False)
        ]
        assert len(pauses) >= len(expected)
        shown = [round(p, 2) for p in pauses]
        for pause, backoff in zip(pauses, expected, strict=False):
            assert pause >= backoff - 0.01, f"pauses {shown}, backoff {expected}"
        # ... starting at 0.1 s, not more (the first six would take twice as long from 0.2 s),
        assert sum(pauses[:6]) < sum(expected[:6]) + 3.0, f"pauses {shown}"
        # ... and capped at 5 s (uncapped, the eighth would be 12.8 s).
        assert pauses[7] < 10.0, f"pauses {shown}"
    finally:
        if follow is not None:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
        if registry is not None:
            registry.close()
        emulator.stop()
        os.environ["SPANNER_EMULATOR_HOST"] = env_before


def test_a_full_read_comes_in_pages_and_misses_no_row(
    spanner_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spanner's unary Read returns at most 10 MiB (the client takes 4 MiB): 100,000 replica rows
    are ~15 MB, so the full read (and the lists) page by primary key. Pages of 2 servers (4
    servers: the last page is empty) and 3 replicas (11 over 4 servers: the last is short)."""
    for module in (reads, store):
        monkeypatch.setattr(module, "SERVER_PAGE", 2)
        monkeypatch.setattr(module, "REPLICA_PAGE", 3)
    registry = _spanner(spanner_url)
    try:
        for name in ("a", "b", "c", "d"):
            registry.create_server(name=name, hostnames=[f"{name}.local"], protocol="http")
        for i in range(11):
            registry.register_replica(
                server="abcd"[i % 4], address=f"127.0.0.1:{9000 + i}", region="us-west"
            )
        state = registry.read_state()
        assert [s.name for s in state.servers] == ["a", "b", "c", "d"]
        assert [s.name for s in registry.list_servers()] == ["a", "b", "c", "d"]
        listed = registry.list_replicas()
        assert len(listed) == 11
        assert sorted(state.replicas, key=lambda r: r.id) == listed
        assert [r.id for r in registry.list_replicas("b")] == sorted(
            r.id for r in listed if r.server == "b"
        )
        follower = Follower(registry._reader, registry._next_revision)
        assert follower.full().replicas == state.replicas
    finally:
        registry.close()
