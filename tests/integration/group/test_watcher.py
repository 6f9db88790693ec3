"""``serve --workers 2``: one registry watch for the host (``group/watcher.py``), real processes.

The watcher is killed by its pid in the middle of a churn of replica writes; the supervisor
starts another, and every worker's snapshot ends equal to the registry (no change lost), on
SQLite and on the Spanner emulator. The group's registry polls are the watcher's alone.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.admin.pb import admin_pb2, admin_pb2_grpc
from control_plane.registry import open_registry
from harness.processes import ControlPlane, http_get
from harness.waiting import free_port, wait_until
from tests.integration.group.test_workers import (
    Session,
    alive,
    children_running,
    session_on,
    worker_pids,
)

TIMEOUT = 30


def watcher_pid(cp: ControlPlane) -> int | None:
    pids = children_running(cp, b"control_plane.group.watcher")
    return pids[0] if len(pids) == 1 and alive(pids[0]) else None


def worker_admins(cp: ControlPlane) -> dict[str, str]:
    """Each worker's identifier -> its own admin address, from its start-up log line."""
    admins = {}
    for line in cp.log().splitlines():
        if '"control_plane_started"' in line:
            event = json.loads(line)
            admins[event["identifier"]] = event["admin"]
    return admins


def endpoints_of(admin: str, node_id: str) -> set[tuple[str, str]] | None:
    """The endpoints (address, health status) in a connected proxy's snapshot, on one
    worker."""
    with grpc.insecure_channel(admin) as channel:
        try:
            snapshot = admin_pb2_grpc.AdminStub(channel).GetSnapshot(
                admin_pb2.GetSnapshotRequest(node_id=node_id, type="eds", include_json=True),
                timeout=5,
            )
        except grpc.RpcError:
            return None
    found = set()
    for resource in snapshot.resources:
        for locality in json.loads(resource.json).get("endpoints", []):
            for lb in locality.get("lbEndpoints", []):
                socket = lb["endpoint"]["address"]["socketAddress"]
                address = f"{socket['address']}:{socket['portValue']}"
                found.add((address, lb.get("healthStatus", "")))
    return found


@pytest.fixture(params=["sqlite", "spanner"])
def group(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """``serve --workers 2`` on a registry with one server and one replica: SQLite, and the
    Spanner emulator (its fixture skips without the emulator, and fails under CI)."""
    if request.param == "spanner":
        url = str(request.getfixturevalue("spanner_url"))
    else:
        url = f"sqlite://{tmp_path / 'registry.db'}"
    registry = open_registry(url)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address=f"127.0.0.1:{free_port()}", region="us-west")
    registry.close()
    cp = ControlPlane.create(tmp_path, registry=url, extra=["--workers", "2"])
    cp.start()
    try:
        cp.wait_ready()
        yield cp
    finally:
        cp.stop()


def test_a_killed_watcher_is_replaced_and_every_worker_converges_to_the_registry(
    group: ControlPlane,
) -> None:
    first = session_on(group.xds, "edge-a")
    second = session_on(group.xds, "edge-b", not_on=first.identifier)
    sessions: dict[str, Session] = {first.identifier: first, second.identifier: second}
    admins = worker_admins(group)
    assert set(admins) == set(sessions)
    killed = watcher_pid(group)
    assert killed is not None

    registry = open_registry(group.registry)
    writes = 0
    stop = threading.Event()
    failure: list[BaseException] = []

    def churn() -> None:
        # Register a replica, drain every third, deregister every fifth: until told to stop.
        nonlocal writes
        live: list[str] = []
        try:
            while not stop.is_set():
                replica = registry.register_replica(
                    server="echo", address=f"127.0.0.2:{20000 + writes}", region="us-west"
                )
                live.append(replica.id)
                if writes % 3 == 0:
                    registry.set_replica_state(live[len(live) // 2], "DRAINING")
                if writes % 5 == 0:
                    registry.deregister_replica(live.pop(0))
                writes += 1
        except Exception as exc:  # noqa: BLE001 - reported by the test thread
            failure.append(exc)

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        wait_until(lambda: writes >= 20, timeout=TIMEOUT, what="20 writes before the kill")
        os.kill(killed, signal.SIGKILL)
        wait_until(
            lambda: watcher_pid(group) not in (None, killed),
            timeout=TIMEOUT,
            what="a new watcher",
        )
        at_restart = writes
        wait_until(
            lambda: writes >= at_restart + 20, timeout=TIMEOUT, what="20 writes after the kill"
        )
    finally:
        stop.set()
        writer.join(TIMEOUT)
    assert not failure, failure

    health = {"READY": "HEALTHY", "DRAINING": "DRAINING"}
    expected = {(r.address, health[r.state]) for r in registry.list_replicas("echo")}
    assert len(expected) > 10
    for identifier, session in sessions.items():
        admin, node_id = admins[identifier], session.node_id
        try:
            wait_until(
                lambda: endpoints_of(admin, node_id) == expected,  # noqa: B023 - waited on here
                timeout=TIMEOUT,
                what=f"worker {identifier} to reach the registry's {len(expected)} endpoints",
            )
        except AssertionError:
            got = endpoints_of(admin, node_id) or set()
            raise AssertionError(
                f"worker {identifier}: missing {sorted(expected - got)[:5]}, "
                f"extra {sorted(got - expected)[:5]}\n{group.log()[-3000:]}"
            ) from None
    registry.close()
    for session in sessions.values():
        session.close()
    log = group.log()
    assert "watcher_exited" in log
    assert "watcher_restarted" in log
    assert len(worker_pids(group)) == 2  # the workers kept serving
    assert group.alive()


def test_the_groups_registry_polls_are_the_watchers_alone(group: ControlPlane) -> None:
    def polls() -> dict[str, float]:
        """One scrape: each process's count of its looks at the store, by worker label."""
        counts: dict[str, float] = {}
        text = http_get(f"http://{group.admin}/metrics")[1]
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "routeplane_registry_watch_polls_total":
                    worker = sample.labels.get("worker", "")
                    counts[worker] = counts.get(worker, 0.0) + sample.value
        return counts

    def watched() -> dict[str, float] | None:
        found = polls()
        return found if found.get("watcher", 0) > 0 else None

    counts = wait_until(watched, timeout=TIMEOUT, what="the watcher's polls")
    assert counts == {"0": 0.0, "1": 0.0, "watcher": counts["watcher"]}
