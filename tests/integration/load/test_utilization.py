"""Utilization in the load view, known answer (issue 27): replicas report ORCA metrics in the
``endpoint-load-metrics`` header, a real Envoy puts them in its load reports
(``lrs_report_endpoint_metrics``), and ``routeplane load --json`` shows each replica's, the
server's mean, and the desired count of ``target_utilization``.

The replicas are the sample HTTP echo (``EchoThread``) reporting a fixed ``LoadReport`` in the
TEXT header (part A's ``report=``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.orca import LoadReport
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy, metric_sum
from harness.waiting import wait_until
from tests.integration.load.test_load import INTERVAL, load_rows

pytestmark = pytest.mark.envoy
CLOSE = 0.005  # a mean of equal values, through Envoy's double sums and our millionths


@pytest.fixture(params=[[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def cp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    # With workers, the proxy's reports land on one worker and the supervisor's view (the one
    # ``routeplane load`` reads) has them only through the merge of the workers' totals.
    control_plane = ControlPlane.create(
        tmp_path, extra=["--load-report-interval", str(INTERVAL), *request.param]
    )
    control_plane.start()
    try:
        control_plane.wait_ready()
        yield control_plane
    finally:
        control_plane.stop()


def kv(value: float) -> LoadReport:
    # application_utilization is sent too: the rule's metric, kv_cache, is what counts.
    return LoadReport(application_utilization=0.1, named_metrics={"kv_cache": value})


@pytest.fixture
def replicas() -> Iterator[dict[str, EchoThread]]:
    started = {
        "kv-a": EchoThread(name="kv-a", report=kv(0.8)),
        "kv-b": EchoThread(name="kv-b", report=kv(0.4)),
        # Envoy passes a fraction above 1 through (probed): routeplane clips it to 1, counted.
        "hot": EchoThread(name="hot", report=LoadReport(application_utilization=5.0)),
        "plain": EchoThread(name="plain"),  # reports nothing: its utilization is absent, not 0
    }
    try:
        yield started
    finally:
        for replica in started.values():
            replica.stop()


def by_server(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["server"], r["region"]): r for r in rows}


def test_reported_utilization_shows_per_replica_and_server_and_drives_the_desired_count(
    cp: ControlPlane, tmp_path: Path, replicas: dict[str, EchoThread]
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="kv",
        hostnames=["kv.local"],
        protocol="http",
        spec={
            "autoscaling": {
                "target_utilization": 0.5,
                "metric": "named_metrics.kv_cache",
                "max_replicas": 10,
            }
        },
    )
    ids = {
        name: registry.register_replica(
            server="kv", address=replicas[name].address, region="us-west"
        ).id
        for name in ("kv-a", "kv-b")
    }
    for name in ("hot", "plain"):
        # Utilization balancing and no autoscaling block: their replicas' load is read (issue
        # 29: only where something reads it), and no recommendation.
        registry.put_server(
            name=name,
            hostnames=[f"{name}.local"],
            protocol="http",
            spec={"load_balancing": {"utilization": {}}},
        )
        registry.register_replica(server=name, address=replicas[name].address, region="us-west")
    registry.close()
    envoy = Envoy.create(tmp_path, node_id="edge-util", region="us-west", xds=[cp.xds])
    stop = threading.Event()

    def traffic() -> None:
        # Steady requests, so that every report interval carries metrics from both kv
        # replicas; paced (a wait on an event, not synchronisation).
        while not stop.is_set():
            for host in ("kv.local", "kv.local", "hot.local", "plain.local"):
                envoy.get(host=host)
            stop.wait(0.02)

    generator = threading.Thread(target=traffic)
    try:
        envoy.start()
        envoy.wait_live()
        for host in ("kv.local", "hot.local", "plain.local"):
            wait_until(lambda h=host: envoy.get(host=h)[0] == 200, what=f"routing {host}")
        generator.start()
        seen: list[Any] = []

        def known() -> bool:
            # Read as one answer: a report interval in which the traffic thread stalled (a busy
            # machine) has no metrics, and the rows then show none for that moment.
            rows = by_server(load_rows(cp.admin))
            kv, hot, plain = rows.get(("kv", "*")), rows.get(("hot", "*")), rows.get(("plain", "*"))
            seen[:] = [kv, hot, plain]
            if kv is None or hot is None or plain is None or kv["utilization"] is None:
                return False
            mine = {r["replica"]: r["utilization"] for r in kv["replicas"]}
            return (
                # Per replica; the server's mean over its reporting replicas, per region too;
                # the rule's known answer: ceil((0.8 + 0.4) / 0.5) = 3, from 2 ready replicas.
                abs((mine.get(ids["kv-a"]) or 0) - 0.8) <= CLOSE
                and abs((mine.get(ids["kv-b"]) or 0) - 0.4) <= CLOSE
                and abs(kv["utilization"] - 0.6) <= CLOSE
                and abs((rows[("kv", "us-west")]["utilization"] or 0) - 0.6) <= CLOSE
                and kv["ready_replicas"] == 2
                and kv["desired_replicas"] == 3
                # Clipped to a fraction; no autoscaling block, no recommendation.
                and hot["utilization"] == 1.0
                and hot["desired_replicas"] is None
                # A replica that sends no ORCA header has no utilization: absent, not 0.
                and plain["requests_per_second"] > 0
                and plain["utilization"] is None
                and all(r["utilization"] is None for r in plain["replicas"])
            )

        try:
            wait_until(known, timeout=30, interval=INTERVAL, what="utilization reported")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last rows (kv, hot, plain): {seen}") from None
        # The clipping is counted.
        assert (
            metric_sum(cp.admin, "routeplane_load_report_items_ignored_total", reason="utilization")
            > 0
        )
        # The gauge, per server and region; none for a server without reports.
        gauges: list[float] = []

        def gauge() -> bool:
            gauges.append(metric_sum(cp.admin, "routeplane_utilization", server="kv", region="*"))
            return abs(gauges[-1] - 0.6) <= CLOSE

        try:
            wait_until(gauge, timeout=30, interval=INTERVAL, what="the kv gauge at 0.6")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; read: {gauges[-5:]}") from None
        assert metric_sum(cp.admin, "routeplane_utilization", server="plain") == 0
    finally:
        stop.set()
        if generator.is_alive():
            generator.join(timeout=10)
        envoy.stop()
