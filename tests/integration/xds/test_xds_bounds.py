"""Stream bounds against a real ``routeplane serve`` with a real Envoy routing beside the
attack (issue 23): resource names bounded in bytes, what a closed stream held freed, and one
request bounded at 4 MiB by gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from harness.processes import ControlPlane, Envoy, metric_sum, routeplane
from harness.waiting import wait_until
from tests.helpers import async_wait_until

pytestmark = pytest.mark.envoy
HOST = "echo.local"
TYPES = [ENDPOINT, CLUSTER, ROUTE, LISTENER]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def routed(
    tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> Iterator[tuple[ControlPlane, Envoy]]:
    """One serve process (its memory is the serving process's) and an Envoy routing echo."""
    cp = ControlPlane.create(tmp_path, extra=["--workers", "1"])
    cp.start()
    envoy: Envoy | None = None
    try:
        cp.wait_ready()
        echo = echo_factory("replica-a")
        reg = cp.registry
        routeplane("servers", "create", "echo", "--host", HOST, registry=reg)
        routeplane(
            "replicas", "register", "echo", "--address", echo.address, "--region", "us-west",
            registry=reg,
        )  # fmt: skip
        envoy = Envoy.create(tmp_path, node_id="healthy", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: routes(envoy), what="the healthy Envoy routing echo")
        yield cp, envoy
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()


def routes(envoy: Envoy) -> bool:
    return envoy.get(host=HOST) == (200, "replica-a\n")


def names(stream: int, type_index: int, start: int, count: int, length: int) -> list[str]:
    return [f"{stream}-{type_index}-{n}-".ljust(length, "x") for n in range(start, start + count)]


async def hold_names(stub: Any, stream: int, *, length: int, per_type: int, more: int = 0) -> Any:
    """A delta stream subscribing ``per_type`` names of ``length`` bytes on each of the four
    types, one request a type (under 4 MiB), then ``more`` names on the first type; it stays
    open until cancelled. (The requests are written without waiting: a refused request is
    the last one, or the client would be writing while the server ends the stream.)"""
    call = stub.DeltaAggregatedResources()
    node = base_pb2.Node(id=f"names-{stream}", cluster="edge")
    batches = [(t, type_url, 0, per_type) for t, type_url in enumerate(TYPES)]
    if more:
        batches.append((0, TYPES[0], per_type, more))
    for t, type_url, start, count in batches:
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url,
                node=node,
                resource_names_subscribe=names(stream, t, start, count, length),
            )
        )
    return call


async def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Read until the stream ends: its status."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        while await asyncio.wait_for(call.read(), timeout=30) is not grpc.aio.EOF:
            pass
    return await call.code(), await call.details()


async def test_long_names_and_too_many_name_bytes_are_refused_while_envoy_routes(
    routed: tuple[ControlPlane, Envoy],
) -> None:
    cp, envoy = routed
    refused = metric_sum(cp.admin, "routeplane_xds_streams_refused_total", reason="limits")
    async with grpc.aio.insecure_channel(cp.xds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        # A 1,000-character name, as in the attack: refused.
        long_call = stub.DeltaAggregatedResources()
        await long_call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT,
                node=base_pb2.Node(id="names-0", cluster="edge"),
                resource_names_subscribe=names(0, 0, 0, 2_000, 1_000),
            )
        )
        code, details = await status_of(long_call)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a name of 1000 bytes in resource_names_subscribe for ClusterLoadAssignment" in (
            details
        )
        assert "at most 512 bytes" in details
        # Names of 500 bytes: 2,000 a type hold 4,000,000 bytes, 400 more pass 4 MiB.
        calls = [await hold_names(stub, i, length=500, per_type=2_000, more=400) for i in (1, 2)]
        for call in calls:
            code, details = await status_of(call)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details, cp.log()[-3000:])
            assert "bytes of resource names on one stream" in details
            assert "at most 4194304 bytes over all types" in details
    assert await asyncio.to_thread(routes, envoy)
    assert (
        metric_sum(cp.admin, "routeplane_xds_streams_refused_total", reason="limits") == refused + 3
    )


async def test_what_closed_streams_held_is_freed(routed: tuple[ControlPlane, Envoy]) -> None:
    """Rounds of streams just under the bound (3.84 MB of names each): what a round held is
    freed when it closes, so the next round reuses it and memory does not add up round after
    round (it did: every name set ever subscribed was kept)."""
    cp, envoy = routed
    baseline = rss_mb(cp.pid)
    streams, rounds = 6, 4
    after: list[float] = []
    async with grpc.aio.insecure_channel(cp.xds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        for round_ in range(rounds):
            calls = [
                await hold_names(stub, round_ * streams + i, length=480, per_type=2_000)
                for i in range(streams)
            ]
            # One request a type, and the first response of each type always goes out (empty
            # here): four responses, and every name the stream sent was taken.
            for call in calls:
                for _ in TYPES:
                    response = await asyncio.wait_for(call.read(), timeout=30)
                    assert response is not grpc.aio.EOF
            if round_ == 0:
                grown = rss_mb(cp.pid) - baseline
                assert grown > 20, f"the names should show in memory; it grew {grown:.1f} MB"
            for call in calls:
                call.cancel()
            await async_wait_until(
                lambda: metric_sum(cp.admin, "routeplane_connected_proxies") == 1,
                what="the streams closed",
            )
            after.append(rss_mb(cp.pid) - baseline)
    # Four rounds held 4 x 23 MB of names; kept, memory would grow by a round's worth each.
    assert after[-1] < after[0] + grown / 2, (
        f"memory after each round closed, MB over {baseline:.0f}: {[round(a) for a in after]}"
        f" (a round grew it {grown:.0f} MB)"
    )
    assert await asyncio.to_thread(routes, envoy)


async def test_a_request_over_4_mib_is_refused_by_grpc_and_the_stream_beside_it_served(
    routed: tuple[ControlPlane, Envoy],
) -> None:
    cp, envoy = routed
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(cp.xds, options=options) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

        def request(size: int) -> discovery_pb2.DiscoveryRequest:
            node = base_pb2.Node(id="big", cluster="edge")
            message = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, node=node)
            message.node.id = "x" * (size - message.ByteSize() - 4)  # (its length prefix)
            assert abs(message.ByteSize() - size) < 8
            return message

        over = stub.StreamAggregatedResources()
        await over.write(request((4 << 20) + 64))
        code, details = await status_of(over)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in details
        # Just under the bound, on the same connection: served (the node id shown cut).
        under = stub.StreamAggregatedResources()
        await under.write(request((4 << 20) - 64))
        response = await asyncio.wait_for(under.read(), timeout=30)
        assert response.type_url == CLUSTER
        under.cancel()
    assert await asyncio.to_thread(routes, envoy)
