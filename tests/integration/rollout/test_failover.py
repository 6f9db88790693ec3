"""Failover of the rollout driver (issue 26): two ``serve`` processes on one registry (a SQLite
file, and the Spanner emulator), one Envoy fed by both; the process driving a rollout is killed
(SIGKILL, by its PID) in the middle of a step, and the other takes the lease once it has run
out and finishes the rollout from the recorded step."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy, routeplane
from harness.waiting import wait_until
from tests.integration.rollout.test_rollout import INTERVAL, pin_v1
from tests.integration.rollout.traffic import (
    SteadyTraffic,
    WeightLog,
    nonzero,
    status,
    v2_weight,
    wait_answered_by,
)

pytestmark = pytest.mark.envoy


@pytest.fixture(params=["sqlite", "spanner"])
def control_planes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[ControlPlane]]:
    if request.param == "sqlite":
        registry = f"sqlite://{tmp_path / 'registry.db'}"
    else:  # the emulator: a fresh database, initialized
        registry = request.getfixturevalue("spanner_url")
    planes = []
    try:
        for _ in range(2):
            cp = ControlPlane.create(
                tmp_path, registry=registry, extra=["--load-report-interval", str(INTERVAL)]
            )
            cp.start()
            planes.append(cp)
        for cp in planes:
            cp.wait_ready()
        yield planes
    finally:
        for cp in planes:
            cp.stop()


def test_the_other_control_plane_finishes_a_rollout_when_its_driver_is_killed(
    control_planes: list[ControlPlane],
    echo_factory: Callable[[str], EchoThread],
    tmp_path: Path,
) -> None:
    url = control_planes[0].registry
    pin_v1(url, tmp_path)
    registry = open_registry(url)
    try:
        for name, revision in (("chat-v1-a", "v1"), ("chat-v2-a", "v2")):
            echo = echo_factory(name)
            registry.register_replica(
                server="chat", address=echo.address, region="us-west", revision=revision
            )
    finally:
        registry.close()
    envoy = Envoy.create(
        tmp_path, node_id="edge", region="us-west", xds=[cp.xds for cp in control_planes]
    )
    envoy.start()
    try:
        envoy.wait_live()
        log = WeightLog(envoy)
        wait_until(
            lambda: nonzero(log.look()) == {"default_chat_rev_v1": 100}, timeout=30, what="v1"
        )
        wait_answered_by(envoy, "chat-v1-a")
        log.start()
        traffic = SteadyTraffic(envoy).start()
        try:
            wait_until(lambda: len(traffic.answers) > 50, timeout=30, what="traffic flowing")
            routeplane(
                "servers", "rollout", "chat", "--to", "v2", "--steps", "20,60,100",
                "--interval", "3s", "--min-requests", "20", registry=url,
            )  # fmt: skip
            first = wait_until(
                lambda: (lambda r: r if r["holder"] and r["written"] else None)(status(url)),
                timeout=30,
                what="a driver holding the rollout and its first split written",
            )
            # The holder is "<--control-plane-id or routeplane/HOST/PID>#<random>".
            holder_pid = int(first["holder"].split("#")[0].rsplit("/", 1)[1])
            [holder] = [cp for cp in control_planes if cp.pid == holder_pid]
            [other] = [cp for cp in control_planes if cp is not holder]
            assert first["state"] == "running"
            # Mid-rollout: a loaded machine may first see step 2 (the interval is 3 s).
            assert first["step"] in (1, 2), first
            os.kill(holder.pid, signal.SIGKILL)
            holder.process.wait(timeout=10)  # type: ignore[union-attr]
            record = wait_until(
                lambda: (lambda r: r if r["state"] != "running" else None)(status(url)),
                timeout=90,
                what="the rollout to end on the other control plane",
            )
            wait_until(lambda: v2_weight(log.latest()) == 100, timeout=30, what="v2 at 100%")
        finally:
            traffic.stop()
            log.stop()
    finally:
        envoy.stop()
    assert record["state"] == "succeeded", record
    assert record["holder"] is not None
    assert record["holder"].split("#")[0].endswith(f"/{other.pid}"), record
    # Every step was written once, in order: the takeover rewrote nothing already written.
    assert [v2_weight(w) for _, w in log.changes if v2_weight(w)] == [20, 60, 100], log.changes
    assert [a for a in traffic.answers if a.status != 200 and a.body == "chat-v1-a"] == []
