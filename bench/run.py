"""`make bench` / `make bench-quick`: every benchmark, one table, JSON and BENCHMARKS.md.

Absolute timings on a nested VM are noisy: every figure comes with a baseline measured in the
same run (Envoy's own filesystem subscription for propagation, an equivalent static Envoy and
the bare upstream for the data plane), and comparisons are ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane import logs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    name: str
    propagation_tries: int
    baseline_tries: int
    watch: tuple[tuple[str, int, int], ...]  # (registry, replicas, envoys)
    watch_changes: int
    fleet: tuple[int, ...]
    fleet_changes: int
    dataplane_rate: float
    dataplane_seconds: float
    pipeline: tuple[int, ...] = (1000, 10_000)  # replicas, 10 per server
    load: tuple[int, int, int] = (200, 100, 10)  # proxies, clusters, tries
    cold_start_tries: int = 20
    # One server of N replicas, one replica changed, 1 and 10 node groups.
    one_server: tuple[int, ...] = (10, 100, 1000, 10_000)
    # Each registry at 10 replicas (the baseline: idle should not grow with the registry) and
    # at 10,000.
    idle: tuple[tuple[str, int], ...] = (
        ("sqlite", 10),
        ("sqlite", 10_000),
        ("spanner", 10),
        ("spanner", 10_000),
    )
    idle_seconds: float = 5.0
    # A reconnect storm of this many streams, against the floor and routeplane, 3 changes
    # (0: none).
    storm: int = 0
    # Propagation at each size (one server of N replicas) against Envoy's own filesystem EDS.
    propagation_sizes: tuple[int, ...] = (10, 1000, 10_000)
    propagation_size_tries: int = 20
    # serve --workers, 1 against 2 (bench/workers.py): streams, changes, idle registries.
    workers: tuple[int, int, tuple[str, ...]] = (1000, 20, ("sqlite", "spanner"))
    # The autoscaling rule's scale_down_window (bench/autoscale.py), hours.
    autoscale_hours: float = 24.0


FULL = Plan(
    "full",
    50,
    50,
    (
        ("sqlite", 10, 1),
        ("sqlite", 1000, 1),
        ("sqlite", 10000, 1),
        ("spanner", 10, 1),
        ("spanner", 1000, 1),
        ("spanner", 10000, 1),
        ("spanner", 10000, 10),
    ),
    30,
    (100, 1000, 2000),
    20,
    300,
    10,
    storm=10_000,
)
QUICK = Plan(
    "quick",
    10,
    10,
    (("spanner", 1000, 1),),
    10,
    (100,),
    5,
    200,
    2,
    idle=(("sqlite", 1000),),
    workers=(100, 5, ("sqlite",)),
    propagation_sizes=(10, 1000),
    propagation_size_tries=5,
    autoscale_hours=1.0,
)
SMOKE = Plan(
    "smoke",
    2,
    2,
    (("sqlite", 20, 1),),
    2,
    (5,),
    2,
    50,
    0.5,
    (20,),
    (5, 5, 2),
    one_server=(10,),
    idle=(("sqlite", 20),),
    idle_seconds=0.5,
    cold_start_tries=2,
    workers=(5, 2, ()),
    propagation_sizes=(10,),
    propagation_size_tries=2,
    autoscale_hours=0.05,
)


def versions() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    found = re.search(
        r"/(\d+\.\d+\.\d+)/", run(str(Path(sys.executable).parent / "envoy"), "--version")
    )
    return {
        "git_revision": run("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "envoy": found.group(1) if found else "unknown",
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def run_plan(plan: Plan, workdir: Path) -> dict[str, Any]:
    from bench import (
        autoscale,
        cold_start,
        dataplane,
        filesystem_baseline,
        fleet,
        idle,
        load,
        pipeline,
        propagation,
        proxyless,
        registry_watch,
    )

    out: dict[str, Any] = {"plan": plan.name, **versions()}
    started = time.monotonic()
    out["pipeline"] = [
        pipeline.run(max(1, replicas // 10), replicas, changes=50) for replicas in plan.pipeline
    ]
    out["pipeline_one_server"] = pipeline.one_server(plan.one_server)
    out["autoscale_windows"] = autoscale.run(hours=plan.autoscale_hours)
    path = workdir / "load"
    path.mkdir()
    proxies, clusters, tries = plan.load
    out["load"] = load.run(proxies=proxies, clusters=clusters, tries=tries, workdir=path)
    out["propagation"] = []
    for ads in ("delta", "sotw"):
        path = workdir / f"prop-{ads}"
        path.mkdir()
        out["propagation"].append(
            propagation.run_variant(path, ads=ads, tries=plan.propagation_tries)
        )
    path = workdir / "cold-start"
    path.mkdir()
    out["cold_start"] = cold_start.run(path, tries=plan.cold_start_tries)
    path = workdir / "proxyless"
    path.mkdir()
    out["proxyless"] = proxyless.run(tries=plan.propagation_tries, workdir=path)
    path = workdir / "fs"
    path.mkdir()
    out["filesystem_baseline"] = filesystem_baseline.run(tries=plan.baseline_tries, workdir=path)
    path = workdir / "by-size"
    path.mkdir()
    out["propagation_by_size"] = propagation.by_size(
        plan.propagation_sizes, tries=plan.propagation_size_tries, workdir=path
    )
    out["registry_watch"] = []
    for registry, replicas, envoys in plan.watch:
        path = workdir / f"watch-{registry}-{replicas}-{envoys}"
        path.mkdir()
        args = argparse.Namespace(
            registry=registry,
            replicas=replicas,
            servers=max(1, replicas // 10),
            envoys=envoys,
            changes=plan.watch_changes,
        )
        out["registry_watch"].append(asyncio.run(registry_watch.run(args, path)))
    out["idle"] = []
    for registry, replicas in plan.idle:
        path = workdir / f"idle-{registry}-{replicas}"
        path.mkdir()
        out["idle"].append(
            idle.run(registry=registry, replicas=replicas, seconds=plan.idle_seconds, workdir=path)
        )
    out["fleet"] = []
    for streams in plan.fleet:
        path = workdir / f"fleet-{streams}"
        path.mkdir()
        out["fleet"].append(
            asyncio.run(
                fleet.run_with_floor(
                    streams=streams,
                    servers=100,
                    replicas=1000,
                    changes=plan.fleet_changes,
                    workdir=path,
                )
            )
        )
    if plan.storm:
        path = workdir / f"storm-{plan.storm}"
        path.mkdir()
        out["storm"] = asyncio.run(
            fleet.run_with_floor(
                streams=plan.storm, servers=100, replicas=1000, changes=3, workdir=path
            )
        )
    # serve --workers: 1 worker against 2 in the same run.
    from bench import workers as workers_bench

    path = workdir / "workers"
    path.mkdir()
    streams, changes, idle = plan.workers
    out["workers"] = workers_bench.run(
        streams=streams, changes=changes, idle_registries=idle, workdir=path
    )
    path = workdir / "dataplane"
    path.mkdir()
    out["dataplane"] = dataplane.run(
        rate=plan.dataplane_rate, seconds=plan.dataplane_seconds, workdir=path
    )
    out["duration_s"] = round(time.monotonic() - started, 1)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"routeplane benchmarks ({result['plan']}): {result['cores']} cores, Envoy "
        f"{result['envoy']}, Python {result['python']}, git {result['git_revision']}, "
        f"{result['date']}, {result['duration_s']} s",
        "",
    ]
    lines += [
        "Pipeline step alone (no registry, no network): full rebuild = one fresh step, wall ms "
        "(median of 3); a change = one replica moved, CPU ms of the step that follows, p50 / p99",
        "| servers | replicas | full rebuild | change, 1 group | change, 10 groups |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result.get("pipeline", []):
        one, ten = row["change_cpu_ms_1_groups"], row["change_cpu_ms_10_groups"]
        lines.append(
            f"| {row['servers']} | {row['replicas']} | {row['full_rebuild_ms']} | "
            f"{one['p50']} / {one['p99']} | {ten['p50']} / {ten['p99']} |"
        )
    if result.get("pipeline_one_server"):
        lines += [
            "",
            "A change costs the change, not the fleet's shape: one replica moved within ONE "
            "server of N replicas, CPU ms of the pipeline step that follows (watch event -> new "
            "snapshots), p50 / p99, with 1 node group and with 10 (10 Envoys, each its own "
            "listen address, sharing the same endpoints); 10 / 1 = ratio of the p50s",
            "| replicas in the server | change, 1 group | change, 10 groups | 10 / 1 |",
            "| --- | --- | --- | --- |",
        ]
        for row in result["pipeline_one_server"]:
            one, ten = row["change_cpu_ms_1_groups"], row["change_cpu_ms_10_groups"]
            lines.append(
                f"| {row['replicas']} | {one['p50']} / {one['p99']} | {ten['p50']} / "
                f"{ten['p99']} | {row.get('ten_groups_vs_one_p50', '-')}x |"
            )
    if "autoscale_windows" in result:
        from bench import autoscale

        lines += autoscale.table(result["autoscale_windows"])
    if "load" in result:
        latency = result["load"]["latency"]
        lines += [
            "",
            "Load reports. Aggregation: synthetic LRS reports (each cluster one locality, 10 "
            "endpoints) taken through the LRS stream's own step, then one tick (sums, "
            "recommendations); CPU per report per cluster, and the share of one core projected "
            "for 1,000 proxies x 100 clusters reporting every second. Report -> recommendation: "
            f"a real Envoy reporting every {latency['interval_ms']:g} ms; {latency['held']} "
            "requests held open start at once, the clock stops when WatchLoad shows them all "
            f"in flight ({latency['tries']} tries)",
            "| clusters with traffic | CPU per report per cluster | tick | projected share of "
            "a core |",
            "| --- | --- | --- | --- |",
        ]
        for agg in result["load"]["aggregation"]:
            lines.append(
                f"| {agg['active_share']:.0%} | {agg['cpu_us_per_report_per_cluster']} us | "
                f"{agg['tick_ms']} ms | {agg['projected_core_share_1000x100_at_1s']:.0%} |"
            )
        lines.append(
            f"\nLoad step -> visible in WatchLoad: p50 {latency['p50_ms']} ms, max "
            f"{latency['max_ms']} ms (report interval {latency['interval_ms']:g} ms)"
        )
    lines += [
        "",
        "Propagation, registry commit (its own commit timestamp) -> first request answered "
        "by the new replica (SQLite, 1 Envoy), ms; cli: written by `routeplane replicas "
        "register`, api: by the registry API in-process",
        "| write | ADS | p50 | p90 | p99 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["propagation"]:
        for kind in ("api", "cli"):
            s = row[kind]
            lines.append(
                f"| {kind} | {row['ads']} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |"
            )
    fs = result["filesystem_baseline"]
    lines.append(
        f"| file rename (baseline: Envoy's own filesystem EDS) | - | {fs['p50_ms']} | "
        f"{fs['p90_ms']} | {fs['p99_ms']} |"
    )
    if "cold_start" in result:
        cold = result["cold_start"]["commit_to_held_answered"]
        lines.append(
            f"| api, cold start in hold mode: commit -> the held request answered "
            f"({result['cold_start']['tries']} tries) | delta | {cold['p50_ms']} | "
            f"{cold['p90_ms']} | {cold['p99_ms']} |"
        )
    if result.get("propagation_by_size"):
        from bench import propagation

        lines += ["", *propagation.size_table(result["propagation_by_size"])]
    if "proxyless" in result:
        lines += [
            "",
            "Proxyless gRPC: registry commit (its own commit timestamp) -> first RPC answered by "
            "the new replica, for gRPC's own xDS client (xds:///, SotW ADS) and, for the same "
            "changes, a gRPC caller through an Envoy (delta ADS); SQLite, api writes, "
            f"{result['proxyless']['tries']} tries, ms",
            "| caller | p50 | p90 | p99 |",
            "| --- | --- | --- | --- |",
        ]
        for caller, label in (("proxyless", "proxyless gRPC client"), ("envoy", "via Envoy")):
            s = result["proxyless"][caller]
            lines.append(f"| {label} | {s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} |")
    lines += [
        "",
        "Registry commit -> control plane -> every Envoy ACKed (control plane in-process, real "
        "Envoys, delta), ms (p50 / p99). Clocks start at the registry's own commit timestamp "
        "(SQLite: written in the commit; Spanner: the commit timestamp): sees it = the pass "
        "that holds the change begins; all ACKed = the last Envoy's ACK of the new EDS is "
        "read. Pass CPU = the loop thread's CPU in that pass; process CPU = the whole "
        "process from the write call's return to the last ACK (watch read, pass, pushes, "
        "ACKs, and the benchmark's own waiting)",
        "| registry | replicas | envoys | sees it | all ACKed | pass CPU | process CPU | "
        "full read | full rebuild | snapshot bytes per group |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["registry_watch"]:
        seen, ack, cpu = (
            row[k]
            for k in ("commit_to_seen_ms", "commit_to_all_acked_ms", "reconcile_cpu_per_change_ms")
        )
        process = row.get("process_cpu_per_change_ms", {"p50": "-", "p99": "-"})
        lines.append(
            f"| {row['registry']} | {row['replicas']} | {row['envoys']} | "
            f"{seen['p50']} / {seen['p99']} | {ack['p50']} / {ack['p99']} | "
            f"{cpu['p50']} / {cpu['p99']} | {process['p50']} / {process['p99']} | "
            f"{row['full_read_ms']} | "
            f"{row['full_rebuild_ms']} | {row.get('snapshot_bytes_per_group', '-')} |"
        )
    if result.get("idle"):
        lines += [
            "",
            "Idle cost: `routeplane serve` with no proxy and nothing changing in the registry, "
            "default watch interval (SQLite 5 ms, Spanner 10 ms); process CPU over a quiet "
            "window (the whole process: watch, load-report ticks, timers), share of one core; "
            "for Spanner also the emulator's; vs smallest = CPU ms per second against the same "
            "registry with the fewest replicas, in the same run (idle should not grow with the "
            "registry)",
            "| registry | replicas | idle CPU | CPU ms per second | emulator CPU | vs smallest |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        smallest: dict[str, float] = {}
        for row in sorted(result["idle"], key=lambda r: r["replicas"]):
            smallest.setdefault(row["registry"], row["idle_cpu_ms_per_s"])
        for row in result["idle"]:
            emulator = row.get("emulator_cpu_percent")
            base = smallest[row["registry"]]
            vs = f"{row['idle_cpu_ms_per_s'] / base:.2f}x" if base else "-"
            lines.append(
                f"| {row['registry']} | {row['replicas']} | {row['idle_cpu_percent']}% | "
                f"{row['idle_cpu_ms_per_s']} | {'-' if emulator is None else f'{emulator}%'} | "
                f"{vs} |"
            )
    lines += [
        "",
        "Simulated fleet (delta ADS streams over real gRPC, 100 servers / 1,000 replicas; the "
        "fleet in the benchmark's process, the server in its own). Each size runs twice in the "
        "same run: against the floor (`bench.floor`: a bare grpc.aio server pushing pre-encoded "
        "bytes of the same resources and reading the ACKs) and against `routeplane serve`; "
        "vs floor = routeplane / floor for CPU per stream per push, one change p50 and p99, "
        "memory per stream. Errors: every stream that ended with a status other than "
        "RESOURCE_EXHAUSTED, by code; refused: RESOURCE_EXHAUSTED only (admission control), "
        "retried with backoff. One change: routeplane, the registry's commit timestamp (the "
        "floor: the push request) -> the last stream has written its ACK. CPU per stream per "
        "push: the server process's CPU over the change window, less its idle rate, per stream",
        "| streams | server | reconnect storm: all served | errors | refused, retried | "
        "/metrics during the storm, max | one change: all ACKed p50 / p99 ms | CPU per stream "
        "per push | memory per stream | idle CPU | vs floor: CPU / p50 / p99 / memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    storm = [result["storm"]] if "storm" in result else []
    for row in [*result["fleet"], *storm]:
        floor = row.get("floor")
        if floor is not None:
            lines.append(_fleet_row(floor, "floor (bare grpc.aio)", "-"))
        ratios = row.get("vs_floor")
        vs = (
            " / ".join(
                "-" if ratios[k] is None else f"{ratios[k]}x"
                for k in (
                    "cpu_per_stream_per_push",
                    "fanout_p50",
                    "fanout_p99",
                    "memory_per_stream",
                )
            )
            if ratios
            else "-"
        )
        lines.append(_fleet_row(row, "routeplane", vs))
    if "workers" in result:
        from bench import workers as workers_bench

        lines += workers_bench.table(result["workers"])
    dp = result["dataplane"]
    lines += [
        "",
        f"Data plane: HTTP/1.1 and gRPC at a fixed {dp['rate_per_s']:g} requests/s (open "
        f"loop), WebSocket round trips one at a time on one connection (closed loop); "
        f"{dp['seconds']:g} s per target in 5 interleaved rounds. Latency in ms over all "
        "rounds; ratio against the static Envoy = median of the 5 per-round ratios "
        "[min-max]",
        "| protocol | target | p50 | p99 | p99.9 | errors | p50 ratio | p99 ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in dp["rows"]:
        lines.append(
            f"| {row['protocol']} | {row['target']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['p999_ms']} | {row['errors']} | "
            f"{row['vs_static_p50']} {_spread(row, 'p50')} | "
            f"{row['vs_static_p99']} {_spread(row, 'p99')} |"
        )
    return "\n".join(lines) + "\n"


def _fleet_row(row: dict[str, Any], server: str, vs: str) -> str:
    admin = (
        f"{row['admin_during_storm_max_ms']} ms" if row.get("admin_during_storm_max_ms") else "-"
    )
    return (
        f"| {row['streams']} | {server} | {row['storm_s']} s | {row['storm_errors']}"
        f"{_codes(row.get('storm_error_codes', {}))} | "
        f"{row.get('storm_refusals_retried', '-')} | {admin} | "
        f"{row['fanout_ms']['p50']} / {row['fanout_ms']['p99']} | "
        f"{row['cpu_us_per_stream_per_push']} us | {row['rss_per_stream_kb']} KB | "
        f"{row['idle_cpu_percent']}% | {vs} |"
    )


def _spread(row: dict[str, Any], which: str) -> str:
    low_high = row.get(f"vs_static_{which}_spread")
    return f"[{low_high[0]}-{low_high[1]}]" if low_high else ""


def _codes(codes: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(codes.items()))})" if codes else ""


def write_benchmarks_md(result: dict[str, Any], rendered: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    marker = "<!-- results -->"
    head = text.split(marker)[0] if marker in text else "# Benchmarks\n\n"
    path.write_text(f"{head}{marker}\n\n{rendered}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", choices=["full", "quick", "smoke"], default="full")
    parser.add_argument("--no-write", action="store_true", help="Print only.")
    args = parser.parse_args(argv)
    logs.configure(level="warning", json=True)
    plan = {"full": FULL, "quick": QUICK, "smoke": SMOKE}[args.plan]
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        result = run_plan(plan, Path(tmp))
    rendered = table(result)
    print(rendered)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{plan.name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
        if plan is FULL:
            write_benchmarks_md(result, rendered)
            print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
