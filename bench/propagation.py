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
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import filesystem_baseline
from bench.probe import (
    HOST,
    Poller,
    add_remove,
    filler_addresses,
    healthy_members,
    live_replicas,
    summary,
    watch,
)
from bench.stats import tail, tails_name
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import Registry, open_registry
from control_plane.translate import names
from harness.processes import ControlPlane, Envoy, routeplane
from harness.waiting import wait_until

RESULTS = Path(__file__).resolve().parent / "results"


def commit_time(registry_url: str) -> float:
    """The newest commit's wall-clock time, as the registry recorded it in that commit."""
    with sqlite3.connect(registry_url.removeprefix("sqlite://")) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'committed_at'").fetchone()
    return float(row[0])


def run_variant(
    workdir: Path, *, ads: str, tries: int, cli_tries: int | None = None
) -> dict[str, object]:
    """``tries`` api writes and ``cli_tries`` (default ``tries``) CLI writes: a CLI write
    starts a process, so it costs about a second a try."""
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
        cli = [
            one_try(i + 1, via_cli=True) for i in range(tries if cli_tries is None else cli_tries)
        ]
        api = [one_try(i, via_cli=False) for i in range(tries)]
        registry.close()
        return {
            "ads": ads,
            "tries": tries,
            "cli_tries": len(cli),
            "cli": summary(cli),
            "api": summary(api),
        }
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in replicas:
            replica.stop()


def run_one_server(workdir: Path, *, replicas: int, tries: int) -> dict[str, Any]:
    """routeplane at a size: ``routeplane serve`` (SQLite), one Envoy (delta), one server of
    ``replicas`` replicas (all DRAINING but the one in service); api writes, measured from the
    registry's commit timestamp. The changes of :func:`filesystem_baseline.run_one_server`."""
    cp = ControlPlane.create(workdir)
    cp.start()
    envoy = None
    live = live_replicas()
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=[HOST], protocol="http")
        _add_draining(registry, "echo", filler_addresses(replicas - 1))
        ids = {
            live[0].name: registry.register_replica(
                server="echo", address=live[0].address, region="us-west"
            ).id
        }
        envoy = Envoy.create(workdir, node_id="bench-size", region="us-west", xds=[cp.xds])
        envoy.start()
        envoy.wait_live(timeout=120)
        poller = Poller(envoy.listen)
        wait_until(lambda: poller.get() == (200, "replica-a\n"), timeout=60, what="routeplane")

        def add(replica: EchoThread) -> float:
            ids[replica.name] = registry.register_replica(
                server="echo", address=replica.address, region="us-west"
            ).id
            return commit_time(cp.registry)

        def remove(replica: EchoThread) -> None:
            registry.deregister_replica(ids.pop(replica.name))

        cluster = names.cluster(workspace="default", server="echo")
        samples = add_remove(
            poller,
            live,
            tries=tries,
            add=add,
            remove=remove,
            healthy=lambda: healthy_members(envoy.admin, cluster),
        )
        registry.close()
        return {"replicas": replicas, "tries": len(samples), **summary(samples)}
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
        for replica in live:
            replica.stop()


def _add_draining(registry: Registry, server: str, addresses: list[str]) -> None:
    """Many DRAINING replicas in one transaction (SQLite; benchmarks only)."""
    now = time.time()
    rows = []
    for i, address in enumerate(addresses):
        host, port = address.rsplit(":", 1)
        rows.append((f"r-fill{i:06d}", server, host, int(port), "us-west", now))
    with registry._tx() as db:  # type: ignore[attr-defined]
        db.executemany(
            "INSERT INTO replicas VALUES (?, ?, ?, ?, ?, '', 100, 'DRAINING', NULL, ?, NULL, NULL)",
            rows,
        )
        registry._bump(db, now, server)  # type: ignore[attr-defined]


def by_size(sizes: tuple[int, ...], *, tries: int, workdir: Path) -> list[dict[str, Any]]:
    """routeplane against Envoy's own filesystem EDS, one server of N replicas, at each size:
    the same changes, the same poller; ratio = routeplane / file, per percentile."""
    rows: list[dict[str, Any]] = []
    for replicas in sizes:
        path = workdir / f"size-{replicas}"
        (path / "file").mkdir(parents=True)
        (path / "routeplane").mkdir()
        file = filesystem_baseline.run_one_server(
            replicas=replicas, tries=tries, workdir=path / "file"
        )
        ours = run_one_server(path / "routeplane", replicas=replicas, tries=tries)
        # Ratios of the p50 and the p90 only: never of two maxima.
        ratio = {q: round(ours[f"{q}_ms"] / max(file[f"{q}_ms"], 0.001), 2) for q in ("p50", "p90")}
        if ours["p99_ms"] is not None and file["p99_ms"] is not None:
            ratio["p99"] = round(ours["p99_ms"] / max(file["p99_ms"], 0.001), 2)
        rows.append({"replicas": replicas, "routeplane": ours, "file": file, "ratio": ratio})
    return rows


def size_table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown table of :func:`by_size` (``make bench`` prints it too)."""
    tries = rows[0]["routeplane"]["tries"] if rows else 0
    summaries = [s for row in rows for s in (row["routeplane"], row["file"])]
    last = tails_name(summaries)
    ratio_tail = " / p99" if all(row["ratio"].get("p99") for row in rows) else ""
    lines = [
        "Propagation at every size, against the floor: one server of N replicas (all DRAINING "
        "but the one in service), one replica added; routeplane (`routeplane serve`, SQLite, "
        "api write, 1 Envoy, delta): the registry's commit timestamp -> the first request the "
        "new replica answers; file: Envoy's own filesystem EDS, the same change written and "
        "renamed over the watched file -> the same; the same poller, "
        f"N = {tries} tries each, ms; ratio = routeplane / file (of the p50s and p90s: never "
        "of two maxima)",
        f"| replicas in the server | N | routeplane p50 / p90 / {last} | file p50 / p90 / "
        f"{last} | ratio p50 / p90{ratio_tail} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ours, file, ratio = row["routeplane"], row["file"], row["ratio"]
        ratios = " / ".join(f"{ratio[q]}x" for q in ("p50", "p90", "p99") if q in ratio)
        if not ratio_tail:
            ratios = f"{ratio['p50']}x / {ratio['p90']}x"
        lines.append(
            f"| {row['replicas']} | {ours['tries']} | {ours['p50_ms']} / {ours['p90_ms']} / "
            f"{tail(ours)} | {file['p50_ms']} / {file['p90_ms']} / {tail(file)} | {ratios} |"
        )
    return lines


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
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[],
        help="Also (or, with --ads none, only) one server of N replicas against Envoy's own "
        "filesystem EDS at each size, e.g. --sizes 10 1000 10000.",
    )
    args = parser.parse_args(argv)
    if args.ads == ["none"]:
        args.ads = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        for ads in args.ads:
            workdir = Path(tmp) / ads
            workdir.mkdir()
            rows.append(run_variant(workdir, ads=ads, tries=args.tries))
        sizes = (
            by_size(tuple(args.sizes), tries=args.tries, workdir=Path(tmp)) if args.sizes else []
        )
    print("\npropagation to a real Envoy (SQLite registry, 1 Envoy, loopback)")
    print("  cli: `routeplane replicas register` commit -> first request answered by it")
    print("  api: register_replica() commit -> first request answered by it")
    print(
        f"{'ADS':6} {'WRITE':5} {'TRIES':>5} {'P50 ms':>8} {'P90 ms':>8} {'P99 ms':>8}"
        f" {'MAX ms':>8}  (no p99 under 200 tries)"
    )
    for row in rows:
        for kind in ("cli", "api"):
            stats = row[kind]
            assert isinstance(stats, dict)
            print(
                f"{row['ads']:6} {kind:5} {row['tries']:>5} {stats['p50_ms']:>8} "
                f"{stats['p90_ms']:>8} {stats['p99_ms']!s:>8} {stats['max_ms']:>8}"
            )
    if sizes:
        print("\n" + "\n".join(size_table(sizes)))
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "propagation",
        "registry": "sqlite",
        "git_revision": git_revision(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "results": rows,
        "by_size": sizes,
    }
    path = RESULTS / "propagation.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
