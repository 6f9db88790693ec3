"""End to end with a real Envoy: registry row -> control plane -> Envoy routes a request.

Writes go through the ``routeplane`` CLI as a user would type them; convergence is asserted by
requests through Envoy and by Envoy's own admin pages. Both ADS variants.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.dev.samples.http_echo import EchoThread
from harness.processes import ControlPlane, Envoy, routeplane
from harness.waiting import wait_until

pytestmark = pytest.mark.envoy
HOST = "echo.local"


@pytest.fixture(params=["delta", "sotw"])
def envoy(
    request: pytest.FixtureRequest, control_plane: ControlPlane, tmp_path: Path
) -> Iterator[Envoy]:
    proxy = Envoy.create(
        tmp_path,
        node_id=f"edge-{request.param}",
        region="us-west",
        xds=[control_plane.xds],
        ads=request.param,
    )
    proxy.start()
    try:
        proxy.wait_live()
        yield proxy
    finally:
        proxy.stop()


def answered_by(envoy: Envoy, name: str) -> bool:
    return envoy.get(host=HOST) == (200, f"{name}\n")


def health_flags(envoy: Envoy, port: int) -> str:
    for line in envoy.admin_get("/clusters").splitlines():
        if line.startswith(f"default_echo::127.0.0.1:{port}::health_flags::"):
            return line.rsplit("::", 1)[1]
    return "absent"


def endpoints_in_config_dump(envoy: Envoy) -> list[tuple[int, str]]:
    dump = json.loads(envoy.admin_get("/config_dump?include_eds"))
    out = []
    for config in dump["configs"]:
        for entry in config.get("dynamic_endpoint_configs", []):
            for locality in entry["endpoint_config"].get("endpoints", []):
                for lb in locality.get("lb_endpoints", []):
                    port = lb["endpoint"]["address"]["socket_address"]["port_value"]
                    out.append((port, lb.get("health_status", "UNKNOWN")))
    return sorted(out)


def test_envoy_follows_register_drain_deregister_without_restarting(
    control_plane: ControlPlane, envoy: Envoy, echo_factory: Callable[[str], EchoThread]
) -> None:
    reg = control_plane.registry
    first, second = echo_factory("replica-a"), echo_factory("replica-b")
    routeplane("servers", "create", "echo", "--host", HOST, "--protocol", "http", registry=reg)
    # No replica yet: the cluster exists, nothing can answer.
    wait_until(lambda: envoy.get(host=HOST)[0] == 503, what="503 with no replica")

    a_id = routeplane(
        "replicas",
        "register",
        "echo",
        "--address",
        first.address,
        "--region",
        "us-west",
        registry=reg,
    ).stdout.strip()
    wait_until(lambda: answered_by(envoy, "replica-a"), what="routing to replica-a")
    assert endpoints_in_config_dump(envoy) == [(first.port, "HEALTHY")]

    # A request in flight on replica-a while it drains must finish on replica-a.
    in_flight: dict[str, tuple[int, str]] = {}
    slow = threading.Thread(
        target=lambda: in_flight.update(result=envoy.get("/slow?ms=5000", host=HOST, timeout=20))
    )
    slow.start()
    wait_until(
        lambda: envoy.stat("cluster.default_echo.upstream_rq_active") == 1,
        what="the slow request to be in flight",
    )
    b_id = routeplane(
        "replicas",
        "register",
        "echo",
        "--address",
        second.address,
        "--region",
        "us-west",
        registry=reg,
    ).stdout.strip()
    routeplane("replicas", "drain", a_id, registry=reg)
    wait_until(
        lambda: health_flags(envoy, first.port) == "/eds_status_draining",
        what="replica-a draining in Envoy",
    )
    # Still in flight when the drain reached Envoy: what follows tests a request that
    # outlives the drain, not one that had already finished.
    assert slow.is_alive()
    assert envoy.stat("cluster.default_echo.upstream_rq_active") == 1
    for _ in range(20):
        assert answered_by(envoy, "replica-b")
    slow.join(timeout=20)
    assert in_flight["result"] == (200, "replica-a\n")
    # config_dump shows the coarse health of a draining host; /clusters (above) the EDS flag.
    dumped = dict(endpoints_in_config_dump(envoy))
    assert set(dumped) == {first.port, second.port}
    assert dumped[second.port] == "HEALTHY"
    assert dumped[first.port] != "HEALTHY"

    routeplane("replicas", "deregister", a_id, registry=reg)
    routeplane("replicas", "deregister", b_id, registry=reg)
    wait_until(
        lambda: envoy.get(host=HOST) == (503, "server echo has no ready replica; retry in 1s\n"),
        what="503 (cold start: reject) once every replica is gone",
    )
    assert endpoints_in_config_dump(envoy) == []

    routeplane(
        "replicas",
        "register",
        "echo",
        "--address",
        first.address,
        "--region",
        "us-west",
        registry=reg,
    )
    wait_until(lambda: answered_by(envoy, "replica-a"), what="routing to the re-registered one")

    # Same process all along; the listener was sent once and never changed.
    assert envoy.alive()
    assert envoy.stat("listener_manager.lds.update_success") >= 1
    assert envoy.stat("listener_manager.listener_modified") == 0
    assert envoy.stat("listener_manager.listener_added") == 1
    assert envoy.stat("cluster_manager.cds.update_rejected") == 0
    assert envoy.stat("cluster_manager.cds.update_success") >= 1


def test_unknown_hosts_get_404_and_a_second_server_routes_alongside(
    control_plane: ControlPlane, envoy: Envoy, echo_factory: Callable[[str], EchoThread]
) -> None:
    reg = control_plane.registry
    echo, api = echo_factory("echo-1"), echo_factory("api-1")
    routeplane("servers", "create", "echo", "--host", HOST, registry=reg)
    routeplane(
        "servers", "create", "api", "--host", "api.local", "--host", "*.api.dev", registry=reg
    )
    routeplane(
        "replicas",
        "register",
        "echo",
        "--address",
        echo.address,
        "--region",
        "us-west",
        registry=reg,
    )
    routeplane(
        "replicas", "register", "api", "--address", api.address, "--region", "us-west", registry=reg
    )
    wait_until(lambda: answered_by(envoy, "echo-1"), what="echo routed")
    wait_until(lambda: envoy.get(host="api.local") == (200, "api-1\n"), what="api routed")
    assert envoy.get(host="v2.api.dev") == (200, "api-1\n")
    assert envoy.get(host="nobody.local")[0] == 404
    # Changing one server's replicas leaves the other's endpoints alone.
    before = envoy.stat("cluster.default_echo.update_success")
    routeplane(
        "replicas",
        "register",
        "api",
        "--address",
        echo.address,
        "--region",
        "us-west",
        registry=reg,
    )
    wait_until(
        lambda: envoy.stat("cluster.default_api.membership_total") == 2,
        what="api has two endpoints",
    )
    assert envoy.stat("cluster.default_echo.update_success") == before
