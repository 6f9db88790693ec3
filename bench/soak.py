"""`make soak`: a bounded run of random replica churn against real Envoys and simulated streams.

For ``--seconds`` (default 120): replicas of a few servers are registered, drained, made ready
and deregistered at random, while requests flow through two real Envoys to READY replicas only
and 200 simulated delta streams follow along. A hostile phase is mixed into the churn: junk rows
written straight into the registry (a port that is no number, a host name instead of an IP,
hostnames that are not JSON), short streams each claiming a new node group, streams asking for
too many names, NACK floods and unknown types. Issue 23's attacks run too, each a bounded
number of times with a time limit (``HOSTILE_ATTACKS``): a deeply nested JSON ``hostnames``
row from another writer, a spec with ``target_concurrency`` 5e-324 under traffic, an LRS report
with a locality at 10^7 in flight and duplicated clusters, a report under another node's id, a
delta stream with 1,000-character names, repeated CSDS calls on the xDS port; each one's
outcome is reported. At the end every proxy's config equals what the registry routes, the
control plane's memory did not grow without bound, and no request to a READY replica failed;
the last line says how many requests failed (goal 0) and whether ``serve`` stayed up. Exits
non-zero on any violation.
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
from envoy.service.load_stats.v3 import lrs_pb2
from envoy.service.status.v3 import csds_pb2

from bench.fleet import Fleet, delta_client, proc_rss
from control_plane import logs
from control_plane.admin.client import admin_pb2, call
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy, http_get
from harness.waiting import wait_until

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
            "INSERT INTO replicas VALUES (?, ?, ?, ?, 'us-west', '', 100, 'READY', NULL, ?,"
            " NULL, NULL)",
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


# Issue 23's attacks, each run at most ATTACK_RUNS times, each run within ATTACK_SECONDS.
HOSTILE_ATTACKS = (
    "nested_hostnames",
    "tiny_target_concurrency",
    "lrs_huge_duplicated",
    "lrs_other_node",
    "long_names",
    "csds_repeated",
)
ATTACK_RUNS = 2
ATTACK_SECONDS = 20.0
LRS = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
CSDS = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"


class Attacks:
    """Issue 23's attacks against one soak's ``serve``; each returns a short outcome."""

    def __init__(
        self, cp: ControlPlane, db_path: Path, envoys: list[Envoy], victim: EchoThread
    ) -> None:
        self.cp = cp
        self.db_path = db_path
        self.envoys = envoys
        self.victim = victim  # the replica of the attack's own autoscaled server
        self.runs = dict.fromkeys(HOSTILE_ATTACKS, 0)
        self.running: set[str] = set()
        self.outcomes: dict[str, list[str]] = {kind: [] for kind in HOSTILE_ATTACKS}
        self.tasks: list[asyncio.Task[None]] = []
        self.started = time.monotonic()

    def start_one(self, rng: random.Random, n: int) -> None:
        """Start one attack that is neither running nor run out (none left: nothing)."""
        ready = [k for k in HOSTILE_ATTACKS if self.runs[k] < ATTACK_RUNS and k not in self.running]
        if ready:
            kind = rng.choice(ready)
            self.runs[kind] += 1
            self.running.add(kind)
            self.tasks.append(asyncio.create_task(self._run(kind, n)))

    async def _run(self, kind: str, n: int) -> None:
        try:
            async with asyncio.timeout(ATTACK_SECONDS):
                outcome = await getattr(self, kind)(n)
        except TimeoutError:
            outcome = f"no end within {ATTACK_SECONDS:g} s"
        except Exception as exc:  # noqa: BLE001 - an attack's failure is its outcome
            outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
        finally:
            self.running.discard(kind)
        alive = "serve up" if self.cp.alive() else "serve DOWN"
        at = time.monotonic() - self.started
        self.outcomes[kind].append(f"ended at {at:.0f} s: {outcome}; {alive}")

    async def finish(self) -> dict[str, list[str]]:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return self.outcomes

    async def _hold(self, seconds: float) -> None:
        """Keep the attack in place while the churn and the requests go on."""
        await asyncio.sleep(seconds)

    async def nested_hostnames(self, n: int) -> str:
        name = f"nested-{n}"
        nested = "[" * 1000 + "]" * 1000
        await asyncio.to_thread(
            foreign_write,
            self.db_path,
            "INSERT INTO servers (name, workspace, hostnames, protocol, spec, updated_at,"
            " created_at) VALUES (?, 'default', ?, 'http', '{}', ?, ?)",
            (name, nested, time.time(), time.time()),
            name,
        )
        try:
            await self._hold(2.0)
        finally:
            await asyncio.to_thread(remove_junk, self.db_path, "servers", name)
        return "a 2 KB nested hostnames row held 2 s"

    async def tiny_target_concurrency(self, n: int) -> str:
        name = f"tiny-{n}"
        spec = {"autoscaling": {"target_concurrency": 5e-324, "max_replicas": 5}}
        registry = open_registry(self.cp.registry)
        try:
            try:
                await asyncio.to_thread(
                    registry.put_server,
                    name=name,
                    hostnames=[f"{name}.local"],
                    protocol="http",
                    spec=spec,
                )
                api = "the API accepted it"
            except Exception as exc:  # noqa: BLE001 - a refusal is the outcome sought
                api = f"the API refused it ({type(exc).__name__})"
                await asyncio.to_thread(
                    foreign_write,
                    self.db_path,
                    "INSERT INTO servers (name, workspace, hostnames, protocol, spec,"
                    " updated_at, created_at) VALUES (?, 'default', ?, 'http', ?, ?, ?)",
                    (
                        name,
                        json.dumps([f"{name}.local"]),
                        json.dumps(spec),
                        time.time(),
                        time.time(),
                    ),
                    name,
                )
            replica = await asyncio.to_thread(
                registry.register_replica,
                server=name,
                address=self.victim.address,
                region="us-west",
            )
            # Until Envoy routes the server (or 10 s), then the traffic that trips the tick.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                first, _ = await asyncio.to_thread(
                    self.envoys[0].get, host=f"{name}.local", timeout=5
                )
                if first == 200:
                    break
                await asyncio.sleep(0.05)
            statuses = []
            for _ in range(5):
                status, _ = await asyncio.to_thread(
                    self.envoys[0].get, host=f"{name}.local", timeout=5
                )
                statuses.append(status)
            await self._hold(1.0)  # a load tick or two with that traffic counted
            await asyncio.to_thread(registry.deregister_replica, replica.id)
            await asyncio.to_thread(remove_junk, self.db_path, "servers", name)
            return f"{api}; 5 requests: {sorted(set(statuses))}"
        finally:
            registry.close()

    async def _report(
        self, node_id: str, request: Any, *, reports: int = 2
    ) -> tuple[str, float | None]:
        """An LRS stream as ``node_id`` sending ``request`` ``reports`` times; (how it ended,
        in flight for alpha as routeplane then shows)."""
        node = base_pb2.Node(id=node_id, cluster="edge")
        node.locality.region = "us-west"
        first = lrs_pb2.LoadStatsRequest(node=node)
        ended = "open"
        async with grpc.aio.insecure_channel(
            self.cp.xds, options=[("grpc.max_send_message_length", 8 << 20)]
        ) as channel:
            stream = channel.stream_stream(
                LRS,
                request_serializer=lrs_pb2.LoadStatsRequest.SerializeToString,
                response_deserializer=lrs_pb2.LoadStatsResponse.FromString,
            )()
            try:
                await stream.write(first)
                await stream.read()
                for _ in range(reports):
                    await stream.write(request)
                await asyncio.sleep(1.0)  # a tick, so the load shows (or not)
            except grpc.aio.AioRpcError as exc:
                ended = exc.code().name
            in_flight = await asyncio.to_thread(self._alpha_in_flight)
            stream.cancel()
        return ended, in_flight

    def _alpha_in_flight(self) -> float | None:
        try:
            answer = call(self.cp.admin, "GetLoad", admin_pb2.GetLoadRequest(server="alpha"))
        except Exception:  # noqa: BLE001 - serve may be down: no figure
            return None
        return next((row.in_flight for row in answer.servers if row.region == "*"), 0.0)

    @staticmethod
    def _load(in_flight: int, *, copies: int) -> Any:
        report = lrs_pb2.LoadStatsRequest()
        for _ in range(copies):
            stats = report.cluster_stats.add(cluster_name="default_alpha")
            stats.load_report_interval.FromSeconds(1)
            for _ in range(copies):
                stats.upstream_locality_stats.add(
                    locality=base_pb2.Locality(region="us-west"),
                    total_requests_in_progress=in_flight,
                    total_issued_requests=in_flight,
                )
        return report

    async def lrs_huge_duplicated(self, n: int) -> str:
        ended, in_flight = await self._report(f"hostile-lrs-{n}", self._load(10**7, copies=3))
        return (
            f"10^7 in flight x 3 clusters x 3 localities: stream {ended}, alpha shows {in_flight}"
        )

    async def lrs_other_node(self, n: int) -> str:
        victim = self.envoys[0].node_id
        ended, in_flight = await self._report(victim, self._load(0, copies=1))
        return f"a report as {victim}: stream {ended}, alpha shows {in_flight}"

    async def long_names(self, n: int) -> str:
        async with grpc.aio.insecure_channel(
            self.cp.xds, options=[("grpc.max_send_message_length", 8 << 20)]
        ) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            node = base_pb2.Node(id=f"hostile-names-{n}", cluster="edge")
            node.locality.region = "us-west"
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=EDS,
                node=node,
                resource_names_subscribe=[f"{i:06d}" + "x" * 994 for i in range(2000)],
            )
            call_ = stub.DeltaAggregatedResources(iter([request]), timeout=5)
            try:
                async for _ in call_:
                    pass
            except grpc.aio.AioRpcError as exc:
                return f"2,000 names of 1,000 characters: {exc.code().name}"
        return "2,000 names of 1,000 characters: OK"

    async def csds_repeated(self, n: int) -> str:
        codes: dict[str, int] = {}
        started = time.perf_counter()
        async with grpc.aio.insecure_channel(
            self.cp.xds, options=[("grpc.max_receive_message_length", 256 << 20)]
        ) as channel:
            fetch = channel.unary_unary(
                CSDS,
                request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                response_deserializer=csds_pb2.ClientStatusResponse.FromString,
            )
            for _ in range(10):
                try:
                    await fetch(csds_pb2.ClientStatusRequest(), timeout=5)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1
        took = time.perf_counter() - started
        return f"10 calls: {codes} in {took:.1f} s"


async def soak(*, seconds: float, streams: int, workdir: Path) -> dict[str, Any]:
    cp = ControlPlane.create(workdir, extra=["--workers", "1"])  # one process's memory
    cp.start()
    cp.wait_ready()
    registry = open_registry(cp.registry)
    pool = [EchoThread(name=f"pool-{i}") for i in range(12)]
    victim = EchoThread(name="attacked")
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
        attacks = Attacks(cp, db_path, envoys, victim)
        failed_requests = 0
        junk: list[tuple[str, str]] = []
        hostile: list[asyncio.Task[str]] = []
        hostile_ends: dict[str, int] = {}
        live: dict[str, tuple[str, EchoThread, str]] = {}  # id -> (server, echo, state)
        changed_at = dict.fromkeys(SERVERS, 0.0)
        requests = changes = 0
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            if rng.random() < 0.25:  # the hostile phase, mixed into the churn
                if rng.random() < 0.1:
                    attacks.start_one(rng, changes)  # issue 23's, bounded in count and time
                elif junk and rng.random() < 0.4:
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
                    failed_requests += 1
                    failures.append(f"{server} via {envoy.node_id}: HTTP {status}")
            if changes % 20 == 0 and cp.alive():
                rss.append(proc_rss(cp.pid))
        for table, key in junk:
            remove_junk(db_path, table, key)
        for ended in await asyncio.gather(*hostile, return_exceptions=True):
            name = ended if isinstance(ended, str) else type(ended).__name__
            hostile_ends[name] = hostile_ends.get(name, 0) + 1
        outcomes = await attacks.finish()
        serve_up = cp.alive()
        if not serve_up:
            code = cp.process.returncode if cp.process is not None else None
            last = cp.log_path.read_text(errors="replace").strip().splitlines()[-1:]
            failures.append(f"serve exited (code {code}) during the soak; its last line: {last}")
        # At the end: every proxy converged on exactly what the registry says.
        try:
            wait_until(
                lambda: all(
                    t.state == "SYNCED"
                    for p in call(cp.admin, "ListProxies", admin_pb2.ListProxiesRequest()).proxies
                    for t in p.types
                ),
                timeout=30,
                what="every proxy SYNCED",
            )
        except Exception as exc:  # noqa: BLE001 - reported as a failure, the checks go on
            failures.append(f"proxies not SYNCED at the end: {type(exc).__name__}: {exc}")
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
        if serve_up:
            rss.append(proc_rss(cp.pid))
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
            "hostile_attacks": outcomes,
            "failed_requests": failed_requests,
            "serve_up": serve_up,
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
        for echo in [*pool, victim]:
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
    print(
        f"soak: {result['requests']} requests, {result['failed_requests']} failed (goal 0); "
        f"serve {'stayed up' if result['serve_up'] else 'went DOWN'}; "
        f"{len(result['failures'])} violations"
    )
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
