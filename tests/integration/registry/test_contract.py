"""The registry contract: every implementation passes these."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.registry import (
    NotFoundError,
    Registry,
    RegistryError,
    ValidationError,
)
from control_plane.registry.errors import ConflictError


def test_init_is_idempotent(registry: Registry) -> None:
    assert registry.init() == []


def test_the_members_tools_rely_on(registry: Registry) -> None:
    registry.check_reachable()  # an open, initialized store is reachable
    assert 0 < registry.default_poll_interval <= 1
    assert all(isinstance(change, str) for change in registry.applied_on_open)


def test_create_and_list_servers(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["Echo.Local", "*.echo.dev"], protocol="http")
    [server] = registry.list_servers()
    assert server.name == "echo"
    assert server.hostnames == ("echo.local", "*.echo.dev")
    assert server.workspace == "default"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"name": "Bad_Name"}, "name", id="name-with-underscore"),
        pytest.param({"hostnames": ["no spaces allowed"]}, "hostname", id="bad-hostname"),
        pytest.param({"hostnames": []}, "hostnames", id="no-hostname"),
        pytest.param({"protocol": "ftp"}, "protocol", id="unknown-protocol"),
    ],
)
def test_invalid_servers_are_refused_naming_the_field(
    registry: Registry, kwargs: dict[str, object], field: str
) -> None:
    args: dict[str, object] = {"name": "echo", "hostnames": ["echo.local"], "protocol": "http"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        registry.create_server(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert registry.list_servers() == []


def test_an_update_keeps_the_creation_time_and_the_replicas(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    [created] = registry.list_servers()
    assert created.created_at > 0
    _, outcome = registry.put_server(
        name="echo", hostnames=["echo.local", "e.local"], protocol="http"
    )
    assert outcome == "updated"
    [updated] = registry.list_servers()
    assert updated.hostnames == ("echo.local", "e.local")
    assert updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at
    assert len(registry.list_replicas("echo")) == 1
    watched = registry.read_state().servers[0]
    assert watched.created_at == created.created_at


def test_a_hostname_belongs_to_one_server(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    with pytest.raises(ConflictError, match=r"echo\.local"):
        registry.create_server(name="other", hostnames=["echo.local"], protocol="http")


def test_register_drain_ready_deregister(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    replica = registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    assert replica.state == "READY"
    assert registry.set_replica_state(replica.id, "DRAINING").state == "DRAINING"
    assert registry.set_replica_state(replica.id, "ready").state == "READY"
    registry.deregister_replica(replica.id)
    assert registry.list_replicas() == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"address": "127.0.0.1"}, "address", id="no-port"),
        pytest.param({"address": "127.0.0.1:0"}, "port", id="port-zero"),
        pytest.param({"address": "127.0.0.1:70000"}, "port", id="port-too-big"),
        pytest.param({"address": "not an address:80"}, "address", id="bad-host"),
        pytest.param({"region": "US West"}, "region", id="bad-region"),
        pytest.param({"weight": 0}, "weight", id="weight-zero"),
        pytest.param({"weight": 10_001}, "weight", id="weight-too-big"),
        pytest.param({"state": "GONE"}, "state", id="unknown-state"),
    ],
)
def test_invalid_replicas_are_refused_naming_the_field(
    registry: Registry, kwargs: dict[str, object], field: str
) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    args: dict[str, object] = {"server": "echo", "address": "127.0.0.1:8081", "region": "us-west"}
    args.update(kwargs)
    with pytest.raises(ValidationError) as info:
        registry.register_replica(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert registry.list_replicas() == []


def test_ipv6_replica_addresses(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    replica = registry.register_replica(server="echo", address="[::1]:8081", region="us-west")
    assert (replica.host, replica.port, replica.address) == ("::1", 8081, "[::1]:8081")


def test_unknown_server_and_replica_are_not_found(registry: Registry) -> None:
    with pytest.raises(NotFoundError, match="unknown server 'nope'"):
        registry.register_replica(server="nope", address="127.0.0.1:1", region="us-west")
    with pytest.raises(NotFoundError, match="unknown replica 'r-x'"):
        registry.set_replica_state("r-x", "DRAINING")
    with pytest.raises(NotFoundError):
        registry.deregister_replica("r-x")


def test_every_write_moves_the_revision_and_commit_time(registry: Registry) -> None:
    before = registry.read_state()
    started = time.time()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    created = registry.read_state()
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    registered = registry.read_state()
    assert before.revision < created.revision < registered.revision
    assert before.committed_at < created.committed_at < registered.committed_at
    # The commit time is the wall clock of the commit, not some counter.
    assert started - 5 <= created.committed_at <= time.time() + 5


def test_deleting_a_server_removes_its_replicas(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    registry.delete_server("echo")
    state = registry.read_state()
    assert state.servers == ()
    assert state.replicas == ()


async def test_watch_yields_the_state_then_every_change(registry: Registry) -> None:
    states = registry.watch(poll_interval=0.002)
    first = await asyncio.wait_for(anext(states), timeout=5)
    assert first.servers == ()
    await asyncio.to_thread(
        registry.create_server, name="echo", hostnames=["echo.local"], protocol="http"
    )
    second = await asyncio.wait_for(anext(states), timeout=5)
    assert [s.name for s in second.servers] == ["echo"]
    await states.aclose()


def test_errors_are_registry_errors(registry: Registry) -> None:
    with pytest.raises(RegistryError):
        registry.delete_server("nope")


async def _latest(states: object, until: object, *, deadline_s: float = 10.0) -> object:
    """Read states from the watch until ``until(state)`` holds."""
    deadline = asyncio.get_running_loop().time() + deadline_s
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, "watch did not reach the expected state"
        state = await asyncio.wait_for(anext(states), timeout=remaining)  # type: ignore[call-overload]
        if until(state):  # type: ignore[operator]
            return state


async def test_watch_sees_deletes(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    replica = registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    states = registry.watch(poll_interval=0.002)
    first = await asyncio.wait_for(anext(states), timeout=5)
    assert [r.id for r in first.replicas] == [replica.id]
    await asyncio.to_thread(registry.deregister_replica, replica.id)
    await _latest(states, lambda s: s.replicas == ())
    await asyncio.to_thread(registry.delete_server, "echo")
    await _latest(states, lambda s: s.servers == ())
    await states.aclose()


async def test_a_lease_renewal_is_not_a_routing_change(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    replica = registry.register_replica(
        server="echo", address="127.0.0.1:8081", region="us-west", lease_seconds=30
    )
    states = registry.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=5)
    renewed = await asyncio.to_thread(registry.renew_lease, replica.id, lease_seconds=60)
    assert renewed.lease_expires_at is not None
    assert replica.lease_expires_at is not None
    assert renewed.lease_expires_at > replica.lease_expires_at
    # The next state the watch yields is the drain, not the renewal.
    await asyncio.to_thread(registry.set_replica_state, replica.id, "DRAINING")
    state = await asyncio.wait_for(anext(states), timeout=5)
    assert [r.state for r in state.replicas] == ["DRAINING"]
    await states.aclose()


async def test_expired_leases_are_removed_and_the_watch_sees_it(registry: Registry) -> None:
    import time

    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    keep = registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    doomed = registry.register_replica(
        server="echo", address="127.0.0.1:8082", region="us-west", lease_seconds=1
    )
    states = registry.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=5)
    assert registry.remove_expired(now=time.time()) == []
    assert registry.remove_expired(now=time.time() + 2) == [doomed.id]
    state = await _latest(states, lambda s: len(s.replicas) == 1)
    assert [r.id for r in state.replicas] == [keep.id]  # type: ignore[attr-defined]
    await states.aclose()


async def test_the_watch_misses_no_commit_under_concurrent_writes(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    states = registry.watch(poll_interval=0.001)
    await asyncio.wait_for(anext(states), timeout=5)

    def churn() -> None:
        ids = []
        for i in range(30):
            ids.append(
                registry.register_replica(
                    server="echo", address=f"127.0.0.1:{9000 + i}", region="us-west"
                ).id
            )
            if i % 3 == 0:
                registry.set_replica_state(ids[-1], "DRAINING")
            if i % 4 == 0:
                registry.deregister_replica(ids.pop(0))

    writer = asyncio.create_task(asyncio.to_thread(churn))
    latest = None
    while not writer.done() or latest is None:
        try:
            latest = await asyncio.wait_for(anext(states), timeout=0.5)
        except TimeoutError:
            continue
    await writer
    truth = registry.read_state()
    final = await _latest(
        states if latest.replicas != truth.replicas else _just(latest),
        lambda s: s.replicas == truth.replicas,
    )
    assert final.replicas == truth.replicas  # type: ignore[attr-defined]
    await states.aclose()


async def _just(value: object) -> AsyncIterator[object]:
    yield value


async def test_a_new_watch_resumes_from_the_current_state(registry: Registry) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    states = registry.watch(poll_interval=0.002)
    first = await asyncio.wait_for(anext(states), timeout=5)
    assert len(first.replicas) == 1
    await states.aclose()


async def test_a_replica_keeps_its_revision_and_registration_time_everywhere(
    registry: Registry,
) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    old = registry.register_replica(server="echo", address="127.0.0.1:8081", region="us-west")
    states = registry.watch(poll_interval=0.002)
    await asyncio.wait_for(anext(states), timeout=5)
    before = time.time()
    new = await asyncio.to_thread(
        registry.register_replica,
        server="echo",
        address="127.0.0.1:8082",
        region="us-west",
        revision="v2",
    )
    assert (old.revision, new.revision) == ("", "v2")
    assert 0 < old.registered_at <= before <= new.registered_at
    # The incremental watch, the full read and the list all read what was written.
    watched = await _latest(states, lambda s: len(s.replicas) == 2)
    await states.aclose()
    for seen in (watched.replicas, registry.read_state().replicas, registry.list_replicas()):  # type: ignore[attr-defined]
        by_id = {r.id: r for r in seen}
        assert by_id[new.id].revision == "v2"
        assert by_id[old.id].revision == ""
        assert by_id[new.id].registered_at == pytest.approx(new.registered_at, abs=1e-3)
    # A state change keeps both.
    drained = registry.set_replica_state(new.id, "DRAINING")
    assert drained.revision == "v2"
    assert drained.registered_at == pytest.approx(new.registered_at, abs=1e-3)
    [listed] = [r for r in registry.list_replicas("echo") if r.id == new.id]
    assert listed.revision == "v2"
    assert listed.registered_at == pytest.approx(new.registered_at, abs=1e-3)


@pytest.mark.parametrize("revision", ["latest", "V2", "-v2", "a" * 64, "v_2"])
def test_a_bad_revision_is_refused_naming_the_field(registry: Registry, revision: str) -> None:
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    with pytest.raises(ValidationError) as info:
        registry.register_replica(
            server="echo", address="127.0.0.1:8081", region="us-west", revision=revision
        )
    assert info.value.field == "revision"
    assert registry.list_replicas() == []


@pytest.mark.parametrize("store", ["sqlite", "spanner"])
def test_replicas_written_before_the_revision_columns_read_as_none_and_0(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A registry made by the schema before issue 26, with a replica the old code wrote,
    migrated by ``init``: the old row reads as revision "" and registered_at 0."""
    from control_plane.registry import migrations, open_registry
    from control_plane.registry.spanner.reads import ts

    every = migrations.load
    last = {"sqlite": 4, "spanner": 3}[store]
    monkeypatch.setattr(migrations, "load", lambda s: [m for m in every(s) if m.version <= last])
    if store == "sqlite":
        url = f"sqlite://{tmp_path / 'old.db'}"
    else:
        request.getfixturevalue("spanner_emulator")
        url = f"spanner://projects/test/instances/rp/databases/old{time.time_ns() % 10**9}"
    old = open_registry(url)
    old.init()
    old.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    columns = ("Id", "ServerName", "Host", "Port", "Region", "Zone", "Weight", "State")
    values = ("r-old", "echo", "127.0.0.1", 8081, "us-west", "", 100, "READY")
    if store == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite://")) as db:  # as the old code wrote it
            db.execute(
                "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (*values, time.time()),
            )
    else:
        from google.cloud import spanner

        old._conn.transact(  # type: ignore[attr-defined]
            "old insert",
            lambda tx: tx.insert(
                "Replicas",
                columns=(*columns, "UpdatedAt"),
                values=[(*values, spanner.COMMIT_TIMESTAMP)],
            ),
        )
    old.close()
    monkeypatch.setattr(migrations, "load", every)
    migrated = open_registry(url)
    try:
        assert any("replica revision" in change for change in migrated.init()) or store == "sqlite"
        [replica] = migrated.list_replicas("echo")
        assert (replica.id, replica.revision, replica.registered_at) == ("r-old", "", 0.0)
        assert migrated.read_state().replicas == (replica,)
        new = migrated.register_replica(
            server="echo", address="127.0.0.1:8082", region="us-west", revision="v2"
        )
        assert {r.id: r.revision for r in migrated.list_replicas("echo")} == {
            "r-old": "",
            new.id: "v2",
        }
        assert ts(new.registered_at)  # a time the store can write
    finally:
        migrated.close()
