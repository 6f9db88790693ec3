"""`make soak`: a bounded run of random replica churn against real Envoys and simulated streams.

For ``--seconds`` (default 120): replicas of a few servers are registered, drained, made ready
and deregistered at random, while requests flow through two real Envoys to READY replicas only
and 200 simulated delta streams follow along. A hostile phase is mixed into the churn: junk rows
written straight into the registry (a port that is no number, a host name instead of an IP,
hostnames that are not JSON), short streams each claiming a new node group, streams asking for
too many names, NACK floods and unknown types. At the end every proxy's config equals what the
registry routes, the control plane's memory did not grow without bound, and no request to a
READY replica failed. Exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from bench.fleet import Fleet, delta_client, proc_rss
from control_plane import logs
from control_plane.admin.client import admin_pb2, call
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from tests.helpers import wait_until
from tests.processes import ControlPlane, Envoy, http_get

SERVERS = ("alpha", "beta", "gamma")
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def foreign_write(path: Path, sql: str, params: tuple[object, ...], server: str) -> None:
    """Write as another writer of the registry would: the row, the revision and the change."""
    with sqlite3.connect(path) as db:
        db.execute(sql, params)
        revision = int(db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0]) + 1
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision,))
        db.execute("UPDATE meta SET value=? WHERE key='committed_at'", (time.time(),))
        db.execute("INSERT INTO changes VALUES (?, ?)", (revision, server))


JUNK_REPLICAS = (
    ("abc", "127.0.0.1"),
    (8181.5, "127.0.0.1"),
    (80, "localhost"),
    (80, "example.com"),
)


def junk_row(path: Path, rng: random.Random, n: int) -> tuple[str, str]:
    """One malformed row (a replica of a real server, or a server); returns (table, key)."""
    if rng.random() < 0.7:
        port, host = rng.choice(JUNK_REPLICAS)
        server = rng.choice(SERVERS)
        foreign_write(
            path,
            "INSERT INTO replicas VALUES (?, ?, ?, ?, 'us-west', '', 100, 'READY', NULL, ?)",
            (f"junk-{n}", server, host, port, time.time()),
            server,
        )
        return "replicas", f"junk-{n}"
    name = f"junk-{n}"
    hostnames = rng.choice(["not json", '"alpha.local"', '[1, null, "x.local"]', '["alpha.local"]'])
    foreign_write(
        path,
        "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at, created_at)"
        " VALUES (?, 'default', ?, 'http', '{}', ?, ?)",
        (name, hostnames, time.time(), time.time()),
        name,
    )
    return "servers", name


def remove_junk(path: Path, table: str, key: str) -> None:
    column = "id" if table == "replicas" else "name"
    with sqlite3.connect(path) as db:
        server = key
        if table == "replicas":
            row = db.execute("SELECT server FROM replicas WHERE id = ?", (key,)).fetchone()
            server = row[0] if row else key
    foreign_write(path, f"DELETE FROM {table} WHERE {column} = ?", (key,), server)


async def hostile_stream(xds: str, kind: str, n: int) -> str:
    """One hostile client; returns how its stream ended (a status code name or "open")."""
    async with grpc.aio.insecure_channel(xds) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = base_pb2.Node(
            id=f"hostile-{n}", cluster=f"hostile-{n}" if kind == "group" else "edge"
        )
        node.locality.region = "us-west"
        if kind == "names":
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=EDS, node=node, resource_names_subscribe=[f"j{i}" for i in range(30_000)]
            )
            call: Any = stub.DeltaAggregatedResources(iter([request]), timeout=5)
        elif kind == "unknown":
            request = discovery_pb2.DiscoveryRequest(
                type_url="type.googleapis.com/x.Nope", node=node
            )
            call = stub.StreamAggregatedResources(iter([request]), timeout=5)
        elif kind == "nack":  # the same NACK, 200 times, 100 KB each
            call = stub.StreamAggregatedResources(timeout=5)
            try:
                await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node))
                first = await call.read()
                nack = discovery_pb2.DiscoveryRequest(type_url=CDS, response_nonce=first.nonce)
                nack.error_detail.message = "x" * 100_000
                for _ in range(200):
                    await call.write(nack)
                await call.done_writing()
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"
        else:  # a short stream of a new node group
            request = discovery_pb2.DiscoveryRequest(type_url=CDS, node=node)
            call = stub.StreamAggregatedResources(iter([request]), timeout=5)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"


async def soak(*, seconds: float, streams: int, workdir: Path) -> dict[str, Any]:
    cp = ControlPlane.create(workdir, extra=["--workers", "1"])  # one process's memory
    cp.start()
    cp.wait_ready()
    registry = open_registry(cp.registry)
    pool = [EchoThread(name=f"pool-{i}") for i in range(12)]
    envoys = [
        Envoy.create(workdir, node_id=f"soak-{r}", region=r, xds=[cp.xds])
        for r in ("us-west", "us-east")
    ]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    failures: list[str] = []
    try:
        for name in SERVERS:
            registry.create_server(name=name, hostnames=[f"{name}.local"], protocol="http")
        for envoy in envoys:
            envoy.start()
            envoy.wait_live()
        fleet = Fleet(streams=streams, clusters=len(SERVERS))
        tasks = [asyncio.create_task(delta_client(i, cp.xds, fleet, stop)) for i in range(streams)]
        await asyncio.wait_for(fleet.complete.wait(), timeout=120)
        rss = [proc_rss(cp.pid)]
        rng = random.Random(11)
        db_path = Path(cp.registry.removeprefix("sqlite://"))
        junk: list[tuple[str, str]] = []
        hostile: list[asyncio.Task[str]] = []
        hostile_ends: dict[str, int] = {}
        live: dict[str, tuple[str, EchoThread, str]] = {}  # id -> (server, echo, state)
        changed_at = dict.fromkeys(SERVERS, 0.0)
        requests = changes = 0
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            if rng.random() < 0.25:  # the hostile phase, mixed into the churn
                if junk and rng.random() < 0.4:
                    remove_junk(db_path, *junk.pop(rng.randrange(len(junk))))
                elif rng.random() < 0.5:
                    junk.append(junk_row(db_path, rng, changes))
                else:
                    kind = rng.choice(["group", "group", "names", "nack", "unknown"])
                    hostile.append(asyncio.create_task(hostile_stream(cp.xds, kind, len(hostile))))
            action = rng.random()
            free = [e for e in pool if all(e is not used for _, used, _ in live.values())]
            if (action < 0.4 or not live) and free:
                echo = rng.choice(free)
                server = rng.choice(SERVERS)
                replica = registry.register_replica(
                    server=server, address=echo.address, region=rng.choice(["us-west", "us-east"])
                )
                live[replica.id] = (server, echo, "READY")
                changed_at[server] = time.monotonic()
            elif not live:
                continue
            elif action < 0.6:
                rid = rng.choice(list(live))
                changed_at[live[rid][0]] = time.monotonic()
                registry.set_replica_state(rid, "DRAINING")
                live[rid] = (live[rid][0], live[rid][1], "DRAINING")
            elif action < 0.75:
                rid = rng.choice(list(live))
                changed_at[live[rid][0]] = time.monotonic()
                registry.set_replica_state(rid, "READY")
                live[rid] = (live[rid][0], live[rid][1], "READY")
            else:
                rid = rng.choice(list(live))
                changed_at[live[rid][0]] = time.monotonic()
                registry.deregister_replica(rid)
                del live[rid]
            changes += 1
            # Requests keep flowing; a server with a READY replica must always answer 200.
            for _ in range(5):
                await asyncio.sleep(0.02)
                server = rng.choice(SERVERS)
                ready = any(s == server and st == "READY" for s, _, st in live.values())
                envoy = rng.choice(envoys)
                status, _ = await asyncio.to_thread(envoy.get, host=f"{server}.local")
                requests += 1
                # Judge servers whose replicas have been settled for 200 ms (propagation takes
                # ~10 ms): with a READY replica, every request must succeed.
                settled = time.monotonic() - changed_at[server] > 0.2
                if ready and settled and status != 200:
                    failures.append(f"{server} via {envoy.node_id}: HTTP {status}")
            if changes % 20 == 0:
                rss.append(proc_rss(cp.pid))
        for table, key in junk:
            remove_junk(db_path, table, key)
        for ended in await asyncio.gather(*hostile, return_exceptions=True):
            name = ended if isinstance(ended, str) else type(ended).__name__
            hostile_ends[name] = hostile_ends.get(name, 0) + 1
        # At the end: every proxy converged on exactly what the registry says.
        wait_until(
            lambda: all(
                t.state == "SYNCED"
                for p in call(cp.admin, "ListProxies", admin_pb2.ListProxiesRequest()).proxies
                for t in p.types
            ),
            timeout=30,
            what="every proxy SYNCED",
        )
        truth = registry.read_state()
        for server in SERVERS:
            expected = sorted(r.port for r in truth.replicas_by_server.get(server, ()))
            for envoy in envoys:
                text = http_get(f"http://{envoy.admin}/clusters")[1]
                have = sorted(
                    {
                        int(line.split("::")[1].rsplit(":", 1)[1])
                        for line in text.splitlines()
                        if line.startswith(f"default_{server}::127.0.0.1:")
                        and "::cx_total::" in line
                    }
                )
                if have != sorted(set(expected)):
                    failures.append(f"{envoy.node_id} {server}: has {have}, registry {expected}")
        growth = (rss[-1] - rss[0]) / max(1, rss[0])
        if growth > 0.5:
            failures.append(f"control-plane memory grew {growth:.0%} over the run")
        return {
            "seconds": seconds,
            "changes": changes,
            "requests": requests,
            "streams": streams,
            "rss_mb": [round(r / 2**20, 1) for r in rss[::5]],
            "hostile_streams": hostile_ends,
            "failures": failures,
        }
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for envoy in envoys:
            envoy.stop()
        cp.stop()
        registry.close()
        for echo in pool:
            echo.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    logs.configure(level="warning", json=True)
    with tempfile.TemporaryDirectory(prefix="routeplane-soak-") as tmp:
        result = asyncio.run(soak(seconds=args.seconds, streams=args.streams, workdir=Path(tmp)))
    print(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
