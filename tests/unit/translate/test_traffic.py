"""Translation of traffic splits and tags (issue 26): a cluster per revision, weighted
clusters that follow the affinity hash, tag routes (header and hostname forms), the same for
proxyless gRPC, and servers without revisions untouched."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.registry.model import RegistryState, Replica, Server
from control_plane.routing import to_routing_table
from control_plane.routing.model import RoutingTable
from control_plane.translate import ProxyView, to_resources
from control_plane.translate.api_listeners import to_api_listeners
from control_plane.translate.endpoints import to_load_assignment
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

VIEW = ProxyView(region="us-west", listen_host="127.0.0.1", listen_port=10000)
GRPC_VIEW = ProxyView(region="us-west", listen_host="", listen_port=0, kind="grpc")


def srv(
    *hostnames: str,
    name: str = "chat",
    protocol: str = "http",
    traffic: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> Server:
    if traffic is not None:
        spec["traffic"] = traffic
    return Server(
        name=name,
        hostnames=hostnames or (f"{name}.example.com",),
        protocol=protocol,
        spec=json.dumps(spec),
    )


def rep(rid: str, revision: str, port: int, *, server: str = "chat", **extra: Any) -> Replica:
    return Replica(
        id=rid,
        server=server,
        host="127.0.0.1",
        port=port,
        region="us-west",
        revision=revision,
        registered_at=float(port),
        **extra,
    )


def table_of(servers: list[Server], replicas: list[Replica]) -> RoutingTable:
    return to_routing_table(
        RegistryState.of(servers=servers, replicas=replicas, revision=1, committed_at=0.0)
    )


def resources(servers: list[Server], replicas: list[Replica], view: ProxyView = VIEW) -> Any:
    out: dict[str, dict[str, Any]] = {}
    for resource in to_resources(table_of(servers, replicas), view):
        out.setdefault(resource.type_url, {})[resource.name] = resource
    return out


def vhosts(found: Any) -> dict[str, list[route_components_pb2.Route]]:
    config = found[ROUTE]["ingress_http"].message
    return {vh.domains[0]: list(vh.routes) for vh in config.virtual_hosts}


SPLIT = [
    {"revision": "v1", "percent": 90},
    {"revision": "v2", "percent": 10, "tag": "canary"},
]
REPLICAS = [rep("chat-v1-a", "v1", 8081), rep("chat-v2-a", "v2", 8082)]


def test_a_server_with_revisions_gets_a_cluster_and_an_assignment_per_revision() -> None:
    found = resources([srv(traffic=SPLIT)], REPLICAS)
    assert sorted(found[CLUSTER]) == ["default_chat_rev_v1", "default_chat_rev_v2"]
    assert sorted(found[ENDPOINT]) == ["default_chat_rev_v1", "default_chat_rev_v2"]
    [server] = table_of([srv(traffic=SPLIT)], REPLICAS).servers
    for revision, port in (("v1", 8081), ("v2", 8082)):
        assignment = to_load_assignment(server, revision=revision, region="us-west")
        ports = [
            e.endpoint.address.socket_address.port_value
            for locality in assignment.endpoints
            for e in locality.lb_endpoints
        ]
        assert ports == [port]


def test_the_split_is_weighted_clusters_on_the_default_and_websocket_routes() -> None:
    routes = vhosts(resources([srv(traffic=SPLIT)], REPLICAS))["chat.example.com"]
    split = [
        r for r in routes if not any(h.name == "x-routeplane-revision" for h in r.match.headers)
    ]
    assert [r.name for r in split] == ["default_chat/websocket", "default_chat/default"]
    for route in split:
        weighted = route.route.weighted_clusters
        assert [(c.name, c.weight.value) for c in weighted.clusters] == [
            ("default_chat_rev_v1", 90),
            ("default_chat_rev_v2", 10),
        ]
        assert not weighted.HasField("use_hash_policy")


def test_with_affinity_the_split_follows_the_routes_hash() -> None:
    server = srv(traffic=SPLIT, load_balancing={"consistent_hash": {"header": "x-session"}})
    routes = vhosts(resources([server], REPLICAS))["chat.example.com"]
    default = next(r for r in routes if r.name == "default_chat/default")
    assert default.route.weighted_clusters.use_hash_policy.value
    assert default.route.hash_policy[0].header.header_name == "x-session"


def test_a_single_revision_at_100_percent_is_a_plain_cluster_route() -> None:
    routes = vhosts(resources([srv()], REPLICAS))["chat.example.com"]  # latest: v2
    default = next(r for r in routes if r.name == "default_chat/default")
    assert default.route.cluster == "default_chat_rev_v2"


def test_a_tag_has_a_header_route_before_the_split_and_a_hostname_of_its_own() -> None:
    found = resources([srv(traffic=SPLIT)], REPLICAS)
    hosts = vhosts(found)
    routes = hosts["chat.example.com"]
    assert [r.name for r in routes] == [
        "default_chat/websocket@canary",
        "default_chat/default@canary",
        "default_chat/websocket",
        "default_chat/default",
    ]
    tagged = routes[1]
    [header] = [h for h in tagged.match.headers if h.name == "x-routeplane-revision"]
    assert header.string_match.exact == "canary"
    assert tagged.route.cluster == "default_chat_rev_v2"
    by_host = hosts["canary--chat.example.com"]
    assert [r.route.cluster for r in by_host] == ["default_chat_rev_v2"] * 2
    assert not any(h.name == "x-routeplane-revision" for r in by_host for h in r.match.headers)


def test_a_tags_hostname_form_skips_wildcards_long_labels_and_claimed_names() -> None:
    long_first = "a" * 56  # "canary--" + 56 = 64 characters: over a label
    servers = [
        srv("*.wild.example.com", f"{long_first}.example.com", "chat.example.com", traffic=SPLIT),
        srv("canary--chat.example.com", name="other"),
    ]
    replicas = [*REPLICAS, rep("o1", "", 9000, server="other")]
    hosts = vhosts(resources(servers, replicas))
    assert "canary--*.wild.example.com" not in hosts
    assert f"canary--{long_first}.example.com" not in hosts
    # A name a server claims is that server's: the tag's form gives way.
    assert [r.route.cluster for r in hosts["canary--chat.example.com"]] == ["default_other"] * 2


def test_a_tag_on_a_revision_with_no_ready_replica_goes_to_its_empty_cluster() -> None:
    replicas = [REPLICAS[0], rep("chat-v2-a", "v2", 8082, state="DRAINING")]
    found = resources([srv(traffic=SPLIT)], replicas)
    routes = vhosts(found)["chat.example.com"]
    assert routes[1].route.cluster == "default_chat_rev_v2"
    assert next(r for r in routes if r.name == "default_chat/default").route.cluster == (
        "default_chat_rev_v1"
    )
    drop = found[ENDPOINT]["default_chat_rev_v2"].message.policy.drop_overloads
    assert [d.category for d in drop] == ["cold_start"]


def test_a_server_without_revisions_keeps_its_one_plain_cluster_and_routes() -> None:
    found = resources([srv()], [rep("r1", "", 8081)])
    assert list(found[CLUSTER]) == ["default_chat"]
    routes = vhosts(found)["chat.example.com"]
    assert [(r.name, r.route.cluster) for r in routes] == [
        ("default_chat/websocket", "default_chat"),
        ("default_chat/default", "default_chat"),
    ]


def test_proxyless_grpc_gets_the_same_split_and_tags() -> None:
    server = srv("tokens.local", name="tokens", protocol="grpc", traffic=SPLIT)
    replicas = [
        rep("t1", "v1", 9001, server="tokens"),
        rep("t2", "v2", 9002, server="tokens"),
    ]
    found = resources([server], replicas, GRPC_VIEW)
    assert sorted(found[LISTENER]) == ["canary--tokens.local", "tokens.local"]
    [tokens] = table_of([server], replicas).servers
    listeners = to_api_listeners([tokens])
    manager = hcm_pb2.HttpConnectionManager()
    listeners["tokens.local"].api_listener.api_listener.Unpack(manager)
    routes = manager.route_config.virtual_hosts[0].routes
    assert routes[0].match.headers[0].name == "x-routeplane-revision"
    assert routes[0].route.cluster == "default_tokens_rev_v2"
    assert [(c.name, c.weight.value) for c in routes[-1].route.weighted_clusters.clusters] == [
        ("default_tokens_rev_v1", 90),
        ("default_tokens_rev_v2", 10),
    ]
    tagged = hcm_pb2.HttpConnectionManager()
    listeners["canary--tokens.local"].api_listener.api_listener.Unpack(tagged)
    assert tagged.route_config.virtual_hosts[0].domains == ["canary--tokens.local"]
    assert {r.route.cluster for r in tagged.route_config.virtual_hosts[0].routes} == {
        "default_tokens_rev_v2"
    }


def test_a_hold_server_with_revisions_keeps_its_cold_cluster_holding_the_splits_replicas() -> None:
    from dataclasses import replace

    hold = srv(traffic=SPLIT, cold_start={"mode": "hold"})
    replicas = [*REPLICAS, rep("chat-v3-a", "v3", 8083)]  # v3: in no split
    [server] = table_of([hold], replicas).servers
    warm = replace(server, cold_epoch=7)  # out of a cold period that began at revision 7
    found: dict[str, dict[str, Any]] = {}
    warm_table = RoutingTable(servers=(warm,), problems=(), revision=1, committed_at=0.0)
    for resource in to_resources(warm_table, VIEW):
        found.setdefault(resource.type_url, {})[resource.name] = resource
    assert sorted(found[CLUSTER]) == [
        "default_chat_cold7",
        "default_chat_rev_v1",
        "default_chat_rev_v2",
        "default_chat_rev_v3",
    ]
    cold = to_load_assignment(warm, revision="", region="us-west")
    ports = sorted(
        e.endpoint.address.socket_address.port_value
        for locality in cold.endpoints
        for e in locality.lb_endpoints
    )
    assert ports == [8081, 8082]  # v1 and v2, not v3
    assert cold.cluster_name == "default_chat_cold7"
    # New requests follow the split, not the cold cluster.
    default = next(r for r in vhosts(found)["chat.example.com"] if r.name == "default_chat/default")
    assert [c.name for c in default.route.weighted_clusters.clusters] == [
        "default_chat_rev_v1",
        "default_chat_rev_v2",
    ]
