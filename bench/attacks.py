"""The three growth attacks of issue 12 against a real ``routeplane serve`` (loopback only).

``python -m bench.attacks [--groups 10000] [--names 100000] [--rounds 30] [--version-streams 20]
[--name-streams 4] [--name-length 1000] [--csds-servers 1000] [--csds-proxies 100]
[--csds-calls 20] [--only ATTACK ...]``

1. groups: many short ADS streams, each with its own ``node.cluster`` (a new node group each),
   then registry changes while they are gone;
2. names: one delta stream subscribing ``--names`` new EDS names per request, ``--rounds`` times;
3. versions: ``--version-streams`` delta streams, each with ``--names`` junk
   ``initial_resource_versions``;
4. name-bytes (issue 23): ``--name-streams`` delta streams, each subscribing to 20,000 names of
   ``--name-length`` (1,000) characters on each of 8 types (requests under gRPC's 4 MiB),
   held, then closed;
5. csds (issue 23): ``--csds-servers`` servers and ``--csds-proxies`` SotW ADS streams (wildcard
   CDS), then ``--csds-calls`` CSDS calls at once on the xDS port from one peer: the serve
   process's CPU (``/proc/PID/schedstat``, ns) and how the calls ended.
For each: the control plane's resident memory (VmRSS of the serve process) before and after
(for name-bytes also at the peak, with the streams held, and 5 s after they closed),
and the event loop's responsiveness: ``/healthz`` latency, max while the attack and a registry
change run. Admission control is opened wide (``--new-streams-per-second 1000000``) so the
attacks measure growth, not the rate limit. ``--code DIR`` runs another checkout's control
plane (for a before/after comparison in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.registry import open_registry
from harness.waiting import free_port

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def healthz_ms(admin: str, limit: float = 60.0) -> float:
    host, port = admin.rsplit(":", 1)
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), timeout=limit
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), timeout=limit)
        writer.close()
    except (OSError, TimeoutError):
        return limit * 1000
    return (time.perf_counter() - started) * 1000


class Probe:
    """Samples /healthz latency every 50 ms while running; keeps the max."""

    def __init__(self, admin: str) -> None:
        self.admin = admin
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.max_ms = max(self.max_ms, await healthz_ms(self.admin))
            await asyncio.sleep(0.05)

    def __enter__(self) -> Probe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _has_workers(code: Path) -> bool:
    """Whether the checkout has ``serve --workers`` (``workers.py`` until it became ``group/``)."""
    base = code / "control_plane"
    return (base / "workers.py").exists() or (base / "group").is_dir()


@contextlib.asynccontextmanager
async def control_plane(code: Path, workdir: Path) -> AsyncIterator[dict[str, Any]]:
    db = workdir / "registry.db"
    url = f"sqlite://{db}"
    registry = open_registry(url)
    registry.init()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    for port in (8081, 8082):
        registry.register_replica(server="echo", address=f"127.0.0.1:{port}", region="us-west")
    xds, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(code)}
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock runs
        [
            sys.executable,
            "-c",
            "from control_plane.cli import main; main()",
            "serve",
            "--registry",
            url,
            "--xds-listen",
            xds,
            "--admin-listen",
            admin,
            "--new-streams-per-second",
            "1000000",
            # One process: VmRSS is the serving process's (a checkout from before workers has
            # no flag and is one process anyway).
            *(["--workers", "1"] if _has_workers(code) else []),
            "--log-level",
            "error",
        ],
        env=env,
        cwd=code,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while await healthz_ms(admin, limit=1) >= 1000:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the control plane did not start")
            await asyncio.sleep(0.1)
        yield {"xds": xds, "admin": admin, "pid": process.pid, "registry": registry}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        registry.close()


async def change(registry: Any, i: int) -> None:
    await asyncio.to_thread(
        registry.register_replica, server="echo", address=f"127.0.0.1:{9000 + i}", region="us-west"
    )


async def attack_groups(cp: dict[str, Any], groups: int) -> dict[str, Any]:
    before = rss_mb(cp["pid"])
    refused = 0
    async with grpc.aio.insecure_channel(cp["xds"]) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)

        async def one(i: int) -> None:
            nonlocal refused
            node = base_pb2.Node(id=f"attacker-{i}", cluster=f"fleet-{i}")
            request = discovery_pb2.DiscoveryRequest(type_url=CDS, node=node)
            call = stub.StreamAggregatedResources(iter([request]), timeout=10)
            try:
                async for _ in call:
                    break
            except grpc.aio.AioRpcError as exc:
                refused += exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            call.cancel()

        with Probe(cp["admin"]) as probe:
            for start in range(0, groups, 200):
                await asyncio.gather(*(one(i) for i in range(start, min(groups, start + 200))))
            during = probe.max_ms
            probe.max_ms = 0.0
            for i in range(5):
                await change(cp["registry"], i)
                await asyncio.sleep(0.3)
            after_change = probe.max_ms
    return {
        "attack": f"{groups} short streams, each its own node.cluster; then 5 registry changes",
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(cp["pid"]),
        "healthz_max_ms_during": round(during, 1),
        "healthz_max_ms_on_change": round(after_change, 1),
        "refused_resource_exhausted": refused,
    }


async def attack_names(cp: dict[str, Any], names: int, rounds: int) -> dict[str, Any]:
    before = rss_mb(cp["pid"])
    ended = ""
    async with grpc.aio.insecure_channel(
        cp["xds"], options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = base_pb2.Node(id="names-attacker", cluster="edge")
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            while (item := await queue.get()) is not None:
                yield item

        call = stub.DeltaAggregatedResources(requests())
        with Probe(cp["admin"]) as probe:
            for r in range(rounds):
                await queue.put(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=EDS,
                        node=node,
                        resource_names_subscribe=[f"junk-{r}-{i}" for i in range(names)],
                    )
                )
            await change(cp["registry"], 100)
            try:
                await asyncio.wait_for(call.read(), timeout=30)
            except grpc.aio.AioRpcError as exc:
                ended = f"{exc.code().name}: {(exc.details() or '')[:120]}"
            except TimeoutError:
                ended = "no answer in 30 s"
            await asyncio.sleep(1)
            during = probe.max_ms
        await queue.put(None)
        call.cancel()
    return {
        "attack": f"1 delta stream, {rounds} requests of {names} new names",
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(cp["pid"]),
        "healthz_max_ms_during": round(during, 1),
        "stream_ended": ended or "no",
    }


async def attack_versions(cp: dict[str, Any], streams: int, names: int) -> dict[str, Any]:
    before = rss_mb(cp["pid"])
    codes: list[str] = []
    async with grpc.aio.insecure_channel(
        cp["xds"], options=[("grpc.max_send_message_length", 64 << 20)]
    ) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        junk = {f"junk-{i}": "v" for i in range(names)}

        release = asyncio.Event()

        async def held(request: Any) -> AsyncIterator[Any]:
            yield request
            await release.wait()  # keep the stream open until the measurement is taken

        async def one(i: int) -> None:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=EDS,
                node=base_pb2.Node(id=f"versions-{i}", cluster="edge"),
                initial_resource_versions=junk,
            )
            call = stub.DeltaAggregatedResources(held(request), timeout=30)
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)

        with Probe(cp["admin"]) as probe:
            tasks = [asyncio.create_task(one(i)) for i in range(streams)]
            await asyncio.sleep(3)
            peak = rss_mb(cp["pid"])
            release.set()
            await asyncio.gather(*tasks)
            during = probe.max_ms
    return {
        "attack": f"{streams} delta streams with {names} junk initial_resource_versions",
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_after_mb": rss_mb(cp["pid"]),
        "healthz_max_ms_during": round(during, 1),
        "stream_ends": sorted(set(codes)),
    }


async def attack_name_bytes(cp: dict[str, Any], streams: int, length: int) -> dict[str, Any]:
    before = rss_mb(cp["pid"])
    types = [
        EDS,
        CDS,
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        *(f"type.googleapis.com/junk.Type{i}" for i in range(4)),
    ]
    ends: list[str] = []
    async with grpc.aio.insecure_channel(cp["xds"]) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        release = asyncio.Event()

        async def requests(i: int) -> AsyncIterator[Any]:
            node = base_pb2.Node(id=f"name-bytes-{i}", cluster="edge")
            for t, type_url in enumerate(types):
                for start in range(0, 20_000, 3_000):  # 3 MB a request, under 4 MiB
                    yield discovery_pb2.DeltaDiscoveryRequest(
                        type_url=type_url,
                        node=node,
                        resource_names_subscribe=[
                            f"{i}-{t}-{n}-".ljust(length, "x")
                            for n in range(start, min(20_000, start + 3_000))
                        ],
                    )
            await release.wait()

        async def one(i: int) -> None:
            call = stub.DeltaAggregatedResources(requests(i))
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as exc:
                ends.append(f"{exc.code().name}: {(exc.details() or '')[:100]}")

        with Probe(cp["admin"]) as probe:
            tasks = [asyncio.create_task(one(i)) for i in range(streams)]
            await asyncio.sleep(10)  # a bench: long enough for every request to be read
            peak = rss_mb(cp["pid"])
            release.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            during = probe.max_ms
    await asyncio.sleep(5)
    return {
        "attack": f"{streams} delta streams, 20,000 names of {length} characters on 8 types each",
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_after_close_mb": rss_mb(cp["pid"]),
        "healthz_max_ms_during": round(during, 1),
        "stream_ends": sorted(set(ends)),
    }


def cpu_seconds(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


async def attack_csds(cp: dict[str, Any], servers: int, proxies: int, calls: int) -> dict[str, Any]:
    from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

    registry = cp["registry"]
    for i in range(servers):
        await asyncio.to_thread(
            registry.create_server, name=f"s{i}", hostnames=[f"s{i}.local"], protocol="http"
        )
    async with grpc.aio.insecure_channel(
        cp["xds"], options=[("grpc.max_receive_message_length", 1 << 30)]
    ) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        held = []
        for i in range(proxies):
            call = stub.StreamAggregatedResources()
            node = base_pb2.Node(
                id=f"proxy-{i}", cluster="edge", locality=base_pb2.Locality(region="us-west")
            )
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CDS, node=node))
            held.append(call)
        for call in held:
            response = await call.read()
            while len(response.resources) < servers + 1:  # every server's cluster is in
                response = await call.read()
        status = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel)
        cpu_before = cpu_seconds(cp["pid"])
        started = time.perf_counter()
        answers = await asyncio.gather(
            *(
                status.FetchClientStatus(csds_pb2.ClientStatusRequest(), timeout=120)
                for _ in range(calls)
            ),
            return_exceptions=True,
        )
        wall = time.perf_counter() - started
        cpu = cpu_seconds(cp["pid"]) - cpu_before
        for call in held:
            call.cancel()
    ends: dict[str, int] = {}
    sizes = []
    for answer in answers:
        if isinstance(answer, grpc.aio.AioRpcError):
            key = f"{answer.code().name}: {(answer.details() or '')[:90]}"
        elif isinstance(answer, BaseException):
            key = repr(answer)[:90]
        else:
            key = "OK"
            sizes.append(answer.ByteSize())
        ends[key] = ends.get(key, 0) + 1
    return {
        "attack": f"{calls} CSDS calls at once on the xDS port, {proxies} proxies, "
        f"{servers} servers",
        "serve_cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "answer_mb": round(max(sizes) / 1e6, 1) if sizes else 0,
        "ends": ends,
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    code = Path(args.code).resolve()  # noqa: ASYNC240 - once, at start
    for name in args.only or ("groups", "names", "versions", "name-bytes", "csds"):
        with tempfile.TemporaryDirectory(prefix="routeplane-attack-") as tmp:
            async with control_plane(code, Path(tmp)) as cp:
                if name == "csds":
                    out.append(
                        await attack_csds(cp, args.csds_servers, args.csds_proxies, args.csds_calls)
                    )
                elif name == "groups":
                    out.append(await attack_groups(cp, args.groups))
                elif name == "name-bytes":
                    out.append(await attack_name_bytes(cp, args.name_streams, args.name_length))
                elif name == "names":
                    out.append(await attack_names(cp, args.names, args.rounds))
                else:
                    out.append(await attack_versions(cp, args.version_streams, args.names))
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=10_000)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--version-streams", type=int, default=20)
    parser.add_argument("--name-streams", type=int, default=4)
    parser.add_argument("--name-length", type=int, default=1000)
    parser.add_argument("--csds-servers", type=int, default=1000)
    parser.add_argument("--csds-proxies", type=int, default=100)
    parser.add_argument("--csds-calls", type=int, default=20)
    parser.add_argument(
        "--only", action="append", choices=("groups", "names", "versions", "name-bytes", "csds")
    )
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
