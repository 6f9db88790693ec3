"""Routing decisions proven by requests through real Envoys in two regions."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from websockets.sync.client import connect as ws_connect

from control_plane.dev.samples.grpc_echo import STREAM, UNARY, GrpcEchoThread
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.dev.samples.ws_echo import WsEchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ControlPlane, Envoy
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy


@dataclass
class Mesh:
    cp: ControlPlane
    registry: Registry
    west: Envoy
    east: Envoy


@pytest.fixture
def mesh(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Mesh]:
    west = Envoy.create(tmp_path, node_id="edge-west", region="us-west", xds=[control_plane.xds])
    east = Envoy.create(tmp_path, node_id="edge-east", region="us-east", xds=[control_plane.xds])
    registry = open_registry(control_plane.registry)
    try:
        for envoy in (west, east):
            envoy.start()
        for envoy in (west, east):
            envoy.wait_live()
        yield Mesh(cp=control_plane, registry=registry, west=west, east=east)
    finally:
        registry.close()
        west.stop()
        east.stop()


def wait_holds(envoy: Envoy, *, clusters: tuple[str, ...], domains: tuple[str, ...]) -> None:
    """Wait until ``envoy`` has every one of ``clusters`` and a virtual host for each of
    ``domains``: the change has reached it (an Envoy without it rejected nothing either)."""
    gaps: list[str] = []

    def holds() -> bool:
        dump = json.loads(envoy.admin_get("/config_dump"))
        have: set[str] = set()
        for config in dump["configs"]:
            for entry in config.get("dynamic_active_clusters", ()):
                have.add(entry["cluster"]["name"])
            for entry in config.get("dynamic_route_configs", ()):
                for vhost in entry["route_config"].get("virtual_hosts", ()):
                    have.update(vhost.get("domains", ()))
        gaps[:] = sorted(set(clusters + domains) - have)
        return not gaps

    try:
        wait_until(holds, what=f"{envoy.node_id} to have the change")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing {gaps}") from None


def body(envoy: Envoy, host: str, **headers: str) -> str:
    import urllib.request

    request = urllib.request.Request(f"http://{envoy.listen}/", headers={"Host": host, **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode().strip())
    except OSError as exc:
        return f"error:{getattr(exc, 'code', exc)}"


def test_a_proxy_prefers_its_region_and_fails_over_when_it_drains(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    west, east = echo_factory("west-1"), echo_factory("east-1")
    reg = mesh.registry
    reg.put_server(name="echo", hostnames=["echo.local"], protocol="http")
    reg.put_server(
        name="pinned", hostnames=["pinned.local"], protocol="http", spec={"failover": "local_only"}
    )
    w = reg.register_replica(server="echo", address=west.address, region="us-west")
    reg.register_replica(server="echo", address=east.address, region="us-east")
    pw = reg.register_replica(server="pinned", address=west.address, region="us-west")
    reg.register_replica(server="pinned", address=east.address, region="us-east")
    wait_until(lambda: body(mesh.west, "echo.local") == "west-1", what="west routes locally")
    wait_until(lambda: body(mesh.east, "echo.local") == "east-1", what="east routes locally")
    assert Counter(body(mesh.west, "echo.local") for _ in range(30)) == {"west-1": 30}
    assert Counter(body(mesh.east, "echo.local") for _ in range(30)) == {"east-1": 30}

    reg.set_replica_state(w.id, "DRAINING")
    reg.set_replica_state(pw.id, "DRAINING")
    wait_until(lambda: body(mesh.west, "echo.local") == "east-1", what="failover to us-east")
    assert Counter(body(mesh.west, "echo.local") for _ in range(20)) == {"east-1": 20}
    # A local_only server never leaves the proxy's region.
    wait_until(lambda: body(mesh.west, "pinned.local") == "error:503", what="no failover")

    reg.set_replica_state(w.id, "READY")
    wait_until(lambda: body(mesh.west, "echo.local") == "west-1", what="back to us-west")


def test_session_affinity_holds_across_requests(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    reg = mesh.registry
    reg.put_server(
        name="chat",
        hostnames=["chat.local"],
        protocol="http",
        spec={"load_balancing": {"consistent_hash": {"header": "x-session-id"}}},
    )
    for i in range(3):
        replica = echo_factory(f"chat-{i}")
        reg.register_replica(server="chat", address=replica.address, region="us-west")
    wait_until(
        lambda: mesh.west.stat("cluster.default_chat.membership_healthy") == 3,
        what="three healthy replicas",
    )
    chosen = {}
    for session in range(20):
        answers = {
            body(mesh.west, "chat.local", **{"x-session-id": f"s{session}"}) for _ in range(8)
        }
        assert len(answers) == 1, f"session s{session} moved between {answers}"
        chosen[session] = answers.pop()
    assert len(set(chosen.values())) >= 2


def test_weights_shift_traffic_in_proportion(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    reg = mesh.registry
    light, heavy = echo_factory("light"), echo_factory("heavy")
    reg.put_server(name="weighted", hostnames=["weighted.local"], protocol="http")
    reg.register_replica(server="weighted", address=light.address, region="us-west", weight=100)
    reg.register_replica(server="weighted", address=heavy.address, region="us-west", weight=300)
    wait_until(
        lambda: mesh.west.stat("cluster.default_weighted.membership_healthy") == 2,
        what="two replicas",
    )
    counts = Counter(body(mesh.west, "weighted.local") for _ in range(400))
    share = counts["heavy"] / 400
    assert 0.65 <= share <= 0.85, counts


def ws_open(envoy: Envoy, host: str) -> object:
    listen_host, _, port = envoy.listen.rpartition(":")
    sock = socket.create_connection((listen_host, int(port)), timeout=5)
    return ws_connect(f"ws://{host}/", sock=sock, open_timeout=5, legacy=True)


def grpc_channel(envoy: Envoy, authority: str) -> grpc.Channel:
    return grpc.insecure_channel(envoy.listen, options=[("grpc.default_authority", authority)])


def test_websocket_and_grpc_through_envoy(mesh: Mesh) -> None:
    ws, rpc = WsEchoThread(name="ws-1"), GrpcEchoThread(name="g-1")
    try:
        reg = mesh.registry
        reg.put_server(name="ws", hostnames=["ws.local"], protocol="http")
        reg.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
        reg.register_replica(server="ws", address=ws.address, region="us-west")
        reg.register_replica(server="tokens", address=rpc.address, region="us-west")
        wait_until(
            lambda: (
                mesh.west.stat("cluster.default_tokens.membership_healthy") == 1
                and mesh.west.stat("cluster.default_ws.membership_healthy") == 1
            ),
            what="both servers routed",
        )
        connection = ws_open(mesh.west, "ws.local")
        connection.send("hello")  # type: ignore[attr-defined]
        assert connection.recv(timeout=5) == "ws-1:hello"  # type: ignore[attr-defined]
        connection.close()  # type: ignore[attr-defined]
        with grpc_channel(mesh.west, "tokens.local") as channel:
            unary = channel.unary_unary(UNARY)
            assert unary(b"ping", timeout=5) == b"g-1:ping"
            stream = channel.unary_stream(STREAM)
            assert list(stream(b"5:0", timeout=5)) == [f"g-1:{i}".encode() for i in range(5)]
    finally:
        ws.stop()
        rpc.stop()


def test_a_drain_lets_open_streams_finish_while_new_requests_go_elsewhere(mesh: Mesh) -> None:
    ws_a, ws_b = WsEchoThread(name="ws-a"), WsEchoThread(name="ws-b")
    rpc_a, rpc_b = GrpcEchoThread(name="g-a"), GrpcEchoThread(name="g-b")
    try:
        reg = mesh.registry
        reg.put_server(name="ws", hostnames=["ws.local"], protocol="http")
        reg.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
        ws_id = reg.register_replica(server="ws", address=ws_a.address, region="us-west").id
        rpc_id = reg.register_replica(server="tokens", address=rpc_a.address, region="us-west").id
        wait_until(
            lambda: (
                mesh.west.stat("cluster.default_tokens.membership_healthy") == 1
                and mesh.west.stat("cluster.default_ws.membership_healthy") == 1
            ),
            what="both servers routed",
        )
        connection = ws_open(mesh.west, "ws.local")
        connection.send("before")  # type: ignore[attr-defined]
        assert connection.recv(timeout=5) == "ws-a:before"  # type: ignore[attr-defined]
        channel = grpc_channel(mesh.west, "tokens.local")
        tokens: list[bytes] = []
        streaming = threading.Thread(
            target=lambda: tokens.extend(channel.unary_stream(STREAM)(b"50:100", timeout=30))
        )
        streaming.start()
        wait_until(
            lambda: mesh.west.stat("cluster.default_tokens.upstream_rq_active") == 1,
            what="the token stream in flight",
        )

        reg.register_replica(server="ws", address=ws_b.address, region="us-west")
        reg.register_replica(server="tokens", address=rpc_b.address, region="us-west")
        reg.set_replica_state(ws_id, "DRAINING")
        reg.set_replica_state(rpc_id, "DRAINING")
        wait_until(
            lambda: (
                mesh.west.stat("cluster.default_tokens.membership_healthy") == 1
                and mesh.west.stat("cluster.default_tokens.membership_total") == 2
            ),
            what="g-a draining, g-b healthy",
        )
        # The stream (5 s of tokens) is still open now that its replica drains: the test
        # below is about a stream that outlives the drain, not one that ended before it.
        assert streaming.is_alive()
        assert mesh.west.stat("cluster.default_tokens.upstream_rq_active") == 1
        with grpc_channel(mesh.west, "tokens.local") as fresh:
            assert fresh.unary_unary(UNARY)(b"new", timeout=5) == b"g-b:new"
        new_ws = ws_open(mesh.west, "ws.local")
        new_ws.send("new")  # type: ignore[attr-defined]
        assert new_ws.recv(timeout=5) == "ws-b:new"  # type: ignore[attr-defined]
        new_ws.close()  # type: ignore[attr-defined]
        # The open WebSocket still reaches its replica; the stream finishes every token.
        connection.send("after")  # type: ignore[attr-defined]
        assert connection.recv(timeout=5) == "ws-a:after"  # type: ignore[attr-defined]
        connection.close()  # type: ignore[attr-defined]
        streaming.join(timeout=30)
        assert tokens == [f"g-a:{i}".encode() for i in range(50)]
        channel.close()
    finally:
        for server in (ws_a, ws_b, rpc_a, rpc_b):
            server.stop()


def test_every_option_is_accepted_by_envoy(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    reg = mesh.registry
    replica = echo_factory("kitchen")
    reg.put_server(
        name="kitchen",
        workspace="acme",
        hostnames=["kitchen.local", "*.kitchen.dev"],
        protocol="http",
        spec={
            "regions": ["us-west", "us-east"],
            "failover": "cross_region",
            "load_balancing": {"consistent_hash": {"cookie": "session", "ttl": "1h"}},
            "timeouts": {"request": "120s", "idle": "10m", "connect": "500ms"},
            "retries": 3,
            "max_requests_per_replica": 16,
            "outlier_detection": {
                "consecutive_5xx": 3,
                "interval": "5s",
                "base_ejection_time": "10s",
                "max_ejection_percent": 30,
            },
            "health_check": {"http": "/", "interval": "1s", "timeout": "500ms"},
        },
    )
    reg.put_server(
        name="grpc-kitchen",
        hostnames=["grpc.kitchen.local"],
        protocol="grpc",
        spec={
            "load_balancing": {"consistent_hash": {"header": "x-user"}},
            "max_requests_per_replica": 4,
            "outlier_detection": "off",
            "health_check": {"grpc": ""},
        },
    )
    reg.put_server(
        name="prefixed", hostnames=["kitchen.local"], protocol="http2", spec={"path_prefix": "/v2"}
    )
    reg.register_replica(server="kitchen", address=replica.address, region="us-west")
    wait_until(lambda: body(mesh.west, "kitchen.local") == "kitchen", what="kitchen routed")
    for envoy in (mesh.west, mesh.east):
        wait_holds(
            envoy,
            clusters=("acme_kitchen", "default_grpc-kitchen", "default_prefixed"),
            domains=("kitchen.local", "*.kitchen.dev", "grpc.kitchen.local"),
        )
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0
        assert envoy.stat("http.ingress_http.rds.ingress_http.update_rejected") == 0
        assert envoy.stat("cluster_manager.cds.update_success") >= 1


def test_boundary_values_are_accepted_by_envoy(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    """Every field at the edge of what routeplane accepts: Envoy accepts all of it."""
    reg = mesh.registry
    replica = echo_factory("edges")
    label = "a" * 63
    reg.put_server(
        name="e" * 63,
        workspace="w" * 63,
        hostnames=[f"{label}.{label}.edges.local", "*.edges.dev"],
        protocol="http",
        spec={
            "path_prefix": "/" + "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "?#/"),
            "timeouts": {"request": "24h", "idle": "0s", "connect": "1ms"},
            "retries": 10,
            "max_requests_per_replica": 1_000_000,
            "load_balancing": {"consistent_hash": {"cookie": "s", "ttl": "0s"}},
            "outlier_detection": {
                "consecutive_5xx": 1000,
                "interval": "1ms",
                "base_ejection_time": "24h",
                "max_ejection_percent": 0,
            },
            "health_check": {"http": "/", "interval": "1ms", "timeout": "24h"},
        },
    )
    reg.put_server(
        name="edges",
        hostnames=["edges.local"],
        protocol="http",
        spec={"retries": 0, "max_requests_per_replica": 1, "failover": "local_only"},
    )
    for address, weight in (
        ("127.0.0.1:1", 1),
        ("127.0.0.1:65535", 10_000),
        ("[::1]:8080", 5000),
        ("[2001:db8::1]:443", 1),
    ):
        reg.register_replica(
            server="e" * 63, address=address, region="us-west", zone="z" * 63, weight=weight
        )
    reg.register_replica(server="edges", address=replica.address, region="us-west")
    wait_until(lambda: body(mesh.west, "edges.local") == "edges", what="edges routed")
    for envoy in (mesh.west, mesh.east):
        wait_holds(
            envoy,
            clusters=(f"{'w' * 63}_{'e' * 63}", "default_edges"),
            domains=(f"{label}.{label}.edges.local", "*.edges.dev", "edges.local"),
        )
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0
        assert envoy.stat("http.ingress_http.rds.ingress_http.update_rejected") == 0
        assert envoy.stat(f"cluster.{'w' * 63}_{'e' * 63}.update_rejected") == 0
        assert envoy.stat(f"cluster.{'w' * 63}_{'e' * 63}.update_success") >= 1


def _get_events(envoy: Envoy, path: str, host: str) -> tuple[int, list[str], float]:
    """GET through Envoy: status, the server-sent events received (even if cut), seconds."""
    import http.client

    address, port = envoy.listen.rsplit(":", 1)
    started = time.monotonic()
    connection = http.client.HTTPConnection(address, int(port), timeout=15)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        try:
            body = response.read()
        except http.client.IncompleteRead as exc:
            body = exc.partial
        events = [line for line in body.decode().splitlines() if line.startswith("data: ")]
        return response.status, events, time.monotonic() - started
    finally:
        connection.close()


def test_a_token_stream_outlives_the_request_timeout_but_a_stalled_one_is_cut(
    mesh: Mesh, echo_factory: Callable[[str], EchoThread]
) -> None:
    replica = echo_factory("sse")
    mesh.registry.put_server(
        name="sse",
        hostnames=["sse.local"],
        protocol="http",
        spec={"timeouts": {"request": "1s", "idle": "1s"}, "retries": 0},
    )
    mesh.registry.register_replica(server="sse", address=replica.address, region="us-west")
    wait_until(lambda: body(mesh.west, "sse.local") == "sse", what="sse routed")
    # 15 events 200 ms apart: 2.8 s of streaming, well past `request: 1s`, never idle for 1 s.
    status, events, took = _get_events(mesh.west, "/stream?chunks=15&ms=200", "sse.local")
    assert status == 200
    assert events == [f"data: sse {i}" for i in range(15)]
    assert took >= 2.8
    # One event, then silence: cut once it has been quiet for 1 s.
    status, events, took = _get_events(mesh.west, "/stall?chunks=3&ms=5000", "sse.local")
    assert status == 200
    assert events == ["data: sse 0"]
    assert 0.9 <= took < 4.0
    # No byte at all within `request`: 504 from Envoy, after about a second.
    status, _, took = _get_events(mesh.west, "/slow?ms=5000", "sse.local")
    assert status == 504
    assert 0.9 <= took < 4.0
