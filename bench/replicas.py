"""Load per replica: what servers with many replicas cost the load view and the supervisor.

``python -m bench.replicas [--servers 20] [--replicas 1000]``

A real :class:`LoadService` with ``servers`` servers of ``replicas`` replicas each (all READY,
each with an autoscaling rule whose recommendation is below its replicas, so every server names
scale-down candidates), fed synthetic LRS reports (``_take`` on parsed messages, 10 proxies)
in which ``loaded`` replicas per server have requests in flight. Reported, CPU (process time,
median over the repetitions):

- ``tick_ms``: one tick after new reports (every server touched);
- ``update_ms``: the steady state of ``serve --workers``: one server's load moves, the worker
  ticks, and its ``WatchLoadTotals`` update (changes only) is encoded, decoded and summed by
  the supervisor (``LoadSum``) with the recommendations; ``update_bytes``: that update's size;
- ``whole_merge_ms``: the supervisor taking two workers' whole totals and summing them.

Loopback only, nothing started; figures from a shared machine vary by tens of percent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from control_plane.admin.loadwire import TotalsFeed, totals_from, totals_message
from control_plane.group.admin import LoadSum
from control_plane.load.server import LoadService
from control_plane.registry.spec import Autoscaling
from harness.models import endpoint, server, table

PROXIES = 10


def _median(values: list[float]) -> float:
    values = sorted(values)
    return round(values[len(values) // 2] * 1e3, 2)


def measure(*, servers: int, replicas: int, loaded: int, reps: int = 20) -> dict[str, Any]:
    rule = Autoscaling(target_concurrency=1.0, max_replicas=10)
    routed = []
    for s in range(servers):
        made = server(f"s{s:03d}", *(endpoint(f"r{s}-{e}", 20000 + e) for e in range(replicas)))
        routed.append(
            dataclasses.replace(made, spec=dataclasses.replace(made.spec, autoscaling=rule))
        )
    routing = table(*routed)
    clock = [0.0]
    service = LoadService(table=lambda: routing, interval=1.0, clock=lambda: clock[0])
    report = lrs_pb2.LoadStatsRequest()
    for s in range(servers):
        stats = report.cluster_stats.add(cluster_name=f"default_s{s:03d}")
        stats.load_report_interval.FromSeconds(1)
        locality = stats.upstream_locality_stats.add(
            locality=base_pb2.Locality(region="us-west"),
            total_requests_in_progress=loaded,
            total_issued_requests=10 * loaded,
        )
        for e in range(loaded):
            locality.upstream_endpoint_stats.add(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address="127.0.0.1", port_value=20000 + e
                    )
                ),
                total_requests_in_progress=1,
                total_issued_requests=10,
            )

    def take() -> None:
        for p in range(PROXIES):
            service.intake._take(f"proxy-{p}", report, stream=p)

    take()
    service.tick()
    ticks = []
    for _ in range(reps):
        clock[0] += 0.5
        take()
        started = time.process_time()
        service.tick()
        ticks.append(time.process_time() - started)
    feed, group = TotalsFeed(service), LoadSum(1)
    for update in feed.updates():
        group.take_update(0, update)
    group.sum(now=clock[0])
    updates, sizes = [], []
    first = report.cluster_stats[0].upstream_locality_stats[0]
    for i in range(reps):
        clock[0] += 0.5
        first.total_requests_in_progress = loaded + i % 2  # one server's load moves
        take()
        service.tick()
        started = time.process_time()
        for update in feed.updates():
            sizes.append(update.ByteSize())
            group.take_update(0, update)
        group.sum(now=clock[0])
        updates.append(time.process_time() - started)
    whole = service.totals()
    merges = []
    for i in range(reps):
        two = LoadSum(2)
        started = time.process_time()
        two.take(0, whole)
        two.take(1, totals_from(totals_message(whole)))
        two.sum(now=float(i))
        merges.append(time.process_time() - started)
    return {
        "servers": servers,
        "replicas": replicas,
        "loaded_replicas": loaded,
        "tick_ms": _median(ticks),
        "update_ms": _median(updates),
        "update_bytes": sorted(sizes)[len(sizes) // 2] if sizes else 0,
        "whole_merge_ms": _median(merges),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=1000)
    args = parser.parse_args()
    out = [
        measure(servers=args.servers, replicas=args.replicas, loaded=loaded)
        for loaded in sorted({min(10, args.replicas), args.replicas})
    ]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
