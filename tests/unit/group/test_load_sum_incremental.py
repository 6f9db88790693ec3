"""``serve --workers``: the supervisor follows each worker's WatchLoad with ``changes_only`` and
sums only the servers that changed (and recommendations not settled). Its rows must equal a sum
of every worker's whole answer recomputed from scratch at every step (the slow path it
replaced), whatever the sequence."""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable
from typing import Any

import pytest

from control_plane.admin.loadview import LoadAnswers
from control_plane.admin.pb import admin_pb2
from control_plane.admin.service import add_rows
from control_plane.group.admin import LoadSum, _rule
from control_plane.load.autoscale import Recommender
from control_plane.load.server import LoadService
from control_plane.routing.model import RoutingTable
from tests.helpers import table
from tests.unit.load.test_tick_incremental import random_server, report


class FromScratch:
    """Every worker's whole answer, every row, every step: the sum as it was before."""

    def __init__(self) -> None:
        self.recommender = Recommender()
        self.cold_seen: dict[tuple[int, str], int] = {}

    def add(self, answers: list[Any], *, now: float) -> dict[tuple[str, str], Any]:
        woken: set[str] = set()
        for index, answer in enumerate(answers):
            for row in answer.servers:
                if row.region != "*":
                    continue
                new_cold = row.cold_starts - self.cold_seen.get((index, row.server), 0)
                self.cold_seen[(index, row.server)] = row.cold_starts
                if new_cold > 0 and row.ready_replicas == 0:
                    woken.add(row.server)
        rows: dict[tuple[str, str], Any] = {}
        for answer in answers:
            for row in answer.servers:
                key = (row.server, row.region)
                mine = rows.get(key)
                if mine is None:
                    mine = rows[key] = admin_pb2.ServerLoad()
                    mine.CopyFrom(row)
                    continue
                mine.ready_replicas = max(mine.ready_replicas, row.ready_replicas)
                mine.in_flight += row.in_flight
                mine.requests_per_second += row.requests_per_second
                mine.errors_per_second += row.errors_per_second
                mine.dropped_per_second += row.dropped_per_second
                mine.cold_starts += row.cold_starts
                if row.HasField("autoscaling") and not mine.HasField("autoscaling"):
                    mine.autoscaling.CopyFrom(row.autoscaling)
        keep: set[object] = set()
        for key, row in rows.items():
            if not row.HasField("autoscaling"):
                row.desired_replicas = -1
                continue
            keep.add(key)
            row.desired_replicas = self.recommender.update(
                key,
                in_flight=row.in_flight,
                ready=row.ready_replicas,
                spec=_rule(row.autoscaling),
                now=now,
                wake=row.region == "*" and row.server in woken,
            )
        self.recommender.forget(keep)
        return rows


def by_key(load: LoadSum) -> dict[tuple[str, str], Any]:
    return {(r.server, r.region): r for name in load.servers() for r in load.rows_of(name)}


@pytest.mark.parametrize("seed", range(30))
def test_the_supervisors_incremental_sum_equals_a_sum_of_whole_answers(seed: int) -> None:
    rng = random.Random(seed)
    servers = [random_server(rng, f"s{i}") for i in range(8)]
    current: list[RoutingTable] = [table(*servers)]
    clock = [1000.0]
    workers = [
        LoadService(table=lambda: current[0], clock=lambda: clock[0], interval=1.0)
        for _ in range(2)
    ]
    answers = [LoadAnswers(worker, add_rows) for worker in workers]
    follow = admin_pb2.GetLoadRequest(changes_only=True)
    whole = admin_pb2.GetLoadRequest()
    sent: list[int | None] = [None, None]
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
                catalog=worker.catalog(),
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
            answer, sent[index] = answers[index].since(follow, sent[index])
            if answer is not None:
                incremental.take(index, answer)
        incremental.sum(now=clock[0])
        expected = scratch.add([a.get(whole) for a in answers], now=clock[0])
        assert by_key(incremental) == expected, f"seed {seed}, step {step}"


def test_an_idle_group_sums_nothing_once_recommendations_settled() -> None:
    """Two workers' whole answers for 1,000 servers at their no-load recommendation: the first
    sum computes them, later sums (every half interval) none."""
    rows = [
        {"server": f"s{i}", "region": "*", "ready_replicas": 1, "target": 4.0} for i in range(1000)
    ]
    load = LoadSum(2)
    counting = load._recommender = CountingRecommender()
    for worker in (0, 1):
        load.take(worker, whole_answer(rows))
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


def whole_answer(rows: list[dict[str, Any]]) -> Any:
    response = admin_pb2.LoadResponse(report_interval_seconds=1.0)
    for row in rows:
        item = response.servers.add(**{k: v for k, v in row.items() if k != "target"})
        item.autoscaling.target_concurrency = row["target"]
        item.autoscaling.min_replicas = 1
        item.autoscaling.max_replicas = 20
    return response
