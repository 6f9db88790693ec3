"""Small routing-model builders (an endpoint on loopback, a server, a table) that tests and
benchmarks both use to make the world a known shape."""

from __future__ import annotations

from control_plane.routing.model import Endpoint, RoutedServer, RoutingTable


def endpoint(
    replica_id: str,
    port: int,
    *,
    region: str = "us-west",
    draining: bool = False,
    weight: int = 100,
    zone: str = "",
) -> Endpoint:
    return Endpoint(
        replica_id=replica_id,
        host="127.0.0.1",
        port=port,
        region=region,
        zone=zone,
        weight=weight,
        draining=draining,
    )


def server(
    name: str,
    *endpoints: Endpoint,
    hostnames: tuple[str, ...] = (),
    protocol: str = "http",
    workspace: str = "default",
) -> RoutedServer:
    return RoutedServer(
        name=name,
        workspace=workspace,
        hostnames=hostnames or (f"{name}.local",),
        protocol=protocol,
        endpoints=tuple(endpoints),
    )


def table(*servers: RoutedServer, revision: int = 1) -> RoutingTable:
    return RoutingTable(servers=tuple(servers), problems=(), revision=revision, committed_at=0.0)
