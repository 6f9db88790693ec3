"""Proxyless gRPC: real grpcio clients on ``xds:///`` targets reading routeplane's xDS directly.

Each client runs in its own process (``routeplane samples grpc-client``), since gRPC's xDS
bootstrap is process-wide. The replicas are the gRPC Echo sample, which names itself in every
reply, so each line a client prints says which replica answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from control_plane.bootstrap import render_grpc
from control_plane.dev.certs import dev_certs
from control_plane.dev.samples.grpc_echo import UNARY, GrpcEchoThread
from control_plane.registry import Registry, open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, GrpcClient, metric_sum
from harness.waiting import wait_until

TOKENS = "xds:///tokens.local"


@pytest.fixture
def registry(control_plane: ControlPlane) -> Iterator[Registry]:
    reg = open_registry(control_plane.registry)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def replicas() -> Iterator[Callable[[str], GrpcEchoThread]]:
    started: list[GrpcEchoThread] = []

    def make(name: str) -> GrpcEchoThread:
        echo = GrpcEchoThread(name=name)
        started.append(echo)
        return echo

    yield make
    for echo in started:
        echo.stop()


@pytest.fixture
def clients(control_plane: ControlPlane, tmp_path: Path) -> Iterator[Callable[..., GrpcClient]]:
    started: list[GrpcClient] = []

    def make(node_id: str, *, region: str = "us-west", **options: object) -> GrpcClient:
        client = GrpcClient.create(
            tmp_path,
            target=str(options.pop("target", TOKENS)),
            xds=control_plane.xds,
            region=region,
            node_id=node_id,
            **options,  # type: ignore[arg-type]
        )
        client.start()
        started.append(client)
        return client

    yield make
    for client in started:
        client.stop()


def answered_by(client: GrpcClient, start: int = 0) -> list[str]:
    """The replica behind each reply from line ``start`` on (errors left out)."""
    return [
        line.split(":", 1)[0] for line in list(client.lines)[start:] if not line.startswith("error")
    ]


def test_a_grpc_client_reaches_a_new_replica_unary_and_streaming(
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    first, second = replicas("t-1"), replicas("t-2")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    registry.register_replica(server="tokens", address=first.address, region="us-west")
    unary = clients("grpc-unary")
    wait_until(lambda: "t-1" in answered_by(unary), what="the first replica answers")
    registry.register_replica(server="tokens", address=second.address, region="us-west")
    wait_until(lambda: "t-2" in answered_by(unary), what="the new replica answers")
    stream = clients("grpc-stream", calls=1, stream=5, stream_interval_ms=10)
    assert stream.wait() == 0, stream.log()
    assert len(stream.lines) == 6
    assert stream.lines[-1] == "stream done"
    replica = stream.lines[0].split(":")[0]
    assert stream.lines[:5] == [f"{replica}:{i}" for i in range(5)]
    assert unary.errors() == []


def test_a_draining_replica_gets_no_new_rpcs_and_its_open_stream_finishes(
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    old, new = replicas("old"), replicas("new")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    draining = registry.register_replica(server="tokens", address=old.address, region="us-west")
    stream = clients("grpc-long-stream", calls=1, stream=60, stream_interval_ms=50)
    wait_until(lambda: "old:0" in stream.lines, what="the stream starts on the old replica")
    unary = clients("grpc-unary")
    wait_until(lambda: "old" in answered_by(unary), what="unary calls reach the old replica")
    registry.register_replica(server="tokens", address=new.address, region="us-west")
    wait_until(lambda: "new" in answered_by(unary), what="unary calls reach the new replica")
    registry.set_replica_state(draining.id, "DRAINING")
    mark = len(unary.lines)
    wait_until(
        lambda: answered_by(unary, mark)[-20:] == ["new"] * 20,
        what="20 calls in a row answered by the new replica",
    )
    settled = len(unary.lines)
    wait_until(lambda: len(unary.lines) >= settled + 30, what="30 more calls")
    assert set(answered_by(unary, settled)) == {"new"}
    assert stream.wait() == 0, stream.log()
    assert stream.lines == [f"old:{i}" for i in range(60)] + ["stream done"]
    assert unary.errors() == []


def test_region_failover_and_local_only_hold_for_grpc_clients(
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    west, east = replicas("west"), replicas("east")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    registry.put_server(
        name="pinned",
        hostnames=["pinned.local"],
        protocol="grpc",
        spec={"failover": "local_only"},
    )
    w = registry.register_replica(server="tokens", address=west.address, region="us-west")
    registry.register_replica(server="tokens", address=east.address, region="us-east")
    pw = registry.register_replica(server="pinned", address=west.address, region="us-west")
    registry.register_replica(server="pinned", address=east.address, region="us-east")
    tokens = clients("grpc-west", region="us-west")
    pinned = clients("grpc-west-pinned", region="us-west", target="xds:///pinned.local")
    for client in (tokens, pinned):
        wait_until(lambda c=client: len(answered_by(c)) >= 30, what="30 replies")  # type: ignore[misc]
        assert Counter(answered_by(client)) == {"west": len(answered_by(client))}
    # The region's only replica drains: its priority has none left for new calls.
    registry.set_replica_state(w.id, "DRAINING")
    registry.deregister_replica(pw.id)
    mark = len(tokens.lines)
    wait_until(lambda: "east" in answered_by(tokens, mark), what="failover to us-east")
    settled = len(tokens.lines)
    wait_until(lambda: len(tokens.lines) >= settled + 20, what="20 more calls")
    assert set(answered_by(tokens, settled)) == {"east"}
    pinned_mark = len(pinned.lines)
    wait_until(lambda: len(pinned.errors()) > 0, what="local_only: no replica left")
    assert "east" not in answered_by(pinned, pinned_mark)
    assert tokens.errors() == []


def test_header_affinity_sends_a_session_to_one_replica(
    control_plane: ControlPlane,
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
) -> None:
    registry.put_server(
        name="tokens",
        hostnames=["tokens.local"],
        protocol="grpc",
        spec={"load_balancing": {"consistent_hash": {"header": "x-session"}}},
    )
    for name in ("a", "b", "c"):
        echo = replicas(name)
        registry.register_replica(server="tokens", address=echo.address, region="us-west")
    bootstrap = render_grpc(
        node_id="grpc-affinity", cluster="apps", region="us-west", xds=[control_plane.xds]
    )
    # One process, many sessions. It first calls until all three replicas have answered (so
    # all three are in its ring), then each session's calls, in order, name their replica.
    code = (
        "import grpc, json, time\n"
        "ch = grpc.insecure_channel('xds:///tokens.local')\n"
        "call = ch.unary_unary('/routeplane.sample.Echo/Unary')\n"
        "def ask(session):\n"
        "    reply = call(b'x', timeout=30, metadata=[('x-session', session)])\n"
        "    return reply.decode().split(':')[0]\n"
        "deadline, warm, i = time.monotonic() + 30, set(), 0\n"
        "while len(warm) < 3 and time.monotonic() < deadline:\n"
        "    warm.add(ask(f'warm{i}'))\n"
        "    i += 1\n"
        "seen = {f's{n}': [ask(f's{n}') for _ in range(5)] for n in range(12)}\n"
        "print(json.dumps({'warm': sorted(warm), 'seen': seen}))\n"
    )
    env = dict(os.environ, GRPC_XDS_BOOTSTRAP_CONFIG=bootstrap)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    assert outcome["warm"] == ["a", "b", "c"]
    for session, names in outcome["seen"].items():
        assert len(set(names)) == 1, f"session {session} moved: {names}"
    assert len({names[0] for names in outcome["seen"].values()}) > 1, outcome


metric_total = metric_sum


def listed_proxies(admin: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [ROUTEPLANE, "proxies", "--json", "--admin", admin],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    proxies: list[dict[str, Any]] = json.loads(result.stdout)
    return proxies


@pytest.mark.envoy
def test_a_mixed_fleet_of_envoys_and_grpc_clients_is_all_synced_with_no_nack(
    control_plane: ControlPlane,
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
    tmp_path: Path,
) -> None:
    west, east = replicas("west"), replicas("east")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    registry.put_server(
        name="chat",
        hostnames=["chat.local"],
        protocol="grpc",
        spec={"load_balancing": {"consistent_hash": {"header": "x-session"}}},
    )
    registry.put_server(name="web", hostnames=["web.local"], protocol="http")
    for name in ("tokens", "chat"):
        registry.register_replica(server=name, address=west.address, region="us-west")
        registry.register_replica(server=name, address=east.address, region="us-east")
    envoys = [
        Envoy.create(
            tmp_path, node_id="edge-sotw", region="us-west", xds=[control_plane.xds], ads="sotw"
        ),
        Envoy.create(tmp_path, node_id="edge-delta", region="us-east", xds=[control_plane.xds]),
    ]
    try:
        for envoy in envoys:
            envoy.start()
        grpc_west = clients("grpc-west", region="us-west")
        grpc_east = clients(
            "grpc-east", region="us-east", target="xds:///chat.local", headers=("x-session=s1",)
        )
        for envoy in envoys:
            envoy.wait_live()
        wait_until(lambda: "west" in answered_by(grpc_west), what="west client answered")
        wait_until(lambda: "east" in answered_by(grpc_east), what="east client answered")
        # Through each Envoy too: gRPC over its listener, on the same servers.
        for envoy, expected in zip(envoys, ("west", "east"), strict=True):
            with grpc.insecure_channel(
                envoy.listen, options=[("grpc.default_authority", "tokens.local")]
            ) as channel:
                reply = channel.unary_unary(UNARY)(b"x", timeout=10, wait_for_ready=True)
            assert reply.decode().split(":")[0] == expected

        def all_synced() -> bool:
            proxies = listed_proxies(control_plane.admin)
            if len(proxies) != 4:
                return False
            return all(t["state"] == "SYNCED" for p in proxies for t in p["types"].values())

        wait_until(all_synced, what="two Envoys and two gRPC clients all SYNCED")
        proxies = {p["node_id"]: p for p in listed_proxies(control_plane.admin)}
        assert {n: p["client"] for n, p in proxies.items()} == {
            "edge-sotw": "envoy",
            "edge-delta": "envoy",
            "grpc-west": "grpc",
            "grpc-east": "grpc",
        }
        assert sorted(proxies["grpc-west"]["types"]) == ["cds", "eds", "lds"]
        with grpc.insecure_channel(control_plane.xds) as channel:
            status = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
                csds_pb2.ClientStatusRequest(), timeout=10
            )
        [config] = [c for c in status.config if c.node.id == "grpc-west"]
        synced = csds_pb2.ConfigStatus.SYNCED
        assert {
            (e.type_url.rsplit(".", 1)[-1], e.name, e.config_status)
            for e in config.generic_xds_configs
        } == {
            ("Listener", "tokens.local", synced),
            ("Cluster", "default_tokens", synced),
            ("ClusterLoadAssignment", "default_tokens", synced),
        }
        assert metric_total(control_plane.admin, "routeplane_xds_nacks_total") == 0
        assert grpc_west.errors() == []
        assert grpc_east.errors() == []
    finally:
        for envoy in envoys:
            envoy.stop()


def test_a_name_that_is_no_grpc_server_does_not_exist_for_the_client(
    control_plane: ControlPlane,
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    echo = replicas("r1")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    registry.put_server(name="web", hostnames=["web.local"], protocol="http")
    registry.register_replica(server="tokens", address=echo.address, region="us-west")
    registry.register_replica(server="web", address=echo.address, region="us-west")
    # gRPC declares a never-seen resource absent after its own 15 s timer, not at once.
    web = clients("grpc-web", target="xds:///web.local", calls=1, timeout=60)
    nothing = clients("grpc-nothing", target="xds:///nothing.local", calls=1, timeout=60)
    good = clients("grpc-good", calls=1)

    def lds_of(node_id: str) -> dict[str, Any] | None:
        for proxy in listed_proxies(control_plane.admin):
            if proxy["node_id"] == node_id:
                types: dict[str, Any] = proxy["types"]
                return types.get("lds")
        return None

    for node_id, name in (("grpc-web", "web.local"), ("grpc-nothing", "nothing.local")):
        wait_until(
            lambda n=node_id: (lds_of(n) or {}).get("state") == "MISSING",  # type: ignore[misc]
            what=f"{node_id}'s LDS shown as MISSING",
        )
        lds = lds_of(node_id)
        assert lds is not None
        assert lds["missing"] == [name]
        assert lds["resources_sent"] == 0  # never someone else's listener
    # CSDS tells the same: the name it asked for does not exist.
    with grpc.insecure_channel(control_plane.xds) as channel:
        status = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
            csds_pb2.ClientStatusRequest(), timeout=10
        )
    [config] = [c for c in status.config if c.node.id == "grpc-web"]
    assert config.node.user_agent_name.startswith("gRPC")
    [entry] = [e for e in config.generic_xds_configs if e.type_url.endswith("Listener")]
    assert entry.name == "web.local"
    assert entry.client_status == config_dump_shared_pb2.ClientResourceStatus.DOES_NOT_EXIST
    assert good.wait() == 0
    for client, name in ((web, "web.local"), (nothing, "nothing.local")):
        assert client.wait(timeout=90) == 1
        [line] = client.lines
        assert line.startswith("error UNAVAILABLE")
        assert f"{name}: does not exist" in line
    assert metric_total(control_plane.admin, "routeplane_xds_nacks_total") == 0


def test_grpc_clients_report_their_load(
    control_plane: ControlPlane,
    registry: Registry,
    replicas: Callable[[str], GrpcEchoThread],
    clients: Callable[..., GrpcClient],
) -> None:
    echo = replicas("r1")
    registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
    registry.register_replica(server="tokens", address=echo.address, region="us-west")
    client = clients("grpc-load", interval=0.05)

    def requests_per_second() -> float:
        result = subprocess.run(
            [ROUTEPLANE, "load", "--json", "--admin", control_plane.admin],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        rows = json.loads(result.stdout)
        return sum(
            r["requests_per_second"]
            for r in rows
            if r["server"] == "tokens" and r["region"] == "us-west"
        )

    # No Envoy anywhere: the load counted is the gRPC client's own report (LRS). The known
    # answer is what the client really made: one line per reply, counted over the last 2 s.
    marks: list[tuple[float, int]] = []
    samples: list[tuple[float, float]] = []

    def matches_what_was_made() -> bool:
        marks.append((time.monotonic(), len(client.lines)))
        reported = requests_per_second()
        now, made = marks[-1]
        earlier = [(at, count) for at, count in marks if now - at >= 2.0]
        if not earlier:
            return False
        since, before = earlier[-1]
        achieved = (made - before) / (now - since)
        samples.append((round(reported, 1), round(achieved, 1)))
        recent = samples[-3:]
        return len(recent) == 3 and all(
            achieved > 0 and abs(reported - achieved) <= 0.1 * achieved
            for reported, achieved in recent
        )

    try:
        wait_until(matches_what_was_made, timeout=30, interval=0.5, what="the rate reported")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; (reported, made) per second: {samples}") from None
    assert client.errors() == []


def test_grpc_bootstrap_over_mtls_and_node_authorization(
    tmp_path: Path, replicas: Callable[[str], GrpcEchoThread]
) -> None:
    certs = tmp_path / "certs"
    dev_certs(certs, clusters=["apps", "other"])
    cp = ControlPlane.create(
        tmp_path,
        extra=[
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(certs / "server-key.pem"),
            "--client-ca",
            str(certs / "ca.pem"),
        ],
    )
    cp.start()
    try:
        cp.wait_ready()
        registry = open_registry(cp.registry)
        registry.put_server(name="tokens", hostnames=["tokens.local"], protocol="grpc")
        registry.register_replica(server="tokens", address=replicas("r1").address, region="us-west")
        registry.close()

        def call_as(fleet: str, certificate: str) -> subprocess.CompletedProcess[str]:
            bootstrap = subprocess.run(
                [
                    ROUTEPLANE,
                    "bootstrap",
                    "--grpc",
                    "--node-id",
                    f"grpc-{certificate}",
                    "--cluster",
                    fleet,
                    "--region",
                    "us-west",
                    "--xds",
                    cp.xds,
                    "--tls-cert",
                    str(certs / f"client-{certificate}.pem"),
                    "--tls-key",
                    str(certs / f"client-{certificate}-key.pem"),
                    "--ca",
                    str(certs / "ca.pem"),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            document = json.loads(bootstrap)
            assert document["xds_servers"][0]["channel_creds"][0]["type"] == "tls"
            assert document["certificate_providers"]["routeplane"]["plugin_name"] == "file_watcher"
            path = tmp_path / f"grpc-{certificate}.json"
            path.write_text(bootstrap)
            return subprocess.run(
                [
                    ROUTEPLANE,
                    "samples",
                    "grpc-client",
                    "--bootstrap",
                    str(path),
                    "--target",
                    TOKENS,
                    "--timeout",
                    "20",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        allowed = call_as("apps", "apps")
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr[-2000:]
        assert allowed.stdout == "r1:hello\n"
        # A certificate for fleet "other" gets no configuration of fleet "apps".
        denied = call_as("apps", "other")
        assert denied.returncode == 1
        assert "PERMISSION_DENIED" in denied.stdout
        assert "allows node cluster(s) ['other'], not 'apps'" in denied.stdout
    finally:
        cp.stop()
