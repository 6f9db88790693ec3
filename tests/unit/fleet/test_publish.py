"""``FleetLoad`` on a real SQLite registry: two publishers see each other's totals in their
load views, a wake is written at once, and a registry that cannot be read makes the view
partial (own load only) rather than show old fleet sums; it recovers with the next read."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from control_plane.admin.loadview import LoadAnswers
from control_plane.admin.pb import admin_pb2
from control_plane.fleet.publish import FleetLoad
from control_plane.load.server import LoadService
from control_plane.load.totals import MILLION, LoadTotals, RegionTotals, ServerTotals
from control_plane.registry.errors import RegistryUnavailableError
from control_plane.registry.model import LoadRecord
from control_plane.registry.spec import Autoscaling
from control_plane.registry.sqlite import SqliteRegistry
from harness.models import endpoint, server, table


class Cut:
    """A registry whose load read fails on demand (the fault a real SQLite file cannot give
    at will); everything else is the real store's."""

    def __init__(self, registry: SqliteRegistry) -> None:
        self._registry = registry
        self.cut = False

    def publish_load(self, record: LoadRecord, *, forget_before: float) -> None:
        self._registry.publish_load(record, forget_before=forget_before)

    def read_load(self, *, max_records: int, max_bytes: int) -> list[LoadRecord]:
        if self.cut:
            raise RegistryUnavailableError("registry 'sqlite:///x': disk I/O error")
        return self._registry.read_load(max_records=max_records, max_bytes=max_bytes)


def routed() -> Any:
    rule = Autoscaling(target_concurrency=1, max_replicas=50)
    echo = server("echo", endpoint("r1", 8081))
    return table(replace(echo, spec=replace(echo.spec, autoscaling=rule)))


def own_load(load: LoadService, in_flight: int) -> None:
    """This view's own totals say ``in_flight`` (as its proxies' reports would)."""
    star = RegionTotals(region="*", in_flight=in_flight * MILLION, ready=1)
    mine = ServerTotals(server="echo", regions=(star,))
    load.totals = lambda servers=None: LoadTotals(  # type: ignore[method-assign]
        servers=(mine,), proxies=1, interval=load.interval, at=0.0
    )


def in_flight(load: LoadService) -> float | None:
    """The server's "*" row's in flight (None: no row yet)."""
    return next((row.in_flight for row in load.rows if row.region == "*"), None)


async def until(view: LoadService, condition: Any) -> None:
    """Wait, under a deadline, for ``condition`` after one of ``view``'s versions."""
    async with asyncio.timeout(10):
        async for _ in view.watch():
            if condition():
                return


async def test_two_publishers_see_each_other_and_a_cut_registry_is_partial(
    tmp_path: Path,
) -> None:
    registry = SqliteRegistry(f"sqlite://{tmp_path / 'r.db'}")
    current = routed()
    views = [LoadService(table=lambda: current, interval=0.2) for _ in range(2)]
    own_load(views[0], 3)
    own_load(views[1], 4)
    cut = Cut(registry)
    fleets = [
        FleetLoad(registry=cut, load=views[0], publisher="a", group="a"),  # type: ignore[arg-type]
        FleetLoad(registry=registry, load=views[1], publisher="b", group="b"),
    ]
    tasks = [asyncio.create_task(t.run()) for t in (*views, *fleets)]
    try:
        # The view's own rows come from its book (empty here): what shows is the others' 4.
        await until(views[0], lambda: in_flight(views[0]) == 4)
        await until(views[1], lambda: in_flight(views[1]) == 3)
        answers = LoadAnswers(views[0])
        assert answers.get(admin_pb2.GetLoadRequest()).partial is False
        cut.cut = True
        await until(views[0], lambda: views[0].partial)
        assert in_flight(views[0]) == 0  # none of b's: never old sums as fresh
        assert answers.get(admin_pb2.GetLoadRequest()).partial is True
        assert fleets[0].remote == LoadTotals()
        cut.cut = False
        await until(views[0], lambda: not views[0].partial and in_flight(views[0]) == 4)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Stopped: each wrote an empty record on its way out.
    left = {r.publisher: r.totals for r in registry.read_load(max_records=10, max_bytes=1000)}
    assert set(left) == {"a", "b"}
    for data in left.values():
        message = admin_pb2.LoadTotals()
        message.ParseFromString(data or b"")
        assert not message.servers
    registry.close()


async def test_a_new_wake_is_written_at_once_not_at_the_next_interval(tmp_path: Path) -> None:
    registry = SqliteRegistry(f"sqlite://{tmp_path / 'r.db'}")
    current = routed()
    # An interval no test waits for: only the wake path can write within the deadline.
    load = LoadService(table=lambda: current, interval=600.0)
    busy = ServerTotals(server="echo", regions=(RegionTotals(region="*", in_flight=MILLION),))
    load.totals = lambda servers=None: LoadTotals(  # type: ignore[method-assign]
        servers=(busy,), interval=600.0
    )
    fleet = FleetLoad(registry=registry, load=load, publisher="a", group="a")
    reader = FleetLoad(
        registry=registry, load=LoadService(table=lambda: current), publisher="r", group="r"
    )
    tasks = [asyncio.create_task(t.run()) for t in (load, fleet)]
    try:
        async with asyncio.timeout(10):  # the first interval's write: load, no wake
            while not reader.remote.servers:
                await reader.read_once()
        assert reader.remote.servers[0].cold_starts == 0
        woken = replace(busy, cold_starts=1, woken_at=load._clock())
        load.totals = lambda servers=None: LoadTotals(  # type: ignore[method-assign]
            servers=(woken,), interval=600.0
        )
        load._log.add(frozenset({"echo"}))  # the view moved, as a cold start's tick does
        load._cold_start_seen.set()
        async with asyncio.timeout(10):  # long before the next interval's write
            while not reader.remote.servers[0].cold_starts:
                await reader.read_once()
        [seen] = reader.remote.servers
        assert (seen.server, seen.cold_starts) == ("echo", 1)
        assert seen.woken_at > 0
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    registry.close()
