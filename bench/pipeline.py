"""The pipeline step alone, no registry or network: full rebuild and one-replica changes.

``python -m bench.pipeline [--servers 1000] [--replicas 10000] [--changes 50]``
``python -m bench.pipeline --one-server 10 100 1000 10000``

Clocks: the full rebuild is one ``Pipeline().step`` over a state of N replicas (wall time,
median of 3 fresh pipelines, with the one group a single-region fleet has). A change is one
replica re-registered on another port; its cost is the thread CPU of the step that follows,
with 1 and with 10 wanted node groups (10 Envoys, each with its own listen address).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import replace
from typing import Any

from bench.stats import summarize
from control_plane.pipeline import Pipeline
from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.xds.nodes import NodeGroup


def make_state(servers: int, replicas: int) -> tuple[list[Server], dict[str, Replica]]:
    server_rows = [
        Server(name=f"s{i:04d}", hostnames=(f"s{i:04d}.local",), protocol="http")
        for i in range(servers)
    ]
    replica_rows = {
        f"r{i:05d}": Replica(
            id=f"r{i:05d}",
            server=f"s{i % servers:04d}",
            host="127.0.0.1",
            port=20000 + i % 40000,
            region=("us-west", "us-east")[i % 2],
        )
        for i in range(replicas)
    }
    return server_rows, replica_rows


def groups(count: int) -> list[NodeGroup]:
    return [
        NodeGroup(cluster="edge", region="us-west", listen=f"127.0.0.1:{10000 + i}")
        for i in range(count)
    ]


def run(servers: int, replicas: int, *, changes: int = 200) -> dict[str, Any]:
    server_rows, replica_rows = make_state(servers, replicas)
    state = RegistryState.of(
        servers=server_rows, replicas=replica_rows.values(), revision=1, committed_at=0.0
    )
    rebuild_ms = []
    for _ in range(3):
        started = time.perf_counter()
        Pipeline().step(state, groups(1))
        rebuild_ms.append((time.perf_counter() - started) * 1000)
    out: dict[str, Any] = {
        "servers": servers,
        "replicas": replicas,
        "full_rebuild_ms": round(statistics.median(rebuild_ms), 1),
    }
    for group_count in (1, 10):
        pipeline = Pipeline()
        wanted = groups(group_count)
        by_server = dict(state.replicas_by_server)
        current = state
        pipeline.step(current, wanted)
        rng = random.Random(7)
        cpu_ms = []
        for i in range(changes):
            replica = replica_rows[f"r{rng.randrange(replicas):05d}"]
            moved = replace(replica, port=1000 + i)
            replica_rows[moved.id] = moved
            by_server[moved.server] = tuple(
                moved if r.id == moved.id else r for r in by_server[moved.server]
            )
            current = RegistryState(
                servers=current.servers,
                replicas_by_server=dict(by_server),
                revision=current.revision + 1,
                committed_at=0.0,
            )
            started = time.thread_time()
            pipeline.step(current, wanted)
            cpu_ms.append((time.thread_time() - started) * 1000)
        out[f"change_cpu_ms_{group_count}_groups"] = summarize(cpu_ms, digits=3)
    return out


def one_server(sizes: tuple[int, ...], *, changes: int = 200) -> list[dict[str, Any]]:
    """A change costs the change, not the fleet's shape: one replica moved within one server of
    N replicas, with 1 and 10 node groups (10 groups share one set of endpoints, so the
    ClusterLoadAssignment must be built and encoded once, not once per group)."""
    rows = []
    for replicas in sizes:
        row = run(1, replicas, changes=changes)
        one, ten = row["change_cpu_ms_1_groups"], row["change_cpu_ms_10_groups"]
        row["ten_groups_vs_one_p50"] = round(ten["p50"] / one["p50"], 2) if one["p50"] else None
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument(
        "--one-server",
        type=int,
        nargs="*",
        metavar="REPLICAS",
        help="instead: one server of each of these sizes, 1 and 10 groups",
    )
    args = parser.parse_args()
    if args.one_server:
        print(json.dumps(one_server(tuple(args.one_server), changes=args.changes), indent=2))
        return
    print(json.dumps(run(args.servers, args.replicas, changes=args.changes), indent=2))


if __name__ == "__main__":
    main()
