"""The translator: RoutingTable + the proxy group's view -> serialized resources.

Incremental: per view it remembers what it produced for each server, keyed by the RoutedServer
object. A pass over a table where one server changed re-translates (and re-serializes) that
server only, and reports exactly which names changed, so the snapshot is built in time
proportional to the change.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.registry.spec import ServerSpec
from control_plane.routing.model import RoutedServer, RoutingTable
from control_plane.translate import names
from control_plane.translate.clusters import to_cluster
from control_plane.translate.endpoints import to_load_assignment
from control_plane.translate.listeners import to_listener
from control_plane.translate.routes import to_route_configuration
from control_plane.xds.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    Resource,
    to_resource,
)

Spec = tuple[str, str, tuple[str, ...], str, ServerSpec]
ByType = dict[str, dict[str, Resource]]
Changed = dict[str, set[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyView:
    """What a node group's config depends on besides the routing table."""

    region: str
    listen_host: str
    listen_port: int
    zone: str = ""


def _spec_key(server: RoutedServer) -> Spec:
    """Everything of a server except its endpoints: what CDS and RDS depend on."""
    return (server.name, server.workspace, server.hostnames, server.protocol, server.spec)


@dataclass(frozen=True, slots=True)
class _ServerOut:
    server: RoutedServer
    spec: Spec
    cluster: Resource
    endpoints: Resource


@dataclass(slots=True)
class _ViewState:
    view: ProxyView
    servers: dict[str, _ServerOut]
    by_type: ByType


class Translator:
    """Not thread-safe; one translator per caller."""

    def __init__(self) -> None:
        self._views: dict[str, _ViewState] = {}
        self._configs: dict[Spec, Resource] = {}
        # (server name, region) -> (the RoutedServer translated, its ClusterLoadAssignment)
        self._endpoints: dict[tuple[str, str, str], tuple[RoutedServer, Resource]] = {}

    def translate(
        self, table: RoutingTable, view: ProxyView, *, key: str = ""
    ) -> tuple[ByType, Changed | None]:
        """Resources per type for ``view``, and the names that changed since the previous call
        with the same ``key`` (None on the first). The dicts returned are new; the caller owns
        them. ``key`` tells apart callers (node groups) that share a view.
        """
        previous = self._views.get(key)
        old_servers = previous.servers if previous is not None else {}
        clusters = dict(previous.by_type[CLUSTER]) if previous is not None else {}
        endpoints = dict(previous.by_type[ENDPOINT]) if previous is not None else {}
        changed: Changed = {type_url: set() for type_url in PUSH_ORDER}
        servers: dict[str, _ServerOut] = {}
        shape_changed = previous is None or len(table.servers) != len(old_servers)
        for server in table.servers:
            old = old_servers.get(server.name)
            if old is not None and old.server is server:
                servers[server.name] = old
                continue
            out = self._translate_server(server, view, old)
            servers[server.name] = out
            if old is None or old.spec != out.spec:
                shape_changed = True
            if clusters.get(out.cluster.name) is not out.cluster:
                clusters[out.cluster.name] = out.cluster
                changed[CLUSTER].add(out.cluster.name)
            if endpoints.get(out.endpoints.name) is not out.endpoints:
                endpoints[out.endpoints.name] = out.endpoints
                changed[ENDPOINT].add(out.endpoints.name)
        if shape_changed and previous is not None:
            live = {out.cluster.name for out in servers.values()}
            for name in [n for n in clusters if n not in live]:
                del clusters[name]
                changed[CLUSTER].add(name)
            for name in [n for n in endpoints if n not in live]:
                del endpoints[name]
                changed[ENDPOINT].add(name)
        old_route = previous.by_type[ROUTE][names.ROUTE_CONFIG] if previous is not None else None
        route = old_route
        if shape_changed or route is None:
            message = to_route_configuration(out.server for out in servers.values())
            route = to_resource(ROUTE, names.ROUTE_CONFIG, message)
            if old_route is not None and old_route.version == route.version:
                route = old_route
            else:
                changed[ROUTE].add(route.name)
        if previous is None:
            message = to_listener(host=view.listen_host, port=view.listen_port)
            listener = to_resource(LISTENER, names.LISTENER, message)
            changed[LISTENER].add(listener.name)
        else:
            listener = previous.by_type[LISTENER][names.LISTENER]
        by_type: ByType = {
            CLUSTER: clusters,
            ENDPOINT: endpoints,
            LISTENER: {listener.name: listener},
            ROUTE: {route.name: route},
        }
        self._views[key] = _ViewState(view=view, servers=servers, by_type=by_type)
        result = {type_url: dict(bucket) for type_url, bucket in by_type.items()}
        return result, (changed if previous is not None else None)

    def _translate_server(
        self, server: RoutedServer, view: ProxyView, old: _ServerOut | None
    ) -> _ServerOut:
        spec = _spec_key(server)
        if old is not None and old.spec == spec:
            cluster = old.cluster
        else:
            config = self._configs.get(spec)
            if config is None:
                cluster_name = names.cluster(workspace=server.workspace, server=server.name)
                config = self._configs[spec] = to_resource(
                    CLUSTER, cluster_name, to_cluster(server)
                )
            cluster = config
        key = (server.name, view.region, view.zone)
        cached = self._endpoints.get(key)
        if cached is not None and (cached[0] is server or cached[0] == server):
            endpoints = cached[1]
        else:
            endpoints = to_resource(
                ENDPOINT,
                cluster.name,
                to_load_assignment(server, region=view.region, zone=view.zone),
            )
            self._endpoints[key] = (server, endpoints)
        return _ServerOut(server=server, spec=spec, cluster=cluster, endpoints=endpoints)

    def to_resources(self, table: RoutingTable, view: ProxyView) -> list[Resource]:
        by_type, _ = self.translate(table, view)
        return [r for type_url in PUSH_ORDER for r in by_type[type_url].values()]

    def forget(self, key: str) -> None:
        """Forget what was produced for ``key``: its next translation starts from scratch."""
        self._views.pop(key, None)

    def forget_unused(self, keys: list[str]) -> None:
        """Drop keys not in ``keys`` and memo entries no remaining key uses. O(size): call it
        now and then, not on every pass."""
        self._views = {k: s for k, s in self._views.items() if k in keys}
        specs = {out.spec for s in self._views.values() for out in s.servers.values()}
        used = {
            (name, s.view.region, s.view.zone) for s in self._views.values() for name in s.servers
        }
        self._configs = {k: c for k, c in self._configs.items() if k in specs}
        self._endpoints = {k: e for k, e in self._endpoints.items() if k in used}


def to_resources(table: RoutingTable, view: ProxyView) -> list[Resource]:
    """Translate without memoization (tests and one-off use)."""
    return Translator().to_resources(table, view)
