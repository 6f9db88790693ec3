"""Spanner migration 6 (the hash-sharded indexes, docs/registry-capacity.md) on the real emulator:
applied to a registry made by migrations 1-5 and holding data, while a watch runs and a writer
changes replicas, it loses no change and leaves the watch reading incrementally from the new
indexes; interrupted after any of its statements, it runs again to the same schema."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from control_plane.registry import RegistryError, migrations, open_registry
from control_plane.registry.model import RegistryState
from control_plane.registry.spanner import SpannerRegistry
from control_plane.registry.spanner.follow import Follower
from control_plane.registry.spanner.reads import PLAIN, SHARDED
from harness.spanner_emulator import Emulator
from tests.helpers import async_wait_until

SHARDED_INDEXES = {SHARDED.servers, SHARDED.replicas, SHARDED.tombstones, SHARDED.leases}
PLAIN_INDEXES = {PLAIN.servers, PLAIN.replicas, PLAIN.tombstones, PLAIN.leases}
_databases = iter(range(1, 10_000))


def _spanner(url: str) -> SpannerRegistry:
    registry = open_registry(url)
    assert isinstance(registry, SpannerRegistry)
    return registry


@contextlib.contextmanager
def _old_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database made by migrations 1-5 only (the schema before issue 29), with data:
    two servers, 40 replicas (half with a lease), one deregistered (a tombstone)."""
    every = migrations.load
    monkeypatch.setattr(migrations, "load", lambda s: [m for m in every(s) if m.version <= 5])
    database = f"mig{time.time_ns() % 10**8}x{next(_databases)}"
    url = f"spanner://projects/test/instances/rp/databases/{database}"
    old = _spanner(url)
    try:
        old.init()
        for name in ("api", "echo"):
            old.create_server(name=name, hostnames=[f"{name}.local"], protocol="http")
        ids = [
            old.register_replica(
                server=("api", "echo")[i % 2],
                address=f"127.0.0.1:{9000 + i}",
                region="us-west",
                lease_seconds=3600 if i % 2 else None,
            ).id
            for i in range(40)
        ]
        old.deregister_replica(ids[0])
    finally:
        old.close()
    monkeypatch.setattr(migrations, "load", every)
    yield url


def _indexes(registry: SpannerRegistry) -> dict[str, str]:
    with registry.database.snapshot() as snap:
        return {
            str(name): str(state)
            for name, state in snap.execute_sql(
                "SELECT INDEX_NAME, INDEX_STATE FROM INFORMATION_SCHEMA.INDEXES"
                " WHERE TABLE_SCHEMA = '' AND INDEX_TYPE = 'INDEX'"
            )
        }


def _view(state: RegistryState) -> tuple[Any, ...]:
    return (state.servers, tuple(sorted(state.replicas, key=lambda r: r.id)))


async def test_migration_6_under_a_running_watch_and_writer_loses_no_change(
    spanner_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _old_registry(monkeypatch) as url:
        registry, writer, migrator = _spanner(url), _spanner(url), _spanner(url)
        latest: list[RegistryState] = []
        starts = [0]

        async def watch() -> None:  # as the reconciler runs it: a failed watch starts again
            while True:
                starts[0] += 1
                try:
                    async for state in registry.watch(poll_interval=0.01):
                        latest.append(state)
                except RegistryError:
                    await asyncio.sleep(0.1)

        stop = threading.Event()
        written = [0]

        def write() -> None:  # registers, drains and deregisters until told to stop
            mine: list[str] = []
            i = 0
            while not stop.is_set():
                i += 1
                if i % 3 == 0 and mine:
                    writer.set_replica_state(mine[-1], "DRAINING")
                elif i % 5 == 0 and mine:
                    writer.deregister_replica(mine.pop(0))
                else:
                    replica = writer.register_replica(
                        server="echo", address=f"127.0.0.1:{10_000 + i}", region="us-east"
                    )
                    mine.append(replica.id)
                written[0] += 1
                # A writer's pace, not a wait for anything: the emulator takes a schema change
                # only between read-write transactions, and a writer with no pause at all
                # starves the migration for tens of seconds.
                stop.wait(0.005)

        task = asyncio.create_task(watch())
        try:
            await async_wait_until(lambda: latest, timeout=30, what="the first state")
            writing = asyncio.create_task(asyncio.to_thread(write))
            await async_wait_until(lambda: written[0] >= 5, timeout=30, what="writes before")
            changes = await asyncio.to_thread(migrator.init)
            assert changes == ["applied migration 6: sharded indexes"]
            assert set(_indexes(migrator)) & PLAIN_INDEXES == set()
            assert {
                n: s for n, s in _indexes(migrator).items() if n in SHARDED_INDEXES
            } == dict.fromkeys(SHARDED_INDEXES, "READ_WRITE")
            # Writes after the migration, seen by the watch without it starting again: it reads
            # the sharded indexes incrementally (the plain ones are gone).
            after = written[0]
            await async_wait_until(lambda: written[0] >= after + 5, timeout=30, what="writes")
            stop.set()
            await writing
            truth = await asyncio.to_thread(registry.read_state)
            await async_wait_until(
                lambda: _view(latest[-1]) == _view(truth), timeout=30, what="the watch to converge"
            )
            restarts = starts[0]
            replica = await asyncio.to_thread(
                writer.register_replica, server="api", address="127.0.0.1:7000", region="eu"
            )
            await async_wait_until(
                lambda: replica.id in {r.id for r in latest[-1].replicas},
                timeout=30,
                what="a change after the migration",
            )
            await asyncio.to_thread(writer.deregister_replica, replica.id)
            await async_wait_until(
                lambda: replica.id not in {r.id for r in latest[-1].replicas},
                timeout=30,
                what="a delete after the migration",
            )
            assert starts[0] == restarts, "the watch failed after the migration"
            follower = Follower(registry._reader, registry._next_revision)
            await asyncio.to_thread(follower.full)
            assert follower.layout == SHARDED
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for r in (registry, writer, migrator):
                r.close()


def _statements() -> tuple[str, ...]:
    [six] = [m for m in migrations.load("spanner") if m.version == 6]
    return six.statements


@pytest.mark.parametrize(
    "done",
    [
        pytest.param(1, id="after-first-column"),
        pytest.param(5, id="after-columns-and-first-index"),
        pytest.param(9, id="after-new-indexes-and-first-drop"),
        pytest.param(len(_statements()), id="all-done-not-recorded"),
    ],
)
def test_migration_6_interrupted_halfway_runs_again_to_the_same_schema(
    spanner_emulator: Emulator, monkeypatch: pytest.MonkeyPatch, done: int
) -> None:
    """Spanner applies a batch of DDL statement by statement and keeps those done when the batch
    stops; ``init`` records the migration only after the whole batch. An interruption after any
    statement leaves the first ``done`` applied and nothing recorded: ``init`` runs again."""
    with _old_registry(monkeypatch) as url:
        registry = _spanner(url)
        try:
            before = registry.read_state()
            registry.database.update_ddl(list(_statements()[:done])).result(120)
            assert registry.init() == ["applied migration 6: sharded indexes"]
            assert registry.init() == []  # and once recorded, nothing more
            indexes = _indexes(registry)
            assert set(indexes) & PLAIN_INDEXES == set()
            assert {indexes.get(name) for name in SHARDED_INDEXES} == {"READ_WRITE"}
            assert _view(registry.read_state()) == _view(before)
            # The watch and the lease sweep read the sharded indexes.
            follower = Follower(registry._reader, registry._next_revision)
            assert _view(follower.full()) == _view(before)
            assert follower.layout == SHARDED
            short = registry.register_replica(
                server="api", address="127.0.0.1:7001", region="eu", lease_seconds=1
            )
            changed = follower.tick()
            assert changed is not None
            assert short.id in {r.id for r in changed.replicas}
            assert registry.remove_expired(now=time.time() + 2) == [short.id]
            gone = follower.tick()
            assert gone is not None
            assert short.id not in {r.id for r in gone.replicas}
        finally:
            registry.close()
