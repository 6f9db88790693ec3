"""Raw strong reads from Spanner and row decoding.

Owns the Read/ExecuteSql requests sent straight over the client's gRPC channel with a hard
deadline each (``Reader``, ``TableRead``), the decoding of their result sets, the timestamp
conversions, the column lists of the ``Servers`` and ``Replicas`` tables and the rows -> model
conversions (``to_server``, ``to_replica``, ``read_full_state``), and the index layout the
schema has (``Layout``: the hash-sharded indexes of migration 6, or the plain ones before it).

May import ``google.api_core``, ``google.cloud.spanner_v1`` and ``grpc`` (only modules inside
``registry/spanner`` may). Imports nothing else from this package (``store`` and ``follow``
build on it, not the other way round) and never imports ``routing``, ``translate`` or ``xds``.
The database handle comes from its owner through a constructor argument, never by reaching into
the owner's attributes.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.api_core import exceptions as gexc
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.cloud.spanner_v1.types import (
    ExecuteSqlRequest,
    KeyRange,
    KeySet,
    ReadRequest,
    ResultSet,
    TransactionOptions,
    TransactionSelector,
    TypeCode,
)
from google.protobuf import struct_pb2

from control_plane.registry import rows
from control_plane.registry.errors import RegistryUnavailableError
from control_plane.registry.model import RegistryState, Replica, Server

# Reads fail fast (the watch retries with backoff itself) instead of the client's 30 s default.
READ_TIMEOUT = 3.0

SERVER_FIELDS = (
    "ServerName",
    "Workspace",
    "Hostnames",
    "Protocol",
    "Spec",
    "UpdatedAt",
    "CreatedAt",
)
REPLICA_FIELDS = (
    "ServerName",
    "Id",
    "Host",
    "Port",
    "Region",
    "Zone",
    "Weight",
    "State",
    "LeaseExpiresAt",
    "UpdatedAt",
    "Revision",
    "RegisteredAt",
)
SERVER_COLUMNS = ", ".join(SERVER_FIELDS)
REPLICA_COLUMNS = ", ".join(REPLICA_FIELDS)


def ts(value: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, tz=dt.UTC)


def epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def to_server(row: Sequence[Any]) -> Server:
    name, workspace, hostnames, protocol, spec, updated_at, created_at = row
    return rows.server(name, workspace, hostnames, protocol, spec, updated_at, created_at)


def to_replica(row: Sequence[Any]) -> Replica:
    server, rid, host, port, region, zone, weight, state, lease, updated_at, revision, since = row
    return rows.replica(
        rid, server, host, port, region, zone, weight, state, lease, updated_at, revision, since
    )


@dataclass(frozen=True, slots=True)
class TableRead:
    """A read by key range through the Read API: the emulator seeks for these, while its SQL
    scans the whole table or index (~3 us a row: 30 ms at 10,000 replicas per query).

    ``shards`` > 0: the index is keyed by (shard, time) with shards 0 .. shards-1, and the read
    is one request of one range per shard (the same time bounds in each)."""

    table: str
    columns: tuple[str, ...]
    index: str = ""
    after: dt.datetime | None = None  # keys strictly after this first index key
    until: dt.datetime | None = None  # keys up to and including this first index key
    shards: int = 0

    def request(self, session: str, selector: Any) -> Any:
        if self.until is None and self.after is None:
            key_set = _KeySetPb(all_=True)
        else:
            prefixes = [[str(s)] for s in range(self.shards)] if self.shards else [[]]
            key_set = _KeySetPb(ranges=[self._range(prefix) for prefix in prefixes])
        return _ReadRequestPb(
            session=session,
            transaction=selector,
            table=self.table,
            index=self.index,
            columns=list(self.columns),
            key_set=key_set,
        )

    def _range(self, prefix: list[str]) -> Any:
        """The range of keys starting with ``prefix`` (INT64 key parts travel as text) whose next
        part is after ``after`` or up to ``until``. An empty closed end is the prefix every key
        has: "to the end of the index" (or of the shard)."""
        head = [struct_pb2.Value(string_value=p) for p in prefix]
        if self.until is not None:
            end = [*head, struct_pb2.Value(string_value=_rfc3339(self.until))]
            return _KeyRangePb(
                start_closed=struct_pb2.ListValue(values=head),
                end_closed=struct_pb2.ListValue(values=end),
            )
        assert self.after is not None
        start = [*head, struct_pb2.Value(string_value=_rfc3339(self.after))]
        return _KeyRangePb(
            start_open=struct_pb2.ListValue(values=start),
            end_closed=struct_pb2.ListValue(values=head),
        )


@dataclass(frozen=True, slots=True)
class TablePages:
    """A whole table by primary key, ``page`` rows a Read call, each call resuming after the last
    key of the one before (``columns`` start with the ``keys`` key columns, all STRING), all in
    the read's one transaction. Spanner's unary Read returns at most 10 MiB and the client takes
    at most 4 MiB a message: 100,000 replica rows are ~15 MB, so a full read comes in pages."""

    table: str
    columns: tuple[str, ...]
    keys: int
    page: int
    prefix: tuple[str, ...] = ()  # only the keys that start with these parts

    def request(self, session: str, selector: Any, after: list[Any] | None) -> Any:
        prefix = struct_pb2.ListValue(
            values=[struct_pb2.Value(string_value=v) for v in self.prefix]
        )
        if after is None:
            key_set = (
                _KeySetPb(ranges=[_KeyRangePb(start_closed=prefix, end_closed=prefix)])
                if self.prefix
                else _KeySetPb(all_=True)
            )
        else:
            start = struct_pb2.ListValue(
                values=[struct_pb2.Value(string_value=str(v)) for v in after]
            )
            # An empty closed end is the prefix every key has: "to the end of the table".
            key_set = _KeySetPb(ranges=[_KeyRangePb(start_open=start, end_closed=prefix)])
        return _ReadRequestPb(
            session=session,
            transaction=selector,
            table=self.table,
            columns=list(self.columns),
            key_set=key_set,
            limit=self.page,
        )


# Rows a page, each page under the client's 4 MiB: a replica row is at most ~750 bytes (bounded
# columns); a server row holds a spec of up to 64 KiB (rows.MAX_JSON_BYTES) and its hostnames.
SERVER_PAGE = 40
REPLICA_PAGE = 4000


@dataclass(frozen=True, slots=True)
class Layout:
    """Which indexes the watch and the lease sweep read, and how many shards each has (0: the
    plain time-keyed index of migrations 1-5). Migration 6 builds the sharded ones, then drops
    the plain ones; ``read_layout`` says which a database has."""

    servers: str
    replicas: str
    tombstones: str
    leases: str
    shards: int
    lease_shards: int

    def changed_servers(self, after: dt.datetime) -> TableRead:
        return TableRead("Servers", SERVER_FIELDS, self.servers, after, shards=self.shards)

    def changed_replicas(self, after: dt.datetime) -> TableRead:
        return TableRead("Replicas", REPLICA_FIELDS, self.replicas, after, shards=self.shards)

    def tombstones_after(self, after: dt.datetime) -> TableRead:
        columns = ("Kind", "Key", "DeletedAt")
        return TableRead("Tombstones", columns, self.tombstones, after, shards=self.shards)

    def tombstones_until(self, until: dt.datetime) -> TableRead:
        columns = ("Kind", "Key")
        return TableRead("Tombstones", columns, self.tombstones, until=until, shards=self.shards)

    def leases_until(self, until: dt.datetime) -> TableRead:
        columns = ("ServerName", "Id")
        return TableRead("Replicas", columns, self.leases, until=until, shards=self.lease_shards)


PLAIN = Layout(
    servers="ServersByUpdatedAt",
    replicas="ReplicasByUpdatedAt",
    tombstones="TombstonesByDeletedAt",
    leases="ReplicasByLease",
    shards=0,
    lease_shards=0,
)
# The shard counts are those of migration 6's generated columns (0006_sharded_indexes.sql).
SHARDED = Layout(
    servers="ServersByShardUpdatedAt",
    replicas="ReplicasByShardUpdatedAt",
    tombstones="TombstonesByShardDeletedAt",
    leases="ReplicasByShardLease",
    shards=16,
    lease_shards=256,
)
_SHARDED_INDEXES = (SHARDED.servers, SHARDED.replicas, SHARDED.tombstones, SHARDED.leases)


def read_layout(reader: Reader) -> Layout:
    """``SHARDED`` once all its indexes are readable (built: ``READ_WRITE``), else ``PLAIN``.
    Its own read-only transaction: a schema query stays out of the data reads."""
    names = ", ".join(f"'{name}'" for name in _SHARDED_INDEXES)
    _, (found,) = reader.read(
        [
            (
                "SELECT INDEX_NAME FROM INFORMATION_SCHEMA.INDEXES WHERE TABLE_SCHEMA = ''"
                f" AND INDEX_STATE = 'READ_WRITE' AND INDEX_NAME IN ({names})",
                None,
            )
        ]
    )
    return SHARDED if len(found) == len(_SHARDED_INDEXES) else PLAIN


# One query for ``Reader.read``: a ``TableRead``, a ``TablePages``, or SQL with optional
# TIMESTAMP parameters.
Query = tuple[str, dict[str, dt.datetime] | None] | TableRead | TablePages


# Raw protobuf classes: the proto-plus wrappers cost more CPU than the RPC itself.
_ReadRequestPb = ReadRequest.pb()
_ExecuteSqlRequestPb = ExecuteSqlRequest.pb()
_ResultSetPb = ResultSet.pb()
_KeySetPb = KeySet.pb()
_KeyRangePb = KeyRange.pb()
_SelectorPb = TransactionSelector.pb()
_OptionsPb = TransactionOptions.pb()


class Reader:
    """Strong read-only queries through the raw Spanner API with a hard deadline per call.

    The client library's streaming reads retry UNAVAILABLE without end, which would stall the
    watch for as long as Spanner is away; here every call fails within ``READ_TIMEOUT`` and the
    watch's own backoff takes over. Queries of one ``read`` share one read-only transaction
    (begun inline by the first), whose strong read timestamp is returned.

    One session holds one transaction at a time: beginning another on it ends the first (the
    emulator forgets it, and its next query fails with "Transaction not found"). So ``read``
    holds a lock for its whole transaction: safe to call from several threads at once, one
    transaction after the other. Readers that must not wait for each other (the watch and the
    lease sweep) each have their own, hence their own session.

    ``database`` returns the current ``google.cloud.spanner`` ``Database``: its owner may swap it
    (a reconnect), and then calls ``reset_session``.
    """

    def __init__(self, database: Callable[[], Any]) -> None:
        self._database = database
        self._session: str | None = None
        self._channel: Any = None
        self._read: Any = None
        self._sql: Any = None
        self._lock = threading.Lock()

    def reset_session(self) -> None:
        """Forget the session: the next call creates one (after a reconnect)."""
        self._session = None

    def session_name(self) -> str:
        if self._session is None:
            db = self._database()
            created = db.spanner_api.create_session(
                database=db.name, timeout=READ_TIMEOUT, retry=None
            )
            self._session = str(created.name)
        return self._session

    def _callables(self) -> tuple[Any, Any]:
        channel = self._database().spanner_api.transport.grpc_channel
        if self._channel is not channel:
            self._channel = channel
            self._read = channel.unary_unary(
                "/google.spanner.v1.Spanner/Read",
                request_serializer=_ReadRequestPb.SerializeToString,
                response_deserializer=_ResultSetPb.FromString,
            )
            self._sql = channel.unary_unary(
                "/google.spanner.v1.Spanner/ExecuteSql",
                request_serializer=_ExecuteSqlRequestPb.SerializeToString,
                response_deserializer=_ResultSetPb.FromString,
            )
        return self._read, self._sql

    def read(self, queries: list[Query]) -> tuple[dt.datetime, list[list[list[Any]]]]:
        with self._lock:
            return self._read_locked(queries)

    def _read_locked(self, queries: list[Query]) -> tuple[dt.datetime, list[list[list[Any]]]]:
        read_rpc, sql_rpc = self._callables()
        session = self.session_name()
        metadata = (
            ("google-cloud-resource-prefix", self._database().name),
            ("x-goog-request-params", f"session={session}"),
        )
        selector = _SelectorPb(
            begin=_OptionsPb(read_only=_OptionsPb.ReadOnly(strong=True, return_read_timestamp=True))
        )
        read_at: dt.datetime | None = None
        results: list[list[list[Any]]] = []

        def call(rpc: Any, request: Any) -> list[list[Any]]:
            nonlocal read_at, selector
            result = rpc(request, timeout=READ_TIMEOUT, metadata=metadata)
            if read_at is None:
                transaction = result.metadata.transaction
                read_at = DatetimeWithNanoseconds.from_timestamp_pb(transaction.read_timestamp)
                selector = _SelectorPb(id=transaction.id)
            return _decode(result)

        try:
            for query in queries:
                if isinstance(query, TableRead):
                    results.append(call(read_rpc, query.request(session, selector)))
                elif isinstance(query, TablePages):
                    rows: list[list[Any]] = []
                    after: list[Any] | None = None
                    while True:
                        page = call(read_rpc, query.request(session, selector, after))
                        rows += page
                        if len(page) < query.page:
                            break
                        after = page[-1][: query.keys]
                    results.append(rows)
                else:
                    sql, params = query
                    request = _ExecuteSqlRequestPb(session=session, transaction=selector, sql=sql)
                    for key, value in (params or {}).items():
                        request.params.fields[key].string_value = _rfc3339(value)
                        request.param_types[key].code = TypeCode.TIMESTAMP
                    results.append(call(sql_rpc, request))
        except grpc.RpcError as exc:
            error = gexc.from_grpc_error(exc)
            if isinstance(error, gexc.NotFound):
                self._session = None  # the session (or the server holding it) is gone
            raise error from exc
        if read_at is None:
            raise RegistryUnavailableError("spanner did not return a read timestamp")
        return read_at, results


def read_full_state(
    reader: Reader, next_revision: Callable[[], int]
) -> tuple[RegistryState, dt.datetime]:
    """Every server and replica at one strong read timestamp, which is returned with them.
    ``next_revision`` is called once the rows are in, for the state's revision."""
    read_at, (servers_rows, replica_rows) = reader.read(
        [
            TablePages("Servers", SERVER_FIELDS, keys=1, page=SERVER_PAGE),
            TablePages("Replicas", REPLICA_FIELDS, keys=2, page=REPLICA_PAGE),
        ]
    )
    servers = [to_server(r) for r in servers_rows]
    replicas = [to_replica(r) for r in replica_rows]
    revision = next_revision()
    newest = max([s.updated_at for s in servers] + [r.updated_at for r in replicas] + [0.0])
    state = RegistryState.of(
        servers=servers, replicas=replicas, revision=revision, committed_at=newest
    )
    return state, read_at


def _rfc3339(value: dt.datetime) -> str:
    rfc = getattr(value, "rfc3339", None)  # keeps nanoseconds when Spanner gave them
    if rfc is not None:
        return str(rfc())
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_timestamp(text: str) -> dt.datetime:
    head, _, frac = text.rstrip("Z").partition(".")
    micros = int((frac + "000000")[:6]) if frac else 0
    return dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(
        microsecond=micros, tzinfo=dt.UTC
    )


def _decode_value(value: struct_pb2.Value, code: int, element: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "null_value" or kind is None:
        return None
    if code == TypeCode.ARRAY:
        return [_decode_value(v, element, 0) for v in value.list_value.values]
    if code == TypeCode.FLOAT64:
        # A number, or "NaN" / "Infinity" / "-Infinity" as text.
        return value.number_value if kind == "number_value" else float(value.string_value)
    text = value.string_value
    if code == TypeCode.INT64:
        return int(text)
    if code == TypeCode.TIMESTAMP:
        return _parse_timestamp(text)
    if code == TypeCode.BOOL:
        return value.bool_value
    return text


def _decode(result: Any) -> list[list[Any]]:
    fields = result.metadata.row_type.fields
    codes = [(f.type_.code, f.type_.array_element_type.code) for f in fields]
    return [
        [
            _decode_value(v, code, element)
            for v, (code, element) in zip(row.values, codes, strict=True)
        ]
        for row in result.rows
    ]
