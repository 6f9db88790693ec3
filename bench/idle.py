"""Idle cost: a real ``routeplane serve`` watching a registry in which nothing changes.

For each registry (SQLite; Spanner on the emulator), N replicas are loaded, the control plane
starts with its default watch (SQLite: woken by inotify, a safety poll every 100 ms, or every
5 ms without inotify; Spanner: every 10 ms) and no proxy connected, and its CPU is read over a
quiet window from the scheduler's nanosecond account of every thread (``bench.cpu``; not
/proc/PID/stat's 10 ms ticks): the share of one core the watch costs while nothing happens (for
Spanner also the emulator's processes', which stand in for the database). Also its resident
memory at rest.
Run: ``python -m bench.idle --registry sqlite spanner --replicas 10000``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cpu import cpu_seconds
from bench.fleet import proc_rss
from bench.registry_watch import bulk_load
from bench.workers import watch_poll_interval
from control_plane.registry import open_registry
from harness.processes import ControlPlane
from harness.spanner_emulator import Emulator

SPANNER_URL = "spanner://projects/bench/instances/rp/databases/registry"


def _cpu_share(pid: int, seconds: float) -> float:
    """The share of one core ``pid`` used over ``seconds``, from ns counters (bench.cpu)."""
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu) / (time.perf_counter() - started)


def run(*, registry: str, replicas: int, seconds: float, workdir: Path) -> dict[str, Any]:
    emulator = None
    cp = None
    previous = os.environ.get("SPANNER_EMULATOR_HOST")
    try:
        if registry == "spanner":
            emulator = Emulator.create(workdir)
            emulator.start()
            os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
            url = SPANNER_URL
        else:
            url = f"sqlite://{workdir / 'registry.db'}"
        store = open_registry(url)
        store.init()
        bulk_load(store, servers=max(1, replicas // 10), replicas=replicas)
        poll_interval = watch_poll_interval(store, registry, workdir)
        store.close()
        # One process (bench.workers measures a group's idle cost).
        cp = ControlPlane.create(workdir, registry=url, extra=["--workers", "1"])
        cp.start()
        cp.wait_ready(timeout=120)
        time.sleep(1.0)  # past start-up work (first read, first snapshot)
        emulator_pid = emulator.process.pid if emulator and emulator.process else None
        emulator_cpu = cpu_seconds(emulator_pid, children=True) if emulator_pid else 0.0
        started = time.perf_counter()
        share = _cpu_share(cp.pid, seconds)
        window = time.perf_counter() - started
        row: dict[str, Any] = {
            "registry": registry,
            "replicas": replicas,
            "seconds": seconds,
            "idle_cpu_percent": round(share * 100, 3),
            "idle_cpu_ms_per_s": round(share * 1000, 2),
            "poll_interval_ms": round(poll_interval * 1000, 1),
            "rss_mb": round(proc_rss(cp.pid) / 2**20, 1),
        }
        if emulator_pid:
            row["emulator_cpu_percent"] = round(
                (cpu_seconds(emulator_pid, children=True) - emulator_cpu) / window * 100, 2
            )
        return row
    finally:
        if cp is not None:
            cp.stop()
        if emulator is not None:
            emulator.stop()
        if previous is None:
            os.environ.pop("SPANNER_EMULATOR_HOST", None)
        else:
            os.environ["SPANNER_EMULATOR_HOST"] = previous


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--registry", nargs="+", choices=["sqlite", "spanner"], default=["sqlite", "spanner"]
    )
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows = []
    for registry in args.registry:
        with tempfile.TemporaryDirectory(prefix="routeplane-idle-") as tmp:
            rows.append(
                run(
                    registry=registry,
                    replicas=args.replicas,
                    seconds=args.seconds,
                    workdir=Path(tmp),
                )
            )
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
