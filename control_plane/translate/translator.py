"""RoutingTable + the proxy group's view -> serialized resources, one function per resource.

Pure: no memo here. The pipeline (``control_plane.pipeline``) decides which of these to call
again, and keeps each server's encoded endpoints for the next ClusterLoadAssignment of it;
:func:`to_resources` calls all of them, from scratch, for tests and one-off use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from control_plane.translate.api_listeners import to_api_listeners
from control_plane.translate.clusters import cluster_name, cluster_revisions, to_cluster
from control_plane.translate.endpoints import EncodedEndpoints, load_assignment
from control_plane.translate.listeners import to_listener
from control_plane.translate.routes import encode_route_configuration
from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    Resource,
    encoded_resource,
    to_resource,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyView:
    """What a node group's config depends on besides the routing table.

    ``kind`` "grpc": gRPC's own xDS client, which gets API listeners (one per hostname) and no
    RouteConfiguration or listen address."""

    region: str
    listen_host: str
    listen_port: int
    zone: str = ""
    kind: str = "envoy"


def cluster_resource(server: RoutedServer, *, revision: str = "") -> Resource:
    """The server's Cluster (of ``revision``): depends on everything but its endpoints."""
    return to_resource(
        CLUSTER, cluster_name(server, revision), to_cluster(server, revision=revision)
    )


def cluster_resources(server: RoutedServer) -> tuple[Resource, ...]:
    """Every Cluster of the server: one, or one per revision of a server with a split."""
    return tuple(cluster_resource(server, revision=r) for r in cluster_revisions(server))


def endpoints_resource(
    server: RoutedServer,
    *,
    region: str,
    zone: str,
    revision: str = "",
    encoded: EncodedEndpoints | None = None,
) -> Resource:
    """The ClusterLoadAssignment of the server's cluster of ``revision`` as a proxy in
    ``region``/``zone`` sees it (``encoded``: those endpoints' encoding,
    ``encode_endpoints(endpoints_of(server, revision))``, when the caller keeps one)."""
    payload, key = load_assignment(
        server, revision=revision, region=region, zone=zone, encoded=encoded
    )
    return encoded_resource(ENDPOINT, cluster_name(server, revision), payload, version_key=key)


def route_resource(servers: Iterable[RoutedServer]) -> Resource:
    """The one RouteConfiguration every proxy gets: depends on no server's endpoints."""
    return encoded_resource(ROUTE, names.ROUTE_CONFIG, encode_route_configuration(servers))


def listener_resource(view: ProxyView) -> Resource:
    """The listener: depends only on the listen address."""
    message = to_listener(host=view.listen_host, port=view.listen_port)
    return to_resource(LISTENER, names.LISTENER, message)


def api_listener_resources(servers: Iterable[RoutedServer]) -> dict[str, Resource]:
    """The API listeners gRPC clients get, by name: they depend on no server's endpoints."""
    return {
        name: to_resource(LISTENER, name, message)
        for name, message in sorted(to_api_listeners(servers).items())
    }


def to_resources(table: RoutingTable, view: ProxyView) -> list[Resource]:
    """Every resource ``view`` gets from ``table``, in push order, from scratch. A held
    server has a route but no cluster yet (see ``routes``)."""
    live = [server for server in table.servers if not server.held]
    clusters = [c for server in live for c in cluster_resources(server)]
    endpoints = [
        endpoints_resource(server, region=view.region, zone=view.zone, revision=revision)
        for server in live
        for revision in cluster_revisions(server)
    ]
    if view.kind == "grpc":
        return [*clusters, *endpoints, *api_listener_resources(table.servers).values()]
    return [*clusters, *endpoints, listener_resource(view), route_resource(table.servers)]
