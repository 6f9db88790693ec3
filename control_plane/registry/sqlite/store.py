"""The embedded SQLite registry's store: ``SqliteRegistry``, the ``Registry`` implementation.

Owns opening the database file (WAL mode, foreign keys), its schema (the migrations in
``registry/migrations/sqlite/``, applied on open), the transactions and the writes. Every write
is one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.revision`` and
``meta.committed_at`` and logs what it touched (kept for ``CHANGE_LOG_KEEP`` revisions): the
servers in ``changes``, and a replica written alone also in ``replica_changes``, so the watch
reads only the rows that moved. A lease renewal moves no
revision. The SQL reads are ``reads``; the watch loop is ``watch``, handed this store's
threaded reads; when it looks is ``wake``.

Blocking, like every ``Registry``; one lock serializes the connection between threads. Never
imports ``routing``, ``translate`` or ``xds``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from control_plane.registry import migrations, validate
from control_plane.registry import rows as rows_
from control_plane.registry.errors import ConflictError, NotFoundError, RegistryUnavailableError
from control_plane.registry.model import (
    LoadRecord,
    RegistryState,
    Replica,
    ReplicaState,
    RolloutRow,
    Server,
)
from control_plane.registry.servers import checked_replica, checked_server, plan_puts
from control_plane.registry.sqlite import reads
from control_plane.registry.sqlite.watch import follow

CHANGE_LOG_KEEP = 10_000
CHANGE_LOG_PRUNE_EVERY = 1_000


def path_of(url: str) -> str:
    """``sqlite:///tmp/rp.db`` -> ``/tmp/rp.db``; ``sqlite://rp.db`` -> ``rp.db``."""
    return url.removeprefix("sqlite://")


def _use_wal(db: sqlite3.Connection, *, timeout: float = 10.0) -> None:
    """Put the database in WAL mode. Switching takes an exclusive lock, and SQLite answers
    "database is locked" at once (no busy handler) when another connection switches at the same
    moment, as ``serve --workers`` do on a new file: look again until it is WAL."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            db.execute("PRAGMA journal_mode=WAL")  # ":memory:" stays "memory", as before
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # pacing the retry while the other connection switches


class SqliteRegistry:
    default_poll_interval = 0.005

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_of(url)
        if not self.path:
            raise RegistryUnavailableError(f"registry {url!r}: no database path in the URL")
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise RegistryUnavailableError(
                f"registry {url!r}: directory {str(parent)!r} does not exist"
            )
        try:
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            _use_wal(self._db)
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(f"registry {url!r}: cannot open: {exc}") from exc
        self._lock = threading.Lock()
        # The embedded registry migrates itself on open; `registry init` reports what it did.
        self.applied_on_open: list[str] = self.init()

    def check_reachable(self) -> None:
        """Nothing to do: the constructor already opened (and migrated) the database file."""

    # -- schema -------------------------------------------------------------------------

    def init(self) -> list[str]:
        changed: list[str] = []
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
            for migration in migrations.load("sqlite"):
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                    (migration.version, migration.description, time.time()),
                )
                changed.append(f"applied migration {migration.version}: {migration.description}")
        return changed

    @contextmanager
    def _tx(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise RegistryUnavailableError(f"registry {self.url!r}: {exc}") from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise RegistryUnavailableError(f"registry {self.url!r}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # already rolled back, or the file is gone
            self._db.execute("ROLLBACK")

    def _bump(
        self,
        db: sqlite3.Connection,
        now: float,
        *servers: str,
        replicas: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Move the revision and log what this transaction touched: ``servers`` whole (their
        row, or all of their replicas), and single ``replicas`` as (id, server), so the watch
        reads those rows only (``reads.changes_since``)."""
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        db.execute("UPDATE meta SET value = ? WHERE key = 'committed_at'", (now,))
        revision = int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        whole = set(servers)
        # A server also written whole in this transaction is read whole: none of its replicas
        # is logged alone.
        single = {(rid, server) for rid, server in replicas if server not in whole}
        db.executemany(
            "INSERT OR IGNORE INTO changes VALUES (?, ?)",
            [(revision, s) for s in whole | {server for _, server in single}],
        )
        if single:
            db.executemany(
                "INSERT OR IGNORE INTO replica_changes VALUES (?, ?, ?)",
                [(revision, server, rid) for rid, server in single],
            )
        if revision % CHANGE_LOG_PRUNE_EVERY == 0:
            db.execute("DELETE FROM changes WHERE revision <= ?", (revision - CHANGE_LOG_KEEP,))
            db.execute(
                "DELETE FROM replica_changes WHERE revision <= ?", (revision - CHANGE_LOG_KEEP,)
            )

    # -- servers ------------------------------------------------------------------------

    def create_server(
        self,
        *,
        name: str,
        hostnames: Sequence[str],
        protocol: str,
        workspace: str = "default",
        spec: Mapping[str, Any] | None = None,
    ) -> Server:
        server, _ = self._put_server(
            checked_server(
                name=name,
                hostnames=hostnames,
                protocol=protocol,
                workspace=workspace,
                spec=spec,
                updated_at=time.time(),
            ),
            create_only=True,
        )
        return server

    def put_server(
        self,
        *,
        name: str,
        hostnames: Sequence[str],
        protocol: str,
        workspace: str = "default",
        spec: Mapping[str, Any] | None = None,
    ) -> tuple[Server, str]:
        return self._put_server(
            checked_server(
                name=name,
                hostnames=hostnames,
                protocol=protocol,
                workspace=workspace,
                spec=spec,
                updated_at=time.time(),
            ),
            create_only=False,
        )

    def _put_server(self, server: Server, *, create_only: bool) -> tuple[Server, str]:
        [written] = self._put_servers([server], create_only=create_only)
        return written

    def put_servers(self, servers: Sequence[Server]) -> list[tuple[Server, str]]:
        return self._put_servers(servers, create_only=False)

    def _put_servers(
        self, servers: Sequence[Server], *, create_only: bool
    ) -> list[tuple[Server, str]]:
        with self._tx() as db:
            existing = {s.name: s for s in reads.servers(db)}
            plan = plan_puts(servers, existing, create_only=create_only)
            written: list[tuple[Server, str]] = []
            touched = []
            for server, outcome, current in plan:
                if outcome == "unchanged":
                    written.append((server, outcome))
                    continue
                created_at = current.created_at if current is not None else server.updated_at
                server = replace(server, created_at=created_at)
                db.execute(
                    "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                    " workspace = excluded.workspace, hostnames = excluded.hostnames,"
                    " protocol = excluded.protocol, spec = excluded.spec,"
                    " updated_at = excluded.updated_at",
                    (
                        server.name,
                        server.workspace,
                        json.dumps(list(server.hostnames)),
                        server.protocol,
                        server.spec,
                        server.updated_at,
                        created_at,
                    ),
                )
                touched.append(server.name)
                written.append((server, outcome))
            if touched:
                self._bump(db, max(s.updated_at for s in servers), *touched)
        return written

    def delete_server(self, name: str) -> None:
        with self._tx() as db:
            if db.execute("DELETE FROM servers WHERE name = ?", (name,)).rowcount == 0:
                raise NotFoundError(f"unknown server {name!r}")
            self._bump(db, time.time(), name)

    def list_servers(self) -> list[Server]:
        with self._tx(write=False) as db:
            return reads.servers(db)

    # -- replicas -----------------------------------------------------------------------

    def register_replica(
        self,
        *,
        server: str,
        address: str,
        region: str,
        zone: str = "",
        weight: int = 100,
        state: str = ReplicaState.READY,
        lease_seconds: float | None = None,
        revision: str = "",
    ) -> Replica:
        replica = checked_replica(
            server=server,
            address=address,
            region=region,
            zone=zone,
            weight=weight,
            state=state,
            lease_seconds=lease_seconds,
            revision=revision,
        )
        now = replica.updated_at
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM servers WHERE name = ?", (server,)).fetchone():
                raise NotFoundError(f"unknown server {server!r}")
            db.execute(
                f"INSERT INTO replicas ({reads.REPLICA_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    replica.id,
                    replica.server,
                    replica.host,
                    replica.port,
                    replica.region,
                    replica.zone,
                    replica.weight,
                    replica.state,
                    replica.lease_expires_at,
                    replica.updated_at,
                    replica.revision,
                    replica.registered_at,
                ),
            )
            self._bump(db, now, replicas=[(replica.id, replica.server)])
        return replica

    def set_replica_state(self, replica_id: str, state: str) -> Replica:
        new_state = validate.state(state)
        now = time.time()
        with self._tx() as db:
            updated = db.execute(
                "UPDATE replicas SET state = ?, updated_at = ? WHERE id = ?",
                (new_state, now, replica_id),
            ).rowcount
            if not updated:
                raise NotFoundError(f"unknown replica {replica_id!r}")
            replica = reads.replica(db, replica_id)
            self._bump(db, now, replicas=[(replica.id, replica.server)])
            return replica

    def renew_lease(self, replica_id: str, *, lease_seconds: float) -> Replica:
        validate.lease(lease_seconds)
        now = time.time()
        with self._tx() as db:
            # A renewal changes no routing: it does not move the revision the watch follows.
            updated = db.execute(
                "UPDATE replicas SET lease_expires_at = ? WHERE id = ?",
                (now + lease_seconds, replica_id),
            ).rowcount
            if not updated:
                raise NotFoundError(f"unknown replica {replica_id!r}")
            return reads.replica(db, replica_id)

    def remove_expired(self, *, now: float) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, server FROM replicas WHERE lease_expires_at IS NOT NULL"
                " AND lease_expires_at <= ? ORDER BY id",
                (now,),
            ).fetchall()
            if rows:
                db.executemany("DELETE FROM replicas WHERE id = ?", [(r[0],) for r in rows])
                self._bump(db, time.time(), replicas=[(str(r[0]), str(r[1])) for r in rows])
        return [str(r[0]) for r in rows]

    def deregister_replica(self, replica_id: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT server FROM replicas WHERE id = ?", (replica_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown replica {replica_id!r}")
            db.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))
            self._bump(db, time.time(), replicas=[(replica_id, str(row[0]))])

    def list_replicas(self, server: str | None = None) -> list[Replica]:
        with self._tx(write=False) as db:
            replicas = reads.replicas(db)
        return [r for r in replicas if server is None or r.server == server]

    # -- published load (control_plane/fleet/) -----------------------------------------

    def publish_load(self, record: LoadRecord, *, forget_before: float) -> None:
        """One write, no revision: the watch's probe sees a commit, reads the revision, finds
        it unchanged and reads nothing more."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO load_publishers VALUES (?, ?, ?, ?, ?) ON CONFLICT(publisher) DO"
                " UPDATE SET grp = excluded.grp, written_at = excluded.written_at,"
                " interval = excluded.interval, totals = excluded.totals",
                (
                    record.publisher,
                    record.group,
                    record.written_at,
                    record.interval,
                    record.totals or b"",
                ),
            )
            db.execute("DELETE FROM load_publishers WHERE written_at < ?", (forget_before,))

    def read_load(self, *, max_records: int, max_bytes: int) -> list[LoadRecord]:
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT substr(publisher, 1, 1024), substr(grp, 1, 1024), written_at, interval,"
                " length(totals), CASE WHEN length(totals) <= ? THEN totals END"
                " FROM load_publishers ORDER BY written_at DESC LIMIT ?",
                (max_bytes, max_records),
            ).fetchall()
        return [rows_.load_record(*row) for row in rows]

    # -- rollouts (control_plane/rollout/) ---------------------------------------------
    # Like published load, a rollout row moves no revision: the split a driver writes is a
    # server write of its own.

    def start_rollout(self, *, server: str, body: str, now: float) -> None:
        with self._tx() as db:
            row = db.execute("SELECT state FROM rollouts WHERE server = ?", (server,)).fetchone()
            if row is not None and row[0] == "running":
                raise ConflictError(f"server {server!r} has a rollout running")
            db.execute(
                "INSERT INTO rollouts VALUES (?, 'running', '', 0, ?, ?) ON CONFLICT(server) DO"
                " UPDATE SET state = 'running', holder = '', lease_expires_at = 0,"
                " written_at = excluded.written_at, body = excluded.body",
                (server, now, body),
            )

    def read_rollouts(
        self, *, server: str | None = None, max_rows: int, max_bytes: int
    ) -> list[RolloutRow]:
        where = "" if server is None else " WHERE server = ?"
        with self._tx(write=False) as db:
            rows = db.execute(
                "SELECT substr(server, 1, 512), substr(state, 1, 512), substr(holder, 1, 512),"
                " lease_expires_at, written_at, length(body),"
                " CASE WHEN length(body) <= ? THEN body END"
                f" FROM rollouts{where} ORDER BY state = 'running' DESC, server LIMIT ?",
                (max_bytes, *(() if server is None else (server,)), max_rows),
            ).fetchall()
        return [rows_.rollout_row(*row) for row in rows]

    def hold_rollout(self, *, server: str, holder: str, now: float, lease_seconds: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rollouts SET holder = ?, lease_expires_at = ? WHERE server = ?"
                " AND state = 'running' AND (holder = ? OR holder = '' OR lease_expires_at <= ?"
                " OR typeof(lease_expires_at) NOT IN ('real', 'integer'))",
                (holder, now + lease_seconds, server, holder, now),
            )
            return cursor.rowcount == 1

    def write_rollout(
        self,
        *,
        server: str,
        holder: str,
        state: str,
        body: str,
        now: float,
        lease_seconds: float,
    ) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rollouts SET state = ?, body = ?, written_at = ?, lease_expires_at = ?"
                " WHERE server = ? AND state = 'running' AND holder = ?",
                (state, body, now, now + lease_seconds, server, holder),
            )
            return cursor.rowcount == 1

    def end_rollout(self, *, server: str, state: str, body: str, now: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE rollouts SET state = ?, body = ?, written_at = ?, holder = '',"
                " lease_expires_at = 0 WHERE server = ? AND state = 'running'",
                (state, body, now, server),
            )
            return cursor.rowcount == 1

    # -- state and watch ----------------------------------------------------------------

    def revision(self) -> int:
        with self._lock:
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
            except sqlite3.Error as exc:
                raise RegistryUnavailableError(f"registry {self.url!r}: {exc}") from exc
        return int(row[0])

    def read_state(self) -> RegistryState:
        with self._tx(write=False) as db:
            return reads.full_state(db)

    def _read_changes(self, previous: RegistryState) -> RegistryState:
        """The state after ``previous``, reading only the rows the change log names."""
        with self._tx(write=False) as db:
            state = reads.changes_since(db, previous)
        return state if state is not None else self.read_state()

    def watch(self, *, poll_interval: float = 0.005) -> AsyncIterator[RegistryState]:
        """``watch.follow`` on this database, reading through this store in a thread."""
        return follow(
            path=self.path,
            url=self.url,
            poll_interval=poll_interval,
            read_state=self.read_state,
            read_revision=self.revision,
            read_changes=self._read_changes,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
