"""Incremental (delta) xDS (ADS or one type): the stream rules of ``xds.stream`` for delta."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from control_plane.xds.resources import (
    CLUSTER,
    WILDCARD_TYPES,
    Resource,
    control_plane_field,
    delta_response,
)
from control_plane.xds.snapshot import Snapshot
from control_plane.xds.stream import (
    DEFAULT_LIMITS,
    EMPTY_VERSION,
    MAX_PENDING,
    BaseStream,
    Limits,
    Outgoing,
    Pending,
    RequestOutcome,
    TypeState,
    shared_names,
)

_NOTHING = object()


@dataclass(slots=True)
class DeltaState(TypeState):
    """What a delta stream keeps about one type besides :class:`TypeState`: name -> version the
    proxy has been sent (or said it has), what it ACKed, and the responses awaiting an answer.

    What the proxy ACKed is kept as the names where it differs from what it was sent: once a
    proxy has ACKed everything, that is none, and thousands of streams do not each keep a second
    name -> version dict the same as the first (``acked()`` builds it when asked).
    """

    known: dict[str, str] = field(default_factory=dict)
    # name -> version ACKed (None: not ACKed) where that differs from ``known``; None when none.
    unacked: dict[str, str | None] | None = None
    pending: dict[str, Pending] = field(default_factory=dict)

    def acked(self) -> dict[str, str]:
        """name -> version the proxy ACKed (a new dict)."""
        unacked = self.unacked
        if unacked is None:
            return dict(self.known)
        acked = {n: v for n, v in self.known.items() if n not in unacked}
        acked.update((n, v) for n, v in unacked.items() if v is not None)
        return acked

    # Every change keeps ``unacked`` exact: no entry equal to ``known``'s (None for a name not
    # known), and None rather than empty.

    def set_acked(self, name: str, version: str) -> None:
        """The proxy said it has ``name`` at ``version`` (initial versions): sent and ACKed."""
        self.known[name] = version
        self._acked_as_known(name)

    def drop(self, name: str) -> None:
        """Unsubscribed: neither sent nor ACKed any more."""
        self.known.pop(name, None)
        self._acked_as_known(name)

    def send(self, name: str, version: str) -> None:
        self._keep_acked(name)
        self.known[name] = version
        self._settle(name)

    def forget_sent(self, name: str) -> bool:
        if name not in self.known:
            return False
        self._keep_acked(name)
        del self.known[name]
        self._settle(name)
        return True

    def ack(self, sent: dict[str, str], removed: list[str]) -> None:
        """The proxy ACKed a response that sent ``sent`` and removed ``removed``."""
        for name, version in sent.items():
            self._mark_acked(name, version)
        for name in removed:
            self._mark_acked(name, None)

    def _keep_acked(self, name: str) -> None:
        """Before ``known[name]`` changes: remember what the proxy ACKed of it."""
        if self.unacked is None:
            self.unacked = {name: self.known.get(name)}
        elif name not in self.unacked:
            self.unacked[name] = self.known.get(name)

    def _mark_acked(self, name: str, version: str | None) -> None:
        if self.known.get(name) == version:
            self._acked_as_known(name)
        elif self.unacked is None:
            self.unacked = {name: version}
        else:
            self.unacked[name] = version

    def _settle(self, name: str) -> None:
        """After ``known[name]`` changed: forget the ACKed version if it is the same again."""
        if self.unacked is not None and self.unacked.get(name, _NOTHING) == self.known.get(name):
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
        state = self._state(type_url)
        status = state.status
        # Interned: a thousand streams subscribed to the same names hold one copy of each.
        subscribe = {sys.intern(name) for name in request.resource_names_subscribe}
        unsubscribe = set(request.resource_names_unsubscribe)
        self._check_names(type_url, len(request.initial_resource_versions), "initial versions")
        if subscribe:  # (an ACK subscribes to nothing: no set built per ACK)
            self._check_names(type_url, len(status.names | subscribe), "names subscribed")
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
        if request.response_nonce:
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
        return outcome

    def _empty_response(self, type_url: str, state: DeltaState, snapshot: Snapshot) -> Outgoing:
        nonce = self._next_nonce()
        if len(state.pending) >= MAX_PENDING:
            del state.pending[next(iter(state.pending))]
        state.pending[nonce] = Pending(sent={}, removed=[], version=EMPTY_VERSION)
        state.status.sent_version = EMPTY_VERSION
        state.status.pushes += 1
        payload = delta_response(
            system_version_info=EMPTY_VERSION,
            resources=[],
            removed=[],
            type_url=type_url,
            nonce=nonce,
            control_plane=self._cp,
        )
        return Outgoing(
            type_url=type_url,
            payload=payload,
            nonce=nonce,
            version=EMPTY_VERSION,
            resource_names=[],
            removed=[],
        )

    def _response_for(
        self, type_url: str, state: DeltaState, snapshot: Snapshot
    ) -> Outgoing | None:
        status, known = state.status, state.known
        available = snapshot.of_type(type_url)
        candidates = self._candidates(state, type_url, snapshot)
        if candidates is None:
            wanted = set(available) | status.names if status.wildcard else set(status.names)
            # Unsubscribed names leave ``known`` at once, so what is left is all still wanted.
            removed = sorted(n for n in known if n not in available)
        else:
            wanted = {n for n in candidates if status.wildcard or n in status.names}
            removed = sorted(n for n in wanted if n in known and n not in available)
        state.synced = snapshot.version
        to_send: list[Resource] = [
            available[n]
            for n in sorted(wanted)
            if n in available and known.get(n) != available[n].version
        ]
        version = snapshot.versions.get(type_url, "")
        if not to_send and not removed and status.sent_version:
            return None
        # The first response of a subscription always goes out, even empty: Envoy waits for
        # it before it finishes initializing (e.g. wildcard CDS while no server exists yet).
        for resource in to_send:
            state.send(resource.name, resource.version)
        if type_url == CLUSTER:
            self._forget_endpoints(to_send)
        for name in removed:
            state.forget_sent(name)
        nonce = self._next_nonce()
        pending = state.pending
        if len(pending) >= MAX_PENDING:
            # A proxy that never answers must not grow our memory: forget the oldest.
            del pending[next(iter(pending))]
        pending[nonce] = Pending(
            sent={r.name: r.version for r in to_send},
            removed=removed,
            version=version,
            committed_at=snapshot.committed_at,
        )
        status.sent_version = version
        status.pushes += 1
        status.resources_sent += len(to_send)
        payload = delta_response(
            system_version_info=version,
            resources=to_send,
            removed=removed,
            type_url=type_url,
            nonce=nonce,
            control_plane=self._cp,
        )
        return Outgoing(
            type_url=type_url,
            payload=payload,
            nonce=nonce,
            version=version,
            resource_names=[r.name for r in to_send],
            removed=removed,
        )
