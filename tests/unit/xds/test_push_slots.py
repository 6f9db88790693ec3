"""The push slots behind ``--max-concurrent-pushes``: never more holders than slots, admitted in
the order they asked, and a waiter cancelled in the queue (or after its slot was handed over)
neither holds a slot nor loses one."""

from __future__ import annotations

import asyncio

from control_plane.xds.server import PushSlots
from tests.helpers import async_wait_until


async def test_no_more_holders_than_slots_and_first_come_first_served() -> None:
    slots = PushSlots(3)
    holding: set[int] = set()
    most = 0
    order: list[int] = []

    async def push(i: int) -> None:
        nonlocal most
        await slots.acquire()
        try:
            order.append(i)
            holding.add(i)
            most = max(most, len(holding))
            # Hold the slot while the others ask: until someone is queued, or none is left.
            await async_wait_until(lambda: slots._waiters or len(order) == 50, timeout=1)
        finally:
            holding.discard(i)
            slots.release()

    await asyncio.gather(*(push(i) for i in range(50)))
    assert most == 3
    assert order == list(range(50))


async def test_a_waiter_cancelled_in_the_queue_or_after_being_handed_a_slot_loses_no_slot() -> None:
    slots = PushSlots(1)
    await slots.acquire()
    queued = asyncio.create_task(slots.acquire())
    handed = asyncio.create_task(slots.acquire())
    last = asyncio.create_task(slots.acquire())
    await async_wait_until(lambda: len(slots._waiters) == 3, timeout=1, what="three waiters")
    queued.cancel()  # cancelled while it waits: skipped when its turn comes
    await async_wait_until(queued.done, timeout=1, what="the queued waiter cancelled")
    slots.release()  # goes to `handed`, which is cancelled before it runs: it gives it back
    handed.cancel()
    await async_wait_until(last.done, timeout=1, what="the slot passed on to the last waiter")
    assert queued.cancelled()
    assert handed.cancelled()
    slots.release()
    # One slot, free again: taken at once, and a second asker waits.
    await asyncio.wait_for(slots.acquire(), 1)
    second = asyncio.create_task(slots.acquire())
    await async_wait_until(lambda: len(slots._waiters) == 1, timeout=1, what="one waiter")
    assert not second.done()
    slots.release()
    await asyncio.wait_for(second, 1)
