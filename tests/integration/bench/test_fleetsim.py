"""The C simulated fleet (``bench/fleetsim.c``) against a real ``routeplane serve``: built with
the machine's C compiler, its streams complete, ACK a change, and survive refusals, so the
workers bench cannot rot silently."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import fleetsim
from bench.propagation import commit_time
from control_plane.registry import Registry, open_registry
from harness.processes import ROUTEPLANE, ControlPlane
from harness.waiting import wait_until

SERVERS = ("s0", "s1", "s2")
STREAMS = 20


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if fleetsim.compiler() is None:
        reason = "no C compiler (cc, gcc or clang) on this machine: the bench falls back"
        if os.environ.get("CI"):
            pytest.fail(f"CI machines have a C compiler: {reason}")
        pytest.skip(reason)
    built = fleetsim.build(tmp_path_factory.mktemp("fleetsim-cache"))
    assert built is not None
    return built


def serve(tmp_path: Path, *extra: str) -> Iterator[tuple[ControlPlane, Registry]]:
    cp = ControlPlane.create(tmp_path, extra=list(extra))
    registry = open_registry(cp.registry)
    registry.init()
    for i, name in enumerate(SERVERS):
        registry.create_server(name=name, hostnames=[f"{name}.local"], protocol="http")
        registry.register_replica(server=name, address=f"127.0.0.2:{20000 + i}", region="us-west")
    cp.start()
    try:
        cp.wait_ready()
        yield cp, registry
    finally:
        registry.close()
        cp.stop()


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[ControlPlane, Registry]]:
    yield from serve(tmp_path, "--workers", "2")


@pytest.fixture
def stingy(tmp_path: Path) -> Iterator[tuple[ControlPlane, Registry]]:
    """A server that lets in 4 new streams a second (admission control refuses the rest)."""
    yield from serve(tmp_path, "--new-streams-per-second", "4")


def proxies(admin: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [ROUTEPLANE, "proxies", "--json", "--admin", admin],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    listed = json.loads(result.stdout)
    assert isinstance(listed, list)
    return listed


def all_synced(admin: str, count: int) -> bool:
    listed = proxies(admin)
    return len(listed) == count and all(
        t["state"] == "SYNCED" and t["acked_version"] == t["sent_version"]
        for p in listed
        for t in p["types"].values()
    )


def test_every_stream_completes_and_acks_a_change_across_two_workers(
    binary: Path, two_workers: tuple[ControlPlane, Registry], tmp_path: Path
) -> None:
    cp, registry = two_workers
    with fleetsim.FleetSim(
        binary,
        target=cp.xds,
        streams=STREAMS,
        clusters=len(SERVERS),
        log_path=tmp_path / "fleetsim.log",
    ) as sim:
        sim.wait_complete(30)
        stats = sim.stats()
        assert stats["complete"] == STREAMS
        assert stats["connected"] == STREAMS
        assert stats["ended"] == 0
        wait_until(lambda: all_synced(cp.admin, STREAMS), what="every simulated proxy SYNCED")
        listed = proxies(cp.admin)
        assert {p["node_id"] for p in listed} == {f"sim-{i}" for i in range(STREAMS)}
        assert set(listed[0]["types"]) == {"cds", "eds", "lds", "rds"}
        # One connection per proxy: the kernel spreads them over both workers.
        assert len({p.get("worker") for p in listed}) == 2
        eds_before = {p["node_id"]: p["types"]["eds"]["acked_version"] for p in listed}

        sim.watch("default_s1", 30)
        registry.register_replica(server="s1", address="127.0.0.2:20100", region="us-west")
        committed_at = commit_time(cp.registry)
        watched = sim.watched()
        assert watched.complete
        assert watched.count == STREAMS
        assert watched.last_ack_at > committed_at
        wait_until(lambda: all_synced(cp.admin, STREAMS), what="SYNCED on the new version")
        after = {p["node_id"]: p["types"]["eds"]["acked_version"] for p in proxies(cp.admin)}
        assert all(after[node] != eds_before[node] for node in eds_before)
        # A name nobody is sent a new version of is never reported complete.
        sim.watch("default_s2", 1)
        unchanged = sim.watched()
        assert not unchanged.complete
        assert unchanged.count == 0


def test_refused_streams_retry_until_every_one_is_in(
    binary: Path, stingy: tuple[ControlPlane, Registry], tmp_path: Path
) -> None:
    cp, _ = stingy
    streams = 10
    with fleetsim.FleetSim(
        binary,
        target=cp.xds,
        streams=streams,
        clusters=len(SERVERS),
        connect_rate=100,
        log_path=tmp_path / "fleetsim.log",
    ) as sim:
        sim.wait_complete(60)
        stats = sim.stats()
    assert stats["complete"] == streams
    # Refused streams end before any response (trailers only), and were retried.
    assert stats["ended_before_response"] > 0
    assert stats["ended"] == stats["ended_before_response"]
    assert stats["connects"] == streams + stats["ended"]
