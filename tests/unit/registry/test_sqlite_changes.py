"""The watches' incremental reads (issue 29): on SQLite a replica written alone is read alone,
by id, and whatever the writes (replica writes, server writes and deletes, expired leases, a
foreign writer that logs only the server), the state read from the change log equals a full
read; both watches edit a server's replicas in place of sorting them again."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.registry import RegistryState, open_registry
from control_plane.registry.model import Replica, edit_replicas
from control_plane.registry.sqlite import reads
from control_plane.registry.sqlite.store import SqliteRegistry


def _store(path: Path) -> SqliteRegistry:
    registry = open_registry(f"sqlite://{path}")
    assert isinstance(registry, SqliteRegistry)
    return registry


def _changes(registry: SqliteRegistry, previous: RegistryState) -> RegistryState | None:
    with registry._tx(write=False) as db:
        return reads.changes_since(db, previous)


def _fill(registry: SqliteRegistry, server: str, count: int) -> None:
    registry.create_server(name=server, hostnames=[f"{server}.local"], protocol="http")
    now = time.time()
    with registry._tx() as db:
        db.executemany(
            "INSERT INTO replicas VALUES (?, ?, '127.0.0.1', ?, 'us-west', '', 100, 'READY',"
            " NULL, ?, NULL, NULL)",
            [(f"r-{server}-{i:05d}", server, 20_000 + i, now) for i in range(count)],
        )
        registry._bump(db, now, server)


@pytest.fixture
def big(tmp_path: Path) -> Iterator[SqliteRegistry]:
    registry = _store(tmp_path / "rp.db")
    _fill(registry, "big", 1000)
    _fill(registry, "other", 10)
    yield registry
    registry.close()


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the replica rows decoded by reads (each row read is decoded once)."""
    seen: list[str] = []
    decode = reads.to_replica

    def counted(row: tuple[object, ...]) -> object:
        replica = decode(row)
        seen.append(replica.id)
        return replica

    monkeypatch.setattr(reads, "to_replica", counted)
    return seen


def test_one_replica_moved_in_a_server_of_1000_reads_one_row(
    big: SqliteRegistry, decoded: list[str]
) -> None:
    state = big.read_state()
    added = big.register_replica(server="big", address="127.0.0.9:8080", region="us-west")
    decoded.clear()
    after_add = _changes(big, state)
    assert decoded == [added.id]
    assert after_add == big.read_state()
    # Every other replica of the server keeps its object, and the other server its tuple.
    kept = [r for r in after_add.replicas_by_server["big"] if r.id != added.id]
    assert all(a is b for a, b in zip(kept, state.replicas_by_server["big"], strict=True))
    assert after_add.replicas_by_server["other"] is state.replicas_by_server["other"]
    assert after_add.servers is state.servers

    big.set_replica_state("r-big-00500", "DRAINING")
    decoded.clear()
    after_drain = _changes(big, after_add)
    assert decoded == ["r-big-00500"]
    assert after_drain == big.read_state()

    big.deregister_replica(added.id)
    decoded.clear()
    after_remove = _changes(big, after_drain)
    assert decoded == []  # the row is gone: nothing to decode, the id leaves the server
    assert after_remove == big.read_state()
    assert len(after_remove.replicas_by_server["big"]) == 1000


def test_a_server_write_reads_that_server_whole(big: SqliteRegistry, decoded: list[str]) -> None:
    state = big.read_state()
    big.put_server(name="other", hostnames=["other.example"], protocol="http")
    decoded.clear()
    after = _changes(big, state)
    assert sorted(decoded) == [f"r-other-{i:05d}" for i in range(10)]
    assert after == big.read_state()
    assert after.replicas_by_server["big"] is state.replicas_by_server["big"]


def test_a_writer_that_logs_only_the_server_gets_it_read_whole(
    big: SqliteRegistry, decoded: list[str], tmp_path: Path
) -> None:
    """An older (or foreign) writer logs the server in ``changes`` and nothing in
    ``replica_changes``: the server is read whole, so its write is never missed."""
    state = big.read_state()
    with sqlite3.connect(tmp_path / "rp.db") as db:
        db.execute("UPDATE replicas SET port = 9999 WHERE id = 'r-big-00007'")
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        revision = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        db.execute("INSERT INTO changes VALUES (?, 'big')", (revision,))
    decoded.clear()
    after = _changes(big, state)
    assert len(decoded) == 1000
    assert after == big.read_state()
    assert next(r for r in after.replicas_by_server["big"] if r.id == "r-big-00007").port == 9999


SERVERS = ("a", "b", "c")
operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "drain", "deregister", "expire", "put", "delete", "foreign"]),
        st.sampled_from(SERVERS),
        st.integers(0, 30),
    ),
    max_size=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(operations, min_size=1, max_size=4))
def test_any_writes_read_from_the_change_log_equal_a_full_read(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[tuple[str, str, int]]]
) -> None:
    path = tmp_path_factory.mktemp("changes") / "rp.db"
    registry = _store(path)
    try:
        for name in SERVERS[:2]:
            _fill(registry, name, 5)
        state = registry.read_state()
        for batch in batches:
            for op, server, n in batch:
                _write(registry, path, op, server, n)
            after = _changes(registry, state)
            truth = registry.read_state()
            assert after is not None
            assert after.servers == truth.servers
            assert dict(after.replicas_by_server) == dict(truth.replicas_by_server)
            assert after.revision == truth.revision
            state = after
    finally:
        registry.close()


def _write(registry: SqliteRegistry, path: Path, op: str, server: str, n: int) -> None:
    known = {s.name for s in registry.list_servers()}
    replicas = [r for r in registry.list_replicas() if r.server == server]
    if op == "put" or (server not in known and op != "delete"):
        registry.put_server(name=server, hostnames=[f"{server}-{n}.local"], protocol="http")
        return
    if op == "delete":
        if server in known:
            registry.delete_server(server)
        return
    target = replicas[n % len(replicas)] if replicas else None
    if op == "register" or target is None:
        registry.register_replica(
            server=server,
            address=f"127.0.0.1:{10_000 + n}",
            region="us-west",
            lease_seconds=1.0 if n % 2 else None,
        )
    elif op == "drain":
        registry.set_replica_state(target.id, "READY" if target.state == "DRAINING" else "DRAINING")
    elif op == "deregister":
        registry.deregister_replica(target.id)
    elif op == "expire":
        registry.remove_expired(now=time.time() + 2)
    else:  # a foreign writer: a port changed, only the server logged
        with sqlite3.connect(path) as db:
            db.execute("UPDATE replicas SET port = ? WHERE id = ?", (30_000 + n, target.id))
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
            revision = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
            db.execute("INSERT INTO changes VALUES (?, ?)", (revision, server))


ids = st.sampled_from([f"r{i:02d}" for i in range(40)])


@settings(max_examples=200, deadline=None)
@given(
    present=st.sets(ids, max_size=30),
    edits=st.dictionaries(ids, st.one_of(st.none(), st.integers(1, 65535)), max_size=10),
)
def test_editing_a_servers_replicas_equals_sorting_them_again(
    present: set[str], edits: dict[str, int | None]
) -> None:
    """``edit_replicas`` (both watches' apply step) gives what a dict of every row sorted again
    gives, and keeps every replica it did not edit as the same object."""
    current = tuple(
        Replica(id=rid, server="s", host="127.0.0.1", port=1, region="r") for rid in sorted(present)
    )
    rows: dict[str, Replica | None] = {
        rid: None
        if port is None
        else Replica(id=rid, server="s", host="127.0.0.1", port=port, region="r")
        for rid, port in edits.items()
    }
    expected = {r.id: r for r in current}
    for rid, row in rows.items():
        if row is None:
            expected.pop(rid, None)
        else:
            expected[rid] = row
    edited = edit_replicas(current, rows)
    assert edited == tuple(sorted(expected.values(), key=lambda r: r.id))
    kept = {r.id: r for r in current if r.id not in rows}
    assert all(r is kept[r.id] for r in edited if r.id in kept)
