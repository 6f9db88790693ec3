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

from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.on_demand.v3 import on_demand_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.type.matcher.v3 import string_pb2

from control_plane.routing.model import RoutedServer
from control_plane.translate import names
from control_plane.translate.durations import set_duration

RETRY_ON = "connect-failure,refused-stream,reset-before-request"
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"


def to_routes(server: RoutedServer) -> list[route_components_pb2.Route]:
    """The routes of one server (the same for each of its hostnames)."""
    spec = server.spec
    cluster = names.cluster(workspace=server.workspace, server=server.name, epoch=server.cold_epoch)
    streaming = server.protocol == "grpc"
    routes = []
    variants = [("websocket", True)] if server.protocol == "http" else []
    variants.append(("default", streaming))
    for variant, no_request_timeout in variants:
        route = route_components_pb2.Route(
            name=names.route(workspace=server.workspace, server=server.name, variant=variant)
        )
        if spec.path_prefix == "/":
            route.match.prefix = "/"
        else:
            route.match.path_separated_prefix = spec.path_prefix.rstrip("/")
        if variant == "websocket":
            header = route.match.headers.add(name="upgrade")
            header.string_match.CopyFrom(
                string_pb2.StringMatcher(exact="websocket", ignore_case=True)
            )
        route.metadata.filter_metadata[names.METADATA_NAMESPACE].update({"server": server.name})
        action = route.route
        action.cluster = cluster
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
        if server.held:
            route.typed_per_filter_config[ON_DEMAND_FILTER].Pack(
                _hold(server.spec.cold_start.timeout)
            )
        routes.append(route)
    return routes


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


def to_route_configuration(servers: Iterable[RoutedServer]) -> route_pb2.RouteConfiguration:
    by_host: dict[str, list[tuple[int, str, list[route_components_pb2.Route]]]] = {}
    for server in servers:
        routes = to_routes(server)
        for hostname in server.hostnames:
            by_host.setdefault(hostname, []).append(
                (len(server.spec.path_prefix), server.name, routes)
            )
    config = route_pb2.RouteConfiguration(name=names.ROUTE_CONFIG)
    config.validate_clusters.value = False  # a held route names a cluster pushed later
    for hostname in sorted(by_host):
        host = config.virtual_hosts.add(name=names.virtual_host(hostname=hostname))
        host.domains.append(hostname)
        for _, _, routes in sorted(by_host[hostname], key=lambda item: (-item[0], item[1])):
            host.routes.extend(routes)
    return config
