"""The embedded SQLite registry: the default, needing nothing installed.

Every write is one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.revision`` and
``meta.committed_at``. The watch asks SQLite each tick whether any connection committed since
the last tick (``PRAGMA data_version`` on a read-only connection of its own, answered from the
WAL index in microseconds on the event loop, no thread hop); only then does it read that
revision (one tiny indexed read on the same connection, also on the loop; in a worker thread
when the database is busy) and, when it moved, the servers the change log names (on the loop
too when they hold at most ``SMALL_READ`` replicas, else in a worker thread). Any commit by
any writer moves ``data_version``, so the probe never hides a change; the revision is also read
once a second whatever the probe says (through the registry's own connection, in a thread), so
a broken database is still noticed while idle.

On Linux the probe also runs as soon as inotify reports a write to the database, its WAL or its
journal (``sqlite_wake.Wake``), so a commit by any process is seen within a fraction of a
millisecond; the poll is then a safety net that runs at most every 100 ms until a commit
arrives without an event (then every tick). Without inotify, commits are seen within a tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from control_plane import metrics
from control_plane.registry import migrations, rows, validate
from control_plane.registry.errors import (
    NotFoundError,
    RegistryUnavailableError,
)
from control_plane.registry.model import (
    RegistryState,
    Replica,
    ReplicaState,
    Server,
    group_replicas,
)
from control_plane.registry.servers import checked_replica, checked_server, plan_puts
from control_plane.registry.sqlite.wake import Wake

log = structlog.get_logger("routeplane.registry")

CHANGE_LOG_KEEP = 10_000
CHANGE_LOG_PRUNE_EVERY = 1_000
# The watch reads the revision at least this often, even when the probe says nothing changed.
REVISION_CHECK_EVERY = 1.0
# A change to servers holding at most this many replicas is read on the event loop.
SMALL_READ = 200


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

    def _bump(self, db: sqlite3.Connection, now: float, *servers: str) -> None:
        """Move the revision and log which servers this transaction touched."""
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        db.execute("UPDATE meta SET value = ? WHERE key = 'committed_at'", (now,))
        revision = int(db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        db.executemany(
            "INSERT OR IGNORE INTO changes VALUES (?, ?)", [(revision, s) for s in set(servers)]
        )
        if revision % CHANGE_LOG_PRUNE_EVERY == 0:
            db.execute("DELETE FROM changes WHERE revision <= ?", (revision - CHANGE_LOG_KEEP,))

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
            existing = {s.name: s for s in self._servers(db)}
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
            return self._servers(db)

    @staticmethod
    def _servers(
        db: sqlite3.Connection, where: str = "", params: Sequence[object] = ()
    ) -> list[Server]:
        return [
            rows.server(*row)
            for row in db.execute(
                "SELECT name, workspace, hostnames, protocol, spec, updated_at, created_at "
                "FROM servers "
                f"{where} ORDER BY name",
                params,
            )
        ]

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
    ) -> Replica:
        replica = checked_replica(
            server=server,
            address=address,
            region=region,
            zone=zone,
            weight=weight,
            state=state,
            lease_seconds=lease_seconds,
        )
        now = replica.updated_at
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM servers WHERE name = ?", (server,)).fetchone():
                raise NotFoundError(f"unknown server {server!r}")
            db.execute(
                "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
            self._bump(db, now, replica.server)
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
            replica = self._replica(db, replica_id)
            self._bump(db, now, replica.server)
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
            return self._replica(db, replica_id)

    def remove_expired(self, *, now: float) -> list[str]:
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, server FROM replicas WHERE lease_expires_at IS NOT NULL"
                " AND lease_expires_at <= ? ORDER BY id",
                (now,),
            ).fetchall()
            if rows:
                db.executemany("DELETE FROM replicas WHERE id = ?", [(r[0],) for r in rows])
                self._bump(db, time.time(), *(str(r[1]) for r in rows))
        return [str(r[0]) for r in rows]

    def deregister_replica(self, replica_id: str) -> None:
        with self._tx() as db:
            row = db.execute("SELECT server FROM replicas WHERE id = ?", (replica_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown replica {replica_id!r}")
            db.execute("DELETE FROM replicas WHERE id = ?", (replica_id,))
            self._bump(db, time.time(), str(row[0]))

    def list_replicas(self, server: str | None = None) -> list[Replica]:
        with self._tx(write=False) as db:
            replicas = self._replicas(db)
        return [r for r in replicas if server is None or r.server == server]

    _REPLICA_COLUMNS = (
        "id, server, host, port, region, zone, weight, state, lease_expires_at, updated_at"
    )

    def _replica(self, db: sqlite3.Connection, replica_id: str) -> Replica:
        row = db.execute(
            f"SELECT {self._REPLICA_COLUMNS} FROM replicas WHERE id = ?", (replica_id,)
        ).fetchone()
        return _to_replica(row)

    def _replicas(self, db: sqlite3.Connection) -> list[Replica]:
        return [
            _to_replica(row)
            for row in db.execute(f"SELECT {self._REPLICA_COLUMNS} FROM replicas ORDER BY id")
        ]

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
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            return RegistryState.of(
                servers=self._servers(db),
                replicas=self._replicas(db),
                revision=int(meta["revision"]),
                committed_at=float(meta["committed_at"]),
            )

    def _read_changes(self, previous: RegistryState) -> RegistryState:
        """The state after ``previous``, reading only the servers the change log names."""
        with self._tx(write=False) as db:
            state = self._changes_since(db, previous)
        return state if state is not None else self.read_state()

    def _read_small_changes(
        self, probe: sqlite3.Connection, previous: RegistryState
    ) -> RegistryState | None:
        """:meth:`_read_changes` on the watch's probe, on the event loop, when the servers the
        change log names hold at most ``SMALL_READ`` replicas (a thread hop is most of the
        cost of such a read); None otherwise, or when the database is busy."""
        try:
            probe.execute("BEGIN")
        except sqlite3.Error:
            return None
        try:
            return self._changes_since(probe, previous, limit=SMALL_READ)
        except sqlite3.Error:
            return None
        finally:
            with contextlib.suppress(sqlite3.Error):
                probe.execute("COMMIT")

    def _changes_since(
        self, db: sqlite3.Connection, previous: RegistryState, *, limit: int | None = None
    ) -> RegistryState | None:
        """Within a read transaction: the state after ``previous`` from the servers the change
        log names; None when the log was pruned past ``previous`` (read everything) or when
        those servers hold more than ``limit`` replicas."""
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
        servers = {s.name: s for s in previous.servers}
        by_server = dict(previous.replicas_by_server)
        for name in names:
            servers.pop(name, None)
            by_server.pop(name, None)
        for server in self._servers(db, f"WHERE name IN ({marks})", names):
            servers[server.name] = server
        fresh = [
            _to_replica(row)
            for row in db.execute(
                f"SELECT {self._REPLICA_COLUMNS} FROM replicas "
                f"WHERE server IN ({marks}) ORDER BY id",
                names,
            )
        ]
        by_server.update(group_replicas(fresh))
        return RegistryState(
            servers=tuple(sorted(servers.values(), key=lambda s: s.name)),
            replicas_by_server=by_server,
            revision=revision,
            committed_at=float(meta["committed_at"]),
        )

    async def watch(self, *, poll_interval: float = 0.005) -> AsyncIterator[RegistryState]:
        probe = self._open_probe()
        wake = Wake(self.path, poll_interval)
        try:
            # Read before the state, so a commit in between shows up as a change to check.
            seen = _data_version(probe)
            state = await asyncio.to_thread(self.read_state)
            yield state
            checked = time.monotonic()
            while True:
                hinted = await wake.wait()
                metrics.WATCH_POLLS.inc()
                version = _data_version(probe)
                wake.probed(hinted=hinted)
                now = time.monotonic()
                if version is not None and version == seen and now - checked < REVISION_CHECK_EVERY:
                    continue  # no connection committed anything since the last look
                revision = None
                if version is not None and version != seen:
                    wake.committed()
                    # Answered on the loop like the probe; a commit that did not move the
                    # revision (a lease renewal) costs no thread hop.
                    revision = _probe_revision(probe)
                seen, checked = version, now
                if revision is None:
                    revision = await asyncio.to_thread(self.revision)
                if revision != state.revision:
                    fresh = self._read_small_changes(probe, state)
                    if fresh is None:
                        fresh = await asyncio.to_thread(self._read_changes, state)
                    state = fresh
                    yield state
        finally:
            wake.close()
            probe.close()

    def _open_probe(self) -> sqlite3.Connection:
        """A connection that never writes, so its ``data_version`` moves on every commit (a
        connection's own commits do not move it). ``timeout=0``: a busy database answers at
        once (the tick then takes the threaded path) instead of blocking the event loop."""
        try:
            return sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise RegistryUnavailableError(f"registry {self.url!r}: cannot open: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _data_version(probe: sqlite3.Connection) -> int | None:
    """SQLite's count of commits by other connections; None when it cannot tell right now."""
    try:
        return int(probe.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error:
        return None


def _probe_revision(probe: sqlite3.Connection) -> int | None:
    """The revision as the probe reads it; None when it cannot tell right now (busy)."""
    try:
        rows = probe.execute("SELECT value FROM meta WHERE key = 'revision'").fetchall()
        return int(rows[0][0])
    except (sqlite3.Error, IndexError, TypeError, ValueError):
        return None


def _to_replica(row: tuple[object, ...]) -> Replica:
    """Never raises: a value of the wrong type is kept for routing to report (see rows.py)."""
    return rows.replica(*row)
