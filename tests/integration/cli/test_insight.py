"""Insight from the CLI, CSDS and /metrics against a running control plane and real Envoys."""

from __future__ import annotations

import json
import queue
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.rpc import status_pb2

from control_plane.admin.protos import PROTOS, Proto, generate
from control_plane.dev.samples.http_echo import EchoThread
from control_plane.registry import open_registry
from harness.processes import ROUTEPLANE, ControlPlane, Envoy, http_get, metric_sum
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy


def cli(*args: str, admin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROUTEPLANE, *args, "--admin", admin],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


def cli_json(*args: str, admin: str) -> object:
    result = cli(*args, "--json", admin=admin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


metric = metric_sum


@pytest.fixture
def envoys(control_plane: ControlPlane, tmp_path: Path) -> Iterator[list[Envoy]]:
    proxies = [
        Envoy.create(tmp_path, node_id=f"edge-{i}", region="us-west", xds=[control_plane.xds])
        for i in range(2)
    ]
    try:
        for proxy in proxies:
            proxy.start()
        for proxy in proxies:
            proxy.wait_live()
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()


TYPES = ("cds", "eds", "lds", "rds")


def all_synced(admin: str, count: int) -> bool:
    proxies = cli_json("proxies", admin=admin)
    assert isinstance(proxies, list)
    return len(proxies) == count and all(
        t["state"] == "SYNCED" for p in proxies for t in p["types"].values()
    )


def test_proxies_show_synced_and_diff_shows_the_one_change(
    control_plane: ControlPlane, envoys: list[Envoy], echo_factory: Callable[[str], EchoThread]
) -> None:
    admin = control_plane.admin
    registry = open_registry(control_plane.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.create_server(name="api", hostnames=["api.local"], protocol="http")
    first = registry.register_replica(
        server="echo", address=echo_factory("a").address, region="us-west"
    )
    wait_until(
        lambda: all(e.get(host="echo.local") == (200, "a\n") for e in envoys), what="routing"
    )
    wait_until(lambda: all_synced(admin, 2), what="both proxies SYNCED")
    group = envoys[0].listen and f"edge/us-west@{envoys[0].listen}"
    before = cli_json("snapshot", "show", "--node-group", group, admin=admin)
    assert isinstance(before, dict)
    assert {r["type"] for r in before["resources"]} == {"cds", "eds", "lds", "rds"}

    eds_acks = metric(admin, "routeplane_convergence_seconds_count", type="eds")
    registry.set_replica_state(first.id, "DRAINING")
    wait_until(
        lambda: metric(admin, "routeplane_convergence_seconds_count", type="eds") >= eds_acks + 2,
        what="one convergence observation per proxy",
    )
    wait_until(lambda: all_synced(admin, 2), what="SYNCED again")
    assert metric(admin, "routeplane_convergence_seconds_count", type="eds") == eds_acks + 2
    diff = cli_json(
        "snapshot", "diff", "--node-group", group, "--from", before["version"], admin=admin
    )
    assert isinstance(diff, dict)
    assert [(c["change"], c["type"], c["name"]) for c in diff["changes"]] == [
        ("changed", "eds", "default_echo")
    ]
    history = cli_json("snapshot", "history", "--node-group", group, admin=admin)
    assert isinstance(history, list)
    assert history[-1]["cause"].endswith("servers echo")
    human = cli("proxies", admin=admin)
    assert "edge-0" in human.stdout
    assert "SYNCED" in human.stdout
    registry.close()


def test_a_nacking_proxy_shows_nacked_with_its_message(
    control_plane: ControlPlane, echo_factory: Callable[[str], EchoThread]
) -> None:
    admin = control_plane.admin
    registry = open_registry(control_plane.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    node = base_pb2.Node(
        id="broken-proxy", cluster="edge", locality=base_pb2.Locality(region="us-west")
    )
    requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
    cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=cds))
    try:
        with grpc.insecure_channel(control_plane.xds) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            stream = stub.StreamAggregatedResources(iter(requests.get, None))
            response = next(stream)
            while not response.resources:  # the server may not have seen `echo` yet
                requests.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=cds,
                        response_nonce=response.nonce,
                        version_info=response.version_info,
                    )
                )
                response = next(stream)
            requests.put(
                discovery_pb2.DiscoveryRequest(
                    type_url=cds,
                    response_nonce=response.nonce,
                    error_detail=status_pb2.Status(
                        code=3, message="cluster default_echo: bad field"
                    ),
                )
            )
            wait_until(lambda: _state(admin, "broken-proxy") == "NACKED", what="NACKED shown")
            proxies = cli_json("proxies", admin=admin)
            assert isinstance(proxies, list)
            [broken] = [p for p in proxies if p["node_id"] == "broken-proxy"]
            assert broken["types"]["cds"]["last_error"] == "cluster default_echo: bad field"
            assert broken["types"]["cds"]["nacks"] == 1
            human = cli("proxies", admin=admin)
            assert "last NACK broken-proxy cds: cluster default_echo: bad field" in human.stdout
            csds = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
                csds_pb2.ClientStatusRequest(), timeout=5
            )
            [config] = [c for c in csds.config if c.node.id == "broken-proxy"]
            [entry] = list(config.generic_xds_configs)
            assert entry.config_status == csds_pb2.ConfigStatus.ERROR
            assert entry.error_state.details == "cluster default_echo: bad field"
    finally:
        requests.put(None)
        registry.close()


def _state(admin: str, node_id: str) -> str:
    proxies = cli_json("proxies", admin=admin)
    assert isinstance(proxies, list)
    for proxy in proxies:
        if proxy["node_id"] == node_id and "cds" in proxy["types"]:
            return str(proxy["types"]["cds"]["state"])
    return ""


def test_csds_returns_every_proxys_status(
    control_plane: ControlPlane, envoys: list[Envoy], echo_factory: Callable[[str], EchoThread]
) -> None:
    registry = open_registry(control_plane.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.register_replica(server="echo", address=echo_factory("a").address, region="us-west")
    wait_until(lambda: all_synced(control_plane.admin, 2), what="SYNCED")
    with grpc.insecure_channel(control_plane.xds) as channel:
        response = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel).FetchClientStatus(
            csds_pb2.ClientStatusRequest(), timeout=5
        )
    assert sorted(c.node.id for c in response.config) == ["edge-0", "edge-1"]
    for config in response.config:
        kinds = {e.type_url.rsplit(".", 1)[-1] for e in config.generic_xds_configs}
        assert kinds == {"Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"}
        assert all(
            e.config_status == csds_pb2.ConfigStatus.SYNCED for e in config.generic_xds_configs
        )
    registry.close()


def test_a_control_plane_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    from harness.waiting import free_port

    result = cli("proxies", admin=f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: no control plane answering at 127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_metrics_health_and_readiness_answer(control_plane: ControlPlane) -> None:
    assert http_get(f"http://{control_plane.admin}/healthz") == (200, "ok\n")
    assert http_get(f"http://{control_plane.admin}/readyz")[0] == 200
    text = http_get(f"http://{control_plane.admin}/metrics")[1]
    for name in (
        "routeplane_registry_problems",
        "routeplane_registry_degraded",
        "routeplane_snapshot_build_seconds",
        "routeplane_registry_watch_lag_seconds",
    ):
        assert name in text


@pytest.mark.parametrize("proto", PROTOS, ids=lambda proto: proto.stem)
def test_generated_grpc_code_is_up_to_date(tmp_path: Path, proto: Proto) -> None:
    """The admin API's and KEDA's external scaler's generated code, as committed."""
    for path in generate(tmp_path, proto):
        assert path.read_text() == (proto.out / path.name).read_text(), (
            f"{path.name} is stale: run `make protos`"
        )


def test_a_huge_argument_is_echoed_short_in_a_one_line_error(
    control_plane: ControlPlane,
) -> None:
    huge = "g" * 100_000
    for args in (
        ("snapshot", "show", "--node-group", huge),
        ("snapshot", "diff", "--node-group", huge, "--from", "x"),
        ("snapshot", "show", "--node", huge),
    ):
        result = cli(*args, admin=control_plane.admin)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ")
        assert "more)" in line, line
        assert len(line) < 400, line


def test_problems_lists_a_bad_row_by_field_and_value(control_plane: ControlPlane) -> None:
    import sqlite3
    import time

    registry = open_registry(control_plane.registry)
    registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
    registry.close()
    path = control_plane.registry.removeprefix("sqlite://")
    with sqlite3.connect(path) as db:  # as another writer of the registry would
        db.execute(
            "INSERT INTO replicas VALUES ('r-bad', 'echo', 'localhost', 'abc', 'us-west', '',"
            " 100, 'READY', NULL, ?, NULL, NULL)",
            (time.time(),),
        )
        revision = int(db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()[0])
        db.execute("UPDATE meta SET value=? WHERE key='revision'", (revision + 1,))
        db.execute("INSERT INTO changes VALUES (?, 'echo')", (revision + 1,))
    problems = wait_until(
        lambda: cli_json("problems", admin=control_plane.admin), what="the problem reported"
    )
    assert problems == [
        {
            "kind": "replica",
            "name": "r-bad",
            "field": "address",
            "value": "localhost",
            "message": "expected an IP address (resolve names before registering)",
        }
    ]
    table = cli("problems", admin=control_plane.admin)
    assert table.returncode == 0
    assert "r-bad" in table.stdout
    assert "localhost" in table.stdout


def test_the_initial_sync_is_not_counted_as_convergence(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    admin = control_plane.admin
    registry = open_registry(control_plane.registry)
    # A registry with history: the snapshots proxies first receive carry a real commit time.
    registry.create_server(name="first", hostnames=["first.local"], protocol="http")
    proxies = [
        Envoy.create(tmp_path, node_id=f"late-{i}", region="us-west", xds=[control_plane.xds])
        for i in range(2)
    ]
    try:
        for proxy in proxies:
            proxy.start()
        for proxy in proxies:
            proxy.wait_live()
        wait_until(lambda: all_synced(admin, len(proxies)), what="initial sync")
        counts = {t: metric(admin, "routeplane_convergence_seconds_count", type=t) for t in TYPES}
        assert counts == dict.fromkeys(TYPES, 0.0)  # connecting is not a change
        registry.create_server(name="echo", hostnames=["echo.local"], protocol="http")
        wait_until(
            lambda: metric(admin, "routeplane_convergence_seconds_count", type="cds") == 2,
            what="one CDS convergence per proxy",
        )
        wait_until(lambda: all_synced(admin, len(proxies)), what="synced after the change")
        assert metric(admin, "routeplane_convergence_seconds_count", type="cds") == 2
        assert metric(admin, "routeplane_convergence_seconds_count", type="lds") == 0
    finally:
        registry.close()
        for proxy in proxies:
            proxy.stop()
