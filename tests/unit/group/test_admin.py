"""The ``serve --workers`` aggregation: metrics merged per family, load summed per row."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control_plane.admin.pb import admin_pb2
from control_plane.group.admin import AggregateService, LoadSum, merge_metrics

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


def answer(*rows: dict[str, Any], proxies: int = 1) -> Any:
    response = admin_pb2.LoadResponse(reporting_proxies=proxies, report_interval_seconds=1.0)
    for row in rows:
        item = response.servers.add(**{k: v for k, v in row.items() if k != "target"})
        if "target" in row:
            item.autoscaling.target_concurrency = row["target"]
            item.autoscaling.max_replicas = 20
    return response


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
    quiet = {"server": "echo", "region": "*", "ready_replicas": 0, "target": 1.0}
    assert (
        rows(load.add([answer(quiet), answer(quiet)], now=1.0))["echo", "*"].desired_replicas == 0
    )
    woken = {**quiet, "cold_starts": 1}
    total = load.add([answer(quiet), answer(woken)], now=2.0)
    assert rows(total)["echo", "*"].desired_replicas == 1


def test_a_cold_start_wakes_even_while_another_worker_still_counts_the_replica() -> None:
    """The replica just deregistered: the worker that counted the cold start has none, the
    other has not read the change yet. The demand must not be lost in that moment."""
    load = LoadSum()
    warm = {"server": "gpu", "region": "*", "ready_replicas": 1, "target": 1.0}
    cold = {"server": "gpu", "region": "*", "ready_replicas": 0, "target": 1.0}
    load.add([answer(warm), answer(warm)], now=1.0)
    total = load.add([answer({**cold, "cold_starts": 1}), answer(warm)], now=2.0)
    assert rows(total)["gpu", "*"].desired_replicas >= 1
    # The same count seen again wakes nothing more; a worker with replicas is not woken.
    load = LoadSum()
    load.add([answer({**warm, "cold_starts": 3}), answer(warm)], now=1.0)
    total = load.add([answer({**warm, "cold_starts": 3}), answer(cold)], now=2.0)
    assert rows(total)["gpu", "*"].desired_replicas == 0  # not woken: no load, no wake
