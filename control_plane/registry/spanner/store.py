"""The Cloud Spanner registry's store: ``SpannerRegistry``, the ``Registry`` implementation.

Owns the read-write transactions (servers, replicas, leases, expiry), the list and state reads
and the watch loop. The connection and error mapping are ``connection``, the raw reads are
``reads``, the schema is ``schema``, the watch's follower is ``follow``: this module uses them
through their public names and hands them what they need (the reader, a revision counter)
instead of letting them reach into it.

Lease renewals do not touch ``UpdatedAt``: 10,000 replicas heartbeating must not make the watch
re-route. Every blocking call runs in a thread, never on the event loop.

May import ``google.cloud.spanner`` and ``google.api_core`` (only modules inside
``registry/spanner`` may). Never imports ``routing``, ``translate`` or ``xds``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from google.cloud import spanner

from control_plane import metrics
from control_plane.registry import rows, validate
from control_plane.registry.errors import ConflictError, NotFoundError
from control_plane.registry.model import (
    LoadRecord,
    RegistryState,
    Replica,
    ReplicaState,
    RolloutRow,
    Server,
)
from control_plane.registry.servers import checked_replica, checked_server, plan_puts
from control_plane.registry.spanner import schema
from control_plane.registry.spanner.connection import Connection
from control_plane.registry.spanner.follow import TOMBSTONE_RETENTION, Follower
from control_plane.registry.spanner.reads import (
    REPLICA_FIELDS,
    REPLICA_PAGE,
    SERVER_FIELDS,
    SERVER_PAGE,
    Layout,
    TablePages,
    read_full_state,
    read_layout,
    to_replica,
    to_server,
    ts,
)

ROLLOUT_FIELDS = ("Server", "State", "Holder", "LeaseExpiresAt", "WrittenAt", "Body")


class SpannerRegistry:
    default_poll_interval = 0.01
    # Spanner migrates only in ``init``, never on open.
    applied_on_open: Sequence[str] = ()

    def __init__(self, url: str) -> None:
        self._conn = Connection(url)
        self.url = url
        self.project = self._conn.project
        self.instance_id = self._conn.instance_id
        self.database_id = self._conn.database_id
        self.emulator = self._conn.emulator
        self._reader = self._conn.reader
        self._revision = 0
        self._lock = threading.Lock()
        self._sweep_layout: Layout | None = None

    @property
    def database(self) -> Any:
        """The current ``google.cloud.spanner`` ``Database`` (replaced on reconnect)."""
        return self._conn.database

    def _next_revision(self) -> int:
        with self._lock:
            self._revision += 1
            return self._revision

    def check_reachable(self) -> None:
        """Fail fast (one short RPC) when Spanner cannot be reached or the database is missing."""
        self._conn.call("connect", self._reader.session_name)

    # -- schema -------------------------------------------------------------------------

    def init(self) -> list[str]:
        conn = self._conn
        return conn.call(
            "init",
            lambda: schema.init(
                client=conn.client,
                instance=conn.instance,
                database=conn.database,
                url=conn.url,
                project=conn.project,
                instance_id=conn.instance_id,
                database_id=conn.database_id,
                emulator=conn.emulator,
            ),
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
        server = checked_server(
            name=name, hostnames=hostnames, protocol=protocol, workspace=workspace, spec=spec
        )
        return self._put_server(server, create_only=True)[0]

    def put_server(
        self,
        *,
        name: str,
        hostnames: Sequence[str],
        protocol: str,
        workspace: str = "default",
        spec: Mapping[str, Any] | None = None,
    ) -> tuple[Server, str]:
        server = checked_server(
            name=name, hostnames=hostnames, protocol=protocol, workspace=workspace, spec=spec
        )
        return self._put_server(server, create_only=False)

    def _put_server(self, server: Server, *, create_only: bool) -> tuple[Server, str]:
        [written] = self._put_servers([server], create_only=create_only)
        return written

    def put_servers(self, servers: Sequence[Server]) -> list[tuple[Server, str]]:
        return self._put_servers(servers, create_only=False)

    def _put_servers(
        self, servers: Sequence[Server], *, create_only: bool
    ) -> list[tuple[Server, str]]:
        def write(tx: Any) -> list[tuple[Server, str]]:
            existing = {
                s.name: s
                for s in (
                    to_server(r)
                    for r in tx.read("Servers", SERVER_FIELDS, spanner.KeySet(all_=True))
                )
            }
            written: list[tuple[Server, str]] = []
            for server, outcome, current in plan_puts(servers, existing, create_only=create_only):
                values = (
                    server.name,
                    server.workspace,
                    list(server.hostnames),
                    server.protocol,
                    server.spec,
                    spanner.COMMIT_TIMESTAMP,
                )
                if outcome == "created":  # CreatedAt is written once, by the insert
                    tx.insert(
                        "Servers",
                        columns=SERVER_FIELDS,
                        values=[(*values, spanner.COMMIT_TIMESTAMP)],
                    )
                elif outcome == "updated":
                    assert current is not None
                    tx.update("Servers", columns=SERVER_FIELDS[:-1], values=[values])
                    server = replace(server, created_at=current.created_at)
                written.append((server, outcome))
            return written

        return self._conn.transact("put servers", write)

    def delete_server(self, name: str) -> None:
        def write(tx: Any) -> None:
            rows = list(tx.read("Servers", ("ServerName",), spanner.KeySet(keys=[[name]])))
            if not rows:
                raise NotFoundError(f"unknown server {name!r}")
            tx.delete("Servers", spanner.KeySet(keys=[[name]]))
            tx.insert_or_update(
                "Tombstones",
                columns=("Kind", "Key", "DeletedAt"),
                values=[("server", name, spanner.COMMIT_TIMESTAMP)],
            )

        self._conn.transact("delete server", write)

    def list_servers(self) -> list[Server]:
        def read() -> list[Server]:
            # In pages by primary key (ServerName order): one query could exceed a message.
            _, (rows,) = self._reader.read(
                [TablePages("Servers", SERVER_FIELDS, keys=1, page=SERVER_PAGE)]
            )
            return [to_server(r) for r in rows]

        return self._conn.call("list servers", read)

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

        def write(tx: Any) -> None:
            if not list(tx.read("Servers", ("ServerName",), spanner.KeySet(keys=[[server]]))):
                raise NotFoundError(f"unknown server {server!r}")
            tx.insert(
                "Replicas",
                columns=REPLICA_FIELDS,
                values=[
                    (
                        replica.server,
                        replica.id,
                        replica.host,
                        replica.port,
                        replica.region,
                        replica.zone,
                        replica.weight,
                        replica.state,
                        None if replica.lease_expires_at is None else ts(replica.lease_expires_at),
                        spanner.COMMIT_TIMESTAMP,
                        replica.revision or None,
                        ts(replica.registered_at),
                    )
                ],
            )

        self._conn.transact("register replica", write)
        return replica

    def _find(self, tx: Any, replica_id: str) -> Replica:
        # Read API by key (a seek) rather than SQL (a scan on the emulator).
        keys = list(
            tx.read(
                "Replicas",
                ("ServerName", "Id"),
                spanner.KeySet(keys=[[replica_id]]),
                index="ReplicasById",
            )
        )
        if not keys:
            raise NotFoundError(f"unknown replica {replica_id!r}")
        rows = list(tx.read("Replicas", REPLICA_FIELDS, spanner.KeySet(keys=[list(keys[0])])))
        return to_replica(rows[0])

    def set_replica_state(self, replica_id: str, state: str) -> Replica:
        new_state = validate.state(state)

        def write(tx: Any) -> Replica:
            replica = self._find(tx, replica_id)
            tx.update(
                "Replicas",
                columns=("ServerName", "Id", "State", "UpdatedAt"),
                values=[(replica.server, replica.id, new_state, spanner.COMMIT_TIMESTAMP)],
            )
            return replica

        replica = self._conn.transact("set replica state", write)
        return Replica(**{**_fields(replica), "state": new_state})

    def renew_lease(self, replica_id: str, *, lease_seconds: float) -> Replica:
        validate.lease(lease_seconds)
        expires = time.time() + lease_seconds

        def write(tx: Any) -> Replica:
            replica = self._find(tx, replica_id)
            tx.update(
                "Replicas",
                columns=("ServerName", "Id", "LeaseExpiresAt"),
                values=[(replica.server, replica.id, ts(expires))],
            )
            return replica

        replica = self._conn.transact("renew lease", write)
        return Replica(**{**_fields(replica), "lease_expires_at": expires})

    def deregister_replica(self, replica_id: str) -> None:
        def write(tx: Any) -> None:
            replica = self._find(tx, replica_id)
            tx.delete("Replicas", spanner.KeySet(keys=[[replica.server, replica.id]]))
            tx.insert_or_update(
                "Tombstones",
                columns=("Kind", "Key", "DeletedAt"),
                values=[("replica", replica.id, spanner.COMMIT_TIMESTAMP)],
            )

        self._conn.transact("deregister replica", write)

    def remove_expired(self, *, now: float) -> list[str]:
        # Look first in a read-only snapshot (cheap, no lock): the emulator runs one read-write
        # transaction at a time, and most ticks find nothing to do. On the sweep's own session:
        # the watch polls on the other one meanwhile.
        # The index layout is learnt once, and again after any failed look (migration 6 drops
        # the plain indexes: that look fails, and its retry reads the sharded ones).
        def look() -> tuple[list[list[Any]], list[list[Any]]]:
            if self._sweep_layout is None:
                self._sweep_layout = read_layout(self._conn.sweep_reader)
            layout = self._sweep_layout
            try:
                _, (expired, old) = self._conn.sweep_reader.read(
                    [
                        layout.leases_until(ts(now)),
                        layout.tombstones_until(ts(now - TOMBSTONE_RETENTION)),
                    ]
                )
            except Exception:
                self._sweep_layout = None
                raise
            return expired, old

        expired, old = self._conn.call("look for expired leases", look)
        if not expired and not old:
            return []

        def write(tx: Any) -> list[str]:
            removed: list[str] = []
            if expired:
                keys = [list(r) for r in expired]
                current = list(
                    tx.read(
                        "Replicas",
                        ("ServerName", "Id", "LeaseExpiresAt"),
                        spanner.KeySet(keys=keys),
                    )
                )
                # Renewed since we looked? Then it stays.
                gone = [r for r in current if r[2] is not None and r[2].timestamp() <= now]
                if gone:
                    tx.delete("Replicas", spanner.KeySet(keys=[[r[0], r[1]] for r in gone]))
                    tx.insert_or_update(
                        "Tombstones",
                        columns=("Kind", "Key", "DeletedAt"),
                        values=[("replica", r[1], spanner.COMMIT_TIMESTAMP) for r in gone],
                    )
                    removed = sorted(str(r[1]) for r in gone)
            if old:
                tx.delete("Tombstones", spanner.KeySet(keys=[list(r) for r in old]))
            return removed

        return self._conn.transact("remove expired", write)

    def list_replicas(self, server: str | None = None) -> list[Replica]:
        def read() -> list[Replica]:
            # In pages by primary key, only ``server``'s rows when it is given.
            prefix = () if server is None else (server,)
            pages = TablePages("Replicas", REPLICA_FIELDS, keys=2, page=REPLICA_PAGE, prefix=prefix)
            _, (rows,) = self._reader.read([pages])
            return sorted((to_replica(r) for r in rows), key=lambda r: r.id)

        return self._conn.call("list replicas", read)

    # -- published load (control_plane/fleet/) -----------------------------------------

    def publish_load(self, record: LoadRecord, *, forget_before: float) -> None:
        """One mutation of ``LoadPublishers``, a table the watch never reads; the records
        written before ``forget_before`` are deleted in the same commit (found on the load
        reader's session first: usually none)."""

        def look() -> list[list[Any]]:
            _, (old,) = self._conn.load_reader.read(
                [
                    (
                        f"SELECT Publisher FROM LoadPublishers WHERE WrittenAt < {forget_before!r}",
                        None,
                    )
                ]
            )
            return old

        old = self._conn.call("look for old load records", look)

        def write(tx: Any) -> None:
            tx.insert_or_update(
                "LoadPublishers",
                columns=("Publisher", "PublisherGroup", "WrittenAt", "ReportInterval", "Totals"),
                values=[
                    (
                        record.publisher,
                        record.group,
                        record.written_at,
                        record.interval,
                        base64.b64encode(record.totals or b""),
                    )
                ],
            )
            if old:
                tx.delete("LoadPublishers", spanner.KeySet(keys=[[r[0]] for r in old]))

        self._conn.transact("publish load", write)

    def read_load(self, *, max_records: int, max_bytes: int) -> list[LoadRecord]:
        def read() -> list[list[Any]]:
            _, (found,) = self._conn.load_reader.read(
                [
                    (
                        "SELECT SUBSTR(Publisher, 1, 1024), SUBSTR(PublisherGroup, 1, 1024),"
                        " WrittenAt, ReportInterval, BYTE_LENGTH(Totals),"
                        f" IF(BYTE_LENGTH(Totals) <= {int(max_bytes)}, Totals, NULL)"
                        " FROM LoadPublishers ORDER BY WrittenAt DESC"
                        f" LIMIT {int(max_records)}",
                        None,
                    )
                ]
            )
            return found

        found = self._conn.call("read load", read)
        return [
            rows.load_record(row[0], row[1], row[2], row[3], row[4], _bytes(row[5]))
            for row in found
        ]

    # -- rollouts (control_plane/rollout/) ---------------------------------------------
    # A table the watch never reads: a rollout row re-routes nothing (the split a driver
    # writes is a server write of its own). Each conditional write reads the row in its
    # read-write transaction, so two writers never both succeed.

    def _rollout_state(self, tx: Any, server: str) -> tuple[str, str, float] | None:
        found = list(
            tx.read(
                "Rollouts",
                ("State", "Holder", "LeaseExpiresAt"),
                spanner.KeySet(keys=[[server]]),
            )
        )
        if not found:
            return None
        state, holder, lease = found[0]
        return str(state), str(holder), float(lease)

    def start_rollout(self, *, server: str, body: str, now: float) -> None:
        def write(tx: Any) -> None:
            current = self._rollout_state(tx, server)
            if current is not None and current[0] == "running":
                raise ConflictError(f"server {server!r} has a rollout running")
            tx.insert_or_update(
                "Rollouts",
                columns=ROLLOUT_FIELDS,
                values=[(server, "running", "", 0.0, now, body)],
            )

        self._conn.transact("start rollout", write)

    def read_rollouts(
        self, *, server: str | None = None, max_rows: int, max_bytes: int
    ) -> list[RolloutRow]:
        def read() -> list[list[Any]]:
            where = "" if server is None else " WHERE Server = @server"
            with self.database.snapshot() as snap:
                return [
                    list(row)
                    for row in snap.execute_sql(
                        "SELECT SUBSTR(Server, 1, 512), SUBSTR(State, 1, 512),"
                        " SUBSTR(Holder, 1, 512), LeaseExpiresAt, WrittenAt, BYTE_LENGTH(Body),"
                        f" IF(BYTE_LENGTH(Body) <= {int(max_bytes)}, Body, NULL)"
                        f" FROM Rollouts{where}"
                        " ORDER BY IF(State = 'running', 0, 1), Server"
                        f" LIMIT {int(max_rows)}",
                        params=None if server is None else {"server": server},
                        param_types=(
                            None if server is None else {"server": spanner.param_types.STRING}
                        ),
                    )
                ]

        return [rows.rollout_row(*row) for row in self._conn.call("read rollouts", read)]

    def hold_rollout(self, *, server: str, holder: str, now: float, lease_seconds: float) -> bool:
        def write(tx: Any) -> bool:
            current = self._rollout_state(tx, server)
            if current is None or current[0] != "running":
                return False
            _, held_by, lease = current
            if held_by not in ("", holder) and lease > now:
                return False
            tx.update(
                "Rollouts",
                columns=("Server", "Holder", "LeaseExpiresAt"),
                values=[(server, holder, now + lease_seconds)],
            )
            return True

        return self._conn.transact("hold rollout", write)

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
        def write(tx: Any) -> bool:
            current = self._rollout_state(tx, server)
            if current is None or current[0] != "running" or current[1] != holder:
                return False
            tx.update(
                "Rollouts",
                columns=ROLLOUT_FIELDS,
                values=[(server, state, holder, now + lease_seconds, now, body)],
            )
            return True

        return self._conn.transact("write rollout", write)

    def end_rollout(self, *, server: str, state: str, body: str, now: float) -> bool:
        def write(tx: Any) -> bool:
            current = self._rollout_state(tx, server)
            if current is None or current[0] != "running":
                return False
            tx.update(
                "Rollouts", columns=ROLLOUT_FIELDS, values=[(server, state, "", 0.0, now, body)]
            )
            return True

        return self._conn.transact("end rollout", write)

    # -- state and watch ----------------------------------------------------------------

    def read_state(self) -> RegistryState:
        return self._conn.call("read state", lambda: self._full_read()[0])

    def _full_read(self) -> tuple[RegistryState, dt.datetime]:
        return read_full_state(self._reader, self._next_revision)

    async def watch(self, *, poll_interval: float = 0.01) -> AsyncIterator[RegistryState]:
        follower = Follower(self._reader, self._next_revision)
        state = await asyncio.to_thread(self._conn.call, "full read", follower.full)
        yield state
        while True:
            await asyncio.sleep(poll_interval)
            metrics.WATCH_POLLS.inc()
            changed = await asyncio.to_thread(self._conn.call, "watch", follower.tick)
            if changed is not None:
                yield changed

    def close(self) -> None:
        self._conn.close()


def _bytes(value: Any) -> bytes | None:
    """A BYTES column as read (base64 text) -> bytes; None when absent or not base64."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return None


def _fields(replica: Replica) -> dict[str, Any]:
    return {name: getattr(replica, name) for name in Replica.__slots__}
