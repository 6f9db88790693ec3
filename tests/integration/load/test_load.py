"""Load reports, known load -> known answer: real Envoys report over LRS, routeplane sums them.

N requests held open by the upstream (``/slow?ms=``) through two Envoys must show as N in
flight; a known request rate as that rate; the desired replicas follow the rule; a proxy that
dies stops counting when its stream ends, not a silent proxy's three intervals later.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy
INTERVAL = 0.5


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    control_plane = ControlPlane.create(tmp_path, extra=["--load-report-interval", str(INTERVAL)])
    control_plane.start()
    try:
        control_plane.wait_ready()
        yield control_plane
    finally:
        control_plane.stop()


def load_rows(admin: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


def row(admin: str, server: str, region: str = "*") -> dict[str, Any]:
    for item in load_rows(admin):
        if item["server"] == server and item["region"] == region:
            return item
    raise AssertionError(f"no load row for {server} {region}")


def hold(envoy: Envoy, count: int, ms: int) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=envoy.get, kwargs={"path": f"/slow?ms={ms}", "host": "echo.local", "timeout": 30}
        )
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_requests_in_flight_through_two_envoys_are_summed_and_a_dead_proxy_stops_counting(
    cp: ControlPlane, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 2, "max_replicas": 10}},
    )
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    registry.close()
    envoys = [
        Envoy.create(tmp_path, node_id=f"edge-{i}", region="us-west", xds=[cp.xds])
        for i in range(2)
    ]
    threads: list[threading.Thread] = []
    try:
        for envoy in envoys:
            envoy.start()
        for envoy in envoys:
            envoy.wait_live()
        for envoy in envoys:
            wait_until(lambda e=envoy: e.get(host="echo.local")[0] == 200, what="routing")
        wait_until(lambda: row(cp.admin, "echo")["in_flight"] == 0, what="quiet")
        assert row(cp.admin, "echo")["desired_replicas"] == 1  # starts from READY replicas
        threads += hold(envoys[0], 4, 8000) + hold(envoys[1], 3, 8000)

        def in_flight(count: int) -> dict[str, Any] | None:
            current = row(cp.admin, "echo")
            return current if current["in_flight"] == count else None

        total = wait_until(lambda: in_flight(7), timeout=10, what="7 requests in flight")
        assert total["ready_replicas"] == 1
        assert total["desired_replicas"] == 4  # ceil(7 / 2), scale-up window 0s
        assert row(cp.admin, "echo", "us-west")["in_flight"] == 7
        # The second proxy dies: its 3 requests stop counting.
        envoys[1].stop()
        wait_until(
            lambda: row(cp.admin, "echo")["in_flight"] == 4,
            timeout=10,
            interval=0.05,
            what="the dead proxy's requests gone",
        )
        # Judged by serve's own log, not a clock here: they stopped counting because its stream
        # ended (taken out at once, shown at the next tick, every half interval), not by the
        # expiry of a proxy silent for three intervals.
        events = [json.loads(line) for line in cp.log().splitlines() if line.startswith("{")]
        ends = {e["event"] for e in events if e.get("node_id") == "edge-1"}
        assert "load_reporter_disconnected" in ends
        assert "load_reporter_expired" not in ends
    finally:
        for envoy in envoys:
            envoy.stop()
        for thread in threads:
            thread.join(timeout=30)


def test_a_known_request_rate_is_reported_within_ten_percent(
    cp: ControlPlane, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    registry.close()
    envoy = Envoy.create(tmp_path, node_id="edge-rate", region="us-west", xds=[cp.xds])
    stop = threading.Event()
    rate = 15.0
    sent: list[float] = []

    def load() -> None:
        started = time.monotonic()
        while not stop.is_set():
            due = started + len(sent) / rate
            pause = due - time.monotonic()
            if pause > 0:
                stop.wait(pause)  # pacing the load, not synchronisation
            envoy.get(host="echo.local")
            sent.append(time.monotonic())

    generator = threading.Thread(target=load)
    try:
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing")
        generator.start()
        samples: list[float] = []

        def steady() -> bool:
            samples.append(row(cp.admin, "echo")["requests_per_second"])
            # The known answer: what the generator really sent over the last 2 s.
            now = time.monotonic()
            achieved = sum(1 for at in sent if now - at <= 2.0) / 2.0
            recent = samples[-4:]
            return (
                len(recent) == 4
                and abs(achieved - rate) <= 0.1 * rate
                and all(abs(r - achieved) <= 0.1 * achieved for r in recent)
            )

        try:
            wait_until(steady, timeout=20, interval=INTERVAL, what=f"{rate} requests/s reported")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; reported: {samples}") from None
        assert row(cp.admin, "echo")["desired_replicas"] is None  # no autoscaling block
    finally:
        stop.set()
        if generator.is_alive():
            generator.join(timeout=10)
        envoy.stop()
