"""The sample autoscaler's scale-down, step by step on a real SQLite registry and real (idle)
processes standing in for its replicas: which of its replicas it drains (the recommendation's
candidates first), that it stops one only when the rows show it with nothing in flight after
the drain had time to show, and that a registry it cannot reach stops nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.admin.pb import admin_pb2
from control_plane.dev.autoscaler import DRAIN_INTERVALS, Autoscaler
from control_plane.registry import Registry, open_registry
from control_plane.registry.errors import RegistryUnavailableError

PORTS = [8151, 8152, 8153]
INTERVAL = 0.5


def response(*, ready: int, desired: int, candidates: list[str], busy: dict[str, float]) -> Any:
    row = admin_pb2.ServerLoad(
        server="echo",
        region="*",
        ready_replicas=ready,
        desired_replicas=desired,
        scale_down_candidates=candidates,
    )
    for replica, in_flight in sorted(busy.items()):
        row.replicas.add(replica=replica, in_flight=in_flight)
    return admin_pb2.LoadResponse(servers=[row], report_interval_seconds=INTERVAL)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    store = open_registry(f"sqlite://{tmp_path / 'rp.db'}")
    store.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    yield store
    store.close()


@pytest.fixture
def scaler(
    tmp_path: Path, registry: Registry
) -> Iterator[tuple[Autoscaler, list[float], list[str]]]:
    """An autoscaler owning three idle processes registered as its replicas on PORTS."""
    clock = [100.0]
    said: list[str] = []
    auto = Autoscaler(
        server="echo",
        region="us-west",
        ports=PORTS,
        registry=f"sqlite://{tmp_path / 'rp.db'}",
        admin="",
        announce=said.append,
        clock=lambda: clock[0],
    )
    for port in PORTS:
        auto._own[port] = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
    try:
        yield auto, clock, said
    finally:
        auto.stop_all()


def ids(registry: Registry) -> dict[int, str]:
    return {r.port: r.id for r in registry.list_replicas("echo")}


def states(registry: Registry) -> dict[int, str]:
    return {r.port: r.state for r in registry.list_replicas("echo")}


def test_it_drains_the_named_candidate_and_stops_it_only_once_idle_after_the_drain(
    scaler: tuple[Autoscaler, list[float], list[str]], registry: Registry
) -> None:
    auto, clock, _ = scaler
    for port in PORTS:
        registry.register_replica(server="echo", address=f"127.0.0.1:{port}", region="us-west")
    by_port = ids(registry)
    middle = by_port[8152]
    # desired 2 of 3: the recommendation names the middle one (not the newest, not the first).
    busy = {by_port[8151]: 1.0, by_port[8153]: 2.0}
    auto.apply(response(ready=3, desired=2, candidates=[middle], busy=busy))
    assert states(registry) == {8151: "READY", 8152: "DRAINING", 8153: "READY"}
    assert set(auto._own) == set(PORTS)  # drained, not stopped
    # Rows that show it idle but may predate the drain: it stays.
    clock[0] += DRAIN_INTERVALS * INTERVAL / 2
    auto.apply(response(ready=2, desired=2, candidates=[], busy=busy))
    assert 8152 in auto._own
    # Long enough after the drain, but with a request still in flight on it: it stays.
    clock[0] += DRAIN_INTERVALS * INTERVAL
    auto.apply(response(ready=2, desired=2, candidates=[], busy={**busy, middle: 1.0}))
    assert 8152 in auto._own
    # Nothing in flight: stopped (SIGTERM), the others untouched.
    process = auto._own[8152]
    auto.apply(response(ready=2, desired=2, candidates=[], busy=busy))
    assert set(auto._own) == {8151, 8153}
    assert process.wait(timeout=10) != 0


def test_without_a_named_candidate_of_its_own_it_drains_its_idlest(
    scaler: tuple[Autoscaler, list[float], list[str]], registry: Registry
) -> None:
    auto, _, _ = scaler
    for port in PORTS:
        registry.register_replica(server="echo", address=f"127.0.0.1:{port}", region="us-west")
    by_port = ids(registry)
    busy = {by_port[8151]: 3.0, by_port[8152]: 1.0, by_port[8153]: 2.0}
    auto.apply(response(ready=3, desired=1, candidates=["someone-elses"], busy=busy))
    assert states(registry) == {8151: "READY", 8152: "DRAINING", 8153: "DRAINING"}


def test_a_draining_replica_is_made_ready_again_when_the_recommendation_rises(
    scaler: tuple[Autoscaler, list[float], list[str]], registry: Registry
) -> None:
    auto, _, said = scaler
    for port in PORTS:
        registry.register_replica(server="echo", address=f"127.0.0.1:{port}", region="us-west")
    first = ids(registry)[8151]
    auto.apply(response(ready=3, desired=2, candidates=[first], busy={}))
    assert states(registry)[8151] == "DRAINING"
    auto.apply(response(ready=2, desired=3, candidates=[], busy={}))
    assert states(registry)[8151] == "READY"
    assert set(auto._own) == set(PORTS)  # no fourth started
    assert any("ready again" in line for line in said)


class Unreachable:
    def list_replicas(self, server: str | None = None) -> list[Any]:
        raise RegistryUnavailableError("registry unreachable: connection refused")

    def close(self) -> None:
        pass


def test_a_registry_it_cannot_reach_stops_nothing(
    scaler: tuple[Autoscaler, list[float], list[str]],
) -> None:
    auto, _, said = scaler
    auto._store = Unreachable()  # type: ignore[assignment]
    auto.apply(response(ready=3, desired=0, candidates=[], busy={}))
    assert set(auto._own) == set(PORTS)
    assert all(process.poll() is None for process in auto._own.values())
    assert said == [
        "autoscaler: registry: registry unreachable: connection refused; trying again "
        "at the next update"
    ]


def _stand_in(monkeypatch: pytest.MonkeyPatch, started: list[list[str]]) -> None:
    """New replicas are idle processes (what ``_start`` asked for is recorded)."""
    real = subprocess.Popen

    def popen(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(argv)
        return real([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)


def test_a_port_is_used_again_only_once_its_stopped_process_has_exited(
    scaler: tuple[Autoscaler, list[float], list[str]],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stopped replica deregisters before it closes its listener: a replica started on its
    port in between could not bind (the mesh's gpu once stayed at zero so)."""
    auto, _, _ = scaler
    slow = subprocess.Popen(  # ignores SIGTERM: still exiting when the next start comes
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(15, signal.SIG_IGN); "
            "print(1, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert slow.stdout is not None
    assert slow.stdout.readline()  # SIGTERM is ignored from now on
    auto._own[8151].kill()
    auto._own[8151].wait(timeout=10)
    auto._own[8151] = slow
    auto._stop(8151, why="test")
    auto._stop(8152, why="test")
    auto._stopping[8152].wait(timeout=10)
    started: list[list[str]] = []
    _stand_in(monkeypatch, started)
    # Two wanted besides 8153: 8152's process is gone, 8151's is still exiting.
    auto.apply(response(ready=1, desired=3, candidates=[], busy={}))
    assert [argv[argv.index("--listen") + 1] for argv in started] == ["127.0.0.1:8152"]
    assert set(auto._own) == {8152, 8153}
    # Once it has exited, the next look (no update needed) starts the third on its port.
    slow.kill()
    slow.wait(timeout=10)
    auto.settle()
    auto._replace_exited()
    assert [argv[argv.index("--listen") + 1] for argv in started][-1] == "127.0.0.1:8151"
    assert set(auto._own) == set(PORTS)


def test_a_replica_that_exits_by_itself_is_replaced_at_the_next_look(
    scaler: tuple[Autoscaler, list[float], list[str]],
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auto, _, said = scaler
    auto.apply(response(ready=0, desired=3, candidates=[], busy={}))  # its 3, none ready yet
    started: list[list[str]] = []
    _stand_in(monkeypatch, started)
    auto._own[8152].kill()  # e.g. it could not bind its port
    auto._own[8152].wait(timeout=10)
    auto._replace_exited()
    assert [argv[argv.index("--listen") + 1] for argv in started] == ["127.0.0.1:8152"]
    assert set(auto._own) == set(PORTS)
    assert any("exited by itself" in line for line in said)
