"""CSDS (``envoy.service.status.v3.ClientStatusDiscoveryService``) on the xDS port.

Standard CSDS clients see, per connected proxy, every resource it should have with the version
and whether it was ACKed, is still in flight (STALE) or was rejected (ERROR, with the NACK).
``node_matchers`` filter on the node id (exact or prefix); ``exclude_resource_contents`` leaves
the resources themselves out.

This module answers for this process's proxies only. Under ``serve --workers`` a worker's xDS
port answers for the whole group with an :class:`Answer` from ``group/csds.py``, which asks the
other workers on their loopback admin ports (where each answers for its own proxies).

On the xDS port CSDS is guarded (``XdsPortGuard``): a caller sees only its own fleet's proxies
under mTLS (the fleets its client certificate names), needs the admin token without mTLS when
one is set, and is rate-limited per peer and overall; the answer is bounded in proxies and
bytes. The scope and the bounds travel to the sibling workers with the fan-out (``SCOPE_HEADER``
on their token-guarded admin port). The admin address keeps the full, unbounded view.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2

from control_plane.identity import certificate_clusters
from control_plane.xds.delta import DeltaStream
from control_plane.xds.resources import PUSH_ORDER
from control_plane.xds.server import Proxy, TokenBucket, XdsServer, shorten

SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"
_STATUS = csds_pb2.ConfigStatus
_CLIENT = config_dump_shared_pb2.ClientResourceStatus

# CSDS on the xDS port (the admin address has none of these bounds).
MAX_CLIENTS = 1_000  # proxies in one answer
MAX_ANSWER_BYTES = 16 << 20  # bytes of one answer
CALLS_PER_SECOND, CALLS_BURST = 2.0, 4.0  # over every caller
PEER_CALLS_PER_SECOND, PEER_CALLS_BURST = 1.0, 2.0  # per peer address
MAX_PEERS = 1_024  # peers whose rate is remembered (the least recent forgotten)
# The scope and bounds of a call that came in on the xDS port, sent with the fan-out.
SCOPE_HEADER = "routeplane-csds-scope"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """What one answer may hold: proxies of ``fleets`` (None: every fleet), at most
    ``max_clients`` of them and ``max_bytes`` in all."""

    fleets: frozenset[str] | None = None
    max_clients: int = MAX_CLIENTS
    max_bytes: int = MAX_ANSWER_BYTES

    def allows(self, proxy: Proxy) -> bool:
        return self.fleets is None or proxy.group.cluster in self.fleets

    def check(self, clients: int, size: int) -> None:
        """AnswerTooLarge if an answer of ``clients`` proxies and ``size`` bytes is past it."""
        if clients > self.max_clients or size > self.max_bytes:
            raise AnswerTooLarge(
                f"the CSDS answer would hold more than {self.max_clients} proxies or "
                f"{self.max_bytes} bytes (CSDS on the xDS port); ask for fewer with "
                "node_matchers or exclude_resource_contents, or use the admin address"
            )

    def header(self) -> str:
        fleets = sorted(self.fleets) if self.fleets is not None else None
        return json.dumps(
            {"fleets": fleets, "max_clients": self.max_clients, "max_bytes": self.max_bytes}
        )

    @classmethod
    def from_header(cls, text: str) -> Scope:
        """ValueError if ``text`` is not what :meth:`header` writes."""
        try:
            value = json.loads(text)
            fleets = value["fleets"]
            scope = cls(
                fleets=frozenset(str(f) for f in fleets) if fleets is not None else None,
                max_clients=int(value["max_clients"]),
                max_bytes=int(value["max_bytes"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{SCOPE_HEADER} is not a CSDS scope: {shorten(text)!r}") from exc
        return scope


class AnswerTooLarge(Exception):
    """An answer went past its :class:`Scope`'s bounds; the message names them."""


class Refused(Exception):
    """A CSDS call on the xDS port that :class:`XdsPortGuard` does not let in."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class XdsPortGuard:
    """Who may call CSDS on the xDS port, what they see, and how often.

    - under mTLS (``require_identity``): the proxies of the fleets the client certificate
      names, as for xDS itself;
    - without mTLS and with an admin token: every fleet, for a caller with the token
      (``authorization: Bearer``), UNAUTHENTICATED for others;
    - without either (plaintext xDS, meant for loopback): every fleet, as xDS itself serves
      every fleet's configuration there.
    Every call, and every request of a StreamClientStatus, takes a token from the caller's
    peer address's bucket and from the overall one (RESOURCE_EXHAUSTED when either is empty).
    """

    def __init__(
        self,
        *,
        require_identity: bool,
        token: str = "",
        calls_per_second: float = CALLS_PER_SECOND,
        calls_burst: float = CALLS_BURST,
        peer_calls_per_second: float = PEER_CALLS_PER_SECOND,
        peer_calls_burst: float = PEER_CALLS_BURST,
        max_peers: int = MAX_PEERS,
        max_clients: int = MAX_CLIENTS,
        max_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.require_identity = require_identity
        self._expected = f"Bearer {token}" if token else ""
        self._all = TokenBucket(rate=calls_per_second, burst=calls_burst)
        self._peer_rate, self._peer_burst = peer_calls_per_second, peer_calls_burst
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._max_peers = max_peers
        self._max_clients, self._max_bytes = max_clients, max_bytes

    def admit(self, context: grpc.aio.ServicerContext) -> Scope:
        """The scope of this call; Refused if it may not be answered."""
        fleets: frozenset[str] | None = None
        if self.require_identity:
            fleets = frozenset(certificate_clusters(context.auth_context()))
            if not fleets:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED, "the client certificate names no fleet"
                )
        elif self._expected:
            metadata = dict(context.invocation_metadata() or ())
            if metadata.get("authorization") != self._expected:
                raise Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "CSDS on the xDS port without mTLS needs the admin token "
                    "(authorization: Bearer <token>)",
                )
        peer = context.peer().rsplit(":", 1)[0]
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = self._peers[peer] = TokenBucket(rate=self._peer_rate, burst=self._peer_burst)
            if len(self._peers) > self._max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        if not bucket.take():
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"CSDS on the xDS port: at most {self._peer_rate:g} calls a second per peer "
                f"(bursts of {self._peer_burst:g}); retry later, or use the admin address",
            )
        if not self._all.take():
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"CSDS on the xDS port: at most {self._all.rate:g} calls a second over all "
                f"callers (bursts of {self._all.burst:g}); retry later, or use the admin address",
            )
        return Scope(fleets=fleets, max_clients=self._max_clients, max_bytes=self._max_bytes)


def _matches(proxy: Proxy, request: Any) -> bool:
    if not request.node_matchers:
        return True
    for matcher in request.node_matchers:
        node_id = matcher.node_id
        if node_id.exact and node_id.exact == proxy.node_id:
            return True
        if node_id.prefix and proxy.node_id.startswith(node_id.prefix):
            return True
    return False


def client_config(xds: XdsServer, proxy: Proxy, *, contents: bool) -> csds_pb2.ClientConfig:
    config = csds_pb2.ClientConfig(
        node=base_pb2.Node(
            id=proxy.node_id,
            cluster=proxy.group.cluster,
            locality=base_pb2.Locality(region=proxy.group.region, zone=proxy.group.zone),
            user_agent_name=proxy.user_agent,
        )
    )
    snapshot = xds.cache.get(proxy.group)
    protocol = proxy.protocol
    for type_url in PUSH_ORDER:
        status = protocol.status.get(type_url)
        if status is None or not status.subscribed or snapshot is None:
            continue
        available = snapshot.of_type(type_url)
        names: Iterable[str] = (
            sorted(available) if status.wildcard else sorted(n for n in status.names)
        )
        acked = protocol.acked.get(type_url, {}) if isinstance(protocol, DeltaStream) else None
        for name in names:
            resource = available.get(name)
            entry = config.generic_xds_configs.add(type_url=type_url, name=name)
            if resource is None:
                entry.config_status = _STATUS.NOT_SENT
                entry.client_status = _CLIENT.DOES_NOT_EXIST
                continue
            entry.version_info = resource.version
            if contents:
                entry.xds_config.MergeFromString(resource.any_bytes)
            nack = status.last_nack
            if acked is not None:
                synced = acked.get(name) == resource.version
            else:
                # SotW: everything sent was ACKed (names it lacks are DOES_NOT_EXIST above).
                synced = status.state in ("SYNCED", "MISSING")
            if synced:
                entry.config_status = _STATUS.SYNCED
                entry.client_status = _CLIENT.ACKED
            elif nack is not None and status.state == "NACKED":
                entry.config_status = _STATUS.ERROR
                entry.client_status = _CLIENT.NACKED
                entry.error_state.details = nack.message
                entry.error_state.version_info = nack.version
            else:
                entry.config_status = _STATUS.STALE
                entry.client_status = _CLIENT.REQUESTED
    return config


def _least_size(xds: XdsServer, proxy: Proxy, *, contents: bool) -> int:
    """Fewer bytes than ``client_config`` would take (its names, and the resources' own bytes
    with ``contents``), found without building it: an answer refused for its size costs a pass
    over names, not the parsing of every resource."""
    snapshot = xds.cache.get(proxy.group)
    if snapshot is None:
        return 0
    total = 0
    for type_url in PUSH_ORDER:
        status = proxy.protocol.status.get(type_url)
        if status is None or not status.subscribed:
            continue
        available = snapshot.of_type(type_url)
        names: Iterable[str] = available if status.wildcard else status.names
        for name in names:
            total += len(name)
            if contents:
                resource = available.get(name)
                if resource is not None:
                    total += len(resource.any_bytes)
    return total


def status_response(
    xds: XdsServer, request: Any, scope: Scope | None = None
) -> csds_pb2.ClientStatusResponse:
    """This process's proxies matching ``request`` (and ``scope``: AnswerTooLarge, before
    anything is built when a lower bound of the size is already past it, else as soon as the
    answer goes past it)."""
    response = csds_pb2.ClientStatusResponse()
    contents = not request.exclude_resource_contents
    chosen = [
        proxy
        for proxy in sorted(xds.proxies.values(), key=lambda p: (p.node_id, p.stream_id))
        if _matches(proxy, request) and (scope is None or scope.allows(proxy))
    ]
    if scope is None:
        for proxy in chosen:
            response.config.append(client_config(xds, proxy, contents=contents))
        return response
    scope.check(len(chosen), 0)
    least = 0
    for proxy in chosen:
        least += _least_size(xds, proxy, contents=contents)
        scope.check(0, least)
    size = 0
    for proxy in chosen:
        config = client_config(xds, proxy, contents=contents)
        size += config.ByteSize()
        scope.check(len(response.config) + 1, size)
        response.config.append(config)
    return response


class Answer(Protocol):
    """What a CSDS call is answered with: this process's proxies (``own``) or, under
    ``serve --workers``, the group's (``group/csds.py``). ``context`` is the call's, for an
    answer that must fail it with a status of its own."""

    async def __call__(
        self, request: Any, scope: Scope | None, context: grpc.aio.ServicerContext, /
    ) -> csds_pb2.ClientStatusResponse: ...


def own(xds: XdsServer) -> Answer:
    """This process's proxies: ``status_response`` as an :class:`Answer`."""

    async def answer(
        request: Any, scope: Scope | None, context: grpc.aio.ServicerContext, /
    ) -> csds_pb2.ClientStatusResponse:
        return status_response(xds, request, scope)

    return answer


def generic_handler(
    answer_with: XdsServer | Answer, *, guard: XdsPortGuard | None = None
) -> grpc.GenericRpcHandler:
    """CSDS answered with ``answer_with`` (an XdsServer: its own proxies). With ``guard`` (the
    xDS port) every call is admitted, scoped and bounded by it; without (an admin address), a
    call carries its scope in ``SCOPE_HEADER`` when a sibling on the xDS port made it, and has
    the full view otherwise."""
    respond = own(answer_with) if isinstance(answer_with, XdsServer) else answer_with

    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        scope: Scope | None = None
        try:
            if guard is not None:
                scope = guard.admit(context)
            else:
                header = dict(context.invocation_metadata() or ()).get(SCOPE_HEADER)
                if header is not None:
                    scope = Scope.from_header(str(header))
        except Refused as exc:
            await context.abort(exc.code, str(exc))
            raise  # abort raised
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raised
        try:
            return await respond(request, scope, context)
        except AnswerTooLarge as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise  # abort raised

    async def fetch(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await answer(request, context)

    async def stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield await answer(request, context)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                fetch,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
            ),
            "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
            ),
        },
    )
