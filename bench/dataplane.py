"""Data plane: a request through Envoy configured by routeplane, versus the same Envoy binary
with an equivalent static configuration, versus straight to the upstream. HTTP/1.1 and gRPC at a
fixed rate (open loop); WebSocket round trips on one connection, one message at a time (closed
loop). Ratios are per interleaved round, reported as the median of the rounds and their spread.

The static configuration is built from the very resources routeplane serves (its listener with
the route configuration inlined instead of RDS, its clusters as STATIC clusters with the
endpoints inlined instead of EDS), so the only difference left is xDS itself. HTTP/1.1 (a
minimal upstream), gRPC unary over HTTP/2 (the sample service) and WebSocket round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

from bench.cpu import cpu_seconds
from bench.loadgen import http_fixed_rate
from bench.stats import MIN_FOR_P99, MIN_FOR_P999, percentile
from control_plane.admin.client import admin_pb2, call
from control_plane.dev.samples.grpc_echo import UNARY
from control_plane.registry import open_registry
from harness.processes import ENVOY, ROUTEPLANE, ControlPlane, Envoy, Process, http_get
from harness.waiting import free_port, wait_until

ROUNDS = 5


def stats(latencies: list[float], errors: int) -> dict[str, Any]:
    """p99 from 200 answers or more, p99.9 from 2,000 or more (else ``None``)."""
    n = len(latencies)
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 99), 3) if n >= MIN_FOR_P99 else None,
        "p999_ms": round(percentile(latencies, 99.9), 3) if n >= MIN_FOR_P999 else None,
        "max_ms": round(max(latencies), 3),
        "requests": n,
        "errors": errors,
    }


def static_bootstrap(snapshot: Any, *, listen_port: int, admin_port: int) -> str:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in snapshot.resources:
        by_type.setdefault(resource.type, []).append(json.loads(resource.json))
    route = by_type["rds"][0]
    endpoints = {cla["clusterName"]: cla for cla in by_type["eds"]}
    [listener] = by_type["lds"]
    listener["address"]["socketAddress"]["portValue"] = listen_port
    for chain in listener["filterChains"]:
        for network_filter in chain["filters"]:
            manager = network_filter["typedConfig"]
            manager.pop("rds", None)
            manager["routeConfig"] = route
    clusters = []
    for cluster in by_type["cds"]:
        cluster["type"] = "STATIC"
        cluster.pop("edsClusterConfig", None)
        cluster["loadAssignment"] = endpoints[cluster["name"]]
        clusters.append(cluster)
    return yaml.safe_dump(
        {
            "static_resources": {"listeners": [listener], "clusters": clusters},
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
            },
        }
    )


async def grpc_fixed_rate(
    target: str, authority: str, *, rate: float, seconds: float
) -> tuple[list[float], int]:
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        unary = channel.unary_unary(UNARY)
        await unary(b"warm", timeout=5)
        latencies: list[float] = []
        errors = 0

        async def fire(scheduled: float) -> None:
            nonlocal errors
            try:
                await unary(b"x", timeout=5)
                latencies.append((time.perf_counter() - scheduled) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1

        tasks = []
        start = time.perf_counter() + 0.05
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire(scheduled)))
        await asyncio.gather(*tasks)
    return latencies, errors


async def ws_round_trips(
    address: tuple[str, int], host: str, *, count: int
) -> tuple[list[float], int]:
    """``count`` round trips, one at a time; a failed one (the connection refused or closed, no
    echo of this message within 5 s, a wrong echo) is an error, and the next one reconnects."""
    latencies: list[float] = []
    errors = 0
    url = f"ws://{host or address[0]}/"
    ws: Any = None
    try:
        for i in range(count):
            try:
                if ws is None:
                    ws = await ws_connect(url, host=address[0], port=address[1], open_timeout=5)
                started = time.perf_counter()
                async with asyncio.timeout(5):
                    await ws.send(f"m{i}")
                    reply = await ws.recv()
                if not str(reply).endswith(f":m{i}"):
                    raise ValueError(f"echo of m{i} was {reply!r}")
                latencies.append((time.perf_counter() - started) * 1000)
            except (OSError, TimeoutError, ValueError, WebSocketException):
                errors += 1
                if ws is not None:
                    await ws.close()
                ws = None
            await asyncio.sleep(0.002)
    finally:
        if ws is not None:
            await ws.close()
    return latencies, errors


def run(*, rate: float, seconds: float, workdir: Path) -> dict[str, Any]:
    upstream_port = free_port()
    upstream = Process(
        [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port)],
        workdir / "upstream.log",
    )
    cp = ControlPlane.create(workdir)
    processes: list[Process] = [upstream, cp]
    try:
        upstream.start()
        cp.start()
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="dp", hostnames=["dp.local"], protocol="http")
        registry.create_server(name="g", hostnames=["g.local"], protocol="grpc")
        registry.create_server(name="ws", hostnames=["ws.local"], protocol="http")
        registry.register_replica(
            server="dp", address=f"127.0.0.1:{upstream_port}", region="us-west"
        )
        registry.close()
        grpc_port, ws_port = free_port(), free_port()
        for kind, server, port in (("grpc", "g", grpc_port), ("ws", "ws", ws_port)):
            replica = Process(
                [
                    ROUTEPLANE,
                    "samples",
                    "replica",
                    "--kind",
                    kind,
                    "--name",
                    kind,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--server",
                    server,
                    "--region",
                    "us-west",
                    "--registry",
                    cp.registry,
                    "--lease-seconds",
                    "30",
                ],
                workdir / f"{kind}.log",
            )
            replica.start()
            processes.append(replica)
        dynamic = Envoy.create(workdir, node_id="dp-dynamic", region="us-west", xds=[cp.xds])
        dynamic.start()
        processes.append(dynamic)
        dynamic.wait_live()
        wait_until(lambda: dynamic.get(host="dp.local")[0] == 200, what="dynamic Envoy routes")
        wait_until(
            lambda: (
                dynamic.stat("cluster.default_g.membership_healthy") == 1
                and dynamic.stat("cluster.default_ws.membership_healthy") == 1
            ),
            what="grpc and ws replicas",
            timeout=30,
        )
        snapshot = call(
            cp.admin,
            "GetSnapshot",
            admin_pb2.GetSnapshotRequest(node_id="dp-dynamic", include_json=True),
        )
        static_port, static_admin = free_port(), free_port()
        path = workdir / "static.yaml"
        path.write_text(
            static_bootstrap(snapshot, listen_port=static_port, admin_port=static_admin)
        )
        static = Process(
            [
                ENVOY,
                "-c",
                str(path),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
            ],
            workdir / "static.log",
        )
        static.start()
        processes.append(static)
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{static_port}/", host="dp.local")[0] == 200,
            what="static Envoy routes",
            timeout=30,
        )
        dyn_port = dynamic.listen.rsplit(":", 1)[1]
        targets = {
            "routeplane": ("127.0.0.1", int(dyn_port)),
            "static": ("127.0.0.1", static_port),
        }
        rows: list[dict[str, Any]] = []

        ws_label = "websocket rtt (closed loop)"
        direct = {"http/1.1": upstream_port, "grpc unary (h2)": grpc_port, ws_label: ws_port}
        hosts = {"http/1.1": "dp.local", "grpc unary (h2)": "g.local", ws_label: "ws.local"}
        names = ("routeplane", "static", "direct")
        # The Envoy a target goes through: its CPU per request answered is measured.
        envoy_pids = {"routeplane": dynamic.pid, "static": static.pid}
        envoy_cpu: dict[tuple[str, str], list[float]] = {}  # (protocol, target) -> [s, requests]

        async def one(protocol: str, target: str, part: float) -> tuple[list[float], int]:
            if target == "direct":
                host, port, header = "127.0.0.1", direct[protocol], ""
            else:
                (host, port), header = targets[target], hosts[protocol]
            if protocol == "http/1.1":
                return await http_fixed_rate(
                    host=host, port=port, host_header=header or "dp.local", rate=rate, seconds=part
                )
            if protocol == "grpc unary (h2)":
                return await grpc_fixed_rate(f"{host}:{port}", header, rate=rate, seconds=part)
            # At least 200 per round: each round's p99 is a p99, not its largest sample.
            return await ws_round_trips(
                (host, port), header, count=max(MIN_FOR_P99, int(rate * part / 4))
            )

        async def measure() -> None:
            # ROUNDS interleaved rounds, each target in a rotated order: drift on a shared
            # 2-core machine (control plane, load generator and both Envoys compete) hits every
            # target alike. A ratio is taken per round, and reported as the median of the
            # rounds with their spread; the latency columns pool every round.
            part = seconds / ROUNDS
            for protocol in direct:
                for target in names:
                    await one(protocol, target, min(1.0, part))  # warm-up
                pooled: dict[str, tuple[list[float], int]] = {}
                per_round: dict[str, list[tuple[float, float | None]]] = {t: [] for t in names}
                for index in range(ROUNDS):
                    order = names[index % 3 :] + names[: index % 3]
                    order = order[::-1] if index % 2 else order
                    measured: dict[str, list[float]] = {}
                    for target in order:
                        pid = envoy_pids.get(target)
                        cpu_before = cpu_seconds(pid) if pid else 0.0
                        latencies, errors = await one(protocol, target, part)
                        if pid:
                            used = envoy_cpu.setdefault((protocol, target), [0.0, 0.0])
                            used[0] += cpu_seconds(pid) - cpu_before
                            used[1] += len(latencies) + errors
                        measured[target] = latencies
                        before = pooled.get(target, ([], 0))
                        pooled[target] = (before[0] + latencies, before[1] + errors)
                    base = measured["static"]
                    for target in names:
                        per_round[target].append(
                            (
                                statistics.median(measured[target]) / statistics.median(base),
                                # A ratio of p99s only when both are p99s (200 or more).
                                percentile(measured[target], 99) / percentile(base, 99)
                                if min(len(measured[target]), len(base)) >= MIN_FOR_P99
                                else None,
                            )
                        )
                for target in names:
                    latencies, errors = pooled[target]
                    p50s = [r[0] for r in per_round[target]]
                    p99s = [r[1] for r in per_round[target] if r[1] is not None]
                    spent = envoy_cpu.get((protocol, target))
                    rows.append(
                        {
                            "protocol": protocol,
                            "target": target,
                            **stats(latencies, errors),
                            # The Envoy's CPU (every thread, ns) over the measured rounds per
                            # request sent, at this rate (idle work included).
                            "envoy_cpu_us_per_request": (
                                round(spent[0] / spent[1] * 1e6, 1) if spent and spent[1] else None
                            ),
                            "vs_static_p50": round(statistics.median(p50s), 3),
                            "vs_static_p50_spread": [round(min(p50s), 3), round(max(p50s), 3)],
                            "vs_static_p99": round(statistics.median(p99s), 3) if p99s else None,
                            "vs_static_p99_spread": (
                                [round(min(p99s), 3), round(max(p99s), 3)] if p99s else None
                            ),
                            "rounds_with_p99": len(p99s),
                        }
                    )

        asyncio.run(measure())
        return {"rate_per_s": rate, "seconds": seconds, "rows": rows}
    finally:
        for process in reversed(processes):
            process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-dp-") as tmp:
        result = run(rate=args.rate, seconds=args.seconds, workdir=Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
