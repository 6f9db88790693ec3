"""The xDS server over real gRPC streams, driven by a raw client that asserts every response.

Nothing here sleeps to prove a negative: to show that something was *not* sent, the test makes
the server send something else and checks that it is the very next message on the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from google.rpc import status_pb2
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from control_plane.xds.server import XdsServer
from harness.models import endpoint, server
from tests.helpers import async_wait_until
from tests.xds_helpers import snapshot, two_servers

GROUP = NodeGroup(cluster="edge", region="us-west")
NODE = base_pb2.Node(id="proxy-1", cluster="edge", locality=base_pb2.Locality(region="us-west"))
TIMEOUT = 5


@dataclass
class Harness:
    cache: SnapshotCache
    xds: XdsServer
    channel: grpc.aio.Channel

    @property
    def ads(self) -> ads_pb2_grpc.AggregatedDiscoveryServiceStub:
        return ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    cache = SnapshotCache()
    cache.set_snapshot(GROUP, two_servers())
    xds = XdsServer(cache=cache, control_plane_id="cp-test")
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers(xds.generic_handlers())
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield Harness(cache=cache, xds=xds, channel=channel)
    await channel.close()
    await grpc_server.stop(0)


def req(
    type_url: str,
    *,
    names: tuple[str, ...] = (),
    nonce: str = "",
    version: str = "",
    error: str | None = None,
    node: bool = False,
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    if node:
        request.node.CopyFrom(NODE)
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def dreq(
    type_url: str,
    *,
    subscribe: tuple[str, ...] = (),
    nonce: str = "",
    initial: dict[str, str] | None = None,
    error: str | None = None,
    node: bool = False,
) -> discovery_pb2.DeltaDiscoveryRequest:
    request = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    if node:
        request.node.CopyFrom(NODE)
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


class Client:
    """A raw stream that checks protocol invariants on every response it reads."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.nonces: set[str] = set()

    async def send(self, request: Any) -> None:
        await self.call.write(request)

    async def recv(self) -> Any:

        response = await asyncio.wait_for(self.call.read(), timeout=TIMEOUT)
        assert response is not grpc.aio.EOF, "stream ended"
        assert response.nonce, "every response carries a nonce"
        assert response.nonce not in self.nonces, "nonces must be fresh"
        self.nonces.add(response.nonce)
        assert response.type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE)
        assert response.control_plane.identifier == "cp-test"
        return response


def names_of(response: Any) -> list[str]:
    return (
        sorted(r.name for r in response.resources)
        if hasattr(response, "system_version_info")
        else sorted(_any_name(a) for a in response.resources)
    )


def _ports(response: Any) -> list[int]:
    from envoy.config.endpoint.v3 import endpoint_pb2

    return [
        lb.endpoint.address.socket_address.port_value
        for any_msg in response.resources
        for locality in endpoint_pb2.ClusterLoadAssignment.FromString(any_msg.value).endpoints
        for lb in locality.lb_endpoints
    ]


def _any_name(any_msg: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.endpoint.v3 import endpoint_pb2

    if any_msg.type_url == CLUSTER:
        return str(cluster_pb2.Cluster.FromString(any_msg.value).name)
    return str(endpoint_pb2.ClusterLoadAssignment.FromString(any_msg.value).cluster_name)


async def test_sotw_ack_is_recorded_per_proxy_and_type(harness: Harness) -> None:
    client = Client(harness.ads.StreamAggregatedResources())
    await client.send(req(CLUSTER, node=True))
    cds = await client.recv()
    assert cds.version_info == harness.cache.get(GROUP).versions[CLUSTER]  # type: ignore[union-attr]
    assert names_of(cds) == ["default_api", "default_echo"]
    await client.send(req(CLUSTER, nonce=cds.nonce, version=cds.version_info))
    [proxy] = await async_wait_until(lambda: list(harness.xds.proxies.values()))
    await async_wait_until(lambda: proxy.protocol.status[CLUSTER].state == "SYNCED")
    assert proxy.node_id == "proxy-1"
    assert proxy.group == GROUP
    assert proxy.protocol.status[CLUSTER].acked_version == cds.version_info


async def test_sotw_nack_is_recorded_and_not_resent(harness: Harness) -> None:
    client = Client(harness.ads.StreamAggregatedResources())
    await client.send(req(CLUSTER, node=True))
    cds = await client.recv()
    await client.send(req(CLUSTER, nonce=cds.nonce, error="cluster rejected: bad"))
    # Make the server push something else: if CDS were re-sent it would come first.
    await client.send(req(LISTENER))
    assert (await client.recv()).type_url == LISTENER
    [proxy] = list(harness.xds.proxies.values())
    status = proxy.protocol.status[CLUSTER]
    assert status.state == "NACKED"
    assert status.last_nack is not None
    assert status.last_nack.message == "cluster rejected: bad"
    # New content is sent again.
    harness.cache.set_snapshot(
        GROUP, snapshot(server("echo", endpoint("r1", 8081), protocol="grpc"))
    )
    assert (await client.recv()).type_url == CLUSTER


async def test_sotw_stale_nonce_requests_are_ignored(harness: Harness) -> None:
    client = Client(harness.ads.StreamAggregatedResources())
    await client.send(req(ENDPOINT, names=("default_echo",), node=True))
    eds = await client.recv()
    assert names_of(eds) == ["default_echo"]
    # A subscription change carrying a nonce the server never sent is ignored ...
    await client.send(req(ENDPOINT, names=("default_echo", "default_api"), nonce="bogus"))
    await client.send(req(LISTENER))
    assert (await client.recv()).type_url == LISTENER
    # ... while the same change with the current nonce is honoured.
    await client.send(
        req(
            ENDPOINT,
            names=("default_echo", "default_api"),
            nonce=eds.nonce,
            version=eds.version_info,
        )
    )
    added = await client.recv()
    assert added.type_url == ENDPOINT
    assert names_of(added) == ["default_api"]


async def test_sotw_pushes_coalesce_to_the_latest_snapshot(harness: Harness) -> None:
    client = Client(harness.ads.StreamAggregatedResources())
    await client.send(req(ENDPOINT, names=("default_echo",), node=True))
    eds = await client.recv()
    await client.send(
        req(ENDPOINT, names=("default_echo",), nonce=eds.nonce, version=eds.version_info)
    )
    for port in range(9000, 9010):  # ten snapshots before the stream gets to run
        harness.cache.set_snapshot(GROUP, two_servers(echo_port=port))
    latest = await client.recv()
    assert _ports(latest) == [9009]
    await client.send(req(LISTENER))
    assert (await client.recv()).type_url == LISTENER


async def test_ads_pushes_in_order_cds_eds_lds_rds(harness: Harness) -> None:
    harness.cache.set_snapshot(GROUP, snapshot())
    client = Client(harness.ads.StreamAggregatedResources())
    for type_url in (CLUSTER, LISTENER, ROUTE):
        await client.send(
            req(
                type_url,
                names=("ingress_http",) if type_url == ROUTE else (),
                node=type_url == CLUSTER,
            )
        )
    await client.send(req(ENDPOINT, names=("default_echo",)))
    seen = [(await client.recv()).type_url for _ in range(3)]
    assert seen == [CLUSTER, LISTENER, ROUTE]
    harness.cache.set_snapshot(GROUP, two_servers())
    seen = [(await client.recv()).type_url for _ in range(3)]
    assert seen == [CLUSTER, ENDPOINT, ROUTE]


async def test_delta_reconnect_resends_only_what_differs(harness: Harness) -> None:
    first = Client(harness.ads.DeltaAggregatedResources())
    await first.send(dreq(CLUSTER, node=True))
    cds = await first.recv()
    versions = {r.name: r.version for r in cds.resources}
    first.call.cancel()
    # The api server changes while the proxy is away.
    harness.cache.set_snapshot(
        GROUP, snapshot(server("echo", endpoint("r1", 8081)), server("api", protocol="grpc"))
    )
    second = Client(harness.ads.DeltaAggregatedResources())
    await second.send(dreq(CLUSTER, node=True, initial=versions | {"default_gone": "v0"}))
    update = await second.recv()
    assert [r.name for r in update.resources] == ["default_api"]
    assert list(update.removed_resources) == ["default_gone"]


async def test_delta_nack_is_parked_and_acks_are_recorded(harness: Harness) -> None:
    client = Client(harness.ads.DeltaAggregatedResources())
    await client.send(dreq(CLUSTER, node=True))
    cds = await client.recv()
    await client.send(dreq(CLUSTER, nonce=cds.nonce))
    await client.send(dreq(ENDPOINT, subscribe=("default_echo",)))
    eds = await client.recv()
    await client.send(dreq(ENDPOINT, nonce=eds.nonce, error="endpoint rejected"))
    await client.send(dreq(LISTENER))
    assert (await client.recv()).type_url == LISTENER
    [proxy] = list(harness.xds.proxies.values())
    assert proxy.protocol.status[ENDPOINT].state == "NACKED"
    harness.cache.set_snapshot(GROUP, two_servers(echo_port=9999))
    retry = await client.recv()
    assert retry.type_url == ENDPOINT
    assert [r.name for r in retry.resources] == ["default_echo"]
    await client.send(dreq(ENDPOINT, nonce=retry.nonce))
    await async_wait_until(lambda: proxy.protocol.status[ENDPOINT].state == "SYNCED")


async def test_per_type_services_serve_their_type(harness: Harness) -> None:
    cds = Client(cds_pb2_grpc.ClusterDiscoveryServiceStub(harness.channel).StreamClusters())
    await cds.send(req("", node=True))
    response = await cds.recv()
    assert response.type_url == CLUSTER
    assert names_of(response) == ["default_api", "default_echo"]
    eds = Client(eds_pb2_grpc.EndpointDiscoveryServiceStub(harness.channel).DeltaEndpoints())
    await eds.send(dreq(ENDPOINT, subscribe=("default_api",), node=True))
    response = await eds.recv()
    assert [r.name for r in response.resources] == ["default_api"]


async def test_a_per_type_service_refuses_another_type(harness: Harness) -> None:
    call = cds_pb2_grpc.ClusterDiscoveryServiceStub(harness.channel).StreamClusters()
    await call.write(req(LISTENER, node=True))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not served by this service" in (info.value.details() or "")


async def test_a_closed_stream_is_forgotten(harness: Harness) -> None:
    client = Client(harness.ads.StreamAggregatedResources())
    await client.send(req(CLUSTER, node=True))
    await client.recv()
    assert len(harness.xds.proxies) == 1
    await client.call.done_writing()
    await async_wait_until(lambda: not harness.xds.proxies, what="stream cleanup")
    assert harness.cache.watcher_count(GROUP) == 0


# A tiny receive window: a silent stream's writes stall almost at once.
SILENT = [
    ("grpc.http2.lookahead_bytes", 1024),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.max_receive_message_length", -1),
]


async def _stalling_server(
    *, max_concurrent_pushes: int, write_timeout: float = 1.0
) -> tuple[XdsServer, Any, int]:
    """A started server whose snapshot (40 servers x 50 endpoints) is larger than a silent
    stream's window, with a ``write_timeout`` (1 s unless told)."""
    from control_plane.translate import ProxyView, to_resources
    from control_plane.xds.snapshot import build_snapshot
    from harness.models import table

    cache = SnapshotCache()
    big = [
        server(f"s{i}", *(endpoint(f"r{i}-{j}", 10_000 + j) for j in range(50))) for i in range(40)
    ]
    view = ProxyView(region="us-west", listen_host="127.0.0.1", listen_port=10000)
    cache.set_snapshot(GROUP, build_snapshot(to_resources(table(*big), view)))
    xds = XdsServer(
        cache=cache,
        control_plane_id="cp-test",
        write_timeout=write_timeout,
        max_concurrent_pushes=max_concurrent_pushes,
    )
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers(xds.generic_handlers())
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    return xds, grpc_server, port


async def test_a_stream_that_never_reads_is_dropped_and_does_not_block_others() -> None:
    """Two push slots: while one proxy's push is stalled in one, a proxy that reads is served
    in the other, and the stalled stream is cut only afterwards, at its write timeout."""
    xds, grpc_server, port = await _stalling_server(max_concurrent_pushes=2, write_timeout=5.0)
    options = SILENT
    silent_channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    def silent_served() -> bool:
        return any(p.node_id == "proxy-1" and p.delta for p in xds.proxies.values())

    try:
        stalled_before = (
            REGISTRY.get_sample_value("routeplane_xds_streams_refused_total", {"reason": "stalled"})
            or 0.0
        )
        silent = ads_pb2_grpc.AggregatedDiscoveryServiceStub(silent_channel)
        with capture_logs() as logs:
            call = silent.DeltaAggregatedResources()
            await call.write(dreq(CLUSTER, node=True))
            await call.write(dreq(ENDPOINT, subscribe=tuple(f"default_s{i}" for i in range(40))))
            await async_wait_until(silent_served, what="the silent stream to be served")
            # The initial endpoint push (40 x 50 endpoints) is already larger than its window:
            # it is stuck in its write, holding a push slot.
            await async_wait_until(lambda: bool(xds._writes), what="the silent stream's push")
            # Meanwhile, another proxy is served in the other slot.
            client = Client(
                ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            )
            await client.send(req(LISTENER, node=True))
            assert (await client.recv()).type_url == LISTENER
            # ... while the stall is still on: not yet cut, its push still writing.
            assert silent_served(), "the stall was cut before the reader was served"
            assert xds._writes, "the stalled push ended before the reader was served"
            assert not [e for e in logs if e["event"] == "stream_stalled"]
            await async_wait_until(
                lambda: not silent_served(), timeout=20, what="the stalled stream to be dropped"
            )
            # Judged on the server's side: the DEADLINE_EXCEEDED status it ends the stream with
            # queues behind the data the proxy never read (HTTP/2 trailers follow DATA frames), so
            # a proxy that never reads never sees it; the count and the log line are what show.
            [stalled] = [e for e in logs if e["event"] == "stream_stalled"]
            assert stalled["write_timeout"] == 5.0
            stalled_after = REGISTRY.get_sample_value(
                "routeplane_xds_streams_refused_total", {"reason": "stalled"}
            )
            assert stalled_after == stalled_before + 1
        # After, too: the reading proxy's stream still answers.
        await client.send(req(CLUSTER))
        assert (await client.recv()).type_url == CLUSTER
    finally:
        await silent_channel.close()
        await channel.close()
        await grpc_server.stop(0)


async def test_stalls_that_begin_at_different_times_are_each_cut_by_the_one_watchdog() -> None:
    """One watchdog serves every push in flight: the first stalled push's check finds the second
    (begun later) not yet past the limit and looks again when it is; both streams are cut,
    each counted and logged once, and nothing is left for the watchdog. (A reader served while
    a stall is on: the test above.)"""
    xds, grpc_server, port = await _stalling_server(max_concurrent_pushes=4)
    options = SILENT
    # Separate channels: each silent stream has its own connection and window.
    silent_channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(2)
    ]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    def silent_streams() -> set[int]:
        return {p.stream_id for p in xds.proxies.values() if p.node_id == "proxy-1" and p.delta}

    try:
        stalled_before = (
            REGISTRY.get_sample_value("routeplane_xds_streams_refused_total", {"reason": "stalled"})
            or 0.0
        )
        with capture_logs() as logs:
            calls = []
            for silent_channel in silent_channels:
                call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(
                    silent_channel
                ).DeltaAggregatedResources()
                await call.write(dreq(CLUSTER, node=True))
                await call.write(
                    dreq(ENDPOINT, subscribe=tuple(f"default_s{i}" for i in range(40)))
                )
                calls.append(call)
                # The next one begins its push after this one has begun its own.
                served = len(calls)
                await async_wait_until(
                    lambda: len(silent_streams()) == served,  # noqa: B023 (awaited here)
                    what="the silent stream to be served",
                )
            await async_wait_until(
                lambda: not silent_streams(), timeout=15, what="both stalled streams to be dropped"
            )
            stalled = [e for e in logs if e["event"] == "stream_stalled"]
            assert len(stalled) == 2
            assert all(e["write_timeout"] == 1.0 for e in stalled)
            stalled_after = REGISTRY.get_sample_value(
                "routeplane_xds_streams_refused_total", {"reason": "stalled"}
            )
            assert stalled_after == stalled_before + 2
        # Nothing left for the watchdog.
        assert not xds._writes
        assert not xds._stalled
        client = Client(
            ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        )
        await client.send(req(LISTENER, node=True))
        assert (await client.recv()).type_url == LISTENER
    finally:
        for silent_channel in silent_channels:
            await silent_channel.close()
        await channel.close()
        await grpc_server.stop(0)
