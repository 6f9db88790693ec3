"""``serve --workers``: 1 worker against 2 in the same run, with a simulated fleet.

- Fan-out: N delta ADS streams (each on its own connection, so the kernel spreads them over the
  workers), then one endpoint change at a time: registry commit -> the last stream has written
  its ACK; p50/p99 and the ratio of 2 workers to 1. CPU is the whole process group's (the
  supervisor and its workers) over the change window, less its idle rate.
- The fleet: "c" is ``bench/fleetsim.c`` (``bench.fleetsim``: one thread, epoll, one connection
  per stream, a small fraction of a core per change, so the cores go to the server), built on
  demand with the machine's C compiler; "python" is ``bench.fleet``'s grpc.aio simulator (its
  clients and helpers, not a copy), which spends about as much CPU per push as the server. Without
  a C compiler the Python one stands in, and the table says so. Either runs on the same machine
  as the server; its own CPU per change is reported.
- Idle: with nothing changing and no stream, the group's CPU and the registry's load: the
  host's one watch (a lone process's own, or a group's watcher process feeding its workers)
  polls the registry's revision once per poll interval (reads per second by design: 1 /
  interval whatever the workers; on SQLite with inotify the poll is a safety net every 100
  ms), and on the Spanner emulator the emulator's own CPU is measured.

``python -m bench.workers --streams 1000 --fleet c python --idle sqlite spanner``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import fleetsim
from bench.cpu import cpu_seconds
from bench.fleet import Fleet, delta_client, proc_cpu, proc_rss, raise_fd_limit
from bench.propagation import commit_time
from bench.registry_watch import bulk_load
from bench.stats import summarize, tail, tails_name
from control_plane.registry import open_registry
from harness.processes import ControlPlane, http_get
from harness.spanner_emulator import Emulator


def group_pids(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def group_cpu(pids: list[int]) -> float:
    return sum(proc_cpu(pid) for pid in pids)


def streams_per_worker(admin: str) -> dict[str, int]:
    """Connected streams per worker, from the group's merged /metrics."""
    _, text = http_get(f"http://{admin}/metrics")
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("routeplane_connected_proxies{"):
            labels, _, value = line.rpartition(" ")
            worker = labels.split('worker="', 1)[1].split('"', 1)[0] if "worker=" in labels else "0"
            counts[worker] = counts.get(worker, 0) + int(float(value))
    return counts


# New connections per second from the C fleet, first connects and reconnects alike: below
# `serve`'s default admission rate (--new-streams-per-second 500), so no stream is refused.
C_CONNECT_RATE = 400.0
# The longest one change may take to reach every stream before the run fails.
CHANGE_TIMEOUT_S = 120.0


def change_name(i: int, servers: int) -> str:
    return f"s{(i * 7) % servers:04d}"


def fanout_row(
    *,
    fleet: str,
    workers: int,
    streams: int,
    spread: dict[str, int],
    storm_s: float,
    storm_errors: int,
    fanout_ms: list[float],
    cpu_total: float,
    idle_rate: float,
    fleet_cpu: float,
    changes: int,
    rss_mb: float,
) -> dict[str, Any]:
    return {
        "fleet": fleet,
        "workers": workers,
        "streams": streams,
        "streams_per_worker": spread,
        "storm_s": round(storm_s, 2),
        "storm_errors": storm_errors,
        "fanout_ms": summarize(fanout_ms, digits=1),
        "cpu_us_per_stream_per_push": round(cpu_total / changes / streams * 1e6, 1),
        "idle_cpu_percent": round(idle_rate * 100, 1),
        # The fleet's own CPU per change: on a machine with as many cores as processes
        # busy, the simulator and the workers each have a core; here they share.
        "fleet_cpu_ms_per_change": round(fleet_cpu / changes * 1000, 1),
        # The group's resident memory (supervisor, watcher, workers) after the changes.
        "group_rss_mb": rss_mb,
    }


def fanout_c(
    *,
    binary: Path,
    workers: int,
    streams: int,
    servers: int,
    replicas: int,
    changes: int,
    workdir: Path,
) -> dict[str, Any]:
    """The C fleet (``bench.fleetsim``) against ``serve --workers N``."""
    raise_fd_limit()
    cp = ControlPlane.create(workdir, extra=["--workers", str(workers)])
    registry = open_registry(cp.registry)
    bulk_load(registry, servers=servers, replicas=replicas)
    cp.start()
    try:
        cp.wait_ready()
        pids = group_pids(cp.pid)
        with fleetsim.FleetSim(
            binary,
            target=cp.xds,
            streams=streams,
            clusters=servers,
            connect_rate=C_CONNECT_RATE,
            log_path=workdir / "fleetsim.log",
        ) as sim:
            storm_s = sim.wait_complete(600)
            time.sleep(1.0)  # the last ACKs land
            spread = streams_per_worker(cp.admin)
            idle_started, idle_cpu = time.perf_counter(), group_cpu(pids)
            time.sleep(2.0)
            idle_rate = (group_cpu(pids) - idle_cpu) / (time.perf_counter() - idle_started)
            fanout_ms: list[float] = []
            cpu_total = 0.0
            fleet_cpu = sim.stats()["cpu_s"]
            for i in range(changes):
                name = change_name(i, servers)
                sim.watch(f"default_{name}", CHANGE_TIMEOUT_S)
                cpu_before, window_started = group_cpu(pids), time.perf_counter()
                registry.register_replica(
                    server=name, address=f"127.0.0.3:{30000 + i}", region="us-west"
                )
                committed_at = commit_time(cp.registry)
                watched = sim.watched()
                if not watched.complete:
                    raise RuntimeError(
                        f"change {i}: {watched.count} of {streams} streams ACKed it within "
                        f"{CHANGE_TIMEOUT_S:.0f} s; simulator: {sim.stats()}"
                    )
                fanout_ms.append((watched.last_ack_at - committed_at) * 1000)
                time.sleep(0.2)  # ACKs processed: count their CPU too
                window = time.perf_counter() - window_started
                cpu_total += max(0.0, group_cpu(pids) - cpu_before - idle_rate * window)
            stats = sim.stats()
            fleet_cpu = stats["cpu_s"] - fleet_cpu
            rss_mb = group_rss_mb(pids)
        return fanout_row(
            fleet="c",
            workers=workers,
            streams=streams,
            spread=spread,
            storm_s=storm_s,
            # Connecting below the admission rate, no stream should have ended or failed.
            storm_errors=int(stats["ended"] + stats["connect_errors"]),
            fanout_ms=fanout_ms,
            cpu_total=cpu_total,
            idle_rate=idle_rate,
            fleet_cpu=fleet_cpu,
            changes=changes,
            rss_mb=rss_mb,
        )
    finally:
        registry.close()
        cp.stop()


def group_rss_mb(pids: list[int]) -> float:
    return round(sum(proc_rss(pid) for pid in pids) / 2**20, 1)


async def fanout_python(
    *, workers: int, streams: int, servers: int, replicas: int, changes: int, workdir: Path
) -> dict[str, Any]:
    """``bench.fleet``'s grpc.aio fleet (in this process) against ``serve --workers N``."""
    raise_fd_limit()
    cp = ControlPlane.create(workdir, extra=["--workers", str(workers)])
    registry = open_registry(cp.registry)
    bulk_load(registry, servers=servers, replicas=replicas)
    cp.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.to_thread(cp.wait_ready)
        pids = group_pids(cp.pid)
        fleet = Fleet(streams=streams, clusters=servers)
        started = time.perf_counter()
        tasks = [asyncio.create_task(delta_client(i, cp.xds, fleet, stop)) for i in range(streams)]
        await asyncio.wait_for(fleet.complete.wait(), timeout=600)
        storm_s = time.perf_counter() - started
        await asyncio.sleep(1.0)  # the last ACKs land
        spread = await asyncio.to_thread(streams_per_worker, cp.admin)
        idle_started, idle_cpu = time.perf_counter(), group_cpu(pids)
        await asyncio.sleep(2.0)
        idle_rate = (group_cpu(pids) - idle_cpu) / (time.perf_counter() - idle_started)
        fanout_ms: list[float] = []
        cpu_total = 0.0
        client_cpu = time.process_time()  # this process: the whole simulated fleet
        for i in range(changes):
            name = change_name(i, servers)
            fleet.watched = f"default_{name}"
            fleet.watched_count = 0
            fleet.watched_done.clear()
            cpu_before, window_started = group_cpu(pids), time.perf_counter()
            await asyncio.to_thread(
                registry.register_replica,
                server=name,
                address=f"127.0.0.3:{30000 + i}",
                region="us-west",
            )
            committed_at = commit_time(cp.registry)
            await asyncio.wait_for(fleet.watched_done.wait(), timeout=CHANGE_TIMEOUT_S)
            fanout_ms.append((fleet.last_ack_at - committed_at) * 1000)
            await asyncio.sleep(0.2)  # ACKs processed: count their CPU too
            window = time.perf_counter() - window_started
            cpu_total += max(0.0, group_cpu(pids) - cpu_before - idle_rate * window)
        client_cpu = time.process_time() - client_cpu
        rss_mb = group_rss_mb(pids)
        return fanout_row(
            fleet="python",
            workers=workers,
            streams=streams,
            spread=spread,
            storm_s=storm_s,
            storm_errors=len(fleet.errors) + fleet.stream_errors,
            fanout_ms=fanout_ms,
            cpu_total=cpu_total,
            idle_rate=idle_rate,
            fleet_cpu=client_cpu,
            changes=changes,
            rss_mb=rss_mb,
        )
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        registry.close()
        cp.stop()


def registry_polls(admin: str) -> float:
    """The host's count of its registry watch's looks at the store (/metrics: a lone
    process's, or a group's watcher's and its workers', which follow the watcher and never
    look themselves)."""
    _, text = http_get(f"http://{admin}/metrics")
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("routeplane_registry_watch_polls_total")
    )


def watch_poll_interval(registry: Any, registry_kind: str, workdir: Path) -> float:
    """How often one watch polls the registry's revision at rest, by its design: the store's
    default interval, or on SQLite woken by inotify the safety poll (100 ms)."""
    interval = float(registry.default_poll_interval)
    if registry_kind == "sqlite":
        from control_plane.registry.sqlite.inotify import DirectoryWatch
        from control_plane.registry.sqlite.wake import NOTIFIED_POLL_INTERVAL

        probe = DirectoryWatch.open(str(workdir), ["registry.db"])
        if probe is not None:  # commits wake the watch; the poll is a safety net
            probe.close()
            interval = max(interval, NOTIFIED_POLL_INTERVAL)
    return interval


def idle(*, workers: int, registry_kind: str, seconds: float, workdir: Path) -> dict[str, Any]:
    """The group at rest (1,000 replicas, no stream): its CPU and the registry's load."""
    emulator = None
    if registry_kind == "spanner":
        emulator = Emulator.create(workdir)
        emulator.start()
        os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
        url = "spanner://projects/bench/instances/rp/databases/registry"
    else:
        url = f"sqlite://{workdir / 'registry.db'}"
    cp = None
    try:
        registry = open_registry(url)
        registry.init()
        bulk_load(registry, servers=100, replicas=1000)
        interval = watch_poll_interval(registry, registry_kind, workdir)
        registry.close()
        cp = ControlPlane.create(workdir, registry=url, extra=["--workers", str(workers)])
        cp.start()
        cp.wait_ready()
        time.sleep(1.0)  # start-up reads done
        pids = group_pids(cp.pid)  # CPU: every thread of each, in ns (bench.cpu)
        emulator_pid = emulator.process.pid if emulator and emulator.process else None
        cpu = group_cpu(pids)
        store_cpu = cpu_seconds(emulator_pid, children=True) if emulator_pid else 0.0
        polls = registry_polls(cp.admin)
        started = time.perf_counter()
        time.sleep(seconds)
        elapsed = time.perf_counter() - started
        polls = registry_polls(cp.admin) - polls
        row: dict[str, Any] = {
            "workers": workers,
            "registry": registry_kind,
            "seconds": round(elapsed, 1),
            "group_cpu_percent": round((group_cpu(pids) - cpu) / elapsed * 100, 2),
            # Counted: the watch's own count of its looks at the store, over the window; and
            # by design: one watch per host, 1 / its poll interval, whatever the workers.
            "registry_polls_per_s": round(polls / elapsed, 1),
            "registry_polls_per_s_computed": round(1 / interval),
            "group_rss_mb": group_rss_mb(pids),
        }
        if emulator_pid:
            row["emulator_cpu_percent"] = round(
                (cpu_seconds(emulator_pid, children=True) - store_cpu) / elapsed * 100, 2
            )
        return row
    finally:
        if cp is not None:
            cp.stop()
        if emulator is not None:
            emulator.stop()
            os.environ.pop("SPANNER_EMULATOR_HOST", None)


def run(
    *,
    streams: int,
    changes: int,
    idle_registries: tuple[str, ...],
    workdir: Path,
    fleets: tuple[str, ...] = ("c",),
    idle_seconds: float = 10.0,
) -> dict[str, Any]:
    """The fan-out rows, 1 worker then 2, for each simulated fleet in ``fleets`` ("c",
    "python"); without a C compiler "c" falls back to "python" (``fleet_note`` says so)."""
    binary = fleetsim.build() if "c" in fleets else None
    note = None
    if "c" in fleets and binary is None:
        note = "no C compiler found: the Python simulator stood in for the C one"
        fleets = tuple(dict.fromkeys("python" if f == "c" else f for f in fleets))
    rows = []
    for fleet in fleets:
        for workers in (1, 2):
            path = workdir / f"fanout-{fleet}-{workers}"
            path.mkdir()
            kwargs: dict[str, Any] = {
                "workers": workers,
                "streams": streams,
                "servers": 100,
                "replicas": 1000,
                "changes": changes,
                "workdir": path,
            }
            if fleet == "c":
                assert binary is not None
                rows.append(fanout_c(binary=binary, **kwargs))
            else:
                rows.append(asyncio.run(fanout_python(**kwargs)))
    ratios = {}
    for fleet in fleets:
        one, two = (r for r in rows if r["fleet"] == fleet)
        # Of the medians; of the p99s only when both are p99s (not maxima of a few changes).
        ratios[fleet] = {
            "p50": round(two["fanout_ms"]["p50"] / max(one["fanout_ms"]["p50"], 1e-9), 2),
        }
        if one["fanout_ms"]["p99"] is not None and two["fanout_ms"]["p99"] is not None:
            ratios[fleet]["p99"] = round(two["fanout_ms"]["p99"] / one["fanout_ms"]["p99"], 2)
    idle_rows = []
    for kind in idle_registries:
        for workers in (1, 2):
            path = workdir / f"idle-{kind}-{workers}"
            path.mkdir()
            idle_rows.append(
                idle(workers=workers, registry_kind=kind, seconds=idle_seconds, workdir=path)
            )
    return {
        "fanout": rows,
        "fleets": list(fleets),
        "fleet_note": note,
        "ratios_2_to_1": ratios,
        # The first fleet's (the C one unless it fell back).
        "p99_ratio_2_to_1": ratios[fleets[0]].get("p99"),
        "p50_ratio_2_to_1": ratios[fleets[0]]["p50"],
        "c_connect_rate": C_CONNECT_RATE,
        "idle": idle_rows,
        "cores": os.cpu_count(),
    }


FLEET_NAMES = {
    "c": "C (bench/fleetsim.c)",
    "python": "Python (grpc.aio)",
}


PROJECTED_WORKERS = (4, 8, 16)


def projection(result: dict[str, Any]) -> list[str]:
    """Bigger machines, projected (not measured) from the 1-worker row: the per-stream push
    work divides over N workers on N free cores; the per-change fixed part does not."""
    one = next((r for r in result["fanout"] if r["workers"] == 1), None)
    if one is None:
        return []
    streams = one["streams"]
    work_ms = streams * one["cpu_us_per_stream_per_push"] / 1000
    cells = ", ".join(f"{n} workers ~{work_ms / n:.0f} ms" for n in PROJECTED_WORKERS)
    return [
        "",
        f"Projection for a machine with a free core per worker and the fleet elsewhere (not "
        f"measured here): one change's push work to {streams:,} streams is {work_ms:.0f} ms of "
        f"CPU ({one['cpu_us_per_stream_per_push']} us per stream, the 1-worker row), split by "
        f"the kernel over the workers' connections: {cells}, plus the part every worker repeats "
        "(its copy of the watcher's change and the pipeline step, under 1 ms at 1,000 replicas "
        "in the pipeline table). The 1-worker p50 above is below its CPU figure: the server "
        "still reads ACKs after the last one is written.",
    ]


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines for bench/run.py's table."""
    ratios = "; ".join(
        f"{FLEET_NAMES[fleet]} fleet: "
        + ", ".join(f"{q} {r[q]}x" for q in ("p50", "p99") if r.get(q) is not None)
        for fleet, r in result["ratios_2_to_1"].items()
    )
    changes = result["fanout"][0]["fanout_ms"].get("n", "-") if result["fanout"] else 0
    last = tails_name([row["fanout_ms"] for row in result["fanout"]])
    fleets = []
    if "c" in result["fleets"]:
        fleets.append(
            "the C fleet is one thread (epoll, HTTP/2 and protobuf by hand, one connection per "
            f"stream) connecting at {result['c_connect_rate']:.0f}/s, below the server's "
            "admission rate, so its storm time is mostly that pacing"
        )
    if "python" in result["fleets"]:
        fleets.append(
            "the Python fleet is bench/fleet.py's grpc.aio simulator (all streams at once, "
            "refusals retried)"
        )
    note = f" ({result['fleet_note']})" if result.get("fleet_note") else ""
    lines = [
        "",
        f"`serve --workers` ({result['cores']} cores): a simulated fleet{note} against 1 worker "
        "and against 2 in the same run, 100 servers / 1,000 replicas; one change: commit -> the "
        "last stream has written its ACK; CPU: the whole process group's, less its idle rate; "
        f"{'; '.join(fleets)}. The fleet runs on the same cores as the server: its own CPU per "
        "change is the second last column; memory: the group's resident set after the changes. "
        f"2 workers / 1: {ratios}",
        f"| fleet | workers | streams (per worker) | storm | errors | one change, N = {changes}: "
        f"p50 / {last} ms | "
        "CPU per stream per push | idle CPU | simulated fleet's CPU per change | group memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["fanout"]:
        spread = ", ".join(str(v) for _, v in sorted(row["streams_per_worker"].items()))
        lines.append(
            f"| {FLEET_NAMES[row['fleet']]} | {row['workers']} | {row['streams']} ({spread}) | "
            f"{row['storm_s']} s | {row['storm_errors']} | "
            f"{row['fanout_ms']['p50']} / {tail(row['fanout_ms'])} | "
            f"{row['cpu_us_per_stream_per_push']} us | {row['idle_cpu_percent']}% | "
            f"{row['fleet_cpu_ms_per_change']} ms | {row.get('group_rss_mb', '-')} MB |"
        )
    lines += projection(result)
    if result["idle"]:
        window = result["idle"][0].get("seconds", "-")
        lines += [
            "",
            "Idle, 1,000 replicas, no stream: one registry watch per host (with 2 workers, the "
            "group's watcher process, which hands each change to the workers). CPU: "
            "every thread of the group (and of the emulator's processes) from the scheduler's "
            f"nanosecond account, over a {window} s window (N = 1 window per row); registry "
            "polls/s: counted, the watch's own count of its looks at the store "
            "(routeplane_registry_watch_polls_total, every process of the group) over the "
            "window, and by design (1 / the watch's poll interval at rest, whatever the "
            "workers: SQLite woken by inotify polls every 100 ms, Spanner every 10 ms); "
            "memory: the group's resident set",
            "| registry | workers | group CPU | registry polls/s: counted / by design | group "
            "memory | emulator CPU |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in result["idle"]:
            lines.append(
                f"| {row['registry']} | {row['workers']} | {row['group_cpu_percent']}% | "
                f"{row.get('registry_polls_per_s', '-')} / "
                f"{row.get('registry_polls_per_s_computed', '-')} | "
                f"{row.get('group_rss_mb', '-')} MB | "
                f"{row.get('emulator_cpu_percent', '-')}"
                f"{'%' if 'emulator_cpu_percent' in row else ''} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--idle", nargs="*", default=["sqlite"], choices=["sqlite", "spanner"])
    parser.add_argument(
        "--fleet",
        nargs="+",
        default=["c"],
        choices=["c", "python"],
        help="simulated fleets, each against 1 and 2 workers (c: bench/fleetsim.c)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-workers-") as tmp:
        result = run(
            streams=args.streams,
            changes=args.changes,
            idle_registries=tuple(args.idle),
            workdir=Path(tmp),
            fleets=tuple(dict.fromkeys(args.fleet)),
        )
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
