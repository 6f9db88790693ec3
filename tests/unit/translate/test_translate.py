"""Translation: names are pinned, listeners never change with routing, changes stay local."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2

from control_plane.translate import ProxyView, names, to_resources
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from harness.models import endpoint, server, table

VIEW = ProxyView(region="us-west", listen_host="127.0.0.1", listen_port=10000)


def by_type(resources: list) -> dict[str, dict[str, object]]:  # type: ignore[type-arg]
    out: dict[str, dict[str, object]] = {}
    for r in resources:
        out.setdefault(r.type_url, {})[r.name] = r
    return out


def test_resource_names_are_pinned() -> None:
    assert names.LISTENER == "ingress_http"
    assert names.ROUTE_CONFIG == "ingress_http"
    assert names.cluster(workspace="default", server="echo") == "default_echo"
    assert names.virtual_host(hostname="*.chat.dev") == "*.chat.dev"
    assert names.route(workspace="acme", server="chat", variant="websocket") == (
        "acme_chat/websocket"
    )


def test_listener_bytes_never_change_with_servers_or_replicas() -> None:
    states = [
        table(),
        table(server("echo", endpoint("r1", 8081))),
        table(server("echo", endpoint("r1", 8081, draining=True)), server("api", protocol="grpc")),
    ]
    listeners = {by_type(to_resources(s, VIEW))[LISTENER]["ingress_http"].any_bytes for s in states}
    assert len(listeners) == 1


def test_one_replica_change_touches_only_that_servers_endpoints() -> None:
    before = by_type(
        to_resources(
            table(server("echo", endpoint("r1", 8081)), server("api", endpoint("r2", 8082))), VIEW
        )
    )
    after = by_type(
        to_resources(
            table(
                server("echo", endpoint("r1", 8081)),
                server("api", endpoint("r2", 8082), endpoint("r3", 8083)),
            ),
            VIEW,
        )
    )
    changed = {
        (type_url, name)
        for type_url, resources in after.items()
        for name, resource in resources.items()
        if before[type_url][name].version != resource.version  # type: ignore[attr-defined]
    }
    assert changed == {(ENDPOINT, "default_api")}


def test_one_server_change_touches_only_its_cluster_and_the_route_table() -> None:
    before = by_type(to_resources(table(server("echo"), server("api")), VIEW))
    after = by_type(to_resources(table(server("echo"), server("api", protocol="grpc")), VIEW))
    changed = {
        (type_url, name)
        for type_url, resources in after.items()
        for name, resource in resources.items()
        if before[type_url][name].version != resource.version  # type: ignore[attr-defined]
    }
    assert changed == {(CLUSTER, "default_api"), (ROUTE, "ingress_http")}


def test_draining_replicas_are_sent_as_draining() -> None:
    resources = by_type(
        to_resources(
            table(server("echo", endpoint("r1", 8081), endpoint("r2", 8082, draining=True))), VIEW
        )
    )
    assignment = resources[ENDPOINT]["default_echo"].message  # type: ignore[attr-defined]
    statuses = {
        lb.endpoint.address.socket_address.port_value: lb.health_status
        for locality in assignment.endpoints
        for lb in locality.lb_endpoints
    }
    assert statuses == {8081: health_check_pb2.HEALTHY, 8082: health_check_pb2.DRAINING}


def test_http2_and_grpc_servers_speak_http2_upstream() -> None:
    resources = by_type(to_resources(table(server("g", protocol="grpc"), server("h")), VIEW))
    grpc_cluster = resources[CLUSTER]["default_g"].message  # type: ignore[attr-defined]
    http_cluster = resources[CLUSTER]["default_h"].message  # type: ignore[attr-defined]
    assert grpc_cluster.typed_extension_protocol_options
    assert not http_cluster.typed_extension_protocol_options
    assert grpc_cluster.type == cluster_pb2.Cluster.EDS


def test_one_virtual_host_per_hostname() -> None:
    resources = by_type(
        to_resources(table(server("echo", hostnames=("echo.local", "*.echo.dev"))), VIEW)
    )
    config = resources[ROUTE]["ingress_http"].message  # type: ignore[attr-defined]
    assert [(v.name, list(v.domains)) for v in config.virtual_hosts] == [
        ("*.echo.dev", ["*.echo.dev"]),
        ("echo.local", ["echo.local"]),
    ]


def test_translation_is_deterministic() -> None:
    first = to_resources(table(server("echo", endpoint("r1", 8081))), VIEW)
    second = to_resources(table(server("echo", endpoint("r1", 8081))), VIEW)
    assert [(r.name, r.version, r.any_bytes) for r in first] == [
        (r.name, r.version, r.any_bytes) for r in second
    ]


def test_priorities_follow_the_proxy_region_and_zone() -> None:
    from control_plane.translate.endpoints import level

    same_zone = endpoint("a", 1, region="us-west", zone="a")
    other_zone = endpoint("b", 2, region="us-west", zone="b")
    no_zone = endpoint("c", 3, region="us-west")
    remote = endpoint("d", 4, region="us-east", zone="a")
    cases = [
        ("us-west", "a", [0, 1, 0, 2]),
        ("us-west", "", [0, 0, 0, 2]),
        ("", "", [0, 0, 0, 0]),
    ]
    for region, zone, expected in cases:
        got = [level(e, region=region, zone=zone) for e in (same_zone, other_zone, no_zone, remote)]
        assert got == expected, (region, zone)


def test_no_ready_replica_drops_every_request_as_a_cold_start() -> None:
    from envoy.config.endpoint.v3 import endpoint_pb2

    for endpoints in ((), (endpoint("r1", 8081, draining=True),)):
        cla = endpoint_pb2.ClusterLoadAssignment()
        resources = by_type(to_resources(table(server("echo", *endpoints)), VIEW))
        cla.ParseFromString(resources[ENDPOINT]["default_echo"].message.SerializeToString())
        [drop] = cla.policy.drop_overloads
        assert drop.category == names.COLD_START_CATEGORY
        assert drop.drop_percentage.numerator == 100
    ready = by_type(to_resources(table(server("echo", endpoint("r1", 8081))), VIEW))
    assert not ready[ENDPOINT]["default_echo"].message.policy.drop_overloads


def test_a_held_server_routes_to_its_cold_name_through_the_on_demand_filter() -> None:
    from dataclasses import replace

    from control_plane.registry.spec import ColdStart, ServerSpec

    spec = ServerSpec(cold_start=ColdStart(mode="hold", timeout=12.0))
    held = replace(server("gpu"), spec=spec, held=True, cold_epoch=7)
    resources = by_type(to_resources(table(held), VIEW))
    assert "default_gpu_cold7" not in resources.get(CLUSTER, {})
    assert "default_gpu_cold7" not in resources.get(ENDPOINT, {})
    route = resources[ROUTE]["ingress_http"].message
    assert not route.validate_clusters.value
    routes = [r for vh in route.virtual_hosts for r in vh.routes]  # websocket and default
    assert len(routes) == 2
    for action in routes:
        assert action.route.cluster == "default_gpu_cold7"
        assert "envoy.filters.http.on_demand" in action.typed_per_filter_config
    warm = by_type(to_resources(table(replace(held, held=False)), VIEW))
    warm_routes = [r for vh in warm[ROUTE]["ingress_http"].message.virtual_hosts for r in vh.routes]
    assert {r.route.cluster for r in warm_routes} == {"default_gpu_cold7"}
    assert not any(r.typed_per_filter_config for r in warm_routes)
