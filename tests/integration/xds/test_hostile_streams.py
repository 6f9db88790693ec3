"""Hostile xDS clients over real gRPC streams (issue 12, findings 3, 4 and the protocol
corners): every bound bites with RESOURCE_EXHAUSTED and a clear message, floods are counted
once, and a healthy proxy beside them keeps getting its config."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import REGISTRY

from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from control_plane.xds.server import XdsServer
from control_plane.xds.stream import EMPTY_VERSION, Limits
from tests.helpers import async_wait_until
from tests.xds_helpers import two_servers

GROUP = NodeGroup(cluster="edge", region="us-west")
TIMEOUT = 5


def node(cluster: str = "edge", node_id: str = "proxy-1") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=cluster, locality=base_pb2.Locality(region="us-west"))


@pytest.fixture
async def server() -> AsyncIterator[tuple[XdsServer, grpc.aio.Channel]]:
    cache = SnapshotCache(max_groups=3, max_groups_per_fleet=2)
    cache.set_snapshot(GROUP, two_servers())
    xds = XdsServer(cache=cache, control_plane_id="cp-test", limits=Limits(max_names=100))
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers(xds.generic_handlers())
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield xds, channel
    await channel.close()
    await grpc_server.stop(0)


def ads(channel: grpc.aio.Channel) -> ads_pb2_grpc.AggregatedDiscoveryServiceStub:
    return ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)


async def healthy_proxy_gets_cds(channel: grpc.aio.Channel) -> None:
    call = ads(channel).StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node()))
    response = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    assert {a.type_url for a in response.resources} == {CLUSTER}
    assert len(response.resources) == 2
    call.cancel()


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read until the stream ends; its status (a clean end is a failure here)."""
    try:
        while True:
            message = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
            assert message is not grpc.aio.EOF, "the stream ended without a status"
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


def sample(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.parametrize(
    ("groups", "extra", "reason"),
    [
        pytest.param(
            [("edge", "us-west"), ("fleet-a", "us-west"), ("fleet-b", "us-west")],
            ("fleet-c", "us-west"),
            "(serve --max-node-groups 3)",
            id="in-all",
        ),
        pytest.param(
            [("edge", "us-west"), ("edge", "us-east")],
            ("edge", "eu-north"),
            "already in fleet 'edge' (serve --max-groups-per-fleet 2)",
            id="per-fleet",
        ),
    ],
)
async def test_new_node_groups_past_the_cap_are_refused_and_known_ones_still_served(
    server: tuple[XdsServer, grpc.aio.Channel],
    groups: list[tuple[str, str]],
    extra: tuple[str, str],
    reason: str,
) -> None:
    xds, channel = server
    before = sample("routeplane_xds_streams_refused_total", {"reason": "groups"})
    held = []
    for cluster, region in groups:
        call = ads(channel).StreamAggregatedResources()
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node(cluster))
        request.node.locality.region = region
        await call.write(request)
        held.append(call)
    await async_wait_until(lambda: len(xds.proxies) == len(groups), what="streams held")
    refused = ads(channel).StreamAggregatedResources()
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node(extra[0]))
    request.node.locality.region = extra[1]
    await refused.write(request)
    code, details = await status_of(refused)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason in details
    assert sample("routeplane_xds_streams_refused_total", {"reason": "groups"}) == before + 1
    await healthy_proxy_gets_cds(channel)  # a group already wanted is always served
    for call in held:
        call.cancel()


async def test_a_node_field_past_its_bound_is_refused_by_name(
    server: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    _, channel = server
    call = ads(channel).StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node("x" * 100_000)))
    code, details = await status_of(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "node.cluster of 100000 characters; at most 128"


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("127.0.0.1:notaport", "port 'notaport' is not a number"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        (":10000", "no host"),
    ],
    ids=["not-a-number", "out-of-range", "no-host"],
)
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_a_listen_address_that_is_no_address_is_refused_at_the_stream_start(
    server: tuple[XdsServer, grpc.aio.Channel], listen: str, problem: str, delta: bool
) -> None:
    xds, channel = server
    bad = node()
    bad.metadata.fields["routeplane.listen"].string_value = listen
    before = sample("routeplane_xds_streams_refused_total", {"reason": "node"})
    if delta:
        call = ads(channel).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=bad))
    else:
        call = ads(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=bad))
    code, details = await status_of(call)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"node metadata routeplane.listen {listen!r}: {problem}"
    assert sample("routeplane_xds_streams_refused_total", {"reason": "node"}) == before + 1
    # Never a group: nothing is watched or built for it, and the healthy proxy is served.
    assert [group.key for group in xds.cache.groups()] == [GROUP.key]
    await healthy_proxy_gets_cds(channel)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_too_many_subscribed_names_end_that_stream_only(
    server: tuple[XdsServer, grpc.aio.Channel], delta: bool
) -> None:
    _, channel = server
    names = [f"junk-{i}" for i in range(101)]
    if delta:
        call = ads(channel).DeltaAggregatedResources()
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT, node=node(), resource_names_subscribe=names
            )
        )
    else:
        call = ads(channel).StreamAggregatedResources()
        await call.write(
            discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, node=node(), resource_names=names)
        )
    code, details = await status_of(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "101 names subscribed for ClusterLoadAssignment; at most 100" in details
    await healthy_proxy_gets_cds(channel)


async def test_too_many_initial_resource_versions_end_the_stream(
    server: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    _, channel = server
    call = ads(channel).DeltaAggregatedResources()
    await call.write(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=CLUSTER,
            node=node(),
            initial_resource_versions={f"junk-{i}": "v" for i in range(500)},
        )
    )
    code, details = await status_of(call)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "500 initial versions" in details


async def test_a_repeated_nack_is_counted_once_and_its_text_is_truncated(
    server: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    xds, channel = server
    before = sample("routeplane_xds_nacks_total", {"type": "cds"})
    call = ads(channel).StreamAggregatedResources()
    await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node()))
    response = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    nack = discovery_pb2.DiscoveryRequest(
        type_url=CLUSTER,
        response_nonce=response.nonce,
        error_detail=status_pb2.Status(code=3, message="x" * 3_000_000),
    )
    for _ in range(200):
        await call.write(nack)
    # Requests are handled in order: once the LDS answer arrives, all 200 NACKs were handled.
    await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
    while (await asyncio.wait_for(call.read(), timeout=TIMEOUT)).type_url != LISTENER:
        pass
    [proxy] = xds.proxies.values()
    status = proxy.protocol.status[CLUSTER]
    assert status.nacks == 1
    assert sample("routeplane_xds_nacks_total", {"type": "cds"}) == before + 1
    assert status.last_nack is not None
    assert len(status.last_nack.message) < 1100
    assert status.last_nack.message.endswith("(2998976 more characters)")
    call.cancel()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_an_unknown_type_gets_an_empty_answer_not_silence(
    server: tuple[XdsServer, grpc.aio.Channel], delta: bool
) -> None:
    _, channel = server
    unknown = "type.googleapis.com/envoy.config.nope.v3.Nope"
    if delta:
        call = ads(channel).DeltaAggregatedResources()
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=unknown, node=node()))
    else:
        call = ads(channel).StreamAggregatedResources()
        await call.write(discovery_pb2.DiscoveryRequest(type_url=unknown, node=node()))
    response = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    assert response.type_url == unknown
    assert list(response.resources) == []
    assert (response.system_version_info if delta else response.version_info) == EMPTY_VERSION
    call.cancel()


async def test_a_first_request_with_a_foreign_nonce_is_an_initial_request(
    server: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    _, channel = server
    call = ads(channel).StreamAggregatedResources()
    await call.write(
        discovery_pb2.DiscoveryRequest(
            type_url=CLUSTER, node=node(), response_nonce="issued-by-another-replica"
        )
    )
    response = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    assert len(response.resources) == 2
    call.cancel()


def live_abort_errors() -> int:
    return sum(1 for o in gc.get_objects() if type(o).__name__ == "AbortError")


async def test_a_refused_stream_leaves_no_exception_cycle_behind() -> None:
    # A reconnect storm refuses thousands of streams (issue 17): ``context.abort`` left each
    # one's exception, the handler's frames and the call in a reference cycle, kept until a
    # full collection, which a serving process runs rarely. Only reference counting runs here.
    cache = SnapshotCache()
    cache.set_snapshot(GROUP, two_servers())
    xds = XdsServer(cache=cache, control_plane_id="cp-test", new_streams_per_second=1e-9)
    xds._admission.take()  # its one token: every new stream is refused
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers(xds.generic_handlers())
    target = f"127.0.0.1:{grpc_server.add_insecure_port('127.0.0.1:0')}"
    await grpc_server.start()
    gc.collect()
    gc.disable()
    try:
        baseline = live_abort_errors()
        for _ in range(10):
            async with grpc.aio.insecure_channel(target) as own:
                call = ads(own).DeltaAggregatedResources()
                await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, node=node()))
                code, details = await status_of(call)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert "retry" in details
        assert live_abort_errors() == baseline
    finally:
        gc.enable()
        await grpc_server.stop(0)
