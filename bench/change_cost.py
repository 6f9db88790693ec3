"""What one replica change costs the whole ``routeplane serve`` process, measured from outside.

One server of N replicas (SQLite, the default registry), one real Envoy (delta ADS) connected,
``serve --workers 1`` and the default worker group. A batch of changes, one at a time: a replica
registered, then the same one deregistered, ... (each is one registry commit that moves one
endpoint); after each, the benchmark waits until Envoy's own count of the cluster's members
says it applied it (its admin stats: Envoy's CPU, not the control plane's). The figure is the
process group's CPU over the batch (every thread of the supervisor and its workers, from the
scheduler's nanosecond account, ``bench.cpu``), less its idle rate (the mean of the seconds
just before and just after), divided by the changes. The baseline from the same run: the pure
pipeline step alone for the same change (``bench.pipeline``'s one-server row), which is what an
ideal process would spend. ``--registry spanner`` runs the same on the Spanner emulator (its own
CPU not counted).

``python -m bench.change_cost --replicas 1000 10000 --workers 1 0 --changes 100``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from bench import pipeline
from bench.fleet import proc_cpu, proc_rss
from control_plane.registry import Registry, open_registry
from control_plane.translate import names
from harness.processes import ControlPlane, Envoy, http_get
from harness.spanner_emulator import Emulator
from harness.waiting import wait_until

SERVER = "echo"
# Nothing listens there: no request is sent to these endpoints (Envoy does not health check
# them and no traffic goes through it), they only make the ClusterLoadAssignment big.
FILLER_HOST = "127.0.0.3"
IDLE_SECONDS = 2.0


def group_pids(pid: int) -> list[int]:
    """``pid`` and its children (a supervisor's workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def each_cpu(pids: list[int]) -> list[float]:
    """Each process's CPU seconds."""
    return [proc_cpu(pid) for pid in pids]


def rates(before: list[float], after: list[float], seconds: float) -> list[float]:
    return [(b - a) / seconds for a, b in zip(before, after, strict=True)]


def members(admin: str, cluster: str) -> int:
    """Envoy's own count of the endpoints of ``cluster`` (-1: unknown yet)."""
    stat = f"cluster.{cluster}.membership_total"
    status, body = http_get(f"http://{admin}/stats?filter={urllib.parse.quote(f'^{stat}$')}")
    if status != 200:
        return -1
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if name == stat:
            return int(value)
    return -1


def fill(registry: Registry, replicas: int) -> None:
    """One server of ``replicas`` READY replicas, in one transaction (benchmarks only)."""
    registry.create_server(name=SERVER, hostnames=["echo.local"], protocol="http")
    if type(registry).__name__ != "SqliteRegistry":
        _fill_spanner(registry, replicas)
        return
    now = time.time()
    rows = [
        (f"r-fill{i:06d}", SERVER, FILLER_HOST, 20_000 + i, "us-west", now) for i in range(replicas)
    ]
    with registry._tx() as db:  # type: ignore[attr-defined]
        db.executemany(
            "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, '', 100, 'READY', NULL, ?, NULL, NULL)",
            rows,
        )
        registry._bump(db, now, SERVER)  # type: ignore[attr-defined]


SPANNER_COLUMNS = (
    "ServerName",
    "Id",
    "Host",
    "Port",
    "Region",
    "Zone",
    "Weight",
    "State",
    "UpdatedAt",
)


def _fill_spanner(registry: Registry, replicas: int) -> None:
    from google.cloud import spanner

    database = registry.database  # type: ignore[attr-defined]
    for start in range(0, replicas, 2000):
        rows = [
            (SERVER, f"r-fill{i:06d}", FILLER_HOST, 20_000 + i, "us-west", "", 100, "READY")
            for i in range(start, min(replicas, start + 2000))
        ]
        with database.batch() as batch:
            batch.insert(
                "Replicas",
                columns=SPANNER_COLUMNS,
                values=[(*row, spanner.COMMIT_TIMESTAMP) for row in rows],
            )


def one_size(
    *, replicas: int, workers: int, changes: int, workdir: Path, registry_url: str | None = None
) -> dict[str, Any]:
    cp = ControlPlane.create(workdir, registry=registry_url, extra=["--workers", str(workers)])
    registry = open_registry(cp.registry)
    registry.init()
    fill(registry, replicas)
    cp.start()
    envoy = None
    cluster = names.cluster(workspace="default", server=SERVER)
    try:
        cp.wait_ready(timeout=120)
        pids = group_pids(cp.pid)
        envoy = Envoy.create(
            workdir, node_id=f"change-{replicas}-{workers}", region="us-west", xds=[cp.xds]
        )
        envoy.start()
        envoy.wait_live(timeout=120)
        admin = envoy.admin
        wait_until(
            lambda: members(admin, cluster) == replicas,
            timeout=120,
            interval=0.05,
            what=f"Envoy has the {replicas} endpoints",
        )
        time.sleep(1.0)  # the first push's ACK and start-up work settle before the idle window
        idle_started, idle_cpu = time.perf_counter(), each_cpu(pids)
        time.sleep(IDLE_SECONDS)
        idle_rates = rates(idle_cpu, each_cpu(pids), time.perf_counter() - idle_started)
        started, cpu_before = time.perf_counter(), each_cpu(pids)
        added: str | None = None
        for i in range(changes):
            if added is None:
                added = registry.register_replica(
                    server=SERVER, address=f"{FILLER_HOST}:{10_000 + i}", region="us-west"
                ).id
                want = replicas + 1
            else:
                registry.deregister_replica(added)
                added, want = None, replicas
            wait_until(
                lambda want=want: members(admin, cluster) == want,
                timeout=30,
                interval=0.001,
                what=f"change {i} applied by Envoy",
            )
        window = time.perf_counter() - started
        spent = each_cpu(pids)
        # The idle rate again after the batch: the mean of the two is taken out (the machine is
        # shared, and an idle rate from one window alone moves the result by its noise).
        after_started, after_cpu = time.perf_counter(), each_cpu(pids)
        time.sleep(IDLE_SECONDS)
        idle_after = rates(after_cpu, each_cpu(pids), time.perf_counter() - after_started)
        per_process_ms = [
            max(0.0, spent[i] - cpu_before[i] - (idle_rates[i] + idle_after[i]) / 2 * window)
            / changes
            * 1000
            for i in range(len(pids))
        ]
        idle_rate = (sum(idle_rates) + sum(idle_after)) / 2
        per_change_ms = sum(per_process_ms)
        return {
            "registry": cp.registry.split(":", 1)[0],
            "replicas": replicas,
            "workers": workers,
            "processes": len(pids),
            "changes": changes,
            "window_s": round(window, 2),
            "idle_cpu_percent": round(idle_rate * 100, 2),
            "cpu_ms_per_change": round(per_change_ms, 2),
            # The busiest process of the group (the goal is per process): under --workers N
            # every worker reads the change and runs the step, one of them pushes to the Envoy.
            "cpu_ms_per_change_busiest_process": round(max(per_process_ms), 2),
            "group_rss_mb": round(sum(proc_rss(pid) for pid in pids) / 2**20, 1),
        }
    finally:
        registry.close()
        if envoy is not None:
            envoy.stop()
        cp.stop()


def run(
    *,
    sizes: tuple[int, ...],
    worker_counts: tuple[int, ...],
    changes: int,
    workdir: Path,
    registries: tuple[str, ...] = ("sqlite",),
) -> dict[str, Any]:
    rows = []
    for replicas in sizes:
        step = pipeline.run(1, replicas, changes=max(changes, 20))["change_cpu_ms_1_groups"]
        for kind in registries:
            for workers in worker_counts:
                path = workdir / f"change-{kind}-{replicas}-{workers}"
                path.mkdir()
                row = _with_registry(
                    kind, path, replicas=replicas, workers=workers, changes=changes
                )
                row["pipeline_step_ms_p50"] = step["p50"]
                row["vs_step"] = round(row["cpu_ms_per_change"] / max(step["p50"], 1e-6), 1)
                rows.append(row)
    return {"rows": rows, "goal_ms_at_1000": 2.0}


def _with_registry(
    kind: str, workdir: Path, *, replicas: int, workers: int, changes: int
) -> dict[str, Any]:
    """One row on SQLite (a file in ``workdir``) or on the Spanner emulator (started here for
    the row, on a free loopback port; its own CPU is not counted)."""
    if kind == "sqlite":
        return one_size(replicas=replicas, workers=workers, changes=changes, workdir=workdir)
    emulator = Emulator.create(workdir)
    emulator.start()
    os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
    try:
        return one_size(
            replicas=replicas,
            workers=workers,
            changes=changes,
            workdir=workdir,
            registry_url="spanner://projects/bench/instances/rp/databases/registry",
        )
    finally:
        emulator.stop()
        os.environ.pop("SPANNER_EMULATOR_HOST", None)


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines for bench/run.py's table."""
    rows = result["rows"]
    if not rows:
        return []
    lines = [
        "",
        "A change costs the change, in the whole process: `routeplane serve` with one "
        "server of N replicas, one Envoy (delta) connected; one replica registered or "
        "deregistered per change, each waited for until Envoy's own member count shows it; "
        "CPU: every thread of the process group (the supervisor and its workers) over the "
        f"batch, less its idle rate, per change (N = {rows[0]['changes']} changes a row); "
        "baseline, same run: the pipeline step alone for one change in the same server "
        "(p50, the pipeline table); spanner: the emulator, whose own CPU is not counted. Goal: <= "
        f"{result['goal_ms_at_1000']} ms per process at 1,000 replicas",
        "| registry | replicas | workers (processes) | CPU per change: the group / its busiest "
        "process | pipeline step alone | ratio (group) | idle CPU | memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        workers = "default" if row["workers"] == 0 else str(row["workers"])
        lines.append(
            f"| {row.get('registry', 'sqlite')} | {row['replicas']:,} | {workers} "
            f"({row['processes']}) | "
            f"{row['cpu_ms_per_change']} / {row['cpu_ms_per_change_busiest_process']} ms | "
            f"{row['pipeline_step_ms_p50']} ms | "
            f"{row['vs_step']}x | {row['idle_cpu_percent']}% | {row['group_rss_mb']} MB |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 0], help="0: serve's default group"
    )
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--registry", nargs="+", default=["sqlite"], choices=["sqlite", "spanner"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-change-") as tmp:
        result = run(
            sizes=tuple(args.replicas),
            worker_counts=tuple(args.workers),
            changes=args.changes,
            workdir=Path(tmp),
            registries=tuple(args.registry),
        )
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
