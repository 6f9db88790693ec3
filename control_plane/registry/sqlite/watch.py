"""The SQLite watch: the loop behind ``SqliteRegistry.watch`` and its probe connection.

Each tick asks SQLite whether any connection committed since the last tick (``PRAGMA
data_version`` on a read-only connection of its own, answered from the WAL index in
microseconds on the event loop, no thread hop); only then does it read that revision (one tiny
indexed read on the same connection, also on the loop; in a worker thread when the database is
busy) and, when it moved, what the change log names: the replica rows written alone, by id, and
the servers written whole (on the loop too when that is at most ``SMALL_READ`` replica rows,
else in a worker thread; one replica moved in a server of 10,000 reads one row). Any commit by
any writer moves ``data_version``, so the probe never hides a change; the revision is also read
once a second whatever the probe says (through the registry's own connection, in a thread), so
a broken database is still noticed while idle.

When a tick runs is ``wake``'s: on Linux as soon as inotify reports a write to the database,
its WAL or its journal, so a commit by any process is seen within a fraction of a millisecond;
the poll is then a safety net that runs at most every 100 ms until a commit arrives without an
event (then every tick). Without inotify, commits are seen within a tick.

The store hands the loop its threaded reads as callables; this module reads on the probe
through ``reads`` and never imports ``store``, ``routing``, ``translate`` or ``xds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

from control_plane import metrics
from control_plane.registry.errors import RegistryUnavailableError
from control_plane.registry.model import RegistryState
from control_plane.registry.sqlite import reads
from control_plane.registry.sqlite.wake import Wake

# The watch reads the revision at least this often, even when the probe says nothing changed.
REVISION_CHECK_EVERY = 1.0
# A change that reads at most this many replica rows is read on the event loop.
SMALL_READ = 200


async def follow(
    *,
    path: str,
    url: str,
    poll_interval: float,
    read_state: Callable[[], RegistryState],
    read_revision: Callable[[], int],
    read_changes: Callable[[RegistryState], RegistryState],
) -> AsyncIterator[RegistryState]:
    """Yield the full state now and again after every committed change. ``read_state``,
    ``read_revision`` and ``read_changes`` read through the registry's own connection and run in a
    worker thread."""
    probe = open_probe(path, url)
    wake = Wake(path, poll_interval)
    try:
        # Read before the state, so a commit in between shows up as a change to check.
        seen = _data_version(probe)
        state = await asyncio.to_thread(read_state)
        yield state
        checked = time.monotonic()
        while True:
            hinted = await wake.wait()
            metrics.WATCH_POLLS.inc()
            version = _data_version(probe)
            wake.probed(hinted=hinted)
            now = time.monotonic()
            if version is not None and version == seen and now - checked < REVISION_CHECK_EVERY:
                continue  # no connection committed anything since the last look
            revision = None
            if version is not None and version != seen:
                wake.committed()
                # Answered on the loop like the probe; a commit that did not move the
                # revision (a lease renewal) costs no thread hop.
                revision = _probe_revision(probe)
            seen, checked = version, now
            if revision is None:
                revision = await asyncio.to_thread(read_revision)
            if revision != state.revision:
                fresh = read_small_changes(probe, state)
                if fresh is None:
                    fresh = await asyncio.to_thread(read_changes, state)
                state = fresh
                yield state
    finally:
        wake.close()
        probe.close()


def open_probe(path: str, url: str) -> sqlite3.Connection:
    """A connection that never writes, so its ``data_version`` moves on every commit (a
    connection's own commits do not move it). ``timeout=0``: a busy database answers at
    once (the tick then takes the threaded path) instead of blocking the event loop."""
    try:
        return sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise RegistryUnavailableError(f"registry {url!r}: cannot open: {exc}") from exc


def read_small_changes(probe: sqlite3.Connection, previous: RegistryState) -> RegistryState | None:
    """The state after ``previous`` read on the probe, on the event loop, when it reads at most
    ``SMALL_READ`` replica rows (a thread hop is most of the cost of such a read); None
    otherwise, or when the database is busy."""
    try:
        probe.execute("BEGIN")
    except sqlite3.Error:
        return None
    try:
        return reads.changes_since(probe, previous, limit=SMALL_READ)
    except sqlite3.Error:
        return None
    finally:
        with contextlib.suppress(sqlite3.Error):
            probe.execute("COMMIT")


def _data_version(probe: sqlite3.Connection) -> int | None:
    """SQLite's count of commits by other connections; None when it cannot tell right now."""
    try:
        return int(probe.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error:
        return None


def _probe_revision(probe: sqlite3.Connection) -> int | None:
    """The revision as the probe reads it; None when it cannot tell right now (busy)."""
    try:
        rows = probe.execute("SELECT value FROM meta WHERE key = 'revision'").fetchall()
        return int(rows[0][0])
    except (sqlite3.Error, IndexError, TypeError, ValueError):
        return None
