"""An unwatched node group is kept for the grace, then dropped, logged (``node_group_dropped``)
and counted (``routeplane_node_groups_dropped_total``): the README's claim, through the running
driver with a short grace (the 60 s, at the cache with its clock: ``tests/unit/xds/test_cache.py``).
"""

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

GROUP = NodeGroup(cluster="edge", region="us-west")


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
