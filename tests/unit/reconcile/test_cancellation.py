"""Every loop exits on cancellation, also when the cancel lands in the loop iteration that wakes
it (issue 23: Python 3.11's ``asyncio.wait_for`` returned the wake-up and dropped the cancel, so
``Reconciler._drive`` looped on and ``serve`` never exited after ``shutdown_started``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from control_plane.reconcile import Reconciler
from control_plane.registry import open_registry
from control_plane.xds.cache import SnapshotCache
from control_plane.xds.nodes import NodeGroup
from tests.helpers import async_wait_until

ROUNDS = 25
EXIT_DEADLINE = 5.0  # seconds a cancelled reconciler gets to stop (it needs one loop turn)


async def _race(registry_url: str, *, round_: int, turns: int) -> None:
    """Wake the reconciler (a group becomes wanted: the cache calls its listener at once) and
    cancel it, ``turns`` loop iterations apart; it must end cancelled."""
    registry = open_registry(registry_url)
    try:
        cache = SnapshotCache()
        reconciler = Reconciler(registry=registry, cache=cache, poll_interval=0.05)
        task = asyncio.create_task(reconciler.run())
        # The first pass done: both loops wait now.
        await async_wait_until(lambda: reconciler.health.ready, what="the first pass")
        cache.watch(NodeGroup(cluster="edge", region=f"r{round_}"), lambda: None)
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        # asyncio.wait, not a timeout around ``await task``: that would cancel it once more.
        await asyncio.wait({task}, timeout=EXIT_DEADLINE)
        assert task.done(), f"round {round_}: the reconciler did not stop when cancelled"
        assert task.cancelled()
    finally:
        registry.close()


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_the_reconciler_stops_when_cancelled_as_it_wakes(tmp_path: Path, turns: int) -> None:
    url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(url)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.close()

    async def rounds() -> None:
        for round_ in range(ROUNDS):
            await _race(url, round_=round_, turns=turns)

    # Not asyncio.run: on failure it would wait forever for the task that does not stop.
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(rounds())
    finally:
        loop.close()
