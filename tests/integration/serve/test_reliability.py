"""Reliability: control-plane restarts, graceful shutdown, admission control, admin auth."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, http_get, metric_sum
from harness.waiting import free_port, wait_until
from tests.helpers import histogram_quantile

pytestmark = pytest.mark.envoy
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def restart_on_same_ports(cp: ControlPlane, tmp_path: Path, **extra: str) -> ControlPlane:
    again = ControlPlane(
        argv=cp.argv,
        log_path=tmp_path / "control-plane-again.log",
        registry=cp.registry,
        xds=cp.xds,
        admin=cp.admin,
    )
    again.start()
    again.wait_ready()
    return again


def synced_types(admin: str, node_id: str) -> dict[str, dict[str, object]] | None:
    """The proxy's per-type status from ``routeplane proxies --json`` once all four types are
    SYNCED, else None."""
    done = subprocess.run(
        [ROUTEPLANE, "proxies", "--admin", admin, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    for proxy in json.loads(done.stdout):
        types = proxy["types"]
        if (
            proxy["node_id"] == node_id
            and len(types) == 4
            and all(t["state"] == "SYNCED" for t in types.values())
        ):
            return dict(types)
    return None


@pytest.mark.parametrize("ads", ["delta", "sotw"])
def test_envoy_keeps_routing_through_a_restart_and_gets_nothing_it_already_has(
    tmp_path: Path, echo_factory: Callable[[str], EchoThread], ads: str
) -> None:
    cp = ControlPlane.create(tmp_path)
    cp.start()
    envoy = Envoy.create(tmp_path, node_id=f"edge-{ads}", region="us-west", xds=[cp.xds], ads=ads)
    again = None
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )
        registry.close()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local") == (200, "a\n"), what="routing")
        connected = envoy.stat("control_plane.connected_state")
        assert connected == 1
        cp.stop()  # SIGTERM: graceful
        wait_until(
            lambda: envoy.stat("control_plane.connected_state") == 0,
            what="Envoy to notice the control plane is gone",
        )
        for _ in range(50):
            assert envoy.get(host="echo.local") == (200, "a\n")

        again = restart_on_same_ports(cp, tmp_path)
        wait_until(
            lambda: envoy.stat("control_plane.connected_state") == 1,
            timeout=40,
            what="Envoy to reconnect",
        )
        wait_until(lambda: http_get(f"http://{again.admin}/readyz")[0] == 200, what="ready")
        # Judged from the control plane's side: once every type is SYNCED again, the restarted
        # control plane has sent this proxy no resource at all.
        types = wait_until(
            lambda: synced_types(again.admin, f"edge-{ads}"), what="resynced, all four types"
        )
        assert {t: s["resources_sent"] for t, s in types.items()} == dict.fromkeys(
            ("cds", "eds", "lds", "rds"), 0
        )
        assert envoy.get(host="echo.local") == (200, "a\n")
    finally:
        envoy.stop()
        cp.stop()
        if again is not None:
            again.stop()


def test_sigterm_stops_the_control_plane_promptly_and_cleanly(tmp_path: Path) -> None:
    cp = ControlPlane.create(tmp_path)
    envoy = Envoy.create(tmp_path, node_id="edge-term", region="us-west", xds=[cp.xds])
    cp.start()
    release = threading.Event()

    def held_requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        yield discovery_pb2.DiscoveryRequest(
            node=base_pb2.Node(id="held", cluster="edge"),
            type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
        )
        release.wait(60)  # never half-closes: the stream stays open until the server ends it

    try:
        cp.wait_ready()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, what="connected")
        channel = grpc.insecure_channel(cp.xds)
        stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(
            held_requests()
        )
        next(stream)
        goaways = envoy.stat("cluster.routeplane_xds.upstream_cx_close_notify")
        assert cp.process is not None
        started = time.monotonic()
        cp.process.send_signal(signal.SIGTERM)
        # The held stream ends with a status from the server (not by our hand), promptly.
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert time.monotonic() - started < 10
        assert cp.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        # Envoy was told to go: its connection to the control plane closed by GOAWAY.
        assert envoy.stat("cluster.routeplane_xds.upstream_cx_close_notify") == goaways + 1
        log = cp.log()
        assert "shutdown_started" in log
        assert "shutdown_completed" in log
        channel.close()
    finally:
        release.set()
        envoy.stop()
        cp.stop()


def test_a_stream_storm_is_admitted_at_the_configured_rate(tmp_path: Path) -> None:
    cp = ControlPlane.create(tmp_path, extra=["--new-streams-per-second", "5"])
    cp.start()
    try:
        cp.wait_ready()
        refused = served = 0
        with grpc.insecure_channel(cp.xds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            for i in range(20):
                stream = stub.StreamAggregatedResources(
                    iter(
                        [
                            discovery_pb2.DiscoveryRequest(
                                node=base_pb2.Node(id=f"storm-{i}", cluster="edge"),
                                type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
                            )
                        ]
                    )
                )
                errors: list[tuple[object, str]] = []
                try:
                    next(stream)
                    served += 1
                except grpc.RpcError as exc:
                    errors.append((exc.code(), exc.details() or ""))
                    refused += 1
                stream.cancel()
                for code, details in errors:
                    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "retry" in details
        assert served >= 5
        assert refused >= 1
        # The process stays responsive to operators meanwhile.
        assert http_get(f"http://{cp.admin}/healthz")[0] == 200
        # Every refusal counted, by its reason (a name printed with no sample does not pass).
        counted = metric_sum(cp.admin, "routeplane_xds_streams_refused_total", reason="rate")
        assert counted == refused
    finally:
        cp.stop()


def test_the_admin_api_needs_the_token_when_one_is_set(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    cp = ControlPlane.create(tmp_path, extra=["--admin-token-file", str(token_file)])
    cp.start()
    try:
        cp.wait_ready()
        denied = subprocess.run(
            [ROUTEPLANE, "proxies", "--admin", cp.admin],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert denied.returncode == 1
        assert "admin token" in denied.stderr
        allowed = subprocess.run(
            [ROUTEPLANE, "proxies", "--admin", cp.admin],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env={"ROUTEPLANE_ADMIN_TOKEN": "s3cret", "PATH": "/usr/bin:/bin"},
        )
        assert allowed.returncode == 0, allowed.stderr
        assert http_get(f"http://{cp.admin}/metrics")[0] == 401
        assert http_get(f"http://{cp.admin}/healthz")[0] == 200
    finally:
        cp.stop()


def test_a_non_loopback_admin_address_without_a_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            ROUTEPLANE,
            "serve",
            "--registry",
            f"sqlite://{tmp_path / 'r.db'}",
            "--xds-listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"0.0.0.0:{free_port()}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is not loopback: set --admin-token-file" in result.stderr


def test_two_replicas_serve_the_same_versions_and_a_proxy_fails_over_without_errors(
    spanner_url: str, tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(spanner_url)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    registry.close()
    first = ControlPlane.create(tmp_path, registry=spanner_url)
    second = ControlPlane.create(tmp_path, registry=spanner_url)
    envoy = Envoy.create(tmp_path, node_id="edge-ha", region="us-west", xds=[first.xds, second.xds])
    try:
        for cp in (first, second):
            cp.start()
        for cp in (first, second):
            cp.wait_ready()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local") == (200, "a\n"), what="routing")

        def versions(cp: ControlPlane) -> tuple[str, ...]:
            """What a proxy of the same group gets from this replica, type by type."""
            node = base_pb2.Node(
                id="probe", cluster="edge", locality=base_pb2.Locality(region="us-west")
            )
            node.metadata.fields["routeplane.listen"].string_value = envoy.listen
            requests = [
                discovery_pb2.DiscoveryRequest(node=node, type_url=CDS),
                discovery_pb2.DiscoveryRequest(type_url=LDS),
            ]
            with grpc.insecure_channel(cp.xds) as channel:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                stream = stub.StreamAggregatedResources(iter(requests), timeout=10)
                got = tuple(next(stream).version_info for _ in requests)
                stream.cancel()
            return got

        assert versions(first) == versions(second)

        def serving(cp: ControlPlane) -> bool:
            out = subprocess.run(
                [ROUTEPLANE, "proxies", "--admin", cp.admin, "--json"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            return out.returncode == 0 and "edge-ha" in out.stdout

        connected = wait_until(
            lambda: first if serving(first) else second if serving(second) else None,
            what="the proxy connected somewhere",
        )
        other = second if connected is first else first
        connected.stop()
        failures = 0
        deadline = time.monotonic() + 30
        while not serving(other):
            failures += envoy.get(host="echo.local") != (200, "a\n")
            assert time.monotonic() < deadline, "the proxy did not move to the other replica"
        for _ in range(20):
            failures += envoy.get(host="echo.local") != (200, "a\n")
        assert failures == 0
        # The replica it moved to sent it nothing: judged from the control plane's side.
        types = wait_until(
            lambda: synced_types(other.admin, "edge-ha"), what="synced on the other replica"
        )
        assert {t: s["resources_sent"] for t, s in types.items()} == dict.fromkeys(
            ("cds", "eds", "lds", "rds"), 0
        )
    finally:
        envoy.stop()
        first.stop()
        second.stop()


def test_max_connection_age_closes_the_connection_and_envoy_reconnects(
    tmp_path: Path, echo_factory: Callable[[str], EchoThread]
) -> None:
    cp = ControlPlane.create(tmp_path, extra=["--max-connection-age", "2"])
    envoy = Envoy.create(tmp_path, node_id="edge-aged", region="us-west", xds=[cp.xds])
    cp.start()
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        registry.register_replica(
            server="echo", address=echo_factory("a").address, region="us-west"
        )
        registry.close()
        envoy.start()
        envoy.wait_live()
        wait_until(lambda: envoy.get(host="echo.local") == (200, "a\n"), what="routing")
        # gRPC sends GOAWAY at the age (+-10%); the open ADS stream gets the 10 s grace, then
        # Envoy is on a new connection. Twice, so it is the age and not a one-off.
        wait_until(
            lambda: envoy.stat("cluster.routeplane_xds.upstream_cx_close_notify") >= 2,
            timeout=40,
            what="two connections closed by age",
        )
        # Closed by their age, not by anything sooner: the shortest connection Envoy measured
        # lived the age (less gRPC's 10% jitter) plus the 10 s grace its open stream is given,
        # less Envoy's histogram resolution (two significant digits: 1 s at this length).
        # (Envoy merges histograms at its stats flush, every 5 s.)
        length = "cluster.routeplane_xds.upstream_cx_length_ms"
        shortest = wait_until(
            lambda: histogram_quantile(
                envoy.admin_get(f"/stats?format=json&filter=^{length}$"), length, 0
            ),
            timeout=15,
            what="Envoy's connection lengths",
        )
        assert shortest >= 0.9 * 2000 + 10_000 - 1000, f"a connection closed after {shortest} ms"
        wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, what="reconnected")
        for _ in range(20):
            assert envoy.get(host="echo.local") == (200, "a\n")
    finally:
        envoy.stop()
        cp.stop()
