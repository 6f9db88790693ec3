"""Idle cost: a real ``routeplane serve`` watching a registry in which nothing changes.

For each registry (SQLite; Spanner on the emulator), N replicas are loaded, the control plane
starts with its default watch interval (SQLite 5 ms, Spanner 10 ms) and no proxy connected, and
its process CPU is read from /proc over a quiet window: the share of one core the watch costs
while nothing happens (for Spanner also the emulator's, which stands in for the database).
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

from bench.fleet import proc_cpu
from bench.registry_watch import bulk_load
from control_plane.registry import open_registry
from tests.processes import ControlPlane
from tests.spanner_emulator import Emulator

SPANNER_URL = "spanner://projects/bench/instances/rp/databases/registry"


def _cpu_share(pid: int, seconds: float) -> float:
    started, cpu = time.perf_counter(), proc_cpu(pid)
    time.sleep(seconds)
    return (proc_cpu(pid) - cpu) / (time.perf_counter() - started)


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
        store.close()
        # One process (bench.workers measures a group's idle cost).
        cp = ControlPlane.create(workdir, registry=url, extra=["--workers", "1"])
        cp.start()
        cp.wait_ready(timeout=120)
        time.sleep(1.0)  # past start-up work (first read, first snapshot)
        emulator_pid = emulator.process.pid if emulator and emulator.process else None
        emulator_cpu = proc_cpu(emulator_pid) if emulator_pid else 0.0
        started = time.perf_counter()
        share = _cpu_share(cp.pid, seconds)
        window = time.perf_counter() - started
        row: dict[str, Any] = {
            "registry": registry,
            "replicas": replicas,
            "seconds": seconds,
            "idle_cpu_percent": round(share * 100, 2),
            "idle_cpu_ms_per_s": round(share * 1000, 1),
        }
        if emulator_pid:
            row["emulator_cpu_percent"] = round(
                (proc_cpu(emulator_pid) - emulator_cpu) / window * 100, 2
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
    parser.add_argument("--seconds", type=float, default=5.0)
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
