"""Load reports: what aggregating them costs, and how soon a load step shows.

``python -m bench.load``

1. Aggregation: synthetic LRS reports (one per proxy, ``--clusters`` clusters each with one
   locality and 10 endpoints) taken by a real :class:`LoadService`'s ``_take`` on an already
   parsed message, then one tick (sums and recommendations). Reported: CPU per report per
   cluster, and the projected share of one core for 1,000 proxies x 100 clusters reporting
   every second. This is ``_take`` ONLY: it excludes parsing the report and gRPC, so it is a
   lower bound of what a process serving those reports spends, and every table that shows it
   says so.
2. Whole process: a simulated fleet of ``proxies`` proxies, each one connection with a delta ADS
   stream and an LRS stream under the same node id, sends the same reports every report
   interval to ``routeplane serve --workers 1``; the server's CPU (every thread, ns,
   ``bench.cpu``) over a window, less its rate with the same streams connected and not
   reporting, per report per cluster: parsing, gRPC and ``_take`` together. Projected the same
   way for 1,000 proxies x 100 clusters every second.
3. Report -> recommendation: a real control plane and a real Envoy (LRS every 0.5 s); N
   requests held open by the upstream start at once, each try at a random phase of the report
   interval (a random wait after a WatchLoad update); the clock runs from the moment they are
   all sent until ``WatchLoad`` shows N in flight. The distribution over the tries, against
   the goal of two report intervals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from bench.stats import summarize
from control_plane.admin.client import admin_pb2, stream
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.load.server import LoadService
from control_plane.registry import open_registry
from harness.models import endpoint, server, table
from harness.processes import ControlPlane, Envoy, http_get
from harness.waiting import wait_until


def aggregation(*, proxies: int, clusters: int, active: float = 1.0) -> dict[str, Any]:
    """``active``: the share of clusters with traffic in a report (the rest report zeros, as
    Envoy does for an idle cluster)."""
    servers = [
        server(f"s{c:03d}", *(endpoint(f"r{c}-{e}", 20000 + e) for e in range(10)))
        for c in range(clusters)
    ]
    routing = table(*servers)
    clock = [0.0]
    service = LoadService(table=lambda: routing, interval=1.0, clock=lambda: clock[0])
    report = lrs_pb2.LoadStatsRequest()
    for c in range(clusters):
        busy = c < round(clusters * active)
        stats = report.cluster_stats.add(cluster_name=f"default_s{c:03d}")
        stats.load_report_interval.FromSeconds(1)
        locality = stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region="us-west"),
            total_requests_in_progress=3 if busy else 0,
            total_issued_requests=100 if busy else 0,
            total_successful_requests=99 if busy else 0,
            total_error_requests=1 if busy else 0,
        )
        for e in range(10):
            locality.upstream_endpoint_stats.add(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address="127.0.0.1", port_value=20000 + e
                    )
                ),
                total_requests_in_progress=1 if busy else 0,
                total_issued_requests=10 if busy else 0,
            )
    started = time.process_time()
    for p in range(proxies):
        service.intake._take(f"proxy-{p}", report, stream=p)
    took = time.process_time() - started
    tick_started = time.process_time()
    service.tick()
    tick = time.process_time() - tick_started
    per_report_cluster_us = took / (proxies * clusters) * 1e6
    return {
        "proxies": proxies,
        "clusters": clusters,
        "active_share": active,
        # _take only: parsing the report and gRPC are not in it.
        "scope": "_take only, excludes parsing and gRPC",
        "cpu_us_per_report_per_cluster": round(per_report_cluster_us, 2),
        "tick_ms": round(tick * 1000, 2),
        "projected_core_share_1000x100_at_1s": round(
            (per_report_cluster_us * 1000 * 100 / 1e6) + tick * 2, 3
        ),
    }


LRS_METHOD = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _report(clusters: int, *, active: float) -> Any:
    """One proxy's report: ``clusters`` clusters, each one locality and 10 endpoints; the
    first ``active`` share with traffic, the rest zeros (as Envoy reports an idle cluster)."""
    report = lrs_pb2.LoadStatsRequest()
    for c in range(clusters):
        busy = c < round(clusters * active)
        stats = report.cluster_stats.add(cluster_name=f"default_s{c:04d}")
        stats.load_report_interval.FromSeconds(1)
        locality = stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region="us-west"),
            total_requests_in_progress=3 if busy else 0,
            total_issued_requests=100 if busy else 0,
            total_successful_requests=99 if busy else 0,
            total_error_requests=1 if busy else 0,
        )
        for e in range(10):
            locality.upstream_endpoint_stats.add(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address="127.0.0.1", port_value=10_000 + e
                    )
                ),
                total_requests_in_progress=1 if busy else 0,
                total_issued_requests=10 if busy else 0,
            )
    return report


async def _proxy(
    index: int,
    target: str,
    report: bytes,
    interval: float,
    sending: asyncio.Event,
    stop: asyncio.Event,
    sent: list[int],
) -> None:
    """One simulated proxy: an ADS stream and an LRS stream on one connection, one node id;
    once ``sending`` is set, the same pre-encoded report every ``interval``."""
    node = base_pb2.Node(
        id=f"lrs-sim-{index}", cluster="fleet", locality=base_pb2.Locality(region="us-west")
    )
    async with grpc.aio.insecure_channel(target) as channel:
        ads = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        await ads.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CDS))

        async def ack() -> None:
            while (response := await ads.read()) is not grpc.aio.EOF:
                await ads.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=response.type_url, response_nonce=response.nonce
                    )
                )

        acker = asyncio.create_task(ack())
        lrs = channel.stream_stream(
            LRS_METHOD,
            request_serializer=lambda raw: raw,
            response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
        )()
        try:
            await lrs.write(lrs_pb2.LoadStatsRequest(node=node).SerializeToString())
            await lrs.read()
            await sending.wait()
            # Spread over the interval, as a fleet's proxies are.
            await asyncio.sleep(interval * index / max(1, len(sent)))
            while not stop.is_set():
                await lrs.write(report)
                sent[index] += 1
                await asyncio.sleep(interval)
        finally:
            lrs.cancel()
            acker.cancel()
            ads.cancel()
            await asyncio.gather(acker, return_exceptions=True)


def _reports_taken(admin: str) -> float:
    _, text = http_get(f"http://{admin}/metrics")
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("routeplane_load_reports_total")
    )


def whole_process(
    *, proxies: int, clusters: int, seconds: float, workdir: Path, active: float = 0.1
) -> dict[str, Any]:
    """Load reports through a real ``serve --workers 1``: CPU per report per cluster, the
    whole process (parsing, gRPC, ``_take``, ticks)."""
    from bench.cpu import cpu_seconds
    from bench.registry_watch import bulk_load

    interval = 1.0
    cp = ControlPlane.create(
        workdir, extra=["--workers", "1", "--load-report-interval", str(interval)]
    )
    store = open_registry(cp.registry)
    bulk_load(store, servers=clusters, replicas=clusters * 10)
    store.close()
    cp.start()
    report = _report(clusters, active=active).SerializeToString()

    async def measure() -> dict[str, Any]:
        sending, stop = asyncio.Event(), asyncio.Event()
        sent = [0] * proxies
        tasks = [
            asyncio.create_task(_proxy(i, cp.xds, report, interval, sending, stop, sent))
            for i in range(proxies)
        ]
        try:
            await asyncio.sleep(3.0)  # streams connected, configs pushed and ACKed
            quiet_started, quiet_cpu = time.perf_counter(), cpu_seconds(cp.pid)
            await asyncio.sleep(min(5.0, seconds))
            quiet = (cpu_seconds(cp.pid) - quiet_cpu) / (time.perf_counter() - quiet_started)
            sending.set()
            await asyncio.sleep(interval * 2)  # every proxy reporting
            taken_before = await asyncio.to_thread(_reports_taken, cp.admin)
            sent_before, started, cpu = sum(sent), time.perf_counter(), cpu_seconds(cp.pid)
            await asyncio.sleep(seconds)
            window = time.perf_counter() - started
            spent = cpu_seconds(cp.pid) - cpu - quiet * window
            reports = sum(sent) - sent_before
            taken = await asyncio.to_thread(_reports_taken, cp.admin) - taken_before
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            failed = [
                r
                for r in await asyncio.gather(*tasks, return_exceptions=True)
                if isinstance(r, Exception)
            ]
        per_report_cluster_us = spent / max(1, reports * clusters) * 1e6
        return {
            "proxies": proxies,
            "clusters": clusters,
            "active_share": active,
            "seconds": round(window, 1),
            "reports": reports,
            # The server's own count over the window (routeplane_load_reports_total).
            "reports_taken": taken,
            "report_bytes": len(report),
            "quiet_cpu_percent": round(quiet * 100, 2),
            "cpu_percent_reporting": round((spent / window + quiet) * 100, 1),
            "cpu_us_per_report_per_cluster": round(per_report_cluster_us, 2),
            "projected_core_share_1000x100_at_1s": round(
                per_report_cluster_us * 1000 * 100 / 1e6, 3
            ),
            "proxy_errors": len(failed),
        }

    try:
        cp.wait_ready()
        return asyncio.run(measure())
    finally:
        cp.stop()


# How long each held request stays open: longer than the 2 report intervals it may take to
# show, short enough that a try costs about 2 s.
HELD_MS = 1500


def report_to_recommendation(*, tries: int, held: int, workdir: Path) -> dict[str, Any]:
    interval = 0.5
    cp = ControlPlane.create(workdir, extra=["--load-report-interval", str(interval)])
    cp.start()
    echo = EchoThread(name="a")
    envoy = Envoy.create(workdir, node_id="bench-load", region="us-west", xds=[cp.xds])
    latencies: list[float] = []
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        registry.register_replica(server="echo", address=echo.address, region="us-west")
        registry.close()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing")
        updates = stream(cp.admin, "WatchLoad", admin_pb2.GetLoadRequest(server="echo"))

        def in_flight() -> float:
            while True:
                response = next(updates)
                for row in response.servers:
                    if row.region == "*":
                        return float(row.in_flight)

        phases = random.Random(23)
        for _ in range(tries):
            while in_flight() != 0:
                pass
            # A random phase of the report interval: the step is not always just after an
            # update (a delay to choose the phase, not synchronisation).
            phase = phases.uniform(0, interval)
            time.sleep(phase)
            threads = [
                threading.Thread(
                    target=envoy.get,
                    kwargs={"path": f"/slow?ms={HELD_MS}", "host": "echo.local", "timeout": 10},
                )
                for _ in range(held)
            ]
            for thread in threads:
                thread.start()
            sent = time.monotonic()
            while in_flight() < held:
                pass
            latencies.append((time.monotonic() - sent) * 1000)
            for thread in threads:
                thread.join()
        return {
            "interval_ms": interval * 1000,
            "held": held,
            "tries": tries,
            "phases": "uniform in [0, interval) after an update",
            **summarize(latencies, digits=1, suffix="_ms"),
            "min_ms": round(min(latencies), 1),
            "samples_ms": [round(x, 1) for x in latencies],
        }
    finally:
        envoy.stop()
        cp.stop()
        echo.stop()


def run(
    *,
    proxies: int,
    clusters: int,
    tries: int,
    workdir: Path,
    fleet: tuple[int, int, float] = (100, 100, 10.0),
) -> dict[str, Any]:
    """``fleet``: the whole-process run's proxies, clusters and window (s); 0 proxies: none."""
    out: dict[str, Any] = {
        "aggregation": [
            aggregation(proxies=proxies, clusters=clusters, active=share) for share in (1.0, 0.1)
        ],
    }
    fleet_proxies, fleet_clusters, fleet_seconds = fleet
    if fleet_proxies:
        out["whole_process"] = []
        for share in (0.1, 1.0):
            path = workdir / f"lrs-fleet-{share:g}"
            path.mkdir()
            out["whole_process"].append(
                whole_process(
                    proxies=fleet_proxies,
                    clusters=fleet_clusters,
                    seconds=fleet_seconds,
                    workdir=path,
                    active=share,
                )
            )
    path = workdir / "latency"
    path.mkdir()
    out["latency"] = report_to_recommendation(tries=tries, held=5, workdir=path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--proxies", type=int, default=200)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument(
        "--fleet",
        type=float,
        nargs=3,
        default=[100, 100, 10.0],
        metavar=("PROXIES", "CLUSTERS", "SECONDS"),
        help="the whole-process run (0 proxies: none)",
    )
    args = parser.parse_args()
    proxies, clusters, seconds = args.fleet
    with tempfile.TemporaryDirectory(prefix="routeplane-load-") as tmp:
        out = run(
            proxies=args.proxies,
            clusters=args.clusters,
            tries=args.tries,
            workdir=Path(tmp),
            fleet=(int(proxies), int(clusters), seconds),
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
