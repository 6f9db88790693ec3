"""The admin API of a ``serve --workers`` process group, answered by asking every worker.

Each worker is a whole control plane with its own admin address on loopback
(``admin/service.py``); the supervisor serves the public one with this module:

- ``ListProxies``: every worker's streams, each with its worker's index; a worker that does
  not answer within ``LIST_TIMEOUT`` is named in ``unanswered`` and the others' are listed;
- ``GetSnapshot``, ``DiffSnapshots``, ``ListProblems``: the first worker that has the group or
  node (snapshots are identical across workers: versions are content hashes);
  ``SnapshotHistory``: each group's history from the first worker that has the group;
- ``GetLoad``/``WatchLoad``: each worker sees only the load reports of the proxies connected to
  it, so the rows are summed per server and region and ``desired_replicas`` is recomputed here
  from the summed load with the same rule (``load/autoscale.py``); the supervisor follows each
  worker's WatchLoad with ``changes_only`` and sums only the servers that changed;
- ``/metrics``: every worker's exposition merged, each sample labelled ``worker``, and
  ``routeplane_worker_up`` per worker; the load families (``routeplane_server_*``) are the
  group's sums instead, as ``GetLoad`` answers them;
- ``/readyz``: ready when every worker is; the reason names each one that is not, or that does
  not answer within ``READY_TIMEOUT`` (a stopped process).

Asks the workers through the group's one client (``group/client.py``). Imports the admin protos,
the autoscaling rule and its spec value (``registry.spec``), and the load families' rendering
(``metrics``); nothing of the xDS engine, the pipeline or a store.
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

from control_plane.admin.loadview import LoadAnswers
from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.group.client import Workers, WorkerUnavailable
from control_plane.load.autoscale import Recommender
from control_plane.load.quiet import ChangeLog, settled
from control_plane.metrics import LOAD_FAMILIES_START, LoadExposition
from control_plane.registry.spec import Autoscaling

# A worker that does not answer within these is named as silent, and the others' answers stand:
# /readyz answers inside a 2 s probe timeout, ListProxies inside the CLI's 10 s.
READY_TIMEOUT = 1.0
LIST_TIMEOUT = 3.0
CHANGES_KEPT = 64  # versions whose changed servers are kept for watchers a little behind
UP = (
    "# HELP routeplane_worker_up 1 if the worker answered this scrape (serve --workers)\n"
    "# TYPE routeplane_worker_up gauge\nrouteplane_worker_up %d\n"
)


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
    """Worker load answers -> the group's rows: summed per (server, region), recommendations
    recomputed from the sums. Keeps every worker's rows per server, so an answer with only the
    servers that changed (``changes_only``) is summed for those alone; a sum also revisits the
    servers whose recommendation has not settled (``load/quiet.py``), and nothing else: an idle
    group of 10,000 servers costs nothing. A load view (``admin/loadview.py``) of its sums.
    Pure but for the Recommender's memory; time is an argument."""

    def __init__(self, workers: int = 0) -> None:
        self._recommender = Recommender()
        self._workers: list[dict[str, list[Any]]] = [{} for _ in range(workers)]
        self._proxies = [0] * workers
        self._interval = 0.0
        self._cold_seen: dict[tuple[int, str], int] = {}  # (worker, server) -> its cold starts
        self._woken: set[str] = set()
        self._touched: set[str] = set()
        self._active: set[str] = set()  # recommendations not settled
        self._rows: dict[str, tuple[Any, ...]] = {}  # server -> summed rows (ServerLoad)
        self._keys: dict[str, set[tuple[str, str]]] = {}
        self._order: list[str] = []
        self._log = ChangeLog(CHANGES_KEPT)  # the sums' version, and what each one changed

    # The view.

    @property
    def version(self) -> int:
        return self._log.version

    @property
    def reporting_proxies(self) -> int:
        return sum(self._proxies)

    @property
    def report_interval(self) -> float:
        return self._interval

    def servers(self) -> list[str]:
        return self._order

    def rows_of(self, server: str) -> tuple[Any, ...]:
        """One server's summed rows (do not alter them)."""
        return self._rows.get(server, ())

    def changes_since(self, version: int) -> frozenset[str] | None:
        return self._log.since(version)

    # Taking answers.

    def take(self, worker: int, answer: Any) -> None:
        """Worker ``worker``'s answer: every row, or only the servers that changed."""
        while len(self._workers) <= worker:
            self._workers.append({})
            self._proxies.append(0)
        mine = self._workers[worker]
        grouped: dict[str, list[Any]] = {}
        for row in answer.servers:
            grouped.setdefault(row.server, []).append(row)
        # A whole answer: a server it lacks went; only changes: those it says went.
        gone = set(answer.removed_servers) if answer.changes_only else set(mine) - grouped.keys()
        for name in gone:
            mine.pop(name, None)
            self._cold_seen.pop((worker, name), None)
        mine.update(grouped)
        self._touched |= gone | grouped.keys()
        self._proxies[worker] = answer.reporting_proxies
        self._interval = answer.report_interval_seconds
        # A cold start wakes its server when the worker that counted it had no replica: that
        # worker's table is the one the proxy's route came from. (The group's ready count can
        # be another worker's, a moment behind: a replica just deregistered still counted.)
        for name, rows in grouped.items():
            for row in rows:
                if row.region == "*":
                    seen = (worker, name)
                    new_cold = row.cold_starts - self._cold_seen.get(seen, 0)
                    self._cold_seen[seen] = row.cold_starts
                    if new_cold > 0 and row.ready_replicas == 0:
                        self._woken.add(name)

    def sum(self, *, now: float) -> bool:
        """Sum the servers answers changed since the last sum, and update the
        recommendations not settled; whether any row moved."""
        touch = self._touched | self._active
        self._touched = set()
        woken, self._woken = self._woken, set()
        changed: set[str] = set()
        active: set[str] = set()
        reordered = False
        forget = False
        for name in touch:
            rows, keys, moving = self._sum_server(name, now=now, woken=name in woken)
            if moving:
                active.add(name)
            if self._keys.get(name, keys) - keys:
                forget = True  # a region or the rule went away: its history goes too
            if rows:
                self._keys[name] = keys
                if name not in self._rows:
                    reordered = True
                if rows != self._rows.get(name):
                    self._rows[name] = rows
                    changed.add(name)
            elif name in self._rows:
                del self._rows[name]
                self._keys.pop(name, None)
                changed.add(name)
                reordered = forget = True
        self._active = active
        if forget:
            self._recommender.forget({k for keys in self._keys.values() for k in keys})
        if reordered:
            self._order = sorted(self._rows)
        if changed:
            self._log.add(frozenset(changed))
        return bool(changed)

    def _sum_server(
        self, name: str, *, now: float, woken: bool
    ) -> tuple[tuple[Any, ...], set[tuple[str, str]], bool]:
        """One server's rows summed over workers (first worker's order, then new regions),
        with its recommendations; its keys; whether a recommendation is still moving."""
        summed: dict[str, Any] = {}
        for mine in self._workers:
            for row in mine.get(name, ()):
                total = summed.get(row.region)
                if total is None:
                    total = summed[row.region] = admin_pb2.ServerLoad()
                    total.CopyFrom(row)
                    continue
                # Every worker reads the same registry: replicas are the same, load adds up.
                total.ready_replicas = max(total.ready_replicas, row.ready_replicas)
                total.in_flight += row.in_flight
                total.requests_per_second += row.requests_per_second
                total.errors_per_second += row.errors_per_second
                total.dropped_per_second += row.dropped_per_second
                total.cold_starts += row.cold_starts
                if row.HasField("autoscaling") and not total.HasField("autoscaling"):
                    total.autoscaling.CopyFrom(row.autoscaling)
        keys: set[tuple[str, str]] = set()
        moving = False
        for row in summed.values():
            if not row.HasField("autoscaling"):
                row.desired_replicas = -1
                continue
            key = (row.server, row.region)
            keys.add(key)
            rule = _rule(row.autoscaling)
            wake = row.region == "*" and woken
            row.desired_replicas = self._recommender.update(
                key,
                in_flight=row.in_flight,
                ready=row.ready_replicas,
                spec=rule,
                now=now,
                wake=wake,
            )
            moving |= not settled(
                row.desired_replicas, in_flight=row.in_flight, wake=wake, spec=rule
            )
        return tuple(summed.values()), keys, moving

    def add(self, answers: Sequence[Any], *, now: float) -> Any:
        """Every worker's whole answer at once -> the whole summed answer."""
        for index, answer in enumerate(answers):
            self.take(index, answer)
        self.sum(now=now)
        total = admin_pb2.LoadResponse(
            reporting_proxies=self.reporting_proxies,
            report_interval_seconds=self.report_interval,
        )
        for name in self._order:
            total.servers.extend(self._rows[name])
        return total


class AggregateService(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    """The admin API over ``workers`` (their admin addresses; ``pids`` name them in messages
    when given). Create it inside the event loop; ``run()`` keeps the summed load fresh until
    cancelled; ``close()`` at the end."""

    def __init__(
        self,
        *,
        workers: Sequence[str],
        pids: Sequence[int] = (),
        token: str = "",
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = list(workers)
        self._names = [
            f"worker {index} ({f'pid {pids[index]}, ' if index < len(pids) else ''}admin {address})"
            for index, address in enumerate(self.workers)
        ]
        self.client = Workers(self.workers, token=token)  # the supervisor's one client
        self._call = self.client.call
        self._stubs = self.client.stubs
        self._interval = interval
        self._clock = clock
        self._sum = LoadSum(len(self.workers))
        self._answers = LoadAnswers(self._sum, _add_rows)
        self._exposition = LoadExposition(self._sum)
        self._summed = False  # every worker's rows were summed at least once
        self._changed = asyncio.Condition()
        self._updated = asyncio.Event()  # a worker's WatchLoad brought an answer

    async def close(self) -> None:
        await self.client.close()

    # What the supervisor's HTTP side serves.

    async def ready(self) -> tuple[bool, str]:
        answers = await asyncio.gather(
            *(self.client.get(a, "/readyz", timeout=READY_TIMEOUT) for a in self.workers),
            return_exceptions=True,
        )
        reasons = []
        for name, answer in zip(self._names, answers, strict=True):
            if isinstance(answer, WorkerUnavailable):
                reasons.append(f"{name} did not answer: {answer}")
            elif isinstance(answer, BaseException):
                raise answer
            else:
                status, body = answer
                if status != 200:
                    reasons.append(f"{name}: {body.decode(errors='replace').strip()}")
        if reasons:
            return False, "; ".join(reasons)
        return True, f"ready ({len(self.workers)} workers)"

    async def metrics(self) -> bytes:
        """Every worker's exposition, and ``routeplane_worker_up`` (0: that worker's series
        are missing from this scrape)."""
        answers = await asyncio.gather(
            *(self.client.get(address, "/metrics") for address in self.workers),
            return_exceptions=True,
        )
        texts = []
        for index, answer in enumerate(answers):
            status, body = (0, b"") if isinstance(answer, BaseException) else answer
            up = status == 200
            # A worker's load families are its share: the group's come from the sums.
            body = body.split(LOAD_FAMILIES_START, 1)[0]
            texts.append((str(index), (body.decode() if up else "") + UP % int(up)))
        return merge_metrics(texts) + self._exposition.render()

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
        """Every answering worker's proxies; a worker that does not answer in time is named
        in ``unanswered`` rather than hiding the others'."""
        call = {**self._call, "timeout": LIST_TIMEOUT}
        answers = await asyncio.gather(
            *(stub.ListProxies(request, **call) for stub in self._stubs), return_exceptions=True
        )
        response = admin_pb2.ListProxiesResponse()
        for index, answer in enumerate(answers):
            if isinstance(answer, grpc.aio.AioRpcError):
                response.unanswered.append(
                    f"{self._names[index]}: {answer.code().name} {answer.details()}"
                )
                continue
            if isinstance(answer, BaseException):
                raise answer
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

    async def tick(self) -> None:
        """Ask every worker for its load now and sum; wakes ``WatchLoad``ers."""
        calls = [stub.GetLoad(admin_pb2.GetLoadRequest(), **self._call) for stub in self._stubs]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, grpc.aio.AioRpcError):
                raise WorkerUnavailable(f"worker {index}: {answer.details()}")
            if isinstance(answer, BaseException):
                raise answer
        for index, answer in enumerate(answers):
            self._sum.take(index, answer)
        await self._publish()

    async def _publish(self) -> None:
        moved = self._sum.sum(now=self._clock())
        if moved or not self._summed:
            self._summed = True
            async with self._changed:
                self._changed.notify_all()

    async def run(self) -> None:
        """Follow every worker's ``WatchLoad`` (only what changed, after the first answer)
        until cancelled, and sum on each worker's update (a cold start reaches the group's
        watchers as soon as its worker's) and every half report interval (a recommendation
        not settled moves with time, not only with load)."""
        following = [False] * len(self._stubs)  # the worker's first (whole) answer came
        updated = self._updated

        async def follow(index: int, stub: Any) -> None:
            metadata = self._call["metadata"]
            request = admin_pb2.GetLoadRequest(changes_only=True)
            while True:
                try:
                    async for answer in stub.WatchLoad(
                        request, metadata=metadata, wait_for_ready=True
                    ):
                        self._sum.take(index, answer)
                        following[index] = True
                        updated.set()
                except grpc.aio.AioRpcError:
                    following[index] = False  # a worker starting or stopping: ask again
                await asyncio.sleep(self._interval / 2)  # pacing the retry

        followers = [asyncio.create_task(follow(i, s)) for i, s in enumerate(self._stubs)]
        try:
            while True:
                if all(following):
                    await self._publish()
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

    async def GetLoad(self, request: Any, context: Any) -> Any:
        if not self._summed:
            try:
                await self.tick()
            except WorkerUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return self._answers.get(request)

    async def WatchLoad(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for response in self._answers.watch(request, self._versions()):
            yield response

    async def _versions(self) -> AsyncIterator[int]:
        seen = -1
        while True:
            if self._summed and self._sum.version != seen:
                seen = self._sum.version
                yield seen
            async with self._changed:
                await self._changed.wait()


def _add_rows(response: Any, rows: Iterable[Any]) -> None:
    response.servers.extend(rows)
