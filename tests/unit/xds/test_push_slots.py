"""The push slots behind ``--max-concurrent-pushes``: never more holders than slots, admitted in
the order they asked, and a waiter cancelled in the queue (or after its slot was handed over)
neither holds a slot nor loses one."""

from __future__ import annotations

import asyncio

from control_plane.xds.server import PushSlots


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
            await asyncio.sleep(0)
            await asyncio.sleep(0)
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
    await asyncio.sleep(0)
    queued.cancel()  # cancelled while it waits: skipped when its turn comes
    await asyncio.sleep(0)
    slots.release()  # goes to `handed`, which is cancelled before it runs: it gives it back
    handed.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert queued.cancelled()
    assert handed.cancelled()
    assert last.done()  # the slot went on to the next live waiter
    slots.release()
    # One slot, free again: taken at once, and a second asker waits.
    await asyncio.wait_for(slots.acquire(), 1)
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    assert not second.done()
    slots.release()
    await asyncio.wait_for(second, 1)
