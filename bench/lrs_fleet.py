"""Load reports from a simulated fleet, end to end: the whole control-plane process's CPU
against a bare grpc.aio LRS server that parses and drops, in the same run.

``python -m bench.lrs_fleet [--sizes 100x10 1000x100] [--seconds 5] [--autoscaling 1.0]``

The fleet: ``proxies`` real gRPC LRS streams (one HTTP/2 connection each, as Envoys have), each
sending one report every report interval (1 s, ``serve``'s default), spread over the interval.
The shapes are a real Envoy's (``bench/fixtures/envoy-lrs-report.json``, captured by
``bench/lrs_capture.py`` from Envoy 1.40): its whole node (~61 KB, 516 extensions), which
Envoy sends in every LoadStatsRequest, its own xDS cluster's entry, and per cluster with
traffic the captured cluster's entry (one locality; the endpoints' entries, with the counters
Envoy fills, when the server asked for endpoint granularity: the fleet reads the server's
LoadStatsResponse and sends what Envoy would). Each of ``clusters`` clusters has 10 replicas,
all with traffic. The first request of each stream is the node alone, with its own node id;
the reports after it are the same pre-encoded bytes on every stream (the server reads the node
id of the first request only), so the generator costs little: it runs in ``GENERATORS``
processes of their own, never in the measured one.

Measured, each server in turn with the same fleet: CPU from the scheduler's nanosecond account
of every thread (``bench.cpu``) over ``seconds``, less the same process's rate with the same
streams connected and not reporting (its idle), as a share of one core.

- ``routeplane serve --workers 1`` (SQLite, ``clusters`` servers of 10 replicas; a share
  ``autoscaling`` of them with an autoscaling rule); reports taken: its own count.
- the floor: ``python -m bench.lrs_fleet --floor``, a bare grpc.aio LRS server (routeplane's
  gRPC options) that answers the first request as routeplane did in the same run, parses every
  request (``LoadStatsRequest.FromString``) and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.service.load_stats.v3 import lrs_pb2

from bench.cpu import cpu_seconds
from harness.processes import ControlPlane, metric_sum
from harness.waiting import free_port, wait_until

FIXTURE = Path(__file__).with_name("fixtures") / "envoy-lrs-report.json"
METHOD = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
SERVICE = "envoy.service.load_stats.v3.LoadReportingService"
REPLICAS_PER_SERVER = 10
GENERATORS = 2  # generator processes (one below 100 proxies)
INTERVAL = 1.0  # serve's default --load-report-interval


def captured() -> lrs_pb2.LoadStatsRequest:
    found = json.loads(FIXTURE.read_text())
    return lrs_pb2.LoadStatsRequest.FromString(base64.b64decode(found["report"]))


def first_request(node_id: str) -> bytes:
    """A stream's first request: the captured node alone, with ``node_id``."""
    request = lrs_pb2.LoadStatsRequest()
    request.node.CopyFrom(captured().node)
    request.node.id = node_id
    return request.SerializeToString()


def fleet_report(clusters: int, *, endpoints: bool) -> bytes:
    """One proxy's report: the captured node, the captured xDS cluster's entry, and per
    cluster of the bench registry (``bench.registry_watch.bulk_load``: server ``s{c:04d}``,
    its replicas on 127.0.0.1, ports 10,000 + c + 100 k, in us-west for even c, us-east for
    odd) the captured cluster's entry, its endpoints' entries with ``endpoints``."""
    source = captured()
    request = lrs_pb2.LoadStatsRequest()
    request.node.CopyFrom(source.node)
    template = next(s for s in source.cluster_stats if s.cluster_name.startswith("default_"))
    for own in source.cluster_stats:
        if own.cluster_name == "routeplane_xds":
            request.cluster_stats.add().CopyFrom(own)
    [locality_template] = template.upstream_locality_stats
    points = list(locality_template.upstream_endpoint_stats)
    for c in range(clusters):
        stats = request.cluster_stats.add()
        stats.CopyFrom(template)
        stats.cluster_name = f"default_s{c:04d}"
        [locality] = stats.upstream_locality_stats
        locality.locality.region = "us-west" if c % 2 == 0 else "us-east"
        del locality.upstream_endpoint_stats[:]
        totals = [0, 0, 0, 0]
        for k in range(REPLICAS_PER_SERVER):
            point = points[k % len(points)]
            totals[0] += point.total_successful_requests
            totals[1] += point.total_requests_in_progress
            totals[2] += point.total_error_requests
            totals[3] += point.total_issued_requests
            if endpoints:
                added = locality.upstream_endpoint_stats.add()
                added.CopyFrom(point)
                added.address.socket_address.port_value = 10_000 + c + clusters * k
        (
            locality.total_successful_requests,
            locality.total_requests_in_progress,
            locality.total_error_requests,
            locality.total_issued_requests,
        ) = totals
    return request.SerializeToString()


# The generator: its own processes.


async def _proxy(
    index: int,
    target: str,
    reports: dict[bool, bytes],
    phase: float,
    go: Any,
    stop: Any,
    counts: dict[str, Any],
) -> None:
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
    ) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=None,
            response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
        )()
        try:
            await call.write(first_request(f"lrs-fleet-{index}"))
            answer = await call.read()
            if answer is grpc.aio.EOF:
                raise RuntimeError(f"stream {index} ended: {await call.code()}")
            if not answer.send_all_clusters:
                raise RuntimeError("the fleet sends every cluster; the server asked for some")
            # As Envoy: every report after the interval the server asked for.
            interval = answer.load_reporting_interval.ToNanoseconds() / 1e9
            asked = [answer.report_endpoint_granularity]
            counts["granular"] += int(asked[0])
            counts["connected"] += 1

            async def follow() -> None:
                """The server may ask again (with or without endpoint entries): as Envoy,
                the next report is sent that way."""
                while (again := await call.read()) is not grpc.aio.EOF:
                    granular = again.report_endpoint_granularity
                    counts["granular"] += int(granular) - int(asked[0])
                    asked[0] = granular

            follower = asyncio.create_task(follow())
            await go.wait()
            await asyncio.sleep(phase * interval)  # spread over it, as a fleet's proxies are
            started = time.monotonic()
            sent = 0
            while not stop.is_set():
                await call.write(reports[asked[0]])
                sent += 1
                counts["sent"] += 1
                # On schedule (not drifting by the write's own time).
                await asyncio.sleep(max(0.0, started + sent * interval - time.monotonic()))
            follower.cancel()
        finally:
            call.cancel()


def _generate(
    target: str, first: int, count: int, total: int, clusters: int, go: Any, stop: Any, out: Any
) -> None:
    reports = {granular: fleet_report(clusters, endpoints=granular) for granular in (False, True)}

    async def main() -> None:
        counts: dict[str, Any] = {"connected": 0, "sent": 0, "granular": 0}
        going = asyncio.Event()

        async def relay() -> None:
            await asyncio.to_thread(go.wait)  # the process-shared event, in one thread
            going.set()

        relaying = asyncio.create_task(relay())

        async def report_counts() -> None:
            while not stop.is_set():
                out.send(dict(counts))
                await asyncio.sleep(0.2)

        tasks = [
            asyncio.create_task(_proxy(i, target, reports, i / total, going, stop, counts))
            for i in range(first, first + count)
        ]
        reporter = asyncio.create_task(report_counts())
        done = await asyncio.gather(*tasks, return_exceptions=True)
        reporter.cancel()
        relaying.cancel()
        errors = [repr(e) for e in done if isinstance(e, BaseException)]
        counts["errors"] = errors[:3]
        counts["error_count"] = len(errors)
        out.send(dict(counts))

    asyncio.run(main())


class Fleet:
    """``proxies`` LRS streams against ``target``, in ``GENERATORS`` processes."""

    def __init__(self, target: str, *, proxies: int, clusters: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._go, self._stop = context.Event(), context.Event()
        self._pipes = []
        self._processes = []
        share = -(-proxies // (GENERATORS if proxies >= 100 else 1))
        for first in range(0, proxies, share):
            mine, theirs = context.Pipe(duplex=False)
            process = context.Process(
                target=_generate,
                args=(
                    target,
                    first,
                    min(share, proxies - first),
                    proxies,
                    clusters,
                    self._go,
                    self._stop,
                    theirs,
                ),
                daemon=True,
            )
            process.start()
            self._pipes.append(mine)
            self._processes.append(process)
        self._last = [{"connected": 0, "sent": 0, "granular": 0} for _ in self._pipes]

    def counts(self) -> dict[str, int]:
        for index, pipe in enumerate(self._pipes):
            try:
                while pipe.poll():
                    self._last[index] = pipe.recv()
            except EOFError:
                continue  # that generator has ended: its last counts stand
        return {
            key: sum(int(last.get(key, 0)) for last in self._last)
            for key in ("connected", "sent", "granular", "error_count")
        }

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self._processes if p.pid is not None)

    def go(self) -> None:
        self._go.set()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._go.set()  # a generator that never went waits no more
        for process in self._processes:
            process.join(timeout=20)
            if process.is_alive():
                process.terminate()  # our own child, by handle
        counts = self.counts()
        counts["errors"] = [e for last in self._last for e in last.get("errors", [])][:3]
        return counts


def measure(
    pid: int,
    fleet: Fleet,
    *,
    proxies: int,
    seconds: float,
    taken: Callable[[], float] = lambda: 0.0,
    interval: float = INTERVAL,
) -> dict[str, Any]:
    """Idle (streams connected, not reporting), then reporting: the server's CPU (and the
    reports it says it took over the same window, ``taken``)."""
    wait_until(
        lambda: fleet.counts()["connected"] == proxies, timeout=60 + proxies / 50, what="streams"
    )
    quiet_window = min(2.0, seconds)
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    time.sleep(quiet_window)  # the idle window measured
    idle = (cpu_seconds(pid) - cpu) / (time.perf_counter() - started)
    fleet.go()
    # Every stream reporting, as the server asked after its first report (a window, not
    # synchronisation).
    time.sleep(interval * 2.5)
    sent_before, fleet_cpu, taken_before = fleet.counts()["sent"], fleet.cpu(), taken()
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)  # the window measured
    window = time.perf_counter() - started
    spent = (cpu_seconds(pid) - cpu) / window
    counts = fleet.counts()
    took = taken() - taken_before
    return {
        "reports_taken": took,
        "window_s": round(window, 2),
        "idle_core": round(idle, 4),
        "core": round(spent, 4),
        "core_less_idle": round(spent - idle, 4),
        "reports_sent": counts["sent"] - sent_before,
        "granular_streams": counts["granular"],
        "generator_core": round((fleet.cpu() - fleet_cpu) / window, 3),
    }


# The floor: a process of its own.


def floor_main(listen: str, granular: bool, interval: float) -> None:
    from control_plane.app import GRPC_OPTIONS

    async def serve() -> None:
        async def stream(requests: Any, context: Any) -> Any:
            first = True
            async for raw in requests:
                lrs_pb2.LoadStatsRequest.FromString(raw)
                if first:
                    first = False
                    response = lrs_pb2.LoadStatsResponse(
                        send_all_clusters=True, report_endpoint_granularity=granular
                    )
                    response.load_reporting_interval.FromNanoseconds(int(interval * 1e9))
                    yield response

        server = grpc.aio.server(options=GRPC_OPTIONS)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "StreamLoadStats": grpc.stream_stream_rpc_method_handler(
                            stream,
                            request_deserializer=None,
                            response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString,
                        )
                    },
                )
            ]
        )
        server.add_insecure_port(listen)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await server.stop(0)

    asyncio.run(serve())


def run_floor(
    *, proxies: int, clusters: int, seconds: float, granular: bool, interval: float = INTERVAL
) -> dict[str, Any]:
    listen = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "bench.lrs_fleet", "--floor", listen, "--interval", str(interval)]
    if granular:
        argv.append("--granular")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the LRS floor did not start")
        fleet = Fleet(listen, proxies=proxies, clusters=clusters)
        try:
            out = measure(process.pid, fleet, proxies=proxies, seconds=seconds, interval=interval)
        finally:
            ends = fleet.stop()
        out["proxy_errors"] = ends["error_count"]
        return out
    finally:
        process.send_signal(signal.SIGTERM)  # our own child, by handle
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The servers' autoscaling rule: none; a concurrency target the fleet's load is far above
# (every server scaling up: its replicas' load is not read); or one far above it (every
# server scaling down at once: its replicas' load is read, for the candidates); "one-down":
# the first server scaling down, the others up (every report carries endpoint entries, only
# that server's are read).
UP = {"target_concurrency": 1, "min_replicas": REPLICAS_PER_SERVER, "max_replicas": 100}
DOWN = {"target_concurrency": 1_000_000, "min_replicas": 1, "max_replicas": 100}
RULES: dict[str, dict[str, Any] | None] = {"none": None, "up": UP, "down": DOWN}


def load_registry(url: str, *, clusters: int, autoscaling: str) -> None:
    """``clusters`` servers of 10 replicas, each with the ``autoscaling`` rule (``RULES``)."""
    from bench.registry_watch import bulk_load
    from control_plane.registry import open_registry

    store = open_registry(url)
    try:
        store.init()
        bulk_load(store, servers=clusters, replicas=clusters * REPLICAS_PER_SERVER)
        rules = [
            (DOWN if c == 0 else UP) if autoscaling == "one-down" else RULES[autoscaling]
            for c in range(clusters)
        ]
        specs = [
            (json.dumps({"autoscaling": rule}), f"s{c:04d}")
            for c, rule in enumerate(rules)
            if rule is not None
        ]
        if specs:
            now = time.time()
            with store._tx() as db:  # type: ignore[attr-defined]
                db.executemany(
                    "UPDATE servers SET spec = ?, updated_at = ? WHERE name = ?",
                    [(spec, now, name) for spec, name in specs],
                )
                store._bump(db, now, *(name for _, name in specs))  # type: ignore[attr-defined]
    finally:
        store.close()


def run_routeplane(
    workdir: Path,
    *,
    proxies: int,
    clusters: int,
    seconds: float,
    autoscaling: str,
    interval: float = INTERVAL,
    code: Path | None = None,
) -> dict[str, Any]:
    """``code``: another checkout's control plane (``--before``), else this one's."""
    cp = ControlPlane.create(
        workdir,
        extra=[
            "--workers",
            "1",
            "--load-report-interval",
            str(interval),
            "--new-streams-per-second",
            "100000",
        ],
    )
    if code is not None:
        cp.argv = [
            "env",  # execs Python: the process measured is the control plane's own
            f"PYTHONPATH={code}",
            sys.executable,
            "-P",  # not the working directory's checkout first: ``code``'s
            "-c",
            "from control_plane.cli import main; main()",
            *cp.argv[1:],
        ]
    load_registry(cp.registry, clusters=clusters, autoscaling=autoscaling)
    cp.start()
    try:
        cp.wait_ready()
        fleet = Fleet(cp.xds, proxies=proxies, clusters=clusters)
        try:
            out = measure(
                cp.pid,
                fleet,
                proxies=proxies,
                seconds=seconds,
                taken=lambda: metric_sum(cp.admin, "routeplane_load_reports_total"),
                interval=interval,
            )
            out["reports_dropped"] = metric_sum(cp.admin, "routeplane_load_reports_rejected_total")
            out["ignored_items"] = metric_sum(
                cp.admin, "routeplane_load_report_items_ignored_total"
            )
        finally:
            ends = fleet.stop()
        out["proxy_errors"] = ends["error_count"]
        out["errors"] = ends["errors"]
        return out
    finally:
        cp.stop()


def run(
    *,
    sizes: tuple[tuple[int, int, str], ...] = (
        (100, 10, "up"),
        (100, 100, "up"),
        (1000, 10, "up"),
        (1000, 100, "up"),
        (1000, 100, "one-down"),
        (1000, 100, "down"),
    ),
    seconds: float = 5.0,
    interval: float = INTERVAL,
    workdir: Path | None = None,
    before: Path | None = None,
) -> dict[str, Any]:
    """Each (proxies, clusters, autoscaling rule) into routeplane, then into the floor, every
    stream reporting each ``interval`` (``serve``'s default: 1 s)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="routeplane-lrs-fleet-") as tmp:
        base = workdir or Path(tmp)
        for proxies, clusters, rule in sizes:
            path = base / f"lrs-fleet-{proxies}x{clusters}-{rule}"
            path.mkdir()
            mine = run_routeplane(
                path,
                proxies=proxies,
                clusters=clusters,
                seconds=seconds,
                autoscaling=rule,
                interval=interval,
            )
            earlier = None
            if before is not None:
                (path / "before").mkdir()
                earlier = run_routeplane(
                    path / "before",
                    proxies=proxies,
                    clusters=clusters,
                    seconds=seconds,
                    autoscaling=rule,
                    interval=interval,
                    code=before,
                )
            # The floor is asked for what routeplane asked for: the same bytes to parse.
            granular = mine["granular_streams"] > 0
            floor = run_floor(
                proxies=proxies,
                clusters=clusters,
                seconds=seconds,
                granular=granular,
                interval=interval,
            )
            rows.append(
                {
                    "proxies": proxies,
                    "clusters": clusters,
                    "autoscaling": rule,
                    "report_bytes": len(fleet_report(clusters, endpoints=granular)),
                    "endpoint_granularity": granular,
                    "routeplane": mine,
                    "floor": floor,
                    "ratio": round(mine["core_less_idle"] / max(floor["core_less_idle"], 1e-4), 2),
                }
            )
            if earlier is not None:
                rows[-1]["before"] = earlier
    return {
        "interval_s": interval,
        "replicas_per_server": REPLICAS_PER_SERVER,
        "envoy": json.loads(FIXTURE.read_text())["envoy"],
        "before": str(before) if before is not None else None,
        "rows": rows,
    }


_RULE_NAMES = {
    "none": "none",
    "up": "scaling up",
    "one-down": "one scaling down",
    "down": "all scaling down",
}


def table(result: dict[str, Any]) -> list[str]:
    """The BENCHMARKS.md table (``bench/tables.py``)."""
    lines = [
        "",
        "Load reports from a fleet, end to end (`python -m bench.lrs_fleet`): N real gRPC LRS "
        "streams, each a report every "
        f"{result['interval_s']:g} s spread over the interval, with a real Envoy "
        f"{result['envoy']}'s shapes (captured by bench/lrs_capture.py: its whole node in every "
        f"report, one locality per cluster, every cluster with traffic, "
        f"{result['replicas_per_server']} replicas each; endpoint entries when asked), into "
        "`routeplane serve --workers 1` (every server with an autoscaling rule: scaling up, "
        "its replicas' load not read; one of them scaling down, every report carrying endpoint "
        "entries, that server's read; or all scaling down at once, all read, for the "
        "candidates) "
        "and into the floor, a bare grpc.aio LRS server that parses and drops, "
        "with the same fleet in the same run. Whole-process CPU (every thread, ns) over the "
        "window less the same process's idle (streams connected, not reporting), share of one "
        "core; goal at 1,000 x 100: <= 25% and <= 1.5x the floor",
        "| proxies x clusters | autoscaling | report bytes | endpoint entries | "
        "reports sent / taken | routeplane | floor | ratio | fleet generator |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    if result.get("before"):
        lines[2] = lines[2].replace(" | ratio |", " | ratio | before (another checkout) |")
        lines[3] += " --- |"
    for row in result["rows"]:
        mine, floor = row["routeplane"], row["floor"]
        earlier = row.get("before")
        extra = ""
        if earlier is not None:
            extra = (
                f" {earlier['core_less_idle']:.1%}, {earlier['reports_sent']:,} sent / "
                f"{earlier['reports_taken']:,.0f} taken |"
            )
        lines.append(
            f"| {row['proxies']:,} x {row['clusters']} | {_RULE_NAMES[row['autoscaling']]} | "
            f"{row['report_bytes']:,} | "
            f"{'yes' if row['endpoint_granularity'] else 'no'} | "
            f"{mine['reports_sent']:,} / {mine['reports_taken']:,.0f} | "
            f"{mine['core_less_idle']:.1%} | {floor['core_less_idle']:.1%} | "
            f"{row['ratio']}x |{extra} {mine['generator_core']:.0%} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["100x10", "100x100", "1000x10", "1000x100", "1000x100xone-down", "1000x100xdown"],
        help="PROXIESxCLUSTERS[xRULE], RULE one of none, up (the default), one-down, down",
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--floor", metavar="LISTEN", help=argparse.SUPPRESS)
    parser.add_argument("--granular", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument(
        "--before", metavar="DIR", help="also run another checkout's control plane (before)"
    )
    args = parser.parse_args()
    if args.floor:
        floor_main(args.floor, args.granular, args.interval)
        return
    sizes = []
    for size in args.sizes:
        proxies, clusters, *rule = size.lower().split("x")
        sizes.append((int(proxies), int(clusters), rule[0] if rule else "up"))
    result = run(
        sizes=tuple(sizes),
        seconds=args.seconds,
        interval=args.interval,
        before=Path(args.before).resolve() if args.before else None,
    )
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))


if __name__ == "__main__":
    main()
