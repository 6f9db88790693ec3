"""``serve --workers``: the supervisor follows each worker's load totals (after the first, only
the servers that changed) and merges only the servers that changed (and recommendations not
settled). Its rows must equal a merge of every worker's whole totals recomputed from scratch at
every step (the slow path it replaced), whatever the sequence."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

import pytest

from control_plane.admin.loadwire import TotalsFeed
from control_plane.group.admin import LoadSum
from control_plane.load.autoscale import Recommender
from control_plane.load.reports import Catalog
from control_plane.load.server import LoadService
from control_plane.load.totals import (
    EMPTY,
    History,
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ServerTotals,
    recommend,
)
from control_plane.registry.spec import Autoscaling
from control_plane.routing.model import RoutingTable
from harness.models import table
from tests.unit.load.test_tick_incremental import random_server, report


def everything(service: LoadService) -> Catalog:
    """Every endpoint entry read, and no candidates withheld (``warm_intervals=0``): each
    process decides from its own rows whose replicas it reads (issue 29), so a group's and a
    lone process's reading could differ; what these tests compare is the sums."""
    return replace(service.catalog(), per_replica=None)


class FromScratch:
    """Every worker's whole totals, every server, every step: the sum as it was before."""

    def __init__(self) -> None:
        self.history = History()
        self.servers: set[str] = set()

    def add(self, workers: list[LoadService], *, now: float) -> dict[tuple[str, str], Any]:
        merged = EMPTY
        specs: dict[str, LoadSpec] = {}
        for worker in workers:
            merged = merged.merge(worker.totals())
            specs = {**worker.specs, **specs}  # the first worker's spec of a server
        present = {server.server for server in merged.servers}
        for gone in self.servers - present:
            self.history.forget_server(gone)
        self.servers = present
        recommended = recommend(merged, specs, self.history, now=now)
        return {(r.server, r.region): r for answer in recommended.values() for r in answer.rows}


def by_key(load: LoadSum) -> dict[tuple[str, str], Any]:
    return {(r.server, r.region): r for name in load.servers() for r in load.rows_of(name)}


@pytest.mark.parametrize("seed", range(30))
def test_the_supervisors_incremental_sum_equals_a_sum_of_whole_answers(seed: int) -> None:
    rng = random.Random(seed)
    servers = [random_server(rng, f"s{i}") for i in range(8)]
    current: list[RoutingTable] = [table(*servers)]
    clock = [1000.0]
    workers = [
        LoadService(
            table=lambda: current[0], clock=lambda: clock[0], interval=1.0, warm_intervals=0.0
        )
        for _ in range(2)
    ]
    feeds = [TotalsFeed(worker) for worker in workers]
    incremental, scratch = LoadSum(2), FromScratch()
    streams: dict[int, dict[int, int]] = {id(worker): {} for worker in workers}
    numbers = itertools.count(1)
    for step in range(120):
        clock[0] += rng.choice([0.25, 0.5, 0.5, 2.0])
        worker = rng.choice(workers)
        roll = rng.random()
        if roll < 0.3:
            proxy = rng.randrange(2)
            worker.book.record(
                f"proxy-{proxy}",
                report(rng, servers),
                stream=streams[id(worker)].setdefault(proxy, next(numbers)),
                now=clock[0],
                asked_interval=1.0,
                catalog=everything(worker),
            )
        elif roll < 0.4:
            for gone in streams[id(worker)].values():
                worker.book.forget(gone)
            streams[id(worker)].clear()
        elif roll < 0.48:
            worker.book.note_cold_start(rng.choice(servers).name, now=clock[0])
        elif roll < 0.56:
            index = rng.randrange(len(servers))
            if rng.random() < 0.2 and len(servers) > 2:
                servers.pop(index)
            else:
                servers[index] = random_server(rng, servers[index].name)
            if rng.random() < 0.2:
                servers.append(random_server(rng, f"n{step}"))
            current[0] = table(*servers, revision=step)
        for index, service in enumerate(workers):
            service.tick()
            for update in feeds[index].updates():
                incremental.take_update(index, update)
        incremental.sum(now=clock[0])
        expected = scratch.add(workers, now=clock[0])
        assert by_key(incremental) == expected, f"seed {seed}, step {step}"


@pytest.mark.parametrize("seed", range(20))
def test_a_worker_group_shows_what_one_process_hearing_every_proxy_shows(seed: int) -> None:
    """One ``recommend`` for both: two workers, each hearing some proxies, summed by the
    supervisor, give the rows of a lone process that hears every proxy (same table, same
    reports, same cold starts, same clock)."""
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
    streams: dict[tuple[int, int], int] = {}
    numbers = itertools.count(1)
    for step in range(100):
        clock[0] += rng.choice([0.25, 0.5, 0.5, 2.0])
        index = rng.randrange(2)
        roll = rng.random()
        if roll < 0.35:
            proxy = rng.randrange(2)
            stats = report(rng, servers)
            stream = streams.setdefault((index, proxy), next(numbers))
            for hearing in (workers[index], lone):
                hearing.book.record(
                    f"proxy-{index}-{proxy}",
                    stats,
                    stream=stream,
                    now=clock[0],
                    asked_interval=1.0,
                    catalog=everything(hearing),
                )
        elif roll < 0.45:
            for (owner, proxy), stream in list(streams.items()):
                if owner == index:
                    workers[index].book.forget(stream)
                    lone.book.forget(stream)
                    del streams[(owner, proxy)]
        elif roll < 0.55:
            name = rng.choice(servers).name
            workers[index].book.note_cold_start(name, now=clock[0])
            lone.book.note_cold_start(name, now=clock[0])
        elif roll < 0.62:
            at = rng.randrange(len(servers))
            servers[at] = random_server(rng, servers[at].name)
            current[0] = table(*servers, revision=step)
        for number, (worker, feed) in enumerate(zip(workers, feeds, strict=True)):
            worker.tick()
            for update in feed.updates():
                group.take_update(number, update)
        group.sum(now=clock[0])
        lone.tick()
        alone = {(r.server, r.region): r for r in lone.rows}
        assert by_key(group) == alone, f"seed {seed}, step {step}"


def test_an_idle_group_sums_nothing_once_recommendations_settled() -> None:
    """Two workers' whole answers for 1,000 servers at their no-load recommendation: the first
    sum computes them, later sums (every half interval) none."""
    rows = [
        {"server": f"s{i}", "region": "*", "ready_replicas": 1, "target": 4.0} for i in range(1000)
    ]
    load = LoadSum(2)
    counting = load._history.recommender = CountingRecommender()
    for worker in (0, 1):
        load.take_specs(worker, whole_answer(rows)[0])
        load.take(worker, whole_answer(rows)[1])
    assert load.sum(now=1.0)
    assert counting.updates == 1000
    version = load.version
    for step in range(10):
        assert not load.sum(now=2.0 + step)
    assert counting.updates == 1000
    assert load.version == version


class CountingRecommender(Recommender):
    def __init__(self) -> None:
        super().__init__()
        self.updates = 0

    def update(self, key: Hashable, **kwargs: Any) -> int:
        self.updates += 1
        return super().update(key, **kwargs)


def whole_answer(rows: list[dict[str, Any]]) -> tuple[dict[str, LoadSpec], LoadTotals]:
    """A worker's specs and whole totals: every row a server's "*" row."""
    specs = {
        row["server"]: LoadSpec(
            autoscaling=Autoscaling(
                target_concurrency=row["target"],
                min_replicas=1,
                max_replicas=20,
                scale_down_window=0.0,
            )
        )
        for row in rows
    }
    servers = tuple(
        ServerTotals(
            server=row["server"],
            regions=(RegionTotals(region=row["region"], ready=row["ready_replicas"]),),
        )
        for row in sorted(rows, key=lambda r: r["server"])
    )
    return specs, LoadTotals(servers=servers, interval=1.0)
