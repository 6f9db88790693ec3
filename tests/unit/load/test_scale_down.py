"""Scale-down candidates: which ready replicas ``recommend`` names to remove first when desired
is below ready. Known answers for the order (idlest first: in flight, then requests per second,
then id), the count (ready - desired), draining replicas never, and region rows."""

from __future__ import annotations

import pytest

from control_plane.load.totals import (
    MILLION,
    History,
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ReplicaTotals,
    ServerTotals,
    recommend,
    scale_down_candidates,
)
from control_plane.registry.spec import Autoscaling


def load(replica: str, in_flight: float = 0, rps: float = 0) -> ReplicaTotals:
    return ReplicaTotals(
        replica=replica, in_flight=round(in_flight * MILLION), requests=round(rps * MILLION)
    )


def echo(ready: list[str], loads: list[ReplicaTotals], *, region: str = "us-west") -> ServerTotals:
    return ServerTotals(
        server="echo",
        regions=(
            RegionTotals(region="*", ready=len(ready)),
            RegionTotals(region=region, ready=len(ready)),
        ),
        replicas=tuple(sorted(loads, key=lambda r: r.replica)),
        ready_replicas=tuple(sorted((r, region) for r in ready)),
    )


@pytest.mark.parametrize(
    ("ready", "loads", "count", "expected"),
    [
        pytest.param(["a", "b"], [load("a", 3)], 1, ("b",), id="the-idle-one-not-the-busy"),
        pytest.param(["a", "b"], [load("b", 3)], 1, ("a",), id="the-idle-one-either-side"),
        pytest.param(["b", "a", "c"], [], 2, ("a", "b"), id="all-idle-by-id"),
        pytest.param(
            ["a", "b", "c"],
            [load("a", 2), load("b", 1), load("c", 5)],
            2,
            ("b", "a"),
            id="all-busy-least-in-flight-first",
        ),
        pytest.param(
            ["a", "b"],
            [load("a", 1, rps=50), load("b", 1, rps=5)],
            1,
            ("b",),
            id="same-in-flight-fewer-requests-first",
        ),
        pytest.param(
            ["a", "b", "c"],
            [load("a", 0, rps=9), load("c", 1)],
            2,
            ("b", "a"),
            id="no-requests-then-requests-without-in-flight-then-in-flight",
        ),
        pytest.param(["a", "b"], [load("a", 2)], 2, ("b", "a"), id="all-of-them"),
        pytest.param(["a"], [], 3, ("a",), id="never-more-than-ready"),
        pytest.param(["a", "b"], [], 0, (), id="none"),
        pytest.param(
            ["a"], [load("a", 0), load("gone", 0)], 1, ("a",), id="a-replica-not-ready-never"
        ),
    ],
)
def test_the_idlest_first(
    ready: list[str], loads: list[ReplicaTotals], count: int, expected: tuple[str, ...]
) -> None:
    assert scale_down_candidates(echo(ready, loads), count) == expected


def test_a_draining_replica_with_no_load_is_never_a_candidate() -> None:
    # "d" drains: it is not among the ready replicas, though it is idle, so the busy one goes.
    server = echo(["a"], [load("a", 4)])
    assert scale_down_candidates(server, 1) == ("a",)


SCALING = Autoscaling(target_concurrency=1, scale_down_window=0)


def rows(server: ServerTotals, spec: LoadSpec) -> dict[str, tuple[str, ...]]:
    answer = recommend(LoadTotals(servers=(server,)), {"echo": spec}, History(), now=0.0)
    return {row.region: row.scale_down_candidates for row in answer["echo"].rows}


def with_in_flight(server: ServerTotals, in_flight: float) -> ServerTotals:
    regions = tuple(
        RegionTotals(region=r.region, ready=r.ready, in_flight=round(in_flight * MILLION))
        for r in server.regions
    )
    return ServerTotals(
        server=server.server,
        regions=regions,
        replicas=server.replicas,
        ready_replicas=server.ready_replicas,
    )


def test_recommend_names_ready_minus_desired_candidates_in_the_total_row() -> None:
    # 3 ready, 1 in flight at target 1: desired 1, so 2 go, the idle ones.
    server = with_in_flight(echo(["a", "b", "c"], [load("b", 1)]), 1)
    assert rows(server, LoadSpec(autoscaling=SCALING)) == {"*": ("a", "c"), "us-west": ()}


def test_no_candidates_when_desired_is_not_below_ready_or_no_rule() -> None:
    server = with_in_flight(echo(["a", "b"], [load("a", 1), load("b", 1)]), 2)
    assert rows(server, LoadSpec(autoscaling=SCALING)) == {"*": (), "us-west": ()}
    idle = echo(["a", "b"], [])
    assert rows(idle, LoadSpec()) == {"*": (), "us-west": ()}


def test_region_rows_name_candidates_of_their_region_when_the_server_lists_regions() -> None:
    west = echo(["w1", "w2"], [load("w1", 1)], region="us-west")
    east = echo(["e1", "e2"], [load("e2", 1)], region="us-east")
    server = ServerTotals(
        server="echo",
        regions=(
            RegionTotals(region="*", ready=4, in_flight=2 * MILLION),
            RegionTotals(region="us-east", ready=2, in_flight=MILLION),
            RegionTotals(region="us-west", ready=2, in_flight=MILLION),
        ),
        replicas=tuple(sorted(west.replicas + east.replicas, key=lambda r: r.replica)),
        ready_replicas=tuple(sorted(west.ready_replicas + east.ready_replicas)),
    )
    spec = LoadSpec(regions=("us-east", "us-west"), autoscaling=SCALING)
    assert rows(server, spec) == {"*": ("e1", "w2"), "us-east": ("e1",), "us-west": ("w2",)}


def test_the_total_row_carries_the_replicas_with_load() -> None:
    server = with_in_flight(echo(["a", "b"], [load("b", 1, rps=2)]), 1)
    answer = recommend(LoadTotals(servers=(server,)), {}, History(), now=0.0)
    total, region = answer["echo"].rows
    assert total.replicas == (load("b", 1, rps=2),)
    assert region.replicas == ()
