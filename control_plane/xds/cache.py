"""The snapshot cache: the one narrow interface between the pipeline's driver and xDS streams.

It holds one :class:`~control_plane.xds.snapshot.Snapshot` per node group and knows which
groups are *wanted*: a group is wanted while at least one stream watches it (reference counts
keyed by the :class:`~control_plane.xds.nodes.NodeGroup` value) and for ``grace_seconds``
after its last stream left, so a proxy that reconnects finds its snapshot waiting. The driver
reads :meth:`wanted`, builds, and publishes with :meth:`set_snapshot`; :meth:`expire` drops
groups nobody watched for longer than the grace (with their snapshots and history).

The cache never calls up into the producer and never builds anything: when a stream watches a
group that has no snapshot yet, the cache only notifies its wanted-listeners (no data), and the
stream waits until the driver publishes. Streams are told (never given data) when their group's
snapshot changes; they read the latest snapshot themselves, so a slow stream only ever sees the
newest state. All methods run on the event loop thread; none of them blocks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from control_plane.xds.nodes import NodeGroup
from control_plane.xds.snapshot import Snapshot

Notify = Callable[[], None]
HISTORY = 50
GRACE_SECONDS = 60.0
MAX_GROUPS = 1000
MAX_GROUPS_PER_FLEET = 100


@dataclass(frozen=True, slots=True)
class Published:
    snapshot: Snapshot
    published_at: float


class SnapshotCache:
    def __init__(
        self,
        *,
        grace_seconds: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_groups: int = MAX_GROUPS,
        max_groups_per_fleet: int = MAX_GROUPS_PER_FLEET,
    ) -> None:
        self.grace_seconds = grace_seconds
        self.max_groups = max_groups
        self.max_groups_per_fleet = max_groups_per_fleet
        self._clock = clock
        self._snapshots: dict[NodeGroup, Snapshot] = {}
        self._history: dict[NodeGroup, deque[Published]] = {}
        self._watchers: dict[NodeGroup, set[Notify]] = {}
        # Groups no stream watches any more, and since when (the clock's time).
        self._unwatched: dict[NodeGroup, float] = {}
        self._by_key: dict[str, NodeGroup] = {}
        self._wanted_listeners: list[Notify] = []

    # The driver's side.

    def add_wanted_listener(self, notify: Notify) -> None:
        """Call ``notify`` (no arguments, must not block) whenever a group becomes wanted."""
        self._wanted_listeners.append(notify)

    def wanted(self) -> frozenset[NodeGroup]:
        """Every group a stream watches or watched less than ``grace_seconds`` ago."""
        return frozenset(self._watchers) | frozenset(self._unwatched)

    def expire(self) -> list[NodeGroup]:
        """Forget groups unwatched for longer than the grace; returns them."""
        if not self._unwatched:
            return []
        deadline = self._clock() - self.grace_seconds
        gone = [group for group, since in self._unwatched.items() if since <= deadline]
        for group in gone:
            del self._unwatched[group]
            self._snapshots.pop(group, None)
            self._history.pop(group, None)
            self._by_key.pop(group.key, None)
        return gone

    def set_snapshot(self, group: NodeGroup, snapshot: Snapshot) -> bool:
        """Publish ``snapshot`` for ``group``; returns False (and tells no one) if unchanged."""
        previous = self._snapshots.get(group)
        if previous is not None and previous.version == snapshot.version:
            return False
        self._snapshots[group] = snapshot
        self._by_key[group.key] = group
        self._history.setdefault(group, deque(maxlen=HISTORY)).append(
            Published(snapshot=snapshot, published_at=time.time())
        )
        for notify in list(self._watchers.get(group, ())):
            notify()
        return True

    # The streams' side.

    def refusal(self, group: NodeGroup) -> str:
        """Why a new stream of ``group`` cannot be taken ("" when it can): a group already
        wanted always can; a new one only within ``max_groups`` in all and
        ``max_groups_per_fleet`` per node cluster."""
        if group in self._watchers or group in self._unwatched:
            return ""
        wanted = len(self._watchers) + len(self._unwatched)
        if wanted >= self.max_groups:
            return f"{wanted} node groups already (serve --max-node-groups {self.max_groups})"
        fleet = sum(1 for g in (*self._watchers, *self._unwatched) if g.cluster == group.cluster)
        if fleet >= self.max_groups_per_fleet:
            return (
                f"{fleet} node groups already in fleet {group.cluster[:64]!r} "
                f"(serve --max-groups-per-fleet {self.max_groups_per_fleet})"
            )
        return ""

    def get(self, group: NodeGroup) -> Snapshot | None:
        return self._snapshots.get(group)

    def watch(self, group: NodeGroup, notify: Notify) -> Callable[[], None]:
        """Call ``notify`` whenever ``group``'s snapshot changes. Returns a cancel function that
        may be called more than once."""
        watchers = self._watchers.get(group)
        newly_wanted = watchers is None and group not in self._unwatched
        if watchers is None:
            watchers = self._watchers[group] = set()
            self._unwatched.pop(group, None)
            self._by_key[group.key] = group
        watchers.add(notify)
        if newly_wanted or group not in self._snapshots:
            for listener in self._wanted_listeners:
                listener()
        cancelled = False

        def cancel() -> None:
            nonlocal cancelled
            if cancelled:
                return
            cancelled = True
            current = self._watchers.get(group)
            if current is None:
                return
            current.discard(notify)
            if not current:
                del self._watchers[group]
                self._unwatched[group] = self._clock()

        return cancel

    # Inspection.

    def groups(self) -> list[NodeGroup]:
        """Every group that is wanted or has a snapshot, by key."""
        known = set(self._snapshots) | set(self._watchers) | set(self._unwatched)
        return sorted(known, key=lambda g: g.key)

    def group(self, key: str) -> NodeGroup | None:
        """The known group whose key is ``key`` (as the admin API names groups)."""
        return self._by_key.get(key)

    def history(self, group: NodeGroup) -> list[Published]:
        """The last snapshots published for ``group``, oldest first (at most 50)."""
        return list(self._history.get(group, ()))

    def watcher_count(self, group: NodeGroup) -> int:
        return len(self._watchers.get(group, ()))
