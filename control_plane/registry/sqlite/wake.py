"""When the SQLite watch looks next (``watch.follow``): at once when inotify says one of the
database's files was written, else at the poll interval. Only the timing; the watch's probe
decides whether anything committed. Uses ``inotify`` only; never imports ``store``, ``reads``
or ``watch``.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import structlog

from control_plane.registry.sqlite.inotify import DirectoryWatch

log = structlog.get_logger("routeplane.registry")

# With inotify, the poll is only a safety net: at least this far apart.
NOTIFIED_POLL_INTERVAL = 0.1
# After a hint the watch looks again after this, then twice as long, ... up to the poll.
RECHECK_FIRST = 0.001
# A commit found with no inotify event for this long before it was not announced. Longer than
# the safety poll (a commit is found at most that long after its event) with room for a busy
# loop.
UNANNOUNCED_AFTER = 1.0


def open_directory_watch(path: str) -> DirectoryWatch | None:
    """inotify on the database's directory, for the files a commit writes (the database, its
    WAL, its rollback journal); None for an in-memory or URI path, or where inotify is not had."""
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    file = Path(path)
    names = [file.name, f"{file.name}-wal", f"{file.name}-journal"]
    return DirectoryWatch.open(str(file.parent.resolve()), names)


def settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Wake:
    """When the watch looks next: at once when inotify says one of the database's files was
    written (the hint), else at the poll interval.

    Events are coalesced: any number of them while the watch is busy make one probe. After a
    hint the watch looks again after 1, 2, 4... ms up to the poll interval, whatever the probe
    found: a commit writes its WAL frames (the event) before the WAL index says it committed,
    so a probe can run in between, and one batch of events can hold the frames of a commit
    that is not visible yet. With inotify the poll is a safety net and runs every
    ``max(poll_interval, NOTIFIED_POLL_INTERVAL)``; a commit found with no event in the
    ``UNANNOUNCED_AFTER`` seconds before means inotify does not see this database's writers,
    and the watch polls at ``poll_interval`` from then on."""

    def __init__(self, path: str, poll_interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._poll_interval = poll_interval
        self._pending = False  # a hint that no probe has answered yet
        self._last_hint = -math.inf  # time.monotonic() of the last hint
        self._recheck = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._dir = open_directory_watch(path)
        if self._dir is not None:
            try:
                self._loop.add_reader(self._dir.fileno(), self._on_readable)
            except (NotImplementedError, OSError):  # a loop without add_reader: poll
                self._dir.close()
                self._dir = None
        self.notified = self._dir is not None
        if not self.notified and path and path != ":memory:" and not path.startswith("file:"):
            log.info(
                "registry_watch_polling",
                reason="no inotify here (not Linux, or the user's inotify instances are used up)",
                interval_seconds=poll_interval,
            )
        self.interval = (
            max(poll_interval, NOTIFIED_POLL_INTERVAL) if self.notified else poll_interval
        )

    def _on_readable(self) -> None:
        if self._dir is not None and self._dir.drain():
            self._hint()

    def _hint(self) -> None:
        self._pending = True
        self._last_hint = time.monotonic()
        if self._waiter is not None:
            settle(self._waiter)

    async def wait(self) -> bool:
        """Until a hint or the next look; True when a hint woke it."""
        if not self._pending:
            waiter = self._loop.create_future()
            self._waiter = waiter
            timer = self._loop.call_later(self._recheck or self.interval, settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        hinted, self._pending = self._pending, False
        return hinted

    def probed(self, *, hinted: bool) -> None:
        """After every probe: when to look next without a hint."""
        if hinted:
            self._recheck = RECHECK_FIRST
        elif self._recheck:
            self._recheck *= 2
            if self._recheck >= self.interval:
                self._recheck = 0.0

    def committed(self) -> None:
        """The probe found a commit: was it announced?"""
        if not self.notified or self._dir is None:
            return
        if time.monotonic() - self._last_hint <= UNANNOUNCED_AFTER:
            return
        if self._dir.drain():
            # Its event was queued but not read yet (the timer and the reader were ready in
            # the same loop iteration); what else was queued may be a later commit's.
            self._hint()
            return
        self.notified = False
        self.interval = self._poll_interval
        log.warning(
            "registry_watch_unnotified",
            poll_interval=self._poll_interval,
            reason="a commit came without an inotify event; polling from now on",
        )

    def close(self) -> None:
        if self._dir is not None:
            self._loop.remove_reader(self._dir.fileno())
            self._dir.close()
            self._dir = None
