"""Scale-down candidates through real Envoys and a real ``serve`` (a group of workers, so the
per-replica load crosses the workers' wire and the supervisor's merge): two replicas, requests
held open on one of them, desired below ready: the candidate is the idle one. And the sample
autoscaler scales down under steady traffic and no request fails: it drains its candidates
before it stops them (the server's ``retries`` is 0, so Envoy retries hide no failure).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, Process
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy
INTERVAL = 0.5


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    control_plane = ControlPlane.create(
        tmp_path, extra=["--workers", "2", "--load-report-interval", str(INTERVAL)]
    )
    control_plane.start()
    try:
        control_plane.wait_ready()
        yield control_plane
    finally:
        control_plane.stop()


def load(admin: str, *, as_json: bool = True) -> str:
    done = subprocess.run(
        [ROUTEPLANE, "load", *(["--json"] if as_json else []), "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def total_row(admin: str, server: str) -> dict[str, Any]:
    rows = json.loads(load(admin))
    [found] = [r for r in rows if r["server"] == server and r["region"] == "*"]
    assert isinstance(found, dict)
    return found


def test_the_candidate_is_the_idle_replica_not_the_one_with_requests_in_flight(
    cp: ControlPlane, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={
            "retries": 0,
            "autoscaling": {
                "target_concurrency": 4,
                "min_replicas": 1,
                "max_replicas": 10,
                "scale_down_window": "0s",
            },
        },
    )
    replicas = [
        registry.register_replica(server="echo", address=echo_factory(n).address, region="us-west")
        for n in ("a", "b")
    ]
    # The busy one has the lower id: ordered by id alone, it would be named first.
    busy, idle = sorted(r.id for r in replicas)
    registry.set_replica_state(idle, "DRAINING")  # while the requests start: all go to busy
    envoy = Envoy.create(tmp_path, node_id="edge-0", region="us-west", xds=[cp.xds])
    threads = [
        threading.Thread(
            target=envoy.get, kwargs={"path": "/slow?ms=8000", "host": "echo.local", "timeout": 30}
        )
        for _ in range(3)
    ]
    try:
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what="routing")
        for thread in threads:
            thread.start()
        wait_until(
            lambda: total_row(cp.admin, "echo")["in_flight"] == 3, what="3 requests in flight"
        )
        registry.set_replica_state(idle, "READY")

        def settled() -> dict[str, Any] | None:
            row = total_row(cp.admin, "echo")
            return row if row["ready_replicas"] == 2 and row["scale_down_candidates"] else None

        row = wait_until(settled, timeout=10, what="2 ready, desired 1, a candidate")
        assert row["in_flight"] == 3
        assert row["desired_replicas"] == 1  # ceil(3 / 4)
        assert row["scale_down_candidates"] == [idle]
        assert [r["replica"] for r in row["replicas"]] == [busy]
        assert row["replicas"][0]["in_flight"] == 3
        assert f"scale down echo (*) first: {idle}" in load(cp.admin, as_json=False)
    finally:
        envoy.stop()
        for thread in threads:
            thread.join(timeout=30)
        registry.close()


class Traffic:
    """Clients through one Envoy, each sending one slow request after another until stopped;
    every answer's status counted (0: no HTTP answer at all)."""

    def __init__(self, envoy: Envoy, *, ms: int) -> None:
        self._envoy, self._ms = envoy, ms
        self.statuses: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._clients: list[tuple[threading.Thread, threading.Event]] = []

    def add(self, count: int) -> None:
        for _ in range(count):
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(stop,))
            thread.start()
            self._clients.append((thread, stop))

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            status, _ = self._envoy.get(f"/slow?ms={self._ms}", host="echo.local", timeout=30)
            with self._lock:
                self.statuses[status] += 1

    def remove(self, count: int) -> None:
        for _ in range(count):
            thread, stop = self._clients.pop()
            stop.set()
            thread.join(timeout=30)

    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())


def test_the_autoscaler_drains_before_it_stops_and_scaling_down_fails_no_request(
    cp: ControlPlane, tmp_path: Path
) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={
            "retries": 0,  # a request that failed is counted failed, not tried again
            "autoscaling": {
                "target_concurrency": 1,
                "min_replicas": 1,
                "max_replicas": 3,
                "scale_up_window": "0s",
                "scale_down_window": "1s",
            },
        },
    )
    ports = ",".join(str(free_port()) for _ in range(3))
    scaler = Process(
        argv=[
            ROUTEPLANE,
            "samples",
            "autoscaler",
            "--server",
            "echo",
            "--region",
            "us-west",
            "--ports",
            ports,
            "--admin",
            cp.admin,
            "--registry",
            cp.registry,
        ],
        log_path=tmp_path / "autoscaler.log",
    )
    envoy = Envoy.create(tmp_path, node_id="edge-0", region="us-west", xds=[cp.xds])
    traffic = Traffic(envoy, ms=300)

    def ready() -> int:
        return sum(r.state == "READY" for r in registry.list_replicas("echo"))

    try:
        scaler.start()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local")[0] == 200, timeout=20, what="1 replica")
        traffic.add(5)  # ~5 in flight at target 1: the most, 3
        wait_until(lambda: ready() == 3, timeout=20, what="3 replicas for the load")
        traffic.remove(4)  # ~1 in flight: back to 1, the other 2 drained and stopped
        wait_until(
            lambda: scaler.log().count("drained") == 2 and len(registry.list_replicas("echo")) == 1,
            timeout=40,
            interval=0.1,
            what="2 replicas drained and stopped",
        )
        after = traffic.total()
        wait_until(lambda: traffic.total() >= after + 5, timeout=20, what="traffic after")
    finally:
        traffic.remove(len(traffic._clients))
        scaler.stop()
        envoy.stop()
        registry.close()
    log = scaler.log()
    # Two replicas stopped, each only once drained. (A recommendation that rises for a moment
    # may make a draining replica ready again, and a third may be drained in its place.)
    stops = [line for line in log.splitlines() if line.startswith("autoscaler: stopped ")]
    assert len(stops) == 2, log
    assert all(", drained (" in line for line in stops), log
    assert log.count("draining ") >= 2, log
    assert "timed out" not in log, log
    assert traffic.statuses[200] >= 20, traffic.statuses
    assert set(traffic.statuses) == {200}, traffic.statuses
