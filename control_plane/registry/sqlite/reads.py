"""Reads on one SQLite connection, inside a transaction its caller holds, and row decoding.

Owns the column lists of the ``servers`` and ``replicas`` tables, the rows -> model
conversions (through ``registry.rows``: never raises on a bad row), the full state and the
change-log read (``changes_since``: only the servers written after a revision). The store reads
through its own connection under its lock; the watch reads small changes through its probe.

Imports nothing else from this package (``store`` and ``watch`` build on it, not the other way
round) and never imports ``routing``, ``translate`` or ``xds``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping, Sequence

from control_plane.registry import rows
from control_plane.registry.model import (
    RegistryState,
    Replica,
    Server,
    edit_replicas,
    group_replicas,
)

SERVER_COLUMNS = "name, workspace, hostnames, protocol, spec, updated_at, created_at"
REPLICA_COLUMNS = (
    "id, server, host, port, region, zone, weight, state, lease_expires_at, updated_at, revision,"
    " registered_at"
)


def servers(db: sqlite3.Connection, where: str = "", params: Sequence[object] = ()) -> list[Server]:
    return [
        rows.server(*row)
        for row in db.execute(
            f"SELECT {SERVER_COLUMNS} FROM servers {where} ORDER BY name",
            params,
        )
    ]


def replica(db: sqlite3.Connection, replica_id: str) -> Replica:
    row = db.execute(
        f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE id = ?", (replica_id,)
    ).fetchone()
    return to_replica(row)


def replicas(db: sqlite3.Connection) -> list[Replica]:
    return [
        to_replica(row) for row in db.execute(f"SELECT {REPLICA_COLUMNS} FROM replicas ORDER BY id")
    ]


def full_state(db: sqlite3.Connection) -> RegistryState:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return RegistryState.of(
        servers=servers(db),
        replicas=replicas(db),
        revision=int(meta["revision"]),
        committed_at=float(meta["committed_at"]),
    )


# A server with more changed replicas than this since the last read is read whole (one query by
# server instead of an id list that long).
MAX_IDS_PER_SERVER = 500


def changes_since(
    db: sqlite3.Connection, previous: RegistryState, *, limit: int | None = None
) -> RegistryState | None:
    """The state after ``previous`` from what the change log names: the replica rows logged
    alone (``replica_changes``) by id, and every server logged without them (a server write, a
    delete, an older or foreign writer) whole. None when the log was pruned past ``previous``
    (read everything), or when more than ``limit`` replica rows would be read.

    Unchanged servers and replicas keep their objects (and an unchanged server list its
    tuple), so what differs from ``previous`` is cheap to find by identity."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    revision = int(meta["revision"])
    oldest = db.execute("SELECT MIN(revision) FROM changes").fetchone()[0]
    if oldest is None or oldest > previous.revision + 1:
        return None  # the log was pruned past us (or is empty)
    whole: set[str] = set()
    single: dict[str, set[str]] = {}
    for server, replica_id in db.execute(
        "SELECT c.server, r.replica FROM changes c LEFT JOIN replica_changes r"
        " ON r.revision = c.revision AND r.server = c.server WHERE c.revision > ?",
        (previous.revision,),
    ):
        if replica_id is None:
            whole.add(str(server))
        else:
            single.setdefault(str(server), set()).add(str(replica_id))
    for name in [n for n, ids in single.items() if n in whole or len(ids) > MAX_IDS_PER_SERVER]:
        whole.add(name)
        del single[name]
    names = sorted(whole)
    marks = ",".join("?" * len(names))
    ids = sorted(rid for rows in single.values() for rid in rows)
    if limit is not None:
        count = len(ids)
        if names:
            [(count_whole,)] = db.execute(
                f"SELECT COUNT(*) FROM replicas WHERE server IN ({marks})", names
            ).fetchall()
            count += count_whole
        if count > limit:
            return None
    servers_ = previous.servers
    by_server = dict(previous.replicas_by_server)
    if names:
        by_name = {s.name: s for s in previous.servers}
        for name in names:
            by_name.pop(name, None)
            by_server.pop(name, None)
        for server in servers(db, f"WHERE name IN ({marks})", names):
            by_name[server.name] = server
        servers_ = tuple(sorted(by_name.values(), key=lambda s: s.name))
        fresh = [
            to_replica(row)
            for row in db.execute(
                f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE server IN ({marks}) ORDER BY id",
                names,
            )
        ]
        by_server.update(group_replicas(fresh))
    if ids:
        found: dict[str, Replica] = {}
        for start in range(0, len(ids), MAX_IDS_PER_SERVER):
            chunk = ids[start : start + MAX_IDS_PER_SERVER]
            chunk_marks = ",".join("?" * len(chunk))
            for row in db.execute(
                f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE id IN ({chunk_marks})", chunk
            ):
                replica = to_replica(row)
                found[replica.id] = replica
        _apply_replicas(by_server, single, found)
    return RegistryState(
        servers=servers_,
        replicas_by_server=by_server,
        revision=revision,
        committed_at=float(meta["committed_at"]),
    )


def _apply_replicas(
    by_server: dict[str, tuple[Replica, ...]],
    logged: Mapping[str, Collection[str]],
    found: Mapping[str, Replica],
) -> None:
    """Put the replica rows read by id (``found``) in place of the ones ``logged`` per server
    (``model.edit_replicas``): a logged id not found is gone. A row now under another server
    than the one logged (a foreign writer moved it) leaves the logged one and joins its own."""
    edits: dict[str, dict[str, Replica | None]] = {}
    for name, rids in logged.items():
        for rid in rids:
            edits.setdefault(name, {})[rid] = None
    for rid, replica in found.items():
        edits.setdefault(replica.server, {})[rid] = replica
    for name, edited in edits.items():
        rows = edit_replicas(by_server.get(name, ()), edited)
        if rows:
            by_server[name] = rows
        else:
            by_server.pop(name, None)


def to_replica(row: tuple[object, ...]) -> Replica:
    """Never raises: a value of the wrong type is kept for routing to report (see rows.py)."""
    return rows.replica(*row)
