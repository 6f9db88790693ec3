"""State-of-the-world xDS (ADS or one type): the stream rules of ``xds.stream`` for SotW.

CDS and LDS are state-of-the-world types: a wildcard subscription (Envoy) gets every resource
of the snapshot; a named one (gRPC's xDS client) gets exactly the named resources that exist,
all of them in every response, so a name left out is one that does not exist.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from control_plane.xds.resources import (
    CLUSTER,
    WILDCARD_TYPES,
    control_plane_field,
    sotw_response_parts,
    version_of_sum,
)
from control_plane.xds.snapshot import Snapshot, type_version
from control_plane.xds.stream import (
    DEFAULT_LIMITS,
    EMPTY_VERSION,
    NO_NAMES,
    BaseStream,
    Limits,
    Outgoing,
    RequestOutcome,
    TypeState,
    shared_names,
)


@dataclass(slots=True)
class SotwState(TypeState):
    """What a SotW stream keeps about one type besides :class:`TypeState`."""

    # The latest nonce sent; name -> version last sent (what the proxy has, or rejected); the
    # version_info the proxy claimed on its first request; for named subscriptions, the pair
    # hashes of the subscribed resources and their sum.
    last_nonce: str = ""
    sent: dict[str, str] = field(default_factory=dict)
    claimed: str | None = None
    selected: dict[str, int] = field(default_factory=dict)
    selected_sum: int = 0

    def forget_sent(self, name: str) -> bool:
        return self.sent.pop(name, None) is not None

    def issued(
        self,
        nonce: str,
        version: str,
        sent: dict[str, str] | None,
        removed: list[str],
        committed_at: float | None,
    ) -> None:
        # Only the latest nonce is answerable; the commit time is what its ACK reports.
        self.last_nonce = nonce
        if committed_at is not None:
            status = self.status
            status.sent_committed_at = committed_at or status.sent_committed_at or 1e-9


class SotwStream(BaseStream[SotwState]):
    """State-of-the-world xDS (ADS or one type)."""

    _CP_FIELD = 6

    def __init__(
        self, *, control_plane_id: str, only_type: str = "", limits: Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__(control_plane_id=control_plane_id, only_type=only_type, limits=limits)
        self._cp = control_plane_field(identifier=control_plane_id, field_number=self._CP_FIELD)

    def _new_state(self) -> SotwState:
        return SotwState()

    @staticmethod
    def _named_version(
        state: SotwState, available: Any, candidates: AbstractSet[str] | None
    ) -> str:
        """The version_info of a named subscription: the sum of the subscribed resources'
        pair hashes, kept up to date push by push (with the names that do not exist)."""
        hashes, names = state.selected, state.status.names
        # ``TypeStatus`` sets are replaced, never altered; usually there are none missing.
        if candidates is None:
            hashes.clear()
            missing: set[str] = set()
            for name in names:
                resource = available.get(name)
                if resource is not None:
                    hashes[name] = resource.pair_hash
                else:
                    missing.add(name)
            total = sum(hashes.values())
            state.status.missing = frozenset(missing) if missing else NO_NAMES
        else:
            total = state.selected_sum
            found: list[str] = []
            lost: list[str] = []
            for name in candidates:
                if name not in names:
                    continue
                total -= hashes.pop(name, 0)
                resource = available.get(name)
                if resource is not None:
                    hashes[name] = resource.pair_hash
                    total += resource.pair_hash
                    found.append(name)
                else:
                    lost.append(name)
            was = state.status.missing
            if lost or (was and not was.isdisjoint(found)):
                now = (was - set(found)) | set(lost)
                state.status.missing = frozenset(now) if now else NO_NAMES
        state.selected_sum = total
        return version_of_sum(total)

    def on_request(self, request: Any) -> RequestOutcome:
        type_url = self._type_of(request.type_url)
        outcome = RequestOutcome(type_url=type_url)
        state = self._state(type_url)
        status = state.status
        names = set(request.resource_names)
        self._check_names(type_url, len(names), "names subscribed")
        if names != status.names:
            # Bytes, before anything is kept (SotW names replace the type's names).
            held = self._sizes(type_url, names, "resource_names")
            if held != state.name_bytes:
                self._hold_name_bytes(type_url, state, held)
        # A nonce this stream never issued on a type it never answered: a proxy that
        # reconnected from another control plane. Its request is an initial one.
        foreign = bool(request.response_nonce) and not state.last_nonce
        if request.response_nonce and request.response_nonce != state.last_nonce and not foreign:
            outcome.stale = True
            return outcome
        if request.response_nonce and not foreign:
            if request.HasField("error_detail"):
                outcome.nack, outcome.repeated_nack = self._nack(
                    state, status.sent_version, request
                )
            else:
                status.acked_version = request.version_info
                status.acks += 1
                outcome.ack = request.version_info
                outcome.committed_at = status.sent_committed_at
                outcome.first_ack = status.acked_committed_at == 0.0
                status.acked_committed_at = status.sent_committed_at
        # Empty names mean wildcard only on the first request of a type (the legacy form
        # Envoy uses) or while already wildcard: a named subscriber that drops its last name
        # (gRPC closing its last channel to a target) subscribes to nothing.
        wildcard = type_url in WILDCARD_TYPES and (
            "*" in names or (not names and (status.wildcard or not status.subscribed))
        )
        names.discard("*")
        if not status.subscribed:
            status.subscribed = True
            outcome.resubscribed = True
            if request.version_info:
                state.claimed = request.version_info
        if wildcard != status.wildcard:
            status.wildcard = wildcard
            outcome.resubscribed = True
            state.synced = None
        if names != status.names:
            # Only a request that changes the names pays for the difference (an ACK repeats
            # the whole list).
            outcome.subscribed = frozenset(names - status.names)
            outcome.resubscribed = True
            state.synced = None
            for gone in [n for n in state.sent if n not in names]:
                del state.sent[gone]
            status.names = shared_names(names)
        # Names no longer asked for are no longer missing (new ones are judged on the push).
        if status.missing:
            status.missing = NO_NAMES if status.wildcard else status.missing & status.names
        return outcome

    def _empty_response(self, type_url: str, state: SotwState, snapshot: Snapshot) -> Outgoing:
        head, tail = sotw_response_parts(
            version_info=EMPTY_VERSION, resources=[], type_url=type_url, control_plane=self._cp
        )
        return self._send(
            type_url,
            state,
            version=EMPTY_VERSION,
            head=head,
            tail=tail,
            names=[],
            removed=[],
        )

    def _response_for(self, type_url: str, state: SotwState, snapshot: Snapshot) -> Outgoing | None:
        status, sent = state.status, state.sent
        available = snapshot.of_type(type_url)
        candidates = self._candidates(state, type_url, snapshot)
        if status.wildcard:
            version = snapshot.versions.get(type_url) or type_version(available.values())
        else:
            version = self._named_version(state, available, candidates)
        state.synced = snapshot.version
        claimed, state.claimed = state.claimed, None
        if claimed is not None and claimed == version:
            # Reconnected proxy that already has exactly this: nothing to send.
            status.sent_version = status.acked_version = version
            names = available if status.wildcard else status.names
            sent.update((n, available[n].version) for n in names if n in available)
            return None
        if type_url in WILDCARD_TYPES and not status.wildcard:
            # Named CDS/LDS (gRPC clients): every subscribed resource that exists, and nothing
            # else (gRPC validates every resource it is sent); absence means "does not exist".
            if version == status.sent_version:
                return None
            to_send = [available[n] for n in sorted(status.names) if n in available]
            changed = [r for r in to_send if sent.get(r.name) != r.version]
            sent.clear()
            sent.update((r.name, r.version) for r in to_send)
        elif type_url in WILDCARD_TYPES:
            if version == status.sent_version:
                return None
            to_send = list(available.values())
            if candidates is None:
                changed = [r for r in to_send if sent.get(r.name) != r.version]
                sent.clear()
                sent.update((r.name, r.version) for r in to_send)
            else:
                changed = [
                    available[n]
                    for n in candidates
                    if n in available and sent.get(n) != available[n].version
                ]
                for name in candidates:
                    if name in available:
                        sent[name] = available[name].version
                    else:
                        sent.pop(name, None)
        else:
            subscribed: AbstractSet[str] = (
                status.names if candidates is None else candidates & status.names
            )
            to_send = changed = [
                available[n]
                for n in sorted(subscribed)
                if n in available and sent.get(n) != available[n].version
            ]
            if not to_send:
                return None
            sent.update((r.name, r.version) for r in to_send)
        if type_url == CLUSTER:
            # Envoy skips clusters whose content is unchanged; only changed ones re-warm.
            self._forget_endpoints(changed)
        head, tail = sotw_response_parts(
            version_info=version, resources=to_send, type_url=type_url, control_plane=self._cp
        )
        return self._send(
            type_url,
            state,
            version=version,
            head=head,
            tail=tail,
            names=[r.name for r in to_send],
            removed=[],
            committed_at=snapshot.committed_at,
        )
