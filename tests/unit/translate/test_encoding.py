"""Resources encoded straight to bytes equal what the protobuf library serializes.

ClusterLoadAssignments and the RouteConfiguration are joined from pre-encoded pieces (each
endpoint's LbEndpoint, each server's routes) instead of being built as messages: here each is
checked, byte for byte, against the message built with the protobuf library and serialized
with ``SerializeToString(deterministic=True)``; and an encoding updated from a previous one
equals an encoding from scratch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.type.v3 import percent_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.registry.spec import parse_spec
from control_plane.routing.model import Endpoint, RoutedServer
from control_plane.translate import names
from control_plane.translate.clusters import to_cluster
from control_plane.translate.endpoints import (
    encode_endpoints,
    encode_load_assignment,
    level,
    locality_weight,
)
from control_plane.translate.routes import encode_route_configuration, to_routes
from control_plane.xds.resources import ENDPOINT, content_hash, encoded_resource, to_resource
from harness.models import endpoint, server

HOSTS = [
    "127.0.0.1",
    "10.20.30.40",
    "::1",
    "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff",
    "fe80::1",
    "h" * 130,  # no address, but lengths past one byte take the encoder's general path
]
REGIONS = ["us-west", "us-east", "eu-central"]
ZONES = ["", "a", "b"]

endpoints_st = st.lists(
    st.builds(
        lambda i, host, port, region, zone, weight, draining: Endpoint(
            replica_id=f"r{i:03d}",
            host=host,
            port=port,
            region=region,
            zone=zone,
            weight=weight,
            draining=draining,
        ),
        st.integers(0, 999),
        st.sampled_from(HOSTS),
        st.sampled_from([0, 1, 127, 128, 8080, 16383, 16384, 65535]),
        st.sampled_from(REGIONS),
        st.sampled_from(ZONES),
        st.sampled_from([0, 1, 100, 127, 128, 10_000]),
        st.booleans(),
    ),
    max_size=30,
    unique_by=lambda e: e.replica_id,
).map(lambda eps: tuple(sorted(eps, key=lambda e: e.replica_id)))

SPECS = [
    {},
    {"failover": "local_only"},
    {"load_balancing": {"consistent_hash": {"header": "x-session"}}},
    {"path_prefix": "/v1", "retries": 0, "timeouts": {"request": "5s", "max_stream": "90s"}},
    {"cold_start": {"mode": "hold", "timeout": "5s"}},
    {"load_balancing": {"consistent_hash": {"cookie": "sid", "ttl": "1h"}}},
]


def _server(eps: tuple[Endpoint, ...], spec: dict, protocol: str = "http") -> RoutedServer:  # type: ignore[type-arg]
    return replace(
        server("chat", *eps, protocol=protocol), spec=parse_spec(spec, protocol=protocol)
    )


def reference_load_assignment(
    server: RoutedServer, *, region: str, zone: str
) -> endpoint_pb2.ClusterLoadAssignment:
    """The ClusterLoadAssignment built as a message, field by field."""
    assignment = endpoint_pb2.ClusterLoadAssignment(
        cluster_name=names.cluster(
            workspace=server.workspace, server=server.name, epoch=server.cold_epoch
        )
    )
    by_locality: dict[tuple[int, str, str], list[Endpoint]] = defaultdict(list)
    for e in server.endpoints:
        rank = level(e, region=region, zone=zone)
        if rank == 2 and not server.spec.cross_region:
            continue
        by_locality[(rank, e.region, e.zone)].append(e)
    if not any(not e.draining for group in by_locality.values() for e in group):
        drop = assignment.policy.drop_overloads.add(category=names.COLD_START_CATEGORY)
        drop.drop_percentage.numerator = 100
        drop.drop_percentage.denominator = percent_pb2.FractionalPercent.HUNDRED
    priorities = {rank: i for i, rank in enumerate(sorted({key[0] for key in by_locality}))}
    for (rank, ep_region, ep_zone), eps in sorted(by_locality.items()):
        locality = assignment.endpoints.add()
        locality.locality.CopyFrom(base_pb2.Locality(region=ep_region, zone=ep_zone))
        locality.priority = priorities[rank]
        locality.load_balancing_weight.value = locality_weight(
            eps, hashed=server.spec.hash_on is not None
        )
        for e in eps:
            lb = locality.lb_endpoints.add()
            lb.health_status = (
                health_check_pb2.HealthStatus.DRAINING
                if e.draining
                else health_check_pb2.HealthStatus.HEALTHY
            )
            lb.load_balancing_weight.value = e.weight
            socket = lb.endpoint.address.socket_address
            socket.address = e.host
            socket.port_value = e.port
    return assignment


VIEWS = [("", ""), ("us-west", ""), ("us-west", "a"), ("eu-central", "b")]


@settings(max_examples=150, deadline=None)
@given(eps=endpoints_st, spec=st.sampled_from(SPECS))
def test_load_assignment_bytes_equal_the_protobuf_serialization(
    eps: tuple[Endpoint, ...],
    spec: dict,  # type: ignore[type-arg]
) -> None:
    routed = _server(eps, spec)
    for region, zone in VIEWS:
        expected = reference_load_assignment(routed, region=region, zone=zone)
        got = encode_load_assignment(routed, region=region, zone=zone)
        assert got == expected.SerializeToString(deterministic=True), (region, zone)


@settings(max_examples=150, deadline=None)
@given(before=endpoints_st, after=endpoints_st, edits=st.integers(0, 3))
def test_an_encoding_updated_from_a_previous_one_equals_one_from_scratch(
    before: tuple[Endpoint, ...], after: tuple[Endpoint, ...], edits: int
) -> None:
    # Also a few single edits of ``before`` (one changed, added or removed replica), which
    # keep a common prefix and suffix.
    candidates = [after]
    if before:
        i = edits % len(before)
        candidates.append(
            (*before[:i], replace(before[i], port=before[i].port ^ 1), *before[i + 1 :])
        )
        candidates.append((*before[:i], *before[i + 1 :]))
        candidates.append((*before[:i], replace(before[i], replica_id="zz", zone="b"), *before[i:]))
    previous = encode_endpoints(before)
    for new in candidates:
        updated = encode_endpoints(new, previous=previous)
        fresh = encode_endpoints(new)
        assert updated.fields == fresh.fields
        assert updated.digests == fresh.digests
        assert updated.wheres == fresh.wheres
        assert dict(updated.localities) == dict(fresh.localities)
        routed = _server(new, {})
        for region, zone in VIEWS:
            assert encode_load_assignment(
                routed, region=region, zone=zone, encoded=updated
            ) == encode_load_assignment(routed, region=region, zone=zone)


def reference_route_configuration(servers: list[RoutedServer]) -> route_pb2.RouteConfiguration:
    by_host: dict[str, list[tuple[int, str, list]]] = {}  # type: ignore[type-arg]
    for s in servers:
        routes = to_routes(s)
        for hostname in s.hostnames:
            by_host.setdefault(hostname, []).append((len(s.spec.path_prefix), s.name, routes))
    config = route_pb2.RouteConfiguration(name=names.ROUTE_CONFIG)
    config.validate_clusters.value = False
    for hostname in sorted(by_host):
        host = config.virtual_hosts.add(name=names.virtual_host(hostname=hostname))
        host.domains.append(hostname)
        for _, _, routes in sorted(by_host[hostname], key=lambda item: (-item[0], item[1])):
            host.routes.extend(routes)
    return config


def test_route_configuration_bytes_equal_the_protobuf_serialization() -> None:
    servers = [
        replace(
            server(
                f"s{i}",
                endpoint("r1", 8080),
                protocol=protocol,
                hostnames=(f"s{i}.local", "shared.local", "*.wild.dev")[: 1 + i % 3],
            ),
            spec=parse_spec(spec, protocol=protocol),
            held=i % 5 == 4,
            cold_epoch=i if i % 5 == 4 else 0,
        )
        for i, (protocol, spec) in enumerate(
            (protocol, spec) for protocol in ("http", "grpc", "http2") for spec in SPECS
        )
    ]
    expected = reference_route_configuration(servers)
    assert encode_route_configuration(servers) == expected.SerializeToString(deterministic=True)
    assert encode_route_configuration([]) == reference_route_configuration([]).SerializeToString(
        deterministic=True
    )


def test_servers_sharing_a_spec_get_clusters_of_their_own() -> None:
    first = to_cluster(server("alpha"))
    second = to_cluster(server("beta"))
    second.connect_timeout.seconds = 99  # a caller may alter what it got
    again = to_cluster(server("alpha"))
    assert (first.name, second.name) == ("default_alpha", "default_beta")
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(
        deterministic=True
    )
    routes = to_routes(server("alpha"))
    routes[0].route.cluster = "altered"
    assert [r.route.cluster for r in to_routes(server("alpha"))] == ["default_alpha"] * 2


def test_a_resource_encoded_from_bytes_parses_on_demand_and_versions_by_content() -> None:
    routed = server("chat", endpoint("r1", 8081), endpoint("r2", 8082, draining=True))
    payload = encode_load_assignment(routed, region="us-west")
    resource = encoded_resource(ENDPOINT, "default_chat", payload)
    built = to_resource(ENDPOINT, "default_chat", resource.message)
    assert resource.version == content_hash(ENDPOINT.encode(), payload)
    assert (resource.version, resource.any_bytes, resource.sotw_field, resource.delta_field) == (
        built.version,
        built.any_bytes,
        built.sotw_field,
        built.delta_field,
    )
    assert [len(loc.lb_endpoints) for loc in resource.message.endpoints] == [2]
