"""The LRS service over real gRPC streams: what it asks for, and hostile reporters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
from prometheus_client import REGISTRY

from control_plane.load import intake as intake_module
from control_plane.load.intake import MAX_CLUSTER_STATS
from control_plane.load.server import LoadService
from harness.models import endpoint, server, table
from tests.helpers import async_wait_until

TIMEOUT = 5
TABLE = table(server("echo", endpoint("r1", 8081)))
NOW = [1000.0]  # the service's clock: moved by hand, so a report's rate gate is known


@pytest.fixture
async def lrs() -> AsyncIterator[tuple[LoadService, lrs_pb2_grpc.LoadReportingServiceStub]]:
    service = LoadService(table=lambda: TABLE, interval=1.0, clock=lambda: NOW[0])
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers([service.generic_handler()])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield service, lrs_pb2_grpc.LoadReportingServiceStub(channel)
    await channel.close()
    await grpc_server.stop(0)


def report(node: str = "", in_flight: int = 1, clusters: int = 1) -> lrs_pb2.LoadStatsRequest:
    request = lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=node) if node else None)
    for _ in range(clusters):
        stats = request.cluster_stats.add(cluster_name="default_echo")
        stats.load_report_interval.FromSeconds(1)
        stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region="us-west"), total_requests_in_progress=in_flight
        )
    return request


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value("routeplane_load_reports_rejected_total", {"reason": reason})
    return value or 0.0


async def test_the_first_answer_asks_for_every_cluster_at_the_interval(
    lrs: tuple[LoadService, Any],
) -> None:
    service, stub = lrs
    call = stub.StreamLoadStats()
    await call.write(report("edge-1", in_flight=3))
    answer = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    assert answer.send_all_clusters
    # Nothing reads echo's replicas (no autoscaling, utilization balancing or revisions):
    # no endpoint entries asked for.
    assert not answer.report_endpoint_granularity
    assert answer.load_reporting_interval.ToNanoseconds() == 1_000_000_000
    await async_wait_until(lambda: service.book.proxies == 1)
    service.tick()
    [total] = [r for r in service.rows if r.region == "*"]
    assert total.in_flight == 3
    call.cancel()
    await async_wait_until(lambda: service.book.proxies == 0)  # its stream ended: it stops counting


async def test_a_first_request_without_a_node_ends_that_stream_only(
    lrs: tuple[LoadService, Any],
) -> None:
    service, stub = lrs
    good = stub.StreamLoadStats()
    await good.write(report("edge-1", in_flight=2))
    await asyncio.wait_for(good.read(), timeout=TIMEOUT)
    bad = stub.StreamLoadStats()
    await bad.write(report(""))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(bad.read(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node id" in (info.value.details() or "")
    await async_wait_until(lambda: service.book.proxies == 1)
    good.cancel()


async def test_an_on_time_report_after_a_late_one_is_taken(
    lrs: tuple[LoadService, Any],
) -> None:
    """A report that came late (the loop was busy) and the on-time one after it land closer
    than half an interval: the second is taken (its counts would be lost), a third is not."""
    service, stub = lrs

    def in_flight() -> float:
        service.tick()
        return next(r.in_flight for r in service.rows if r.region == "*")

    before = rejected("rate")
    call = stub.StreamLoadStats()
    await call.write(report("edge-late", in_flight=1))
    await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    await async_wait_until(lambda: in_flight() == 1)
    NOW[0] += 1.8  # late by 0.8 of an interval
    await call.write(report(in_flight=2))
    await async_wait_until(lambda: in_flight() == 2)
    NOW[0] += 0.2  # on time: 2.0 after the first
    await call.write(report(in_flight=3))
    await async_wait_until(lambda: in_flight() == 3)
    NOW[0] += 0.1  # a third within the interval: dropped
    await call.write(report(in_flight=4))
    await async_wait_until(lambda: rejected("rate") == before + 1)
    assert in_flight() == 3
    call.cancel()


async def test_reports_far_more_often_than_asked_are_dropped(
    lrs: tuple[LoadService, Any],
) -> None:
    service, stub = lrs
    before = rejected("rate")
    call = stub.StreamLoadStats()
    await call.write(report("edge-1", in_flight=1))
    await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    for _ in range(50):
        await call.write(report(in_flight=9))
    await async_wait_until(lambda: rejected("rate") >= before + 50)
    service.tick()
    [total] = [r for r in service.rows if r.region == "*"]
    assert total.in_flight == 1  # the flood did not replace the report in force
    call.cancel()


@pytest.mark.parametrize("first", [True, False], ids=["the first report", "a later report"])
async def test_a_report_of_too_many_clusters_ends_the_stream_and_counts_nothing(
    lrs: tuple[LoadService, Any], first: bool
) -> None:
    service, stub = lrs
    call = stub.StreamLoadStats()
    if not first:
        await call.write(report("edge-1"))
        await asyncio.wait_for(call.read(), timeout=TIMEOUT)
        await async_wait_until(lambda: service.book.proxies == 1)
        NOW[0] += 1.0  # one interval later: not dropped for its rate
    await call.write(report("edge-1", in_flight=7, clusters=MAX_CLUSTER_STATS + 1))
    if first:
        await asyncio.wait_for(call.read(), timeout=TIMEOUT)  # the answer comes first
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(MAX_CLUSTER_STATS) in (info.value.details() or "")
    await async_wait_until(lambda: service.book.proxies == 0)


async def test_streams_past_the_cap_are_refused_and_an_ended_one_frees_its_place(
    lrs: tuple[LoadService, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake_module, "MAX_LOAD_STREAMS", 2)
    service, stub = lrs
    calls = [stub.StreamLoadStats() for _ in range(2)]
    for i, call in enumerate(calls):
        await call.write(report(f"edge-{i}"))
        await asyncio.wait_for(call.read(), timeout=TIMEOUT)
    extra = stub.StreamLoadStats()
    await extra.write(report("edge-9"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(extra.read(), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 load-report streams" in (info.value.details() or "")
    calls[0].cancel()
    await async_wait_until(lambda: service.book.proxies == 1)
    again = stub.StreamLoadStats()
    await again.write(report("edge-9"))
    assert (await asyncio.wait_for(again.read(), timeout=TIMEOUT)).send_all_clusters
    again.cancel()
    calls[1].cancel()


async def test_a_stream_is_asked_again_for_endpoint_entries_when_a_server_reads_replicas() -> None:
    # Issue 29: endpoint entries are asked for only while some server's replicas are read;
    # when that changes, each stream is asked again after its next report.
    plain = table(server("echo", endpoint("r1", 8081)))
    revised = table(server("echo", replace(endpoint("r1", 8081), revision="v1")), revision=2)
    current = [plain]
    clock = [1000.0]
    service = LoadService(table=lambda: current[0], interval=1.0, clock=lambda: clock[0])
    grpc_server = grpc.aio.server()
    grpc_server.add_generic_rpc_handlers([service.generic_handler()])
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = lrs_pb2_grpc.LoadReportingServiceStub(channel).StreamLoadStats()
            await call.write(report("edge-1", in_flight=1))
            first = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
            assert not first.report_endpoint_granularity
            current[0] = revised  # echo's replicas now carry revisions: read per replica
            clock[0] += 1.0
            await call.write(report("edge-1", in_flight=2))
            again = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
            assert again.report_endpoint_granularity
            assert again.send_all_clusters
            current[0] = plain
            clock[0] += 1.0
            await call.write(report("edge-1", in_flight=2))
            back = await asyncio.wait_for(call.read(), timeout=TIMEOUT)
            assert not back.report_endpoint_granularity
            call.cancel()
    finally:
        await grpc_server.stop(0)
