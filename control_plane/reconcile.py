"""The reconciler: the async driver of the pipeline.

It follows the registry (keeping only the latest state) and the cache's wanted groups, and
whenever either changed it runs one :meth:`~control_plane.pipeline.Pipeline.step` and publishes
what changed. It logs, counts and measures; the step itself is pure. A failed step is logged,
the last good snapshots stay published, and the next step starts from scratch.

Groups that no stream has watched for the cache's grace period are dropped here (counted in
``routeplane_node_groups_dropped``), so a pass builds only what some proxy can receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import structlog

from control_plane import metrics
from control_plane.pipeline import Pipeline, Step
from control_plane.registry.cleanup import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    CLEANUP_INTERVAL,
    run_cleanup,
)
from control_plane.registry.errors import RegistryError
from control_plane.registry.model import Registry, RegistryState
from control_plane.routing import Problem, RoutingTable
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup

log = structlog.get_logger("routeplane.reconcile")


@dataclass(slots=True)
class Health:
    """Readiness as the admin endpoints report it."""

    ready: bool = False
    degraded: bool = False
    last_error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PassReport:
    """One driven pass, for benchmarks and tests (``Reconciler(on_pass=...)``)."""

    state: RegistryState
    step: Step | None  # None when the step failed
    # When the pass began (time.perf_counter()), and what it cost: wall and this thread's CPU.
    started: float
    wall_seconds: float
    cpu_seconds: float


class Reconciler:
    def __init__(
        self,
        *,
        registry: Registry,
        cache: SnapshotCache,
        clock: Callable[[], float] = time.time,
        poll_interval: float | None = None,
        cleanup_interval: float = CLEANUP_INTERVAL,
        on_pass: Callable[[PassReport], None] | None = None,
        states: Callable[[], AsyncIterator[RegistryState]] | None = None,
    ) -> None:
        """``states``: where registry states come from, when not ``registry.watch`` (a worker
        of ``serve --workers`` follows its host's watcher, ``group/follow.py``)."""
        self.registry = registry
        self._states = states
        self.cache = cache
        self.clock = clock
        self.poll_interval = poll_interval or registry.default_poll_interval
        self.cleanup_interval = cleanup_interval
        self.health = Health()
        self.pipeline = Pipeline()
        self._on_pass = on_pass
        self._state: RegistryState | None = None
        # Groups whose snapshot cannot be built, and the error last logged for each.
        self._failed: dict[NodeGroup, str] = {}
        # The problems logged and still in the table: each is logged once while it lasts, and
        # again only when it changes or comes back (no more than the table holds).
        self._logged: frozenset[Problem] = frozenset()
        self._wake = asyncio.Event()
        cache.add_wanted_listener(self._wake.set)

    @property
    def table(self) -> RoutingTable | None:
        return self.pipeline.table

    async def run(self) -> None:
        """Follow the registry and drive the pipeline until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._follow())
            tasks.create_task(self._drive())

    async def _follow(self) -> None:
        """Keep the newest registry state; reconnect with backoff when the registry fails."""
        backoff = BACKOFF_INITIAL
        while True:
            try:
                source = (
                    self._states()
                    if self._states is not None
                    else self.registry.watch(poll_interval=self.poll_interval)
                )
                async for state in source:
                    if self.health.degraded:
                        log.info("registry_recovered")
                    self.health.degraded = False
                    metrics.DEGRADED.set(0)
                    backoff = BACKOFF_INITIAL
                    self._state = state
                    self._wake.set()
            except RegistryError as exc:
                self._degraded(exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _drive(self) -> None:
        """One pass per wake-up (registry changed, a group became wanted, or the grace timer);
        a burst of changes while a pass runs is taken in one pass."""
        grace = self.cache.grace_seconds
        while True:
            # Not asyncio.wait_for: in Python 3.11 it returns the wake-up when the cancel lands
            # in the same loop iteration, and this loop would never stop (issue 23).
            # asyncio.timeout re-raises a cancel from outside.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace / 2, 0.05)):
                    await self._wake.wait()
            self._wake.clear()
            self.expire_groups()
            if self._state is not None:
                self.apply(self._state)

    def expire_groups(self) -> None:
        for group in self.cache.expire():
            metrics.GROUPS_DROPPED.inc()
            log.info("node_group_dropped", group=group.key, grace_seconds=self.cache.grace_seconds)

    def _degraded(self, exc: Exception, retry_in: float) -> None:
        if not self.health.degraded or self.health.last_error != str(exc):
            log.warning("registry_degraded", error=str(exc), retry_in=retry_in)
        self.health.degraded = True
        self.health.last_error = str(exc)
        metrics.DEGRADED.set(1)

    async def run_cleanup(self) -> None:
        """Remove replicas whose lease expired, every ``cleanup_interval``, until cancelled."""
        await run_cleanup(self.registry, clock=self.clock, interval=self.cleanup_interval)

    def apply(self, state: RegistryState) -> Step | None:
        """One pass over ``state`` for the wanted groups. Never raises: a failed pass keeps
        the last good snapshots published."""
        started = time.perf_counter()
        cpu = time.thread_time()
        previous = self.pipeline.table
        try:
            step: Step | None = self.pipeline.step(state, self.cache.wanted())
        except Exception as exc:  # task boundary: one pass; the last good snapshots stay
            self.pipeline.reset()
            log.exception("snapshot_build_failed", revision=state.revision, error=str(exc))
            step = None
        if step is not None:
            self._publish(step, previous)
        if self._on_pass is not None:
            self._on_pass(
                PassReport(
                    state=state,
                    step=step,
                    started=started,
                    wall_seconds=time.perf_counter() - started,
                    cpu_seconds=time.thread_time() - cpu,
                )
            )
        return step

    def _publish(self, step: Step, previous: RoutingTable | None) -> None:
        table = step.table
        if previous is None or table.problems != previous.problems:
            for problem in table.problems:
                if problem in self._logged:
                    continue
                log.warning(
                    "registry_row_rejected",
                    kind=problem.kind,
                    name=problem.name,
                    field=problem.field,
                    value=problem.value,
                    error=problem.message,
                )
            self._logged = frozenset(table.problems)
        metrics.PROBLEMS.set(len(table.problems))
        if table.committed_at and (previous is None or table.revision != previous.revision):
            metrics.WATCH_LAG.observe(max(0.0, self.clock() - table.committed_at))
        for group, error in step.failures.items():
            if self._failed.get(group) != error:
                log.warning("snapshot_build_failed", group=group.key, error=error)
        self._failed = dict(step.failures)
        for group, snapshot in step.snapshots.items():
            if group not in step.changed and self.cache.get(group) is not None:
                continue
            if self.cache.set_snapshot(group, snapshot):
                log.info(
                    "snapshot_published",
                    group=group.key,
                    version=snapshot.version,
                    revision=table.revision,
                    cause=snapshot.cause,
                )
        self.health.ready = True
