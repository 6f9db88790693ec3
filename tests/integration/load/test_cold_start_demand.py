"""Hold-mode demand against a real ``serve``: a proxy that asks for a held server's cluster
counts as one cold start per cold period, however often it unsubscribes and asks again.

A raw delta CDS stream does what a hostile proxy would: subscribe and unsubscribe the held name
in a loop (issue 23: 100,000 cold starts counted from one proxy).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane
from harness.waiting import wait_until

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HELD = "default_gpu_cold1"  # any epoch of the held server's name is its demand
ROUNDS = 1000


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlane]:
    control_plane = ControlPlane.create(tmp_path)
    control_plane.start()
    try:
        control_plane.wait_ready()
        yield control_plane
    finally:
        control_plane.stop()


class DeltaCds:
    """One delta CDS stream (named subscriptions) with its responses read as they come."""

    def __init__(self, xds: str, node_id: str) -> None:
        self._node = base_pb2.Node(
            id=node_id, cluster="edge", locality=base_pb2.Locality(region="us-west")
        )
        self._requests: queue.Queue[Any] = queue.Queue()
        self._channel = grpc.insecure_channel(xds)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        self._responses = stub.DeltaAggregatedResources(iter(self._requests.get, None), timeout=60)
        self.names: set[str] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._responses:
                self.names.update(r.name for r in response.resources)
                self._requests.put(
                    discovery_pb2.DeltaDiscoveryRequest(type_url=CDS, response_nonce=response.nonce)
                )
        except grpc.RpcError:
            pass  # closed at the end

    def send(self, *, subscribe: tuple[str, ...] = (), unsubscribe: tuple[str, ...] = ()) -> None:
        self._requests.put(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=CDS,
                node=self._node,
                resource_names_subscribe=list(subscribe),
                resource_names_unsubscribe=list(unsubscribe),
            )
        )

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()
        self._channel.close()


def cold_starts(admin: str) -> int:
    done = subprocess.run(
        [ROUTEPLANE, "load", "--json", "--server", "gpu", "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return sum(int(r["cold_starts"]) for r in rows if r["region"] == "*")


def test_a_proxy_looping_on_a_held_name_counts_once_per_cold_period(cp: ControlPlane) -> None:
    registry = open_registry(cp.registry)
    registry.put_server(
        name="gpu", hostnames=["gpu.local"], protocol="http", spec={"cold_start": {"mode": "hold"}}
    )
    registry.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address="127.0.0.1:9", region="us-west")
    registry.close()
    wait_until(lambda: cold_starts(cp.admin) == 0, what="gpu in the load view")
    looping = DeltaCds(cp.xds, "edge-loop")
    other: DeltaCds | None = None
    try:
        looping.send(subscribe=(HELD,))
        for _ in range(ROUNDS):
            looping.send(unsubscribe=(HELD,))
            looping.send(subscribe=(HELD,))
        # A stream's requests are taken in order: once echo's cluster came, every ask before
        # it was counted (or not).
        looping.send(subscribe=("default_echo",))
        wait_until(lambda: "default_echo" in looping.names, what="the loop's requests taken")
        # A second proxy is new demand; once the view shows it, it shows all of the loop's.
        other = DeltaCds(cp.xds, "edge-other")
        other.send(subscribe=(HELD,))
        count = wait_until(
            lambda: (n := cold_starts(cp.admin)) >= 2 and n, what="the second proxy's demand"
        )
        assert count == 2, f"{count} cold starts from two proxies ({ROUNDS} asks from one)"
    finally:
        looping.close()
        if other is not None:
            other.close()
