"""The snapshot cache on its own (``control_plane/xds/cache.py``): what it publishes and to whom,
which groups are wanted and for how long, which new groups it refuses, and what it remembers.
Real snapshots, a test clock; no streams and no driver."""

from __future__ import annotations

from control_plane.xds.cache import HISTORY, SnapshotCache
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


def test_a_new_version_tells_every_watcher_once_and_the_same_version_tells_no_one() -> None:
    cache = SnapshotCache()
    told: list[str] = []
    cache.watch(GROUP, lambda: told.append("a"))
    cache.watch(GROUP, lambda: told.append("b"))
    first = two_servers()
    assert cache.set_snapshot(GROUP, first) is True
    assert sorted(told) == ["a", "b"]
    assert cache.set_snapshot(GROUP, two_servers()) is False  # equal content, equal version
    assert sorted(told) == ["a", "b"]
    assert cache.get(GROUP) is first
    changed = two_servers(echo_port=9001)
    assert changed.version != first.version
    assert cache.set_snapshot(GROUP, changed) is True
    assert sorted(told) == ["a", "a", "b", "b"]
    assert cache.get(GROUP) is changed


def test_a_cancelled_watcher_is_told_nothing_more_and_cancel_may_be_called_twice() -> None:
    now = [1_000.0]
    cache = SnapshotCache(clock=lambda: now[0])
    told: list[str] = []
    cancel = cache.watch(GROUP, lambda: told.append("gone"))
    cache.watch(GROUP, lambda: told.append("kept"))
    cancel()
    cancel()
    assert cache.watcher_count(GROUP) == 1
    cache.set_snapshot(GROUP, two_servers())
    assert told == ["kept"]

    other = NodeGroup(cluster="edge", region="us-east")
    leave = cache.watch(other, lambda: None)
    leave()
    now[0] += 30
    leave()  # a second cancel does not restart the grace
    now[0] += cache.grace_seconds - 30
    assert cache.expire() == [other]
    assert cache.watcher_count(other) == 0


def test_the_driver_is_woken_for_a_new_group_and_for_one_still_without_a_snapshot() -> None:
    cache = SnapshotCache()
    woken: list[None] = []
    cache.add_wanted_listener(lambda: woken.append(None))
    cache.watch(GROUP, lambda: None)
    assert len(woken) == 1  # newly wanted
    cache.watch(GROUP, lambda: None)
    assert len(woken) == 2  # wanted already, but nothing published yet
    cache.set_snapshot(GROUP, two_servers())
    cache.watch(GROUP, lambda: None)
    assert len(woken) == 2  # wanted and published: nothing for the driver to do
    assert cache.wanted() == frozenset({GROUP})


def test_new_groups_past_the_caps_are_refused_naming_the_flag_and_wanted_ones_never() -> None:
    now = [1_000.0]
    cache = SnapshotCache(clock=lambda: now[0], max_groups=3, max_groups_per_fleet=2)
    a1 = NodeGroup(cluster="a", region="r1")
    a2 = NodeGroup(cluster="a", region="r2")
    a3 = NodeGroup(cluster="a", region="r3")
    b1 = NodeGroup(cluster="b", region="r1")
    c1 = NodeGroup(cluster="c", region="r1")
    for group in (a1, a2):
        assert cache.refusal(group) == ""
        cache.watch(group, lambda: None)
    assert cache.refusal(a3) == (
        "2 node groups already in fleet 'a' (serve --max-groups-per-fleet 2)"
    )
    assert cache.refusal(b1) == ""
    cache.watch(b1, lambda: None)()  # unwatched, within the grace: still counted
    assert cache.refusal(c1) == "3 node groups already (serve --max-node-groups 3)"
    assert cache.refusal(a1) == ""
    assert cache.refusal(b1) == ""  # a group kept for its grace is taken back
    now[0] += cache.grace_seconds
    assert cache.expire() == [b1]
    assert cache.refusal(c1) == ""


def test_history_keeps_the_last_published_snapshots_oldest_first() -> None:
    cache = SnapshotCache()
    published = [two_servers(echo_port=8000 + i) for i in range(HISTORY + 5)]
    for snapshot in published:
        cache.set_snapshot(GROUP, snapshot)
    cache.set_snapshot(GROUP, published[-1])  # unchanged: not history
    history = cache.history(GROUP)
    assert [p.snapshot.version for p in history] == [s.version for s in published[-HISTORY:]]
    assert cache.history(NodeGroup(cluster="edge", region="nowhere")) == []


def test_groups_are_listed_by_key_and_found_by_key() -> None:
    cache = SnapshotCache()
    watched = NodeGroup(cluster="edge", region="us-west", zone="b")
    published = NodeGroup(cluster="api", region="eu", listen="127.0.0.1:10001")
    cache.watch(watched, lambda: None)
    cache.set_snapshot(published, two_servers())  # published for a group nobody watches
    assert cache.groups() == [published, watched]
    assert cache.group("edge/us-west/b@127.0.0.1:10000") == watched
    assert cache.group(published.key) == published
    assert cache.group("edge/us-west@127.0.0.1:10000") is None
    assert published not in cache.wanted()
