"""A simulated Envoy fleet: N real delta-ADS streams over gRPC that subscribe and ACK like
Envoy, against a real `routeplane serve` process, and against the floor (``bench.floor``: a bare
grpc.aio server pushing pre-encoded bytes, the same resources) in the same run. The fleet runs
in this process, the server in its own.

Measures, for N streams: the reconnect storm (all N connect at once: time until every stream
has the full config, and errors), fan-out (one endpoint change: time until all N have ACKed it),
server CPU per stream per push (from /proc of the server process), and resident memory per
connected stream; with the floor, routeplane's ratios to it. Usable as a library
(``run_fleet``, ``run_with_floor``) and as ``python -m bench.fleet --streams 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from bench.cpu import cpu_seconds
from bench.propagation import commit_time
from bench.stats import summarize
from control_plane.registry import open_registry
from harness.processes import ControlPlane

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def proc_cpu(pid: int) -> float:
    """The process's CPU seconds, summed over its threads from the scheduler's nanosecond
    account (``bench.cpu``), not /proc/PID/stat's 10 ms ticks."""
    return cpu_seconds(pid)


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Fleet:
    streams: int
    clusters: int
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    complete_count: int = 0
    watched: str = ""
    watched_done: asyncio.Event = field(default_factory=asyncio.Event)
    watched_count: int = 0
    # Streams the server refused with RESOURCE_EXHAUSTED (admission control), retried.
    refusals: int = 0
    # Every other stream failure, by status code (also retried, like Envoy): these are errors.
    codes: dict[str, int] = field(default_factory=dict)
    # Failures of a stream that already had its whole config (a status, or "EOF": the server
    # ended it), by code; retried like the others, and errors too.
    late_codes: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # Wall time at which the last stream wrote its ACK of the watched change.
    last_ack_at: float = 0.0
    # Per simulated proxy: the streams that had their whole config once, and the EDS versions
    # it holds (kept across its reconnects, as Envoy keeps its config).
    completed: set[int] = field(default_factory=set)
    versions: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def stream_errors(self) -> int:
        return sum(self.codes.values()) + sum(self.late_codes.values())

    @property
    def late_errors(self) -> int:
        return sum(self.late_codes.values())

    def mark_complete(self, index: int) -> None:
        """Stream ``index`` has its whole config (counted once per proxy, reconnects too)."""
        if index in self.completed:
            return
        self.completed.add(index)
        self.complete_count += 1
        if self.complete_count >= self.streams:
            self.complete.set()

    def give_up(self, index: int) -> None:
        """A stream that failed for good counts as finished (and as an error)."""
        self.mark_complete(index)

    def saw_change(self) -> None:
        """Called once a stream has written its ACK of the watched change."""
        self.last_ack_at = time.time()
        self.watched_count += 1
        if self.watched_count >= self.streams - len(self.errors):
            self.watched_done.set()


async def delta_client(index: int, target: str, fleet: Fleet, stop: asyncio.Event) -> None:
    """One simulated proxy; like Envoy, it retries with jittered backoff when refused."""
    backoff = 0.25
    while not stop.is_set():
        retry = await _delta_stream(index, target, fleet, stop)
        if not retry:
            return
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 5.0)


async def _delta_stream(index: int, target: str, fleet: Fleet, stop: asyncio.Event) -> bool:
    node = base_pb2.Node(
        id=f"sim-{index}", cluster="fleet", locality=base_pb2.Locality(region="us-west")
    )
    channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
    versions = fleet.versions.setdefault(index, {})
    clusters: set[str] = set()
    assignments: set[str] = set()  # EDS received on this stream
    have_rds = False
    complete = False
    try:
        # Like Envoy, LDS is asked for once clusters have arrived, not in the same breath as
        # CDS: a write racing the server's refusal would make grpc.aio report INTERNAL instead
        # of the status the server sent.
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CDS))
        asked_lds = False
        while not stop.is_set():
            response = await call.read()
            if response is grpc.aio.EOF:
                break
            subscribe: list[str] = []
            changed = False
            for resource in response.resources:
                if response.type_url == CDS and resource.name not in clusters:
                    clusters.add(resource.name)
                    subscribe.append(resource.name)
                if response.type_url == EDS:
                    assignments.add(resource.name)
                    before = versions.get(resource.name)
                    versions[resource.name] = resource.version
                    if (
                        resource.name == fleet.watched
                        and before is not None
                        and before != resource.version
                    ):
                        changed = True
                if response.type_url == RDS:
                    have_rds = True
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=response.type_url, response_nonce=response.nonce
                )
            )
            if changed:
                fleet.saw_change()  # after the ACK is written, not on receipt
            if not asked_lds:
                asked_lds = True
                await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=LDS))
            if response.type_url == CDS and subscribe:
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=EDS, resource_names_subscribe=subscribe
                    )
                )
            if response.type_url == LDS and response.resources:
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=RDS, resource_names_subscribe=["ingress_http"]
                    )
                )
            if not complete and have_rds and len(assignments) >= fleet.clusters:
                complete = True
                fleet.mark_complete(index)
        if not stop.is_set():
            # The server ended the stream with no status: like Envoy, reconnect; an error.
            codes = fleet.late_codes if complete else fleet.codes
            codes["EOF"] = codes.get("EOF", 0) + 1
            return True
    except grpc.aio.AioRpcError as exc:
        # Like Envoy, reconnect with backoff on any stream failure, also after the stream had
        # its whole config. Only RESOURCE_EXHAUSTED before that is a refusal (admission
        # control saying "retry"); any other status, or any failure after, is an error.
        if not stop.is_set():
            name = exc.code().name
            if complete:
                fleet.late_codes[name] = fleet.late_codes.get(name, 0) + 1
            elif exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                fleet.refusals += 1
            else:
                fleet.codes[name] = fleet.codes.get(name, 0) + 1
            return True
    except Exception as exc:  # noqa: BLE001 - a simulated proxy reports, never hangs the run
        fleet.errors.append(f"sim-{index}: {type(exc).__name__}: {exc}")
        fleet.give_up(index)
    finally:
        call.cancel()
        await channel.close()
    return False


async def _probe_admin(admin: str, done: asyncio.Event) -> list[float]:
    """GET /metrics every 100 ms until ``done``: the process must stay responsive."""
    from harness.processes import http_get

    latencies = []
    while not done.is_set():
        started = time.perf_counter()
        status, _ = await asyncio.to_thread(http_get, f"http://{admin}/metrics", timeout=10)
        latencies.append((time.perf_counter() - started) * 1000 if status == 200 else 10_000.0)
        await asyncio.sleep(0.1)
    return latencies


def raise_fd_limit() -> int:
    """Thousands of streams need thousands of sockets, in this process and in the server it
    starts (which inherits the limit): lift the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Target:
    """The server the fleet connects to: routeplane, or the bare grpc.aio floor."""

    kind: str
    pid: int
    xds: str
    # One change, made visible to the server; returns its wall-clock start (SQLite: the
    # registry's own commit timestamp; the floor: when the push was asked for).
    change: Any
    admin: str = ""


def _start_floor(workdir: Path, registry_url: str) -> tuple[subprocess.Popen[bytes], str]:
    from harness.waiting import free_port, wait_until

    xds = f"127.0.0.1:{free_port()}"
    log_path = workdir / "floor.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", "--listen", xds, "--registry", registry_url],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    wait_until(
        lambda: process.poll() is not None or b"ready" in log_path.read_bytes(),
        timeout=120,
        what="the floor server",
    )
    if process.poll() is not None:
        raise RuntimeError(f"the floor server exited: {log_path.read_text()}")
    return process, xds


async def run_fleet(
    *,
    streams: int,
    servers: int,
    replicas: int,
    changes: int,
    workdir: Path,
    target: str = "routeplane",
) -> dict[str, Any]:
    """One fleet of ``streams`` against ``target``: "routeplane" (``routeplane serve``) or
    "floor" (``bench.floor``: the bare grpc.aio server pushing pre-encoded bytes)."""
    from bench.floor import PUSH_METHOD
    from bench.registry_watch import bulk_load

    fd_limit = raise_fd_limit()
    # One process, as the floor is: CPU and memory per stream are a process's (the group of
    # workers is bench.workers).
    cp = ControlPlane.create(workdir, extra=["--workers", "1"])
    registry = open_registry(cp.registry)
    bulk_load(registry, servers=servers, replicas=replicas)
    floor: subprocess.Popen[bytes] | None = None
    push_channel: grpc.Channel | None = None
    if target == "floor":
        floor, floor_xds = _start_floor(workdir, cp.registry)
        push_channel = grpc.insecure_channel(floor_xds)
        push = push_channel.unary_unary(PUSH_METHOD)

        def floor_change(i: int, name: str) -> float:
            started = time.time()
            push(f"default_{name}".encode(), timeout=30)
            return started

        served = Target(kind="floor", pid=floor.pid, xds=floor_xds, change=floor_change)
    else:
        cp.start()

        def registry_change(i: int, name: str) -> float:
            registry.register_replica(
                server=name, address=f"127.0.0.3:{30000 + i}", region="us-west"
            )
            return commit_time(cp.registry)  # the registry's own commit timestamp

        served = Target(
            kind="routeplane", pid=cp.pid, xds=cp.xds, change=registry_change, admin=cp.admin
        )
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        if served.kind == "routeplane":
            await asyncio.to_thread(cp.wait_ready)
        pid = served.pid
        rss_before = proc_rss(pid)
        fleet = Fleet(streams=streams, clusters=servers)
        started = time.perf_counter()
        cpu_before = proc_cpu(pid)
        tasks = [
            asyncio.create_task(delta_client(i, served.xds, fleet, stop)) for i in range(streams)
        ]
        probes = (
            asyncio.create_task(_probe_admin(served.admin, fleet.complete))
            if served.admin
            else None
        )
        await asyncio.wait_for(fleet.complete.wait(), timeout=600)
        storm_s = time.perf_counter() - started
        admin_ms = await probes if probes is not None else []
        storm_cpu = proc_cpu(pid) - cpu_before
        await asyncio.sleep(1.0)  # let the last ACKs land before measuring memory
        rss_after = proc_rss(pid)
        # The idle cost (registry polling) is measured first and taken out of the push cost.
        idle_started, idle_cpu = time.perf_counter(), proc_cpu(pid)
        await asyncio.sleep(2.0)
        idle_rate = (proc_cpu(pid) - idle_cpu) / (time.perf_counter() - idle_started)
        fanout_ms: list[float] = []
        cpu_total = 0.0
        for i in range(changes):
            name = f"s{(i * 7) % servers:04d}"
            fleet.watched = f"default_{name}"
            fleet.watched_count = 0
            fleet.watched_done.clear()
            cpu_before, window_started = proc_cpu(pid), time.perf_counter()
            committed_at = await asyncio.to_thread(served.change, i, name)
            await asyncio.wait_for(fleet.watched_done.wait(), timeout=120)
            fanout_ms.append((fleet.last_ack_at - committed_at) * 1000)
            await asyncio.sleep(0.2)  # ACKs processed: count their CPU too
            window = time.perf_counter() - window_started
            cpu_total += max(0.0, proc_cpu(pid) - cpu_before - idle_rate * window)
        return {
            "target": served.kind,
            "streams": streams,
            "servers": servers,
            "replicas": replicas,
            "storm_s": round(storm_s, 2),
            "storm_cpu_s": round(storm_cpu, 2),
            "storm_errors": len(fleet.errors) + fleet.stream_errors,
            "fd_limit": fd_limit,
            "storm_refusals_retried": fleet.refusals,
            "storm_error_codes": dict(fleet.codes),
            # Streams that failed after they had their whole config (retried), by code.
            "late_errors": fleet.late_errors,
            "late_error_codes": dict(fleet.late_codes),
            "admin_during_storm_max_ms": round(max(admin_ms, default=0.0), 1),
            "fanout_ms": summarize(fanout_ms, digits=1),
            "cpu_us_per_stream_per_push": round(cpu_total / changes / streams * 1e6, 1),
            "idle_cpu_percent": round(idle_rate * 100, 1),
            "rss_per_stream_kb": round((rss_after - rss_before) / streams / 1024, 1),
            "errors": fleet.errors[:5],
        }
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        registry.close()
        if push_channel is not None:
            push_channel.close()
        if floor is not None:
            floor.terminate()
            try:
                floor.wait(timeout=10)
            except subprocess.TimeoutExpired:
                floor.kill()
                floor.wait()
        cp.stop()


def with_floor(row: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """``row`` (routeplane) with its ratios to the floor measured in the same run."""

    def ratio(mine: float, base: float) -> float | None:
        return round(mine / base, 2) if base > 0 else None

    return {
        **row,
        "floor": floor,
        "vs_floor": {
            "cpu_per_stream_per_push": ratio(
                row["cpu_us_per_stream_per_push"], floor["cpu_us_per_stream_per_push"]
            ),
            # Of the medians only: the tail of 20 changes is a maximum, and a ratio of two
            # maxima is an outlier over another.
            "fanout_p50": ratio(row["fanout_ms"]["p50"], floor["fanout_ms"]["p50"]),
            "memory_per_stream": ratio(row["rss_per_stream_kb"], floor["rss_per_stream_kb"]),
        },
    }


async def run_with_floor(
    *, streams: int, servers: int, replicas: int, changes: int, workdir: Path
) -> dict[str, Any]:
    """The floor, then routeplane, with the same fleet: routeplane's row with its ratios."""
    rows = {}
    for target in ("floor", "routeplane"):
        path = workdir / target
        path.mkdir()
        rows[target] = await run_fleet(
            streams=streams,
            servers=servers,
            replicas=replicas,
            changes=changes,
            workdir=path,
            target=target,
        )
    return with_floor(rows["routeplane"], rows["floor"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument(
        "--target",
        choices=["routeplane", "floor", "both"],
        default="both",
        help="both: the floor first, then routeplane, and routeplane's ratios to it",
    )
    args = parser.parse_args(argv)
    rows = []
    for streams in args.streams:
        with tempfile.TemporaryDirectory(prefix="routeplane-fleet-") as tmp:
            kwargs = {
                "streams": streams,
                "servers": args.servers,
                "replicas": args.replicas,
                "changes": args.changes,
                "workdir": Path(tmp),
            }
            if args.target == "both":
                rows.append(asyncio.run(run_with_floor(**kwargs)))  # type: ignore[arg-type]
            else:
                rows.append(asyncio.run(run_fleet(**kwargs, target=args.target)))  # type: ignore[arg-type]
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
