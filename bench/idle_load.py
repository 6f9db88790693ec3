"""Idle cost of the load view: a real ``routeplane serve`` with N servers that all ask for a
recommendation (``autoscaling``), no proxy connected, nothing changing.

For ``--workers 1`` and ``2``: the process group's CPU over a quiet window, read from
``/proc/PID/task/*/schedstat`` (nanoseconds of run time, summed over threads and processes);
``/metrics`` bytes and time; ``routeplane load --json`` time (the whole CLI, start-up included)
and a ``GetLoad`` call's time; and how many updates a ``WatchLoad`` stream gets in 10 s (idle: a
view that does not change has nothing to send).
Run: ``python -m bench.idle_load --servers 10000 --workers 1 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane

SPEC = {
    "regions": ["us-west", "us-east"],
    "autoscaling": {"target_concurrency": 4, "min_replicas": 1, "max_replicas": 10},
}


def load_registry(url: str, *, servers: int) -> None:
    """``servers`` servers with autoscaling, one READY replica each (benchmarks only)."""
    store = open_registry(url)
    store.init()
    names = [f"s{i:05d}" for i in range(servers)]
    now = time.time()
    with store._tx() as db:  # type: ignore[attr-defined]
        db.executemany(
            "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at)"
            " VALUES (?, 'default', ?, 'http', ?, ?)",
            [(n, json.dumps([f"{n}.bench.local"]), json.dumps(SPEC), now) for n in names],
        )
        db.executemany(
            "INSERT INTO replicas VALUES (?, ?, '127.0.0.1', ?, ?, '', 100, 'READY', NULL, ?,"
            " NULL, NULL)",
            [
                (f"r{i:06d}", n, 10_000 + i, ["us-west", "us-east"][i % 2], now)
                for i, n in enumerate(names)
            ],
        )
        store._bump(db, now, *names)  # type: ignore[attr-defined]
    store.close()


def group_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def run_ns(pids: list[int]) -> int:
    """Run time in ns of every thread of ``pids`` (``/proc/PID/task/TID/schedstat``)."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
                total += int((task / "schedstat").read_text().split()[0])
    return total


def cpu_percent(pids: list[int], seconds: float) -> float:
    started, ns = time.perf_counter(), run_ns(pids)
    time.sleep(seconds)  # the measurement window
    return (run_ns(pids) - ns) / 1e9 / (time.perf_counter() - started) * 100


def scrape(admin: str) -> tuple[int, float]:
    """Bytes and seconds of one ``/metrics`` (bytes -1: no answer within 60 s)."""
    import urllib.request

    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=60) as answer:
            body = answer.read()
    except OSError:
        return -1, time.perf_counter() - started
    return len(body), time.perf_counter() - started


def cli_load(admin: str) -> tuple[float, float, str]:
    """Seconds, CPU seconds of the CLI process (start-up included), and "" or the CLI's error
    (it gives up after its 10 s call timeout)."""
    started = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime
    error = "" if done.returncode == 0 else done.stderr.strip()[-200:]
    return time.perf_counter() - started, cpu, error


def get_load(admin: str) -> tuple[int, float]:
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        started = time.perf_counter()
        answer = stub.GetLoad(admin_pb2.GetLoadRequest(), timeout=120)
        return len(answer.servers), time.perf_counter() - started


def watch_updates(admin: str, seconds: float) -> int:
    """Updates a WatchLoad stream gets in ``seconds`` after its first (the rows now)."""
    count = [0]
    first = threading.Event()
    with grpc.insecure_channel(admin) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        call = stub.WatchLoad(admin_pb2.GetLoadRequest())

        def read() -> None:
            try:
                for _ in call:
                    if first.is_set():
                        count[0] += 1
                    first.set()
            except grpc.RpcError:
                pass  # cancelled at the end

        reader = threading.Thread(target=read)
        reader.start()
        first.wait(timeout=60)
        time.sleep(seconds)  # the counting window
        call.cancel()
        reader.join(timeout=30)
    return count[0]


def run(*, servers: int, workers: int, seconds: float, workdir: Path) -> dict[str, Any]:
    url = f"sqlite://{workdir / 'registry.db'}"
    load_registry(url, servers=servers)
    cp = ControlPlane.create(workdir, registry=url, extra=["--workers", str(workers)])
    cp.start()
    try:
        cp.wait_ready(timeout=900)
        # Settled: the load view has every server's rows (and the first pass is over).
        deadline = time.monotonic() + 300
        while get_load(cp.admin)[0] < 3 * servers:
            assert time.monotonic() < deadline, "the load view never had every server"
            time.sleep(0.5)
        time.sleep(10.0)  # past start-up work
        pids = group_pids(cp.pid)
        row: dict[str, Any] = {"servers": servers, "workers": workers, "window_s": seconds}
        row["group_cpu_percent"] = round(cpu_percent(pids, seconds), 2)
        scrapes = [scrape(cp.admin) for _ in range(3)]
        row["metrics_bytes"] = scrapes[-1][0]  # -1: no answer within 60 s
        row["metrics_s_median"] = round(statistics.median(s for _, s in scrapes), 4)
        row["metrics_s_max"] = round(max(s for _, s in scrapes), 4)
        cli = [cli_load(cp.admin) for _ in range(3)]
        row["cli_load_s_median"] = round(statistics.median(s for s, _, _ in cli), 3)
        row["cli_load_cpu_s_median"] = round(statistics.median(c for _, c, _ in cli), 3)
        row["cli_load_errors"] = [error for _, _, error in cli if error]
        try:
            calls = [get_load(cp.admin) for _ in range(3)]
            row["get_load_rows"] = calls[-1][0]
            row["get_load_s_median"] = round(statistics.median(s for _, s in calls), 4)
        except grpc.RpcError as exc:
            row["get_load_error"] = str(exc.details())
        row["watch_updates_per_10s"] = watch_updates(cp.admin, 10.0)
        return row
    finally:
        cp.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory(prefix="routeplane-idle-load-") as tmp:
            rows.append(
                run(servers=args.servers, workers=workers, seconds=args.seconds, workdir=Path(tmp))
            )
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
