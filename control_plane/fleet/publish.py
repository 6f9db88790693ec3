"""One process's part of the fleet-wide load: ``FleetLoad.run()`` publishes this process's own
totals to the registry and reads every other publisher's, until cancelled.

- Publishing: one write every report interval while this process has load, cold starts or a
  wake (``records.publishable``), and one more when that becomes nothing (so the others drop it
  at once); a new wake is written at once, not at the next interval (writes at least
  ``WAKE_COALESCE`` apart, so a burst of cold starts is one write). On shutdown an empty record
  takes this process's share out of the sums without waiting for it to go stale.
- Reading: a companion read on its own short poll (``READ_EVERY``), not the routing watch: the
  watch follows the revision, which a load write must not move (it would make every replica
  rebuild its routing), and it reads only what the change log names. The read is one query of
  at most ``MAX_RECORDS`` rows, and a record is decoded once (by publisher, time and size).
- Failure: a read that fails or takes longer than ``READ_TIMEOUT`` drops the remote sums at once
  and marks the view ``partial`` (this process's own load only) until a read succeeds; a failed
  write is logged and counted, and the others then stop counting this process after three
  intervals, as a crashed one.

The load view takes the remote sums through ``take_remote`` (``load/server.py``'s
``LoadService``). Every blocking registry call runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import structlog

from control_plane import metrics
from control_plane.fleet.records import (
    MAX_RECORD_BYTES,
    MAX_RECORDS,
    PROBLEM_KIND,
    Decoded,
    Problem,
    Remote,
    encode,
    publishable,
    remote,
)
from control_plane.load.totals import EMPTY, NEVER, LoadTotals
from control_plane.registry.errors import RegistryError
from control_plane.registry.model import LoadRecord, Registry

log = structlog.get_logger("routeplane.fleet")

READ_EVERY = 0.05  # seconds between two reads of the published records
READ_TIMEOUT = 3.0  # a read slower than this counts as failed: the view says partial
WRITE_TIMEOUT = 3.0
WAKE_COALESCE = 0.05  # seconds: wakes this close together make one write
FORGET_AFTER = 600.0  # records not rewritten for this long are deleted by any publisher


class LoadSource(Protocol):
    """This process's load view (``LoadService``)."""

    interval: float

    def totals(self) -> LoadTotals: ...

    def watch(self) -> AsyncIterator[int]: ...

    def take_remote(self, totals: LoadTotals, *, partial: bool) -> None: ...


class FleetLoad:
    """Publishes ``load``'s own totals as ``publisher`` (unique to this process's start) of
    ``group`` (the workers of one ``serve --workers`` share it: their records are not
    remote to each other), and hands ``load`` the others' sums."""

    def __init__(
        self,
        *,
        registry: Registry,
        load: LoadSource,
        publisher: str,
        group: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        read_every: float = READ_EVERY,
    ) -> None:
        self._registry = registry
        self._load = load
        self.publisher = publisher
        self.group = group
        self._clock = clock
        self._wall = wall
        self._read_every = read_every
        self._decoded: dict[tuple[str, float, int], Decoded] = {}
        # A read that timed out may still run in its thread: the next waits for it (the cache
        # of decoded records is the threads' to share, one at a time).
        self._reading = threading.Lock()
        self._written: dict[str, tuple[float, float]] = {}
        self._reported: set[tuple[str, str, str]] = set()
        self.problems: tuple[Problem, ...] = ()
        self.partial = True  # until the first read
        self.remote: LoadTotals = EMPTY
        self.publishers = 0
        self._moved = asyncio.Event()
        self._write_failing = False

    async def run(self) -> None:
        """Publish and read until cancelled; then write an empty record (best effort)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow_load())
                tasks.create_task(self._publish_loop())
                tasks.create_task(self._read_loop())
        finally:
            # Shielded from the cancel that ends us: the empty record takes our share out now.
            with contextlib.suppress(RegistryError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await asyncio.shield(asyncio.to_thread(self._write, self.record(EMPTY)))

    # Publishing.

    async def _follow_load(self) -> None:
        async for _ in self._load.watch():
            self._moved.set()

    def record(self, totals: LoadTotals) -> LoadRecord:
        """``totals`` as this publisher's record, written now."""
        wall = self._wall()
        data = encode(totals, wall_offset=wall - self._clock())
        return LoadRecord(
            publisher=self.publisher,
            group=self.group,
            written_at=wall,
            interval=self._load.interval,
            totals=data,
            size=len(data),
        )

    def _write(self, record: LoadRecord) -> None:
        self._registry.publish_load(record, forget_before=record.written_at - FORGET_AFTER)

    async def _publish_loop(self) -> None:
        interval = self._load.interval
        had_load = False
        wake_sent = NEVER
        due = self._clock()
        while True:
            now = self._clock()
            own = self._load.totals()
            wake = max((s.woken_at for s in own.servers), default=NEVER)
            if now >= due or wake > wake_sent:
                totals = publishable(own)  # only now: a view's move costs a look at its wakes
                if totals.servers or had_load:
                    await self._publish(totals)
                had_load = bool(totals.servers)
                wake_sent = max(wake_sent, wake)
                if now >= due:
                    due = max(due + interval, now)
                # A burst of wakes is one write: look again only after the coalescing pause.
                await asyncio.sleep(WAKE_COALESCE)
                continue
            self._moved.clear()
            # asyncio.timeout, not wait_for: in 3.11 wait_for returns the event's result when
            # it is set in the same loop turn as a cancel, and the cancel is lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(due - self._clock(), 0.0)):
                    await self._moved.wait()

    async def _publish(self, totals: LoadTotals) -> None:
        record = self.record(totals)
        if record.size > MAX_RECORD_BYTES:  # the others would ignore it: say so, never write it
            log.warning("fleet_load_too_large", servers=len(totals.servers), bytes=record.size)
            metrics.FLEET_WRITES_FAILED.inc()
            return
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await asyncio.to_thread(self._write, record)
        except (RegistryError, TimeoutError) as exc:
            metrics.FLEET_WRITES_FAILED.inc()
            if not self._write_failing:
                log.warning("fleet_publish_failed", error=str(exc)[:300])
            self._write_failing = True
            return
        if self._write_failing:
            log.info("fleet_publish_recovered")
        self._write_failing = False
        metrics.FLEET_WRITES.inc()
        metrics.FLEET_WRITE_BYTES.inc(record.size)

    # Reading.

    async def _read_loop(self) -> None:
        while True:
            await self.read_once()
            await asyncio.sleep(self._read_every)  # a poll: the pace between two reads

    async def read_once(self) -> None:
        """Read every record now and hand the load view the others' sums (or, when the read
        fails, nothing of theirs, marked partial). The records are read and judged in a
        thread: decoding a big record never holds up the event loop."""
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                summed, read = await asyncio.to_thread(self._read)
        except (RegistryError, TimeoutError) as exc:
            if not self.partial:
                log.warning("fleet_load_partial", error=str(exc)[:300])
            self._take(EMPTY, partial=True, publishers=0)
            return
        if self.partial:
            log.info("fleet_load_complete", publishers=read)
        self._report(summed.problems)
        self._take(summed.totals, partial=False, publishers=summed.publishers)

    def _read(self) -> tuple[Remote, int]:
        """The others' sums from every record, and how many records were read (in a thread;
        one at a time)."""
        with self._reading:
            records = self._registry.read_load(max_records=MAX_RECORDS, max_bytes=MAX_RECORD_BYTES)
            wall = self._wall()
            summed = remote(
                records,
                publisher=self.publisher,
                group=self.group,
                now=wall,
                wall_offset=wall - self._clock(),
                decoded=self._decoded,
                written=self._written,
            )
        return summed, len(records)

    def _take(self, totals: LoadTotals, *, partial: bool, publishers: int) -> None:
        metrics.FLEET_PARTIAL.set(int(partial))
        metrics.FLEET_PUBLISHERS.set(publishers)
        moved = partial != self.partial or _content(totals) != _content(self.remote)
        self.partial = partial
        self.remote = totals
        self.publishers = publishers
        if moved:
            self._load.take_remote(totals, partial=partial)

    def _report(self, problems: tuple[Problem, ...]) -> None:
        """Count and log each ignored record once (per record written, not per read)."""
        self.problems = problems
        current = set()
        for problem in problems:
            key = (problem.publisher, problem.reason, problem.field)
            current.add(key)
            if key not in self._reported:
                metrics.FLEET_RECORDS_IGNORED.labels(problem.reason).inc()
                log.warning(
                    "fleet_record_ignored",
                    kind=PROBLEM_KIND,
                    publisher=problem.publisher,
                    reason=problem.reason,
                    field=problem.field,
                    value=problem.value,
                    message=problem.message,
                )
        self._reported = current


def _content(totals: LoadTotals) -> tuple[object, ...]:
    """What of the remote sums the view shows (``at`` moves with every write: left out)."""
    return (totals.servers, totals.proxies, totals.interval)
