"""Per-stream xDS protocol state: what a proxy asked for, what it was sent, what it accepted.

Pure state machines, no I/O: ``xds.sotw.SotwStream`` and ``xds.delta.DeltaStream`` take parsed
requests (``on_request``) and a snapshot (``responses``) and return encoded responses to send, in
push order (CDS, EDS, LDS, RDS). This module holds what both share (per-type state, limits,
statuses, the push loop, the one send step); ``xds.server`` owns the gRPC side. Rules the two
implement:

- a request whose nonce is not the latest one sent for its type (SotW) or not one awaiting an
  answer (delta) is stale: its ACK/NACK part is ignored (SotW ignores the whole request);
- an ACK records the accepted version; a NACK records the error and the rejected version, which
  is never re-sent: only content that differs from what was last sent is ever sent;
- wildcard CDS/LDS (Envoy; a named CDS/LDS subscription, as gRPC's client makes, gets exactly
  the named resources); named EDS/RDS; EDS/RDS SotW responses carry only the resources that
  changed (they are not state-of-the-world types), CDS/LDS responses carry all;
- a Cluster sent is always followed by its ClusterLoadAssignment in the same push, changed or
  not: Envoy re-creates an updated cluster, and the new one warms until it gets endpoints, but it
  does not ask again for a name it is already subscribed to.
"""

from __future__ import annotations

import functools
import itertools
import sys
import weakref
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from control_plane.xds.resources import (
    ENDPOINT,
    PUSH_ORDER,
    Resource,
    version_of_sum,
)
from control_plane.xds.snapshot import Snapshot, eds_name


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one stream may hold; a request past a limit ends the stream (RESOURCE_EXHAUSTED)."""

    # Names subscribed per type, and entries of ``initial_resource_versions`` per type.
    max_names: int = 20_000
    # One resource name (or initial version), in UTF-8 bytes. Kubernetes object names are at
    # most 253, Istio's and Envoy Gateway's cluster names a Kubernetes hostname plus a port
    # and a few short parts; routeplane's are shorter still.
    max_name_bytes: int = 512
    # Every name a stream holds, all types together (subscribed names, and the names and
    # versions of ``initial_resource_versions``): 20,000 names of 200 bytes. A request past it
    # is refused before anything is kept, so one request is bounded by it as well.
    max_stream_name_bytes: int = 4 << 20
    # Distinct type URLs on one stream (the four Envoy types and a few unknown ones).
    max_types: int = 8
    max_type_url_length: int = 256
    # A NACK's message is stored and shown up to this many characters.
    max_nack_text: int = 1024


DEFAULT_LIMITS = Limits()


class LimitExceededError(Exception):
    """A request asked a stream to hold more than its :class:`Limits` allow."""


def name_bytes(name: str) -> int:
    """``name``'s size in UTF-8 bytes (``isascii`` is O(1): no copy for the usual name)."""
    return len(name) if name.isascii() else len(name.encode())


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@dataclass(slots=True)
class Nack:
    version: str
    message: str
    nonce: str


NO_NAMES: frozenset[str] = frozenset()
# The hash of a name set -> the set, held weakly. Not a ``WeakValueDictionary`` keyed by the
# set itself: its key held every set ever subscribed to alive (889 MB after four streams of
# long names had closed).
_SHARED_NAMES: dict[int, weakref.ref[frozenset[str]]] = {}


def _forget_names(key: int, ref: weakref.ref[frozenset[str]]) -> None:
    if _SHARED_NAMES.get(key) is ref:
        del _SHARED_NAMES[key]


def shared_names(names: AbstractSet[str]) -> frozenset[str]:
    """``names`` as a frozenset shared by every stream subscribed to the same names (a thousand
    proxies of one fleet hold one set, not a thousand); it lives as long as a stream holds it.
    O(len(names)), like the request that changed them."""
    if not names:
        return NO_NAMES
    frozen = frozenset(names)
    key = hash(frozen)
    ref = _SHARED_NAMES.get(key)
    found = ref() if ref is not None else None
    if found is None:
        _SHARED_NAMES[key] = weakref.ref(frozen, functools.partial(_forget_names, key))
        return frozen
    # Another set of the same hash is not shared (the first one keeps the entry).
    return found if found == frozen else frozen


@dataclass(slots=True)
class TypeStatus:
    """What one proxy has of one type; read by the admin API and tests. Its name sets are
    replaced, never altered: they may be shared with other streams."""

    subscribed: bool = False
    wildcard: bool = False
    names: frozenset[str] = NO_NAMES
    sent_version: str = ""
    acked_version: str = ""
    last_nack: Nack | None = None
    pushes: int = 0
    # Resources carried by those responses: what "sends nothing it already has" is judged by.
    resources_sent: int = 0
    acks: int = 0
    nacks: int = 0
    # The source commit time of the snapshot behind the last response sent / ACKed.
    sent_committed_at: float = 0.0
    acked_committed_at: float = 0.0
    # Named subscriptions (SotW): names asked for that the snapshot does not have. A proxy
    # that ACKed everything it was sent still lacks these: MISSING, not SYNCED.
    missing: frozenset[str] = NO_NAMES

    @property
    def state(self) -> str:
        if self.last_nack is not None and self.last_nack.version == self.sent_version:
            return "NACKED"
        if self.sent_version and self.sent_version == self.acked_version:
            return "MISSING" if self.missing else "SYNCED"
        return "STALE" if self.sent_version else "WAITING"


@dataclass(slots=True)
class Outgoing:
    """One encoded response and what it carries (for logs and metrics)."""

    type_url: str
    payload: bytes
    nonce: str
    version: str
    resource_names: list[str]
    removed: list[str]


@dataclass(slots=True)
class RequestOutcome:
    """What a request meant: ``stale`` requests changed nothing."""

    type_url: str
    stale: bool = False
    # True when the request changed what the proxy subscribes to: a push may be due.
    resubscribed: bool = False
    # For an ACK: the source commit time of what was ACKed, and whether it was the stream's
    # first ACK of the type (the initial sync, not a change).
    committed_at: float = 0.0
    first_ack: bool = False
    ack: str | None = None
    nack: Nack | None = None
    # A NACK of the version this type already NACKed: not logged or counted again.
    repeated_nack: bool = False
    # Names the request subscribed to that the stream did not subscribe to before.
    subscribed: frozenset[str] = frozenset()


_KNOWN = frozenset(PUSH_ORDER)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1][:64]


EMPTY_VERSION = version_of_sum(0)


def _matches(type_url: str, wanted: str) -> bool:
    return not wanted or type_url == wanted


@dataclass(slots=True)
class Pending:
    sent: dict[str, str]
    removed: list[str]
    version: str
    committed_at: float = 0.0


MAX_PENDING = 32
# The nonce is field 5 of both DiscoveryResponse and DeltaDiscoveryResponse: this tag byte
# (length-delimited), then one length byte (a counter's digits are far fewer than 128), as
# ``resources.string_field(5, nonce)`` encodes it.
_NONCE_TAG: Final = 5 << 3 | 2


@dataclass(slots=True)
class TypeState:
    """Everything one stream keeps about one type, whatever the protocol (``xds.sotw`` and
    ``xds.delta`` add their own fields). Thousands of streams hold four each: nothing here is
    allocated before it is needed."""

    status: TypeStatus = field(default_factory=TypeStatus)
    # The snapshot version this type's state was last computed for.
    synced: str | None = None
    # Names to re-examine on the next push besides what the snapshot changed (replaced, never
    # altered: the empty default is shared).
    extra: AbstractSet[str] = NO_NAMES
    # What this type holds of the stream's name bytes (``Limits.max_stream_name_bytes``).
    name_bytes: int = 0

    def forget_sent(self, name: str) -> bool:
        """Forget that ``name`` was sent (it will be sent again); True if it had been."""
        raise NotImplementedError

    def issued(
        self,
        nonce: str,
        version: str,
        sent: dict[str, str] | None,
        removed: list[str],
        committed_at: float | None,
    ) -> None:
        """A response went out under ``nonce``: ``version``, sending ``sent`` (name ->
        version) and removing ``removed``, built from a snapshot committed at
        ``committed_at`` (None: the empty response to a type not served). The protocol
        keeps what its answer will be checked against. (Positional: one call per push.)"""
        raise NotImplementedError


StateT = TypeVar("StateT", bound=TypeState)


class BaseStream(Generic[StateT]):
    def __init__(
        self, *, control_plane_id: str, only_type: str = "", limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.only_type = only_type
        self.limits = limits
        self._types: dict[str, StateT] = {}
        self._nonces = itertools.count(1)
        self._control_plane_id = control_plane_id
        # Name bytes held over every type (the sum of their ``TypeState.name_bytes``).
        self.name_bytes = 0

    @property
    def status(self) -> dict[str, TypeStatus]:
        """Per type: what this proxy has (a new dict; for the admin API and tests)."""
        return {type_url: state.status for type_url, state in self._types.items()}

    def _type_of(self, request_type_url: str) -> str:
        # Interned: the key of a per-type state, kept by every stream (the request's string
        # is a new copy each time it is read).
        return sys.intern(request_type_url) if request_type_url else self.only_type

    def _new_state(self) -> StateT:
        raise NotImplementedError

    def _state(self, type_url: str) -> StateT:
        state = self._types.get(type_url)
        if state is None:
            limits = self.limits
            if len(type_url) > limits.max_type_url_length:
                raise LimitExceededError(
                    f"type_url of {len(type_url)} characters; at most {limits.max_type_url_length}"
                )
            if len(self._types) >= limits.max_types:
                raise LimitExceededError(
                    f"more than {limits.max_types} resource types on one stream"
                )
            state = self._types[type_url] = self._new_state()
        return state

    def _check_names(self, type_url: str, count: int, what: str) -> None:
        if count > self.limits.max_names:
            short = _short(type_url)
            raise LimitExceededError(
                f"{count} {what} for {short}; at most {self.limits.max_names} per type on one "
                "stream (serve --max-names-per-stream)"
            )

    def _sizes(self, type_url: str, names: Iterable[str], what: str) -> int:
        """The bytes of ``names``; LimitExceededError if one is longer than a name may be."""
        limit = self.limits.max_name_bytes
        total = 0
        for name in names:
            size = name_bytes(name)
            if size > limit:
                raise LimitExceededError(
                    f"a name of {size} bytes in {what} for {_short(type_url)}; at most {limit} "
                    f"bytes ({name[:32]!r}...)"
                )
            total += size
        return total

    def _hold_name_bytes(self, type_url: str, state: StateT, held: int) -> None:
        """Let ``type_url`` hold ``held`` name bytes from now on, or LimitExceededError if the
        stream would hold more than ``Limits.max_stream_name_bytes`` (nothing changes then)."""
        total = self.name_bytes - state.name_bytes + held
        limit = self.limits.max_stream_name_bytes
        if total > limit:
            raise LimitExceededError(
                f"{total} bytes of resource names on one stream (this request: "
                f"{_short(type_url)}); at most {limit} bytes over all types"
            )
        self.name_bytes, state.name_bytes = total, held

    def _nack(self, state: StateT, version: str, request: Any) -> tuple[Nack, bool]:
        """Record a NACK of ``version``; True when this type already NACKed that version."""
        status = state.status
        repeated = status.last_nack is not None and status.last_nack.version == version
        nack = Nack(
            version=version,
            message=_truncate(request.error_detail.message, self.limits.max_nack_text),
            nonce=request.response_nonce,
        )
        status.last_nack = nack
        if not repeated:
            status.nacks += 1
        return nack, repeated

    def _send(
        self,
        type_url: str,
        state: StateT,
        *,
        version: str,
        head: Sequence[bytes],
        tail: bytes,
        names: list[str],
        removed: list[str],
        sent: dict[str, str] | None = None,
        committed_at: float | None = None,
    ) -> Outgoing:
        """The one send step of both protocols: a new nonce, recorded by the type's state
        (:meth:`TypeState.issued`), the version sent and the push counted, and the response
        built: the fields before the nonce (``head``, one part or several, joined once), the
        nonce, then ``tail``; it carries ``names`` and removes ``removed``."""
        nonce = str(next(self._nonces))
        state.issued(nonce, version, sent, removed, committed_at)
        status = state.status
        status.sent_version = version
        status.pushes += 1
        status.resources_sent += len(names)
        encoded = nonce.encode()
        return Outgoing(
            type_url=type_url,
            payload=b"".join((*head, bytes((_NONCE_TAG, len(encoded))), encoded, tail)),
            nonce=nonce,
            version=version,
            resource_names=names,
            removed=removed,
        )

    def responses(self, snapshot: Snapshot | None) -> list[Outgoing]:
        """What to send for ``snapshot``, in push order (CDS, EDS, LDS, RDS)."""
        if snapshot is None:
            return []
        out: list[Outgoing] = []
        for type_url in PUSH_ORDER:
            if not _matches(type_url, self.only_type):
                continue
            state = self._types.get(type_url)
            if state is None or not state.status.subscribed:
                continue
            response = self._response_for(type_url, state, snapshot)
            if response is not None:
                out.append(response)
        if len(self._types) > len(out):
            for type_url, state in self._types.items():
                if type_url in _KNOWN or not _matches(type_url, self.only_type):
                    continue
                if state.status.subscribed and not state.status.sent_version:
                    # A type we do not serve: one empty response, so the client is not left
                    # waiting for its deadline (Envoy treats it as "no such resources").
                    out.append(self._empty_response(type_url, state, snapshot))
        return out

    def _empty_response(self, type_url: str, state: StateT, snapshot: Snapshot) -> Outgoing:
        raise NotImplementedError

    def _response_for(self, type_url: str, state: StateT, snapshot: Snapshot) -> Outgoing | None:
        raise NotImplementedError

    def _candidates(
        self, state: StateT, type_url: str, snapshot: Snapshot
    ) -> AbstractSet[str] | None:
        """The names worth looking at for this push, or None for "all of them".

        When this type was last computed against the snapshot this one was built from, only
        what that build changed (plus names set aside by the cluster rule) can differ: a push
        then costs O(changes), not O(resources), per stream.
        """
        synced = state.synced
        extra = state.extra
        state.extra = NO_NAMES
        if synced is None or (snapshot.changed is None and synced != snapshot.version):
            return None
        if synced == snapshot.version:
            return extra
        if snapshot.parent_version != synced:
            return None  # fell behind by more than one snapshot: compare everything
        assert snapshot.changed is not None
        changed = snapshot.changed.get(type_url, frozenset())
        return changed | extra if extra else changed

    def _forget_endpoints(self, clusters: list[Resource]) -> None:
        """The cluster rule: each cluster's ClusterLoadAssignment goes out again in this push."""
        endpoints = self._types.get(ENDPOINT)
        if endpoints is None or not clusters:
            return
        forgotten = set()
        for cluster in clusters:
            name = eds_name(cluster.message)
            if name is not None and endpoints.forget_sent(name):
                forgotten.add(name)
        if forgotten:
            endpoints.extra = endpoints.extra | forgotten
