"""`make bench` / `make bench-quick`: every benchmark, its JSON and BENCHMARKS.md (the tables are
`bench/tables.py`).

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

from bench.tables import table
from control_plane import logs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    name: str
    # Propagation (api writes) and proxyless: 200 tries give a p99; CLI writes start a process
    # (~1 s a try), so they have fewer and the table shows their max.
    propagation_tries: int
    propagation_cli_tries: int
    watch: tuple[tuple[str, int, int], ...]  # (registry, replicas, envoys)
    watch_changes: int
    fleet: tuple[int, ...]
    fleet_changes: int
    dataplane_rate: float
    dataplane_seconds: float
    pipeline: tuple[int, ...] = (1000, 10_000)  # replicas, 10 per server
    pipeline_changes: int = 200
    load: tuple[int, int, int] = (200, 100, 20)  # proxies, clusters, tries
    # Load reports through a real `serve --workers 1`: proxies, clusters, window (s).
    load_fleet: tuple[int, int, float] = (100, 100, 10.0)
    # The LRS fleet against the bare grpc.aio LRS floor (bench/lrs_fleet.py): (proxies,
    # clusters, autoscaling rule) rows, the CPU window (s) and the report interval (s).
    lrs_fleet: tuple[tuple[int, int, str], ...] = (
        (100, 10, "up"),
        (100, 100, "up"),
        (1000, 10, "up"),
        (1000, 100, "up"),
        (1000, 100, "one-down"),
        (1000, 100, "down"),
    )
    lrs_fleet_seconds: float = 5.0
    lrs_fleet_interval: float = 1.0
    cold_start_tries: int = 20
    # KEDA external-push (bench/keda.py): cold start through Envoy -> StreamIsActive true, as
    # many tries through the KEDA replica's own Envoy and through the other replica's.
    keda_tries: int = 200
    # One server of N replicas, one replica changed, 1 and 10 node groups.
    one_server: tuple[int, ...] = (10, 100, 1000, 10_000)
    # The same change in a whole `serve` process behind one Envoy (bench/change_cost.py): one
    # server of each size, each worker count (2: a group; 0 is the default, one process below
    # 4 cores), changes a row.
    change_cost: tuple[tuple[int, ...], tuple[int, ...], int] = ((1000, 10_000), (1, 2), 100)
    # Each registry at 10 replicas (the baseline: idle should not grow with the registry) and
    # at 10,000.
    idle: tuple[tuple[str, int], ...] = (
        ("sqlite", 10),
        ("sqlite", 10_000),
        ("spanner", 10),
        ("spanner", 10_000),
    )
    idle_seconds: float = 10.0
    # A reconnect storm of this many streams, against the floor and routeplane (0: none), and
    # the changes pushed to it (each ~2 s at 10,000 streams).
    storm: int = 0
    storm_changes: int = 10
    # Propagation at each size (one server of N replicas) against Envoy's own filesystem EDS.
    propagation_sizes: tuple[int, ...] = (10, 1000, 10_000)
    propagation_size_tries: int = 200
    # serve --workers, 1 against 2 (bench/workers.py): streams, changes, idle registries.
    workers: tuple[int, int, tuple[str, ...]] = (1000, 20, ("sqlite", "spanner"))
    workers_idle_seconds: float = 10.0
    # --workers default: one worker per core against one, with Envoys on the same cores
    # (bench/workers_default.py): replicas in the one server, Envoys, changes.
    workers_default: tuple[int, int, int] = (1000, 10, 20)
    # The autoscaling rule's scale_down_window (bench/autoscale.py), hours.
    autoscale_hours: float = 24.0
    # The load view's idle cost (bench/idle_load.py): servers with autoscaling (0: none), the
    # worker counts, the CPU window (s).
    idle_load: tuple[int, tuple[int, ...], float] = (10_000, (1, 2), 20.0)
    # A traffic split change against ordinary propagation in the same run (bench/traffic.py):
    # tries of each (a few ms a try).
    traffic_tries: int = 200
    # A rollback under a steady stream (bench/rollout.py): CLI rollout then CLI rollback, each
    # try ~3 s (two processes started, one quiet second); under 200 the table shows the max.
    rollout_tries: int = 50
    # Fleet-wide load (bench/fleet_load.py): registries, servers with traffic, tries of the
    # load step, report interval (s), writes/s window (s); no registries: not run.
    # Balancing by reported load (bench/orca.py): counted seconds per segment, rounds (each
    # policy one segment a round, the order rotating), warm-up seconds per segment, load (a
    # share of the replicas' capacity).
    orca: tuple[float, int, float, float] = (12.0, 3, 3.0, 0.7)
    fleet_load: tuple[tuple[str, ...], tuple[int, ...], int, float, float] = (
        ("sqlite", "spanner"),
        (10, 1000),
        100,
        1.0,
        5.0,
    )
    # The registry at scale on the Spanner emulator (bench/heartbeats.py): replica rows, seconds
    # of each phase (no heartbeats, then heartbeats), lease renewals per commit; 0 rows: not run.
    heartbeats: tuple[int, float, int] = (100_000, 10.0, 5)


FULL = Plan(
    "full",
    200,
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
    200,
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
    pipeline_changes=50,
    load_fleet=(50, 100, 5.0),
    change_cost=((1000,), (1, 2), 50),
    lrs_fleet=((100, 100, "up"), (1000, 100, "up")),
    lrs_fleet_seconds=3.0,
    idle=(("sqlite", 1000),),
    idle_seconds=5.0,
    workers=(100, 5, ("sqlite",)),
    workers_idle_seconds=5.0,
    workers_default=(1000, 4, 5),
    propagation_sizes=(10, 1000),
    propagation_size_tries=5,
    autoscale_hours=1.0,
    idle_load=(1000, (1,), 5.0),
    keda_tries=20,
    fleet_load=(("sqlite",), (10, 1000), 10, 0.5, 2.0),
    traffic_tries=20,
    rollout_tries=20,
    orca=(5.0, 1, 2.0, 0.7),
    heartbeats=(10_000, 3.0, 5),
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
    2.0,  # 100 requests a target (~40 ms of Envoy CPU: /proc counts it in 10 ms ticks)
    (20,),
    5,
    (5, 5, 2),
    one_server=(10,),
    change_cost=((20,), (1,), 4),
    load_fleet=(5, 5, 1.0),
    # One tiny row, reports every 0.2 s, so that the run takes a few seconds.
    lrs_fleet=((5, 5, "up"),),
    lrs_fleet_seconds=0.4,
    lrs_fleet_interval=0.2,
    idle=(("sqlite", 20),),
    idle_seconds=0.5,
    cold_start_tries=2,
    keda_tries=2,
    workers=(5, 2, ()),
    workers_idle_seconds=0.5,
    workers_default=(20, 1, 2),
    propagation_sizes=(10,),
    propagation_size_tries=2,
    autoscale_hours=0.05,
    idle_load=(0, (), 0.0),
    fleet_load=(("sqlite",), (10,), 2, 0.5, 1.0),
    traffic_tries=2,
    rollout_tries=2,
    orca=(0.8, 1, 1.0, 0.3),  # ~15 s; a light load, so round robin's backlog drains at once
    heartbeats=(200, 0.5, 5),  # a few seconds, most of it the emulator starting
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
        change_cost,
        cold_start,
        dataplane,
        fleet,
        fleet_load,
        heartbeats,
        idle,
        idle_load,
        keda,
        load,
        lrs_fleet,
        orca,
        pipeline,
        propagation,
        proxyless,
        registry_watch,
        rollout,
        traffic,
    )

    out: dict[str, Any] = {"plan": plan.name, **versions()}
    started = time.monotonic()
    out["pipeline"] = [
        pipeline.run(max(1, replicas // 10), replicas, changes=plan.pipeline_changes)
        for replicas in plan.pipeline
    ]
    out["pipeline_one_server"] = pipeline.one_server(plan.one_server, changes=plan.pipeline_changes)
    sizes, worker_counts, changes = plan.change_cost
    path = workdir / "change-cost"
    path.mkdir()
    out["change_cost"] = change_cost.run(
        sizes=sizes, worker_counts=worker_counts, changes=changes, workdir=path
    )
    out["autoscale_windows"] = autoscale.run(hours=plan.autoscale_hours)
    path = workdir / "load"
    path.mkdir()
    proxies, clusters, tries = plan.load
    out["load"] = load.run(
        proxies=proxies, clusters=clusters, tries=tries, workdir=path, fleet=plan.load_fleet
    )
    if plan.lrs_fleet:
        path = workdir / "lrs-fleet"
        path.mkdir()
        out["lrs_fleet"] = lrs_fleet.run(
            sizes=plan.lrs_fleet,
            seconds=plan.lrs_fleet_seconds,
            interval=plan.lrs_fleet_interval,
            workdir=path,
        )
    out["propagation"] = []
    for ads in ("delta", "sotw"):
        path = workdir / f"prop-{ads}"
        path.mkdir()
        out["propagation"].append(
            propagation.run_variant(
                path, ads=ads, tries=plan.propagation_tries, cli_tries=plan.propagation_cli_tries
            )
        )
    path = workdir / "cold-start"
    path.mkdir()
    out["cold_start"] = cold_start.run(path, tries=plan.cold_start_tries)
    path = workdir / "keda"
    path.mkdir()
    out["keda"] = keda.run(path, tries=plan.keda_tries)
    path = workdir / "traffic"
    path.mkdir()
    out["traffic"] = traffic.run(path, tries=plan.traffic_tries)
    path = workdir / "orca"
    path.mkdir()
    seconds, rounds, warmup, share = plan.orca
    out["orca"] = orca.run(path, seconds=seconds, rounds=rounds, warmup=warmup, load=share)
    path = workdir / "rollout"
    path.mkdir()
    out["rollout"] = rollout.run(path, tries=plan.rollout_tries)
    path = workdir / "proxyless"
    path.mkdir()
    out["proxyless"] = proxyless.run(tries=plan.propagation_tries, workdir=path)
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
    rows, phase_seconds, renewals = plan.heartbeats
    if rows:
        path = workdir / "heartbeats"
        path.mkdir()
        out["heartbeats"] = heartbeats.run(
            replicas=rows, seconds=phase_seconds, batch=renewals, workdir=path
        )
    servers, worker_counts, window = plan.idle_load
    out["idle_load"] = []
    for count in worker_counts if servers else ():
        path = workdir / f"idle-load-{count}"
        path.mkdir()
        out["idle_load"].append(
            idle_load.run(servers=servers, workers=count, seconds=window, workdir=path)
        )
    registries, fleet_servers, fleet_tries, fleet_interval, fleet_window = plan.fleet_load
    if registries:
        out["fleet_load"] = fleet_load.run(
            registries=registries,
            servers=fleet_servers,
            tries=fleet_tries,
            interval=fleet_interval,
            window=fleet_window,
        )
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
        streams=streams,
        changes=changes,
        idle_registries=idle,
        workdir=path,
        idle_seconds=plan.workers_idle_seconds,
    )
    from bench import workers_default

    path = workdir / "workers-default"
    path.mkdir()
    replicas, envoys, changes = plan.workers_default
    out["workers_default"] = workers_default.run(
        replicas=replicas, envoys=envoys, changes=changes, workdir=path
    )
    path = workdir / "dataplane"
    path.mkdir()
    out["dataplane"] = dataplane.run(
        rate=plan.dataplane_rate, seconds=plan.dataplane_seconds, workdir=path
    )
    out["duration_s"] = round(time.monotonic() - started, 1)
    return out


def write_benchmarks_md(result: dict[str, Any], rendered: str) -> None:
    """The full run's tables between the two markers; what is around them (runs of one bench
    made by hand, with their commands) stays."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else ""
    marker, end = "<!-- results -->", "<!-- end of results -->"
    head = text.split(marker)[0] if marker in text else "# Benchmarks\n\n"
    tail = text.split(end, 1)[1] if end in text else ""
    path.write_text(f"{head}{marker}\n\n{rendered.rstrip()}\n\n{end}{tail}")


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
