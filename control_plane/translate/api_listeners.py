"""Listeners for gRPC's own xDS client (proxyless gRPC): one API listener per hostname.

A gRPC client on ``xds:///<hostname>`` asks LDS for a Listener named ``<hostname>``; it must hold
an ``api_listener``: an HttpConnectionManager with the route configuration (inlined here, so the
client needs no RDS) and the router as its only, and last, HTTP filter. Only servers of protocol
``grpc`` and ``http2`` are served this way, under exact hostnames (a ``*.suffix`` hostname is no
name a target can ask for); a hostname with neither has no listener, so a client naming it is
told it does not exist.

The routes are the servers' Envoy routes (``routes.to_routes``) in the form gRPC accepts: a
path-separated prefix ``/p`` becomes the prefix ``/p/`` (gRPC paths are ``/service/method``, so the
two match the same calls); the retry policy is dropped (gRPC retries on status codes only; an
RPC that never reached a replica is retried transparently by gRPC itself), and so are per-route
configs of Envoy's HTTP filters. A server with a traffic split gets the same
``weighted_clusters`` and tag routes as Envoy, and a listener for each tag's hostname form.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from control_plane.routing.model import RoutedServer
from control_plane.translate import names
from control_plane.translate.routes import to_routes, to_tag_routes

PROXYLESS_PROTOCOLS = frozenset({"grpc", "http2"})
_ROUTER_NAME = "envoy.filters.http.router"


def to_grpc_routes(
    server: RoutedServer, *, routes: list[route_components_pb2.Route] | None = None
) -> list[route_components_pb2.Route]:
    """The server's routes (or ``routes``, some of them) as gRPC accepts them."""
    routes = to_routes(server) if routes is None else routes
    for route in routes:
        separated = route.match.path_separated_prefix
        if separated:
            route.match.prefix = f"{separated}/"
        route.route.ClearField("retry_policy")
        # Per-route configs of Envoy-only HTTP filters: gRPC rejects a config for a filter it
        # does not know (and its listener has only the router).
        route.ClearField("typed_per_filter_config")
    return routes


def to_api_listeners(servers: Iterable[RoutedServer]) -> dict[str, listener_pb2.Listener]:
    """Hostname -> its API listener, for every hostname of a grpc or http2 server."""
    by_host: dict[str, list[tuple[int, str, list[route_components_pb2.Route]]]] = {}
    tagged: list[RoutedServer] = []
    for server in servers:
        if server.protocol not in PROXYLESS_PROTOCOLS:
            continue
        routes = to_grpc_routes(server)
        for hostname in server.hostnames:
            if hostname.startswith("*"):
                continue  # a gRPC target names one host: a wildcard is no listener name
            by_host.setdefault(hostname, []).append(
                (len(server.spec.path_prefix), server.name, routes)
            )
        if server.tags and not server.held:
            tagged.append(server)
    # Tags' hostname forms (as in the RouteConfiguration), after every claimed hostname.
    claimed = frozenset(by_host)
    for server in tagged:
        for tag, _ in server.tags:
            for hostname in server.hostnames:
                name = names.tagged_hostname(hostname=hostname, tag=tag)
                if name is None or name in claimed:
                    continue
                routes = to_grpc_routes(server, routes=to_tag_routes(server, tag))
                by_host.setdefault(name, []).append(
                    (len(server.spec.path_prefix), server.name, routes)
                )
    listeners = {}
    for hostname, entries in by_host.items():
        config = route_pb2.RouteConfiguration(name=names.api_route_config(hostname=hostname))
        host = config.virtual_hosts.add(name=names.virtual_host(hostname=hostname))
        host.domains.append(hostname)
        for _, _, routes in sorted(entries, key=lambda item: (-item[0], item[1])):
            host.routes.extend(routes)
        manager = hcm_pb2.HttpConnectionManager(
            stat_prefix=names.HTTP_STAT_PREFIX, route_config=config
        )
        router = manager.http_filters.add(name=_ROUTER_NAME)
        router.typed_config.Pack(router_pb2.Router())
        name = names.api_listener(hostname=hostname)
        listener = listener_pb2.Listener(name=name)
        listener.api_listener.api_listener.Pack(manager)
        listeners[name] = listener
    return listeners
