"""``stream_refused`` is logged at most once a second per reason, over real gRPC streams, while
every refusal is counted (the README's claim). The server's clock is a test clock: "a second"
is moved, not waited for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import ENDPOINT
from control_plane.xds.server import XdsServer
from control_plane.xds.stream import Limits
from tests.xds_helpers import two_servers

NOW = [100.0]


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    cache = SnapshotCache()
    cache.set_snapshot(NodeGroup(cluster="edge", region="us-west"), two_servers())
    xds = XdsServer(
        cache=cache, control_plane_id="cp-test", limits=Limits(max_names=1), clock=lambda: NOW[0]
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(xds.generic_handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(0)


async def refused(channel: grpc.aio.Channel, reason: str) -> None:
    """One stream refused for ``reason`` ("limits": two names past a bound of one; "node": a
    node cluster of 200 characters)."""
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    cluster = "x" * 200 if reason == "node" else "edge"
    node = base_pb2.Node(id="n", cluster=cluster, locality=base_pb2.Locality(region="us-west"))
    await call.write(
        discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, node=node, resource_names=["a", "b"])
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await asyncio.wait_for(call.read(), timeout=10) is not grpc.aio.EOF:
            pass
    expected = {"limits": "RESOURCE_EXHAUSTED", "node": "INVALID_ARGUMENT"}[reason]
    assert (await call.code()).name == expected


def count(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("routeplane_xds_streams_refused_total", {"reason": reason}) or 0
    )


async def test_stream_refused_is_logged_at_most_once_a_second_per_reason(channel: Any) -> None:
    before = {reason: count(reason) for reason in ("limits", "node")}
    with capture_logs() as logs:
        for _ in range(5):
            await refused(channel, "limits")
        NOW[0] += 0.9
        await refused(channel, "limits")
        await refused(channel, "node")  # another reason: logged on its own
        NOW[0] += 0.1  # a second after the first
        await refused(channel, "limits")
        await refused(channel, "node")
    lines = [(e["reason"], e["error"][:40]) for e in logs if e["event"] == "stream_refused"]
    assert lines == [
        ("limits", "2 names subscribed for ClusterLoadAssign"),
        ("node", "node.cluster of 200 characters; at most "),
        ("limits", "2 names subscribed for ClusterLoadAssign"),
    ]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "stream_refused")
    # Every refusal is counted, logged or not.
    assert count("limits") == before["limits"] + 7
    assert count("node") == before["node"] + 2
