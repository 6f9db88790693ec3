"""The load loops stop when cancelled, also when the event they wait on is set in the same loop
turn as the cancel (Python 3.11's ``asyncio.wait_for`` returns the inner result then, and the
cancel is lost: the loop never stops and ``serve`` hangs on SIGTERM)."""

from __future__ import annotations

import asyncio

from control_plane.group.admin import AggregateService
from control_plane.load.server import LoadService
from harness.models import endpoint, server, table
from tests.helpers import async_wait_until

ROUNDS = 200


async def _stops(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` ends (a deadline on the condition, not a timing claim)."""
    done, _ = await asyncio.wait({task}, timeout=5)
    if not done:
        task.cancel()  # the lost cancel: cancel again so the test itself ends
        await asyncio.wait({task}, timeout=5)
    return bool(done)


async def test_the_load_tick_loop_stops_when_a_cold_start_and_the_cancel_meet() -> None:
    current = table(server("echo", endpoint("r1", 8081)))
    for round_ in range(ROUNDS):
        service = LoadService(table=lambda: current, interval=60.0)
        runner = asyncio.create_task(service.run())
        await async_wait_until(lambda s=service: s.version > 0, what="the first tick")
        service._cold_start_seen.set()  # a cold start ...
        runner.cancel()  # ... in the same loop turn as the shutdown
        assert await _stops(runner), f"round {round_}: the cancel was lost"
        assert runner.cancelled()


async def test_the_supervisors_load_loop_stops_when_an_update_and_the_cancel_meet() -> None:
    for round_ in range(ROUNDS):
        service = AggregateService(workers=[], interval=60.0)
        try:
            runner = asyncio.create_task(service.run())
            await async_wait_until(lambda s=service: s._summed, what="the first sum")
            service._updated.set()  # a worker's update ...
            runner.cancel()  # ... in the same loop turn as the shutdown
            assert await _stops(runner), f"round {round_}: the cancel was lost"
            assert runner.cancelled()
        finally:
            await service.close()
