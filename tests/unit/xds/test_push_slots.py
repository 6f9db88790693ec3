"""The push slots behind ``--max-concurrent-pushes``: never more holders than slots, admitted in
the order they asked, and a waiter cancelled in the queue (or after its slot was handed over)
neither holds a slot nor loses one. A stream's ``Wake`` (its wake-up and its slot in one wait)
keeps the same rules, queued from the moment it is set."""

from __future__ import annotations

import asyncio

from control_plane.xds.server import PushSlots, Wake
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


async def test_a_wake_returns_only_once_set_and_holding_a_slot() -> None:
    slots = PushSlots(1)
    wake = Wake(slots)
    waiting = asyncio.create_task(wake.wait())
    await async_wait_until(lambda: wake._waiter is not None, timeout=1, what="the wake parked")
    assert not waiting.done()
    assert slots._free == 1  # not set: it holds nothing and queues nowhere
    wake.set()
    await asyncio.wait_for(waiting, 1)
    assert slots._free == 0  # it holds the one slot
    # Set again while it holds it (a push in progress): due once more, however many sets.
    wake.set()
    wake.set()
    other = Wake(slots)
    other.set()
    other_waiting = asyncio.create_task(other.wait())
    again = asyncio.create_task(wake.wait())
    await async_wait_until(lambda: len(slots._waiters) == 2, timeout=1, what="both queued")
    slots.release()  # first come, first served: the other stream queued first
    await asyncio.wait_for(other_waiting, 1)
    assert not again.done()
    slots.release()
    await asyncio.wait_for(again, 1)
    slots.release()
    assert slots._free == 1
    assert not wake._due
    assert not other._due


async def test_wakes_and_acquirers_share_the_bound_and_the_order() -> None:
    slots = PushSlots(3)
    wakes = [Wake(slots) for _ in range(20)]
    holding: set[int] = set()
    most = 0
    order: list[int] = []

    async def stream(i: int) -> None:
        nonlocal most
        await wakes[i].wait()
        try:
            order.append(i)
            holding.add(i)
            most = max(most, len(holding))
            await async_wait_until(lambda: slots._waiters or len(order) == 20, timeout=1)
        finally:
            holding.discard(i)
            slots.release()

    tasks = [asyncio.create_task(stream(i)) for i in range(20)]
    await async_wait_until(
        lambda: all(w._waiter is not None for w in wakes), timeout=1, what="every stream parked"
    )
    for wake in reversed(wakes):  # set in reverse: served in the order they were set
        wake.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert most == 3
    assert order == list(reversed(range(20)))
    assert slots._free == 3


async def test_a_wake_cancelled_queued_or_after_being_handed_a_slot_loses_no_slot() -> None:
    slots = PushSlots(1)
    await slots.acquire()
    queued, handed = Wake(slots), Wake(slots)
    queued_task = asyncio.create_task(queued.wait())
    handed_task = asyncio.create_task(handed.wait())
    await async_wait_until(
        lambda: queued._waiter is not None and handed._waiter is not None,
        timeout=1,
        what="both parked",
    )
    queued.set()
    handed.set()
    assert len(slots._waiters) == 2
    queued_task.cancel()
    await async_wait_until(queued_task.done, timeout=1, what="the queued wake cancelled")
    slots.release()  # skips the cancelled one, goes to `handed`, cancelled before it runs
    handed_task.cancel()
    await async_wait_until(handed_task.done, timeout=1, what="the handed wake cancelled")
    assert queued_task.cancelled()
    assert handed_task.cancelled()
    assert slots._free == 1  # given back: free again
    # The cancelled wakes hold nothing: set again, one is served at once.
    queued.set()
    await asyncio.wait_for(queued.wait(), 1)
    assert slots._free == 0
