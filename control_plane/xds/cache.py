"""The snapshot cache: the one narrow interface between snapshot producers and xDS streams.

One :class:`~control_plane.xds.snapshot.Snapshot` per node group key. Streams register a
callback per group and are told (never given data) when the group's snapshot changes; they
then read the latest snapshot themselves, so a slow stream only ever sees the newest state.
All methods run on the event loop thread; none of them blocks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.xds.snapshot import Snapshot

Notify = Callable[[], None]
HISTORY = 50


@dataclass(frozen=True, slots=True)
class Published:
    snapshot: Snapshot
    published_at: float


class SnapshotCache:
    def __init__(self, *, on_group_wanted: Callable[[str], None] | None = None) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._history: dict[str, deque[Published]] = {}
        self._watchers: dict[str, set[Notify]] = {}
        self._on_group_wanted = on_group_wanted

    def set_group_wanted_callback(self, callback: Callable[[str], None]) -> None:
        self._on_group_wanted = callback

    def get(self, group: str) -> Snapshot | None:
        return self._snapshots.get(group)

    def groups(self) -> list[str]:
        """Every group that has a snapshot or a watcher."""
        return sorted(set(self._snapshots) | set(self._watchers))

    def set_snapshot(self, group: str, snapshot: Snapshot) -> bool:
        """Publish ``snapshot`` for ``group``; returns False (and tells no one) if unchanged."""
        previous = self._snapshots.get(group)
        if previous is not None and previous.version == snapshot.version:
            return False
        self._snapshots[group] = snapshot
        self._history.setdefault(group, deque(maxlen=HISTORY)).append(
            Published(snapshot=snapshot, published_at=time.time())
        )
        for notify in list(self._watchers.get(group, ())):
            notify()
        return True

    def watch(self, group: str, notify: Notify) -> Callable[[], None]:
        """Call ``notify`` whenever ``group``'s snapshot changes. Returns a cancel function that
        may be called more than once."""
        watchers = self._watchers.setdefault(group, set())
        watchers.add(notify)
        if group not in self._snapshots and self._on_group_wanted is not None:
            self._on_group_wanted(group)

        def cancel() -> None:
            current = self._watchers.get(group)
            if current is None:
                return
            current.discard(notify)
            if not current:
                del self._watchers[group]

        return cancel

    def history(self, group: str) -> list[Published]:
        """The last snapshots published for ``group``, oldest first (at most 50)."""
        return list(self._history.get(group, ()))

    def watcher_count(self, group: str) -> int:
        return len(self._watchers.get(group, ()))
