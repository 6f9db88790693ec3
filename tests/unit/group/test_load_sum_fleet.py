"""The supervisor's sums with the fleet's totals (``control_plane/fleet/``): every worker
sends the same remote totals (the other control planes'), and the group counts one copy of
them beside its workers' own; partial only when no worker could read them."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest

from control_plane.admin.loadwire import TotalsFeed
from control_plane.group.admin import LoadSum
from control_plane.load.reports import Catalog
from control_plane.load.server import LoadService
from control_plane.load.totals import MILLION, LoadSpec, LoadTotals, RegionTotals, ServerTotals
from control_plane.registry.spec import Autoscaling
from control_plane.routing.model import RoutingTable
from harness.models import table
from tests.unit.load.test_tick_incremental import random_server, report

SPEC = {"echo": LoadSpec(autoscaling=Autoscaling(target_concurrency=1, max_replicas=50))}


def everything(service: LoadService) -> Catalog:
    """Every endpoint entry read, and no candidates withheld (``warm_intervals=0``): each
    process decides from its own rows whose replicas it reads (issue 29), so a group's and a
    lone process's reading could differ; what these tests compare is the sums."""
    return replace(service.catalog(), per_replica=None)


def totals(in_flight: int, *, ready: int = 1, proxies: int = 1) -> LoadTotals:
    star = RegionTotals(region="*", in_flight=in_flight * MILLION, ready=ready)
    return LoadTotals(servers=(ServerTotals(server="echo", regions=(star,)),), proxies=proxies)


def star(load: LoadSum) -> tuple[float, int | None]:
    [row] = [r for r in load.rows_of("echo") if r.region == "*"]
    return row.in_flight, row.desired_replicas


def group(remote: list[tuple[LoadTotals, bool] | None]) -> LoadSum:
    load = LoadSum(2)
    for worker, own in enumerate((1, 2)):
        load.take_specs(worker, SPEC)
        load.take(worker, totals(own))
        if remote[worker] is not None:
            value, partial = remote[worker]  # type: ignore[misc]
            load.take_remote(worker, value, partial=partial)
    load.sum(now=100.0)
    return load


def test_the_remote_totals_count_once_whatever_the_number_of_workers() -> None:
    load = group([(totals(4, ready=0), False), (totals(4, ready=0), False)])
    assert star(load) == (7, 7)
    assert load.reporting_proxies == 3
    assert load.partial is False


def test_a_worker_that_could_not_read_leaves_the_count_to_one_that_could() -> None:
    load = group([(LoadTotals(), True), (totals(4, ready=0), False)])
    assert star(load) == (7, 7)
    assert load.partial is False


def test_no_worker_could_read_partial_and_own_load_only() -> None:
    load = group([(LoadTotals(), True), (LoadTotals(), True)])
    assert star(load) == (3, 3)
    assert load.partial is True


def test_remote_totals_that_move_are_summed_again() -> None:
    load = group([(totals(4, ready=0), False), None])
    assert star(load)[0] == 7
    load.take_remote(0, totals(10, ready=0), partial=False)
    load.sum(now=101.0)
    assert star(load)[0] == 13
    load.take_remote(0, LoadTotals(), partial=False)  # the other replica went
    load.sum(now=102.0)
    assert star(load)[0] == 3


def remote_totals(rng: random.Random, servers: list[Any]) -> LoadTotals:
    """What the other control planes might have published: load on some servers, some
    regions, a cold start here and there (never ready replicas: they are not published)."""
    chosen = rng.sample(servers, rng.randrange(len(servers) + 1))
    out = []
    for routed in sorted(chosen, key=lambda s: s.name):
        regions = [RegionTotals(region="*", in_flight=rng.randrange(0, 9) * MILLION)]
        if rng.random() < 0.5:
            regions.append(RegionTotals(region="us-west", in_flight=rng.randrange(0, 5) * MILLION))
        out.append(
            ServerTotals(
                server=routed.name, regions=tuple(regions), cold_starts=rng.randrange(0, 3)
            )
        )
    return LoadTotals(servers=tuple(out), proxies=rng.randrange(0, 4))


@pytest.mark.parametrize("seed", range(20))
def test_a_group_with_the_fleets_totals_shows_what_a_lone_process_with_them_shows(
    seed: int,
) -> None:
    """Two workers hearing some proxies each and both reading the same remote totals, summed
    by the supervisor through the real feed, give the rows of a lone process that hears every
    proxy and reads the same remote totals: the remote totals are counted once."""
    rng = random.Random(seed)
    servers = [random_server(rng, f"s{i}") for i in range(6)]
    current: list[RoutingTable] = [table(*servers)]
    clock = [1000.0]

    def service() -> LoadService:
        return LoadService(
            table=lambda: current[0], clock=lambda: clock[0], interval=1.0, warm_intervals=0.0
        )

    workers, lone = [service(), service()], service()
    feeds = [TotalsFeed(worker) for worker in workers]
    group = LoadSum(2)
    numbers = itertools.count(1)
    for step in range(80):
        clock[0] += rng.choice([0.25, 0.5, 2.0])
        roll = rng.random()
        if roll < 0.4:
            index, stats = rng.randrange(2), report(rng, servers)
            stream = next(numbers)
            for hearing in (workers[index], lone):
                hearing.book.record(
                    f"proxy-{index}",
                    stats,
                    stream=stream,
                    now=clock[0],
                    asked_interval=1.0,
                    catalog=everything(hearing),
                )
        elif roll < 0.8:
            remote = remote_totals(rng, servers)
            partial = rng.random() < 0.15
            shown = LoadTotals() if partial else remote
            for hearing in (*workers, lone):
                hearing.take_remote(shown, partial=partial)
        for number, (worker, feed) in enumerate(zip(workers, feeds, strict=True)):
            worker.tick()
            for update in feed.updates():
                group.take_update(number, update)
        group.sum(now=clock[0])
        lone.tick()
        alone = {(r.server, r.region): r for r in lone.rows}
        grouped = {(r.server, r.region): r for n in group.servers() for r in group.rows_of(n)}
        assert grouped == alone, f"seed {seed}, step {step}"
        assert group.partial == lone.partial
