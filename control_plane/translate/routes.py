"""Route configurations (RDS): one virtual host per server hostname."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2, route_pb2

from control_plane.routing.model import RoutedServer
from control_plane.translate import names


def to_virtual_hosts(server: RoutedServer) -> list[route_components_pb2.VirtualHost]:
    cluster = names.cluster(workspace=server.workspace, server=server.name)
    hosts = []
    for hostname in server.hostnames:
        host = route_components_pb2.VirtualHost(
            name=names.virtual_host(
                workspace=server.workspace, server=server.name, hostname=hostname
            ),
            domains=[hostname],
        )
        route = host.routes.add()
        route.match.prefix = "/"
        route.route.cluster = cluster
        hosts.append(host)
    return hosts


def to_route_configuration(
    virtual_hosts: Iterable[route_components_pb2.VirtualHost],
) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=names.ROUTE_CONFIG)
    config.virtual_hosts.extend(sorted(virtual_hosts, key=lambda h: h.name))
    return config
