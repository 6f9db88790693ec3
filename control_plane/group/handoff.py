"""The hand-off of registry states from a host's one watcher to its workers (pure: no I/O).

Under ``serve --workers N`` one process (``group/watcher.py``) follows the registry and every
worker follows that process (``group/follow.py``) instead of the store, so the registry is
read once per host whatever N is. This module is the protocol between them, as values:

- :class:`Message`: one step of the watcher's registry state. A watcher numbers its messages
  (``seq``) within its ``epoch`` (a token of its own start): the first a follower receives on a
  connection is ``full`` (every row), the next ones are deltas against the one before (the
  servers and the replicas that changed or went). ``error`` carries the watcher's registry
  error while it cannot read the store.
- :class:`Publisher` (the watcher): registry states -> messages; a new follower gets the
  current state in full, then the same deltas as every other.
- :class:`Follower` (a worker): messages -> the states to hand to its reconciler, each at most
  once and in order: a message it already has (same epoch, ``seq`` not above the last) is
  dropped; a gap or a delta of another epoch raises :class:`OutOfSync` (the worker reconnects
  and starts again from a full message); a full message whose rows equal the state it last
  delivered (a new watcher after the old one died) delivers nothing. Revisions it delivers
  only go up: a store whose revisions are numbered per process (Spanner's) restarts them in a
  new watcher.
- ``encode`` / ``decode``: a message as JSON text in a length-prefixed frame, read back with
  every field checked (``HandOffError`` names the field and the value).

Imports the registry's model only.
"""

from __future__ import annotations

import bisect
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from control_plane.registry.model import RegistryState, Replica, Server

HEADER = struct.Struct(">I")  # a frame: its length (bytes, big-endian), then JSON text
# A full state of 100,000 replicas is ~25 MB of JSON; far beyond it, the sender is not ours.
MAX_FRAME_BYTES = 512 << 20


class HandOffError(ValueError):
    """A frame that is not a watcher's message (names the field and the value)."""


class OutOfSync(Exception):
    """A message the follower cannot apply in order: reconnect and start from a full one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One step of a watcher's state. In a full message ``servers`` and ``replicas`` hold every
    row (``replicas``: server name -> its replicas, as the state keeps them); in a delta,
    ``servers`` the changed or new ones and ``gone_servers`` the names removed, ``replicas``
    the changed or new replicas of each touched server name, ``gone_replicas`` the ids removed
    from it, and ``gone_keys`` the server names whose replica entry went entirely."""

    epoch: str
    seq: int
    full: bool
    revision: int = 0
    committed_at: float = 0.0
    servers: tuple[Server, ...] = ()
    gone_servers: tuple[str, ...] = ()
    replicas: Mapping[str, tuple[Replica, ...]] = field(default_factory=dict)
    gone_replicas: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gone_keys: tuple[str, ...] = ()
    error: str = ""

    @property
    def empty(self) -> bool:
        """A delta that changes no row."""
        return not (
            self.full
            or self.servers
            or self.gone_servers
            or self.replicas
            or self.gone_replicas
            or self.gone_keys
        )


def full_message(state: RegistryState, *, epoch: str, seq: int) -> Message:
    return Message(
        epoch=epoch,
        seq=seq,
        full=True,
        revision=state.revision,
        committed_at=state.committed_at,
        servers=state.servers,
        replicas=dict(state.replicas_by_server),
    )


def delta_message(
    previous: RegistryState, state: RegistryState, *, epoch: str, seq: int
) -> Message:
    """What changed from ``previous`` to ``state``, by value (a tuple the watch reused is
    skipped without looking inside it)."""
    before: dict[str, Server] = {}
    servers = []
    if state.servers is not previous.servers:
        before = {server.name: server for server in previous.servers}
        for server in state.servers:
            old_server = before.pop(server.name, None)
            if old_server is not server and old_server != server:
                servers.append(server)
    replicas: dict[str, tuple[Replica, ...]] = {}
    gone_replicas: dict[str, tuple[str, ...]] = {}
    old = previous.replicas_by_server
    for name, rows in state.replicas_by_server.items():
        was = old.get(name)
        if was is rows or was == rows:
            continue
        if (
            was is not None
            and len(was) == len(rows)
            and all(r.id == o.id for r, o in zip(rows, was, strict=True))
        ):  # the same replicas (a state or weight moved): compare them in place
            changed = tuple(r for r, o in zip(rows, was, strict=True) if r is not o and r != o)
            if changed:
                replicas[name] = changed
            continue
        left = {replica.id: replica for replica in was or ()}
        changed = tuple(r for r in rows if left.pop(r.id, None) != r)
        if changed:
            replicas[name] = changed
        if left:
            gone_replicas[name] = tuple(sorted(left))
        if was is None and not changed:  # a new entry with no row: keep the key
            replicas[name] = ()
    gone_keys = tuple(sorted(name for name in old if name not in state.replicas_by_server))
    return Message(
        epoch=epoch,
        seq=seq,
        full=False,
        revision=state.revision,
        committed_at=state.committed_at,
        servers=tuple(servers),
        gone_servers=tuple(sorted(before)),
        replicas=replicas,
        gone_replicas=gone_replicas,
        gone_keys=gone_keys,
    )


def apply(base: RegistryState, message: Message) -> RegistryState:
    """``base`` after the delta ``message`` (the state the watcher had when it sent it): what
    it does not touch is ``base``'s own tuples (a replica change re-sorts no server list)."""
    servers = base.servers
    if message.servers or message.gone_servers:
        by_name = {server.name: server for server in base.servers}
        for name in message.gone_servers:
            by_name.pop(name, None)
        by_name.update((server.name, server) for server in message.servers)
        servers = tuple(sorted(by_name.values(), key=lambda s: s.name))
    by_server = dict(base.replicas_by_server)
    for name in message.gone_keys:
        by_server.pop(name, None)
    for name in {*message.replicas, *message.gone_replicas}:
        # Sorted by id: each changed replica goes in its place (a copy, a binary search).
        rows = list(by_server.get(name, ()))
        gone = set(message.gone_replicas.get(name, ()))
        if gone:
            rows = [replica for replica in rows if replica.id not in gone]
        for replica in message.replicas.get(name, ()):
            at = bisect.bisect_left(rows, replica.id, key=_replica_id)
            if at < len(rows) and rows[at].id == replica.id:
                rows[at] = replica
            else:
                rows.insert(at, replica)
        by_server[name] = tuple(rows)
    return RegistryState(
        servers=servers,
        replicas_by_server=by_server,
        revision=message.revision,
        committed_at=message.committed_at,
    )


def _replica_id(replica: Replica) -> str:
    return replica.id


def state_of(message: Message) -> RegistryState:
    """The state a full message carries."""
    return RegistryState(
        servers=message.servers,
        replicas_by_server=dict(message.replicas),
        revision=message.revision,
        committed_at=message.committed_at,
    )


def same_rows(a: RegistryState, b: RegistryState) -> bool:
    return a.servers == b.servers and a.replicas_by_server == b.replicas_by_server


class Publisher:
    """The watcher's side: ``publish`` each registry state it reads; ``current`` is the full
    message a new follower starts from."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.seq = 0
        self.state: RegistryState | None = None
        self._full: Message | None = None

    def publish(self, state: RegistryState) -> Message | None:
        """The message for ``state`` (None when no row changed: nothing to send)."""
        if self.state is None:
            message = full_message(state, epoch=self.epoch, seq=self.seq + 1)
        else:
            message = delta_message(self.state, state, epoch=self.epoch, seq=self.seq + 1)
            if message.empty:
                return None
        self.seq += 1
        self.state = state
        self._full = message if message.full else None
        return message

    def current(self) -> Message | None:
        """The current state in full (None before the first read)."""
        if self.state is None:
            return None
        if self._full is None:
            self._full = full_message(self.state, epoch=self.epoch, seq=self.seq)
        return self._full

    def error(self, text: str) -> Message:
        return Message(epoch=self.epoch, seq=self.seq, full=False, error=text)


class Follower:
    """A worker's side: ``take`` each message received, in the order received; it returns the
    state to hand on, or None (nothing new). ``delivered`` is the last state handed on."""

    def __init__(self) -> None:
        self.epoch = ""
        self.seq = 0
        self.delivered: RegistryState | None = None
        self._mirror: RegistryState | None = None  # the watcher's state as of ``seq``

    def take(self, message: Message) -> RegistryState | None:
        if message.error:
            return None
        if message.epoch == self.epoch and message.seq <= self.seq:
            return None  # already had it
        if message.full:
            self.epoch, self.seq = message.epoch, message.seq
            self._mirror = state_of(message)
            if self.delivered is not None and same_rows(self._mirror, self.delivered):
                return None  # a new watcher's first read: nothing changed
        else:
            if message.epoch != self.epoch or self._mirror is None:
                raise OutOfSync(f"a delta of watcher {message.epoch} before its full state")
            if message.seq != self.seq + 1:
                raise OutOfSync(f"watcher {self.epoch}: message {message.seq} after {self.seq}")
            self.seq = message.seq
            self._mirror = apply(self._mirror, message)
        return self._deliver(self._mirror)

    def _deliver(self, state: RegistryState) -> RegistryState:
        last = self.delivered.revision if self.delivered is not None else None
        if last is not None and state.revision <= last:
            state = RegistryState(
                servers=state.servers,
                replicas_by_server=state.replicas_by_server,
                revision=last + 1,
                committed_at=state.committed_at,
            )
        self.delivered = state
        return state


# -- frames ---------------------------------------------------------------------------------


def _server_row(server: Server) -> list[Any]:
    return [
        server.name,
        server.workspace,
        list(server.hostnames),
        server.protocol,
        server.spec,
        server.updated_at,
        server.created_at,
    ]


def _replica_row(replica: Replica) -> list[Any]:
    return [
        replica.id,
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
    ]


def encode(message: Message) -> bytes:
    """``message`` as one frame (length, then JSON)."""
    body: dict[str, Any] = {"epoch": message.epoch, "seq": message.seq, "full": message.full}
    if message.error:
        body["error"] = message.error
    else:
        body |= {
            "revision": message.revision,
            "committed_at": message.committed_at,
            "servers": [_server_row(s) for s in message.servers],
            "gone_servers": list(message.gone_servers),
            "replicas": {
                name: [_replica_row(r) for r in rows] for name, rows in message.replicas.items()
            },
            "gone_replicas": {name: list(ids) for name, ids in message.gone_replicas.items()},
            "gone_keys": list(message.gone_keys),
        }
    text = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return HEADER.pack(len(text)) + text


def frame_length(header: bytes) -> int:
    """A frame's length from its header; HandOffError past ``MAX_FRAME_BYTES``."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise HandOffError(f"invalid frame length {length}: at most {MAX_FRAME_BYTES} bytes")
    return int(length)


def decode(body: bytes) -> Message:
    """A frame's JSON text -> the Message; HandOffError naming the first bad field."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandOffError(f"invalid frame: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HandOffError(f"invalid frame: expected an object, got {type(data).__name__}")
    epoch = _typed(data, "epoch", str)
    seq = _typed(data, "seq", int)
    full = _typed(data, "full", bool)
    if "error" in data:
        return Message(epoch=epoch, seq=seq, full=False, error=_typed(data, "error", str))
    servers = tuple(_server(row) for row in _typed(data, "servers", list))
    replicas = {
        _text("replicas", name): tuple(
            _replica(name, row) for row in _typed(rows, "replicas." + name, list, whole=True)
        )
        for name, rows in _typed(data, "replicas", dict).items()
    }
    gone_replicas = {
        _text("gone_replicas", name): tuple(
            _text("gone_replicas." + name, i)
            for i in _typed(ids, "gone_replicas." + name, list, whole=True)
        )
        for name, ids in _typed(data, "gone_replicas", dict).items()
    }
    return Message(
        epoch=epoch,
        seq=seq,
        full=full,
        revision=_typed(data, "revision", int),
        committed_at=_number(data, "committed_at"),
        servers=servers,
        gone_servers=tuple(_text("gone_servers", n) for n in _typed(data, "gone_servers", list)),
        replicas=replicas,
        gone_replicas=gone_replicas,
        gone_keys=tuple(_text("gone_keys", n) for n in _typed(data, "gone_keys", list)),
    )


def _typed(data: Any, key: str, kind: type, *, whole: bool = False) -> Any:
    value = data if whole else data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HandOffError(f"invalid {key} {value!r}: expected {kind.__name__}")
    return value


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise HandOffError(f"invalid {where} {value!r}: expected a string")
    return value


def _number(data: Any, key: str) -> float:
    return _float(key, data.get(key))


def _float(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HandOffError(f"invalid {where} {value!r}: expected a number")
    return float(value)


def _server(row: Any) -> Server:
    if not isinstance(row, list) or len(row) != 7:
        raise HandOffError(f"invalid servers row {row!r}: expected 7 fields")
    name, workspace, hostnames, protocol, spec, updated_at, created_at = row
    fields = {"name": name, "workspace": workspace, "protocol": protocol, "spec": spec}
    for key, value in fields.items():
        _text(f"servers.{key}", value)
    if not isinstance(hostnames, list):
        raise HandOffError(f"invalid servers.hostnames {hostnames!r} of {name}: expected a list")
    return Server(
        name=name,
        workspace=workspace,
        hostnames=tuple(_text(f"servers.hostnames of {name}", h) for h in hostnames),
        protocol=protocol,
        spec=spec,
        updated_at=_float(f"servers.updated_at of {name}", updated_at),
        created_at=_float(f"servers.created_at of {name}", created_at),
    )


def _replica(server: str, row: Any) -> Replica:
    if not isinstance(row, list) or len(row) != 11:
        raise HandOffError(f"invalid replicas row {row!r} of {server}: expected 11 fields")
    rid, host, port, region, zone, weight, state, lease, updated_at, revision, registered = row
    for key, value in (
        ("id", rid),
        ("host", host),
        ("region", region),
        ("zone", zone),
        ("state", state),
        ("revision", revision),
    ):
        _text(f"replicas.{key} of {server}", value)
    for key, number in (("port", port), ("weight", weight)):
        if not isinstance(number, int) or isinstance(number, bool):
            raise HandOffError(f"invalid replicas.{key} {number!r} of {rid}: expected an integer")
    return Replica(
        id=rid,
        server=server,
        host=host,
        port=port,
        region=region,
        zone=zone,
        weight=weight,
        state=state,
        lease_expires_at=None
        if lease is None
        else _float(f"replicas.lease_expires_at of {rid}", lease),
        updated_at=_float(f"replicas.updated_at of {rid}", updated_at),
        revision=revision,
        registered_at=_float(f"replicas.registered_at of {rid}", registered),
    )
