"""What gRPC's own xDS client gets: API listeners, a policy list it can use, locality weights."""

from __future__ import annotations

from dataclasses import replace

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.registry.spec import parse_spec
from control_plane.translate import ProxyView, to_resources
from control_plane.translate.api_listeners import to_api_listeners
from control_plane.translate.clusters import to_cluster
from control_plane.translate.endpoints import to_load_assignment
from control_plane.xds.resources import LISTENER, ROUTE
from harness.models import endpoint, server, table

GRPC_VIEW = ProxyView(region="us-west", listen_host="", listen_port=0, kind="grpc")


def manager_of(listener: object) -> hcm_pb2.HttpConnectionManager:
    manager = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(manager)  # type: ignore[attr-defined]
    return manager


def test_only_exact_grpc_and_http2_hostnames_get_an_api_listener_named_as_the_target() -> None:
    listeners = to_api_listeners(
        [
            server(
                "tokens",
                endpoint("r1", 9000),
                protocol="grpc",
                hostnames=("tokens.local", "*.tokens.dev"),
            ),
            server("h2", endpoint("r2", 9001), protocol="http2"),
            server("web", endpoint("r3", 8080), protocol="http"),
        ]
    )
    assert sorted(listeners) == ["h2.local", "tokens.local"]
    manager = manager_of(listeners["tokens.local"])
    assert manager.route_config.virtual_hosts[0].domains == ["tokens.local"]
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert manager.route_config.virtual_hosts[0].routes[0].route.cluster == "default_tokens"


def test_grpc_routes_use_plain_prefixes_no_retry_policy_and_keep_the_header_hash() -> None:
    tokens = replace(
        server("tokens", endpoint("r1", 9000), protocol="grpc"),
        spec=parse_spec(
            {
                "path_prefix": "/tokens.Tokens",
                "retries": 2,
                "load_balancing": {"consistent_hash": {"header": "x-session"}},
            },
            protocol="grpc",
        ),
    )
    [route] = (
        manager_of(to_api_listeners([tokens])["tokens.local"]).route_config.virtual_hosts[0].routes
    )
    assert route.match.prefix == "/tokens.Tokens/"
    assert not route.route.HasField("retry_policy")
    assert route.route.hash_policy[0].header.header_name == "x-session"


def test_a_grpc_view_gets_api_listeners_and_no_route_configuration() -> None:
    resources = to_resources(
        table(
            server("tokens", endpoint("r1", 9000), protocol="grpc"),
            server("web", endpoint("r2", 8080)),
        ),
        GRPC_VIEW,
    )
    assert [r.name for r in resources if r.type_url == LISTENER] == ["tokens.local"]
    assert [r for r in resources if r.type_url == ROUTE] == []


def test_cluster_policies_list_envoys_choice_first_and_grpcs_next() -> None:
    plain = to_cluster(server("tokens", endpoint("r1", 9000), protocol="grpc"))
    assert [p.typed_extension_config.name for p in plain.load_balancing_policy.policies] == [
        "envoy.load_balancing_policies.least_request",
        "envoy.load_balancing_policies.wrr_locality",
    ]
    hashed = to_cluster(
        replace(
            server("chat", endpoint("r1", 9000)),
            spec=parse_spec({"load_balancing": {"consistent_hash": {"header": "x-session"}}}),
        )
    )
    assert [p.typed_extension_config.name for p in hashed.load_balancing_policy.policies] == [
        "envoy.load_balancing_policies.maglev",
        "envoy.load_balancing_policies.ring_hash",
    ]


def test_every_locality_has_a_weight_above_zero_the_sum_of_its_replicas() -> None:
    tokens = server(
        "tokens",
        endpoint("r1", 9000, weight=30),
        endpoint("r2", 9001, weight=70),
        endpoint("r3", 9002, region="us-east", draining=True, weight=1),
        protocol="grpc",
    )
    assignment = to_load_assignment(tokens, region="us-west")
    weights = {
        locality.locality.region: locality.load_balancing_weight.value
        for locality in assignment.endpoints
    }
    assert weights == {"us-west": 100, "us-east": 1}
