"""An unwatched node group is kept 60 s, then dropped, logged (``node_group_dropped``) and
counted (``routeplane_node_groups_dropped_total``): the README's claim, at the cache with its
clock and through the running driver with a short grace."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from control_plane.reconcile import Reconciler
from control_plane.registry import open_registry
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from tests.helpers import async_wait_until
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


async def test_the_driver_drops_it_logs_it_and_counts_it(tmp_path: Path) -> None:
    registry = open_registry(f"sqlite://{tmp_path / 'r.db'}")
    registry.init()
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    cache = SnapshotCache(grace_seconds=0.2)
    reconciler = Reconciler(registry=registry, cache=cache, poll_interval=0.05)
    before = REGISTRY.get_sample_value("routeplane_node_groups_dropped_total") or 0.0
    with capture_logs() as logs:
        task = asyncio.create_task(reconciler.run())
        try:
            cancel = cache.watch(GROUP, lambda: None)
            await async_wait_until(lambda: cache.get(GROUP) is not None, what="built")
            cancel()
            await async_wait_until(lambda: GROUP not in cache.wanted(), what="dropped")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            registry.close()
    assert cache.get(GROUP) is None
    dropped = [e for e in logs if e["event"] == "node_group_dropped"]
    assert dropped == [
        {
            "event": "node_group_dropped",
            "group": GROUP.key,
            "grace_seconds": 0.2,
            "log_level": "info",
        }
    ]
    after = REGISTRY.get_sample_value("routeplane_node_groups_dropped_total")
    assert after == before + 1
