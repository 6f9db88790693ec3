"""CSDS (``envoy.service.status.v3.ClientStatusDiscoveryService``) on the xDS port.

Standard CSDS clients see, per connected proxy, every resource it should have with the version
and whether it was ACKed, is still in flight (STALE) or was rejected (ERROR, with the NACK).
``node_matchers`` filter on the node id (exact or prefix); ``exclude_resource_contents`` leaves
the resources themselves out.

Under ``serve --workers`` a connection reaches one worker, which answers for the whole group:
its own proxies and, through ``Siblings``, those of the other workers, asked on their loopback
admin ports (where each worker answers CSDS for its own proxies only). The supervisor serves the
same merged answer on the public admin address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2

from control_plane.xds.delta import DeltaStream
from control_plane.xds.resources import PUSH_ORDER
from control_plane.xds.server import Proxy, XdsServer

_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"
_STATUS = csds_pb2.ConfigStatus
_CLIENT = config_dump_shared_pb2.ClientResourceStatus
SIBLING_TIMEOUT = 10.0  # seconds a sibling worker gets to answer
# A whole worker's answer with resource contents can be large (every resource of every proxy);
# past this the sibling's call fails and the answer names it, rather than holding without bound.
MAX_SIBLING_ANSWER = 256 << 20


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
                entry.xds_config.CopyFrom(any_pb2.Any.FromString(resource.any_bytes))
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


def status_response(xds: XdsServer, request: Any) -> csds_pb2.ClientStatusResponse:
    response = csds_pb2.ClientStatusResponse()
    contents = not request.exclude_resource_contents
    for proxy in sorted(xds.proxies.values(), key=lambda p: (p.node_id, p.stream_id)):
        if _matches(proxy, request):
            response.config.append(client_config(xds, proxy, contents=contents))
    return response


class SiblingUnavailable(Exception):
    """A worker of the group did not answer; the message names it."""


class Siblings:
    """The other workers of a ``serve --workers`` group, by their admin addresses (loopback,
    behind the admin token if one is set). Create it inside the event loop; ``close()`` at the
    end."""

    def __init__(self, addresses: Sequence[str], *, token: str = "") -> None:
        self.addresses = list(addresses)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", MAX_SIBLING_ANSWER)]
        self._channels = [grpc.aio.insecure_channel(a, options=options) for a in self.addresses]
        self._calls = [
            channel.unary_unary(
                f"/{_SERVICE}/FetchClientStatus",
                request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                response_deserializer=csds_pb2.ClientStatusResponse.FromString,
            )
            for channel in self._channels
        ]

    async def fetch(self, request: Any) -> list[csds_pb2.ClientConfig]:
        """Every sibling's proxies matching ``request``; SiblingUnavailable naming the first
        that did not answer (a partial answer would silently hide proxies)."""
        answers = await asyncio.gather(
            *(
                call(
                    request,
                    timeout=SIBLING_TIMEOUT,
                    metadata=self._metadata,
                    wait_for_ready=True,
                )
                for call in self._calls
            ),
            return_exceptions=True,
        )
        configs: list[csds_pb2.ClientConfig] = []
        for address, answer in zip(self.addresses, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                raise SiblingUnavailable(
                    f"worker at {address} did not answer: {answer.code().name} {answer.details()}"
                )
            if isinstance(answer, BaseException):
                raise answer
            configs.extend(answer.config)
        return configs

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


async def group_response(
    xds: XdsServer | None, siblings: Siblings | None, request: Any
) -> csds_pb2.ClientStatusResponse:
    """This process's proxies (none for the supervisor) and the siblings', by node id."""
    response = status_response(xds, request) if xds is not None else csds_pb2.ClientStatusResponse()
    if siblings is None or not siblings.addresses:
        return response
    configs = [*response.config, *await siblings.fetch(request)]
    configs.sort(key=lambda config: config.node.id)
    del response.config[:]
    response.config.extend(configs)
    return response


def generic_handler(
    xds: XdsServer | None, siblings: Siblings | None = None
) -> grpc.GenericRpcHandler:
    """CSDS for ``xds``'s proxies and, with ``siblings``, the rest of the worker group."""

    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await group_response(xds, siblings, request)
        except SiblingUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # abort raised

    async def fetch(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await answer(request, context)

    async def stream(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield await answer(request, context)

    return grpc.method_handlers_generic_handler(
        _SERVICE,
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
