"""The snapshot cache on its own (``control_plane/xds/cache.py``): what it publishes and to whom,
which groups are wanted and for how long, which new groups it refuses, and what it remembers.
Real snapshots, a test clock; no streams and no driver."""

from __future__ import annotations

from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from tests.xds_helpers import two_servers

GROUP = NodeGroup(cluster="edge", region="us-west")


def test_an_unwatched_group_is_kept_60_s_then_dropped() -> None:
    now = [1_000.0]
    cache = SnapshotCache(clock=lambda: now[0])
    cancel = cache.watch(GROUP, lambda: None)
    cache.set_snapshot(GROUP, two_servers())
    cancel()
    now[0] += 59.9
    assert cache.expire() == []
    assert GROUP in cache.wanted()
    assert cache.get(GROUP) is not None  # a proxy that reconnects finds it waiting
    now[0] += 0.1
    assert cache.expire() == [GROUP]
    assert GROUP not in cache.wanted()
    assert cache.get(GROUP) is None
    assert cache.group(GROUP.key) is None


def test_a_group_watched_again_within_the_grace_is_kept() -> None:
    now = [1_000.0]
    cache = SnapshotCache(clock=lambda: now[0])
    cache.watch(GROUP, lambda: None)()
    now[0] += 30
    cache.watch(GROUP, lambda: None)
    now[0] += 3_600
    assert cache.expire() == []
    assert GROUP in cache.wanted()
