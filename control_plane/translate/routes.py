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
from control_plane.translate.durations import set_duration
from control_plane.xds.resources import length_delimited, string_field

RETRY_ON = "connect-failure,refused-stream,reset-before-request"
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def to_routes(server: RoutedServer) -> list[route_components_pb2.Route]:
    """The routes of one server (the same for each of its hostnames): fresh messages the caller
    may alter."""
    cluster = names.cluster(workspace=server.workspace, server=server.name, epoch=server.cold_epoch)
    routes = []
    for variant, template in _unnamed_routes(server.protocol, server.spec, held=server.held):
        route = route_components_pb2.Route()
        route.CopyFrom(template)
        route.name = names.route(workspace=server.workspace, server=server.name, variant=variant)
        route.metadata.filter_metadata[names.METADATA_NAMESPACE].fields[
            "server"
        ].string_value = server.name
        route.route.cluster = cluster
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


def encode_route_configuration(servers: Iterable[RoutedServer]) -> bytes:
    """The RouteConfiguration, serialized (as ``SerializeToString(deterministic=True)`` would
    give it): each server's routes serialized once, however many hostnames it has, and joined
    into virtual hosts without building the whole message."""
    by_host: dict[str, list[tuple[int, str, bytes]]] = {}
    for server in servers:
        # VirtualHost.routes = 3
        routes = b"".join(
            length_delimited(3, route.SerializeToString(deterministic=True))
            for route in to_routes(server)
        )
        for hostname in server.hostnames:
            by_host.setdefault(hostname, []).append(
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
