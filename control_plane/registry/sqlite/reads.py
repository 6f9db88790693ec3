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
from collections.abc import Sequence

from control_plane.registry import rows
from control_plane.registry.model import RegistryState, Replica, Server, group_replicas

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


def changes_since(
    db: sqlite3.Connection, previous: RegistryState, *, limit: int | None = None
) -> RegistryState | None:
    """The state after ``previous`` from the servers the change log names; None when the log
    was pruned past ``previous`` (read everything) or when those servers hold more than
    ``limit`` replicas."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    revision = int(meta["revision"])
    oldest = db.execute("SELECT MIN(revision) FROM changes").fetchone()[0]
    if oldest is None or oldest > previous.revision + 1:
        return None  # the log was pruned past us (or is empty)
    names = sorted(
        str(r[0])
        for r in db.execute(
            "SELECT DISTINCT server FROM changes WHERE revision > ?", (previous.revision,)
        )
    )
    marks = ",".join("?" * len(names))
    if limit is not None:
        [(count,)] = db.execute(
            f"SELECT COUNT(*) FROM replicas WHERE server IN ({marks})", names
        ).fetchall()
        if count > limit:
            return None
    by_name = {s.name: s for s in previous.servers}
    by_server = dict(previous.replicas_by_server)
    for name in names:
        by_name.pop(name, None)
        by_server.pop(name, None)
    for server in servers(db, f"WHERE name IN ({marks})", names):
        by_name[server.name] = server
    fresh = [
        to_replica(row)
        for row in db.execute(
            f"SELECT {REPLICA_COLUMNS} FROM replicas WHERE server IN ({marks}) ORDER BY id",
            names,
        )
    ]
    by_server.update(group_replicas(fresh))
    return RegistryState(
        servers=tuple(sorted(by_name.values(), key=lambda s: s.name)),
        replicas_by_server=by_server,
        revision=revision,
        committed_at=float(meta["committed_at"]),
    )


def to_replica(row: tuple[object, ...]) -> Replica:
    """Never raises: a value of the wrong type is kept for routing to report (see rows.py)."""
    return rows.replica(*row)
