"""The supervisor's sums with the fleet's totals (``control_plane/fleet/``): every worker
sends the same remote totals (the other control planes'), and the group counts one copy of
them beside its workers' own; partial only when no worker could read them."""

from __future__ import annotations

from control_plane.group.admin import LoadSum
from control_plane.load.totals import MILLION, LoadSpec, LoadTotals, RegionTotals, ServerTotals
from control_plane.registry.spec import Autoscaling

SPEC = {"echo": LoadSpec(autoscaling=Autoscaling(target_concurrency=1, max_replicas=50))}


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
