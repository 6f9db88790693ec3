"""Registry -> control plane -> Envoy ACK, at scale, on the SQLite or Spanner (emulator) registry.

The control plane runs in this process (so every stage can be timed), Envoys are real
processes. For each change (a replica registered among N): write returned -> the watch yielded
a state containing it -> snapshot published -> every Envoy ACKed the ClusterLoadAssignment that
contains it. Also: CPU of one reconcile pass for one change, a full read of the registry and a
full rebuild. Run: ``python -m bench.registry_watch --registry spanner --replicas 10000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench.stats import summarize
from control_plane import logs
from control_plane.pipeline import Pipeline
from control_plane.reconcile import PassReport, Reconciler
from control_plane.registry import Registry, RegistryState, open_registry
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.resources import ENDPOINT
from control_plane.xds.server import XdsServer
from harness.processes import Envoy
from harness.spanner_emulator import Emulator
from harness.waiting import free_port

RESULTS = Path(__file__).resolve().parent / "results"


def summary(values: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99 (``None`` under 200 samples), max."""
    return summarize(values)


def bulk_load(registry: Registry, *, servers: int, replicas: int) -> None:
    """Fill the registry fast (store-specific batch writes; benchmarks only)."""
    names = [f"s{i:04d}" for i in range(servers)]
    rows = [
        (f"r-bulk{i:06d}", names[i % servers], 10_000 + i % 50_000, ["us-west", "us-east"][i % 2])
        for i in range(replicas)
    ]
    kind = type(registry).__name__
    if kind == "SqliteRegistry":
        now = time.time()
        with registry._tx() as db:  # type: ignore[attr-defined]
            db.executemany(
                "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at)"
                " VALUES (?, 'default', ?, 'http', '{}', ?)",
                [(n, json.dumps([f"{n}.bench.local"]), now) for n in names],
            )
            db.executemany(
                "INSERT INTO replicas VALUES (?, ?, '127.0.0.1', ?, ?, '', 100, 'READY', NULL, ?,"
                " NULL, NULL)",
                [(rid, srv, port, region, now) for rid, srv, port, region in rows],
            )
            registry._bump(db, now, *names)  # type: ignore[attr-defined]
        return
    from google.cloud import spanner

    from control_plane.registry.spanner import SpannerRegistry

    assert isinstance(registry, SpannerRegistry), kind
    db = registry.database
    with db.batch() as batch:
        batch.insert(
            "Servers",
            columns=("ServerName", "Workspace", "Hostnames", "Protocol", "Spec", "UpdatedAt"),
            values=[
                (n, "default", [f"{n}.bench.local"], "http", "{}", spanner.COMMIT_TIMESTAMP)
                for n in names
            ],
        )
    for start in range(0, len(rows), 2000):
        with db.batch() as batch:
            batch.insert(
                "Replicas",
                columns=(
                    "ServerName",
                    "Id",
                    "Host",
                    "Port",
                    "Region",
                    "Zone",
                    "Weight",
                    "State",
                    "LeaseExpiresAt",
                    "UpdatedAt",
                ),
                values=[
                    (
                        srv,
                        rid,
                        "127.0.0.1",
                        port,
                        region,
                        "",
                        100,
                        "READY",
                        None,
                        spanner.COMMIT_TIMESTAMP,
                    )
                    for rid, srv, port, region in rows[start : start + 2000]
                ],
            )


class Timeline:
    """Records when the reconciler applied which state, and what each pass cost (through the
    driver's ``on_pass`` hook)."""

    def __init__(self) -> None:
        self.applied: list[tuple[float, RegistryState]] = []
        self.pass_ms: list[float] = []
        self.changed = asyncio.Event()

    def on_pass(self, report: PassReport) -> None:
        self.pass_ms.append(report.cpu_seconds * 1000)
        # When the pass began, on the wall clock (commit timestamps are wall-clock times).
        began = time.time() - (time.perf_counter() - report.started)
        self.applied.append((began, report.state))
        self.changed.set()

    async def wait_for(self, predicate: Callable[[RegistryState], bool]) -> float:
        while True:
            for at, state in reversed(self.applied[-5:]):
                if predicate(state):
                    return at
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), timeout=30)


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    emulator = None
    if args.registry == "spanner":
        emulator = Emulator.create(workdir)
        emulator.start()
        os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
        url = "spanner://projects/bench/instances/rp/databases/registry"
    else:
        url = f"sqlite://{workdir / 'registry.db'}"
    envoys: list[Envoy] = []
    try:
        registry = open_registry(url)
        registry.init()
        loaded = time.perf_counter()
        bulk_load(registry, servers=args.servers, replicas=args.replicas)
        load_s = time.perf_counter() - loaded

        started = time.perf_counter()
        state = registry.read_state()
        full_read_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        Pipeline().step(state, [NodeGroup(cluster="edge", region="us-west")])
        full_rebuild_ms = (time.perf_counter() - started) * 1000

        cache = SnapshotCache()
        timeline = Timeline()
        reconciler = Reconciler(registry=registry, cache=cache, on_pass=timeline.on_pass)
        xds = XdsServer(cache=cache, control_plane_id="bench")
        acked = asyncio.Event()
        last_ack = [0.0]

        def on_ack(proxy: Any, type_url: str, version: str) -> None:
            last_ack[0] = time.time()
            acked.set()

        xds.add_ack_listener(on_ack)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(xds.generic_handlers())
        port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
        await server.start()
        watcher = asyncio.create_task(reconciler.run())
        for i in range(args.envoys):
            envoy = Envoy.create(
                workdir,
                node_id=f"bench-{i}",
                region="us-west",
                xds=[f"127.0.0.1:{port}"],
                ads="delta",
            )
            envoy.start()
            envoys.append(envoy)
        for envoy in envoys:
            await asyncio.to_thread(envoy.wait_live, 120)

        def proxies_acked(cluster: str, version: str) -> bool:
            proxies = [p for p in xds.proxies.values() if not p.only_type]
            return len(proxies) == args.envoys and all(
                p.protocol.acked.get(ENDPOINT, {}).get(cluster) == version  # type: ignore[union-attr]
                for p in proxies
            )

        rng = random.Random(7)
        write_ms, seen_ms, ack_ms, change_cpu_ms, process_cpu_ms = [], [], [], [], []
        for i in range(args.changes):
            name = f"s{rng.randrange(args.servers):04d}"
            cluster = f"default_{name}"
            # Before the write: the watch may see the commit and finish its pass before the
            # write call returns here.
            passes_before = len(timeline.pass_ms)
            t0 = time.perf_counter()
            replica = await asyncio.to_thread(
                registry.register_replica,
                server=name,
                address=f"127.0.0.2:{20000 + i}",
                region="us-west",
            )
            returned = time.perf_counter()
            cpu_started = time.process_time()
            seen_state: list[RegistryState] = []

            def has_it(
                s: RegistryState,
                rid: str = replica.id,
                srv: str = name,
                out: list[RegistryState] = seen_state,
            ) -> bool:
                found = any(r.id == rid for r in s.replicas_by_server.get(srv, ()))
                if found:
                    out.append(s)
                return found

            seen = await timeline.wait_for(has_it)
            # The clock starts at the commit: the registry's own commit timestamp of the state
            # that first held the replica (SQLite: written in the transaction; Spanner: the
            # commit timestamp), never when our write call returned.
            committed_at = seen_state[-1].committed_at
            change_cpu_ms.extend(timeline.pass_ms[passes_before:])
            versions = {
                group: snap.of_type(ENDPOINT)[cluster].version
                for group in cache.groups()
                if (snap := cache.get(group)) is not None
            }
            target = set(versions.values())
            while not all(
                any(
                    p.protocol.acked.get(ENDPOINT, {}).get(cluster) in target  # type: ignore[union-attr]
                    for p in xds.proxies.values()
                    if p.node_id == e.node_id
                )
                for e in envoys
            ):
                acked.clear()
                await asyncio.wait_for(acked.wait(), timeout=30)
            process_cpu_ms.append((time.process_time() - cpu_started) * 1000)
            write_ms.append((returned - t0) * 1000)
            seen_ms.append((seen - committed_at) * 1000)
            ack_ms.append((last_ack[0] - committed_at) * 1000)
        snapshot_bytes = max(
            (snap.size for group in cache.groups() if (snap := cache.get(group)) is not None),
            default=0,
        )
        watcher.cancel()
        await server.stop(0)
        registry.close()
        return {
            "registry": args.registry,
            "replicas": args.replicas,
            "servers": args.servers,
            "envoys": args.envoys,
            "changes": args.changes,
            "load_s": round(load_s, 2),
            "write_ms": summary(write_ms),
            "commit_to_seen_ms": summary(seen_ms),
            "commit_to_all_acked_ms": summary(ack_ms),
            "reconcile_cpu_per_change_ms": summary(change_cpu_ms),
            "process_cpu_per_change_ms": summary(process_cpu_ms),
            "full_read_ms": round(full_read_ms, 1),
            "full_rebuild_ms": round(full_rebuild_ms, 1),
            "snapshot_bytes_per_group": snapshot_bytes,
        }
    finally:
        for envoy in envoys:
            envoy.stop()
        if emulator is not None:
            emulator.stop()


def print_table(row: dict[str, Any]) -> None:
    print(
        f"\nregistry watch: {row['registry']}, {row['replicas']} replicas / {row['servers']}"
        f" servers, {row['envoys']} Envoy(s), {row['changes']} changes"
    )
    print(f"{'STAGE':42} {'P50':>8} {'P90':>8} {'P99':>8} {'MAX':>8}")
    for key, label in [
        ("write_ms", "write call (until it returned), ms"),
        ("commit_to_seen_ms", "commit timestamp -> pass begins, ms"),
        ("commit_to_all_acked_ms", "commit timestamp -> last Envoy ACK, ms"),
        ("reconcile_cpu_per_change_ms", "pass CPU (loop thread), ms"),
        ("process_cpu_per_change_ms", "process CPU, write return -> ACKs, ms"),
    ]:
        s = row[key]
        print(f"{label:42} {s['p50']:>8} {s['p90']:>8} {s['p99']!s:>8} {s['max']:>8}")
    print(
        f"full registry read: {row['full_read_ms']} ms; full rebuild (1 group): "
        f"{row['full_rebuild_ms']} ms; bulk load: {row['load_s']} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", choices=["sqlite", "spanner"], default="spanner")
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--servers", type=int, default=1_000)
    parser.add_argument("--envoys", type=int, default=1)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args(argv)
    logs.configure(level="warning", json=True)
    with tempfile.TemporaryDirectory(prefix="routeplane-bench-") as tmp:
        row = asyncio.run(run(args, Path(tmp)))
    print_table(row)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"registry_watch_{args.registry}.json"
    path.write_text(json.dumps(row, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
