"""``serve --workers``: one worker per core (the rule ``--workers 0`` applied until issue 29)
against one worker, in the same run, with real Envoys on the same cores.

One server of N replicas (all DRAINING but one), E Envoys (delta ADS, ``--concurrency 1``) on
this machine; each change registers one READY replica (then deregisters it, also measured):
the registry's commit timestamp -> the last Envoy whose ``membership_healthy`` shows it (each
Envoy's admin polled on a keep-alive connection of its own). CPU per change: the whole process
group's (supervisor, watcher, workers) over the changes, less its idle rate; memory: the
group's resident set after them. The fleet-only load (simulated streams, no Envoy) is
``bench.workers``'s table, which now carries the group's memory too.

``python -m bench.workers_default --replicas 1000 --envoys 10 --changes 20``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.probe import HOST, filler_addresses
from bench.propagation import _add_draining, commit_time
from bench.stats import summarize, tail, tails_name
from bench.workers import group_cpu, group_pids, group_rss_mb
from control_plane.group.cores import available_cores, worker_count
from control_plane.registry import open_registry
from control_plane.translate import names
from harness.processes import ControlPlane, Envoy

CHANGE_TIMEOUT_S = 30.0
POLL_PAUSE_S = 0.0005  # between two looks at one Envoy's stats: a polling interval


class Members:
    """One Envoy's healthy member count of a cluster, on a keep-alive admin connection."""

    def __init__(self, admin: str, cluster: str) -> None:
        host, _, port = admin.rpartition(":")
        self.host, self.port = host, int(port)
        self.stat = f"cluster.{cluster}.membership_healthy"
        self.path = "/stats?filter=" + urllib.parse.quote(
            f"^cluster\\.{cluster}\\.membership_healthy$"
        )
        self.conn: http.client.HTTPConnection | None = None
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            for _ in range(2):
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                try:
                    self.conn.request("GET", self.path)
                    body = self.conn.getresponse().read().decode()
                    break
                except (OSError, http.client.HTTPException):
                    self.conn.close()
                    self.conn = None
            else:
                return -1
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if name == self.stat:
                return int(value)
        return -1

    def wait_for(self, wanted: int) -> float:
        """Poll until the count is ``wanted``; the wall time it first was."""
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.count() == wanted:
                return time.time()
            time.sleep(POLL_PAUSE_S)
        raise RuntimeError(f"an Envoy did not reach {wanted} healthy members in time")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def variant(
    *, workers: int, replicas: int, envoys: int, changes: int, workdir: Path
) -> dict[str, Any]:
    cp = ControlPlane.create(workdir, extra=["--workers", str(workers)])
    registry = open_registry(cp.registry)
    registry.create_server(name="echo", hostnames=[HOST], protocol="http")
    _add_draining(registry, "echo", filler_addresses(replicas - 1))
    registry.register_replica(server="echo", address="127.0.0.4:19999", region="us-west")
    cp.start()
    proxies: list[Envoy] = []
    members: list[Members] = []
    try:
        cp.wait_ready()
        proxies = [
            Envoy.create(workdir, node_id=f"edge-{i}", region="us-west", xds=[cp.xds])
            for i in range(envoys)
        ]
        for proxy in proxies:
            proxy.start()
        for proxy in proxies:
            proxy.wait_live(timeout=120)
        cluster = names.cluster(workspace="default", server="echo")
        members = [Members(proxy.admin, cluster) for proxy in proxies]
        pool = ThreadPoolExecutor(max_workers=envoys)

        def all_at(count: int) -> float:
            return max(pool.map(lambda m: m.wait_for(count), members))

        all_at(1)
        pids = group_pids(cp.pid)
        time.sleep(1.0)  # start-up work done
        idle_started, idle_cpu = time.perf_counter(), group_cpu(pids)
        time.sleep(2.0)
        idle_rate = (group_cpu(pids) - idle_cpu) / (time.perf_counter() - idle_started)
        added: list[float] = []
        removed: list[float] = []
        cpu_total = 0.0
        for attempt in range(changes + 1):  # the first warms up, uncounted
            cpu_before, window_started = group_cpu(pids), time.perf_counter()
            replica = registry.register_replica(
                server="echo", address=f"127.0.0.4:{30000 + attempt}", region="us-west"
            )
            committed = commit_time(cp.registry)
            up = all_at(2)
            registry.deregister_replica(replica.id)
            gone_committed = commit_time(cp.registry)
            down = all_at(1)
            window = time.perf_counter() - window_started
            if attempt:
                added.append((up - committed) * 1000)
                removed.append((down - gone_committed) * 1000)
                cpu_total += max(0.0, group_cpu(pids) - cpu_before - idle_rate * window)
        pool.shutdown()
        return {
            "workers": workers,
            "processes": len(pids),
            "replicas": replicas,
            "envoys": envoys,
            "added_ms": summarize(added, digits=1),
            "removed_ms": summarize(removed, digits=1),
            "cpu_ms_per_change": round(cpu_total / (2 * changes) * 1000, 2),
            "idle_cpu_percent": round(idle_rate * 100, 2),
            "group_rss_mb": group_rss_mb(pids),
        }
    finally:
        for member in members:
            member.close()
        for proxy in proxies:
            proxy.stop()
        registry.close()
        cp.stop()


def run(*, replicas: int, envoys: int, changes: int, workdir: Path) -> dict[str, Any]:
    """One worker per core against one worker (only one when this machine has one core)."""
    cores = available_cores()
    rows = []
    for workers in dict.fromkeys((cores, 1)):
        path = workdir / f"default-{workers}"
        path.mkdir()
        rows.append(
            variant(
                workers=workers, replicas=replicas, envoys=envoys, changes=changes, workdir=path
            )
        )
    return {"cores": cores, "auto": worker_count(0), "rows": rows}


def table(result: dict[str, Any]) -> list[str]:
    """Markdown lines for bench/run.py's table."""
    rows = result["rows"]
    if not rows:
        return []
    last = tails_name([s for row in rows for s in (row["added_ms"], row["removed_ms"])])
    one = next((r for r in rows if r["workers"] == 1), rows[-1])
    lines = [
        "",
        f"`--workers` default ({result['cores']} cores; `--workers 0` now runs "
        f"{result['auto']}): one worker per core (the rule before issue 29) against one, in the "
        f"same run, one server of {one['replicas']:,} replicas and {one['envoys']} Envoys on the "
        "same cores; a replica registered (then deregistered): the registry's commit -> the "
        "last Envoy counts it healthy (or no longer); CPU per change: the whole process group, "
        "less its idle rate; memory: the group's resident set",
        f"| workers | processes | added p50 / {last} ms | removed p50 / {last} ms | ratio to 1 "
        "worker (added p50) | CPU per change | idle CPU | group memory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ratio = row["added_ms"]["p50"] / max(one["added_ms"]["p50"], 1e-9)
        lines.append(
            f"| {row['workers']} | {row['processes']} | {row['added_ms']['p50']} / "
            f"{tail(row['added_ms'])} | {row['removed_ms']['p50']} / {tail(row['removed_ms'])} | "
            f"{ratio:.2f}x | {row['cpu_ms_per_change']} ms | {row['idle_cpu_percent']}% | "
            f"{row['group_rss_mb']} MB |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicas", type=int, default=1000)
    parser.add_argument("--envoys", type=int, default=10)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routeplane-workers-default-") as tmp:
        result = run(
            replicas=args.replicas, envoys=args.envoys, changes=args.changes, workdir=Path(tmp)
        )
    print(json.dumps(result, indent=2))
    print("\n".join(table(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
