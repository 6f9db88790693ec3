"""The admin API of a ``serve --workers`` process group, answered by asking every worker.

Each worker is a whole control plane with its own admin address on loopback
(``admin/service.py``); the supervisor serves the public one with this module:

- ``ListProxies``: every worker's streams, each with its worker's index; a worker that does
  not answer within ``LIST_TIMEOUT`` is named in ``unanswered`` and the others' are listed;
- ``GetSnapshot``, ``DiffSnapshots``, ``ListProblems``: the first worker that has the group or
  node (snapshots are identical across workers: versions are content hashes);
  ``SnapshotHistory``: each group's history from the first worker that has the group;
- ``GetLoad``/``WatchLoad``: each worker sees only the load reports of the proxies connected to
  it, so the supervisor follows each worker's load totals (``WatchLoadTotals``: after the
  first, only the servers that changed; the specs only when they change), merges them per
  server (``load/totals.py``) and makes the rows from the merge with the one ``recommend``
  a lone process uses; only the servers that changed are merged again;
- the fleet (``control_plane/fleet/``): each worker also sends the other control planes'
  totals it read from the registry (``remote``: never its siblings', which share its group);
  the sums add one copy of them, the lowest worker's that could read them, to the workers'
  own; ``partial`` when none could;
- ``/metrics``: every worker's exposition merged, each sample labelled ``worker``, and
  ``routeplane_worker_up`` per worker; the load families (``routeplane_server_*``) are the
  group's sums instead, as ``GetLoad`` answers them;
- the status page's servers (``servers_page``): a worker's ``/api/servers`` page (the
  registry's fields), whose load rows the page replaces with the group's;
- ``/readyz``: ready when every worker is; the reason names each one that is not, or that does
  not answer within ``READY_TIMEOUT`` (a stopped process).

Asks the workers through the group's one client (``group/client.py``). Imports the admin protos,
the load totals and ``recommend`` (``load/totals.py``), and the load families' rendering
(``metrics``); nothing of the xDS engine, the pipeline or a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from control_plane.admin.loadview import LoadAnswers, add_rows
from control_plane.admin.loadwire import specs_from, totals_from
from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.admin.rollouts import answer as rollouts_answer
from control_plane.group.client import Workers, WorkerUnavailable
from control_plane.load.quiet import ChangeLog
from control_plane.load.totals import (
    History,
    LoadRow,
    LoadSpec,
    LoadTotals,
    ServerTotals,
    merge_servers,
    recommend,
)
from control_plane.metrics import LOAD_FAMILIES_START, LoadExposition
from control_plane.rollout.rules import Rollout

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


class LoadSum:
    """Worker load totals -> the group's rows: merged per server (``load/totals.py``), rows
    and recommendations from the merge by ``recommend``. Keeps every worker's totals per
    server, so an update with only the servers that changed is merged for those alone; a sum
    also revisits the servers whose recommendation has not settled (``load/quiet.py``), and
    nothing else: an idle group of 10,000 servers costs nothing. A server's spec is the first
    worker's (by index) that has it. A load view (``admin/loadview.py``) of its sums. Pure but
    for the history ``recommend`` keeps; time is an argument."""

    def __init__(self, workers: int = 0) -> None:
        self._history = History()
        self._workers: list[dict[str, ServerTotals]] = [{} for _ in range(workers)]
        self._specs: list[Mapping[str, LoadSpec]] = [{} for _ in range(workers)]
        self._proxies = [0] * workers
        self._intervals = [0.0] * workers
        self._touched: set[str] = set()
        # Per worker: the other control planes' totals it read (None: none yet), whether it
        # could not; the copy summed is the lowest worker's that could.
        self._remote: list[tuple[dict[str, ServerTotals], int, bool] | None] = [
            None for _ in range(workers)
        ]
        self._remote_summed: tuple[dict[str, ServerTotals], int, bool] = ({}, 0, False)
        self._active: set[str] = set()  # recommendations not settled
        self._rows: dict[str, tuple[LoadRow, ...]] = {}  # server -> the group's rows
        self._order: list[str] = []
        self._log = ChangeLog(CHANGES_KEPT)  # the sums' version, and what each one changed

    # The view.

    @property
    def version(self) -> int:
        return self._log.version

    @property
    def reporting_proxies(self) -> int:
        return sum(self._proxies) + self._remote_summed[1]

    @property
    def partial(self) -> bool:
        return self._remote_summed[2]

    @property
    def report_interval(self) -> float:
        return max(self._intervals, default=0.0)

    def servers(self) -> list[str]:
        return self._order

    def rows_of(self, server: str) -> tuple[LoadRow, ...]:
        """One server's summed rows."""
        return self._rows.get(server, ())

    def changes_since(self, version: int) -> frozenset[str] | None:
        return self._log.since(version)

    # Taking updates.

    def _grow(self, worker: int) -> None:
        while len(self._workers) <= worker:
            self._workers.append({})
            self._specs.append({})
            self._proxies.append(0)
            self._intervals.append(0.0)
            self._remote.append(None)

    def take_remote(self, worker: int, totals: LoadTotals, *, partial: bool) -> None:
        """The other control planes' totals worker ``worker`` read (every server's)."""
        self._grow(worker)
        self._remote[worker] = ({s.server: s for s in totals.servers}, totals.proxies, partial)
        readable = [r for r in self._remote if r is not None and not r[2]]
        # None could read them: partial (once any has said so), and nothing of the fleet.
        summed = readable[0] if readable else ({}, 0, any(r is not None for r in self._remote))
        before = self._remote_summed[0]
        self._touched |= {
            n for n in before.keys() | summed[0].keys() if before.get(n) != summed[0].get(n)
        }
        if summed[2] != self._remote_summed[2]:
            self._log.add(frozenset())  # the answers say partial, or no longer
        self._remote_summed = summed

    def take_specs(self, worker: int, specs: Mapping[str, LoadSpec]) -> None:
        """Worker ``worker``'s servers' specs, every one (they came apart from its totals)."""
        self._grow(worker)
        before = self._specs[worker]
        self._touched |= {n for n in before.keys() | specs.keys() if before.get(n) != specs.get(n)}
        self._specs[worker] = specs

    def take(
        self,
        worker: int,
        totals: LoadTotals,
        *,
        changes_only: bool = False,
        removed: Iterable[str] = (),
    ) -> None:
        """Worker ``worker``'s totals: of every server, or (``changes_only``) of the servers
        that changed, and ``removed`` those that went."""
        self._grow(worker)
        mine = self._workers[worker]
        grouped = {server.server: server for server in totals.servers}
        # A whole update: a server it lacks went; only changes: those it says went.
        gone = set(removed) if changes_only else set(mine) - grouped.keys()
        for name in gone:
            mine.pop(name, None)
        mine.update(grouped)
        self._touched |= gone | grouped.keys()
        self._proxies[worker] = totals.proxies
        self._intervals[worker] = totals.interval

    def _spec(self, name: str) -> Mapping[str, LoadSpec]:
        """``name``'s spec over the workers: the regions any lists, the first cold-start mode
        and rule any has (a worker whose watch lags has none yet, or an older one)."""
        found = [spec for specs in self._specs if (spec := specs.get(name)) is not None]
        if not found:
            return {}
        if len(found) == 1:
            return {name: found[0]}
        regions = dict.fromkeys(region for spec in found for region in spec.regions)
        return {
            name: LoadSpec(
                regions=tuple(regions),
                cold_start_mode=next((s.cold_start_mode for s in found if s.cold_start_mode), ""),
                autoscaling=next((s.autoscaling for s in found if s.autoscaling), None),
            )
        }

    def sum(self, *, now: float) -> bool:
        """Merge the servers updates changed since the last sum, and update the
        recommendations not settled; whether any row moved."""
        touch = self._touched | self._active
        self._touched = set()
        changed: set[str] = set()
        active: set[str] = set()
        reordered = False
        merged: list[ServerTotals] = []
        specs: dict[str, LoadSpec] = {}
        remote = self._remote_summed[0]
        for name in touch:
            parts = [[mine[name]] for mine in self._workers if name in mine]
            if parts and name in remote:
                parts.append([remote[name]])
            if parts:
                merged.extend(merge_servers(parts))
                specs.update(self._spec(name))
            elif name in self._rows:
                del self._rows[name]
                self._history.forget_server(name)
                changed.add(name)
                reordered = True
        totals = LoadTotals(servers=tuple(sorted(merged, key=lambda server: server.server)))
        for name, answer in recommend(totals, specs, self._history, now=now).items():
            if answer.moving:
                active.add(name)
            if name not in self._rows:
                reordered = True
            if answer.rows != self._rows.get(name):
                self._rows[name] = answer.rows
                changed.add(name)
        self._active = active
        if reordered:
            self._order = sorted(self._rows)
        if changed:
            self._log.add(frozenset(changed))
        return bool(changed)

    def add(
        self, answers: Sequence[tuple[Mapping[str, LoadSpec], LoadTotals]], *, now: float
    ) -> Any:
        """Every worker's specs and whole totals at once -> the whole summed answer."""
        for index, (specs, totals) in enumerate(answers):
            self.take_specs(index, specs)
            self.take(index, totals)
        self.sum(now=now)
        total = admin_pb2.LoadResponse(
            reporting_proxies=self.reporting_proxies,
            report_interval_seconds=self.report_interval,
        )
        for name in self._order:
            add_rows(total, self._rows[name])
        return total

    def take_update(self, worker: int, update: Any) -> None:
        """One ``LoadTotalsUpdate`` of worker ``worker``'s ``WatchLoadTotals``."""
        if update.HasField("specs"):
            _, specs = specs_from(update.specs)
            self.take_specs(worker, specs)
        elif update.totals.remote:
            message = update.totals
            self.take_remote(worker, totals_from(message), partial=message.partial)
        else:
            message = update.totals
            self._grow(worker)
            self.take(
                worker,
                totals_from(message, self._workers[worker]),
                changes_only=message.changes_only,
                removed=message.removed_servers,
            )


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
        # The rollout records the supervisor's driver last read (its workers run none).
        self.rollouts: Callable[[], Iterable[Rollout]] = tuple
        # Its rollout rows that are not records, as (kind, name, field, value, message).
        self.more_problems: Callable[[], Iterable[tuple[str, str, str, str, str]]] = tuple
        self._call = self.client.call
        self._stubs = self.client.stubs
        self._interval = interval
        self._clock = clock
        self._sum = LoadSum(len(self.workers))
        self._answers = LoadAnswers(self._sum)
        self._exposition = LoadExposition(self._sum)
        self._summed = False  # every worker's rows were summed at least once
        self._changed = asyncio.Condition()
        self._updated = asyncio.Event()  # a worker's WatchLoadTotals brought totals

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

    async def metrics(self, *, more: Sequence[tuple[str, str]] = ()) -> bytes:
        """Every worker's exposition, and ``routeplane_worker_up`` (0: that worker's series
        are missing from this scrape); ``more``: other processes' (label, exposition), e.g.
        the host's registry watcher's."""
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
        return merge_metrics([*texts, *more]) + self._exposition.render()

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
        response = await self._first("ListProblems", request, context)
        for kind, name, field, value, message in self.more_problems():
            response.problems.add(kind=kind, name=name, field=field, value=value, message=message)
        return response

    async def GetRollouts(self, request: Any, context: Any) -> Any:
        return rollouts_answer(self.rollouts(), request)

    async def SnapshotHistory(self, request: Any, context: Any) -> Any:
        response = admin_pb2.SnapshotHistoryResponse()
        seen: set[str] = set()
        for answer in await self._all("SnapshotHistory", request, context):
            groups = {entry.node_group for entry in answer.entries} - seen
            response.entries.extend(e for e in answer.entries if e.node_group in groups)
            seen |= groups
        return response

    async def tick(self) -> None:
        """Ask every worker for its load totals now and sum; wakes ``WatchLoad``ers."""
        calls = [self._whole_totals(stub) for stub in self._stubs]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for index, answer in enumerate(answers):
            if isinstance(answer, grpc.aio.AioRpcError):
                raise WorkerUnavailable(f"worker {index}: {answer.details()}")
            if isinstance(answer, BaseException):
                raise answer
        for index, answer in enumerate(answers):
            assert not isinstance(answer, BaseException)
            for update in answer:
                self._sum.take_update(index, update)
        await self._publish()

    async def _whole_totals(self, stub: Any) -> list[Any]:
        """A worker's ``WatchLoadTotals`` up to its first (whole) totals: the specs, then
        the totals."""
        updates = []
        call = stub.WatchLoadTotals(admin_pb2.WatchLoadTotalsRequest(), **self._call)
        try:
            async for update in call:
                updates.append(update)
                if update.HasField("totals") and not update.totals.remote:
                    break
        finally:
            call.cancel()
        return updates

    async def _publish(self) -> None:
        moved = self._sum.sum(now=self._clock())
        if moved or not self._summed:
            self._summed = True
            async with self._changed:
                self._changed.notify_all()

    async def run(self) -> None:
        """Follow every worker's ``WatchLoadTotals`` (only what changed, after the first
        totals) until cancelled, and sum on each worker's update (a cold start reaches the group's
        watchers as soon as its worker's) and every half report interval (a recommendation
        not settled moves with time, not only with load)."""
        following = [False] * len(self._stubs)  # the worker's first (whole) totals came
        updated = self._updated

        async def follow(index: int, stub: Any) -> None:
            metadata = self._call["metadata"]
            request = admin_pb2.WatchLoadTotalsRequest()
            while True:
                try:
                    async for update in stub.WatchLoadTotals(
                        request, metadata=metadata, wait_for_ready=True
                    ):
                        self._sum.take_update(index, update)
                        if update.HasField("totals"):
                            # Its own totals: the worker is followed (remote ones come after).
                            following[index] |= not update.totals.remote
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

    async def servers_page(self, offset: int, limit: int) -> Any:
        """A page of the servers as a worker's status page gives them (``admin/page/``: the
        registry's fields, which every worker reads alike): the first worker that answers."""
        failures = []
        for address in self.workers:
            try:
                status, body = await self.client.get(
                    address, f"/api/servers?offset={offset}&limit={limit}"
                )
            except WorkerUnavailable as exc:
                failures.append(str(exc))
                continue
            if status == 200:
                return json.loads(body)
            failures.append(f"worker at {address}: HTTP {status}")
        raise ConnectionError("; ".join(failures) or "no workers")

    async def GetLoad(self, request: Any, context: Any) -> Any:
        if not self._summed:
            try:
                await self.tick()
            except WorkerUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return self._answers.get(request)

    async def WatchLoad(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for response in self._answers.watch(request, self.versions()):
            yield response

    @property
    def load_view(self) -> LoadSum:
        """The group's load view (``admin/loadview.py``): what KEDA's scaler answers from."""
        return self._sum

    async def versions(self) -> AsyncIterator[int]:
        """The view's version once every worker's rows were summed, then after every sum
        that moved a row."""
        seen = -1
        while True:
            if self._summed and self._sum.version != seen:
                seen = self._sum.version
                yield seen
            async with self._changed:
                await self._changed.wait()
