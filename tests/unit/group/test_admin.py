"""The ``serve --workers`` aggregation: metrics merged per family, load summed per row."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_plane.group.admin import AggregateService, LoadSum, merge_metrics
from control_plane.load.totals import (
    LoadSpec,
    LoadTotals,
    RegionTotals,
    ServerTotals,
    Wakes,
    millionths,
)
from control_plane.registry.spec import Autoscaling

WORKER_TEXT = """# HELP routeplane_xds_pushes_total xDS responses sent
# TYPE routeplane_xds_pushes_total counter
routeplane_xds_pushes_total{type="cds"} %d
# HELP routeplane_connected_proxies Connected xDS streams per node group
# TYPE routeplane_connected_proxies gauge
routeplane_connected_proxies{group="edge"} %d
"""


def test_merged_metrics_keep_one_help_and_type_per_family_and_label_every_sample() -> None:
    text = merge_metrics([("0", WORKER_TEXT % (3, 1)), ("1", WORKER_TEXT % (5, 2))]).decode()
    assert text.count("# TYPE routeplane_xds_pushes_total counter") == 1
    assert text.count("# HELP routeplane_connected_proxies ") == 1
    assert 'routeplane_xds_pushes_total{type="cds",worker="0"} 3.0' in text
    assert 'routeplane_xds_pushes_total{type="cds",worker="1"} 5.0' in text
    assert 'routeplane_connected_proxies{group="edge",worker="1"} 2.0' in text


def test_a_worker_that_did_not_answer_shows_as_down() -> None:
    async def scrape() -> bytes:
        service = AggregateService(workers=["127.0.0.1:1"])  # nothing listens on port 1
        try:
            return await service.metrics()
        finally:
            await service.close()

    assert 'routeplane_worker_up{worker="0"} 0.0' in asyncio.run(scrape()).decode()


class Worker:
    """A worker's side: its rows as totals and specs, its cold starts judged where they are
    counted (``Wakes``, as ``LoadService`` does)."""

    def __init__(self) -> None:
        self.wakes = Wakes()

    def answer(
        self, *rows: dict[str, Any], proxies: int = 1, now: float = 0.0
    ) -> tuple[dict[str, LoadSpec], LoadTotals]:
        specs: dict[str, LoadSpec] = {}
        servers: dict[str, list[RegionTotals]] = {}
        cold: dict[str, int] = {}
        for row in rows:
            name = row["server"]
            if "target" in row:
                rule = Autoscaling(
                    target_concurrency=row["target"], max_replicas=20, scale_down_window=0.0
                )
                specs[name] = LoadSpec(autoscaling=rule)
            specs.setdefault(name, LoadSpec())
            servers.setdefault(name, []).append(
                RegionTotals(
                    region=row["region"],
                    in_flight=millionths(row.get("in_flight", 0)),
                    ready=row.get("ready_replicas", 0),
                )
            )
            if row["region"] == "*":
                cold[name] = row.get("cold_starts", 0)
        totals = []
        for name, regions in sorted(servers.items()):
            ready = next(r.ready for r in regions if r.region == "*")
            _, woken_at = self.wakes.see(name, cold.get(name, 0), ready=ready, now=now)
            totals.append(
                ServerTotals(
                    server=name,
                    regions=tuple(sorted(regions, key=lambda r: r.region)),
                    cold_starts=cold.get(name, 0),
                    woken_at=woken_at,
                )
            )
        return specs, LoadTotals(servers=tuple(totals), proxies=proxies, interval=1.0, at=now)


def answer(*rows: dict[str, Any], proxies: int = 1) -> tuple[dict[str, LoadSpec], LoadTotals]:
    """A worker's first answer."""
    return Worker().answer(*rows, proxies=proxies)


def rows(total: Any) -> dict[tuple[str, str], Any]:
    return {(r.server, r.region): r for r in total.servers}


@pytest.mark.parametrize(
    ("target", "desired"),
    [pytest.param(1.0, 7, id="recomputed-from-the-sum"), pytest.param(0, -1, id="no-rule")],
)
def test_load_adds_up_over_workers_and_desired_is_recomputed(target: float, desired: int) -> None:
    rule = {"target": target} if target else {}
    first = answer(
        {"server": "echo", "region": "*", "ready_replicas": 1, "in_flight": 3, **rule},
        {"server": "echo", "region": "us-west", "ready_replicas": 1, "in_flight": 3},
    )
    second = answer(
        {"server": "echo", "region": "*", "ready_replicas": 1, "in_flight": 4, **rule},
        {"server": "api", "region": "*", "ready_replicas": 2, "in_flight": 1},
    )
    total = LoadSum().add([first, second], now=100.0)
    by_key = rows(total)
    assert total.reporting_proxies == 2
    assert by_key["echo", "*"].in_flight == 7
    assert by_key["echo", "*"].ready_replicas == 1  # the same registry: not added up
    assert by_key["echo", "*"].desired_replicas == desired
    assert by_key["echo", "us-west"].in_flight == 3
    assert by_key["api", "*"].in_flight == 1


def test_a_cold_start_on_any_worker_wakes_a_server_at_zero() -> None:
    load = LoadSum()
    first, second = Worker(), Worker()
    quiet = {"server": "echo", "region": "*", "ready_replicas": 0, "target": 1.0}
    assert (
        rows(load.add([first.answer(quiet), second.answer(quiet)], now=1.0))[
            "echo", "*"
        ].desired_replicas
        == 0
    )
    woken = {**quiet, "cold_starts": 1}
    total = load.add([first.answer(quiet, now=2.0), second.answer(woken, now=2.0)], now=2.0)
    assert rows(total)["echo", "*"].desired_replicas == 1


def test_a_cold_start_wakes_even_while_another_worker_still_counts_the_replica() -> None:
    """The replica just deregistered: the worker that counted the cold start has none, the
    other has not read the change yet. The demand must not be lost in that moment."""
    load = LoadSum()
    first, second = Worker(), Worker()
    warm = {"server": "gpu", "region": "*", "ready_replicas": 1, "target": 1.0}
    cold = {"server": "gpu", "region": "*", "ready_replicas": 0, "target": 1.0}
    load.add([first.answer(warm, now=1.0), second.answer(warm, now=1.0)], now=1.0)
    total = load.add(
        [first.answer({**cold, "cold_starts": 1}, now=2.0), second.answer(warm, now=2.0)],
        now=2.0,
    )
    assert rows(total)["gpu", "*"].desired_replicas >= 1
    # The same count seen again wakes nothing more; a worker with replicas is not woken.
    load = LoadSum()
    first, second = Worker(), Worker()
    load.add(
        [first.answer({**warm, "cold_starts": 3}, now=1.0), second.answer(warm, now=1.0)],
        now=1.0,
    )
    total = load.add(
        [first.answer({**warm, "cold_starts": 3}, now=2.0), second.answer(cold, now=2.0)],
        now=2.0,
    )
    assert rows(total)["gpu", "*"].desired_replicas == 0  # not woken: no load, no wake


def test_a_rule_only_a_later_worker_has_yet_still_recommends() -> None:
    """Worker 0's registry watch lags: it has the server but not yet its new rule. The group
    takes the rule (and the regions) from whichever worker has them, as a lone process would."""
    lagging = answer({"server": "echo", "region": "*", "ready_replicas": 1, "in_flight": 3})
    current = answer(
        {"server": "echo", "region": "*", "ready_replicas": 1, "in_flight": 4, "target": 1.0},
        {"server": "echo", "region": "us-west", "ready_replicas": 1, "in_flight": 4},
    )
    current_specs, current_totals = current
    current_specs["echo"] = LoadSpec(
        regions=("us-west",), autoscaling=current_specs["echo"].autoscaling
    )
    total = LoadSum().add([lagging, (current_specs, current_totals)], now=100.0)
    by_key = rows(total)
    assert by_key["echo", "*"].in_flight == 7
    assert by_key["echo", "*"].desired_replicas == 7
    assert ("echo", "us-west") in by_key
