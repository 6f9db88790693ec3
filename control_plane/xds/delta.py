"""Incremental (delta) xDS (ADS or one type): the stream rules of ``xds.stream`` for delta."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from control_plane.xds.resources import (
    CLUSTER,
    WILDCARD_TYPES,
    Resource,
    control_plane_field,
    delta_response_parts,
)
from control_plane.xds.snapshot import Snapshot
from control_plane.xds.stream import (
    DEFAULT_LIMITS,
    EMPTY_VERSION,
    MAX_PENDING,
    NO_NAMES,
    BaseStream,
    Limits,
    Outgoing,
    Pending,
    RequestOutcome,
    TypeState,
    name_bytes,
    shared_names,
)

_NOTHING = object()
NO_RESOURCES: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class _Shared:
    """One type's push for every stream in the same state (see ``DeltaStream._shared_push``):
    what it sends and the state it leaves, computed once per snapshot; the response is
    ``head + nonce field + tail``, the nonce the only per-stream part."""

    # False: nothing to send (the state still moves on).
    send: bool
    to_send: list[Resource]
    removed: list[str]
    # Read only, shared by every stream's ``Pending``.
    sent: dict[str, str]
    own: dict[str, str | None] | None
    unacked: dict[str, str | None] | None
    base: Mapping[str, Resource]
    base_version: str | None
    head: bytes
    tail: bytes
    resource_names: list[str]


class _SharedPushes:
    """(snapshot version, type, parent version, names, wildcard, control-plane field) -> the
    push. Snapshot versions are content hashes, so streams of different node groups with the
    same content share an entry. Only a cache, bounded in entries and in encoded bytes (a push
    of many changed resources is large): emptied when full."""

    def __init__(self, *, max_entries: int = 512, max_bytes: int = 32 << 20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[tuple[Any, ...], _Shared] = {}
        self._bytes = 0

    def get(self, key: tuple[Any, ...]) -> _Shared | None:
        return self._entries.get(key)

    def put(self, key: tuple[Any, ...], shared: _Shared, *, name_bytes: int = 0) -> None:
        """``name_bytes``: what the key's names hold (a stream's names, which the entry keeps
        alive after the stream has gone)."""
        if len(self._entries) >= self.max_entries or self._bytes >= self.max_bytes:
            self.clear()
        self._bytes += len(shared.head) + len(shared.tail) + name_bytes
        self._entries[key] = shared

    def cached(self) -> list[tuple[Any, ...]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


_SHARED = _SharedPushes()


@dataclass(slots=True)
class DeltaState(TypeState):
    """What a delta stream keeps about one type besides :class:`TypeState`: name -> version the
    proxy has been sent (or said it has), what it ACKed, and the responses awaiting an answer.

    Thousands of streams of one fleet have been sent the same thing, so what a stream has been
    sent is ``base`` (one snapshot's resources of this type, shared by every stream synced to
    that snapshot) with this stream's differences in ``own``; what it ACKed is kept as the names
    where that differs from what it was sent. A proxy that has ACKed all of a snapshot holds no
    dict of its own at all (``known()`` and ``acked()`` build them when asked).
    """

    base: Mapping[str, Resource] = field(default_factory=lambda: NO_RESOURCES)
    # The snapshot ``base`` comes from.
    base_version: str | None = None
    # name -> version sent (None: not sent) where that differs from ``base``; None when none.
    own: dict[str, str | None] | None = None
    # name -> version ACKed (None: not ACKed) where that differs from what was sent.
    unacked: dict[str, str | None] | None = None
    pending: dict[str, Pending] = field(default_factory=dict)

    def known_version(self, name: str) -> str | None:
        """The version of ``name`` the proxy has been sent (or said it has), if any."""
        own = self.own
        if own is not None:
            version = own.get(name, _NOTHING)
            if version is not _NOTHING:
                return version  # type: ignore[return-value]
        resource = self.base.get(name)
        return resource.version if resource is not None else None

    def known_names(self) -> Iterator[str]:
        own = self.own
        if own is None:
            yield from self.base
            return
        yield from (n for n in self.base if n not in own)
        yield from (n for n, v in own.items() if v is not None)

    def known(self) -> dict[str, str]:
        """name -> version the proxy has been sent (a new dict)."""
        known = {n: r.version for n, r in self.base.items()}
        if self.own is not None:
            for name, version in self.own.items():
                if version is None:
                    known.pop(name, None)
                else:
                    known[name] = version
        return known

    def acked(self) -> dict[str, str]:
        """name -> version the proxy ACKed (a new dict)."""
        acked = self.known()
        if self.unacked is not None:
            for name, version in self.unacked.items():
                if version is None:
                    acked.pop(name, None)
                else:
                    acked[name] = version
        return acked

    def rebase(self, snapshot: Snapshot, type_url: str, *, full: bool) -> None:
        """After a push computed against ``snapshot``: take its resources as the base, when
        the differences left are few. O(what the snapshot changed + own differences) when the
        base is the snapshot's parent; O(everything) only with ``full`` (the push was)."""
        available = snapshot.of_type(type_url)
        if available is self.base:
            self.base_version = snapshot.version
            return
        names: Iterable[str]
        changed = snapshot.changed
        if (
            changed is not None
            and self.base_version
            and snapshot.parent_version == self.base_version
        ):
            # Outside what changed, the parent's resources are the snapshot's.
            names = itertools.chain(changed.get(type_url, NO_NAMES), self.own or ())
        elif full:
            names = itertools.chain(available, self.known_names())
        else:
            return
        differences: dict[str, str | None] = {}
        for name in names:
            version = self.known_version(name)
            resource = available.get(name)
            if version != (resource.version if resource is not None else None):
                differences[name] = version
        if len(differences) > 8 + len(available) // 4:
            return  # e.g. a few names of many subscribed: keep what this stream has
        self.base, self.base_version = available, snapshot.version
        self.own = differences or None

    # Every change keeps ``own`` and ``unacked`` exact: no entry equal to what it overrides,
    # and None rather than empty.

    def set_acked(self, name: str, version: str) -> None:
        """The proxy said it has ``name`` at ``version`` (initial versions): sent and ACKed."""
        self._set_known(name, version)
        self._acked_as_known(name)

    def drop(self, name: str) -> None:
        """Unsubscribed: neither sent nor ACKed any more."""
        self._set_known(name, None)
        self._acked_as_known(name)

    def send(self, name: str, version: str) -> None:
        self._keep_acked(name)
        self._set_known(name, version)
        self._settle(name)

    def forget_sent(self, name: str) -> bool:
        if self.known_version(name) is None:
            return False
        self._keep_acked(name)
        self._set_known(name, None)
        self._settle(name)
        return True

    def issued(
        self,
        nonce: str,
        version: str,
        sent: dict[str, str] | None,
        removed: list[str],
        committed_at: float | None,
    ) -> None:
        pending = self.pending
        if len(pending) >= MAX_PENDING:
            # A proxy that never answers must not grow our memory: forget the oldest.
            del pending[next(iter(pending))]
        pending[nonce] = Pending(
            sent={} if sent is None else sent,
            removed=removed,
            version=version,
            committed_at=committed_at or 0.0,
        )

    def ack(self, sent: dict[str, str], removed: list[str]) -> None:
        """The proxy ACKed a response that sent ``sent`` and removed ``removed``."""
        for name, version in sent.items():
            self._mark_acked(name, version)
        for name in removed:
            self._mark_acked(name, None)

    def _set_known(self, name: str, version: str | None) -> None:
        resource = self.base.get(name)
        if version == (resource.version if resource is not None else None):
            own = self.own
            if own is not None and own.pop(name, _NOTHING) is not _NOTHING and not own:
                self.own = None
        elif self.own is None:
            self.own = {name: version}
        else:
            self.own[name] = version

    def _keep_acked(self, name: str) -> None:
        """Before what ``name`` was sent changes: remember what the proxy ACKed of it."""
        if self.unacked is None:
            self.unacked = {name: self.known_version(name)}
        elif name not in self.unacked:
            self.unacked[name] = self.known_version(name)

    def _mark_acked(self, name: str, version: str | None) -> None:
        if self.known_version(name) == version:
            self._acked_as_known(name)
        elif self.unacked is None:
            self.unacked = {name: version}
        else:
            self.unacked[name] = version

    def _settle(self, name: str) -> None:
        """After what ``name`` was sent changed: forget the ACKed version if it is the same."""
        unacked = self.unacked
        if unacked is not None and unacked.get(name, _NOTHING) == self.known_version(name):
            self._acked_as_known(name)

    def _acked_as_known(self, name: str) -> None:
        unacked = self.unacked
        if unacked is not None and unacked.pop(name, _NOTHING) is not _NOTHING and not unacked:
            self.unacked = None


class DeltaStream(BaseStream[DeltaState]):
    """Incremental (delta) xDS (ADS or one type)."""

    _CP_FIELD = 7

    def __init__(
        self, *, control_plane_id: str, only_type: str = "", limits: Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(control_plane_id=control_plane_id, only_type=only_type, limits=limits)
        self._cp = control_plane_field(identifier=control_plane_id, field_number=self._CP_FIELD)

    def _new_state(self) -> DeltaState:
        return DeltaState()

    @property
    def acked(self) -> dict[str, dict[str, str]]:
        """Per type: name -> version the proxy ACKed (new dicts)."""
        return {type_url: state.acked() for type_url, state in self._types.items()}

    def pending(self, type_url: str) -> int:
        """How many responses of ``type_url`` await an ACK or NACK (at most 32 are kept)."""
        state = self._types.get(type_url)
        return len(state.pending) if state is not None else 0

    def on_request(self, request: Any) -> RequestOutcome:
        type_url = self._type_of(request.type_url)
        outcome = RequestOutcome(type_url=type_url)
        state = self._types.get(type_url)
        if (
            state is not None
            and state.status.subscribed
            and not request.resource_names_subscribe
            and not request.resource_names_unsubscribe
            and not request.initial_resource_versions
        ):
            # An ACK or NACK and nothing else (a fleet's every answer to a push): only the
            # nonce part below applies.
            self._answer(state, request, outcome)
            return outcome
        state = self._state(type_url)
        status = state.status
        # Interned: a thousand streams subscribed to the same names hold one copy of each.
        subscribe = {sys.intern(name) for name in request.resource_names_subscribe}
        unsubscribe = set(request.resource_names_unsubscribe)
        initial = request.initial_resource_versions
        self._check_names(type_url, len(initial), "initial versions")
        if subscribe:  # (an ACK subscribes to nothing: no set built per ACK)
            self._check_names(type_url, len(status.names | subscribe), "names subscribed")
        # Bytes, before anything is kept: names new to this stream, less those it drops, and
        # (on the first request of the type) the initial versions.
        held = state.name_bytes
        if subscribe or unsubscribe:
            old = status.names
            held += self._sizes(
                type_url,
                (n for n in subscribe if n not in old and n not in unsubscribe and n != "*"),
                "resource_names_subscribe",
            )
            held -= sum(name_bytes(n) for n in unsubscribe if n in old)
        if initial and not status.subscribed:
            # A reconnecting Envoy lists its names in both fields: each is counted once.
            held += self._sizes(
                type_url, (n for n in initial if n not in subscribe), "initial_resource_versions"
            )
            held += self._sizes(type_url, initial.values(), "initial_resource_versions")
        if held != state.name_bytes:
            self._hold_name_bytes(type_url, state, held)
        if subscribe or unsubscribe:
            outcome.resubscribed = True
        if not status.subscribed:
            status.subscribed = True
            outcome.resubscribed = True
            status.wildcard = type_url in WILDCARD_TYPES and not subscribe
            for name, version in request.initial_resource_versions.items():
                state.set_acked(name, version)
        if "*" in subscribe:
            status.wildcard = True
        if "*" in unsubscribe:
            status.wildcard = False
        if outcome.resubscribed:
            state.synced = None
        subscribe.discard("*")
        unsubscribe.discard("*")
        if subscribe:
            outcome.subscribed = frozenset(subscribe - status.names)
        if subscribe or unsubscribe:
            status.names = shared_names((status.names | subscribe) - unsubscribe)
        for name in unsubscribe:
            state.drop(name)
        self._answer(state, request, outcome)
        return outcome

    def _answer(self, state: DeltaState, request: Any, outcome: RequestOutcome) -> None:
        """The ACK/NACK part of ``request``, if it answers a response."""
        if request.response_nonce:
            status = state.status
            pending = state.pending.pop(request.response_nonce, None)
            if pending is None:
                outcome.stale = True
            elif request.HasField("error_detail"):
                outcome.nack, outcome.repeated_nack = self._nack(state, pending.version, request)
            else:
                state.ack(pending.sent, pending.removed)
                status.acked_version = pending.version
                status.acks += 1
                outcome.ack = pending.version
                outcome.committed_at = pending.committed_at
                outcome.first_ack = status.acked_committed_at == 0.0
                status.acked_committed_at = pending.committed_at or 1e-9

    def _empty_response(self, type_url: str, state: DeltaState, snapshot: Snapshot) -> Outgoing:
        head, tail = delta_response_parts(
            system_version_info=EMPTY_VERSION,
            resources=[],
            removed=[],
            type_url=type_url,
            control_plane=self._cp,
        )
        return self._send(
            type_url,
            state,
            version=EMPTY_VERSION,
            head=(head,),
            tail=tail,
            names=[],
            removed=[],
        )

    def _response_for(
        self, type_url: str, state: DeltaState, snapshot: Snapshot
    ) -> Outgoing | None:
        parent = snapshot.parent_version
        if (
            parent is not None
            and state.synced == parent
            and state.base_version == parent
            and state.own is None
            and state.unacked is None
            and not state.extra
            and state.status.sent_version
            and snapshot.changed is not None
        ):
            # The common push: this stream ACKed everything of the parent snapshot, as the
            # rest of the fleet did; the first such stream computes it, the others reuse it.
            if not snapshot.changed.get(type_url):
                # Nothing of this type changed since the parent: nothing to send, and the
                # state moves on to the snapshot (what ``_compute`` does then, in three
                # assignments: most pushes change one type of four).
                state.synced = snapshot.version
                state.base, state.base_version = snapshot.of_type(type_url), snapshot.version
                return None
            return self._shared_push(type_url, state, snapshot)
        return self._compute(type_url, state, snapshot)

    def _shared_push(self, type_url: str, state: DeltaState, snapshot: Snapshot) -> Outgoing | None:
        status = state.status
        key = (
            snapshot.version,
            type_url,
            state.base_version,
            status.names,
            status.wildcard,
            self._cp,
        )
        shared = _SHARED.get(key)
        if shared is None:
            outgoing = self._compute(type_url, state, snapshot)
            available = snapshot.of_type(type_url)
            to_send = (
                [available[n] for n in outgoing.resource_names] if outgoing is not None else []
            )
            removed = outgoing.removed if outgoing is not None else []
            head, tail = delta_response_parts(
                system_version_info=snapshot.versions.get(type_url, ""),
                resources=to_send,
                removed=removed,
                type_url=type_url,
                control_plane=self._cp,
            )
            _SHARED.put(
                key,
                _Shared(
                    send=outgoing is not None,
                    to_send=to_send,
                    removed=removed,
                    sent=state.pending[outgoing.nonce].sent if outgoing is not None else {},
                    own=dict(state.own) if state.own is not None else None,
                    unacked=dict(state.unacked) if state.unacked is not None else None,
                    base=state.base,
                    base_version=state.base_version,
                    head=head,
                    tail=tail,
                    resource_names=outgoing.resource_names if outgoing is not None else [],
                ),
                name_bytes=state.name_bytes,
            )
            return outgoing
        # What ``_compute`` would do, as it did for the first stream.
        state.synced = snapshot.version
        state.base, state.base_version = shared.base, shared.base_version
        state.own = dict(shared.own) if shared.own is not None else None
        state.unacked = dict(shared.unacked) if shared.unacked is not None else None
        if not shared.send:
            return None
        if type_url == CLUSTER:
            self._forget_endpoints(shared.to_send)
        return self._send(
            type_url,
            state,
            version=snapshot.versions.get(type_url, ""),
            head=(shared.head,),
            tail=shared.tail,
            names=shared.resource_names,
            removed=shared.removed,
            sent=shared.sent,
            committed_at=snapshot.committed_at,
        )

    def _compute(self, type_url: str, state: DeltaState, snapshot: Snapshot) -> Outgoing | None:
        status, known = state.status, state.known_version
        available = snapshot.of_type(type_url)
        candidates = self._candidates(state, type_url, snapshot)
        if candidates is None:
            wanted = set(available) | status.names if status.wildcard else set(status.names)
            # Unsubscribed names leave ``known`` at once, so what is left is all still wanted.
            removed = sorted(n for n in state.known_names() if n not in available)
        else:
            wanted = {n for n in candidates if status.wildcard or n in status.names}
            removed = sorted(n for n in wanted if n not in available and known(n) is not None)
        state.synced = snapshot.version
        to_send: list[Resource] = [
            available[n]
            for n in sorted(wanted)
            if n in available and known(n) != available[n].version
        ]
        version = snapshot.versions.get(type_url, "")
        if not to_send and not removed and status.sent_version:
            state.rebase(snapshot, type_url, full=candidates is None)
            return None
        # The first response of a subscription always goes out, even empty: Envoy waits for
        # it before it finishes initializing (e.g. wildcard CDS while no server exists yet).
        for resource in to_send:
            state.send(resource.name, resource.version)
        if type_url == CLUSTER:
            self._forget_endpoints(to_send)
        for name in removed:
            state.forget_sent(name)
        state.rebase(snapshot, type_url, full=candidates is None)
        head, tail = delta_response_parts(
            system_version_info=version,
            resources=to_send,
            removed=removed,
            type_url=type_url,
            control_plane=self._cp,
        )
        return self._send(
            type_url,
            state,
            version=version,
            head=(head,),
            tail=tail,
            names=[r.name for r in to_send],
            removed=removed,
            sent={r.name: r.version for r in to_send},
            committed_at=snapshot.committed_at,
        )
