"""The translator: RoutingTable + the proxy group's view -> serialized resources."""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2

from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from control_plane.translate.clusters import to_cluster
from control_plane.translate.endpoints import to_load_assignment
from control_plane.translate.listeners import to_listener
from control_plane.translate.routes import to_route_configuration, to_virtual_hosts
from control_plane.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, to_resource


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyView:
    """What a node group's config depends on besides the routing table."""

    region: str
    listen_host: str
    listen_port: int


@dataclass(frozen=True, slots=True)
class _ServerConfig:
    cluster: Resource
    virtual_hosts: tuple[route_components_pb2.VirtualHost, ...]


def _spec_key(server: RoutedServer) -> tuple[str, str, tuple[str, ...], str]:
    """Everything of a server except its endpoints: what CDS and RDS depend on."""
    return (server.name, server.workspace, server.hostnames, server.protocol)


class Translator:
    """Memoizes per-server translation by value across calls; forgets what a call did not use.

    A replica change therefore re-translates one ClusterLoadAssignment and nothing else.
    Not thread-safe; one translator per caller.
    """

    def __init__(self) -> None:
        self._configs: dict[tuple[str, str, tuple[str, ...], str], _ServerConfig] = {}
        self._endpoints: dict[tuple[RoutedServer, str], Resource] = {}
        self._listeners: dict[ProxyView, Resource] = {}
        self._routes: dict[tuple[tuple[str, str, tuple[str, ...], str], ...], Resource] = {}

    def to_resources(self, table: RoutingTable, view: ProxyView) -> list[Resource]:
        out: list[Resource] = []
        virtual_hosts: list[route_components_pb2.VirtualHost] = []
        spec_keys = []
        for server in table.servers:
            spec_key = _spec_key(server)
            spec_keys.append(spec_key)
            config = self._configs.get(spec_key)
            if config is None:
                cluster_name = names.cluster(workspace=server.workspace, server=server.name)
                config = self._configs[spec_key] = _ServerConfig(
                    cluster=to_resource(CLUSTER, cluster_name, to_cluster(server)),
                    virtual_hosts=tuple(to_virtual_hosts(server)),
                )
            out.append(config.cluster)
            virtual_hosts.extend(config.virtual_hosts)
            endpoints_key = (server, view.region)
            endpoints = self._endpoints.get(endpoints_key)
            if endpoints is None:
                endpoints = self._endpoints[endpoints_key] = to_resource(
                    ENDPOINT, config.cluster.name, to_load_assignment(server)
                )
            out.append(endpoints)
        route_key = tuple(spec_keys)
        route = self._routes.get(route_key)
        if route is None:
            route = to_resource(ROUTE, names.ROUTE_CONFIG, to_route_configuration(virtual_hosts))
            self._routes[route_key] = route
        out.append(route)
        listener = self._listeners.get(view)
        if listener is None:
            message = to_listener(host=view.listen_host, port=view.listen_port)
            listener = self._listeners[view] = to_resource(LISTENER, names.LISTENER, message)
        out.append(listener)
        return out

    def forget_unused(self, table: RoutingTable, views: list[ProxyView]) -> None:
        """Drop memo entries that ``table`` and ``views`` no longer use."""
        specs = {_spec_key(s) for s in table.servers}
        regions = {v.region for v in views}
        servers = set(table.servers)
        self._configs = {k: v for k, v in self._configs.items() if k in specs}
        self._endpoints = {
            k: v for k, v in self._endpoints.items() if k[0] in servers and k[1] in regions
        }
        self._listeners = {v: r for v, r in self._listeners.items() if v in views}
        current = tuple(_spec_key(s) for s in table.servers)
        self._routes = {k: v for k, v in self._routes.items() if k == current}


def to_resources(table: RoutingTable, view: ProxyView) -> list[Resource]:
    """Translate without memoization (tests and one-off use)."""
    return Translator().to_resources(table, view)
