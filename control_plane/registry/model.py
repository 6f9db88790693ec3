"""Registry rows as values, and the :class:`Registry` boundary every store implements.

Rows are stored as written (after validation at write time); ``routing`` still checks them,
since a row may have been written by an older or foreign writer.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from operator import attrgetter
from typing import Any, Protocol


class ServerProtocol(StrEnum):
    HTTP = "http"
    HTTP2 = "http2"
    GRPC = "grpc"


class ReplicaState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    DRAINING = "DRAINING"


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    name: str
    workspace: str = "default"
    hostnames: tuple[str, ...]
    protocol: str
    spec: str = "{}"  # the routing policy, canonical JSON (see registry/spec.py)
    updated_at: float = 0.0
    # When the server was first written (unix seconds; 0 for rows older than the column): the
    # first to claim a hostname keeps it when another server claims it too.
    created_at: float = 0.0

    def same_config(self, other: Server) -> bool:
        return (self.workspace, self.hostnames, self.protocol, self.spec) == (
            other.workspace,
            other.hostnames,
            other.protocol,
            other.spec,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    id: str
    server: str
    host: str
    port: int
    region: str
    zone: str = ""
    weight: int = 100
    state: str = ReplicaState.READY
    lease_expires_at: float | None = None
    updated_at: float = 0.0
    # Which version of the server this replica runs (issue 26): "" for none (rows from older
    # writers), else a short name (``validate.revision``).
    revision: str = ""
    # When the replica was first registered (unix seconds; 0 for rows older than the column):
    # a traffic split's ``latest`` is the revision that appeared last.
    registered_at: float = 0.0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryState:
    """Every row at one registry revision; must not be altered.

    ``replicas_by_server`` maps a server name to its replicas sorted by id (replicas of an
    unknown server are kept under that name, for routing to report). ``committed_at`` is the
    wall-clock time of the newest commit included (for convergence measurements). What changed
    since another state is not carried: the pipeline finds it by comparing values (a watch that
    reuses the tuples of unchanged servers makes that comparison cheap).
    """

    servers: tuple[Server, ...]
    replicas_by_server: Mapping[str, tuple[Replica, ...]]
    revision: int
    committed_at: float

    @property
    def replicas(self) -> tuple[Replica, ...]:
        """Every replica, sorted by id (O(n log n): for tools and tests, not hot paths)."""
        return tuple(
            sorted(chain.from_iterable(self.replicas_by_server.values()), key=lambda r: r.id)
        )

    @classmethod
    def of(
        cls,
        *,
        servers: Iterable[Server],
        replicas: Iterable[Replica],
        revision: int,
        committed_at: float,
    ) -> RegistryState:
        return cls(
            servers=tuple(sorted(servers, key=lambda s: s.name)),
            replicas_by_server=group_replicas(replicas),
            revision=revision,
            committed_at=committed_at,
        )


_replica_id = attrgetter("id")


def edit_replicas(
    current: tuple[Replica, ...], edits: Mapping[str, Replica | None]
) -> tuple[Replica, ...]:
    """``current`` (one server's replicas, sorted by id) with each id of ``edits`` replaced or
    added (a row) or removed (None): the result stays sorted by id and every other replica keeps
    its object, so a watch that moves one replica of 10,000 hands on 9,999 identical objects
    (what the pipeline compares by identity first) without sorting them again."""
    rows = list(current)
    for rid in sorted(edits):
        row = edits[rid]
        at = bisect_left(rows, rid, key=_replica_id)
        if at < len(rows) and rows[at].id == rid:
            if row is None:
                del rows[at]
            else:
                rows[at] = row
        elif row is not None:
            rows.insert(at, row)
    return tuple(rows)


def group_replicas(replicas: Iterable[Replica]) -> dict[str, tuple[Replica, ...]]:
    grouped: dict[str, list[Replica]] = {}
    for replica in replicas:
        grouped.setdefault(replica.server, []).append(replica)
    return {name: tuple(sorted(rows, key=lambda r: r.id)) for name, rows in grouped.items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadRecord:
    """One control-plane process's published load (``control_plane/fleet/``): who wrote it
    (``publisher``, unique per process start; ``group``, shared by the workers of one ``serve
    --workers``), when (unix seconds, the writer's clock), its report interval, and its totals
    as serialized bytes (None when read past the reader's byte bound: ``size`` says how big).
    The store keeps them apart from routing: writing one never moves the revision."""

    publisher: str
    group: str
    written_at: float
    interval: float
    totals: bytes | None
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRow:
    """A server's rollout as stored (``control_plane/rollout/`` reads its ``body``, the record
    as JSON text): its ``state`` ("running" while a driver moves it), the control-plane process
    holding it (``holder``, "" for none) and until when (``lease_expires_at``, unix seconds).
    ``body`` is None when it was past the reader's byte bound (``size`` says how big) or not
    text. Kept apart from routing: writing one never moves the revision."""

    server: str
    state: str
    holder: str
    lease_expires_at: float
    written_at: float
    body: str | None
    size: int


class Registry(Protocol):
    """A replica registry. Every write is one transaction, validated before it is written.

    Methods are blocking (callers on an event loop use a thread); ``watch`` is the exception.
    """

    url: str

    @property
    def default_poll_interval(self) -> float:
        """Seconds between watch polls when the operator sets none (``serve --poll-interval``)."""
        ...

    @property
    def applied_on_open(self) -> Sequence[str]:
        """Schema changes the store made while opening (an embedded store migrates itself);
        ``registry init`` reports them before its own. Empty when only ``init`` migrates."""
        ...

    def check_reachable(self) -> None:
        """Raise RegistryUnavailableError within moments (one short round trip, not a client's
        long retries) when the store cannot be reached or its database is missing."""
        ...

    def init(self) -> list[str]:
        """Create or migrate the schema; returns what was changed (empty when up to date)."""
        ...

    def create_server(
        self,
        *,
        name: str,
        hostnames: Sequence[str],
        protocol: str,
        workspace: str = "default",
        spec: Mapping[str, Any] | None = None,
    ) -> Server:
        """Create a server; ConflictError if it exists or a hostname+prefix is taken."""
        ...

    def put_server(
        self,
        *,
        name: str,
        hostnames: Sequence[str],
        protocol: str,
        workspace: str = "default",
        spec: Mapping[str, Any] | None = None,
    ) -> tuple[Server, str]:
        """Create or update a server (idempotent); returns it and "created", "updated" or
        "unchanged"."""
        ...

    def put_servers(self, servers: Sequence[Server]) -> list[tuple[Server, str]]:
        """Create or update every server of ``servers`` (validated, e.g. by
        ``servers.checked_server``) in one transaction: all are written or none. Hostname
        conflicts are checked among them and against every other server first
        (ConflictError naming both). Returns each with its outcome, in order."""
        ...

    def delete_server(self, name: str) -> None: ...

    def list_servers(self) -> list[Server]: ...

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
        """Register a replica (a fresh id), ``revision`` the version of its server it runs
        ("" for none); ``registered_at`` is now and never changes."""
        ...

    def set_replica_state(self, replica_id: str, state: str) -> Replica: ...

    def renew_lease(self, replica_id: str, *, lease_seconds: float) -> Replica:
        """Extend a replica's lease. Changes no routing, so the watch does not report it."""
        ...

    def remove_expired(self, *, now: float) -> list[str]:
        """Delete replicas whose lease ended at or before ``now``; returns their ids.

        The control plane runs this periodically (every replica of it may; it is idempotent).
        """
        ...

    def deregister_replica(self, replica_id: str) -> None: ...

    def list_replicas(self, server: str | None = None) -> list[Replica]: ...

    def read_state(self) -> RegistryState: ...

    def publish_load(self, record: LoadRecord, *, forget_before: float) -> None:
        """Write ``record`` over this publisher's previous one, and delete every record written
        before ``forget_before`` (unix seconds). Moves no revision: the watch does not see it."""
        ...

    def read_load(self, *, max_records: int, max_bytes: int) -> list[LoadRecord]:
        """The newest ``max_records`` published records, newest first; a record's totals past
        ``max_bytes`` are not read (``totals`` None, ``size`` its length)."""
        ...

    def start_rollout(self, *, server: str, body: str, now: float) -> None:
        """Write ``server``'s rollout record (state running, no holder) over any ended one;
        ConflictError if its rollout is running. Moves no revision."""
        ...

    def read_rollouts(
        self, *, server: str | None = None, max_rows: int, max_bytes: int
    ) -> list[RolloutRow]:
        """The rollout rows (of ``server`` only, when given), at most ``max_rows``, running ones
        first; a body past ``max_bytes`` is not read (``body`` None, ``size`` its length)."""
        ...

    def hold_rollout(self, *, server: str, holder: str, now: float, lease_seconds: float) -> bool:
        """Take or renew the lease of ``server``'s running rollout for ``holder``: only when it
        is free, run out at ``now``, or already ``holder``'s. True when ``holder`` holds it."""
        ...

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
        """Write the record of ``server``'s running rollout (and renew the lease) only while
        ``holder`` holds it; False (nothing written) when it does not."""
        ...

    def end_rollout(self, *, server: str, state: str, body: str, now: float) -> bool:
        """Write an ended record over ``server``'s running rollout, whoever holds it (``servers
        rollback``); False (nothing written) when none is running."""
        ...

    def watch(self, *, poll_interval: float = 0.005) -> AsyncIterator[RegistryState]:
        """Yield the full state now and again after every committed change."""
        ...

    def close(self) -> None: ...
