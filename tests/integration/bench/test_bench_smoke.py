"""The benchmark harness at tiny sizes, so it cannot rot (figures are not asserted), and the
errors the benchmarks count (a benchmark that cannot see an error reports a clean run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from bench.dataplane import ws_round_trips
from bench.fleet import CDS, EDS, LDS, RDS, Fleet, delta_client
from bench.run import SMOKE, run_plan
from bench.tables import table
from harness.waiting import free_port

pytestmark = pytest.mark.envoy


def test_every_benchmark_runs_and_renders(tmp_path: Path) -> None:
    result = run_plan(SMOKE, tmp_path)
    rendered = table(result)
    assert [row["ads"] for row in result["propagation"]] == ["delta", "sotw"]
    assert result["proxyless"]["tries"] == SMOKE.propagation_tries
    assert "Proxyless gRPC" in rendered
    assert result["keda"]["tries"] == SMOKE.keda_tries
    assert "across_replicas" in result["keda"]
    assert "across replicas (B's Envoy)" in rendered
    assert "KEDA external-push" in rendered
    assert result["traffic"]["split"]["n"] == SMOKE.traffic_tries
    assert "A traffic split change against ordinary propagation" in rendered
    orca = result["orca"]
    assert [shape["shape"] for shape in orca["shapes"]] == ["skewed", "mixed"]
    for shape in orca["shapes"]:
        assert all(row["n"] > 0 and row["errors"] == 0 for row in shape["policies"].values())
        # Envoy read the replicas' endpoint-load-metrics: its weights are theirs (rps / work,
        # in the hundreds and more), not the 1 every host starts with.
        [weights] = shape["utilization_weights"]
        assert len(weights) == 4
        assert max(weights.values()) > 1
    assert "Balancing by reported load (ORCA)" in rendered
    assert result["rollout"]["rollback_to_last_bad"]["n"] == SMOKE.rollout_tries
    assert result["rollout"]["failed_requests"] == 0
    assert "`routeplane servers rollback` started -> the last request" in rendered
    sizes = result["propagation_by_size"]
    assert [row["replicas"] for row in sizes] == list(SMOKE.propagation_sizes)
    assert all(row["routeplane"]["tries"] == SMOKE.propagation_size_tries for row in sizes)
    assert "Propagation at every size" in rendered
    [change] = result["change_cost"]["rows"]
    assert (change["replicas"], change["workers"], change["changes"]) == (20, 1, 4)
    assert change["cpu_ms_per_change"] >= 0
    assert "A change costs the change, in the whole process" in rendered
    # Under 200 samples there is no p99, the tables say "max of N", and no ratio of maxima.
    api = result["propagation"][0]["api"]
    assert api["n"] == SMOKE.propagation_tries
    assert api["p99_ms"] is None
    assert f"max of {SMOKE.propagation_tries}" in rendered
    assert "None" not in rendered
    assert "fanout_p99" not in result["fleet"][0]["vs_floor"]
    [fleet_load] = result["fleet_load"]
    assert [step["step_visible_ms"]["n"] for step in fleet_load["load_step"]] == [2]
    assert "Fleet-wide load through the registry" in rendered
    beats = result["heartbeats"]
    assert beats["replicas"] == SMOKE.heartbeats[0]
    assert beats["converged"]
    assert beats["quiet"]["missed"] == beats["churn"]["missed"] == 0
    assert beats["churn"]["heartbeats_per_s"] > 0
    assert beats["churn"]["extra_states"] == 0  # a heartbeat causes no routing work
    assert "The registry at scale, Spanner EMULATOR figures" in rendered
    # The LRS fleet (issue 29): both servers heard every stream, routeplane took reports.
    [lrs] = result["lrs_fleet"]["rows"]
    assert lrs["routeplane"]["proxy_errors"] == lrs["floor"]["proxy_errors"] == 0
    assert lrs["routeplane"]["reports_taken"] > 0
    assert lrs["floor"]["reports_sent"] > 0
    assert "Load reports from a fleet, end to end" in rendered
    assert all("p99" not in row["ratio"] for row in sizes)
    assert "file rename" not in rendered
    assert result["fleet"][0]["storm_errors"] == 0
    assert result["fleet"][0]["late_errors"] == 0
    assert {row["target"] for row in result["dataplane"]["rows"]} == {
        "routeplane",
        "static",
        "direct",
    }
    assert all(row["errors"] == 0 for row in result["dataplane"]["rows"])
    assert all(
        row["envoy_cpu_us_per_request"] > 0
        for row in result["dataplane"]["rows"]
        if row["target"] != "direct"
    )
    assert "Simulated fleet" in rendered
    [idle] = result["idle"]
    assert idle["poll_interval_ms"] == 100.0  # SQLite woken by inotify
    assert idle["rss_mb"] > 0
    assert "safety poll every 100 ms" in rendered
    latency = result["load"]["latency"]
    assert latency["n"] == SMOKE.load[2]
    assert "_take only, excludes parsing and gRPC" in rendered
    whole = result["load"]["whole_process"]
    assert [row["active_share"] for row in whole] == [0.1, 1.0]
    assert all(row["proxy_errors"] == 0 and row["reports_taken"] > 0 for row in whole)
    assert "Load reports, the whole process" in rendered
    assert result["envoy"] == "1.40.0"


def test_websocket_round_trips_that_fail_are_counted() -> None:
    """Nothing listens: every round trip is an error (they were counted as 0)."""
    latencies, errors = asyncio.run(ws_round_trips(("127.0.0.1", free_port()), "", count=3))
    assert latencies == []
    assert errors == 3


class EndsAfterConfig:
    """A delta ADS server that gives one cluster's whole config, then ends the first stream
    with UNAVAILABLE once it is ACKed (a fault the real server does not produce on demand)."""

    def __init__(self) -> None:
        self.streams = 0
        self.reconnected = asyncio.Event()

    async def stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        self.streams += 1
        if self.streams > 1:
            self.reconnected.set()
        first = self.streams == 1
        names = {CDS: "c1", EDS: "c1", LDS: "ingress_http", RDS: "ingress_http"}
        async for request in requests:
            if request.response_nonce:
                if first and request.type_url == RDS:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "gone after the config")
                continue
            response = discovery_pb2.DeltaDiscoveryResponse(
                type_url=request.type_url, nonce=f"n{self.streams}-{request.type_url}"
            )
            response.resources.add(name=names[request.type_url], version="1")
            yield response


def test_a_stream_that_fails_after_its_config_is_counted_and_reconnects() -> None:
    async def scenario() -> tuple[Fleet, int]:
        fake = EndsAfterConfig()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "envoy.service.discovery.v3.AggregatedDiscoveryService",
                    {
                        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                            fake.stream,
                            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
                        )
                    },
                )
            ]
        )
        address = f"127.0.0.1:{free_port()}"
        server.add_insecure_port(address)
        await server.start()
        fleet = Fleet(streams=1, clusters=1)
        stop = asyncio.Event()
        client = asyncio.create_task(delta_client(0, address, fleet, stop))
        try:
            await asyncio.wait_for(fake.reconnected.wait(), timeout=30)
        finally:
            stop.set()
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
            await server.stop(0)
        return fleet, fake.streams

    fleet, streams = asyncio.run(scenario())
    assert fleet.complete.is_set()
    assert fleet.late_codes == {"UNAVAILABLE": 1}
    assert fleet.stream_errors == 1
    assert streams >= 2  # it reconnected, as Envoy would
