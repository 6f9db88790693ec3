"""The reconciler: registry watch -> routing -> translate -> snapshot -> cache.

One pass turns one RegistryState into one snapshot per node group. A failed pass is logged and
the last good snapshot stays published. Groups appear when a proxy of a new group connects
(the cache asks for them) and are built at once from the last routing table.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from control_plane import metrics
from control_plane.registry.errors import RegistryError
from control_plane.registry.model import Registry, RegistryState
from control_plane.routing import RoutingTable, to_routing_table
from control_plane.translate import ProxyView, Translator
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from control_plane.xds.snapshot import build_from_types

log = structlog.get_logger("routeplane.reconcile")

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
CLEANUP_INTERVAL = 1.0
PRUNE_EVERY_PASSES = 100


@dataclass(slots=True)
class Health:
    """Readiness as the admin endpoints report it."""

    ready: bool = False
    degraded: bool = False
    last_error: str = ""


def _cause(state: RegistryState) -> str:
    """Why a snapshot was built, for `snapshot history`."""
    if state.changed is None:
        return f"registry revision {state.revision}: full read"
    names = sorted(state.changed)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"registry revision {state.revision}: servers {shown}"


def view_of(group_key: str) -> ProxyView:
    group = NodeGroup.from_key(group_key)
    host, _, port = group.listen.rpartition(":")
    return ProxyView(
        region=group.region,
        zone=group.zone,
        listen_host=host.strip("[]"),
        listen_port=int(port or 10000),
    )


class Reconciler:
    def __init__(
        self,
        *,
        registry: Registry,
        cache: SnapshotCache,
        clock: Callable[[], float] = time.time,
        poll_interval: float | None = None,
        cleanup_interval: float = CLEANUP_INTERVAL,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.clock = clock
        default = float(getattr(registry, "default_poll_interval", 0.005))
        self.poll_interval = poll_interval or default
        self.cleanup_interval = cleanup_interval
        self.health = Health()
        self.table: RoutingTable | None = None
        self._translator = Translator()
        self._groups: set[str] = set()
        self._passes = 0
        self._cause = "start"
        cache.set_group_wanted_callback(self.want_group)

    def want_group(self, group_key: str) -> None:
        if group_key in self._groups:
            return
        self._groups.add(group_key)
        if self.table is not None:
            self._publish(group_key, self.table)

    async def run(self) -> None:
        """Follow the registry until cancelled; reconnect with backoff when it fails."""
        backoff = BACKOFF_INITIAL
        while True:
            try:
                async for state in self.registry.watch(poll_interval=self.poll_interval):
                    if self.health.degraded:
                        log.info("registry_recovered")
                    self.health.degraded = False
                    metrics.DEGRADED.set(0)
                    backoff = BACKOFF_INITIAL
                    self.apply(state)
            except RegistryError as exc:
                self._degraded(exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _degraded(self, exc: Exception, retry_in: float) -> None:
        if not self.health.degraded or self.health.last_error != str(exc):
            log.warning("registry_degraded", error=str(exc), retry_in=retry_in)
        self.health.degraded = True
        self.health.last_error = str(exc)
        metrics.DEGRADED.set(1)

    async def run_cleanup(self) -> None:
        """Remove replicas whose lease expired, every ``cleanup_interval``, until cancelled.

        Every control-plane replica may run this; the deletes are idempotent transactions.
        """
        while True:
            await asyncio.sleep(self.cleanup_interval)
            try:
                removed = await asyncio.to_thread(self.registry.remove_expired, now=self.clock())
            except RegistryError as exc:
                log.warning("lease_cleanup_failed", error=str(exc))
                continue
            if removed:
                log.info("replicas_expired", replicas=removed)

    def apply(self, state: RegistryState) -> None:
        """One reconcile pass. Never raises: a failed pass keeps the last good snapshots."""
        started = time.perf_counter()
        try:
            table = to_routing_table(state, now=self.clock(), previous=self.table)
        except Exception as exc:
            log.exception("routing_failed", revision=state.revision, error=str(exc))
            return
        if self.table is None or table.problems != self.table.problems:
            for problem in table.problems:
                log.warning(
                    "registry_row_rejected",
                    kind=problem.kind,
                    name=problem.name,
                    field=problem.field,
                    value=problem.value,
                    error=problem.message,
                )
        metrics.PROBLEMS.set(len(table.problems))
        if state.committed_at:
            metrics.WATCH_LAG.observe(max(0.0, self.clock() - state.committed_at))
        self._cause = _cause(state)
        self.table = table
        for group_key in sorted(self._groups):
            self._publish(group_key, table)
        self._passes += 1
        if self._passes % PRUNE_EVERY_PASSES == 0 or state.changed is None:
            self._translator.forget_unused(sorted(self._groups))
        self.health.ready = True
        log.debug(
            "reconcile_completed",
            revision=state.revision,
            groups=len(self._groups),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def _publish(self, group_key: str, table: RoutingTable) -> None:
        started = time.perf_counter()
        try:
            by_type, changed = self._translator.translate(table, view_of(group_key), key=group_key)
            previous = self.cache.get(group_key)
            incremental = changed is not None and previous is not None
            snapshot = build_from_types(
                by_type,
                previous=previous if incremental else None,
                changed=changed if incremental else None,
                committed_at=table.committed_at,
                revision=table.revision,
                cause=self._cause,
            )
        except Exception as exc:  # task boundary: one group; the last good snapshot stays
            # The translator moved on but the cache did not: rebuild from scratch next time.
            self._translator.forget(group_key)
            log.exception("snapshot_build_failed", group=group_key, error=str(exc))
            return
        metrics.SNAPSHOT_BUILD.observe(time.perf_counter() - started)
        if self.cache.set_snapshot(group_key, snapshot):
            log.info(
                "snapshot_published",
                group=group_key,
                version=snapshot.version,
                revision=table.revision,
                cause=snapshot.cause,
                build_ms=round((time.perf_counter() - started) * 1000, 3),
            )
