"""The load view's tick: recomputed when anything it depends on moved, skipped when idle."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from control_plane.load.autoscale import Recommender
from control_plane.load.server import LoadService
from control_plane.registry.spec import parse_spec
from control_plane.routing.model import RoutingTable
from harness.models import endpoint, server, table


def _service(current: list[RoutingTable]) -> LoadService:
    return LoadService(table=lambda: current[0], clock=lambda: 100.0)


def test_an_idle_tick_keeps_the_rows_and_wakes_no_one() -> None:
    current = [table(server("echo", endpoint("r1", 8081)))]
    service = _service(current)
    rows = service.tick()
    version = service.version
    assert service.tick() is rows
    assert service.version == version  # watchers are not woken for the same rows


def test_a_new_table_is_ticked_again() -> None:
    current = [table(server("echo", endpoint("r1", 8081)))]
    service = _service(current)
    service.tick()
    current[0] = table(server("echo", endpoint("r1", 8081), endpoint("r2", 8082)))
    [row, *_] = service.tick()
    assert row.ready_replicas == 2


def test_a_recommendation_is_followed_until_it_settles_then_an_idle_tick_costs_nothing() -> None:
    """A quiet server at 1 replica goes to 0 after the 60 s scale-down window: the tick keeps
    looking at it until then; at 0 with no load it has settled and is left alone."""
    spec = parse_spec({"autoscaling": {"target_concurrency": 10, "scale_down_window": "60s"}})
    current = [table(replace(server("echo", endpoint("r1", 8081)), spec=spec))]
    clock = [100.0]
    service = LoadService(table=lambda: current[0], clock=lambda: clock[0])
    assert service.tick()[0].desired_replicas == 1  # starts from READY replicas
    assert service._active == {"echo"}  # still moving: scale-down window not over
    clock[0] += 30
    version = service.version
    assert service.tick()[0].desired_replicas == 1
    assert service.version == version  # the same rows: no one woken
    clock[0] += 31
    assert service.tick()[0].desired_replicas == 0
    assert service.version == version + 1
    assert service._active == set()  # settled
    clock[0] += 1000
    rows = service.tick()
    assert service.tick() is rows
    assert service.version == version + 1


def test_a_server_created_again_under_its_old_name_starts_with_no_cold_starts() -> None:
    """Its old cold starts are not new demand: no wake, no second count."""
    spec = parse_spec({"autoscaling": {"target_concurrency": 4, "scale_down_window": "60s"}})
    gpu = replace(server("gpu"), spec=spec)
    current = [table(gpu)]
    clock = [100.0]
    service = LoadService(table=lambda: current[0], clock=lambda: clock[0])
    service.book.note_cold_start("gpu", now=clock[0], count=5)
    [row, *_] = service.tick()
    assert (row.cold_starts, row.desired_replicas) == (5, 1)  # woken by the demand
    for _ in range(20):  # quiet for the scale-down window, ticked as run() would
        clock[0] += 10
        service.tick()
    assert service.tick()[0].desired_replicas == 0
    current[0] = table()
    service.tick()
    current[0] = table(gpu)
    [row, *_] = service.tick()
    assert (row.cold_starts, row.desired_replicas) == (0, 0)


def test_a_held_request_moves_the_rows_of_an_idle_view() -> None:
    spec = parse_spec({"cold_start": {"mode": "hold"}})
    held = replace(server("gpu"), spec=spec, held=True, cold_epoch=7)
    current = [table(held)]
    service = _service(current)
    assert service.tick()[0].cold_starts == 0
    service.note_subscribed(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        frozenset({"default_gpu_cold7", "other"}),
        node_id="edge-1",
    )
    [row] = service.tick()
    assert row.cold_starts == 1
    assert row.cold_start_mode == "hold"


def test_a_held_request_counts_whatever_epoch_its_route_named() -> None:
    """The route a proxy holds on may come from another worker or replica (on Spanner each
    numbers revisions itself, so epochs differ): any epoch of a held server's name is demand;
    a name that only looks alike is not."""
    spec = parse_spec({"cold_start": {"mode": "hold"}})
    current = [table(replace(server("gpu"), spec=spec, held=True, cold_epoch=7))]
    service = _service(current)
    service.note_subscribed(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        frozenset({"default_gpu_cold5", "default_gpu_coldX", "default_gpu", "default_gpuz_cold5"}),
        node_id="edge-1",
    )
    [row] = service.tick()
    assert row.cold_starts == 1


def test_a_held_name_asked_before_this_process_saw_the_server_go_cold_counts_when_it_does() -> None:
    """Under workers or HA the route a proxy holds on can come from a process whose watch is
    ahead: the name is asked for here while this table still has the replica."""
    spec = parse_spec({"cold_start": {"mode": "hold"}})
    clock = [100.0]
    warm = replace(server("gpu", endpoint("r1", 8081)), spec=spec)
    current = [table(warm)]
    service = LoadService(table=lambda: current[0], clock=lambda: clock[0])
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    service.note_subscribed(
        cds, frozenset({"default_gpu_cold9", "default_nothing_cold1"}), node_id="edge-1"
    )
    assert service.tick()[0].cold_starts == 0  # not held here yet
    current[0] = table(replace(server("gpu"), spec=spec, held=True, cold_epoch=8))
    [row] = service.tick()
    assert row.cold_starts == 1
    clock[0] += 1000  # the name of no held server is forgotten, never counted
    service.tick()
    assert service._pending_cold == {}


def test_early_cold_names_are_bounded() -> None:
    from control_plane.load.server import MAX_PENDING_COLD

    service = _service([table(server("echo", endpoint("r1", 8081)))])
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    service.note_subscribed(
        cds,
        frozenset(f"default_s{i}_cold1" for i in range(MAX_PENDING_COLD + 50)),
        node_id="edge-1",
    )
    assert len(service._pending_cold) == MAX_PENDING_COLD


async def test_a_cold_start_ticks_at_once_not_at_the_next_period() -> None:
    """With a 20 s report interval the view ticks every 10 s; a held request's demand must
    reach watchers (an autoscaler) long before that."""
    import asyncio

    from tests.helpers import async_wait_until

    spec = parse_spec({"cold_start": {"mode": "hold"}})
    current = [table(replace(server("gpu"), spec=spec, held=True, cold_epoch=7))]
    service = LoadService(table=lambda: current[0], interval=20.0)
    runner = asyncio.create_task(service.run())
    try:
        await async_wait_until(lambda: service.rows, timeout=2, what="the first tick")
        service.note_subscribed(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            frozenset({"default_gpu_cold7"}),
            node_id="edge-1",
        )
        await async_wait_until(
            lambda: service.rows[0].cold_starts == 1, timeout=2, what="the cold start in the rows"
        )
    finally:
        runner.cancel()


def test_a_proxy_counts_once_per_cold_period_however_often_it_asks() -> None:
    """Unsubscribing and subscribing again is the same demand; another proxy is more; the next
    cold period counts the same proxy again."""
    spec = parse_spec({"cold_start": {"mode": "hold"}})
    cold = table(replace(server("gpu"), spec=spec, held=True, cold_epoch=7))
    current = [cold]
    service = _service(current)
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    for _ in range(1000):
        service.note_subscribed(cds, frozenset({"default_gpu_cold7"}), node_id="edge-1")
    assert service.tick()[0].cold_starts == 1
    service.note_subscribed(cds, frozenset({"default_gpu_cold7"}), node_id="edge-2")
    assert service.tick()[0].cold_starts == 2
    current[0] = table(replace(server("gpu", endpoint("r1", 8081)), spec=spec, cold_epoch=7))
    service.tick()  # a replica: the cold period is over
    current[0] = table(replace(server("gpu"), spec=spec, held=True, cold_epoch=9))
    service.note_subscribed(cds, frozenset({"default_gpu_cold9"}), node_id="edge-1")
    assert service.tick()[0].cold_starts == 3


def test_the_proxies_remembered_per_cold_period_are_bounded() -> None:
    from control_plane.load import server as load_server

    spec = parse_spec({"cold_start": {"mode": "hold"}})
    service = _service([table(replace(server("gpu"), spec=spec, held=True, cold_epoch=7))])
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    for i in range(load_server.MAX_COLD_PROXIES + 10):
        service.note_subscribed(cds, frozenset({"default_gpu_cold7"}), node_id=f"edge-{i}")
    assert service._cold_proxies_kept == load_server.MAX_COLD_PROXIES
    assert sum(len(s) for s in service._cold_proxies.values()) == load_server.MAX_COLD_PROXIES
    # Past the bound every ask counts: demand is never hidden.
    assert service.tick()[0].cold_starts == load_server.MAX_COLD_PROXIES + 10


class CountingRecommender(Recommender):
    def __init__(self) -> None:
        super().__init__()
        self.updates = 0

    def update(self, key: Hashable, **kwargs: Any) -> int:
        self.updates += 1
        return super().update(key, **kwargs)


def test_an_idle_tick_of_servers_whose_recommendation_settled_touches_none_of_them() -> None:
    """1,000 servers with autoscaling at their no-load value (min 1, 1 READY): the first tick
    computes them all, the next ones none (the old tick updated 1,000 keys twice a second)."""
    spec = parse_spec({"autoscaling": {"target_concurrency": 4, "min_replicas": 1}})
    servers = [
        replace(server(f"s{i}", endpoint(f"r{i}", 9000 + i)), spec=spec) for i in range(1000)
    ]
    clock = [100.0]
    current = [table(*servers)]
    service = LoadService(table=lambda: current[0], clock=lambda: clock[0])
    counting = service._history.recommender = CountingRecommender()
    rows = service.tick()
    assert counting.updates == 1000
    assert {row.desired_replicas for row in rows if row.region == "*"} == {1}
    for _ in range(10):
        clock[0] += 0.5
        assert service.tick() is rows
    assert counting.updates == 1000
    # Load on one server: that one alone is looked at, until it is quiet and settled again.
    service.book.note_cold_start("s7", now=clock[0])
    service.tick()
    assert counting.updates == 1001


def test_a_new_table_tells_watchers_only_the_servers_that_changed_or_went() -> None:
    """A registry revision must not make every watcher (the supervisor) take every row again."""
    current = [table(server("a", endpoint("r1", 8081)), server("b", endpoint("r2", 8082)))]
    service = _service(current)
    service.tick()
    first = service.version
    current[0] = table(server("a", endpoint("r1", 8081)), server("b", endpoint("r2", 8082)))
    service.tick()
    assert service.changes_since(first) == frozenset()  # the same servers: nothing to send
    current[0] = table(server("a", endpoint("r1", 8081), endpoint("r3", 8083)))
    service.tick()
    assert service.changes_since(first) == {"a", "b"}  # a changed, b went
    assert service.rows_of("b") == ()
