"""The admin API of a ``serve --workers`` process group, answered by asking every worker.

Each worker is a whole control plane with its own admin address on loopback
(``admin/service.py``); the supervisor serves the public one with this module:

- ``ListProxies``: every worker's streams, each with its worker's index;
- ``GetSnapshot``, ``DiffSnapshots``, ``ListProblems``: the first worker that has the group or
  node (snapshots are identical across workers: versions are content hashes);
  ``SnapshotHistory``: each group's history from the first worker that has the group;
- ``GetLoad``/``WatchLoad``: each worker sees only the load reports of the proxies connected to
  it, so the rows are summed per server and region and ``desired_replicas`` is recomputed here
  from the summed load with the same rule (``load/autoscale.py``);
- ``/metrics``: every worker's exposition merged, each sample labelled ``worker``, and
  ``routeplane_worker_up`` per worker;
- ``/readyz``: ready when every worker is.

Imports the admin protos, the autoscaling rule and its spec value (``registry.spec``); nothing of
the xDS engine, the pipeline or a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.load.autoscale import Recommender
from control_plane.registry.spec import Autoscaling

CALL_TIMEOUT = 10.0
HTTP_TIMEOUT = 5.0
MAX_HTTP_BYTES = 64 * 1024 * 1024
UP = (
    "# HELP routeplane_worker_up 1 if the worker answered this scrape (serve --workers)\n"
    "# TYPE routeplane_worker_up gauge\nrouteplane_worker_up %d\n"
)


class WorkerUnavailable(Exception):
    """A worker did not answer (its message names the worker)."""


async def http_get(address: str, path: str, *, token: str = "") -> bytes:
    """``GET path`` on a worker's admin address -> the raw HTTP answer (see ``split_http``)."""
    host, _, port = address.rpartition(":")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        async with asyncio.timeout(HTTP_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, int(port))
    except (OSError, TimeoutError) as exc:
        raise WorkerUnavailable(f"worker at {address}: {exc}") from None
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n".encode()
        )
        data = bytearray()
        async with asyncio.timeout(HTTP_TIMEOUT):
            while chunk := await reader.read(65536):
                data += chunk
                if len(data) > MAX_HTTP_BYTES:
                    raise WorkerUnavailable(f"worker at {address}: over {MAX_HTTP_BYTES} bytes")
    except (OSError, TimeoutError) as exc:
        raise WorkerUnavailable(f"worker at {address}: {exc}") from None
    finally:
        writer.close()
    return bytes(data)


def split_http(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body


def merge_metrics(expositions: Iterable[tuple[str, str]]) -> bytes:
    """(worker, exposition text) pairs -> one exposition: each family once (one HELP/TYPE),
    every sample with a ``worker`` label."""
    families: dict[str, Metric] = {}
    for worker, text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples.extend(
                sample._replace(labels={**sample.labels, "worker": worker})
                for sample in family.samples
            )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    exposition: bytes = generate_latest(registry)
    return exposition


class _Fixed(Collector):  # type: ignore[misc]
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _rule(message: Any) -> Autoscaling:
    return Autoscaling(
        target_concurrency=message.target_concurrency,
        min_replicas=message.min_replicas,
        max_replicas=message.max_replicas,
        buffer_replicas=message.buffer_replicas,
        scale_up_window=message.scale_up_window_seconds,
        scale_down_window=message.scale_down_window_seconds,
    )


class LoadSum:
    """Worker load answers -> one answer: summed per (server, region), recommendations
    recomputed from the sums. Pure but for the Recommender's memory; time is an argument."""

    def __init__(self) -> None:
        self._recommender = Recommender()
        self._cold_seen: dict[tuple[int, str], int] = {}  # (worker, server) -> its cold starts

    def add(self, answers: Sequence[Any], *, now: float) -> Any:
        total = admin_pb2.LoadResponse()
        rows: dict[tuple[str, str], Any] = {}
        # A cold start wakes its server when the worker that counted it had no replica: that
        # worker's table is the one the proxy's route came from. (The group's ready count can
        # be another worker's, a moment behind: a replica just deregistered still counted.)
        woken: set[str] = set()
        for index, answer in enumerate(answers):
            for row in answer.servers:
                if row.region != "*":
                    continue
                seen = (index, row.server)
                new_cold = row.cold_starts - self._cold_seen.get(seen, 0)
                self._cold_seen[seen] = row.cold_starts
                if new_cold > 0 and row.ready_replicas == 0:
                    woken.add(row.server)
        for answer in answers:
            total.reporting_proxies += answer.reporting_proxies
            total.report_interval_seconds = answer.report_interval_seconds
            for row in answer.servers:
                key = (row.server, row.region)
                mine = rows.get(key)
                if mine is None:
                    mine = rows[key] = total.servers.add()
                    mine.CopyFrom(row)
                    continue
                # Every worker reads the same registry: replicas are the same, load adds up.
                mine.ready_replicas = max(mine.ready_replicas, row.ready_replicas)
                mine.in_flight += row.in_flight
                mine.requests_per_second += row.requests_per_second
                mine.errors_per_second += row.errors_per_second
                mine.dropped_per_second += row.dropped_per_second
                mine.cold_starts += row.cold_starts
                if row.HasField("autoscaling") and not mine.HasField("autoscaling"):
                    mine.autoscaling.CopyFrom(row.autoscaling)
        keep: set[object] = set()
        for row in total.servers:
            if not row.HasField("autoscaling"):
                row.desired_replicas = -1
                continue
            key = (row.server, row.region)
            keep.add(key)
            row.desired_replicas = self._recommender.update(
                key,
                in_flight=row.in_flight,
                ready=row.ready_replicas,
                spec=_rule(row.autoscaling),
                now=now,
                wake=row.region == "*" and row.server in woken,
            )
        self._recommender.forget(keep)
        return total


class AggregateService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """The admin API over ``workers`` (their admin addresses). Create it inside the event
    loop; ``run()`` keeps the summed load fresh until cancelled; ``close()`` at the end."""

    def __init__(
        self,
        *,
        workers: Sequence[str],
        token: str = "",
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = list(workers)
        self._token = token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # wait_for_ready: a worker that just started may not have been reachable when the
        # channel first tried; its call waits (up to the timeout) instead of failing at once.
        self._call: dict[str, Any] = {
            "timeout": CALL_TIMEOUT,
            "metadata": metadata,
            "wait_for_ready": True,
        }
        self._channels = [grpc.aio.insecure_channel(address) for address in self.workers]
        self._stubs = [admin_pb2_grpc.AdminStub(channel) for channel in self._channels]
        self._interval = interval
        self._clock = clock
        self._sum = LoadSum()
        self._load: Any = None
        self._version = 0
        self._changed = asyncio.Condition()
        self._updated = asyncio.Event()  # a worker's WatchLoad brought an answer

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    # What the supervisor's HTTP side serves.

    async def ready(self) -> tuple[bool, str]:
        answers = await asyncio.gather(
            *(http_get(address, "/readyz") for address in self.workers), return_exceptions=True
        )
        for index, answer in enumerate(answers):
            if isinstance(answer, BaseException):
                return False, f"worker {index}: {answer}"
            status, body = split_http(answer)
            if status != 200:
                return False, f"worker {index}: {body.decode(errors='replace').strip()}"
        return True, f"ready ({len(self.workers)} workers)"

    async def metrics(self) -> bytes:
        """Every worker's exposition, and ``routeplane_worker_up`` (0: that worker's series
        are missing from this scrape)."""
        answers = await asyncio.gather(
            *(http_get(address, "/metrics", token=self._token) for address in self.workers),
            return_exceptions=True,
        )
        texts = []
        for index, answer in enumerate(answers):
            status, body = (0, b"") if isinstance(answer, BaseException) else split_http(answer)
            up = status == 200
            texts.append((str(index), (body.decode() if up else "") + UP % int(up)))
        return merge_metrics(texts)

    # Calls to the workers.

    async def _all(self, method: str, request: Any, context: Any) -> list[Any]:
        calls = [getattr(stub, method)(request, **self._call) for stub in self._stubs]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, grpc.aio.AioRpcError):
                await context.abort(answer.code(), f"worker {index}: {answer.details()}")
            if isinstance(answer, BaseException):
                raise answer
        return answers

    async def _first(self, method: str, request: Any, context: Any) -> Any:
        """The first worker's answer that is not NOT_FOUND; the last NOT_FOUND if all are."""
        missing: grpc.aio.AioRpcError | None = None
        for index, stub in enumerate(self._stubs):
            try:
                return await getattr(stub, method)(request, **self._call)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    await context.abort(exc.code(), f"worker {index}: {exc.details()}")
                missing = exc
        assert missing is not None
        await context.abort(missing.code(), missing.details())
        return None  # abort raised

    # The admin API.

    async def ListProxies(self, request: Any, context: Any) -> Any:
        response = admin_pb2.ListProxiesResponse()
        for index, answer in enumerate(await self._all("ListProxies", request, context)):
            for proxy in answer.proxies:
                proxy.worker = str(index)
            response.proxies.extend(answer.proxies)
        response.proxies.sort(key=lambda proxy: (proxy.node_id, proxy.connected_since))
        return response

    async def GetSnapshot(self, request: Any, context: Any) -> Any:
        return await self._first("GetSnapshot", request, context)

    async def DiffSnapshots(self, request: Any, context: Any) -> Any:
        return await self._first("DiffSnapshots", request, context)

    async def ListProblems(self, request: Any, context: Any) -> Any:
        return await self._first("ListProblems", request, context)

    async def SnapshotHistory(self, request: Any, context: Any) -> Any:
        response = admin_pb2.SnapshotHistoryResponse()
        seen: set[str] = set()
        for answer in await self._all("SnapshotHistory", request, context):
            groups = {entry.node_group for entry in answer.entries} - seen
            response.entries.extend(e for e in answer.entries if e.node_group in groups)
            seen |= groups
        return response

    async def tick(self) -> Any:
        """Ask every worker for its load now and sum; wakes ``WatchLoad``ers."""
        calls = [stub.GetLoad(admin_pb2.GetLoadRequest(), **self._call) for stub in self._stubs]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, grpc.aio.AioRpcError):
                raise WorkerUnavailable(f"worker {index}: {answer.details()}")
            if isinstance(answer, BaseException):
                raise answer
        return await self._publish(answers)

    async def _publish(self, answers: Sequence[Any]) -> Any:
        self._load = self._sum.add(answers, now=self._clock())
        self._version += 1
        async with self._changed:
            self._changed.notify_all()
        return self._load

    async def run(self) -> None:
        """Follow every worker's ``WatchLoad`` until cancelled, and sum on each worker's update
        (a cold start reaches the group's watchers as soon as its worker's) and every half
        report interval (the recommendation's windows move with time, not only with load)."""
        latest: list[Any] = [None] * len(self._stubs)
        updated = self._updated

        async def follow(index: int, stub: Any) -> None:
            metadata = self._call["metadata"]
            while True:
                try:
                    async for answer in stub.WatchLoad(
                        admin_pb2.GetLoadRequest(), metadata=metadata, wait_for_ready=True
                    ):
                        latest[index] = answer
                        updated.set()
                except grpc.aio.AioRpcError:
                    latest[index] = None  # a worker starting or stopping: ask again
                await asyncio.sleep(self._interval / 2)  # pacing the retry

        followers = [asyncio.create_task(follow(i, s)) for i, s in enumerate(self._stubs)]
        try:
            while True:
                if all(answer is not None for answer in latest):
                    await self._publish(latest)
                updated.clear()
                # asyncio.timeout, not wait_for: in 3.11 wait_for returns the event's result
                # when it is set in the same loop turn as a cancel, and the cancel is lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval / 2):
                        await updated.wait()
        finally:
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    def _only(self, load: Any, server: str) -> Any:
        if not server:
            return load
        response = admin_pb2.LoadResponse()
        response.CopyFrom(load)
        del response.servers[:]
        response.servers.extend(row for row in load.servers if row.server == server)
        return response

    async def GetLoad(self, request: Any, context: Any) -> Any:
        if self._load is None:
            try:
                await self.tick()
            except WorkerUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return self._only(self._load, request.server)

    async def WatchLoad(self, request: Any, context: Any) -> AsyncIterator[Any]:
        seen = -1
        while True:
            if self._load is not None and self._version != seen:
                seen = self._version
                yield self._only(self._load, request.server)
            async with self._changed:
                await self._changed.wait()
