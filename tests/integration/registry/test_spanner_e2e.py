"""Spanner end to end: a write to the real emulator reaches a real Envoy; and the control plane
rides out the emulator going away and coming back."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ControlPlane, Envoy, http_get, routeplane
from harness.spanner_emulator import Emulator
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy
HOST = "echo.local"


def test_a_spanner_write_reaches_envoy(
    spanner_url: str, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    echo = echo_factory("spanner-replica")
    cp = ControlPlane.create(tmp_path, registry=spanner_url)
    cp.start()
    envoy = Envoy.create(tmp_path, node_id="edge-spanner", region="us-west", xds=[cp.xds])
    try:
        cp.wait_ready()
        envoy.start()
        envoy.wait_live()
        routeplane("servers", "create", "echo", "--host", HOST, registry=spanner_url)
        replica_id = routeplane(
            "replicas",
            "register",
            "echo",
            "--address",
            echo.address,
            "--region",
            "us-west",
            registry=spanner_url,
        ).stdout.strip()
        wait_until(
            lambda: envoy.get(host=HOST) == (200, "spanner-replica\n"),
            what="Envoy routing to the replica written to Spanner",
        )
        routeplane("replicas", "deregister", replica_id, registry=spanner_url)
        wait_until(lambda: envoy.get(host=HOST)[0] == 503, what="the deregistration")
    finally:
        envoy.stop()
        cp.stop()


def test_proxies_keep_routing_while_spanner_is_down_and_it_recovers(
    spanner_emulator: Emulator, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    # An emulator of this test's own, so stopping it disturbs no other test.
    emulator = Emulator.create(tmp_path)
    emulator.start()
    env_before = os.environ["SPANNER_EMULATOR_HOST"]
    os.environ["SPANNER_EMULATOR_HOST"] = emulator.host
    url = "spanner://projects/fault/instances/rp/databases/registry"
    first, second = echo_factory("before-outage"), echo_factory("after-outage")
    cp = ControlPlane.create(tmp_path, registry=url)
    envoys: list[Envoy] = []
    try:
        registry = open_registry(url)
        registry.init()
        registry.create_server(name="echo", hostnames=[HOST], protocol="http")
        registry.register_replica(server="echo", address=first.address, region="us-west")
        registry.close()
        cp.start()
        cp.wait_ready()
        envoy = Envoy.create(tmp_path, node_id="edge-a", region="us-west", xds=[cp.xds])
        envoys.append(envoy)
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host=HOST) == (200, "before-outage\n"), what="routing")

        emulator.stop()
        wait_until(
            lambda: http_get(f"http://{cp.admin}/readyz")[0] == 503,
            what="the control plane to report itself degraded",
        )
        assert "registry degraded" in http_get(f"http://{cp.admin}/readyz")[1]
        for _ in range(50):
            assert envoy.get(host=HOST) == (200, "before-outage\n")
        # A proxy that connects during the outage gets the last good snapshot.
        late = Envoy.create(tmp_path, node_id="edge-late", region="us-east", xds=[cp.xds])
        envoys.append(late)
        late.start()
        late.wait_live()
        wait_until(
            lambda: late.get(host=HOST) == (200, "before-outage\n"),
            what="the late proxy routing on the last good snapshot",
        )

        # A new, empty emulator on the same port: the registry is re-created from scratch.
        emulator.start()
        registry = open_registry(url)
        registry.init()
        registry.create_server(name="echo", hostnames=[HOST], protocol="http")
        registry.register_replica(server="echo", address=second.address, region="us-west")
        registry.close()
        wait_until(
            lambda: http_get(f"http://{cp.admin}/readyz")[0] == 200,
            timeout=30,
            what="the control plane to recover",
        )
        for proxy in envoys:
            wait_until(
                lambda p=proxy: p.get(host=HOST) == (200, "after-outage\n"),
                timeout=30,
                what=f"{proxy.node_id} to follow the new registry",
            )
        assert all(proxy.alive() for proxy in envoys)
    finally:
        for proxy in envoys:
            proxy.stop()
        cp.stop()
        emulator.stop()
        os.environ["SPANNER_EMULATOR_HOST"] = env_before
