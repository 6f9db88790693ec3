"""A reconnect storm past the admission rate: every stream attempt is either served or refused
with RESOURCE_EXHAUSTED and the retry hint, never CANCELLED or INTERNAL.

Thousands of simultaneous calls outrun the server's event loop; gRPC core queues the calls the
application has not picked up yet and, past its own backlog limit, cancels them before routeplane
ever sees them (the CANCELLED/INTERNAL of the 2,000-stream bench storm). The server raises that
limit so every attempt reaches admission control, which answers it.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.registry import open_registry
from harness.processes import ControlPlane, metric_sum

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
# Past gRPC core's default backlog of 1,000 pending calls, as in the bench's 2,000-stream storm:
# one connection per stream, like a fleet of Envoys, at the default admission rate.
STREAMS = 2000


def raise_fd_limit() -> None:
    """Both ends of every stream are sockets here (and the server inherits the limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < STREAMS + 500:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (STREAMS + 500, STREAMS + 500))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (OSError, ValueError):
            reason = f"the file-descriptor hard limit ({hard}) is too low for {STREAMS} streams"
            if os.environ.get("CI"):
                pytest.fail(f"CI runs the storm: {reason}")
            pytest.skip(reason)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _connected(target: str) -> grpc.aio.Channel:
    """One connection per stream, like a fleet of Envoys, made before the storm: the storm is
    then the streams alone, as fast as the server can take them, whatever this machine's speed
    at opening 2,000 connections (which took longer than the admission burst lasts, on a busy
    CI machine: nothing was refused)."""
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    await channel.channel_ready()
    return channel


async def _attempt(index: int, channel: grpc.aio.Channel, outcomes: Counter[str]) -> None:
    """Like Envoy: the first request, then wait for the first response (no writes that could
    race the server's status)."""
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    try:
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(
                node=base_pb2.Node(id=f"storm-{index}", cluster="edge"), type_url=CDS
            )
        )
        response = await call.read()
        outcomes["served" if response is not grpc.aio.EOF else "eof"] += 1
    except grpc.aio.AioRpcError as exc:
        hint = "retry" in (exc.details() or "")
        outcomes[f"{exc.code().name}{'' if hint else ' (no retry hint)'}"] += 1
    finally:
        call.cancel()
        await channel.close()


async def test_a_storm_past_the_admission_rate_is_served_or_refused_with_resource_exhausted(
    tmp_path: Path,
) -> None:
    raise_fd_limit()
    # One process: admission control and gRPC's call backlog are per process, and this is the
    # shape that failed before (with N workers each sees 1/N of the storm).
    cp = ControlPlane.create(tmp_path, extra=["--workers", "1"])
    registry = open_registry(cp.registry)
    for i in range(10):
        registry.put_server(name=f"s{i}", hostnames=[f"s{i}.local"], protocol="http")
        registry.register_replica(
            server=f"s{i}", address=f"127.0.0.1:{20000 + i}", region="us-west"
        )
    registry.close()
    cp.start()
    try:
        await asyncio.to_thread(cp.wait_ready)
        outcomes: Counter[str] = Counter()
        channels = await asyncio.gather(*(_connected(cp.xds) for _ in range(STREAMS)))
        await asyncio.gather(*(_attempt(i, c, outcomes) for i, c in enumerate(channels)))
        assert set(outcomes) <= {"served", "RESOURCE_EXHAUSTED"}, outcomes
        assert outcomes["served"] >= 500
        assert outcomes["RESOURCE_EXHAUSTED"] >= 1
        # Each refusal was admission control's, counted once by its reason.
        counted = await asyncio.to_thread(
            metric_sum, cp.admin, "routeplane_xds_streams_refused_total", reason="rate"
        )
        assert counted == outcomes["RESOURCE_EXHAUSTED"]
    finally:
        cp.stop()
