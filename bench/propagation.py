"""Propagation: from the registry commit of a new replica to Envoy routing to it.

Starts a control plane (SQLite registry), a real Envoy and two echo replicas on loopback. Each
try removes the replica in service (waits for 503), registers the other (with the CLI, or with
the registry API in-process), and polls Envoy over one keep-alive connection until the new
replica answers. The clock starts at the commit: the registry's own commit timestamp (wall
clock, written in the same transaction), so the CLI's process start and exit are outside it on
neither side. Prints a table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from tests.helpers import wait_until
from tests.processes import ControlPlane, Envoy, routeplane

HOST = "echo.local"
RESULTS = Path(__file__).resolve().parent / "results"


class Poller:
    """GETs through Envoy on one keep-alive connection (reopened on error)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host, int(port)
        self.conn: http.client.HTTPConnection | None = None

    def get(self) -> tuple[int, str]:
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self.conn.request("GET", "/", headers={"Host": HOST})
                response = self.conn.getresponse()
                return response.status, response.read().decode()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
        return 0, ""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, object]:
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p90_ms": round(percentile(samples, 90), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "samples_ms": [round(x, 2) for x in samples],
    }


def watch(poller: Poller, wanted: tuple[int, str], seen: list[float]) -> None:
    """Poll until ``wanted`` is answered (10 s at most); record the wall time it first was."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if poller.get() == wanted:
            seen.append(time.time())
            return
        time.sleep(0.0005)  # a polling interval, not synchronisation


def commit_time(registry_url: str) -> float:
    """The newest commit's wall-clock time, as the registry recorded it in that commit."""
    with sqlite3.connect(registry_url.removeprefix("sqlite://")) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'committed_at'").fetchone()
    return float(row[0])


def run_variant(workdir: Path, *, ads: str, tries: int) -> dict[str, object]:
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy = None
    replicas = [EchoThread(name="replica-a"), EchoThread(name="replica-b")]
    try:
        cp.wait_ready()
        envoy = Envoy.create(
            workdir, node_id=f"bench-{ads}", region="us-west", xds=[cp.xds], ads=ads
        )
        envoy.start()
        envoy.wait_live()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=[HOST], protocol="http")
        poller = Poller(envoy.listen)
        current: str | None = None

        def one_try(attempt: int, *, via_cli: bool) -> float:
            nonlocal current
            if current is not None:
                registry.deregister_replica(current)
                wait_until(
                    lambda: poller.get()[0] == 503,
                    timeout=10,
                    interval=0.001,
                    what="503 after deregistering",
                )
            replica = replicas[attempt % 2]
            wanted = (200, f"{replica.name}\n")
            # Envoy is polled from before the write, so the moment the new replica first
            # answers is seen whenever it comes (also while the CLI process is still exiting).
            seen: list[float] = []
            watcher = threading.Thread(target=watch, args=(poller, wanted, seen), daemon=True)
            watcher.start()
            if via_cli:
                current = routeplane(
                    "replicas",
                    "register",
                    "echo",
                    "--address",
                    replica.address,
                    "--region",
                    "us-west",
                    registry=cp.registry,
                ).stdout.strip()
            else:
                current = registry.register_replica(
                    server="echo", address=replica.address, region="us-west"
                ).id
            committed = commit_time(cp.registry)
            watcher.join(timeout=10)
            assert seen, "the new replica never answered"
            return (seen[0] - committed) * 1000

        one_try(0, via_cli=True)  # warm-up: the first change also warms the cluster
        cli = [one_try(i + 1, via_cli=True) for i in range(tries)]
        api = [one_try(i, via_cli=False) for i in range(tries)]
        registry.close()
        return {
            "ads": ads,
            "tries": tries,
            "cli": summary(cli),
            "api": summary(api),
        }
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in replicas:
            replica.stop()


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--ads", nargs="+", default=["delta", "sotw"])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        for ads in args.ads:
            workdir = Path(tmp) / ads
            workdir.mkdir()
            rows.append(run_variant(workdir, ads=ads, tries=args.tries))
    print("\npropagation to a real Envoy (SQLite registry, 1 Envoy, loopback)")
    print("  cli: `routeplane replicas register` commit -> first request answered by it")
    print("  api: register_replica() commit -> first request answered by it")
    print(
        f"{'ADS':6} {'WRITE':5} {'TRIES':>5} {'P50 ms':>8} {'P90 ms':>8} {'P99 ms':>8}"
        f" {'MAX ms':>8}"
    )
    for row in rows:
        for kind in ("cli", "api"):
            stats = row[kind]
            assert isinstance(stats, dict)
            print(
                f"{row['ads']:6} {kind:5} {row['tries']:>5} {stats['p50_ms']:>8} "
                f"{stats['p90_ms']:>8} {stats['p99_ms']:>8} {stats['max_ms']:>8}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "propagation",
        "registry": "sqlite",
        "git_revision": git_revision(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "results": rows,
    }
    path = RESULTS / "propagation.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
