"""Route configurations (RDS): one virtual host per hostname, one route set per server.

Servers sharing a hostname under different path prefixes share its virtual host; longer
prefixes match first. No route gets Envoy's route `timeout` (it bounds the whole response and
would cut a response that is still streaming): plain HTTP gets `timeouts.request` as the per-try
idle timeout (time to the first byte, and between bytes), every route the idle timeout, and
`timeouts.max_stream` when set; WebSocket upgrades (their own route, matched first) and gRPC get
no request timeout.
Retries only where nothing can have reached the replica: connect failure, refused stream,
reset before any byte was sent, each on another replica.

Cold start in hold mode: while the server has no replica, its route names a cluster Envoy does
not have (``names.cluster(..., epoch=...)``, left out of CDS) and carries the on-demand filter's
per-route config: Envoy holds the request and asks routeplane for that cluster on a delta CDS
stream of its own (not ADS: ADS caps the wait at 15 s), which is also the demand signal. The
cluster is pushed when a replica is READY and the held requests go to it; after
``cold_start.timeout`` Envoy answers 503 (flag ``NC``). The route configuration does not
validate clusters, so that name may be absent.

Traffic splits (issue 26, ``routing.split``): a server with revisions routes to its split's
one cluster, or to ``weighted_clusters`` (``use_hash_policy`` with affinity: the split hashes
what the cluster's ring hashes, so a session stays on one revision). Each tag gets routes
before the split's, matching the header ``x-routeplane-revision: <tag>``, and the virtual
host ``<tag>--<hostname>`` for each of the server's exact hostnames whose first label fits
(``names.tagged_hostname``) and that no server claims. Hold mode, for a server with
revisions, holds requests only while it has no replica at all, as for any server, on the
plain cold cluster name; when replicas come, that cluster is pushed holding the split's
replicas (``clusters.cluster_revisions``), so the held requests go to them, while new
requests follow the split.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2

from control_plane.registry.spec import ServerSpec
from control_plane.routing.model import RoutedServer
from control_plane.translate import names
from control_plane.translate.clusters import cluster_name
from control_plane.translate.durations import set_duration
from control_plane.xds.resources import length_delimited, string_field

RETRY_ON = "connect-failure,refused-stream,reset-before-request"
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def to_routes(server: RoutedServer) -> list[route_components_pb2.Route]:
    """The routes of one server (the same for each of its hostnames): fresh messages the caller
    may alter. A server with a traffic split gets, before its own routes, each tag's routes
    (matching the ``x-routeplane-revision: <tag>`` header, to the tag's revision)."""
    if server.held or not server.revisions:
        return _routes_to(server, _to_cluster(cluster_name(server)))
    routes = []
    for tag, revision in server.tags:
        routes.extend(_routes_to(server, _to_cluster(cluster_name(server, revision)), tag=tag))
    routes.extend(_routes_to(server, _split_action(server)))
    return routes


def to_tag_routes(server: RoutedServer, tag: str) -> list[route_components_pb2.Route]:
    """The routes of a tag's hostname form (``<tag>--<hostname>``): the server's routes, all to
    the tag's revision, with no header to match."""
    revision = dict(server.tags)[tag]
    return _routes_to(server, _to_cluster(cluster_name(server, revision)), tag=tag, header=False)


def _to_cluster(name: str) -> route_components_pb2.RouteAction:
    return route_components_pb2.RouteAction(cluster=name)


def _split_action(server: RoutedServer) -> route_components_pb2.RouteAction:
    """The split: one cluster for a single revision, else weighted clusters (following the
    route's hash policy when the server has affinity, so a session stays on one revision)."""
    if len(server.split) == 1:
        return _to_cluster(cluster_name(server, server.split[0][0]))
    action = route_components_pb2.RouteAction()
    weighted = action.weighted_clusters
    for revision, weight in server.split:
        target = weighted.clusters.add(name=cluster_name(server, revision))
        target.weight.value = weight
    if server.spec.hash_on is not None:
        weighted.use_hash_policy.value = True
    return action


def _routes_to(
    server: RoutedServer,
    target: route_components_pb2.RouteAction,
    *,
    tag: str = "",
    header: bool = True,
) -> list[route_components_pb2.Route]:
    routes = []
    for variant, template in _unnamed_routes(server.protocol, server.spec, held=server.held):
        route = route_components_pb2.Route()
        route.CopyFrom(template)
        if tag:
            route.name = names.tagged_route(
                workspace=server.workspace, server=server.name, variant=variant, tag=tag
            )
            if header:
                matcher = route.match.headers.add(name=names.REVISION_HEADER)
                matcher.string_match.exact = tag
        else:
            route.name = names.route(
                workspace=server.workspace, server=server.name, variant=variant
            )
        route.metadata.filter_metadata[names.METADATA_NAMESPACE].fields[
            "server"
        ].string_value = server.name
        route.route.MergeFrom(target)
        routes.append(route)
    return routes


@lru_cache(maxsize=256)
def _unnamed_routes(
    protocol: str, spec: ServerSpec, *, held: bool
) -> tuple[tuple[str, route_components_pb2.Route], ...]:
    """A server's routes, by variant, but for the names (route, cluster, server metadata): a
    function of the protocol, the spec and whether the server is held, which a fleet's servers
    mostly share, so built once per distinct triple. Must not be altered (callers copy them)."""
    streaming = protocol == "grpc"
    routes = []
    variants = [("websocket", True)] if protocol == "http" else []
    variants.append(("default", streaming))
    for variant, no_request_timeout in variants:
        route = route_components_pb2.Route()
        if spec.path_prefix == "/":
            route.match.prefix = "/"
        else:
            route.match.path_separated_prefix = spec.path_prefix.rstrip("/")
        if variant == "websocket":
            header = route.match.headers.add(name="upgrade")
            header.string_match.CopyFrom(
                string_pb2.StringMatcher(exact="websocket", ignore_case=True)
            )
        action = route.route
        # No route timeout: it would bound the whole response, cutting a token stream that is
        # still sending. `timeouts.request` bounds each try's time to first byte and between
        # bytes instead; `idle` the stream's quiet time; `max_stream` (optional) the whole.
        set_duration(action.timeout, 0.0)
        set_duration(action.idle_timeout, spec.idle_timeout)
        if spec.max_stream:
            set_duration(action.max_stream_duration.max_stream_duration, spec.max_stream)
        if spec.request_timeout and not no_request_timeout:
            set_duration(action.retry_policy.per_try_idle_timeout, spec.request_timeout)
        if spec.retries:
            action.retry_policy.retry_on = RETRY_ON
            action.retry_policy.num_retries.value = spec.retries
            predicate = action.retry_policy.retry_host_predicate.add(name=_PREVIOUS_HOSTS)
            predicate.typed_config.Pack(previous_hosts_pb2.PreviousHostsPredicate())
            action.retry_policy.host_selection_retry_max_attempts = 3
        if spec.hash_on is not None:
            policy = action.hash_policy.add()
            if spec.hash_on.header:
                policy.header.header_name = spec.hash_on.header
            else:
                policy.cookie.name = spec.hash_on.cookie
                if spec.hash_on.cookie_ttl:
                    set_duration(policy.cookie.ttl, spec.hash_on.cookie_ttl)
        if held:
            route.typed_per_filter_config[ON_DEMAND_FILTER].Pack(_hold(spec.cold_start.timeout))
        routes.append((variant, route))
    return tuple(routes)


def _hold(timeout: float) -> on_demand_pb2.PerRouteConfig:
    """Wait up to ``timeout`` for the route's cluster, asked for on a delta CDS stream of its
    own with no initial-fetch timeout (the request's own timeout bounds the wait)."""
    source = config_source_pb2.ConfigSource(
        resource_api_version=config_source_pb2.ApiVersion.V3,
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.DELTA_GRPC,
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                        cluster_name=names.XDS_CLUSTER
                    )
                )
            ],
        ),
    )
    set_duration(source.initial_fetch_timeout, 0.0)
    config = on_demand_pb2.PerRouteConfig()
    config.odcds.source.CopyFrom(source)
    set_duration(config.odcds.timeout, timeout)
    return config


def _encoded(routes: list[route_components_pb2.Route]) -> bytes:
    return b"".join(
        length_delimited(3, route.SerializeToString(deterministic=True)) for route in routes
    )


def encode_route_configuration(servers: Iterable[RoutedServer]) -> bytes:
    """The RouteConfiguration, serialized (as ``SerializeToString(deterministic=True)`` would
    give it): each server's routes serialized once, however many hostnames it has, and joined
    into virtual hosts without building the whole message."""
    by_host: dict[str, list[tuple[int, str, bytes]]] = {}
    tagged: list[RoutedServer] = []
    for server in servers:
        # VirtualHost.routes = 3
        routes = _encoded(to_routes(server))
        for hostname in server.hostnames:
            by_host.setdefault(hostname, []).append(
                (len(server.spec.path_prefix), server.name, routes)
            )
        if server.tags and not server.held:
            tagged.append(server)
    # Tags' hostname forms, after every hostname a server claims (a claimed name wins).
    claimed = frozenset(by_host)
    for server in tagged:
        for tag, _ in server.tags:
            routes = b""
            for hostname in server.hostnames:
                name = names.tagged_hostname(hostname=hostname, tag=tag)
                if name is None or name in claimed:
                    continue
                routes = routes or _encoded(to_tag_routes(server, tag))
                by_host.setdefault(name, []).append(
                    (len(server.spec.path_prefix), server.name, routes)
                )
    # RouteConfiguration: name = 1, virtual_hosts = 2, validate_clusters = 7 (false: a held
    # route names a cluster pushed later; an empty BoolValue). VirtualHost: name = 1, domains = 2.
    parts = [string_field(1, names.ROUTE_CONFIG)]
    for hostname in sorted(by_host):
        host = b"".join(
            (
                string_field(1, names.virtual_host(hostname=hostname)),
                string_field(2, hostname),
                *(r for _, _, r in sorted(by_host[hostname], key=lambda item: (-item[0], item[1]))),
            )
        )
        parts.append(length_delimited(2, host))
    parts.append(length_delimited(7, b""))
    return b"".join(parts)
