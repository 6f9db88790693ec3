"""CSDS guard and bounds over real gRPC, in-process (issue 23, item 13): the answer on the xDS
port is bounded in proxies and bytes, the admin token is needed without mTLS when one is set,
calls are rate-limited over all callers, the scope reaches sibling workers, and a sibling that
does not answer in time fails the call UNAVAILABLE naming it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import json_format

from control_plane.group.client import Workers
from control_plane.group.csds import merged
from control_plane.xds import csds
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import CLUSTER
from control_plane.xds.server import XdsServer
from tests.helpers import async_wait_until
from tests.xds_helpers import two_servers

NODES = (("edge", "edge-1"), ("edge", "edge-2"), ("apps", "apps-1"))


async def serve(*handlers: grpc.GenericRpcHandler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(list(handlers))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def proxies(stack: AsyncExitStack, address: str, nodes: tuple[tuple[str, str], ...]) -> None:
    """ADS streams held open on ``address``, one per (fleet, node id), each synced."""
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
    for fleet, node_id in nodes:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        node = base_pb2.Node(
            id=node_id, cluster=fleet, locality=base_pb2.Locality(region="us-west")
        )
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node))
        assert await asyncio.wait_for(call.read(), timeout=10) is not grpc.aio.EOF
        stack.callback(call.cancel)


def new_xds() -> XdsServer:
    cache = SnapshotCache()
    for fleet in ("edge", "apps"):
        cache.set_snapshot(NodeGroup(cluster=fleet, region="us-west"), two_servers())
    return XdsServer(cache=cache, control_plane_id="cp-test")


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def guarded(
    stack: AsyncExitStack, guard: csds.XdsPortGuard, siblings: Workers | None = None
) -> tuple[XdsServer, grpc.aio.Channel]:
    """An xDS port: the xDS services and CSDS behind ``guard``, with NODES connected."""
    xds = new_xds()
    server, address = await serve(
        *xds.generic_handlers(),
        csds.generic_handler(merged(xds, siblings or Workers([])), guard=guard),
    )
    stack.push_async_callback(server.stop, 0)
    await proxies(stack, address, NODES)
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
    return xds, channel


async def fetch(channel: grpc.aio.Channel, request: Any = None, **kwargs: Any) -> Any:
    return await csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
        request or csds_pb2.ClientStatusRequest(), timeout=15, **kwargs
    )


def node_ids(answer: Any) -> list[str]:
    return sorted(config.node.id for config in answer.config)


def matching(prefix: str) -> csds_pb2.ClientStatusRequest:
    return json_format.ParseDict(
        {"node_matchers": [{"node_id": {"prefix": prefix}}]}, csds_pb2.ClientStatusRequest()
    )


async def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


async def test_an_answer_past_the_proxy_bound_is_refused_and_a_narrower_one_answered(
    stack: AsyncExitStack,
) -> None:
    guard = csds.XdsPortGuard(require_identity=False, max_clients=2, peer_calls_burst=10)
    _, channel = await guarded(stack, guard)
    code, details = await refusal(fetch(channel))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 2 proxies" in details
    assert "node_matchers or exclude_resource_contents" in details
    assert node_ids(await fetch(channel, matching("edge-"))) == ["edge-1", "edge-2"]


async def test_an_answer_past_the_byte_bound_is_refused_and_one_without_contents_answered(
    stack: AsyncExitStack,
) -> None:
    xds = new_xds()
    server, address = await serve(*xds.generic_handlers())
    stack.push_async_callback(server.stop, 0)
    await proxies(stack, address, NODES)
    await async_wait_until(lambda: len(xds.proxies) == 3, what="three proxies")
    bare = csds_pb2.ClientStatusRequest(exclude_resource_contents=True)
    small = csds.status_response(xds, bare).ByteSize()
    full = csds.status_response(xds, csds_pb2.ClientStatusRequest()).ByteSize()
    assert small < full
    guard = csds.XdsPortGuard(
        require_identity=False, max_bytes=(small + full) // 2, peer_calls_burst=10
    )
    server, address = await serve(csds.generic_handler(xds, guard=guard))
    stack.push_async_callback(server.stop, 0)
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
    code, details = await refusal(fetch(channel))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{(small + full) // 2} bytes (CSDS on the xDS port)" in details
    assert len((await fetch(channel, bare)).config) == 3
    # The size it checks first, before building anything, is never more than the answer's:
    # an answer of exactly the bound is answered.
    exact = csds.XdsPortGuard(require_identity=False, max_bytes=full, peer_calls_burst=10)
    server, address = await serve(csds.generic_handler(xds, guard=exact))
    stack.push_async_callback(server.stop, 0)
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
    assert (await fetch(channel)).ByteSize() == full


async def test_without_mtls_the_admin_token_is_needed_when_one_is_set(
    stack: AsyncExitStack,
) -> None:
    guard = csds.XdsPortGuard(require_identity=False, token="s3cret", peer_calls_burst=10)
    _, channel = await guarded(stack, guard)
    for metadata in [(), (("authorization", "Bearer wrong"),)]:
        code, details = await refusal(fetch(channel, metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "needs the admin token" in details
    answer = await fetch(channel, metadata=(("authorization", "Bearer s3cret"),))
    assert node_ids(answer) == ["apps-1", "edge-1", "edge-2"]


async def test_calls_over_all_peers_are_rate_limited(stack: AsyncExitStack) -> None:
    guard = csds.XdsPortGuard(
        require_identity=False, calls_per_second=0.001, calls_burst=2, peer_calls_burst=10
    )
    _, channel = await guarded(stack, guard)
    await fetch(channel)
    await fetch(channel)
    code, details = await refusal(fetch(channel))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "calls a second over all callers" in details


async def test_the_scope_reaches_the_sibling_workers(stack: AsyncExitStack) -> None:
    """What a worker asks its siblings for a call of fleet ``apps`` (under mTLS, the
    certificate's fleet): their ``apps`` proxies only, within the bounds."""
    sibling_xds = new_xds()
    server, address = await serve(
        *sibling_xds.generic_handlers(), csds.generic_handler(sibling_xds)
    )
    stack.push_async_callback(server.stop, 0)
    await proxies(stack, address, NODES)
    siblings = Workers([address])
    stack.push_async_callback(siblings.close)
    request = csds_pb2.ClientStatusRequest()
    everyone = await siblings.client_status(request)
    assert sorted(c.node.id for c in everyone) == ["apps-1", "edge-1", "edge-2"]
    scoped = await siblings.client_status(request, csds.Scope(fleets=frozenset({"apps"})))
    assert [c.node.id for c in scoped] == ["apps-1"]
    with pytest.raises(csds.AnswerTooLarge, match="more than 1 proxies"):
        await siblings.client_status(request, csds.Scope(max_clients=1))


async def test_a_sibling_that_does_not_answer_in_time_fails_the_call_naming_it(
    stack: AsyncExitStack,
) -> None:
    """A hung worker (here a server whose CSDS never answers: a real worker would have to be
    stopped) fails the call UNAVAILABLE naming it, rather than hiding its proxies."""
    never = asyncio.Event()

    async def hang(request: Any, context: Any) -> Any:
        await never.wait()

    hung = grpc.method_handlers_generic_handler(
        "envoy.service.status.v3.ClientStatusDiscoveryService",
        {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                hang,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
            )
        },
    )
    server, hung_address = await serve(hung)
    stack.push_async_callback(server.stop, 0)
    siblings = Workers([hung_address], timeout=0.5)
    stack.push_async_callback(siblings.close)
    guard = csds.XdsPortGuard(require_identity=False, peer_calls_burst=10)
    _, channel = await guarded(stack, guard, siblings)
    code, details = await refusal(fetch(channel))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"worker at {hung_address} did not answer: DEADLINE_EXCEEDED" in details
    never.set()
