"""Fleet-wide load through the registry: real ``serve`` replicas sharing one SQLite registry,
real Envoys each bootstrapped to one replica, requests held open through them by the upstream
(``/slow?ms=``). ``serve`` runs a worker per core unless told otherwise, so a replica here is a
group of workers (two on a two-core machine) unless it says ``--workers 1``.

Every replica's ``routeplane load`` shows the fleet's sums; a killed replica's share leaves
them; hostile records are ignored and reported; a ``--workers 2`` replica's workers are counted
once each. A KEDA scaler on one replica goes active for a cold start met through another's
Envoy.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.fleet.records import MAX_RECORD_BYTES, encode
from control_plane.load.totals import MILLION, LoadTotals, RegionTotals, ServerTotals
from control_plane.registry import open_registry
from harness.keda import Keda, routed, wait_for_reports_after_now
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, metric_sum
from harness.spanner_emulator import Emulator, emulator_binary
from harness.waiting import free_port, wait_until

pytestmark = pytest.mark.envoy
INTERVAL = 0.5
HOLD_MS = 60_000  # the upstream holds each request this long: past the test's end


def routeplane_load(admin: str, *, as_json: bool) -> str:
    done = subprocess.run(
        [ROUTEPLANE, "load", *(["--json"] if as_json else []), "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def total(admin: str, server: str = "echo") -> dict[str, Any]:
    for item in json.loads(routeplane_load(admin, as_json=True)):
        if item["server"] == server and item["region"] == "*":
            return dict(item)
    raise AssertionError(f"no load row for {server}")


def hold(envoy: Envoy, count: int) -> list[threading.Thread]:
    def held() -> None:
        # Held past the test's end: the Envoy's stop ends it, with an error that is no news.
        with contextlib.suppress(OSError):
            envoy.get(path=f"/slow?ms={HOLD_MS}", host="echo.local", timeout=90)

    threads = [threading.Thread(target=held, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def serve(tmp_path: Path, registry: str, *extra: str) -> ControlPlane:
    cp = ControlPlane.create(
        tmp_path, registry=registry, extra=["--load-report-interval", str(INTERVAL), *extra]
    )
    cp.start()
    return cp


def with_echo(url: str, echo_factory: Callable[[str], EchoThread]) -> str:
    """``url``'s registry with the server ``echo`` (target 1) and one ready replica."""
    registry = open_registry(url)
    registry.put_server(
        name="echo",
        hostnames=["echo.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 1, "max_replicas": 20}},
    )
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    registry.close()
    return url


@pytest.fixture
def registry_url(tmp_path: Path, echo_factory: Callable[[str], EchoThread]) -> str:
    """A SQLite registry."""
    return with_echo(f"sqlite://{tmp_path / 'registry.db'}", echo_factory)


@pytest.fixture(params=["sqlite", "spanner"])
def any_registry_url(
    request: pytest.FixtureRequest, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> str:
    """Each store: a SQLite file, a database on the Spanner emulator."""
    if request.param == "sqlite":
        return with_echo(f"sqlite://{tmp_path / 'registry.db'}", echo_factory)
    return with_echo(request.getfixturevalue("spanner_url"), echo_factory)


@pytest.fixture
def started() -> Iterator[list[Any]]:
    """Processes a test starts, stopped (by their handles: their PIDs) at its end."""
    processes: list[Any] = []
    yield processes
    for process in reversed(processes):
        process.stop()


def envoy_to(tmp_path: Path, cp: ControlPlane, node_id: str, started: list[Any]) -> Envoy:
    envoy = Envoy.create(tmp_path, node_id=node_id, region="us-west", xds=[cp.xds])
    started.append(envoy)
    envoy.start()
    envoy.wait_live()
    wait_until(lambda: envoy.get(host="echo.local")[0] == 200, what=f"routing via {node_id}")
    return envoy


def in_flight_is(admin: str, count: float) -> dict[str, Any] | None:
    row = total(admin)
    return row if row["in_flight"] == count else None


def test_two_replicas_each_show_the_fleets_sum_and_a_killed_ones_share_leaves(
    tmp_path: Path, any_registry_url: str, started: list[Any]
) -> None:
    registry_url = any_registry_url
    a = serve(tmp_path, registry_url)
    started.append(a)
    b = serve(tmp_path, registry_url)
    started.append(b)
    a.wait_ready()
    b.wait_ready()
    envoy_a = envoy_to(tmp_path, a, "edge-a", started)
    envoy_b = envoy_to(tmp_path, b, "edge-b", started)
    for cp in (a, b):
        wait_until(lambda cp=cp: in_flight_is(cp.admin, 0), what="quiet")
    hold(envoy_a, 3)
    hold(envoy_b, 4)
    outputs: dict[str, str] = {}
    try:
        rows = [
            wait_until(lambda cp=cp: in_flight_is(cp.admin, 7), timeout=20, what="7 in flight")
            for cp in (a, b)
        ]
        for name, cp in (("A", a), ("B", b)):
            outputs[name] = routeplane_load(cp.admin, as_json=False) + routeplane_load(
                cp.admin, as_json=True
            )
        # target 1: desired 7 on both, from the same sums.
        assert [row["desired_replicas"] for row in rows] == [7, 7]
        assert [row["partial"] for row in rows] == [False, False]
        # Publishing moves no registry revision: no routing rebuild while load is written.
        built = metric_sum(a.admin, "routeplane_snapshot_build_seconds_count")
        applied = metric_sum(a.admin, "routeplane_registry_watch_lag_seconds_count")
        writes = metric_sum(a.admin, "routeplane_fleet_load_writes_total")
        wait_until(
            lambda: metric_sum(a.admin, "routeplane_fleet_load_writes_total") >= writes + 4,
            what="four more load writes by A",
        )
        assert metric_sum(a.admin, "routeplane_snapshot_build_seconds_count") == built
        assert metric_sum(a.admin, "routeplane_registry_watch_lag_seconds_count") == applied
        # B dies without a word (SIGKILL): its record stops counting after 3 intervals.
        assert b.process is not None
        b.process.kill()
        b.process.wait()
        wait_until(lambda: in_flight_is(a.admin, 3), timeout=10, what="B's share gone")
        outputs["A after B was killed"] = routeplane_load(a.admin, as_json=False)
    finally:
        for name, text in outputs.items():
            print(f"--- routeplane load on replica {name}\n{text}")


def write_record(url: str, publisher: str, **columns: object) -> None:
    """A record written by another writer of the registry, straight into its table."""
    row = {
        "publisher": publisher,
        "grp": publisher,
        "written_at": time.time(),
        "interval": 60.0,
        "totals": b"",
        **columns,
    }
    with sqlite3.connect(url.removeprefix("sqlite://")) as db:
        db.execute(
            "INSERT OR REPLACE INTO load_publishers VALUES (?, ?, ?, ?, ?)",
            (row["publisher"], row["grp"], row["written_at"], row["interval"], row["totals"]),
        )


def problems(admin: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [ROUTEPLANE, "problems", "--json", "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_hostile_records_are_ignored_and_reported_and_never_poison_the_sums(
    tmp_path: Path, registry_url: str, started: list[Any]
) -> None:
    a = serve(tmp_path, registry_url, "--workers", "2")  # each worker counts: see below
    started.append(a)
    a.wait_ready()
    five = LoadTotals(
        servers=(
            ServerTotals(server="echo", regions=(RegionTotals(region="*", in_flight=5 * MILLION),)),
        ),
        proxies=1,
        interval=60.0,
    )
    write_record(registry_url, "honest", totals=encode(five, wall_offset=0.0))
    write_record(registry_url, "malformed", totals=b"\xff\x00not a message")
    write_record(registry_url, "text", totals="a text column")
    write_record(
        registry_url, "future", written_at=time.time() + 3600, totals=encode(five, wall_offset=0)
    )
    write_record(registry_url, "huge", totals=b"\x00" * (MAX_RECORD_BYTES + 1))
    write_record(registry_url, "no-interval", interval="soon", totals=encode(five, wall_offset=0))
    row = wait_until(lambda: in_flight_is(a.admin, 5), what="the honest record's 5 in flight")
    assert row["partial"] is False

    def reported() -> dict[str, str] | None:
        found = {p["name"]: p["field"] for p in problems(a.admin) if p["kind"] == "load publisher"}
        return found if len(found) == 5 else None

    assert wait_until(reported, what="five records reported") == {
        "malformed": "totals",
        "text": "totals",
        "future": "written_at",
        "huge": "totals",
        "no-interval": "interval",
    }
    # Counted once per record by each worker: worker 0's.
    ignored = {
        reason: metric_sum(
            a.admin, "routeplane_fleet_load_records_ignored_total", reason=reason, worker="0"
        )
        for reason in ("malformed", "future", "huge")
    }
    assert ignored == {"malformed": 3, "future": 1, "huge": 1}
    # The read goes on: a change to the honest record shows.
    write_record(registry_url, "honest", totals=encode(LoadTotals(), wall_offset=0.0))
    wait_until(lambda: in_flight_is(a.admin, 0), what="the honest record's load gone")
    assert a.alive()


def test_a_workers_replica_and_a_lone_one_count_every_worker_once(
    tmp_path: Path, registry_url: str, started: list[Any]
) -> None:
    group = serve(tmp_path, registry_url, "--workers", "2")
    started.append(group)
    lone = serve(tmp_path, registry_url, "--workers", "1")
    started.append(lone)
    group.wait_ready()
    lone.wait_ready()
    to_group = [envoy_to(tmp_path, group, f"edge-g{i}", started) for i in range(2)]
    to_lone = envoy_to(tmp_path, lone, "edge-l", started)
    for cp in (group, lone):
        wait_until(lambda cp=cp: in_flight_is(cp.admin, 0), what="quiet")
    hold(to_group[0], 1)
    hold(to_group[1], 2)
    hold(to_lone, 4)
    rows = [
        wait_until(lambda cp=cp: in_flight_is(cp.admin, 7), timeout=20, what="7 in flight")
        for cp in (group, lone)
    ]
    assert [row["desired_replicas"] for row in rows] == [7, 7]
    workers = subprocess.run(
        [ROUTEPLANE, "proxies", "--json", "--admin", group.admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    print("group's proxies by worker:", {p["node_id"]: p["worker"] for p in json.loads(workers)})
    # Steady: several more writes by every process, and still 7 on both (no double count).
    writes = metric_sum(lone.admin, "routeplane_fleet_load_writes_total")
    wait_until(
        lambda: metric_sum(lone.admin, "routeplane_fleet_load_writes_total") >= writes + 4,
        what="four more load writes",
    )
    assert [total(cp.admin)["in_flight"] for cp in (group, lone)] == [7, 7]


def test_a_replica_that_cannot_read_the_registry_says_partial_and_shows_its_own_load(
    tmp_path: Path,
    echo_factory: Callable[[str], EchoThread],
    monkeypatch: pytest.MonkeyPatch,
    started: list[Any],
) -> None:
    if emulator_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("the Spanner emulator is not installed: CI requires the Spanner leg")
        pytest.skip("the Spanner emulator is not installed")
    # An emulator of this test's own, so that stopping it cuts only this replica's registry.
    emulator = Emulator.create(tmp_path)
    emulator.start()
    started.append(emulator)
    monkeypatch.setenv("SPANNER_EMULATOR_HOST", emulator.host)
    url = "spanner://projects/test/instances/rp/databases/partial"
    registry = open_registry(url)
    registry.init()
    registry.close()
    with_echo(url, echo_factory)
    a = serve(tmp_path, url, "--workers", "1")
    started.append(a)
    a.wait_ready()
    envoy = envoy_to(tmp_path, a, "edge-a", started)
    hold(envoy, 2)
    row = wait_until(lambda: in_flight_is(a.admin, 2), timeout=20, what="2 in flight")
    assert row["partial"] is False
    assert metric_sum(a.admin, "routeplane_fleet_load_partial") == 0
    emulator.stop()
    cut = wait_until(
        lambda: (r := total(a.admin))["partial"] and r, timeout=30, what="partial after the cut"
    )
    assert cut["in_flight"] == 2  # its own proxies' load, still shown
    assert metric_sum(a.admin, "routeplane_fleet_load_partial") == 1
    assert "partial: the fleet's load cannot be read" in routeplane_load(a.admin, as_json=False)


def test_a_cold_start_met_through_one_replica_wakes_the_other(
    tmp_path: Path, started: list[Any]
) -> None:
    url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(url)
    registry.put_server(
        name="api",
        hostnames=["api.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 1, "min_replicas": 0, "max_replicas": 5}},
    )
    registry.close()
    a = serve(tmp_path, url)
    started.append(a)
    b = serve(tmp_path, url)
    started.append(b)
    a.wait_ready()
    b.wait_ready()
    envoy = Envoy.create(tmp_path, node_id="edge-b", region="us-west", xds=[b.xds])
    started.append(envoy)
    envoy.start()
    envoy.wait_live()
    wait_until(lambda: envoy.get(host="api.local")[0] == 503, what="api's route (no replica)")
    # Envoy counts a cluster's drops from a report period's start: two reports from now.
    reports = metric_sum(b.admin, "routeplane_load_reports_total")
    wait_until(
        lambda: metric_sum(b.admin, "routeplane_load_reports_total") >= reports + 2,
        what="two load reports on B",
    )
    for _ in range(3):
        envoy.get(host="api.local")

    def woken() -> dict[str, Any] | None:
        row = total(a.admin, "api")
        return row if row["cold_starts"] >= 1 and row["desired_replicas"] >= 1 else None

    # A's own proxies met nothing: the cold starts and the wake are B's, through the registry.
    row = wait_until(woken, timeout=20, what="B's cold start on A")
    assert row["ready_replicas"] == 0
    assert metric_sum(a.admin, "routeplane_load_reporters") == 0


def test_keda_on_one_replica_goes_active_for_a_cold_start_met_through_the_other(
    tmp_path: Path, started: list[Any]
) -> None:
    url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(url)
    registry.put_server(
        name="api",
        hostnames=["api.local"],
        protocol="http",
        spec={"autoscaling": {"target_concurrency": 1, "min_replicas": 0, "max_replicas": 5}},
    )
    registry.close()
    keda_address = f"127.0.0.1:{free_port()}"
    a = serve(tmp_path, url, "--keda-listen", keda_address)
    started.append(a)
    b = serve(tmp_path, url)
    started.append(b)
    a.wait_ready()
    b.wait_ready()
    envoy = Envoy.create(tmp_path, node_id="edge-b", region="us-west", xds=[b.xds])
    started.append(envoy)
    envoy.start()
    envoy.wait_live()
    keda = Keda(keda_address)
    follower = keda.follow("api")
    try:
        assert follower.next()[1] is False  # nothing met api yet
        wait_until(lambda: routed(envoy, "api.local"), what="api routed through B's Envoy")
        wait_for_reports_after_now(b.admin)  # B's Envoy's reports now cover api's cluster
        assert not follower.answers[1:], "active before any request met the server"
        status, _ = envoy.get(host="api.local")
        assert status == 503
        # A's own proxies met nothing (it has none): the true is B's cold start, read by A
        # from the registry.
        assert follower.next(timeout=20)[1] is True
        assert keda.is_active("api") is True
        assert metric_sum(a.admin, "routeplane_load_reporters") == 0
    finally:
        follower.close()
        keda.close()
